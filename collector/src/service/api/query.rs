//! `evenflow.v1.Distribution`: the query API over the latest tick. The
//! trait methods are one-line adapters over the handlers below.

use std::{pin::Pin, sync::Arc, time::Instant};

use evenflow_proto::v1::{
    self, AlertEvent, GetPoolRequest, ListAgentsRequest, ListAgentsResponse, ListAlertsRequest,
    ListAlertsResponse, ListPoolsRequest, ListPoolsResponse, Pool, WatchAlertsRequest,
    WatchPoolRequest, distribution_server::Distribution,
};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::service::{publish::convert::AgentStatusAt, shared::Shared};

/// The Distribution service.
pub struct DistributionService {
    shared: Arc<Shared>,
}

impl DistributionService {
    /// Serves queries over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

fn unknown_pool(name: &str, known: impl Iterator<Item = String>) -> Status {
    let known: Vec<String> = known.take(20).collect();
    if name.is_empty() {
        return Status::invalid_argument("name is empty: give a pool name (ListPools lists them)");
    }
    Status::not_found(format!(
        "no pool {name:?}; known pools: {}",
        if known.is_empty() {
            "none yet (no agent has announced a labelled listener and no pool file is loaded)"
                .to_owned()
        } else {
            known.join(", ")
        }
    ))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Distribution for DistributionService {
    async fn list_pools(
        &self,
        _request: Request<ListPoolsRequest>,
    ) -> Result<Response<ListPoolsResponse>, Status> {
        list_pools(&self.shared).map(Response::new)
    }

    async fn get_pool(&self, request: Request<GetPoolRequest>) -> Result<Response<Pool>, Status> {
        get_pool(&self.shared, request.into_inner()).map(Response::new)
    }

    async fn list_agents(
        &self,
        _request: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        list_agents(&self.shared).map(Response::new)
    }

    async fn list_alerts(
        &self,
        request: Request<ListAlertsRequest>,
    ) -> Result<Response<ListAlertsResponse>, Status> {
        list_alerts(&self.shared, request.into_inner()).map(Response::new)
    }

    type WatchPoolStream = BoxStream<Pool>;

    async fn watch_pool(
        &self,
        request: Request<WatchPoolRequest>,
    ) -> Result<Response<Self::WatchPoolStream>, Status> {
        watch_pool(&self.shared, request.into_inner()).map(Response::new)
    }

    type WatchAlertsStream = BoxStream<AlertEvent>;

    async fn watch_alerts(
        &self,
        request: Request<WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        watch_alerts(&self.shared, request.into_inner()).map(Response::new)
    }
}

/// Every pool of the latest tick.
pub fn list_pools(shared: &Shared) -> Result<ListPoolsResponse, Status> {
    let published = shared.published.borrow().clone();
    Ok(ListPoolsResponse {
        pools: published
            .pools
            .values()
            .map(|pool| pool.message())
            .collect(),
    })
}

/// One pool of the latest tick.
pub fn get_pool(shared: &Shared, request: GetPoolRequest) -> Result<Pool, Status> {
    let published = shared.published.borrow().clone();
    match published.pools.get(&request.name) {
        Some(pool) => Ok(pool.message()),
        None => Err(unknown_pool(&request.name, published.pools.keys().cloned())),
    }
}

/// Every agent's status, by node name.
pub fn list_agents(shared: &Shared) -> Result<ListAgentsResponse, Status> {
    Ok(ListAgentsResponse {
        agents: agent_statuses(shared),
    })
}

/// Every agent's status now, sorted by node name (ListAgents and /metrics).
pub fn agent_statuses(shared: &Shared) -> Vec<v1::AgentStatus> {
    let now = Instant::now();
    let tick = shared.interval.as_secs_f64();
    let mut agents: Vec<v1::AgentStatus> = (shared.registry.all().iter())
        .map(|handle| {
            let state = handle.lock().unwrap_or_else(|e| e.into_inner());
            AgentStatusAt {
                state: &state,
                now,
                tick,
            }
            .into()
        })
        .collect();
    agents.sort_by(|a, b| a.node_name.cmp(&b.node_name));
    agents
}

/// Open alerts (and recently resolved ones when asked), of one pool or all.
pub fn list_alerts(
    shared: &Shared,
    request: ListAlertsRequest,
) -> Result<ListAlertsResponse, Status> {
    let published = shared.published.borrow().clone();
    let keep = |a: &&v1::Alert| request.pool.is_empty() || a.pool == request.pool;
    let mut alerts: Vec<v1::Alert> = published.open.iter().filter(keep).cloned().collect();
    if request.include_resolved {
        alerts.extend(published.resolved.iter().filter(keep).cloned());
    }
    Ok(ListAlertsResponse { alerts })
}

/// A pool now and after every tick.
pub fn watch_pool(shared: &Shared, request: WatchPoolRequest) -> Result<BoxStream<Pool>, Status> {
    let name = request.name;
    let mut rx = shared.published.subscribe();
    {
        let published = rx.borrow_and_update();
        // A pool that does not exist yet is fine if ticks have not run;
        // otherwise say so at once.
        if name.is_empty() || (published.tick > 0 && !published.pools.contains_key(&name)) {
            return Err(unknown_pool(&name, published.pools.keys().cloned()));
        }
    }
    let (tx, out) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut first = true;
        loop {
            // While the pool is missing nothing is sent, so nothing else
            // would tell that the client went away: the task would wake
            // every tick for ever.
            if !first {
                let changed = tokio::select! {
                    changed = rx.changed() => changed,
                    () = tx.closed() => return,
                };
                if changed.is_err() {
                    return;
                }
            }
            first = false;
            let pool = rx.borrow_and_update().pools.get(&name).cloned();
            let item = match pool {
                Some(pool) => Ok(pool.message()),
                None => continue,
            };
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(out)))
}

/// Every open alert as FIRED, then every transition as it happens, of one
/// pool or all.
pub fn watch_alerts(
    shared: &Shared,
    request: WatchAlertsRequest,
) -> Result<BoxStream<AlertEvent>, Status> {
    let pool = request.pool;
    // Subscribe first so nothing falls between the snapshot and the
    // stream.
    let mut events = shared.alerts.subscribe();
    let published = shared.published.borrow().clone();
    let (tx, out) = mpsc::channel(256);
    tokio::spawn(async move {
        for alert in (published.open.iter()).filter(|a| pool.is_empty() || a.pool == pool) {
            let event = AlertEvent {
                transition: v1::alert_event::Transition::Fired as i32,
                alert: Some(alert.clone()),
                at: published.evaluated_at,
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
        loop {
            // Events of other pools send nothing: without watching for the
            // client to go, a watcher of a quiet pool would outlive it.
            let received = tokio::select! {
                received = events.recv() => received,
                () = tx.closed() => return,
            };
            match received {
                Ok(event) => {
                    if !pool.is_empty() && event.alert.as_ref().is_none_or(|a| a.pool != pool) {
                        continue;
                    }
                    if tx.send(Ok((*event).clone())).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    let _ = tx
                        .send(Err(Status::resource_exhausted(format!(
                            "this watcher fell {n} alert events behind and was dropped; \
                             call WatchAlerts again (it starts with every open alert)"
                        ))))
                        .await;
                    return;
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(out)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::service::publish::Published;

    /// Waits (up to two seconds) until `live` says no watcher is left.
    async fn all_gone(live: impl Fn() -> usize) -> bool {
        for _ in 0..200 {
            if live() == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// A WatchPool of a pool that does not exist sends nothing; when its
    /// client goes, its task must end all the same.
    #[tokio::test]
    async fn a_pool_watcher_ends_when_its_client_goes() {
        let shared = Shared::new(Duration::from_secs(1), usize::MAX);
        let tick = |tick| {
            (shared.published).send_replace(Arc::new(Published {
                tick,
                ..Published::default()
            }));
        };
        let request = WatchPoolRequest { name: "web".into() };
        let stream = watch_pool(&shared, request).unwrap();
        tick(1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(shared.published.receiver_count(), 1, "watching");
        drop(stream);
        tick(2);
        tick(3);
        assert!(all_gone(|| shared.published.receiver_count()).await);
    }

    /// Likewise a WatchAlerts of one pool while only other pools' alerts
    /// come.
    #[tokio::test]
    async fn an_alert_watcher_ends_when_its_client_goes() {
        let shared = Shared::new(Duration::from_secs(1), usize::MAX);
        let other = || {
            let _ = shared.alerts.send(Arc::new(AlertEvent {
                alert: Some(v1::Alert {
                    pool: "other".into(),
                    ..v1::Alert::default()
                }),
                ..AlertEvent::default()
            }));
        };
        let request = WatchAlertsRequest { pool: "web".into() };
        let stream = watch_alerts(&shared, request).unwrap();
        other();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(shared.alerts.receiver_count(), 1, "watching");
        drop(stream);
        other();
        other();
        assert!(all_gone(|| shared.alerts.receiver_count()).await);
    }
}

//! `evenflow.v1.Distribution`: the query API over the latest tick.

use std::{pin::Pin, sync::Arc, time::Instant};

use evenflow_proto::v1::{
    self, AlertEvent, GetPoolRequest, ListAgentsRequest, ListAgentsResponse, ListAlertsRequest,
    ListAlertsResponse, ListPoolsRequest, ListPoolsResponse, Pool, WatchAlertsRequest,
    WatchPoolRequest, distribution_server::Distribution,
};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::service::engine::Shared;

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
        _req: Request<ListPoolsRequest>,
    ) -> Result<Response<ListPoolsResponse>, Status> {
        let p = self.shared.published.borrow().clone();
        Ok(Response::new(ListPoolsResponse {
            pools: p.pools.values().map(|x| (**x).clone()).collect(),
        }))
    }

    async fn get_pool(&self, req: Request<GetPoolRequest>) -> Result<Response<Pool>, Status> {
        let name = req.into_inner().name;
        let p = self.shared.published.borrow().clone();
        match p.pools.get(&name) {
            Some(x) => Ok(Response::new((**x).clone())),
            None => Err(unknown_pool(&name, p.pools.keys().cloned())),
        }
    }

    async fn list_agents(
        &self,
        _req: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        let now = Instant::now();
        let secs = self.shared.interval.as_secs_f64();
        let mut agents: Vec<v1::AgentStatus> = self
            .shared
            .registry
            .all()
            .iter()
            .map(|h| {
                h.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .status(now, secs)
            })
            .collect();
        agents.sort_by(|a, b| a.node_name.cmp(&b.node_name));
        Ok(Response::new(ListAgentsResponse { agents }))
    }

    async fn list_alerts(
        &self,
        req: Request<ListAlertsRequest>,
    ) -> Result<Response<ListAlertsResponse>, Status> {
        let r = req.into_inner();
        let p = self.shared.published.borrow().clone();
        let keep = |a: &&v1::Alert| r.pool.is_empty() || a.pool == r.pool;
        let mut alerts: Vec<v1::Alert> = p.open.iter().filter(keep).cloned().collect();
        if r.include_resolved {
            alerts.extend(p.resolved.iter().filter(keep).cloned());
        }
        Ok(Response::new(ListAlertsResponse { alerts }))
    }

    type WatchPoolStream = BoxStream<Pool>;

    async fn watch_pool(
        &self,
        req: Request<WatchPoolRequest>,
    ) -> Result<Response<Self::WatchPoolStream>, Status> {
        let name = req.into_inner().name;
        let mut rx = self.shared.published.subscribe();
        {
            let p = rx.borrow_and_update();
            // A pool that does not exist yet is fine if ticks have not run;
            // otherwise say so at once.
            if name.is_empty() || (p.tick > 0 && !p.pools.contains_key(&name)) {
                return Err(unknown_pool(&name, p.pools.keys().cloned()));
            }
        }
        let (tx, out) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut first = true;
            loop {
                if !first && rx.changed().await.is_err() {
                    return;
                }
                first = false;
                let pool = rx.borrow_and_update().pools.get(&name).cloned();
                let item = match pool {
                    Some(p) => Ok((*p).clone()),
                    None => continue,
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    type WatchAlertsStream = BoxStream<AlertEvent>;

    async fn watch_alerts(
        &self,
        req: Request<WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        let pool = req.into_inner().pool;
        // Subscribe first so nothing falls between the snapshot and the
        // stream.
        let mut events = self.shared.alerts.subscribe();
        let p = self.shared.published.borrow().clone();
        let (tx, out) = mpsc::channel(256);
        tokio::spawn(async move {
            for a in p.open.iter().filter(|a| pool.is_empty() || a.pool == pool) {
                let ev = AlertEvent {
                    transition: v1::alert_event::Transition::Fired as i32,
                    alert: Some(a.clone()),
                    at: p.evaluated_at,
                };
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            loop {
                match events.recv().await {
                    Ok(ev) => {
                        if !pool.is_empty() && ev.alert.as_ref().is_none_or(|a| a.pool != pool) {
                            continue;
                        }
                        if tx.send(Ok((*ev).clone())).await.is_err() {
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
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

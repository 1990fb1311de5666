//! `evenflow alerts`: the open (and recently resolved) alerts, or a live
//! stream of their transitions, of every pool or of the pools a name means
//! (a pool's name, or a Kubernetes Service's: see
//! [`crate::names::matching`]).

use std::collections::HashSet;

use anyhow::{Context as _, Result};
use evenflow_proto::v1::{self, distribution_client::DistributionClient};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

use crate::{Output, client, render};

/// The pools whose alerts to show: every pool, or these by name.
#[derive(Debug, PartialEq)]
pub enum Pools {
    All,
    Named(HashSet<String>),
}

impl Pools {
    /// The pools `name` means among `pools` (every pool without a name);
    /// an error saying so when it means none.
    pub fn resolve(pools: &[v1::Pool], name: Option<&str>) -> Result<Self, String> {
        let Some(name) = name else {
            return Ok(Self::All);
        };
        let found = crate::names::resolve(pools, name)?;
        Ok(Self::Named(found.iter().map(|p| p.name.clone()).collect()))
    }

    /// Whether `alert` is of one of these pools.
    pub fn wants(&self, alert: &v1::Alert) -> bool {
        match self {
            Self::All => true,
            Self::Named(names) => names.contains(&alert.pool),
        }
    }
}

/// Runs `evenflow alerts`: the list, or with `watch` the stream.
pub async fn run(
    collector: &client::Collector,
    output: Output,
    watch: bool,
    pool: Option<&str>,
    include_resolved: bool,
) -> Result<()> {
    let mut c = client::connect(collector).await?;
    let pools = pools(&mut c, pool).await?;
    if watch {
        let mut watched = Watched {
            name: pool,
            pools,
            looked_up: HashSet::new(),
            client: c,
        };
        let mut c = client::connect_for_stream(collector).await?;
        stream(&mut c, &mut watched, output).await
    } else {
        list(&mut c, &pools, include_resolved, output).await
    }
}

/// The pools `pool` means, from the collector's list (not asked for
/// without a name).
async fn pools(c: &mut DistributionClient<Channel>, pool: Option<&str>) -> Result<Pools> {
    if pool.is_none() {
        return Ok(Pools::All);
    }
    let listed = c
        .list_pools(v1::ListPoolsRequest {})
        .await
        .map_err(client::call_error)
        .context("listing the collector's pools")?
        .into_inner()
        .pools;
    Pools::resolve(&listed, pool).map_err(anyhow::Error::msg)
}

/// Prints the open alerts (and the recently resolved ones) of `pools`.
async fn list(
    c: &mut DistributionClient<Channel>,
    pools: &Pools,
    include_resolved: bool,
    output: Output,
) -> Result<()> {
    let alerts: Vec<v1::Alert> = c
        .list_alerts(v1::ListAlertsRequest {
            pool: String::new(),
            include_resolved,
        })
        .await
        .map_err(client::call_error)?
        .into_inner()
        .alerts
        .into_iter()
        .filter(|a| pools.wants(a))
        .collect();
    match output {
        Output::Text if alerts.is_empty() => println!("no alerts"),
        Output::Text => alerts
            .iter()
            .for_each(|a| println!("{}", render::alert_text(a))),
        Output::Json => println!(
            "{}",
            serde_json::Value::Array(alerts.iter().map(render::alert_json).collect())
        ),
    }
    Ok(())
}

/// How long a watch waits for the collector's pools when a new pool's
/// alert comes.
const LOOKUP_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The pools a watch prints the alerts of, kept current while it runs: a
/// pool the name comes to mean later (a Service's new port, zone or IP
/// family, a port renamed) is looked up when its first alert comes.
struct Watched<'a> {
    /// What `--pool` said.
    name: Option<&'a str>,
    pools: Pools,
    /// Pools already looked up, matched or not: each is looked up once.
    looked_up: HashSet<String>,
    client: DistributionClient<Channel>,
}

impl Watched<'_> {
    /// Whether `alert` is of a watched pool, looking its pool up again
    /// when it is new.
    async fn wants(&mut self, alert: &v1::Alert) -> bool {
        if self.pools.wants(alert) {
            return true;
        }
        if self.name.is_none() || self.looked_up.contains(&alert.pool) {
            return false;
        }
        // A lookup that fails (or takes too long for a live stream) is
        // tried again at the pool's next alert.
        let request = self.client.list_pools(v1::ListPoolsRequest {});
        let Ok(Ok(listed)) = tokio::time::timeout(LOOKUP_WITHIN, request).await else {
            return false;
        };
        self.looked_up.insert(alert.pool.clone());
        // Added to what is watched: a pool the name meant and no longer
        // means still has its alerts resolve. The name may mean nothing
        // now (the Service deleted).
        let found = Pools::resolve(&listed.into_inner().pools, self.name);
        if let (Ok(Pools::Named(found)), Pools::Named(watched)) = (found, &mut self.pools) {
            watched.extend(found);
        }
        self.pools.wants(alert)
    }
}

/// Prints the transitions of the watched pools' alerts as they happen,
/// every open one first.
async fn stream(
    c: &mut DistributionClient<Channel>,
    watched: &mut Watched<'_>,
    output: Output,
) -> Result<()> {
    let mut stream = c
        .watch_alerts(v1::WatchAlertsRequest {
            pool: String::new(),
        })
        .await
        .map_err(client::call_error)?
        .into_inner();
    while let Some(ev) = stream.next().await {
        let Some(a) = ev.map_err(client::stream_error)?.alert else {
            continue;
        };
        if !watched.wants(&a).await {
            continue;
        }
        match output {
            Output::Text => println!("{}", render::alert_text(&a)),
            Output::Json => println!("{}", render::alert_json(&a)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(pool: &str) -> v1::Alert {
        v1::Alert {
            pool: pool.into(),
            ..Default::default()
        }
    }

    /// Under Kubernetes a pool is `namespace/service:port`: `--pool web`
    /// keeps the alerts of Service web's pools, and only theirs.
    #[test]
    fn a_service_name_keeps_its_pools_alerts() {
        let kube = |ns: &str, service: &str, port: &str| v1::Pool {
            name: format!("{ns}/{service}:{port}"),
            kubernetes: Some(v1::KubernetesService {
                namespace: ns.into(),
                service: service.into(),
                port_name: port.into(),
                port: 80,
                ..Default::default()
            }),
            ..Default::default()
        };
        let pools = [
            kube("default", "web", "http"),
            kube("default", "web", "admin"),
            kube("default", "api", "http"),
            kube("other", "web", "http"),
        ];
        let web = Pools::resolve(&pools, Some("default/web")).expect("resolves");
        assert!(web.wants(&alert("default/web:http")));
        assert!(web.wants(&alert("default/web:admin")));
        assert!(!web.wants(&alert("default/api:http")));
        assert!(!web.wants(&alert("other/web:http")));
        // "web" names both namespaces' Services.
        let every_web = Pools::resolve(&pools, Some("web")).expect("resolves");
        assert!(every_web.wants(&alert("other/web:http")));
        // An exact name keeps its pool alone.
        let one = Pools::resolve(&pools, Some("default/web:http")).expect("resolves");
        assert_eq!(
            one,
            Pools::Named(HashSet::from(["default/web:http".to_owned()]))
        );
    }

    #[test]
    fn a_name_of_nothing_is_an_error_and_no_name_keeps_all() {
        let pools = [v1::Pool {
            name: "web".into(),
            ..Default::default()
        }];
        let err = Pools::resolve(&pools, Some("nope")).expect_err("no pool nope");
        assert!(
            err.contains("no pool or Kubernetes Service \"nope\""),
            "{err}"
        );
        let all = Pools::resolve(&pools, None).expect("every pool");
        assert!(all.wants(&alert("anything")));
    }
}

//! The collector's configuration: one typed struct whose fields are also
//! its command-line flags (each also an `EVENFLOW_*` environment variable).
//!
//! The binary fills it from its command line and environment
//! ([`clap::Parser::parse`]); a program that embeds the collector (the
//! agent's `--embedded-collector`) fills it in code from
//! [`Config::default`], which reads no environment, so the embedding
//! program's own `EVENFLOW_*` variables never configure the collector.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{CommandFactory as _, FromArgMatches as _, Parser};

use crate::detect::Settings;

fn defaults() -> Settings {
    Settings::default()
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e}: write a duration such as 1s, 500ms or 2m"))?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
        return Err(format!("{s} is outside 10ms..1h"));
    }
    Ok(d)
}

fn fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}: write a number"))?;
    if v.is_finite() && v > 0.0 && v < 1.0 {
        Ok(v)
    } else {
        Err(format!("{s} must be strictly between 0 and 1"))
    }
}

fn positive(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}: write a number"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{s} must be a finite number >= 0"))
    }
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".to_owned()),
        Err(e) => Err(format!("{e}: write a whole number such as 10000")),
    }
}

/// evenflow-collector: ingests every agent's report stream, groups backends
/// into pools, judges each pool's traffic shares and serves the results
/// (gRPC evenflow.v1.Distribution with reflection and health, /metrics,
/// Alertmanager webhooks).
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(name = "evenflow-collector", version)]
pub struct Config {
    /// gRPC address (evenflow.v1.Ingest, evenflow.v1.Distribution,
    /// reflection, grpc.health.v1).
    #[arg(long, env = "EVENFLOW_GRPC_ADDR", default_value = "0.0.0.0:50052")]
    pub grpc_addr: SocketAddr,

    /// Prometheus /metrics address.
    #[arg(long, env = "EVENFLOW_METRICS_ADDR", default_value = "0.0.0.0:9465")]
    pub metrics_addr: SocketAddr,

    /// Pool file (TOML): pools, members with weights, draining, load
    /// balancer nodes. Optional: announced listeners form pools on their own.
    #[arg(long, env = "EVENFLOW_POOLS")]
    pub pools: Option<PathBuf>,

    /// Alertmanager-compatible receiver (http://HOST:PORT/api/v2/alerts).
    /// Repeatable; with the env variable, separate URLs by commas.
    #[arg(long = "webhook", env = "EVENFLOW_WEBHOOK", value_delimiter = ',')]
    pub webhooks: Vec<String>,

    /// Base URL put in each webhook alert's generatorURL (followed by
    /// /pools/NAME, which the metrics server answers).
    #[arg(
        long,
        env = "EVENFLOW_EXTERNAL_URL",
        default_value = "http://localhost:9465"
    )]
    pub external_url: String,

    /// Log filter for the collector itself (tracing filter syntax: info,
    /// debug, or info,evenflow_collector=debug).
    #[arg(long, env = "EVENFLOW_LOG", default_value = "info", value_parser = evenflow_daemon::log::parse_filter)]
    pub log: String,

    /// Detection tick: how often pools are judged.
    #[arg(long, env = "EVENFLOW_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Forget an agent (and the members only it announced) after this long
    /// without a report.
    #[arg(long, env = "EVENFLOW_AGENT_RETENTION", default_value = "10m", value_parser = parse_duration)]
    pub agent_retention: Duration,

    /// Agents this collector follows at most. A node that reports for the
    /// first time beyond them is refused (RESOURCE_EXHAUSTED, saying why)
    /// until one is forgotten; an agent already known never is. Guards the
    /// collector's memory and tick against a fleet larger than it was
    /// sized for, or agents that restart under a new name each time
    /// (`cargo xtask bench-scale` on two cores: 5,000 agents of 100
    /// endpoints at a 93 ms tick and 627 MiB; 10,000 project to about
    /// 1.1 GiB).
    #[arg(long, env = "EVENFLOW_MAX_AGENTS", default_value_t = 10_000, value_parser = at_least_one)]
    pub max_agents: usize,

    /// Threads the detection tick spreads its work over (agents and pools
    /// are independent); 0: one per core. The tick's results are the same
    /// with any number.
    #[arg(long, env = "EVENFLOW_TICK_THREADS", default_value_t = 0)]
    pub tick_threads: usize,

    /// ZERO: false-alarm probability per pool per tick (split over the
    /// members): 20 expected connections for a member of a pool of 10.
    #[arg(long, env = "EVENFLOW_ZERO_ALPHA", default_value_t = defaults().zero_alpha, value_parser = fraction)]
    pub zero_alpha: f64,

    /// SKEW: false-alarm probability per pool per tick for pages.
    #[arg(long, env = "EVENFLOW_SKEW_ALPHA", default_value_t = defaults().skew_alpha, value_parser = fraction)]
    pub skew_alpha: f64,

    /// SKEW page band, low side (observed/expected below this).
    #[arg(long, env = "EVENFLOW_PAGE_LOW", default_value_t = defaults().page_low, value_parser = positive)]
    pub page_low: f64,

    /// SKEW page band, high side (observed/expected above this).
    #[arg(long, env = "EVENFLOW_PAGE_HIGH", default_value_t = defaults().page_high, value_parser = positive)]
    pub page_high: f64,

    /// SKEW warning band, low side.
    #[arg(long, env = "EVENFLOW_WARN_LOW", default_value_t = defaults().warn_low, value_parser = positive)]
    pub warn_low: f64,

    /// SKEW warning band, high side.
    #[arg(long, env = "EVENFLOW_WARN_HIGH", default_value_t = defaults().warn_high, value_parser = positive)]
    pub warn_high: f64,

    /// Ticks back inside the warning band before an alert clears.
    #[arg(long, env = "EVENFLOW_CLEAR_TICKS", default_value_t = defaults().clear_ticks)]
    pub clear_ticks: u32,

    /// Ticks a pool's findings wait after its member set changes (in a
    /// set that keeps changing, only the changed members' after 10).
    #[arg(long, env = "EVENFLOW_SETTLE_TICKS", default_value_t = defaults().settle_ticks)]
    pub settle_ticks: u32,

    /// Ticks a member that joins a pool (or listens again after being
    /// down) may take to be picked up by its balancer (kube-proxy's sync,
    /// DNS re-resolution, health checks, a slow start) before it is judged
    /// on its share, and a changed weight to be followed; sooner once the
    /// member takes 70% (`warn_low`) of its share over 3 ticks, or the
    /// split fits the new weights.
    /// 0 judges both at once.
    #[arg(long, env = "EVENFLOW_JOIN_GRACE_TICKS", default_value_t = defaults().join_grace_ticks)]
    pub join_grace_ticks: u64,

    /// An alert that would fire again within this many ticks of resolving
    /// is reopened (counted as a flap) instead of firing anew.
    #[arg(long, env = "EVENFLOW_FLAP_WINDOW", default_value_t = defaults().flap_window)]
    pub flap_window: u64,

    /// A pool with fewer new connections per tick than this (30-tick mean)
    /// abstains: INSUFFICIENT_TRAFFIC.
    #[arg(long, env = "EVENFLOW_MIN_POOL_RATE", default_value_t = defaults().min_pool_rate, value_parser = positive)]
    pub min_pool_rate: f64,

    /// CONCENTRATION when effective members / expected effective members
    /// falls below this.
    #[arg(long, env = "EVENFLOW_CONCENTRATION_RATIO", default_value_t = defaults().concentration_ratio, value_parser = fraction)]
    pub concentration_ratio: f64,

    /// HOT when a member's CPU share exceeds this multiple of its traffic
    /// share...
    #[arg(long, env = "EVENFLOW_HOT_RATIO", default_value_t = defaults().hot_ratio, value_parser = positive)]
    pub hot_ratio: f64,

    /// ...and its node's CPU utilisation is at least this (0..1).
    #[arg(long, env = "EVENFLOW_HOT_MIN_UTILIZATION", default_value_t = defaults().hot_min_utilization, value_parser = positive)]
    pub hot_min_utilization: f64,

    /// Upper bound on the dispersion factor learned from healthy ticks.
    #[arg(long, env = "EVENFLOW_MAX_DISPERSION", default_value_t = defaults().max_dispersion, value_parser = positive)]
    pub max_dispersion: f64,

    /// Load (open connections, bytes): false-alarm probability per pool
    /// per tick for pages, split over members, signals and sides (false
    /// load pages stay below 86,400 times this per pool-day).
    #[arg(long, env = "EVENFLOW_LOAD_ALPHA", default_value_t = defaults().load_alpha, value_parser = fraction)]
    pub load_alpha: f64,

    /// Load: ticks a finding must hold at page level before it pages.
    #[arg(long, env = "EVENFLOW_LOAD_SUSTAIN", default_value_t = defaults().load_sustain, value_parser = clap::value_parser!(u32).range(1..))]
    pub load_sustain: u32,

    /// Load: a member below its share (restarted, new) pages only when,
    /// at the pool's connection turnover, it will not hold half its share
    /// within this many ticks of going low; until then it warns
    /// (refilling).
    #[arg(long, env = "EVENFLOW_LOAD_REFILL", default_value_t = defaults().load_refill)]
    pub load_refill: u64,

    /// A pool holding at least this many open connections is judged on
    /// them (never INSUFFICIENT_TRAFFIC), however few new connections it
    /// opens.
    #[arg(long, env = "EVENFLOW_MIN_POOL_ACTIVE", default_value_t = defaults().min_pool_active, value_parser = positive)]
    pub min_pool_active: f64,

    /// A member whose backend stopped listening on its port (its agent
    /// lists no listener there), or whose host its balancers cannot reach
    /// while its agent is stale, is DOWN: a warning, and a page once it has
    /// been down this many ticks more than up since it first went down (one
    /// long outage, or a crash loop).
    #[arg(long, env = "EVENFLOW_DOWN_PAGE_TICKS", default_value_t = defaults().down_page_ticks, value_parser = clap::value_parser!(u64).range(1..))]
    pub down_page_ticks: u64,

    /// A draining member that still holds open connections this many ticks
    /// after it began draining warns: SKEW on open connections, cause
    /// pinned (long-lived connections outlive the drain). 0 never warns.
    #[arg(long, env = "EVENFLOW_DRAIN_DEADLINE_TICKS", default_value_t = defaults().drain_deadline_ticks)]
    pub drain_deadline_ticks: u64,

    /// PEM certificate (chain) of the gRPC listener; with --tls-key the
    /// listener speaks TLS. Without both, plaintext (for a laptop).
    #[arg(long, env = "EVENFLOW_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "EVENFLOW_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: agents (and every other client of the gRPC listener)
    /// must present a certificate it signed — mutual TLS. Refused peers
    /// are logged with the reason.
    #[arg(long, env = "EVENFLOW_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Form pools from the Kubernetes API, with the in-cluster
    /// configuration (the Pod's ServiceAccount): one pool per Service port,
    /// members from its EndpointSlices, matched to the agents' endpoints by
    /// address (agents need no --service). Needs get, list and watch on
    /// services, endpointslices and nodes.
    #[arg(long, env = "EVENFLOW_KUBERNETES")]
    pub kubernetes: bool,

    /// As --kubernetes, with the API server and credentials of this
    /// kubeconfig file (its current context).
    #[arg(long, env = "EVENFLOW_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubernetes: how long an endpoint that began terminating, or that
    /// was ready and turned not ready, may still get new connections
    /// (kube-proxy has not synced yet) before it is judged as out of the
    /// rules.
    #[arg(long, env = "EVENFLOW_KUBE_DRAIN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub kube_drain_grace: Duration,

    /// A second, read-only listener serving only the query API
    /// (Distribution, reflection, health; no Ingest), plaintext: for people,
    /// the CLI and dashboards when the main listener requires client
    /// certificates.
    #[arg(long, env = "EVENFLOW_QUERY_ADDR")]
    pub query_addr: Option<SocketAddr>,
}

impl Default for Config {
    /// What `evenflow-collector` runs with when given no flag and no
    /// environment variable. The values are the flags' own defaults, read
    /// from their definitions with every environment variable detached, so
    /// they are stated once (in the attributes above) and the caller's
    /// environment plays no part.
    fn default() -> Self {
        let flags = Self::command().mut_args(|a| a.env(None));
        let matches = flags
            .try_get_matches_from(["evenflow-collector"])
            .expect("every collector flag has a default (tested)");
        Self::from_arg_matches(&matches).expect("the defaults parse (tested)")
    }
}

impl Config {
    /// The detector settings these flags give.
    pub fn settings(&self) -> Settings {
        Settings {
            zero_alpha: self.zero_alpha,
            skew_alpha: self.skew_alpha,
            page_low: self.page_low,
            page_high: self.page_high,
            warn_low: self.warn_low,
            warn_high: self.warn_high,
            clear_ticks: self.clear_ticks,
            settle_ticks: self.settle_ticks,
            join_grace_ticks: self.join_grace_ticks,
            flap_window: self.flap_window,
            min_pool_rate: self.min_pool_rate,
            concentration_ratio: self.concentration_ratio,
            hot_ratio: self.hot_ratio,
            hot_min_utilization: self.hot_min_utilization,
            max_dispersion: self.max_dispersion,
            load_alpha: self.load_alpha,
            load_sustain: self.load_sustain,
            load_refill: self.load_refill,
            min_pool_active: self.min_pool_active,
            down_page_ticks: self.down_page_ticks,
            drain_deadline_ticks: self.drain_deadline_ticks,
        }
    }

    /// Where the Kubernetes API is, when pools come from it.
    pub fn kube(&self) -> Option<crate::service::kube::Options> {
        (self.kubernetes || self.kubeconfig.is_some()).then(|| crate::service::kube::Options {
            kubeconfig: self.kubeconfig.clone(),
        })
    }

    /// Checks relations between flags.
    pub fn check(&self) -> Result<(), String> {
        if !(self.page_low <= self.warn_low && self.warn_low < 1.0) {
            return Err(format!(
                "--page-low {} must be <= --warn-low {} < 1",
                self.page_low, self.warn_low
            ));
        }
        if !(1.0 < self.warn_high && self.warn_high <= self.page_high) {
            return Err(format!(
                "1 < --warn-high {} must be <= --page-high {}",
                self.warn_high, self.page_high
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_every_flags_default() {
        let c = Config::default();
        assert_eq!(c.grpc_addr, "0.0.0.0:50052".parse().expect("addr"));
        assert_eq!(c.metrics_addr, "0.0.0.0:9465".parse().expect("addr"));
        assert_eq!(c.interval, Duration::from_secs(1));
        assert_eq!(c.agent_retention, Duration::from_secs(600));
        assert_eq!(c.max_agents, 10_000);
        assert_eq!(c.tick_threads, 0);
        assert_eq!(c.settings(), Settings::default());
        assert_eq!((c.tls_cert, c.tls_key, c.tls_client_ca), (None, None, None));
        assert!(c.pools.is_none() && c.webhooks.is_empty() && c.query_addr.is_none());
        assert_eq!(Config::default().check(), Ok(()));
    }

    #[test]
    fn a_max_agents_of_nothing_is_refused_naming_the_flag() {
        let e = Config::try_parse_from(["evenflow-collector", "--max-agents", "0"])
            .expect_err("no room at all");
        let said = e.to_string();
        assert!(
            said.contains("--max-agents") && said.contains("must be at least 1"),
            "{said}"
        );
        let c = Config::try_parse_from(["evenflow-collector", "--max-agents", "20000"])
            .expect("a larger fleet");
        assert_eq!(c.max_agents, 20_000);
    }
}

//! The state every part of the collector shares: the agents (ingest writes
//! them, the tick reads them), the latest published tick and alert stream
//! (the tick writes them, the API and /metrics read them), and counters.

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use evenflow_proto::v1;
use tokio::sync::{broadcast, watch};

use crate::service::{ingest::Registry, poolfile, publish::Published, webhook};

/// Counters about the tick itself.
#[derive(Default, Debug)]
pub struct TickStats {
    /// Ticks run.
    pub ticks: AtomicU64,
    /// Duration of the last tick, microseconds.
    pub last_tick_micros: AtomicU64,
    /// Longest tick, microseconds.
    pub max_tick_micros: AtomicU64,
    /// Alert transitions.
    pub transitions: AtomicU64,
    /// Ticks skipped because the previous one overran.
    pub overruns: AtomicU64,
}

/// State shared by the tick, the gRPC services and /metrics.
pub struct Shared {
    /// Every agent.
    pub registry: Registry,
    /// The latest tick's results.
    pub published: watch::Sender<Arc<Published>>,
    /// Alert transitions as they happen.
    pub alerts: broadcast::Sender<Arc<v1::AlertEvent>>,
    /// The detection interval.
    pub interval: Duration,
    /// Tick counters.
    pub stats: TickStats,
    /// Webhook counters.
    pub webhook_stats: Arc<webhook::Stats>,
    /// Pool file reload counters.
    pub pool_file: Arc<poolfile::ReloadStats>,
    /// TLS file reload counters.
    pub tls: Arc<evenflow_daemon::tls::ReloadStats>,
}

impl Shared {
    /// Fresh shared state, for at most `max_agents` agents.
    pub fn new(interval: Duration, max_agents: usize) -> Arc<Self> {
        let (published, _) = watch::channel(Arc::new(Published::default()));
        let (alerts, _) = broadcast::channel(4096);
        Arc::new(Self {
            registry: Registry::new(max_agents),
            published,
            alerts,
            interval,
            stats: TickStats::default(),
            webhook_stats: Arc::default(),
            pool_file: Arc::default(),
            tls: Arc::default(),
        })
    }
}

//! Ingest, the path a report takes: [`validate`](mod@validate) (checked and parsed before
//! anything is touched) → [`agent`] (that agent's counter state machine)
//! → [`registry`] (every agent by node name). [`rates`] hands each agent's
//! counts to the tick. [`ReportStream`] runs these stages for one agent's
//! stream; the gRPC adapter is `crate::service::api::ingest`.

pub mod agent;
pub mod rates;
pub mod registry;
#[cfg(test)]
mod tests;
pub mod validate;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Instant,
};

pub use agent::{AgentState, Applied, Delta, Dir, EpKey, ListenerInfo};
use evenflow_proto::v1::{AgentReport, ReportAck};
pub use rates::{AgentTick, TickEndpoint};
pub use registry::{IngestCounters, Registry};
use tracing::{info, warn};
pub use validate::{InvalidReport, Parsed, canonical, validate, validate_identity};

/// Numbers each report stream.
static STREAMS: AtomicU64 = AtomicU64::new(1);

/// Why a report stream ends.
#[derive(Debug, thiserror::Error)]
pub enum StreamEnd {
    /// A report that does not name its agent: every later report would be
    /// refused too.
    #[error("invalid report: {0}")]
    Unidentified(InvalidReport),
    /// Another live agent process reports under the same node name.
    #[error("{0}")]
    NameTaken(String),
    /// A new agent, and the collector follows as many as it may.
    #[error(transparent)]
    Full(#[from] registry::Full),
}

/// One agent's report stream as ingest sees it: its number, the parse
/// buffers it reuses, and the agent it last delivered for.
pub struct ReportStream {
    id: u64,
    peer: Option<SocketAddr>,
    parsed: Parsed,
    current: Option<(String, Arc<Mutex<AgentState>>)>,
}

impl ReportStream {
    /// A new stream from `peer`.
    pub fn new(peer: Option<SocketAddr>) -> Self {
        Self {
            id: STREAMS.fetch_add(1, Relaxed),
            peer,
            parsed: Parsed::default(),
            current: None,
        }
    }

    /// Ingests one report: its acknowledgement (with `rejected` set when
    /// this report alone is refused), or why the stream ends. The reports
    /// already acknowledged stay applied either way.
    pub fn ingest(
        &mut self,
        registry: &Registry,
        report: &AgentReport,
    ) -> Result<ReportAck, StreamEnd> {
        let peer = self.peer;
        if let Err(e) = validate(report, &mut self.parsed) {
            registry.counters.invalid.fetch_add(1, Relaxed);
            warn!(?peer, node = %report.node_name, seq = report.sequence, "rejected report: {e}");
            // A report that names its agent is rejected alone: the agent
            // drops it and the stream goes on (the next report's
            // cumulative counters carry its traffic). Without a usable
            // identity every report would fail, so the stream ends.
            return match validate_identity(report) {
                Ok(()) => Ok(ReportAck {
                    agent_run: report.agent_run,
                    acked_sequence: report.sequence,
                    rejected: format!("invalid report: {e}"),
                }),
                Err(_) => Err(StreamEnd::Unidentified(e)),
            };
        }
        let mut handle = self.agent(registry, report).inspect_err(|e| {
            warn!(?peer, "refused an agent: {e}");
        })?;
        let mut state = loop {
            let state = handle.lock().unwrap_or_else(|e| e.into_inner());
            if !state.forgotten {
                break state;
            }
            // The registry forgot the agent while this stream held it (it
            // was silent longer than --agent-retention, its connection
            // open): it is known again, from a new state, so this report
            // is its first again (a baseline).
            drop(state);
            info!(?peer, node = %report.node_name, "forgotten agent reports again: its counts start from a new baseline");
            handle = registry
                .get_or_insert(&report.node_name)
                .inspect_err(|e| warn!(?peer, "refused an agent: {e}"))?;
            self.current = Some((report.node_name.clone(), handle.clone()));
        };
        if let Err(e) = state.check_owner(self.id, report, Instant::now()) {
            registry.counters.invalid.fetch_add(1, Relaxed);
            warn!(?peer, node = %report.node_name, "rejected report: {e}");
            return Err(StreamEnd::NameTaken(e));
        }
        let applied = state.apply(report, &self.parsed, &registry.counters);
        // The stream that delivers new reports owns the name; an old one
        // of the same run replaying does not take it back.
        if applied != Applied::Replay {
            state.set_stream(self.id);
        }
        if let Applied::New { reset: true } = applied {
            info!(node = %report.node_name, epoch = report.agent_epoch, "agent counters reset (new epoch)");
        }
        // For a replay of the current run, ack what we have.
        let acked = if state.run() == report.agent_run {
            state.last_seq()
        } else {
            report.sequence
        };
        Ok(ReportAck {
            agent_run: report.agent_run,
            acked_sequence: acked,
            rejected: String::new(),
        })
    }

    /// The state of the report's agent: the one this stream delivered for
    /// last, else looked up (created on first use) in the registry. The
    /// caller checks, under its lock, that the registry has not forgotten
    /// it since.
    fn agent(
        &mut self,
        registry: &Registry,
        report: &AgentReport,
    ) -> Result<Arc<Mutex<AgentState>>, registry::Full> {
        match &self.current {
            Some((node, state)) if *node == report.node_name => Ok(state.clone()),
            _ => {
                let state = registry.get_or_insert(&report.node_name)?;
                if self.current.is_none() {
                    info!(peer = ?self.peer, node = %report.node_name, run = report.agent_run, "agent connected");
                }
                self.current = Some((report.node_name.clone(), state.clone()));
                Ok(state)
            }
        }
    }
}

impl Drop for ReportStream {
    /// A stream that ends lets its agent's name go: the same agent
    /// restarted (a new run) is taken at once, not refused as a second
    /// process until the old one's reports age out.
    fn drop(&mut self) {
        if let Some((_, state)) = &self.current {
            state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .release_stream(self.id);
        }
    }
}

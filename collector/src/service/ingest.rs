//! `evenflow.v1.Ingest`: one bidirectional stream per agent.
//!
//! Each report is checked before anything is touched; a valid one is
//! applied to its agent's state (that agent's lock only) and acknowledged,
//! a replay is acknowledged without changing anything. An invalid report
//! ends the stream with `INVALID_ARGUMENT` naming the problem; the
//! reports already acknowledged stay applied and no other agent notices.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use evenflow_proto::v1::{AgentReport, ReportAck, ingest_server::Ingest};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::service::{
    agents::{AgentState, Applied, Parsed, validate, validate_identity},
    engine::Shared,
};

/// Numbers each Report stream.
static STREAMS: AtomicU64 = AtomicU64::new(1);

/// The Ingest service.
pub struct IngestService {
    shared: Arc<Shared>,
}

impl IngestService {
    /// Serves ingest into `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type ReportStream = Pin<Box<dyn Stream<Item = Result<ReportAck, Status>> + Send>>;

    async fn report(
        &self,
        req: Request<Streaming<AgentReport>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let peer = req.remote_addr();
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<ReportAck, Status>>(64);
        let shared = self.shared.clone();
        let stream_id = STREAMS.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            let mut parsed = Parsed::default();
            let mut current: Option<(String, Arc<Mutex<AgentState>>)> = None;
            loop {
                let report = match inbound.next().await {
                    Some(Ok(r)) => r,
                    Some(Err(s)) => {
                        debug!(?peer, "report stream ended: {}", s.message());
                        return;
                    }
                    None => return,
                };
                if let Err(e) = validate(&report, &mut parsed) {
                    shared.registry.counters.invalid.fetch_add(1, Relaxed);
                    warn!(?peer, node = %report.node_name, seq = report.sequence, "rejected report: {e}");
                    // A report that names its agent is rejected alone: the
                    // agent drops it and the stream goes on (the next
                    // report's cumulative counters carry its traffic).
                    // Without a usable identity every report would fail,
                    // so the stream ends with the reason.
                    let reply = if validate_identity(&report).is_ok() {
                        Ok(ReportAck {
                            agent_run: report.agent_run,
                            acked_sequence: report.sequence,
                            rejected: format!("invalid report: {e}"),
                        })
                    } else {
                        Err(Status::invalid_argument(format!("invalid report: {e}")))
                    };
                    let end = reply.is_err();
                    if tx.send(reply).await.is_err() || end {
                        return;
                    }
                    continue;
                }
                let state = match &current {
                    Some((n, s)) if *n == report.node_name => s.clone(),
                    _ => {
                        let s = shared.registry.get_or_insert(&report.node_name);
                        if current.is_none() {
                            info!(?peer, node = %report.node_name, run = report.agent_run, "agent connected");
                        }
                        current = Some((report.node_name.clone(), s.clone()));
                        s
                    }
                };
                let ack = (|| -> Result<ReportAck, String> {
                    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                    st.check_owner(stream_id, &report, std::time::Instant::now())?;
                    st.set_stream(stream_id);
                    let applied = st.apply(&report, &parsed, &shared.registry.counters);
                    if let Applied::New { reset: true } = applied {
                        info!(node = %report.node_name, epoch = report.agent_epoch, "agent counters reset (new epoch)");
                    }
                    // For a replay of the current run, ack what we have.
                    let acked = if st.run() == report.agent_run {
                        st.last_seq()
                    } else {
                        report.sequence
                    };
                    Ok(ReportAck {
                        agent_run: report.agent_run,
                        acked_sequence: acked,
                        rejected: String::new(),
                    })
                })();
                let ack = match ack {
                    Ok(a) => a,
                    Err(e) => {
                        shared.registry.counters.invalid.fetch_add(1, Relaxed);
                        warn!(?peer, node = %report.node_name, "rejected report: {e}");
                        let _ = tx.send(Err(Status::failed_precondition(e))).await;
                        return;
                    }
                };
                if tx.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

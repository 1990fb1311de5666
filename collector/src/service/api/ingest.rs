//! `evenflow.v1.Ingest`: one bidirectional stream per agent. The work is
//! [`crate::service::ingest::ReportStream`]; this adapter pumps the gRPC
//! stream through it. An invalid report is refused alone (its ack says
//! why); a report with no usable identity, from a second agent under a
//! live agent's name, or from a new agent when the collector follows as
//! many as it may, ends the stream with the reason.

use std::{pin::Pin, sync::Arc};

use evenflow_proto::v1::{AgentReport, ReportAck, ingest_server::Ingest};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::service::{
    ingest::{ReportStream, StreamEnd},
    shared::Shared,
};

/// The acknowledgements of one report stream.
pub type AckStream = Pin<Box<dyn Stream<Item = Result<ReportAck, Status>> + Send>>;

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

impl From<StreamEnd> for Status {
    fn from(end: StreamEnd) -> Self {
        match end {
            StreamEnd::Unidentified(_) => Status::invalid_argument(end.to_string()),
            StreamEnd::NameTaken(_) => Status::failed_precondition(end.to_string()),
            StreamEnd::Full(_) => Status::resource_exhausted(end.to_string()),
        }
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type ReportStream = AckStream;

    async fn report(
        &self,
        request: Request<Streaming<AgentReport>>,
    ) -> Result<Response<AckStream>, Status> {
        report(self.shared.clone(), request)
    }
}

/// Ingests one agent's reports as they arrive, acknowledging each, until
/// the agent hangs up or ingest ends the stream.
pub fn report(
    shared: Arc<Shared>,
    request: Request<Streaming<AgentReport>>,
) -> Result<Response<AckStream>, Status> {
    let peer = request.remote_addr();
    let mut inbound = request.into_inner();
    let (tx, rx) = mpsc::channel::<Result<ReportAck, Status>>(64);
    tokio::spawn(async move {
        let mut stream = ReportStream::new(peer);
        loop {
            let report = match inbound.next().await {
                Some(Ok(report)) => report,
                // A message that could not be decoded (too large, not
                // protobuf) or a broken transport: said to the agent, which
                // would otherwise replay it at every reconnect not knowing
                // why; a refused message is logged for the operator too.
                Some(Err(status)) => {
                    match status.code() {
                        Code::Cancelled | Code::Unknown | Code::Unavailable => {
                            debug!(?peer, "report stream ended: {}", status.message())
                        }
                        _ => warn!(?peer, "refused a report: {}", status.message()),
                    }
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                None => return,
            };
            let reply = stream
                .ingest(&shared.registry, &report)
                .map_err(Status::from);
            let end = reply.is_err();
            if tx.send(reply).await.is_err() || end {
                return;
            }
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

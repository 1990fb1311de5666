//! The gRPC node API (`evenflow.v1.Node`), with server reflection and
//! `grpc.health.v1`, so `grpcurl -plaintext ADDR list` works out of the box.

use std::{net::SocketAddr, pin::Pin, sync::Arc};

use anyhow::{Context as _, Result};
use evenflow_proto::v1::{
    GetSnapshotRequest, Snapshot, WatchSnapshotsRequest,
    node_server::{self, Node, NodeServer},
};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt as _, wrappers::WatchStream};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::snapshot;

/// Answers from the latest snapshot the agent loop published.
pub struct NodeService {
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn get_snapshot(
        &self,
        req: Request<GetSnapshotRequest>,
    ) -> Result<Response<Snapshot>, Status> {
        let snap = self.snapshots.borrow().clone();
        if snap.sequence == 0 {
            return Err(Status::unavailable(
                "the agent has not read its counters yet; retry after one interval",
            ));
        }
        Ok(Response::new(snapshot::filter(
            &snap,
            &req.get_ref().service,
        )))
    }

    type WatchSnapshotsStream = Pin<Box<dyn Stream<Item = Result<Snapshot, Status>> + Send>>;

    async fn watch_snapshots(
        &self,
        req: Request<WatchSnapshotsRequest>,
    ) -> Result<Response<Self::WatchSnapshotsStream>, Status> {
        let service = req.into_inner().service;
        let stream = WatchStream::new(self.snapshots.clone())
            .filter(|s| s.sequence != 0)
            .map(move |s| Ok(snapshot::filter(&s, &service)));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serves the node API, reflection and health on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let (health, router) = evenflow_daemon::grpc::health_and_reflection(
        &mut tonic::transport::Server::builder(),
        &[node_server::SERVICE_NAME],
    )?;
    health.set_serving::<NodeServer<NodeService>>().await;
    let listener = evenflow_daemon::bind("--grpc-addr", addr).await?;
    info!(%addr, "serving gRPC (evenflow.v1.Node, reflection, health)");
    router
        .add_service(NodeServer::new(NodeService { snapshots }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                let _ = shutdown.changed().await;
            },
        )
        .await
        .context("gRPC server")?;
    Ok(())
}

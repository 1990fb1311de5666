//! Starts everything: gRPC (Ingest, Distribution, reflection, health),
//! /metrics, the detection tick and the webhook senders.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
};

use evenflow_daemon::{BindError, bind, grpc::ReflectionError, http, tls};
use evenflow_proto::v1::{
    distribution_server::{self, DistributionServer},
    ingest_server::{self, IngestServer},
};
use tokio::{sync::watch, task::JoinHandle};
use tonic::transport::server::Router;
use tracing::info;

use crate::{
    parallel::Threads,
    service::{
        api::{ingest::IngestService, query::DistributionService},
        config::Config,
        declared::Sources,
        poolfile::{self, PoolFileError},
        shared::Shared,
        tick::Engine,
        webhook,
    },
};

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listening address could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The pool file is unusable.
    #[error(transparent)]
    PoolFile(#[from] PoolFileError),
    /// A webhook URL is unusable.
    #[error(transparent)]
    Webhook(#[from] webhook::BadUrl),
    /// Flags contradict each other.
    #[error("{0}")]
    Flags(String),
    /// Reflection could not be built.
    #[error(transparent)]
    Reflection(#[from] ReflectionError),
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The tick thread could not start.
    #[error("starting the detection thread: {0}")]
    Thread(std::io::Error),
    /// The Kubernetes API configuration is unusable.
    #[error(transparent)]
    Kube(#[from] crate::service::kube::KubeError),
}

/// A running collector.
pub struct Running {
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound /metrics address.
    pub metrics_addr: SocketAddr,
    /// State shared by every part.
    pub shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    metrics: JoinHandle<()>,
    tick: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Stops serving and waits for the gRPC server to finish.
    pub async fn shutdown(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        self.metrics.abort();
        // Agents' report streams never end on their own: give in-flight
        // calls a moment, then stop serving.
        if tokio::time::timeout(std::time::Duration::from_secs(1), &mut self.grpc)
            .await
            .is_err()
        {
            self.grpc.abort();
        }
        if let Some(t) = self.tick.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Waits until the gRPC server ends (after a shutdown or an error).
    pub async fn wait(&mut self) -> Result<(), String> {
        match (&mut self.grpc).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("gRPC server: {e}")),
            Err(e) => Err(format!("gRPC server task: {e}")),
        }
    }

    /// Asks every part to stop.
    pub fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.shutdown.send(true);
    }
}

/// The query API over `shared`, as both listeners serve it.
fn distribution(shared: &Arc<Shared>) -> DistributionServer<DistributionService> {
    DistributionServer::new(DistributionService::new(shared.clone()))
        .max_encoding_message_size(256 << 20)
}

/// Starts the collector on the current tokio runtime.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    config.check().map_err(StartError::Flags)?;
    let shared = Shared::new(config.interval, config.max_agents);
    let (file, reloader) = match &config.pools {
        Some(path) => {
            let (file, reloader) = poolfile::Reloader::start(path, shared.pool_file.clone())?;
            (file, Some(reloader))
        }
        None => Default::default(),
    };
    let kube = match config.kube() {
        Some(opts) => Some(crate::service::kube::KubePools::new(
            crate::service::kube::start(&opts).await?,
            config.kube_drain_grace,
        )),
        None => None,
    };
    let hooks = webhook::Queue::start(
        &config.webhooks,
        &config.external_url,
        shared.webhook_stats.clone(),
    )?;

    let grpc_listener = bind("--grpc-addr", config.grpc_addr).await?;
    let metrics_listener = bind("--metrics-addr", config.metrics_addr).await?;
    let grpc_addr = grpc_listener.local_addr().unwrap_or(config.grpc_addr);
    let metrics_addr = metrics_listener.local_addr().unwrap_or(config.metrics_addr);

    let (shutdown, shutdown_rx) = watch::channel(false);
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(
            tls::ListenerFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.tls_client_ca.clone(),
            }
            .watch(shared.tls.clone())?,
        ),
        _ => None,
    };
    if let Some(addr) = config.query_addr {
        serve_query(addr, &shared, shutdown_rx.clone()).await?;
    }
    let mut metrics_stop = shutdown_rx.clone();
    let router = grpc_router(&shared).await?;
    let mut grpc_stop = shutdown_rx;
    let stopped = async move {
        let _ = grpc_stop.changed().await;
    };
    let grpc = match tls {
        Some(acceptor) => tokio::spawn(
            router.serve_with_incoming_shutdown(tls::incoming(grpc_listener, acceptor), stopped),
        ),
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
            stopped,
        )),
    };
    let pages = shared.clone();
    let metrics = tokio::spawn(http::serve(
        metrics_listener,
        move |path| crate::service::api::metrics::page(path, &pages),
        async move {
            let _ = metrics_stop.changed().await;
        },
    ));

    let stop = Arc::new(AtomicBool::new(false));
    // Started last, when nothing else can fail: it ends with `stop`.
    let reloads = match reloader {
        Some(reloader) => Some(reloader.spawn(stop.clone()).map_err(StartError::Thread)?),
        None => None,
    };
    let engine = Engine::new(
        shared.clone(),
        config.settings(),
        Sources::new(file, reloads, kube),
        hooks,
        config.agent_retention,
        Threads::new(config.tick_threads),
    );
    let tick_stop = stop.clone();
    let tick = std::thread::Builder::new()
        .name("evenflow-tick".into())
        .spawn(move || engine.run(tick_stop))
        .map_err(StartError::Thread)?;
    info!(
        %grpc_addr,
        %metrics_addr,
        interval = ?config.interval,
        pools_file = ?config.pools,
        kubernetes = config.kube().is_some(),
        webhooks = config.webhooks.len(),
        "collector serving (evenflow.v1.Ingest, evenflow.v1.Distribution, reflection, health; /metrics)"
    );
    Ok(Running {
        grpc_addr,
        metrics_addr,
        shared,
        stop,
        shutdown,
        grpc,
        metrics,
        tick: Some(tick),
    })
}

/// The read-only query listener: Distribution, reflection and health,
/// until `stop` changes.
async fn serve_query(
    addr: SocketAddr,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), StartError> {
    let listener = bind("--query-addr", addr).await?;
    let (reporter, router) = evenflow_daemon::grpc::health_and_reflection(
        &mut tonic::transport::Server::builder(),
        &[distribution_server::SERVICE_NAME],
    )?;
    reporter
        .set_serving::<DistributionServer<DistributionService>>()
        .await;
    let router = router.add_service(distribution(shared));
    info!(%addr, "serving the read-only query API (evenflow.v1.Distribution)");
    tokio::spawn(router.serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        async move {
            let _ = stop.changed().await;
        },
    ));
    Ok(())
}

/// The main gRPC listener's services: Ingest, Distribution, reflection and
/// health.
async fn grpc_router(shared: &Arc<Shared>) -> Result<Router, StartError> {
    let (health, router) = evenflow_daemon::grpc::health_and_reflection(
        &mut tonic::transport::Server::builder().tcp_nodelay(true),
        &[
            ingest_server::SERVICE_NAME,
            distribution_server::SERVICE_NAME,
        ],
    )?;
    health.set_serving::<IngestServer<IngestService>>().await;
    health
        .set_serving::<DistributionServer<DistributionService>>()
        .await;
    Ok(router
        .add_service(
            IngestServer::new(IngestService::new(shared.clone()))
                .max_decoding_message_size(64 << 20),
        )
        .add_service(distribution(shared)))
}

//! Starts everything: gRPC (Ingest, Distribution, reflection, health),
//! /metrics, the detection tick and the webhook senders.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
};

use evenflow_proto::v1::{distribution_server::DistributionServer, ingest_server::IngestServer};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::info;

use crate::service::{
    config::Config,
    declared::Sources,
    engine::{Engine, Shared},
    ingest::IngestService,
    poolfile::{self, PoolFileError},
    query::DistributionService,
    webhook,
};

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listening address could not be bound.
    #[error("binding {flag} {addr}: {source}; pick a free address")]
    Bind {
        /// Which flag.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
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
    #[error("building gRPC reflection: {0}")]
    Reflection(String),
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] crate::service::tls::TlsError),
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

/// Starts the collector on the current tokio runtime.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    config.check().map_err(StartError::Flags)?;
    let file = match &config.pools {
        Some(p) => poolfile::load(p)?,
        None => Default::default(),
    };
    let kube = match config.kube() {
        Some(opts) => Some(crate::service::kube::KubePools::new(
            crate::service::kube::start(&opts).await?,
            config.kube_drain_grace,
        )),
        None => None,
    };
    let shared = Shared::new(config.interval);
    let hooks = webhook::Queue::start(
        &config.webhooks,
        &config.external_url,
        shared.webhook_stats.clone(),
    )?;

    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|source| StartError::Bind {
            flag: "--grpc-addr",
            addr: config.grpc_addr,
            source,
        })?;
    let metrics_listener = TcpListener::bind(config.metrics_addr)
        .await
        .map_err(|source| StartError::Bind {
            flag: "--metrics-addr",
            addr: config.metrics_addr,
            source,
        })?;
    let grpc_addr = grpc_listener.local_addr().unwrap_or(config.grpc_addr);
    let metrics_addr = metrics_listener.local_addr().unwrap_or(config.metrics_addr);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<IngestServer<IngestService>>()
        .await;
    health_reporter
        .set_serving::<DistributionServer<DistributionService>>()
        .await;
    let reflection = evenflow_proto::reflection;
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    // v1alpha too: grpcurl 1.8 only speaks the older reflection protocol.
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| StartError::Reflection(e.to_string()))?;

    let (shutdown, mut shutdown_rx) = watch::channel(false);
    let ingest =
        IngestServer::new(IngestService::new(shared.clone())).max_decoding_message_size(64 << 20);
    let distribution = DistributionServer::new(DistributionService::new(shared.clone()))
        .max_encoding_message_size(256 << 20);
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(crate::service::tls::acceptor(
            cert,
            key,
            config.tls_client_ca.as_deref(),
        )?),
        _ => None,
    };
    // The read-only query listener: Distribution, reflection and health.
    if let Some(addr) = config.query_addr {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                flag: "--query-addr",
                addr,
                source,
            })?;
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_serving::<DistributionServer<DistributionService>>()
            .await;
        let router = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(
                reflection()
                    .build_v1()
                    .map_err(|e| StartError::Reflection(e.to_string()))?,
            )
            .add_service(
                reflection()
                    .build_v1alpha()
                    .map_err(|e| StartError::Reflection(e.to_string()))?,
            )
            .add_service(
                DistributionServer::new(DistributionService::new(shared.clone()))
                    .max_encoding_message_size(256 << 20),
            );
        let mut stop = shutdown_rx.clone();
        info!(%addr, "serving the read-only query API (evenflow.v1.Distribution)");
        tokio::spawn(router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                let _ = stop.changed().await;
            },
        ));
    }
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ingest)
        .add_service(distribution);
    let stopped = async move {
        let _ = shutdown_rx.changed().await;
    };
    let grpc = match tls {
        Some(acceptor) => tokio::spawn(router.serve_with_incoming_shutdown(
            crate::service::tls::incoming(grpc_listener, acceptor),
            stopped,
        )),
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
            stopped,
        )),
    };
    let metrics = tokio::spawn(crate::service::metrics::serve(
        metrics_listener,
        shared.clone(),
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let engine = Engine::new(
        shared.clone(),
        config.settings(),
        Sources::new(file, kube),
        hooks,
        config.agent_retention,
    );
    let stop2 = stop.clone();
    let tick = std::thread::Builder::new()
        .name("evenflow-tick".into())
        .spawn(move || engine.run(stop2))
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

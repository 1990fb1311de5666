//! `evenflow-collector`: ingests every agent's report stream, groups
//! backends into pools, judges them and serves the results.

use anyhow::{Context as _, Result};
use clap::Parser as _;
use evenflow_collector::service::{config::Config, server};
use tracing::info;

fn main() -> Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("evenflow-collector")
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(config))
}

async fn run(config: Config) -> Result<()> {
    let mut running = server::start(&config)
        .await
        .context("starting evenflow-collector")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = running.wait() => return r.map_err(anyhow::Error::msg),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        _ = term.recv() => info!("SIGTERM: shutting down"),
    }
    running.shutdown().await;
    Ok(())
}

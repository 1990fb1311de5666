//! `evenflow-collector`: ingests every agent's report stream, groups
//! backends into pools, judges them and serves the results.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser as _;
use evenflow_collector::service::{config::Config, server};
use tracing::{error, info};

fn main() -> ExitCode {
    let config = Config::parse();
    evenflow_daemon::log::init(&config.log);
    let ran = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("evenflow-collector")
        .build()
        .context("starting the tokio runtime")
        .and_then(|rt| rt.block_on(run(config)));
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        // One line, the causes after the context: what an operator reads
        // in `kubectl logs` or a terminal.
        Err(e) => {
            error!("{e:#}");
            eprintln!("evenflow-collector: {e:#}");
            ExitCode::FAILURE
        }
    }
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

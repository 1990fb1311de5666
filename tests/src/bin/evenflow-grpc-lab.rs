//! `evenflow-grpc-lab`: the lab's long-lived-connection workloads as a
//! process to run inside a lab node: a gRPC backend that counts what it
//! serves (`serve`), gRPC clients holding channels open (`call`), and
//! HTTP/1.1 keep-alive clients (`keepalive`). Each writes its counters to
//! `--stats` every 100 ms (see `evenflow_tests::grpclab`).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use evenflow_tests::grpclab::{self, Load};

#[derive(Parser)]
#[command(name = "evenflow-grpc-lab", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A gRPC backend (evenflow.lab.v1.Echo) counting its connections,
    /// calls and bytes.
    Serve {
        /// Address to listen on, e.g. [::]:7070.
        #[arg(long)]
        listen: SocketAddr,
        /// The name replies carry.
        #[arg(long, default_value = "backend")]
        name: String,
        /// Where to write the counters (JSON).
        #[arg(long)]
        stats: PathBuf,
    },
    /// gRPC clients: channels held open, unary calls on each continuously.
    Call(ClientArgs),
    /// HTTP/1.1 keep-alive clients: connections held open, `GET /` on each
    /// continuously.
    Keepalive(ClientArgs),
}

#[derive(clap::Args)]
struct ClientArgs {
    /// Where to connect (the load balancer's VIP and port).
    #[arg(long)]
    target: SocketAddr,
    /// Channels or connections held open.
    #[arg(long, default_value_t = 100)]
    channels: usize,
    /// Pause between one channel's calls, milliseconds.
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
    /// Request payload bytes (gRPC).
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Reply payload bytes (gRPC).
    #[arg(long, default_value_t = 1000)]
    reply: u32,
    /// Over how long the channels open, one after another, milliseconds.
    #[arg(long, default_value_t = 0)]
    ramp_ms: u64,
    /// Where to write the counters (JSON).
    #[arg(long)]
    stats: PathBuf,
}

impl ClientArgs {
    fn load(&self) -> Load {
        Load {
            channels: self.channels,
            interval: Duration::from_millis(self.interval_ms),
            payload: self.payload,
            reply: self.reply,
            ramp: Duration::from_millis(self.ramp_ms),
        }
    }
}

/// Runs `f` on a small runtime.
fn on_runtime(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(f)
}

fn main() -> ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Serve {
            listen,
            name,
            stats,
        } => on_runtime(grpclab::serve(listen, name, stats)),
        Cmd::Call(a) => on_runtime(grpclab::call(a.target, a.load(), a.stats.clone())),
        Cmd::Keepalive(a) => grpclab::keepalive(a.target, a.load(), a.stats.clone()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("evenflow-grpc-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

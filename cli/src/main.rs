//! `evenflow`: the operator's command line for an evenflow collector.
//!
//! Everything here reads the collector's `evenflow.v1.Distribution` gRPC
//! API; nothing needs privileges.

mod alerts;
mod client;
mod names;
mod render;
mod top;
mod verify;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use evenflow_proto::v1;

const EXAMPLES: &str = "\
Examples:
  evenflow status
  evenflow top web
  evenflow alerts --watch
  # The deploy gate, right after a load balancer change:
  evenflow verify --pool web --for 60s && echo 'rollout may proceed'";

/// Where traffic really goes: status, live view, alerts and the deploy gate.
///
/// A call the collector has not answered within 10s fails (the stream of
/// `alerts --watch` excepted).
#[derive(Parser, Debug)]
#[command(name = "evenflow", version, after_help = EXAMPLES)]
struct Cli {
    /// The collector's gRPC address (http:// or https://, its gRPC port).
    #[arg(
        long,
        global = true,
        env = "EVENFLOW_COLLECTOR",
        default_value = "http://127.0.0.1:50052",
        value_parser = evenflow_daemon::parse_collector_url
    )]
    collector: String,

    /// PEM CA bundle that signed the collector's certificate: what an
    /// https:// --collector is verified with.
    #[arg(long, global = true, env = "EVENFLOW_CLI_TLS_CA")]
    tls_ca: Option<PathBuf>,

    /// PEM client certificate, for a collector that requires one (mutual
    /// TLS); needs --tls-key.
    #[arg(
        long,
        global = true,
        env = "EVENFLOW_CLI_TLS_CERT",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(
        long,
        global = true,
        env = "EVENFLOW_CLI_TLS_KEY",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,

    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,

    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// For people.
    Text,
    /// One JSON document (or one per line for streams), for scripts.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Agents, pools, members and their states in one screen.
    ///
    /// Example: evenflow status --output json | jq '.pools[].verdict'
    Status,
    /// A live view of every member's share of new connections, open
    /// connections and bytes against its expected share.
    ///
    /// Example: evenflow top web   (q quits)
    Top {
        /// Only this pool.
        pool: Option<String>,
        /// Refresh interval, 100ms to 1h.
        #[arg(long, default_value = "1s", value_parser = evenflow_daemon::parse_interval)]
        interval: Duration,
    },
    /// Current alerts, or a live stream of transitions with --watch.
    ///
    /// Example: evenflow alerts --watch --pool web
    Alerts {
        /// Stream transitions (fired, updated, resolved) as they happen.
        #[arg(long)]
        watch: bool,
        /// Only this pool, or a Kubernetes Service's pools (web,
        /// default/web, web:http); exits 1 if it names none. With --watch,
        /// also the pools it comes to name while the watch runs (a new
        /// port, zone or IP family of the Service).
        #[arg(long)]
        pool: Option<String>,
        /// Include recently resolved alerts.
        #[arg(long)]
        all: bool,
    },
    /// Deploy gate: wait, then exit 0 if every member got its share, 1 if
    /// any is ZERO, SKEW, STALE, DOWN or MISMATCH or its load (open
    /// connections, bytes) pages, or the pool is CONCENTRATION or FAILING,
    /// 2 if it could not judge (among others, the collector unreachable or
    /// not answering a call within 10s).
    ///
    /// Example: evenflow verify --pool web --for 60s
    Verify {
        /// The pool to judge.
        #[arg(long)]
        pool: String,
        /// How long to observe before judging (e.g. 30s, 2m).
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Top { .. }) && cli.output == Output::Json {
        eprintln!(
            "evenflow: top draws a live view for people and has no JSON form: for scripts, \
             `evenflow status --output json` or `evenflow alerts --watch --output json`"
        );
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("evenflow: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // Refused before anything is asked: exit 2, like a bad flag (and
    // `verify`'s "could not judge", in its own output format).
    let collector = client::Collector::new(
        &cli.collector,
        cli.tls_ca.as_deref(),
        cli.tls_cert.as_deref().zip(cli.tls_key.as_deref()),
    );
    rt.block_on(async {
        match (&cli.command, collector) {
            (Command::Verify { pool, duration }, c) => verify(&cli, c, pool, *duration).await,
            (_, Err(e)) => {
                eprintln!("evenflow: {e:#}");
                ExitCode::from(2)
            }
            (_, Ok(collector)) => match run(&cli, &collector).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("evenflow: {e:#}");
                    ExitCode::FAILURE
                }
            },
        }
    })
}

async fn run(cli: &Cli, collector: &client::Collector) -> Result<()> {
    match &cli.command {
        Command::Status => {
            let mut c = client::connect(collector).await?;
            let agents = c
                .list_agents(v1::ListAgentsRequest {})
                .await
                .map_err(client::call_error)?
                .into_inner()
                .agents;
            let pools = c
                .list_pools(v1::ListPoolsRequest {})
                .await
                .map_err(client::call_error)?
                .into_inner()
                .pools;
            match cli.output {
                Output::Text => print!("{}", render::status_text(&agents, &pools)),
                Output::Json => println!(
                    "{}",
                    serde_json::json!({
                        "agents": agents.iter().map(render::agent_json).collect::<Vec<_>>(),
                        "pools": pools.iter().map(render::pool_json).collect::<Vec<_>>(),
                    })
                ),
            }
        }
        Command::Top { pool, interval } => top::run(collector, pool.clone(), *interval).await?,
        Command::Alerts { watch, pool, all } => {
            alerts::run(collector, cli.output, *watch, pool.as_deref(), *all).await?
        }
        Command::Verify { .. } => unreachable!("handled in main"),
    }
    Ok(())
}

async fn verify(
    cli: &Cli,
    collector: Result<client::Collector>,
    pool: &str,
    duration: Duration,
) -> ExitCode {
    let outcome = match collector {
        Ok(c) => verify::gate(&c, pool, duration).await,
        Err(e) => verify::Outcome::CannotJudge(format!("{e:#}")),
    };
    match cli.output {
        Output::Json => {
            let (result, details) = match &outcome {
                verify::Outcome::Healthy { warnings } => ("healthy", warnings.clone()),
                verify::Outcome::Unhealthy(l) => ("unhealthy", l.clone()),
                verify::Outcome::CannotJudge(r) => ("cannot_judge", vec![r.clone()]),
            };
            println!(
                "{}",
                serde_json::json!({"pool": pool, "result": result, "exit_code": outcome.exit_code(), "details": details})
            );
        }
        Output::Text => match &outcome {
            verify::Outcome::Healthy { warnings } => {
                println!("pool {pool}: every member received its share");
                warnings.iter().for_each(|w| println!("  warning: {w}"));
            }
            verify::Outcome::Unhealthy(lines) => {
                println!("pool {pool}: UNHEALTHY");
                lines.iter().for_each(|l| println!("  {l}"));
            }
            verify::Outcome::CannotJudge(r) => println!("pool {pool}: cannot judge: {r}"),
        },
    }
    ExitCode::from(outcome.exit_code())
}

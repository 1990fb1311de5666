//! Developer and CI tasks for evenflow: `cargo xtask <command>`.
//!
//! * `setup` installs what a fresh machine lacks and mounts what the agent
//!   needs; it is idempotent and fast when nothing is missing.
//! * `build` builds the release binaries (the agent embeds its eBPF object);
//!   `build --node-agent` only the agent, as the node image carries it.
//! * `test` is the test command: setup, format and lint checks, build, and
//!   every test (as root: the end-to-end tests need it).
//!
//! Checks and tests cover every host crate: `--workspace --exclude
//! agent-ebpf` ([`HOST_CRATES`]). `agent-ebpf` (a `bpfel-unknown-none`
//! binary that `agent/build.rs` builds) must not be built for the host, and
//! the root-only `tests` crate is not a default member (see the workspace
//! manifest), so a plain `cargo test` would leave it out.
//! * `demo` replays the incident evenflow exists for on this machine.
//! * `bench-datapath` measures what the agent costs the traffic it counts.
//! * `bench-detect` and `bench-scale` run the detector and collector
//!   benchmarks (the `evenflow-bench` crate) from release builds.

mod baseline;
mod bench;
mod demo;
mod drain_bench;
mod interrupt;
mod load_bench;
mod pinned_demo;
mod setup;
mod shell;
mod walk_bench;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Every crate that builds for the host, the root-only `tests` included.
const HOST_CRATES: [&str; 3] = ["--workspace", "--exclude", "agent-ebpf"];
/// The agent as the node image carries it: without the embedded collector.
const NODE_AGENT: [&str; 3] = ["-p", "evenflow-agent", "--no-default-features"];

#[derive(Parser)]
#[command(name = "cargo xtask", about = "evenflow's developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install toolchain pieces, packages and mounts a fresh machine lacks.
    Setup,
    /// Build the release binaries (agent with its eBPF object, collector, CLI).
    Build {
        /// Only the agent, as the node image carries it: without the
        /// embedded collector (cargo feature `embedded-collector` off).
        #[arg(long)]
        node_agent: bool,
    },
    /// Replay the incident on this machine: a lab of network namespaces
    /// (HAProxy or nftables, six nginx backends, an agent per node, a
    /// collector), a bad load balancer update, the alerts, the rollback.
    Demo(demo::Options),
    /// Measure the agent's cost: throughput and connection rate with and
    /// without it, per-program eBPF cost, agent CPU and RSS at 10k endpoints.
    BenchDatapath {
        /// Alternating rounds without and with the agent.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Measure only this part (throughput, cost, footprint, drain, load or walk).
        #[arg(long, value_enum)]
        only: Option<bench::Part>,
        /// With the agent, also attach to the counted path's veth a TC
        /// program that counts down from N per packet: a known extra cost,
        /// to check that the throughput part sees one.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
        spin: Option<u32>,
        /// Also measure this git revision's agent (built once, kept under
        /// target/baseline/), pass by pass in alternating order with this
        /// tree's, and print the per-program cost difference round by
        /// round: what a change costs, on a machine whose speed drifts.
        #[arg(long, value_name = "REV")]
        baseline: Option<String>,
    },
    /// The detector on seeded traffic: time to detect each fault, detection
    /// probability, false pages per pool-day (release build). Arguments
    /// after `--` go to evenflow-detect-bench (`-- --help` lists them).
    BenchDetect {
        /// Arguments for evenflow-detect-bench.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Simulated agents over real gRPC against a real collector:
    /// report-to-verdict latency, RSS and CPU per fleet size (release
    /// builds of both). Arguments after `--` go to evenflow-scale-bench.
    BenchScale {
        /// Compare with this git revision's collector (built once, kept
        /// under target/baseline/); without it the baseline is the
        /// same collector with its tick on one thread.
        #[arg(long)]
        baseline: Option<String>,
        /// Arguments for evenflow-scale-bench.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every check and test, as CI does.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Cmd::Setup => setup::run(),
        Cmd::Build { node_agent } => build(node_agent),
        Cmd::Test { args } => test(&args),
        Cmd::BenchDatapath {
            rounds,
            only,
            spin,
            baseline,
        } => bench::check_baseline(only, baseline.as_deref())
            .and_then(|()| {
                baseline
                    .map(|rev| baseline::binary(&rev, "evenflow-agent").map(|b| (rev, b)))
                    .transpose()
            })
            .and_then(|base| bench::run(rounds, only, spin, base)),
        Cmd::BenchDetect { args } => release_bin(&["evenflow-detect-bench"], &args),
        // The scale bench starts the collector found next to itself.
        // Its baseline, when another revision's, is built first: both
        // builds leave their binary at the same path.
        Cmd::BenchScale { baseline, args } => baseline
            .map(|rev| baseline::binary(&rev, "evenflow-collector"))
            .transpose()
            .and_then(|base| {
                let mut args = args;
                if let Some(b) = base {
                    args.splice(0..0, ["--baseline-bin".into(), b.display().to_string()]);
                }
                release_bin(&["evenflow-scale-bench", "evenflow-collector"], &args)
            }),
        Cmd::Demo(opts) => demo::run(&opts),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build(node_agent: bool) -> Result<()> {
    setup::build_tools()?;
    if node_agent {
        let mut args = vec!["build", "--release"];
        args.extend(NODE_AGENT);
        return shell::cargo(&args);
    }
    shell::cargo(&["build", "--release", "--bins"])
}

/// Builds `bins` (release) and runs the first with `args`.
fn release_bin(bins: &[&str], args: &[String]) -> Result<()> {
    let mut build = vec!["build", "--release"];
    for b in bins {
        build.extend(["--bin", b]);
    }
    shell::cargo(&build)?;
    let exe = shell::target_dir().join("release").join(bins[0]);
    shell::run(std::process::Command::new(exe).args(args))
}

fn test(extra: &[String]) -> Result<()> {
    shell::require_root(
        "test",
        "runs end-to-end tests that build network namespaces and load eBPF programs",
    )?;
    setup::run()?;
    shell::step("cargo fmt --check", || {
        shell::cargo(&["fmt", "--all", "--", "--check"])
    })?;
    for (step, crates) in [
        ("cargo clippy", HOST_CRATES),
        ("cargo clippy (node agent)", NODE_AGENT),
    ] {
        shell::step(step, || {
            let mut args = vec!["clippy"];
            args.extend(crates);
            args.extend(["--all-targets", "--", "-D", "warnings"]);
            shell::cargo(&args)
        })?;
    }
    shell::step("cargo build (bins)", || shell::cargo(&["build", "--bins"]))?;
    // The end-to-end tests start these binaries: the debug builds just made,
    // never a stale release build that happens to be newer.
    let debug = shell::target_dir().join("debug");
    // xtask's own build too (the incident test runs the demo through it):
    // not this process's file, which the build above may have replaced.
    let bins = [
        ("EVENFLOW_AGENT_BIN", debug.join("evenflow-agent")),
        ("EVENFLOW_COLLECTOR_BIN", debug.join("evenflow-collector")),
        ("EVENFLOW_CLI_BIN", debug.join("evenflow")),
        ("EVENFLOW_XTASK_BIN", debug.join("xtask")),
        ("EVENFLOW_GRPC_LAB_BIN", debug.join("evenflow-grpc-lab")),
    ];
    for (k, v) in &bins {
        eprintln!("    {k}={}", v.display());
    }
    let mut env: Vec<(&str, &std::ffi::OsStr)> =
        bins.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    // One invocation over every host crate: a second one for the `tests`
    // crate alone would resolve the dependencies' features apart and build
    // them again (70 s more here).
    let threads = test_threads().to_string();
    env.push(("RUST_TEST_THREADS", threads.as_ref()));
    let mut args = vec!["test"];
    args.extend(HOST_CRATES);
    args.push("--no-fail-fast");
    args.extend(extra.iter().map(String::as_str));
    shell::step("cargo test", || shell::cargo_with_env(&args, &env))
}

/// How many tests of one binary run at once: twice the cores, at most 4.
/// A lab spends most of its time waiting for reports and ticks (the field
/// suite keeps two cores 43 % busy with two at once, 71 % with four, and
/// takes 155 instead of 251 s); a unit test that computes only shares the
/// cores. Six read the field suite in 126 s against 141 once its agents
/// started cheaply, but were never run across every suite, whose labs
/// wait on seconds-long deadlines. `RUST_TEST_THREADS`, when set, and
/// `--test-threads` decide instead.
fn test_threads() -> usize {
    if let Some(n) = std::env::var("RUST_TEST_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        return n;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cores).clamp(1, 4)
}

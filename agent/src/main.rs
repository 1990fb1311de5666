//! evenflow-agent: counts connections and bytes per backend endpoint in the
//! kernel and serves them over gRPC (`evenflow.v1.Node`) and Prometheus.
//!
//! The counting loop ([`counting`]) is deliberately simple: every
//! `--interval`, read the pinned maps, update cumulative totals and rates,
//! list listeners, sample CPU, and publish one immutable snapshot that
//! every reader (gRPC, /metrics, --print) renders.

mod adopt;
mod batch;
mod btf;
mod changes;
mod cli;
mod counting;
mod cpu;
mod ct_adopt;
mod ct_lookup;
mod ctnetlink;
mod datapath;
mod direct_reads;
mod drain_bench;
mod embedded;
mod grpc;
mod host;
mod iter;
mod journal;
mod layout;
mod links;
mod listeners;
mod metrics;
mod netlink;
mod print;
mod report;
mod retire;
mod snapshot;
mod sockdiag;
mod sys;
mod table;
mod walk;
mod withheld;

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use evenflow_proto::v1;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{error, info, warn};

/// Allocations from this size up are mapped on their own, and unmapped
/// when freed (see `main`): a page of `/metrics` at thousands of
/// endpoints, and the snapshot's list of them. The second is built again
/// every interval, so its pages fault in anew each time: at 10,000
/// endpoints that was an eighth of the agent's CPU while every reading
/// read the whole endpoint map, and costs about 0.1 % of a core against
/// 6 MiB less held since readings read only what changed (see
/// docs/counting.md, "Reading only what changed").
const MMAP_THRESHOLD: libc::c_int = 1 << 20;

/// Free memory a heap keeps at its top before it gives it back: enough
/// that the buffers of each reading, allocated and freed every interval,
/// do not grow and shrink the heap every time.
const TRIM_THRESHOLD: libc::c_int = 4 << 20;

fn main() -> std::process::ExitCode {
    // Two malloc arenas, not one per thread that ever allocated: the agent
    // runs on every node, and idle arenas are resident memory. And fixed
    // thresholds: glibc's own rise with the largest block freed (the mmap
    // threshold up to 32 MiB, the trim threshold to twice that), and from
    // then on the multi-MiB buffers the agent builds and drops (a `/metrics`
    // page of 10,000 endpoints is some 14 MB) come from the heap, which
    // keeps them resident once freed: at 10,000 endpoints scraped every
    // 15 s the agent held 42 to 51 MiB, 23 to 25 with these.
    // SAFETY: mallopt before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
    let args = cli::Args::parse();
    evenflow_daemon::log::init(&args.log);
    // Enter the namespace before the runtime spawns threads: setns moves only
    // the calling thread, and every thread created after inherits it.
    if let Some(ns) = &args.netns
        && let Err(e) = host::enter_netns(ns)
    {
        eprintln!("evenflow-agent: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("evenflow-agent: starting the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("evenflow-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Gives the heap the loader used back to the kernel. Loading parses the
/// kernel's BTF (several MiB of types, freed once the programs are in), and
/// glibc keeps freed memory in its arenas: without this the agent would
/// carry that peak as resident memory for its whole life on every node.
fn release_load_memory() {
    // SAFETY: malloc_trim only returns free heap pages; no preconditions.
    unsafe { libc::malloc_trim(0) };
}

async fn run(args: cli::Args) -> Result<()> {
    let node_name = cli::node_name(&args)?;
    if args.command == Some(cli::Command::Uninstall) {
        return uninstall(&args.bpffs, &node_name);
    }
    if let Some(cli::Command::BenchDrain { cpus, events }) = &args.command {
        return bench_drain(&args.bpffs, cpus, *events);
    }
    cli::check_collector(&args)?;
    cli::check_services(&args.services)?;
    host::check_capabilities()?;
    host::check_kernel()?;
    host::check_jit()?;
    host::check_btf()?;
    host::check_bpffs(&args.bpffs)?;
    let cgroup = match &args.cgroup {
        Some(c) => c.clone(),
        None => host::cgroup2_root()?,
    };
    host::check_cgroup2(&cgroup)?;
    let ifaces = host::select_interfaces(&args.ifaces)?;
    host::raise_memlock();

    let mut dp = datapath::Datapath::attach(&datapath::Config {
        node_name: &node_name,
        bpffs: &args.bpffs,
        ifaces: &ifaces,
        cgroup: &cgroup,
        ebpf_log: args.ebpf_log,
        max_flows: args.max_flows,
        max_endpoints: args.max_endpoints,
        sock_slots: args.sock_slots,
        socket_sampling: args.socket_sampling,
        forwarded_per_packet: args.forwarded_per_packet,
        probe_reads: args.probe_reads,
    })?;
    if let Some(logger) = dp.take_logger() {
        tokio::spawn(drive_ebpf_logger(logger));
    }
    release_load_memory();

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (snap_tx, snap_rx) = watch::channel(Arc::new(v1::Snapshot::default()));
    let grpc = tokio::spawn(grpc::serve(
        args.grpc_addr,
        snap_rx.clone(),
        shutdown_rx.clone(),
    ));
    let metrics = tokio::spawn(metrics::serve(
        args.metrics_addr,
        snap_rx.clone(),
        shutdown_rx.clone(),
    ));
    let embedded = match args.embedded_collector {
        Some(addr) => Some(embedded::start(addr).await?),
        None => None,
    };
    // Endpoints retired, for the reports to hold (see `withheld`).
    let mut retirements = None;
    let collector_url = args
        .collector
        .clone()
        .or_else(|| args.embedded_collector.map(embedded::url));
    if let Some(url) = collector_url {
        // `check_collector` made sure TLS flags come with https.
        let tls = if url.starts_with("https://") {
            Some(report::Tls::load(
                args.tls_ca.as_deref(),
                args.tls_cert.as_deref().zip(args.tls_key.as_deref()),
            )?)
        } else {
            None
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        retirements = Some(tx);
        // Frozen endpoints ride beside the live ones: half the map's more,
        // within what a report may carry.
        let live = usize::try_from(dp.capacity().endpoints).unwrap_or(usize::MAX);
        warn_map_beyond_reports(live);
        let max_frozen = (live / 2).min(evenflow_proto::MAX_REPORT_ENDPOINTS.saturating_sub(live));
        tokio::spawn(report::run(url, tls, snap_rx, rx, max_frozen));
    }

    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let result = tokio::select! {
        r = counting::run(&args, &node_name, &mut dp, &snap_tx, retirements) => r,
        _ = sigint.recv() => { info!("SIGINT: stopping"); Ok(()) }
        _ = sigterm.recv() => { info!("SIGTERM: stopping"); Ok(()) }
        r = flatten(grpc) => r,
        r = flatten(metrics) => r,
    };
    let _ = shutdown_tx.send(true);
    if let Some(c) = embedded {
        c.shutdown().await;
    }
    let pins = dp.pin_dir().to_owned();
    drop(dp);
    info!(
        pins = %pins.display(),
        "stopped; the programs stay attached and counting (`evenflow-agent uninstall` removes them)"
    );
    result
}

/// Pinned maps keep the size they were created with: a map created
/// without a collector, or by an older build, may hold more endpoints than
/// a report to the collector may carry (`check_collector` bounds only the
/// flag).
fn warn_map_beyond_reports(capacity: usize) {
    let limit = evenflow_proto::MAX_REPORT_ENDPOINTS;
    if capacity > limit {
        warn!(
            capacity,
            limit,
            "the pinned endpoint map holds more endpoints than a report to the collector may carry: \
             reports are refused while more than {limit} are live; to shrink it, \
             `evenflow-agent uninstall` and start again with --max-endpoints {limit} or less"
        );
    }
}

/// Prints the drain's times for each of `cpus` (see `drain_bench`):
/// `cpus <n> ns_per_event <x> us_per_run_of_64 <y>` a line.
fn bench_drain(bpffs: &std::path::Path, cpus: &[u32], events: u32) -> Result<()> {
    host::check_capabilities()?;
    host::check_bpffs(bpffs)?;
    host::raise_memlock();
    for &n in cpus {
        let f = drain_bench::run(bpffs, n, events)
            .with_context(|| format!("timing the drain on {n} CPU numbers"))?;
        println!(
            "cpus {n} ns_per_event {:.1} us_per_run_of_64 {:.1}",
            f.per_event, f.per_run
        );
    }
    Ok(())
}

/// `evenflow-agent uninstall`: removes the node's pins, and with them every
/// program evenflow attached for it.
fn uninstall(bpffs: &std::path::Path, node_name: &str) -> Result<()> {
    // Without the host's bpffs there is nothing to find, and "nothing to
    // remove" would leave every program attached.
    host::check_bpffs(bpffs)?;
    let pin_dir = bpffs.join("evenflow").join(node_name);
    if links::uninstall(&pin_dir)? {
        info!(pins = %pin_dir.display(), "uninstalled: programs detached, pins and counters removed");
        println!(
            "evenflow-agent: removed {} (programs detached)",
            pin_dir.display()
        );
    } else {
        println!("evenflow-agent: nothing to remove at {}", pin_dir.display());
    }
    Ok(())
}

async fn flatten(h: tokio::task::JoinHandle<Result<()>>) -> Result<()> {
    match h.await {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("server task failed: {e}")),
    }
}

/// Drains the aya-log ring buffer whenever it becomes readable.
async fn drive_ebpf_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer fd for as long as it lives, and
    // the AsyncFd owns the logger.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!("eBPF logs unavailable: {e}");
            return;
        }
    };
    loop {
        match fd.readable_mut().await {
            Ok(mut guard) => {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Err(e) => {
                warn!("eBPF logs stopped: {e}");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

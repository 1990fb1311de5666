//! `evenflow-scale-bench`: a real collector (child process, or `--target`)
//! and N simulated agents over real gRPC streams, each reporting M
//! endpoints every second. Measures report-to-verdict latency, collector
//! RSS and CPU for fleets of increasing size and prints a table.
//!
//! Latency, per report of an agent whose pool the bench watches:
//! * `ingest`: report sent → its ack received (the collector applies a
//!   report before acking it);
//! * `publish`: the including tick's start (`Pool.evaluated_at`, when the
//!   collector snapshots every agent) → that pool update arriving on the
//!   bench's `WatchPool` stream (tick compute + publish + delivery);
//! * `report→verdict` = `ingest + publish`: the time the report spends in
//!   the collector's hands, not counting the wait for the next tick
//!   boundary (a configuration choice: `--interval`);
//! * `end-to-end`: report sent → arrival of the first pool update whose
//!   tick started after the ack, including that wait (up to one interval).
//!
//! The target is `report→verdict` p99 ≤ 250 ms with collector RSS ≤ 1 GiB.
//! Each simulated agent serves one labelled endpoint (pools of
//! `--pool-size`, 10 by default) and sends to `M - 1` other backends, so
//! every pool has an LB view too; with `--mesh`, to every member of its
//! own pool instead (kube-proxy's shape: every node a balancer of every
//! member).
//!
//! Every fleet runs `--runs` times against the collector under test and
//! as often against a *baseline* in the same run, alternating which goes
//! first: another collector binary (`--baseline-bin`, e.g. a build of an
//! older commit: `cargo xtask bench-scale --baseline REV` makes one), or
//! by default the same binary with its tick on one thread
//! (`--tick-threads 1`). The summary gives medians with their ranges and
//! the ratios new/baseline per round (median and range), and projects the
//! largest fleets' measured growth to `--project` agents.
//!
//! ```text
//! cargo xtask bench-scale [--baseline REV] [-- --fleets 1000,3000,5000 ...]
//! ```
//! builds the release collector next to this binary, which is where it
//! looks for it (`--collector-bin` says otherwise).

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use evenflow_proto::v1::{
    self, AgentReport, distribution_client::DistributionClient, ingest_client::IngestClient,
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};

#[derive(Parser, Debug)]
#[command(name = "evenflow-scale-bench", version)]
/// Simulated agents over real gRPC against a real collector.
struct Args {
    /// Fleet sizes to try, in order (number of agents).
    #[arg(long, value_delimiter = ',', default_value = "100,300,1000")]
    fleets: Vec<usize>,
    /// Endpoints per agent report.
    #[arg(long, default_value_t = 100)]
    endpoints: usize,
    /// Every agent sends to every member of its own pool, its own
    /// backend included, as kube-proxy on every node of a cluster sends to
    /// every endpoint of a Service: pools of at most `--pool-size` members
    /// with as many balancer nodes, each report at most `--pool-size` + 1
    /// endpoints (`--endpoints` is not used).
    #[arg(long)]
    mesh: bool,
    /// Agent report interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    report_interval: Duration,
    /// Collector detection interval (passed as its --interval).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Warm-up before measuring (connections, baselines).
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Measuring window per fleet.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Pools whose WatchPool stream the bench reads (latency samples come
    /// from their members).
    #[arg(long, default_value_t = 10)]
    watch_pools: usize,
    /// Members per pool: agent `i` serves pool `i % ceil(agents / pool-size)`.
    /// Large pools (a Deployment of a thousand replicas behind one
    /// Service) weigh on the tick where many small ones do not.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pool_size: u64,
    /// Collector binary under test (default: next to this one).
    #[arg(long)]
    collector_bin: Option<PathBuf>,
    /// Baseline collector binary (default: the collector under test with
    /// `--tick-threads 1`).
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// Runs per fleet and collector; the summary gives medians and ranges.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Fleet size to project the two largest fleets' growth to.
    #[arg(long, default_value_t = 10_000)]
    project: usize,
    /// Target an already running collector (gRPC URL) instead of starting
    /// one (no baseline then); RSS and CPU then need --target-pid.
    #[arg(long)]
    target: Option<String>,
    /// PID of the targeted collector, for RSS and CPU.
    #[arg(long)]
    target_pid: Option<u32>,
    /// p99 report→verdict target.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    p99_target: Duration,
    /// RSS target, MiB.
    #[arg(long, default_value_t = 1024)]
    rss_target_mib: u64,
}

impl Args {
    /// What each of `agents` agents reports (at most), for the summary.
    fn each(&self, agents: usize) -> String {
        if self.mesh {
            let members = agents.div_ceil(pool_count(agents, self.pool_size));
            format!("{} endpoints (a mesh)", members + 1)
        } else {
            format!("{} endpoints", self.endpoints)
        }
    }
}

/// One fleet's results.
#[derive(Default, Debug)]
struct Outcome {
    agents: usize,
    reports: usize,
    acked: usize,
    samples: usize,
    ingest: (f64, f64),
    publish: (f64, f64),
    verdict: (f64, f64),
    end_to_end: (f64, f64),
    rss_mib: f64,
    peak_rss_mib: f64,
    cpu: f64,
    bench_cpu: f64,
    /// Median of the tick durations sampled during the window.
    tick_ms: f64,
    overruns: u64,
    holds: bool,
}

fn free_addr() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    l.local_addr().context("reading the free port")
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of `pid`, seconds.
fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc_sysconf_clk_tck() };
    Some(ticks / hz)
}

unsafe extern "C" {
    fn sysconf(name: i32) -> i64;
}

/// `sysconf(_SC_CLK_TCK)` (2 on Linux).
unsafe fn libc_sysconf_clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { sysconf(2) };
    if v > 0 { v as f64 } else { 100.0 }
}

fn scrape(addr: SocketAddr) -> String {
    let mut out = String::new();
    if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let _ = s.read_to_string(&mut out);
    }
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// How many pools `agents` agents serve, `pool_size` members each at
/// most: agents are dealt to them in turn, so where `pool_size` does not
/// divide the fleet every pool holds fewer (25 agents in pools of 10: 9,
/// 8 and 8).
fn pool_count(agents: usize, pool_size: u64) -> usize {
    agents
        .div_ceil(usize::try_from(pool_size).unwrap_or(usize::MAX))
        .max(1)
}

/// The backends agent `i` of `n` sends to, as (backend, port): one fewer
/// than `endpoints`, spread over the fleet (its own backend never: a port
/// of its own instead), or with `mesh` every member of its pool of
/// `pools`, its own included.
fn sends_to(
    i: usize,
    (n, pools): (usize, usize),
    endpoints: usize,
    mesh: bool,
) -> Vec<(usize, u32)> {
    if mesh {
        return (i % pools..n).step_by(pools).map(|j| (j, 8080)).collect();
    }
    (1..endpoints)
        .map(|k| {
            let j = (i + k * 7919) % n.max(1);
            (j, if j == i { 9000 + k as u32 } else { 8080 })
        })
        .collect()
}

/// Address of backend `i` (10.x.y.z).
fn backend(i: usize) -> String {
    let i = i + 1;
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

struct AgentLog {
    /// (sequence, sent, acked)
    sent: Vec<(u64, SystemTime)>,
    acked: HashMap<u64, SystemTime>,
}

#[allow(clippy::too_many_arguments)]
async fn agent(
    url: String,
    i: usize,
    (n, pools): (usize, usize),
    (endpoints, mesh): (usize, bool),
    every: Duration,
    phase: Duration,
    until: Instant,
    log: Arc<Mutex<AgentLog>>,
) -> Result<()> {
    let mut client = {
        let mut tries = 0;
        loop {
            match IngestClient::connect(url.clone()).await {
                Ok(c) => break c,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).context("connecting to the collector"),
            }
        }
    };
    let (tx, rx) = mpsc::channel::<AgentReport>(16);
    let mut acks = client
        .report(ReceiverStream::new(rx))
        .await
        .context("opening the Report stream")?
        .into_inner();
    let log2 = log.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(a)) = acks.next().await {
            let now = SystemTime::now();
            if let Ok(mut l) = log2.lock() {
                l.acked.insert(a.acked_sequence, now);
            }
        }
    });
    let service = format!("svc-{}", i % pools);
    let mut eps: Vec<v1::Endpoint> = Vec::with_capacity(endpoints);
    eps.push(v1::Endpoint {
        address: backend(i),
        port: 8080,
        direction: v1::Direction::Serves as i32,
        protocol: v1::Protocol::Tcp as i32,
        service,
        totals: Some(v1::Counters::default()),
        rates: None,
        active_connections: 10,
    });
    for (j, port) in sends_to(i, (n, pools), endpoints, mesh) {
        eps.push(v1::Endpoint {
            address: backend(j),
            port,
            direction: v1::Direction::SendsTo as i32,
            protocol: v1::Protocol::Tcp as i32,
            service: String::new(),
            totals: Some(v1::Counters::default()),
            rates: None,
            active_connections: 1,
        });
    }
    let run = 1 + i as u64;
    let mut seq = 0u64;
    tokio::time::sleep(phase).await;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < until {
        tick.tick().await;
        seq += 1;
        for (k, e) in eps.iter_mut().enumerate() {
            if let Some(t) = e.totals.as_mut() {
                // 1 to 3 a send, by the agent as well as the endpoint: in a
                // mesh every agent lists the members in one order, and a
                // member would get the same of each.
                let add = if k == 0 { 50 } else { 1 + ((i + k) as u64 % 3) };
                t.conns_opened += add;
                t.conns_closed += add;
                t.bytes_rx += add * 700;
                t.bytes_tx += add * 9000;
                t.packets_rx += add * 4;
                t.packets_tx += add * 8;
            }
        }
        let now = SystemTime::now();
        let r = AgentReport {
            node_name: format!("node-{i}"),
            agent_epoch: 1,
            agent_run: run,
            sequence: seq,
            taken_at: Some(prost_types::Timestamp::from(now)),
            interval_seconds: every.as_secs_f64(),
            endpoints: eps.clone(),
            listeners: vec![v1::Listener {
                address: "0.0.0.0".into(),
                port: 8080,
                protocol: v1::Protocol::Tcp as i32,
                service: eps[0].service.clone(),
            }],
            cpu: Some(v1::Cpu {
                utilization: 0.3,
                cores: 2,
            }),
            datapath: None,
            agent_version: "scale-bench".into(),
            node_addresses: Vec::new(),
        };
        if let Ok(mut l) = log.lock() {
            l.sent.push((seq, now));
        }
        if tx.send(r).await.is_err() {
            bail!("agent {i}: the collector closed the stream");
        }
    }
    drop(tx);
    reader.abort();
    Ok(())
}

/// A collector to start: its binary and extra arguments.
#[derive(Clone, Debug)]
struct Collector {
    /// "new" or "base".
    label: &'static str,
    bin: PathBuf,
    extra: Vec<String>,
}

impl Collector {
    /// The collector under test and its baseline.
    fn both(args: &Args) -> Result<(Self, Self)> {
        let bin = match &args.collector_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()
                .context("locating this binary")?
                .with_file_name("evenflow-collector"),
        };
        let base = match &args.baseline_bin {
            Some(b) => Self {
                label: "base",
                bin: b.clone(),
                extra: Vec::new(),
            },
            None => Self {
                label: "base",
                bin: bin.clone(),
                extra: vec!["--tick-threads".into(), "1".into()],
            },
        };
        if base.extra.is_empty() && same_file_contents(&base.bin, &bin) {
            bail!(
                "the baseline {} and the collector under test {} are the same binary: build the baseline apart (cargo xtask bench-scale --baseline REV does)",
                base.bin.display(),
                bin.display()
            );
        }
        let new = Self {
            label: "new",
            bin,
            extra: Vec::new(),
        };
        Ok((new, base))
    }

    fn describe(&self) -> String {
        let mut s = self.bin.display().to_string();
        for a in &self.extra {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// Whether two files hold the same bytes (unreadable ones do not).
fn same_file_contents(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::read(a), std::fs::read(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

async fn run_fleet(args: &Args, collector: &Collector, n: usize) -> Result<Outcome> {
    // The collector.
    let mut child: Option<Child> = None;
    let (url, metrics_addr, pid) = match &args.target {
        Some(u) => (u.clone(), None, args.target_pid),
        None => {
            let bin = &collector.bin;
            let grpc = free_addr()?;
            let metrics = free_addr()?;
            let c = Command::new(bin)
                .args([
                    "--grpc-addr",
                    &grpc.to_string(),
                    "--metrics-addr",
                    &metrics.to_string(),
                    "--interval",
                    &humantime::format_duration(args.interval).to_string(),
                ])
                .args(&collector.extra)
                .env("EVENFLOW_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| {
                    format!(
                        "starting {} (build it: cargo build --release --bin evenflow-collector; cargo xtask bench-scale does)",
                        bin.display()
                    )
                })?;
            let pid = c.id();
            child = Some(c);
            (format!("http://{grpc}"), Some(metrics), Some(pid))
        }
    };
    // Wait until it answers.
    let q = {
        let mut tries = 0;
        loop {
            match DistributionClient::connect(url.clone()).await {
                Ok(c) => break c,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).context("connecting to the collector"),
            }
        }
    };
    let q = q.max_decoding_message_size(256 << 20);

    let start = Instant::now();
    let measure_from = SystemTime::now() + args.warmup;
    let measure_to = measure_from + args.duration;
    let until = start + args.warmup + args.duration + Duration::from_secs(2);
    let logs: Vec<Arc<Mutex<AgentLog>>> = (0..n)
        .map(|_| {
            Arc::new(Mutex::new(AgentLog {
                sent: Vec::new(),
                acked: HashMap::new(),
            }))
        })
        .collect();
    let pools = pool_count(n, args.pool_size);
    let mut tasks = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let phase = args.report_interval.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(agent(
            url.clone(),
            i,
            (n, pools),
            (args.endpoints, args.mesh),
            args.report_interval,
            phase,
            until,
            log.clone(),
        )));
    }

    // Watch some pools once they exist.
    let watched: Vec<usize> = (0..pools.min(args.watch_pools)).collect();
    type Arrivals = Arc<Mutex<HashMap<usize, Vec<(SystemTime, SystemTime)>>>>;
    let arrivals: Arrivals = Arc::default();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut watchers = Vec::new();
    for &p in &watched {
        let mut q = q.clone();
        let arrivals = arrivals.clone();
        watchers.push(tokio::spawn(async move {
            let Ok(resp) = q
                .watch_pool(v1::WatchPoolRequest {
                    name: format!("svc-{p}"),
                })
                .await
            else {
                return;
            };
            let mut s = resp.into_inner();
            while let Some(Ok(pool)) = s.next().await {
                let now = SystemTime::now();
                if let Some(at) = pool.evaluated_at.and_then(|t| SystemTime::try_from(t).ok())
                    && let Ok(mut a) = arrivals.lock()
                {
                    a.entry(p).or_default().push((at, now));
                }
            }
        }));
    }

    // CPU over the measuring window.
    tokio::time::sleep(args.warmup.saturating_sub(Duration::from_secs(3))).await;
    let cpu0 = pid.and_then(proc_cpu_secs);
    let bench0 = proc_cpu_secs(std::process::id());
    let t0 = Instant::now();
    let mut peak_rss = 0u64;
    // The tick's duration, sampled every other second (one tick is one
    // sample of a noisy machine; /metrics shows the last).
    let mut ticks_ms = Vec::new();
    let mut polls = 0u32;
    while t0.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(p) = pid {
            peak_rss = peak_rss.max(proc_status_kib(p, "VmRSS:").unwrap_or(0));
        }
        polls += 1;
        if polls.is_multiple_of(4)
            && let Some(addr) = metrics_addr
        {
            let text = tokio::task::spawn_blocking(move || scrape(addr))
                .await
                .unwrap_or_default();
            ticks_ms.push(metric(&text, "evenflow_collector_tick_seconds") * 1e3);
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = pid.and_then(proc_cpu_secs);
    let bench1 = proc_cpu_secs(std::process::id());
    let rss = pid.and_then(|p| proc_status_kib(p, "VmRSS:")).unwrap_or(0);
    let metrics_text = metrics_addr.map(scrape).unwrap_or_default();
    for t in tasks {
        let _ = t.await;
    }
    tokio::time::sleep(args.interval + Duration::from_millis(300)).await;
    for w in &watchers {
        w.abort();
    }
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }

    // Latencies.
    let arrivals = arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    let (mut ingest, mut publish, mut verdict, mut e2e) = (vec![], vec![], vec![], vec![]);
    let (mut reports, mut acked) = (0, 0);
    for (i, log) in logs.iter().enumerate() {
        let Ok(l) = log.lock() else { continue };
        let pool = i % pools;
        let ticks = arrivals.get(&pool);
        for &(seq, sent) in &l.sent {
            if sent < measure_from || sent > measure_to {
                continue;
            }
            reports += 1;
            let Some(&ack) = l.acked.get(&seq) else {
                continue;
            };
            acked += 1;
            let ing = secs_between(sent, ack);
            ingest.push(ing);
            let Some(ticks) = ticks else { continue };
            if let Some(&(at, arrived)) = ticks.iter().find(|(at, _)| *at >= ack) {
                let pub_ = secs_between(at, arrived);
                publish.push(pub_);
                verdict.push(ing + pub_);
                e2e.push(secs_between(sent, arrived));
            }
        }
    }
    let samples = verdict.len();
    let mut o = Outcome {
        agents: n,
        reports,
        acked,
        samples,
        ingest: (pct(&mut ingest, 0.5), pct(&mut ingest, 0.99)),
        publish: (pct(&mut publish, 0.5), pct(&mut publish, 0.99)),
        verdict: (pct(&mut verdict, 0.5), pct(&mut verdict, 0.99)),
        end_to_end: (pct(&mut e2e, 0.5), pct(&mut e2e, 0.99)),
        rss_mib: rss as f64 / 1024.0,
        peak_rss_mib: peak_rss as f64 / 1024.0,
        cpu: match (cpu0, cpu1) {
            (Some(a), Some(b)) => (b - a) / wall,
            _ => f64::NAN,
        },
        bench_cpu: match (bench0, bench1) {
            (Some(a), Some(b)) => (b - a) / wall,
            _ => f64::NAN,
        },
        tick_ms: {
            ticks_ms.push(metric(&metrics_text, "evenflow_collector_tick_seconds") * 1e3);
            Spread::of(ticks_ms).median
        },
        overruns: metric(&metrics_text, "evenflow_collector_tick_overruns_total") as u64,
        holds: false,
    };
    o.holds = samples > 0
        && acked * 100 >= reports * 99
        && o.verdict.1 <= args.p99_target.as_secs_f64()
        && o.peak_rss_mib <= args.rss_target_mib as f64;
    Ok(o)
}

fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{:.1}", v * 1e3)
    }
}

fn header() {
    println!(
        "{:>6} {:>4} {:>8} {:>7} {:>8} {:>17} {:>17} {:>17} {:>17} {:>9} {:>9} {:>7} {:>8} {:>8} {:>5}",
        "agents",
        "run",
        "reports",
        "acked%",
        "samples",
        "ingest p50/p99",
        "publish p50/p99",
        "verdict p50/p99",
        "e2e p50/p99",
        "RSS MiB",
        "peak MiB",
        "CPU",
        "benchCPU",
        "tick ms",
        "holds"
    );
}

fn row(o: &Outcome, run: &str) {
    println!(
        "{:>6} {:>4} {:>8} {:>7.2} {:>8} {:>17} {:>17} {:>17} {:>17} {:>9.1} {:>9.1} {:>6.0}% {:>7.0}% {:>8.1} {:>5}",
        o.agents,
        run,
        o.reports,
        if o.reports > 0 {
            o.acked as f64 * 100.0 / o.reports as f64
        } else {
            0.0
        },
        o.samples,
        format!("{}/{}", ms(o.ingest.0), ms(o.ingest.1)),
        format!("{}/{}", ms(o.publish.0), ms(o.publish.1)),
        format!("{}/{}", ms(o.verdict.0), ms(o.verdict.1)),
        format!("{}/{}", ms(o.end_to_end.0), ms(o.end_to_end.1)),
        o.rss_mib,
        o.peak_rss_mib,
        o.cpu * 100.0,
        o.bench_cpu * 100.0,
        o.tick_ms,
        if o.holds { "yes" } else { "NO" }
    );
    if o.overruns > 0 {
        println!("        ({} tick overruns)", o.overruns);
    }
}

/// Median, minimum and maximum.
#[derive(Copy, Clone, Debug)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Self {
        v.retain(|x| !x.is_nan());
        if v.is_empty() {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} [{:.d$}–{:.d$}]",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

/// A summary line: its name, the value it reads from an outcome, and the
/// decimals it is shown with.
type Metric = (&'static str, fn(&Outcome) -> f64, usize);

/// What the summary compares, per outcome.
const METRICS: [Metric; 5] = [
    ("verdict p99 ms", |o| o.verdict.1 * 1e3, 1),
    ("verdict p50 ms", |o| o.verdict.0 * 1e3, 1),
    ("tick ms", |o| o.tick_ms, 1),
    ("peak RSS MiB", |o| o.peak_rss_mib, 0),
    ("CPU %", |o| o.cpu * 100.0, 0),
];

/// One fleet's runs of both collectors, in round order.
struct Fleet {
    agents: usize,
    new: Vec<Outcome>,
    base: Vec<Outcome>,
}

impl Fleet {
    fn spread(runs: &[Outcome], f: fn(&Outcome) -> f64) -> Spread {
        Spread::of(runs.iter().map(f).collect())
    }

    /// The new collector holds when its medians do.
    fn holds(&self, args: &Args) -> bool {
        let p99 = Self::spread(&self.new, METRICS[0].1).median;
        let rss = Self::spread(&self.new, METRICS[3].1).median;
        let acked = self.new.iter().all(|o| o.acked * 100 >= o.reports * 99);
        self.new.iter().all(|o| o.samples > 0)
            && acked
            && p99 <= args.p99_target.as_secs_f64() * 1e3
            && rss <= args.rss_target_mib as f64
    }

    fn summary(&self, args: &Args) {
        println!(
            "\n{} agents x {}, {} runs each (median [min–max]; ratio = new/base per round):",
            self.agents,
            args.each(self.agents),
            self.new.len()
        );
        println!(
            "  {:<16} {:>26} {:>26} {:>24}",
            "", "new", "base", "ratio new/base"
        );
        for (name, f, d) in METRICS {
            let ratios = self
                .new
                .iter()
                .zip(&self.base)
                .map(|(n, b)| f(n) / f(b))
                .collect::<Vec<_>>();
            println!(
                "  {:<16} {:>26} {:>26} {:>24}",
                name,
                Self::spread(&self.new, f).show(d),
                if self.base.is_empty() {
                    "-".into()
                } else {
                    Self::spread(&self.base, f).show(d)
                },
                if self.base.is_empty() {
                    "-".into()
                } else {
                    Spread::of(ratios).show(2)
                },
            );
        }
    }
}

/// Projects each metric's growth between the two largest fleets (a power
/// law through their medians) to `to` agents.
fn project(fleets: &[Fleet], to: usize, which: &str, runs: fn(&Fleet) -> &[Outcome]) {
    let mut sized: Vec<&Fleet> = fleets.iter().filter(|f| !runs(f).is_empty()).collect();
    sized.sort_by_key(|f| f.agents);
    let [.., a, b] = sized.as_slice() else {
        return;
    };
    if a.agents == b.agents {
        return;
    }
    let grow = (b.agents as f64 / a.agents as f64).ln();
    let mut parts = Vec::new();
    for (name, f, d) in METRICS {
        let (va, vb) = (
            Fleet::spread(runs(a), f).median,
            Fleet::spread(runs(b), f).median,
        );
        if !(va > 0.0 && vb > 0.0) {
            continue;
        }
        let k = (vb / va).ln() / grow;
        let at = vb * (to as f64 / b.agents as f64).powf(k);
        parts.push(format!("{name} ≈ {at:.d$} (∝ n^{k:.2})"));
    }
    println!(
        "{which}: {to} agents, projected from {} → {} agents: {}",
        a.agents,
        b.agents,
        parts.join(", ")
    );
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.runs == 0 {
        bail!("--runs 0 measures nothing: give at least 1 (3 for ranges)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let (new, base) = Collector::both(&args)?;
    let sends = if args.mesh {
        "every agent sending to every member of its pool".to_owned()
    } else {
        format!("{} endpoints per agent", args.endpoints)
    };
    println!(
        "evenflow-scale-bench: {sends}, pools of {} members, reports every {:?}, collector tick {:?}, {:?} warm-up + {:?} measured per run",
        args.pool_size, args.report_interval, args.interval, args.warmup, args.duration
    );
    if args.target.is_none() {
        println!("  new:  {}\n  base: {}", new.describe(), base.describe());
    }
    header();
    let mut fleets = Vec::new();
    for &n in &args.fleets {
        let mut fleet = Fleet {
            agents: n,
            new: Vec::new(),
            base: Vec::new(),
        };
        for round in 0..args.runs {
            // Alternate which goes first, so drift in the machine's load
            // falls on both.
            let order = match (args.target.is_some(), round % 2) {
                (true, _) => vec![&new],
                (false, 0) => vec![&base, &new],
                (false, _) => vec![&new, &base],
            };
            for c in order {
                let o = rt.block_on(run_fleet(&args, c, n))?;
                row(&o, &format!("{}{}", c.label, round + 1));
                match c.label {
                    "new" => fleet.new.push(o),
                    _ => fleet.base.push(o),
                }
            }
        }
        fleets.push(fleet);
    }
    for f in &fleets {
        f.summary(&args);
    }
    println!();
    project(&fleets, args.project, "new", |f| &f.new);
    project(&fleets, args.project, "base", |f| &f.base);
    match fleets
        .iter()
        .filter(|f| f.holds(&args))
        .map(|f| f.agents)
        .max()
    {
        Some(n) => println!(
            "largest fleet holding median report→verdict p99 <= {:?} and peak RSS <= {} MiB: {n} agents x {}",
            args.p99_target,
            args.rss_target_mib,
            args.each(n)
        ),
        None => println!("no fleet held the targets"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mesh_agent_sends_to_every_member_of_its_pool_its_own_included() {
        // 25 agents in pools of 10: three pools (9, 8 and 8 members).
        let pools = pool_count(25, 10);
        let members = |p: usize| (0..25).filter(move |j| j % pools == p);
        for i in 0..25 {
            let sent: Vec<usize> = sends_to(i, (25, pools), 100, true)
                .into_iter()
                .map(|(j, port)| {
                    assert_eq!(port, 8080, "a member's port");
                    j
                })
                .collect();
            assert_eq!(sent, members(i % pools).collect::<Vec<_>>(), "agent {i}");
        }
    }

    #[test]
    fn a_spread_agent_sends_to_others_and_never_to_its_own_backend() {
        let sent = sends_to(3, (1000, 100), 100, false);
        assert_eq!(sent.len(), 99);
        assert!(sent.iter().all(|&(j, port)| j != 3 || port != 8080));
    }
}

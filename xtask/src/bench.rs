//! `cargo xtask bench-datapath`: what the agent costs the traffic it counts.
//!
//! On a veth pair between two network namespaces, in one run, measured with
//! and without the agent attached (paired rounds, medians of several runs):
//! bulk throughput (iperf3), connection churn (hey, one connection per
//! request against nginx), the mean cost per run of each eBPF program from
//! `kernel.bpf_stats_enabled`, and the agent's CPU and RSS with 10,000 live
//! endpoints at a 1 s interval. It prints the figures next to the targets
//! and exits non-zero only when it could not measure.

use std::{
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use evenflow_tests::netns;

const CLIENT: &str = "efb-client";
const SERVER: &str = "efb-server";
/// Forwards client → VIP to the server with DNAT: the forwarded pass.
const LB: &str = "efb-lb";
const SERVER_IP: &str = "10.50.0.2";
/// The VIP on the lb, DNATed to the server's other address.
const VIP: &str = "10.53.0.1";

/// A process group killed on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: signalling the process group we created.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: as above.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Namespaces, cgroups and pins of the bench, removed on drop.
struct Env {
    cgroups: Vec<PathBuf>,
    dir: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        for ns in [CLIENT, SERVER, LB] {
            netns::delete(ns);
            let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/evenflow/{ns}"));
        }
        // A cgroup is removable once its last process has exited, which
        // can lag the kill by a moment.
        let rmdir = |c: &std::path::Path| {
            for _ in 0..20 {
                if std::fs::remove_dir(c).is_ok() || !c.exists() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("    could not remove cgroup {}", c.display());
        };
        for c in &self.cgroups {
            rmdir(c);
        }
        if let Some(root) = self.cgroups.first().and_then(|c| c.parent()) {
            rmdir(root);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_in(cgroup: &std::path::Path, ns: &str, cmd: &str, args: &[&str]) -> Result<Guard> {
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec ip netns exec {ns} \"$@\"",
        cgroup.display()
    );
    let child = Command::new("sh")
        .args(["-c", &script, "sh", cmd])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {cmd}"))?;
    Ok(Guard(child))
}

fn setup_env() -> Result<Env> {
    let root = evenflow_tests::lab::cgroup2_root()?.join("evenflow-bench");
    let cgroups = vec![root.join("client"), root.join("server")];
    for c in &cgroups {
        std::fs::create_dir_all(c)?;
    }
    let dir = std::env::temp_dir().join("evenflow-bench");
    std::fs::create_dir_all(&dir)?;
    let env = Env { cgroups, dir };
    netns::create(CLIENT)?;
    netns::create(SERVER)?;
    let _ = netns::sh("ip", &["link", "del", "efb-c"]);
    netns::sh(
        "ip",
        &[
            "link", "add", "efb-c", "type", "veth", "peer", "name", "efb-s",
        ],
    )?;
    netns::sh("ip", &["link", "set", "efb-c", "netns", CLIENT])?;
    netns::sh("ip", &["link", "set", "efb-s", "netns", SERVER])?;
    netns::exec(
        CLIENT,
        "ip",
        &["addr", "add", "10.50.0.1/24", "dev", "efb-c"],
    )?;
    netns::exec(
        SERVER,
        "ip",
        &["addr", "add", "10.50.0.2/24", "dev", "efb-s"],
    )?;
    netns::exec(CLIENT, "ip", &["link", "set", "efb-c", "up"])?;
    netns::exec(SERVER, "ip", &["link", "set", "efb-s", "up"])?;
    setup_lb()?;
    // 10,000 endpoints: ports 20000-29999 all lead to nginx.
    netns::exec(
        SERVER,
        "nft",
        &[
            "add table ip efb; add chain ip efb pre { type nat hook prerouting priority dstnat; }; \
           add rule ip efb pre tcp dport 20000-29999 redirect to :8080",
        ],
    )?;
    Ok(env)
}

/// The forwarded path: client —efb-cl/efb-lc— lb —efb-ls/efb-sl— server,
/// the VIP on the lb's `lo` DNATed to the server.
fn setup_lb() -> Result<()> {
    netns::create(LB)?;
    for (a, ns_a, b, addr_a, addr_b) in [
        ("efb-cl", CLIENT, "efb-lc", "10.51.0.2/24", "10.51.0.1/24"),
        ("efb-sl", SERVER, "efb-ls", "10.52.0.2/24", "10.52.0.1/24"),
    ] {
        netns::veth(a, ns_a, b, LB)?;
        netns::addr(ns_a, a, addr_a)?;
        netns::addr(LB, b, addr_b)?;
    }
    netns::addr(LB, "lo", &format!("{VIP}/32"))?;
    netns::sysctl(LB, "net.ipv4.ip_forward", "1")?;
    netns::exec(
        CLIENT,
        "ip",
        &["route", "add", "10.53.0.0/24", "via", "10.51.0.1"],
    )?;
    netns::exec(
        SERVER,
        "ip",
        &["route", "add", "10.51.0.0/24", "via", "10.52.0.1"],
    )?;
    netns::exec(
        LB,
        "nft",
        &[&format!(
            "add table ip efb; add chain ip efb pre {{ type nat hook prerouting priority dstnat; }}; \
             add rule ip efb pre ip daddr {VIP} dnat ip to 10.52.0.2"
        )],
    )?;
    Ok(())
}

/// `kernel.bpf_stats_enabled`: off while throughput is measured (the stats
/// add two clock reads to every program run), on for the per-program cost,
/// and back to what it was when the bench ends.
struct BpfStats(String);

impl BpfStats {
    const KEY: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn off() -> Result<Self> {
        let was =
            std::fs::read_to_string(Self::KEY).with_context(|| format!("reading {}", Self::KEY))?;
        Self::set(false)?;
        Ok(Self(was.trim().to_owned()))
    }

    fn set(on: bool) -> Result<()> {
        std::fs::write(Self::KEY, if on { "1" } else { "0" })
            .with_context(|| format!("writing {} (needs root)", Self::KEY))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::KEY, &self.0);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `min–max` of a series, scaled, for the spread next to each median.
fn spread(v: &[f64], scale: f64, decimals: usize) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min) / scale;
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max) / scale;
    format!("{lo:.decimals$}–{hi:.decimals$}")
}

fn iperf() -> Result<f64> {
    iperf_to(SERVER_IP)
}

fn iperf_to(target: &str) -> Result<f64> {
    let out = netns::exec(CLIENT, "iperf3", &["-c", target, "-t", "4", "-J"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no bits_per_second in iperf3 output")
}

fn churn() -> Result<f64> {
    churn_to(SERVER_IP)
}

fn churn_to(target: &str) -> Result<f64> {
    let out = netns::exec(
        CLIENT,
        "hey",
        &[
            "-z",
            "4s",
            "-c",
            "16",
            "-disable-keepalive",
            &format!("http://{target}:8080/"),
        ],
    )?;
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Requests/sec in hey output")
}

/// One program's mean cost per run, and the empty programs' on its hook:
/// the one behind it in the chain (the baseline) and the one ahead of it;
/// and its cost above the baseline in each phase of the pass apart.
struct Cost {
    name: String,
    ns: f64,
    runs: u64,
    baseline: f64,
    first: f64,
    /// Above the baseline during the iperf3 run (bulk: few, large packets
    /// of one long connection).
    bulk: f64,
    /// Above the baseline during the churn run (connections of a few
    /// packets each: per-connection work weighs in every packet).
    churn: f64,
}

/// Cumulative bpf stats of one program: nanoseconds and runs.
#[derive(Copy, Clone, Default)]
struct Stats {
    ns: u64,
    runs: u64,
}

impl Stats {
    fn since(self, before: Stats) -> Stats {
        Stats {
            ns: self.ns.saturating_sub(before.ns),
            runs: self.runs.saturating_sub(before.runs),
        }
    }

    fn mean(self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.ns as f64 / self.runs as f64
        }
    }
}

/// Every program's stats on the hooks of one pass at one moment.
struct Snapshot {
    programs: Vec<(String, Stats)>,
    /// The empty TC programs behind and ahead of evenflow's.
    tc: [Stats; 2],
    /// The empty sock_ops programs behind and ahead of evenflow's.
    sockops: [Stats; 2],
}

impl Snapshot {
    fn take(node: &str, empties: &Empties) -> Result<Self> {
        let stats = |n: &evenflow_tests::tcx::Neighbour| -> Result<Stats> {
            let (ns, runs) = n.stats()?;
            Ok(Stats { ns, runs })
        };
        Ok(Self {
            programs: bpf_costs(node)?,
            tc: [stats(&empties.tc_last)?, stats(&empties.tc_first)?],
            sockops: [
                stats(&empties.sockops_last)?,
                stats(&empties.sockops_first)?,
            ],
        })
    }

    /// The empty programs on `name`'s hook.
    fn empties(&self, name: &str) -> [Stats; 2] {
        if name.contains("sockops") {
            self.sockops
        } else {
            self.tc
        }
    }

    fn program(&self, name: &str) -> Stats {
        self.programs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| *s)
            .unwrap_or_default()
    }
}

/// Empty programs ahead of and behind evenflow's on every hook it uses.
///
/// Whichever program runs first on a hook pays for the cache lines the
/// hook touches first: an empty program first in a device's chain
/// measures about 17 ns more per run than the same program behind another
/// (and evenflow's programs, reduced to `return TCX_NEXT`, measure the same
/// 17 ns more than an empty program behind them). So evenflow is measured
/// between two empty programs and compared with the one behind it, in the
/// same place; the first one's cost is printed beside it.
struct Empties {
    tc_first: evenflow_tests::tcx::Neighbour,
    tc_last: evenflow_tests::tcx::Neighbour,
    sockops_first: evenflow_tests::tcx::Neighbour,
    sockops_last: evenflow_tests::tcx::Neighbour,
}

/// Starts an agent on `node` between empty programs on `ifaces` and its
/// cgroup, drives one iperf3 and one churn run at `target` with bpf stats
/// on, and returns each of this agent's programs' cost next to the empty
/// programs' on the same hook.
fn cost_pass(
    node: &'static str,
    cgroup: &std::path::Path,
    ifaces: &[&str],
    target: &str,
) -> Result<Vec<Cost>> {
    use evenflow_tests::tcx::{Neighbour, Place};
    // A cgroup runs its sock_ops programs in the order they were attached:
    // this one goes before the agent's.
    let sockops_first = Neighbour::attach_sockops(cgroup)?;
    let _agent = start_agent(node, cgroup)?;
    let ifaces: Vec<String> = ifaces.iter().map(|s| (*s).to_owned()).collect();
    let cg = cgroup.to_owned();
    let empties = netns::run_in(node, move || -> Result<_> {
        let idx = evenflow_tests::tcx::ifindexes(&ifaces)?;
        Ok(Empties {
            tc_first: Neighbour::attach(&idx, Place::First)?,
            tc_last: Neighbour::attach(&idx, Place::Last)?,
            sockops_first,
            sockops_last: Neighbour::attach_sockops(&cg)?,
        })
    })??;
    BpfStats::set(true)?;
    let phases = iperf_to(target)
        .and_then(|_| Snapshot::take(node, &empties))
        .and_then(|bulk| {
            churn_to(target)?;
            Ok((bulk, Snapshot::take(node, &empties)?))
        });
    BpfStats::set(false)?;
    let (bulk, all) = phases?;
    Ok(all
        .programs
        .iter()
        .map(|(name, stats)| {
            let [behind, ahead] = all.empties(name);
            let [behind_bulk, _] = bulk.empties(name);
            let at_bulk = bulk.program(name);
            let above = |prog: Stats, empty: Stats| prog.mean() - empty.mean();
            Cost {
                name: name.clone(),
                ns: stats.mean(),
                runs: stats.runs,
                baseline: behind.mean(),
                first: ahead.mean(),
                bulk: above(at_bulk, behind_bulk),
                churn: above(stats.since(at_bulk), behind.since(behind_bulk)),
            }
        })
        .collect())
}

/// One program's costs over several passes: medians, and the range of
/// the cost above the empty program.
struct CostSummary {
    name: String,
    ns: f64,
    baseline: f64,
    first: f64,
    above: f64,
    above_range: (f64, f64),
    bulk: f64,
    churn: f64,
    runs: u64,
}

/// Per program (by name, in the first pass's order), the medians over
/// `passes`.
fn cost_medians(passes: &[Vec<Cost>]) -> Vec<CostSummary> {
    let Some(first) = passes.first() else {
        return Vec::new();
    };
    first
        .iter()
        .map(|c| {
            let same: Vec<&Cost> = passes
                .iter()
                .filter_map(|p| p.iter().find(|x| x.name == c.name))
                .collect();
            let above: Vec<f64> = same.iter().map(|x| x.ns - x.baseline).collect();
            let lo = above.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = above.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            CostSummary {
                name: c.name.clone(),
                ns: median(same.iter().map(|x| x.ns).collect()),
                baseline: median(same.iter().map(|x| x.baseline).collect()),
                first: median(same.iter().map(|x| x.first).collect()),
                above: median(above),
                above_range: (lo, hi),
                bulk: median(same.iter().map(|x| x.bulk).collect()),
                churn: median(same.iter().map(|x| x.churn).collect()),
                runs: median(same.iter().map(|x| x.runs as f64).collect()) as u64,
            }
        })
        .collect()
}

/// Cumulative stats of the programs behind `node`'s pinned links (not
/// every evenflow program on the machine: other agents may be running).
fn bpf_costs(node: &str) -> Result<Vec<(String, Stats)>> {
    let links = std::path::PathBuf::from(format!("/sys/fs/bpf/evenflow/{node}/links"));
    let mut ids = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(&links).with_context(|| format!("listing {}", links.display()))? {
        let path = e?.path().display().to_string();
        let out = netns::sh("bpftool", &["-j", "link", "show", "pinned", &path])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        if let Some(id) = v["prog_id"].as_u64() {
            ids.insert(id);
        }
    }
    let mut costs = Vec::new();
    for id in ids {
        let out = netns::sh("bpftool", &["-j", "prog", "show", "id", &id.to_string()])?;
        let p: serde_json::Value = serde_json::from_str(&out)?;
        let name = p["name"].as_str().unwrap_or_default();
        let (ns, cnt) = (
            p["run_time_ns"].as_u64().unwrap_or(0),
            p["run_cnt"].as_u64().unwrap_or(0),
        );
        if cnt > 0 {
            costs.push((name.to_owned(), Stats { ns, runs: cnt }));
        }
    }
    Ok(costs)
}

fn proc_cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("bad /proc/pid/stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

/// The agent process (not its `sh`/`ip` wrappers): the newest
/// evenflow-agent whose command line names `node`.
fn agent_pid(node: &str) -> Result<u32> {
    for e in std::fs::read_dir("/proc")? {
        let e = e?;
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("evenflow-agent")
            && cmd.contains(&format!("--node-name {node}"))
            && !cmd.starts_with("sh ")
        {
            return Ok(pid);
        }
    }
    bail!("agent for {node} not found")
}

/// A running agent; dropping it stops it and uninstalls its programs (they
/// outlive the process through their pinned links, and the "without" rounds
/// must run with nothing attached).
struct AgentGuard {
    _process: Guard,
    node: &'static str,
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        // `_process` stops after this body; the pins go first, which
        // detaches the programs whether or not the process is still up.
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/evenflow/{}", self.node));
    }
}

fn start_agent(node: &'static str, cgroup: &std::path::Path) -> Result<AgentGuard> {
    let bin = evenflow_tests::agent::agent_bin()?;
    let child = Command::new(bin)
        .args([
            "--netns",
            &netns::path(node),
            "--node-name",
            node,
            "--cgroup",
            &cgroup.display().to_string(),
            "--interval",
            "1s",
            "--grpc-addr",
            "127.0.0.1:50051",
            "--metrics-addr",
            "127.0.0.1:9464",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting evenflow-agent")?;
    let g = Guard(child);
    evenflow_tests::wait_for(Duration::from_secs(15), || {
        netns::exec(node, "curl", &["-sf", "127.0.0.1:9464/metrics"]).ok()
    })
    .context("agent did not come up")?;
    Ok(AgentGuard { _process: g, node })
}

/// What `bench-datapath` measures; all of it unless `--only` picks one.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// iperf3 throughput and connection churn, with and without the agent.
    Throughput,
    /// Each program's cost per run above an empty program (bpf stats).
    Cost,
    /// The agent's CPU and RSS with 10,000 live endpoints.
    Footprint,
}

pub fn run(rounds: usize, only: Option<Part>) -> Result<()> {
    crate::shell::require_root(
        "bench-datapath",
        "builds network namespaces and loads eBPF programs",
    )?;
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    crate::setup::run()?;
    // The agent is the only binary the bench runs.
    crate::shell::step("cargo build --release -p evenflow-agent", || {
        crate::shell::cargo(&["build", "--release", "-p", "evenflow-agent"])
    })?;
    // SAFETY: setting an env var before any thread is spawned.
    unsafe {
        std::env::set_var(
            "EVENFLOW_AGENT_BIN",
            crate::shell::workspace_root().join("target/release/evenflow-agent"),
        )
    };
    crate::interrupt::install();
    let env = setup_env()?;
    let servers = Servers::start(&env)?;
    let wants = |part: Part| only.is_none_or(|o| o == part);
    println!(
        "\nevenflow datapath benchmark ({rounds} rounds, medians; veth between two namespaces)"
    );
    if wants(Part::Throughput) {
        throughput(rounds, &env)?.print();
    }
    if wants(Part::Cost) {
        print_costs(rounds, &costs(rounds, &env)?);
    }
    if wants(Part::Footprint) {
        footprint(&env)?.print();
    }
    drop(servers);
    drop(env);
    Ok(())
}

/// nginx and the iperf3 server in the server namespace, stopped on drop.
struct Servers {
    _nginx: Guard,
    _iperf3: Guard,
}

impl Servers {
    fn start(env: &Env) -> Result<Self> {
        let server_cg = &env.cgroups[1];
        let nginx_dir = env.dir.join("nginx");
        std::fs::create_dir_all(nginx_dir.join("tmp"))?;
        let d = nginx_dir.display();
        std::fs::write(
            nginx_dir.join("nginx.conf"),
            format!(
                "worker_processes 2;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 8192; }}\nhttp {{ access_log off; client_body_temp_path {d}/tmp;\n\
                 proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
                 server {{ listen 8080 backlog=4096; location / {{ return 200 'ok'; }} }} }}\n"
            ),
        )?;
        let conf = nginx_dir.join("nginx.conf").display().to_string();
        let prefix = nginx_dir.display().to_string();
        let nginx = spawn_in(server_cg, SERVER, "nginx", &["-p", &prefix, "-c", &conf])?;
        let iperf3 = spawn_in(server_cg, SERVER, "iperf3", &["-s"])?;
        std::thread::sleep(Duration::from_secs(1));
        Ok(Self {
            _nginx: nginx,
            _iperf3: iperf3,
        })
    }
}

/// Throughput and churn per round, without and with the agent.
struct Throughput {
    tput: [Vec<f64>; 2],
    conns: [Vec<f64>; 2],
}

/// Alternating rounds without and with the agent on the server. bpf stats
/// stay off: they add two clock reads to every program run.
fn throughput(rounds: usize, env: &Env) -> Result<Throughput> {
    let server_cg = &env.cgroups[1];
    let mut t = Throughput {
        tput: [Vec::new(), Vec::new()],
        conns: [Vec::new(), Vec::new()],
    };
    let _stats = BpfStats::off()?;
    for round in 0..rounds {
        // Each round's pair in turn order, so a drift in the machine's load
        // does not favour one side.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with in order {
            crate::interrupt::check()?;
            let agent = if with {
                Some(start_agent(SERVER, server_cg)?)
            } else {
                None
            };
            t.tput[with as usize].push(iperf()?);
            t.conns[with as usize].push(churn()?);
            eprintln!(
                "    round {} {}: {:.2} Gbit/s, {:.0} conn/s",
                round + 1,
                if with {
                    "with agent   "
                } else {
                    "without agent"
                },
                t.tput[with as usize].last().copied().unwrap_or(0.0) / 1e9,
                t.conns[with as usize].last().copied().unwrap_or(0.0)
            );
            drop(agent);
        }
    }
    Ok(t)
}

impl Throughput {
    fn print(&self) {
        println!(
            "{:<44} {:>14} {:>14} {:>8}  target",
            "", "without agent", "with agent", "ratio"
        );
        paired_row("bulk throughput, iperf3 (Gbit/s)", &self.tput, 1e9, 2, 0.99);
        paired_row(
            "connection churn, hey no keep-alive (conn/s)",
            &self.conns,
            1.0,
            0,
            0.97,
        );
    }
}

/// One measure's medians without and with the agent, and the ratio that
/// decides: the median over rounds of each round's with/without ratio.
/// Pairing each round's two runs cancels what drifts between rounds on a
/// shared machine (builds, other benchmarks), which the ranges show.
fn paired_row(
    label: &str,
    [without, with]: &[Vec<f64>; 2],
    scale: f64,
    decimals: usize,
    target: f64,
) {
    let ratios: Vec<f64> = without
        .iter()
        .zip(with)
        .map(|(base, agent)| agent / base)
        .collect();
    println!(
        "{label:<44} {:>14.decimals$} {:>14.decimals$} {:>8.3}  >= {target}",
        median(without.clone()) / scale,
        median(with.clone()) / scale,
        median(ratios.clone()),
    );
    println!(
        "{:<44} {:>14} {:>14} {:>8}",
        "  range over the rounds",
        spread(without, scale, decimals),
        spread(with, scale, decimals),
        spread(&ratios, 1.0, 3),
    );
}

/// Per-program cost in passes of their own (bpf stats on), between empty
/// programs on the same hooks (see [`Empties`]). Each round runs a local
/// pass, the same on a server that forwards, and a forwarded one.
fn costs(rounds: usize, env: &Env) -> Result<[Vec<Vec<Cost>>; 3]> {
    let server_cg = &env.cgroups[1];
    let lb_cg = server_cg.with_file_name("lb");
    std::fs::create_dir_all(&lb_cg)?;
    // Back to what it was when the passes are over.
    let _stats = BpfStats::off()?;
    let mut passes: [Vec<Vec<Cost>>; 3] = Default::default();
    let local = || cost_pass(SERVER, server_cg, &["efb-s", "efb-sl"], SERVER_IP);
    for _ in 0..rounds {
        crate::interrupt::check()?;
        passes[0].push(local()?);
        crate::interrupt::check()?;
        // A Kubernetes node forwards: its agent adds TC ingress.
        netns::sysctl(SERVER, "net.ipv4.ip_forward", "1")?;
        let pass = local();
        netns::sysctl(SERVER, "net.ipv4.ip_forward", "0")?;
        passes[1].push(pass?);
        crate::interrupt::check()?;
        passes[2].push(cost_pass(LB, &lb_cg, &["efb-lc", "efb-ls"], VIP)?);
    }
    let _ = std::fs::remove_dir(&lb_cg);
    Ok(passes)
}

fn print_costs(rounds: usize, [local, local_forwarding, forwarded]: &[Vec<Vec<Cost>>; 3]) {
    println!(
        "\nper-run cost above an empty program behind it on the same hooks (kernel bpf stats; {rounds} passes of one iperf3 + one churn run, medians, and each run apart; \"first\": an empty program ahead of it, which pays what any program first on the hook pays):"
    );
    for (pass, passes, tc_target, forwards) in [
        (
            "local sockets (agent on the server, which does not forward)",
            local,
            20.0,
            false,
        ),
        (
            "local sockets on a node that forwards (the server, ip_forward on)",
            local_forwarding,
            20.0,
            true,
        ),
        ("forwarded (agent on the DNAT lb)", forwarded, 60.0, true),
    ] {
        println!("  {pass}:");
        let medians = cost_medians(passes);
        if forwards && !medians.iter().any(|c| c.name.contains("ingress")) {
            println!(
                "    {:<22} not attached: conntrack tells where SYNs were headed (EVENFLOW_FORWARDED_PER_PACKET=true attaches it)",
                "evenflow_tc_ingress"
            );
        }
        for c in medians {
            let target = if c.name.contains("sockops") {
                60.0
            } else {
                tc_target
            };
            println!(
                "    {:<22} {:>7.1} ns/run, empty {:>6.1} → {:>+7.1} ns (passes {:+.1}–{:+.1}), first {:>6.1}, {} runs/pass   (target <= {target} ns)",
                c.name,
                c.ns,
                c.baseline,
                c.above,
                c.above_range.0,
                c.above_range.1,
                c.first,
                c.runs
            );
            println!(
                "    {:<22} of which: bulk (iperf3) {:>+7.1} ns, churn (hey) {:>+7.1} ns",
                "", c.bulk, c.churn
            );
        }
    }
}

/// CPU windows the footprint is measured over: the median decides, the
/// range shows what else the machine was doing.
const WINDOWS: usize = 5;

/// The agent's footprint with 10,000 live endpoints.
struct Footprint {
    live: u64,
    window: f64,
    cpu_pct: Vec<f64>,
    rss: f64,
    idle_rss: f64,
}

/// The client's agent sees SENDS_TO 10.50.0.2:20000..29999, one connection
/// each; its CPU over windows at a 1 s interval and its RSS after.
fn footprint(env: &Env) -> Result<Footprint> {
    let client_cg = &env.cgroups[0];
    let agent = start_agent(CLIENT, client_cg)?;
    let pid = agent_pid(CLIENT)?;
    let idle_rss = rss_mib(pid)?;
    let script = format!(
        "import socket\nfor p in range(20000, 30000):\n s=socket.create_connection(('{SERVER_IP}', p), timeout=5)\n \
         s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n while s.recv(4096): pass\n s.close()\n"
    );
    let mut maker = spawn_in(client_cg, CLIENT, "python3", &["-c", &script])?;
    let t = Instant::now();
    while maker.0.try_wait()?.is_none() && t.elapsed() < Duration::from_secs(120) {
        crate::interrupt::check()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let metrics = netns::exec(CLIENT, "curl", &["-sf", "127.0.0.1:9464/metrics"])?;
    let live: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("evenflow_datapath_endpoints{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let window = 8.0;
    eprintln!(
        "    agent pid {pid}: {live} live endpoints; measuring CPU over {WINDOWS} windows of {window:.0} s"
    );
    let mut cpu_pct = Vec::with_capacity(WINDOWS);
    for _ in 0..WINDOWS {
        let cpu0 = proc_cpu_secs(pid)?;
        for _ in 0..(window as u64 * 5) {
            crate::interrupt::check()?;
            std::thread::sleep(Duration::from_millis(200));
        }
        cpu_pct.push((proc_cpu_secs(pid)? - cpu0) / window * 100.0);
    }
    let rss = rss_mib(pid)?;
    drop(agent);
    drop(maker);
    Ok(Footprint {
        live,
        window,
        cpu_pct,
        rss,
        idle_rss,
    })
}

impl Footprint {
    fn print(&self) {
        let Footprint {
            live,
            window,
            cpu_pct,
            rss,
            idle_rss,
        } = self;
        println!("\nagent footprint, {live} live endpoints, 1 s interval:");
        println!(
            "  CPU {:.2}% of one core, median of {WINDOWS} windows of {window:.0} s (range {}%)   (target <= 1%)",
            median(cpu_pct.clone()),
            spread(cpu_pct, 1.0, 2)
        );
        println!("  RSS {rss:.1} MiB (idle {idle_rss:.1} MiB)   (target <= 32 MiB)");
        if *live < 10_000 {
            println!("  note: only {live} endpoints became live (expected 10,000)");
        }
    }
}

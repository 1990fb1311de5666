//! `cargo xtask bench-datapath`: what the agent costs the traffic it counts.
//!
//! Between network namespaces joined by veth pairs, in one run, measured
//! with and without the agent attached (paired rounds, medians of several
//! runs): bulk throughput (iperf3) and connection churn (hey, one
//! connection per request against nginx), each on two identical paths at
//! once, one the agent counts and one it does not see, so that what the
//! shared machine does during a run cancels (see [`throughput`]); the mean
//! cost per run of each eBPF program from `kernel.bpf_stats_enabled`; and
//! the agent's CPU and RSS with 10,000 live endpoints at a 1 s interval.
//! It prints the figures next to the targets and exits non-zero only when
//! it could not measure.

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
/// The server's address on either path (each path has namespaces of its
/// own, so both use the same addresses and their packets are alike).
const SERVER_IP: &str = "10.50.0.2";
/// The VIP on the lb, DNATed to the server's other address.
const VIP: &str = "10.53.0.1";

/// A client namespace joined to a server namespace by a veth pair, with a
/// cgroup for the processes on each side.
#[derive(Copy, Clone, Debug)]
struct Path {
    client: &'static str,
    server: &'static str,
    client_dev: &'static str,
    server_dev: &'static str,
    client_cgroup: &'static str,
    server_cgroup: &'static str,
}

/// The path the agent counts: it runs in `server`'s namespace (TC on
/// `server_dev`) with `server_cgroup` as its cgroup (sock_ops).
const A: Path = Path {
    client: CLIENT,
    server: SERVER,
    client_dev: "efb-c",
    server_dev: "efb-s",
    client_cgroup: "client",
    server_cgroup: "server",
};

/// A path identical to [`A`] that the agent does not see: its devices are
/// in namespaces the agent is not in, and its cgroups are siblings of A's,
/// not below them. [`check_sight`] verifies both in every round.
const B: Path = Path {
    client: "efb-client-b",
    server: "efb-server-b",
    client_dev: "efb-cb",
    server_dev: "efb-sb",
    client_cgroup: "client-b",
    server_cgroup: "server-b",
};

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
    /// The bench's cgroup; every cgroup of the bench is a child of it.
    cgroups: PathBuf,
    dir: PathBuf,
}

impl Env {
    /// The cgroup `name` of the bench (see [`Path`]).
    fn cgroup(&self, name: &str) -> PathBuf {
        self.cgroups.join(name)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for ns in [A.client, A.server, B.client, B.server, LB] {
            netns::delete(ns);
            remove_pins(ns);
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
        if let Ok(children) = std::fs::read_dir(&self.cgroups) {
            for c in children.flatten().filter(|c| c.path().is_dir()) {
                rmdir(&c.path());
            }
        }
        rmdir(&self.cgroups);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The arguments of an `sh` that moves itself into `cgroup`, then runs
/// `cmd args…` in namespace `ns`: a process of that cgroup from its first
/// instruction, so every socket it opens meets the cgroup's sock_ops
/// programs.
fn in_cgroup(cgroup: &std::path::Path, ns: &str, cmd: &str, args: &[&str]) -> Vec<String> {
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec ip netns exec {ns} \"$@\"",
        cgroup.display()
    );
    let mut all = vec!["-c".to_owned(), script, "sh".to_owned(), cmd.to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all
}

fn spawn_in(cgroup: &std::path::Path, ns: &str, cmd: &str, args: &[&str]) -> Result<Guard> {
    let child = Command::new("sh")
        .args(in_cgroup(cgroup, ns, cmd, args))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {cmd}"))?;
    Ok(Guard(child))
}

fn setup_env() -> Result<Env> {
    let env = Env {
        cgroups: evenflow_tests::lab::cgroup2_root()?.join("evenflow-bench"),
        dir: std::env::temp_dir().join("evenflow-bench"),
    };
    std::fs::create_dir_all(&env.dir)?;
    for path in [A, B] {
        setup_path(&env, path)?;
    }
    setup_lb()?;
    Ok(env)
}

/// One path's namespaces, cgroups and veth. Both paths get the same
/// addresses and the same NAT table (10,000 endpoints for the footprint:
/// ports 20000-29999 all lead to nginx), so conntrack follows the
/// connections of both alike.
fn setup_path(env: &Env, path: Path) -> Result<()> {
    for cg in [path.client_cgroup, path.server_cgroup] {
        std::fs::create_dir_all(env.cgroup(cg))?;
    }
    netns::create(path.client)?;
    netns::create(path.server)?;
    netns::veth(path.client_dev, path.client, path.server_dev, path.server)?;
    netns::addr(path.client, path.client_dev, "10.50.0.1/24")?;
    netns::addr(path.server, path.server_dev, &format!("{SERVER_IP}/24"))?;
    netns::exec(
        path.server,
        "nft",
        &[
            "add table ip efb; add chain ip efb pre { type nat hook prerouting priority dstnat; }; \
           add rule ip efb pre tcp dport 20000-29999 redirect to :8080",
        ],
    )?;
    Ok(())
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

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// An interval that holds the median of the population `v` was drawn from
/// with at least 95 % confidence, whatever its distribution: the k-th
/// smallest and k-th largest of `v`, k the largest with P(Binomial(n, ½)
/// < k) ≤ 2.5 %. `None` under 6 values (no such k). With 11 rounds it is
/// the 2nd smallest to the 2nd largest; with 21, the 6th to the 16th.
fn median_interval(v: &[f64]) -> Option<(f64, f64)> {
    let n = v.len();
    let mut below = 0.0; // P(X < k)
    let mut choose = 1.0; // C(n, k)
    let mut k = 0;
    while k < n / 2 {
        let next = below + choose / 2f64.powi(n as i32);
        if next > 0.025 {
            break;
        }
        below = next;
        choose = choose * (n - k) as f64 / (k + 1) as f64;
        k += 1;
    }
    if k == 0 {
        return None;
    }
    let mut sorted = v.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    Some((sorted[k - 1], sorted[n - k]))
}

/// The node shapes the drain and start benches measure: CPU numbers
/// (`/sys/devices/system/cpu/possible`).
pub const NODE_CPUS: [u32; 4] = [2, 64, 1_024, 8_192];

/// This tree's figure over `base`'s for each of [`NODE_CPUS`], round by
/// round: the median ratio and the range over the rounds. `this` and
/// `baseline` hold a round each; `pick` reads shape `i`'s figure from one.
pub fn print_ratios<R>(base: &str, this: &[R], baseline: &[R], pick: impl Fn(&R, usize) -> f64) {
    println!("    this tree / {base}, round by round:");
    for (i, cpus) in NODE_CPUS.iter().enumerate() {
        let ratios: Vec<f64> = this
            .iter()
            .zip(baseline)
            .map(|(t, b)| pick(t, i) / pick(b, i))
            .collect();
        println!(
            "      {cpus:>5} CPUs ×{:.4}  ({})",
            median(ratios.clone()),
            spread(&ratios, 1.0, 4)
        );
    }
}

/// `min–max` of a series, scaled, for the spread next to each median.
pub fn spread(v: &[f64], scale: f64, decimals: usize) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min) / scale;
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max) / scale;
    format!("{lo:.decimals$}–{hi:.decimals$}")
}

/// Seconds of each iperf3 and hey run.
const RUN_SECS: u32 = 4;

/// Runs `cmd` in `cgroup` and namespace `ns` to its end; its output.
fn exec_in(cgroup: &std::path::Path, ns: &str, cmd: &str, args: &[&str]) -> Result<String> {
    let all = in_cgroup(cgroup, ns, cmd, args);
    netns::sh("sh", &all.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Bulk throughput, in bits per second, from a client in `cgroup` and
/// namespace `client` to the iperf3 server on `target`.
fn iperf_to(cgroup: &std::path::Path, client: &str, target: &str) -> Result<f64> {
    let secs = RUN_SECS.to_string();
    let out = exec_in(cgroup, client, "iperf3", &["-c", target, "-t", &secs, "-J"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no bits_per_second in iperf3 output")
}

/// Connections per second from a client in `cgroup` and namespace
/// `client` to nginx on `target`, one request per connection.
fn churn_to(cgroup: &std::path::Path, client: &str, target: &str) -> Result<f64> {
    let out = exec_in(
        cgroup,
        client,
        "hey",
        &[
            "-z",
            &format!("{RUN_SECS}s"),
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
    /// For TC egress: what the agent's walks (the journal's drain, the
    /// sweepers) ran in the pass, per run of it. Work the packets left to
    /// the agent's reads, off the packet path but not free.
    walks: f64,
    /// Above the baseline during the churn run, per connection the node
    /// opened then, and its runs per connection; `None` on a node that
    /// opened none (one that only forwards). A cost per run depends on how
    /// many runs do nothing (sock_ops runs at every state change, most of
    /// which it returns from at once); per connection it does not.
    per_conn: Option<(f64, f64)>,
}

impl Cost {
    /// Mean nanoseconds per run above the empty program behind it.
    fn above(&self) -> f64 {
        self.ns - self.baseline
    }
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

    /// A program's stats from bpftool's JSON for it.
    fn of(prog: &serde_json::Value) -> Stats {
        Stats {
            ns: prog["run_time_ns"].as_u64().unwrap_or(0),
            runs: prog["run_cnt"].as_u64().unwrap_or(0),
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
    /// The agent's walks, summed (the only agent running).
    walks: Stats,
    /// The empty TC programs behind and ahead of evenflow's.
    tc: [Stats; 2],
    /// The empty sock_ops programs behind and ahead of evenflow's.
    sockops: [Stats; 2],
    /// The empty cgroup_skb ingress programs behind and ahead of evenflow's.
    resets: [Stats; 2],
    /// TCP connections the node opened so far, both ways.
    opens: u64,
}

impl Snapshot {
    fn take(node: &str, empties: &Empties) -> Result<Self> {
        let stats = |n: &evenflow_tests::tcx::Neighbour| -> Result<Stats> {
            let (ns, runs) = n.stats()?;
            Ok(Stats { ns, runs })
        };
        let walks = iterator_stats()?
            .into_iter()
            .fold(Stats::default(), |sum, (_, s)| Stats {
                ns: sum.ns + s.ns,
                runs: sum.runs + s.runs,
            });
        Ok(Self {
            programs: bpf_costs(node)?,
            walks,
            tc: [stats(&empties.tc_last)?, stats(&empties.tc_first)?],
            sockops: [
                stats(&empties.sockops_last)?,
                stats(&empties.sockops_first)?,
            ],
            resets: [stats(&empties.resets_last)?, stats(&empties.resets_first)?],
            opens: tcp_opens(node)?,
        })
    }

    /// The empty programs on `name`'s hook.
    fn empties(&self, name: &str) -> [Stats; 2] {
        if name.contains("sockops") {
            self.sockops
        } else if name.contains("resets") {
            self.resets
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
    resets_first: evenflow_tests::tcx::Neighbour,
    resets_last: evenflow_tests::tcx::Neighbour,
}

/// Starts an agent on `node` between empty programs on `ifaces` and its
/// cgroup, drives one iperf3 and one churn run from the client (its
/// processes in `clients`) at `target` with bpf stats on, and returns each
/// of this agent's programs' cost next to the empty programs' on the same
/// hook.
fn cost_pass(
    node: &'static str,
    cgroup: &std::path::Path,
    ifaces: &[&str],
    (clients, target): (&std::path::Path, &str),
    agent: &std::path::Path,
) -> Result<Vec<Cost>> {
    use evenflow_tests::tcx::{Neighbour, Place};
    // A cgroup runs its programs of a kind in the order they were
    // attached: these go before the agent's.
    let sockops_first = Neighbour::attach_sockops(cgroup)?;
    let resets_first = Neighbour::attach_cgroup_skb(cgroup)?;
    let _agent = start_agent(node, cgroup, agent, &[])?;
    let ifaces: Vec<String> = ifaces.iter().map(|s| (*s).to_owned()).collect();
    let cg = cgroup.to_owned();
    let empties = netns::run_in(node, move || -> Result<_> {
        let idx = evenflow_tests::tcx::ifindexes(&ifaces)?;
        Ok(Empties {
            tc_first: Neighbour::attach(&idx, Place::First)?,
            tc_last: Neighbour::attach(&idx, Place::Last)?,
            sockops_first,
            sockops_last: Neighbour::attach_sockops(&cg)?,
            resets_first,
            resets_last: Neighbour::attach_cgroup_skb(&cg)?,
        })
    })??;
    BpfStats::set(true)?;
    let phases = iperf_to(clients, CLIENT, target)
        .and_then(|_| Snapshot::take(node, &empties))
        .and_then(|bulk| {
            churn_to(clients, CLIENT, target)?;
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
            let walks = if name.contains("egress") && stats.runs > 0 {
                all.walks.ns as f64 / stats.runs as f64
            } else {
                0.0
            };
            Cost {
                name: name.clone(),
                ns: stats.mean(),
                runs: stats.runs,
                baseline: behind.mean(),
                first: ahead.mean(),
                bulk: above(at_bulk, behind_bulk),
                churn: above(stats.since(at_bulk), behind.since(behind_bulk)),
                walks,
                per_conn: per_connection(
                    stats.since(at_bulk),
                    behind.since(behind_bulk),
                    all.opens.saturating_sub(bulk.opens),
                ),
            }
        })
        .collect())
}

/// Nanoseconds `prog` ran above `empty` (which ran the same runs) per
/// connection of `conns`, and its runs per connection.
fn per_connection(prog: Stats, empty: Stats, conns: u64) -> Option<(f64, f64)> {
    (conns > 0).then(|| {
        let conns = conns as f64;
        let extra = prog.ns as f64 - empty.mean() * prog.runs as f64;
        (extra / conns, prog.runs as f64 / conns)
    })
}

/// TCP connections `node` opened since its namespace was made, both ways
/// (`ActiveOpens` and `PassiveOpens` in its `/proc/net/snmp`).
fn tcp_opens(node: &str) -> Result<u64> {
    let snmp = netns::run_in(node, || {
        std::fs::read_to_string("/proc/thread-self/net/snmp")
    })?
    .with_context(|| format!("reading {node}'s /proc/net/snmp"))?;
    tcp_opens_of(&snmp).with_context(|| format!("no TCP open counts in {node}'s /proc/net/snmp"))
}

/// `ActiveOpens` plus `PassiveOpens` from the text of `/proc/net/snmp`.
fn tcp_opens_of(snmp: &str) -> Option<u64> {
    let field = |name: &str| netns::proc_net_counter(snmp, "Tcp", name);
    Some(field("ActiveOpens")? + field("PassiveOpens")?)
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
    walks: f64,
    runs: u64,
    /// Median cost and runs per connection, where the node opened any.
    per_conn: Option<(f64, f64)>,
}

/// The median cost and runs per connection over the passes that opened
/// connections.
fn per_conn_median(passes: &[&Cost]) -> Option<(f64, f64)> {
    let each: Vec<(f64, f64)> = passes.iter().filter_map(|c| c.per_conn).collect();
    (!each.is_empty()).then(|| {
        (
            median(each.iter().map(|p| p.0).collect()),
            median(each.iter().map(|p| p.1).collect()),
        )
    })
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
            let above: Vec<f64> = same.iter().map(|x| x.above()).collect();
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
                walks: median(same.iter().map(|x| x.walks).collect()),
                runs: median(same.iter().map(|x| x.runs as f64).collect()) as u64,
                per_conn: per_conn_median(&same),
            }
        })
        .collect()
}

/// The ids of the programs behind `node`'s pinned links: that agent's
/// programs (not every evenflow program on the machine: other agents may
/// be running).
fn pinned_programs(node: &str) -> Result<std::collections::BTreeSet<u32>> {
    let links = pins(node).join("links");
    let mut ids = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(&links).with_context(|| format!("listing {}", links.display()))? {
        let path = e?.path().display().to_string();
        let out = netns::sh("bpftool", &["-j", "link", "show", "pinned", &path])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        if let Some(id) = v["prog_id"].as_u64().and_then(|id| u32::try_from(id).ok()) {
            ids.insert(id);
        }
    }
    Ok(ids)
}

/// Cumulative stats of the programs behind `node`'s pinned links.
fn bpf_costs(node: &str) -> Result<Vec<(String, Stats)>> {
    let ids = pinned_programs(node)?;
    let mut costs = Vec::new();
    for id in ids {
        let out = netns::sh("bpftool", &["-j", "prog", "show", "id", &id.to_string()])?;
        let p: serde_json::Value = serde_json::from_str(&out)?;
        let name = p["name"].as_str().unwrap_or_default();
        let stats = Stats::of(&p);
        if stats.runs > 0 {
            costs.push((name.to_owned(), stats));
        }
    }
    Ok(costs)
}

pub fn proc_cpu_secs(pid: u32) -> Result<f64> {
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
pub struct AgentGuard {
    process: Guard,
    node: &'static str,
}

impl AgentGuard {
    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        // `process` stops after this body; the pins go first, which
        // detaches the programs whether or not the process is still up.
        remove_pins(self.node);
    }
}

/// Starts the agent `bin` (the one under test: [`this_agent`]) on `node`,
/// with `extra` flags.
pub fn start_agent(
    node: &'static str,
    cgroup: &std::path::Path,
    bin: &std::path::Path,
    extra: &[&str],
) -> Result<AgentGuard> {
    let child = Command::new(bin)
        .args(extra)
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
    evenflow_tests::wait_for(Duration::from_secs(15), || metrics(node).ok())
        .context("agent did not come up")?;
    Ok(AgentGuard { process: g, node })
}

/// What `bench-datapath` measures; all of it unless `--only` picks one.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// iperf3 throughput and connection churn, with and without the agent.
    Throughput,
    /// Each program's cost per run above an empty program (bpf stats).
    Cost,
    /// The agent's CPU and RSS with 10,000 live endpoints, and on a
    /// balancer with 10,000 live forwarded connections.
    Footprint,
    /// The journal's drain, an event's time on nodes of 2 to 8,192 CPUs.
    Drain,
    /// The agent's start on nodes of 2 to 8,192 CPUs: how long it takes to
    /// serve under the DaemonSet's CPU limit, its CPU time and the
    /// instructions the verifier checked in each program.
    Load,
    /// The agent's CPU with sockets sampled by a walk over every network
    /// namespace (`--socket-sampling walk`) against slots, alone and beside
    /// 50 namespaces.
    Walk,
}

/// Refuses `--baseline` where it would compare nothing (throughput and
/// footprint measure this tree alone). Checked before the baseline is
/// built.
pub fn check_baseline(only: Option<Part>, baseline: Option<&str>) -> Result<()> {
    match (only, baseline) {
        (Some(part), Some(rev)) if !matches!(part, Part::Cost | Part::Drain | Part::Load) => {
            bail!(
                "--baseline {rev} compares per-program cost, the drain and the agent's start: use \
                 it with --only cost, --only drain, --only load, or without --only"
            )
        }
        _ => Ok(()),
    }
}

/// The agent under test: this tree's release build.
fn this_agent() -> Result<PathBuf> {
    evenflow_tests::agent::agent_bin()
}

/// `baseline`: another revision's agent (its name and binary) whose cost
/// is measured beside this tree's.
pub fn run(
    rounds: usize,
    only: Option<Part>,
    spin: Option<u32>,
    baseline: Option<(String, PathBuf)>,
) -> Result<()> {
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
    let mut agents = vec![("this tree".to_owned(), this_agent()?)];
    agents.extend(baseline);
    let wants = |part: Part| only.is_none_or(|o| o == part);
    match only {
        Some(Part::Drain) => return crate::drain_bench::run(rounds, &agents),
        Some(Part::Load) => return crate::load_bench::run(rounds, &agents),
        Some(Part::Walk) => return crate::walk_bench::run(rounds, &this_agent()?),
        _ => {}
    }
    let env = setup_env()?;
    let servers = Servers::start(&env)?;
    println!(
        "\nevenflow datapath benchmark ({rounds} rounds, medians; veth pairs between namespaces)"
    );
    if wants(Part::Throughput) {
        throughput(rounds, spin, &env)?.print();
    }
    if wants(Part::Cost) {
        let measured = costs(rounds, &env, &agents)?;
        for ((name, _), passes) in agents.iter().zip(&measured) {
            print_costs(rounds, name, passes);
        }
        if let [this, base] = &measured[..] {
            print_cost_differences(&agents[1].0, this, base);
        }
    }
    if wants(Part::Footprint) {
        for f in footprints(&env)? {
            f.print();
        }
    }
    drop(servers);
    drop(env);
    if wants(Part::Drain) {
        crate::drain_bench::run(rounds, &agents)?;
    }
    if wants(Part::Load) {
        crate::load_bench::run(rounds, &agents)?;
    }
    if wants(Part::Walk) {
        crate::walk_bench::run(rounds, &this_agent()?)?;
    }
    Ok(())
}

/// nginx and the iperf3 server on each path's server, in its server
/// cgroup, stopped on drop.
struct Servers {
    _guards: Vec<Guard>,
}

impl Servers {
    fn start(env: &Env) -> Result<Self> {
        let mut guards = Vec::new();
        for path in [A, B] {
            let cgroup = env.cgroup(path.server_cgroup);
            let conf = nginx_conf(&env.dir.join(format!("nginx-{}", path.server)))?;
            let conf: Vec<&str> = conf.iter().map(String::as_str).collect();
            guards.push(spawn_in(&cgroup, path.server, "nginx", &conf)?);
            guards.push(spawn_in(&cgroup, path.server, "iperf3", &["-s"])?);
        }
        std::thread::sleep(Duration::from_secs(1));
        Ok(Self { _guards: guards })
    }
}

/// Writes an nginx configuration under `dir` (its own pid file and temp
/// paths: one nginx per path) and returns nginx's arguments for it.
fn nginx_conf(dir: &std::path::Path) -> Result<[String; 4]> {
    std::fs::create_dir_all(dir.join("tmp"))?;
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "worker_processes 2;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 16384; }}\nhttp {{ access_log off; client_body_temp_path {d}/tmp;\n\
             proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
             keepalive_timeout 600s;\n\
             server {{ listen 8080 backlog=4096; location / {{ return 200 'ok'; }} }} }}\n"
        ),
    )?;
    Ok([
        "-p".to_owned(),
        d.to_string(),
        "-c".to_owned(),
        dir.join("nginx.conf").display().to_string(),
    ])
}

/// What one run measured on both paths at once, `[A, B]`.
#[derive(Copy, Clone)]
struct Sample {
    tput: [f64; 2],
    conns: [f64; 2],
    /// Connections per second of CPU the path's processes ran during the
    /// churn run (see [`cpu_seconds`]).
    per_cpu: [f64; 2],
}

/// CPU seconds the processes of `path` (its client's and its server's
/// cgroups) have run, from cgroup v2's `cpu.stat`: the scheduler's exact
/// runtime, softirq work included where this kernel does not account
/// interrupt time apart (`CONFIG_IRQ_TIME_ACCOUNTING` off), as a veth's
/// receive runs in its sender's softirq. The churn's CPU per connection
/// does not depend on how the scheduler happens to share the CPU between
/// the two paths, which moves their rates from round to round.
fn cpu_seconds(env: &Env, path: Path) -> Result<f64> {
    let mut total = 0.0;
    for cg in [path.client_cgroup, path.server_cgroup] {
        let file = env.cgroup(cg).join("cpu.stat");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let usec: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no usage_usec in {}", file.display()))?;
        total += usec / 1e6;
    }
    Ok(total)
}

/// Throughput and churn per round, `[without, with]` the agent.
struct Throughput {
    rounds: Vec<[Sample; 2]>,
    /// The spinner's iterations per packet, if the with-sides had one.
    spin: Option<u32>,
}

/// Throughput and churn, decided by two identical paths measured at once.
///
/// On this project's 2-core VM the machine's speed drifts by a quarter
/// from minute to minute (other work on it and on its host): a run with
/// the agent and one without, even seconds apart, see different machines,
/// and 11 rounds of such pairs ranged 0.85–1.16. So every run drives path
/// [`A`], which the agent counts, and path [`B`], which it does not see,
/// concurrently: what slows the machine during the run slows both, and
/// A/B cancels it. A/B without the agent calibrates what differs between
/// the paths (alike, but not the same devices, sockets or cache lines).
/// Each round's figure is (A/B with the agent) / (A/B without), the
/// median over rounds decides, and the range shows how well it held.
///
/// Both paths' runs are CPU-bound (a veth moves bytes as fast as the CPUs
/// copy them) and share the same two CPUs, which the scheduler divides
/// evenly between their processes: A/B is the ratio of the work each path
/// gets done per CPU second, which is what the agent's in-kernel work per
/// packet and per connection takes away. What it cannot see is CPU the
/// agent's own process takes, which slows both paths alike: `--only
/// footprint` measures that. bpf stats stay off: they add two clock reads
/// to every program run.
///
/// `spin` adds a known cost to the with-sides (see `--spin`).
fn throughput(rounds: usize, spin: Option<u32>, env: &Env) -> Result<Throughput> {
    let _stats = BpfStats::off()?;
    if online_cpus() < 2 {
        bail!(
            "bench-datapath --only throughput needs two CPUs (see `SERVERS_CPU` in xtask/src/bench.rs)"
        );
    }
    let _pinned = PinnedServers::hold(env)?;
    let mut t = Throughput {
        rounds: Vec::new(),
        spin,
    };
    for round in 0..rounds {
        // Each round's pair in turn order, so that a drift in the machine's
        // load over the round does not favour one side.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let mut pair = [None; 2];
        for with in order {
            crate::interrupt::check()?;
            let sample = side(env, with, spin)?;
            log_side(round, with, &sample);
            pair[with as usize] = Some(sample);
        }
        if let [Some(without), Some(with)] = pair {
            t.rounds.push([without, with]);
        }
    }
    Ok(t)
}

/// One side of a round: the agent started on path A (or not), checked to
/// see A and only A, and both paths measured at once.
fn side(env: &Env, with: bool, spin: Option<u32>) -> Result<Sample> {
    let agent = if with {
        Some(start_agent(
            A.server,
            &env.cgroup(A.server_cgroup),
            &this_agent()?,
            &[],
        )?)
    } else {
        None
    };
    check_sight(env, with)?;
    let spinner = match spin.filter(|_| with) {
        Some(n) => Some(spinner(n)?),
        None => None,
    };
    let tput = both(IPERF_CLIENTS_CPU, |path| {
        iperf_to(&env.cgroup(path.client_cgroup), path.client, SERVER_IP)
    })?;
    let before = [A, B].map(|path| cpu_seconds(env, path));
    let conns = both(HEY_CLIENTS_CPU, |path| {
        churn_to(&env.cgroup(path.client_cgroup), path.client, SERVER_IP)
    })?;
    let after = [A, B].map(|path| cpu_seconds(env, path));
    let mut per_cpu = [0.0; 2];
    for (i, (b, a)) in before.into_iter().zip(after).enumerate() {
        let spent = a? - b?;
        if spent <= 0.0 {
            bail!(
                "path {}'s cgroups ran no CPU during its churn run ({spent} s by cpu.stat): \
                 are its processes in {} and {}?",
                ["A", "B"][i],
                [A, B][i].client_cgroup,
                [A, B][i].server_cgroup,
            );
        }
        per_cpu[i] = conns[i] * f64::from(RUN_SECS) / spent;
    }
    let sample = Sample {
        tput,
        conns,
        per_cpu,
    };
    if let Some(s) = &spinner {
        let (ns, runs) = s.cost()?;
        eprintln!("    spinner on path A: {ns:.0} ns per run, {runs} runs");
    }
    drop(spinner);
    drop(agent);
    Ok(sample)
}

/// A program counting down from `iterations` on both directions of path
/// A's server veth, behind the agent's: a cost the bench must see. It
/// turns bpf stats on while attached, so its own cost per run is known.
fn spinner(iterations: u32) -> Result<evenflow_tests::tcx::Neighbour> {
    use evenflow_tests::tcx::{Neighbour, Place, ifindexes};
    let dev = A.server_dev.to_owned();
    netns::run_in(A.server, move || {
        Neighbour::attach_spinning(&ifindexes(&[dev])?, Place::Last, iterations)
    })?
}

fn log_side(round: usize, with: bool, s: &Sample) {
    eprintln!(
        "    round {} {}: A {:.2} B {:.2} Gbit/s, A {:.0} B {:.0} conn/s, A {:.0} B {:.0} conn per CPU s",
        round + 1,
        if with {
            "with agent   "
        } else {
            "without agent"
        },
        s.tput[0] / 1e9,
        s.tput[1] / 1e9,
        s.conns[0],
        s.conns[1],
        s.per_cpu[0],
        s.per_cpu[1],
    );
}

/// Runs `measure` on paths A and B at the same time, `[A, B]`, each from
/// a thread held on `cpu`: the client a run starts inherits it.
fn both(cpu: usize, measure: impl Fn(Path) -> Result<f64> + Sync) -> Result<[f64; 2]> {
    let run = |path: Path| -> Result<f64> {
        set_affinity(0, &[cpu])
            .with_context(|| format!("pinning path {}'s client", path.client))?;
        measure(path)
    };
    std::thread::scope(|s| {
        let a = s.spawn(|| run(A));
        let b = s.spawn(|| run(B));
        let joined = |h: std::thread::ScopedJoinHandle<'_, Result<f64>>| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a measuring thread panicked"))?
        };
        Ok([joined(a)?, joined(b)?])
    })
}

/// Where both paths' processes are held while throughput and churn are
/// measured: servers (iperf3, nginx) and hey clients on CPU 1, iperf3
/// clients on CPU 0. Each CPU then runs A's and B's counterparts side by
/// side, the scheduler shares it evenly between them, and whatever else
/// lands on a CPU slows A and B alike.
///
/// Left to the scheduler, one iperf3 run (the sender, and the receive
/// path the veth runs in the sender's softirq) fits on one CPU, so two
/// concurrent runs settle one per CPU and A/B compares two CPUs, each with
/// its own share of the machine's other work: A/B ranged 0.82–1.13 over a
/// bench's runs, and two concurrent hey runs 0.73–1.05. With iperf3's
/// clients on one CPU and the servers on the other, A/B held within
/// ±1.5 % (everything on one CPU: ±5 %); for hey that layout starved the
/// paths in turns (0.51–1.24), and hey with nginx on one CPU held within
/// ±5 %. What pinning leaves out of churn is what the agent's programs pay
/// for cache lines moving between CPUs (a socket's slot taken on one and
/// given back on another); the cost part (`--only cost`), which runs
/// unpinned, measures that.
const SERVERS_CPU: usize = 1;
/// See [`SERVERS_CPU`].
const IPERF_CLIENTS_CPU: usize = 0;
/// See [`SERVERS_CPU`].
const HEY_CLIENTS_CPU: usize = 1;

/// Sets the CPUs thread `tid` may run on (0: the calling thread).
fn set_affinity(tid: libc::pid_t, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET bounds-checks `cpu` against the set's size.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Both paths' servers held on [`SERVERS_CPU`]; on drop, given
/// every CPU back (the cost and footprint parts run unpinned).
struct PinnedServers(Vec<PathBuf>);

impl PinnedServers {
    fn hold(env: &Env) -> Result<Self> {
        let pinned = Self([A, B].map(|p| env.cgroup(p.server_cgroup)).to_vec());
        for cgroup in &pinned.0 {
            pin_threads(cgroup, &[SERVERS_CPU])?;
        }
        Ok(pinned)
    }
}

impl Drop for PinnedServers {
    fn drop(&mut self) {
        let all: Vec<usize> = (0..online_cpus()).collect();
        for cgroup in &self.0 {
            let _ = pin_threads(cgroup, &all);
        }
    }
}

fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Holds every thread of `cgroup`'s processes (nginx's workers, iperf3)
/// on `cpus`.
fn pin_threads(cgroup: &std::path::Path, cpus: &[usize]) -> Result<()> {
    let threads = cgroup.join("cgroup.threads");
    let list = std::fs::read_to_string(&threads)
        .with_context(|| format!("reading {}", threads.display()))?;
    for tid in list.lines().filter_map(|l| l.trim().parse().ok()) {
        set_affinity(tid, cpus).with_context(|| format!("pinning thread {tid}"))?;
    }
    Ok(())
}

/// How many of the agent's programs sit on each hook of a path.
#[derive(Debug, Default, PartialEq, Eq)]
struct Sight {
    /// TCX, either direction, on either end of the path's veth.
    tc: usize,
    /// sock_ops in effect for the server cgroup's sockets.
    server_sockops: usize,
    /// sock_ops in effect for the client cgroup's sockets.
    client_sockops: usize,
}

/// Fails unless the agent (if `with`) counts path A's server and nothing
/// of path B, and (if not) left nothing on A: otherwise the paired figure
/// would compare two counted paths, or two uncounted ones, and read 1.0.
fn check_sight(env: &Env, with: bool) -> Result<()> {
    let ours = if with {
        pinned_programs(A.server)?
    } else {
        Default::default()
    };
    let a = sight(env, A, &ours, with)?;
    let b = sight(env, B, &ours, with)?;
    let counted = a.tc > 0 && a.server_sockops > 0;
    let a_ok = a.client_sockops == 0 && if with { counted } else { a.tc == 0 };
    if b != Sight::default() || !a_ok {
        bail!(
            "the agent's programs are not where the bench needs them (with agent: {with}): \
             path A {a:?} (wants TC and server sock_ops with the agent, nothing without), \
             path B {b:?} (wants nothing)"
        );
    }
    Ok(())
}

/// The programs of `ours` on `path`'s hooks; without the agent (`!with`),
/// any program on its devices.
fn sight(
    env: &Env,
    path: Path,
    ours: &std::collections::BTreeSet<u32>,
    with: bool,
) -> Result<Sight> {
    let count = |ids: Vec<u32>| ids.iter().filter(|id| !with || ours.contains(id)).count();
    let mut tc = 0;
    for (ns, dev) in [
        (path.client, path.client_dev),
        (path.server, path.server_dev),
    ] {
        let dev = dev.to_owned();
        let ids = netns::run_in(ns, move || -> Result<Vec<u32>> {
            use evenflow_tests::tcx::{ifindexes, tcx_programs};
            let idx = ifindexes(&[dev])?[0];
            Ok([tcx_programs(idx, true)?, tcx_programs(idx, false)?].concat())
        })??;
        tc += count(ids);
    }
    let sockops = |cg: &str| -> Result<usize> {
        let ids = evenflow_tests::tcx::sockops_programs(&env.cgroup(cg))?;
        // Sockets of the bench's cgroups inherit whatever other agents
        // attach above them; only this agent's programs count here.
        Ok(ids.iter().filter(|id| ours.contains(id)).count())
    };
    Ok(Sight {
        tc,
        server_sockops: sockops(path.server_cgroup)?,
        client_sockops: sockops(path.client_cgroup)?,
    })
}

impl Throughput {
    fn print(&self) {
        if let Some(n) = self.spin {
            println!("(with agent: and a spinner of {n} iterations per packet on path A, --spin)");
        }
        println!(
            "{:<44} {:>14} {:>14} {:>9}  target",
            "", "without agent", "with agent", "ratio"
        );
        paired_row(
            "bulk throughput, iperf3 (Gbit/s)",
            &self.paired(|s| s.tput),
            1e9,
            2,
            0.99,
        );
        paired_row(
            "connection churn, hey no keep-alive (conn/s)",
            &self.paired(|s| s.conns),
            1.0,
            0,
            0.97,
        );
        paired_row(
            "churn per CPU second of the path (conn)",
            &self.paired(|s| s.per_cpu),
            1.0,
            0,
            0.97,
        );
    }

    /// One measure of every round, `[without, with]`, each `[A, B]`.
    fn paired(&self, pick: impl Fn(&Sample) -> [f64; 2]) -> Vec<[[f64; 2]; 2]> {
        self.rounds
            .iter()
            .map(|[o, w]| [pick(o), pick(w)])
            .collect()
    }
}

/// One measure: path A's medians without and with the agent, and the
/// ratio that decides, the median over rounds of (A/B with) / (A/B
/// without) (see [`throughput`]); then the ranges; then path B's medians
/// and the range of B with / B without, which is how far the machine
/// drifted between the two sides of a round (what the old, unpaired
/// method would have read as the agent's cost).
fn paired_row(label: &str, rounds: &[[[f64; 2]; 2]], scale: f64, decimals: usize, target: f64) {
    let series =
        |side: usize, path: usize| -> Vec<f64> { rounds.iter().map(|r| r[side][path]).collect() };
    let ratios: Vec<f64> = rounds
        .iter()
        .map(|[[a0, b0], [a1, b1]]| (a1 / b1) / (a0 / b0))
        .collect();
    let drift: Vec<f64> = rounds.iter().map(|[[_, b0], [_, b1]]| b1 / b0).collect();
    let (a0, a1, b0, b1) = (series(0, 0), series(1, 0), series(0, 1), series(1, 1));
    println!(
        "{label:<44} {:>14.decimals$} {:>14.decimals$} {:>9.3}  >= {target}",
        median(a0.clone()) / scale,
        median(a1.clone()) / scale,
        median(ratios.clone()),
    );
    let interval = median_interval(&ratios).map(|(lo, hi)| format!("{lo:.3}–{hi:.3}"));
    for [what, without, with, ratio] in [
        [
            "  range over the rounds",
            &spread(&a0, scale, decimals),
            &spread(&a1, scale, decimals),
            &spread(&ratios, 1.0, 3),
        ],
        [
            "  95 % interval of the median ratio",
            "",
            "",
            interval.as_deref().unwrap_or("needs 6 rounds"),
        ],
        [
            "  unseen path B (its with/without: drift)",
            &spread(&b0, scale, decimals),
            &spread(&b1, scale, decimals),
            &spread(&drift, 1.0, 3),
        ],
    ] {
        println!("{what:<44} {without:>14} {with:>14} {ratio:>9}");
    }
}

/// Each of [`COST_PASSES`]' passes, round by round.
type Passes = [Vec<Vec<Cost>>; COST_PASSES.len()];

/// Per-program cost in passes of their own (bpf stats on), between empty
/// programs on the same hooks (see [`Empties`]). Each round runs the
/// [`COST_PASSES`]: the server's sockets, the client's (which connect out,
/// as a proxy's do towards its backends), the server's on a node that
/// forwards, and a forwarded path; each pass once per agent in `agents`,
/// one after the other, in an order that alternates from round to round.
/// One [`Passes`] per agent.
fn costs(rounds: usize, env: &Env, agents: &[(String, PathBuf)]) -> Result<Vec<Passes>> {
    let server_cg = &env.cgroup(A.server_cgroup);
    let client_cg = &env.cgroup(A.client_cgroup);
    let lb_cg = env.cgroup("lb");
    std::fs::create_dir_all(&lb_cg)?;
    // Back to what it was when the passes are over.
    let _stats = BpfStats::off()?;
    let mut passes: Vec<Passes> = agents.iter().map(|_| Default::default()).collect();
    let to_server = (client_cg.as_path(), SERVER_IP);
    let local =
        |bin: &std::path::Path| cost_pass(SERVER, server_cg, &["efb-s", "efb-sl"], to_server, bin);
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..agents.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        // Pass `k` once per agent, in this round's order.
        let mut each = |k: usize, pass: &dyn Fn(&std::path::Path) -> Result<Vec<Cost>>| {
            order.iter().try_for_each(|&i| {
                crate::interrupt::check()?;
                passes[i][k].push(pass(&agents[i].1)?);
                Ok::<_, anyhow::Error>(())
            })
        };
        each(0, &local)?;
        each(1, &|bin| {
            cost_pass(CLIENT, client_cg, &["efb-c", "efb-cl"], to_server, bin)
        })?;
        // A Kubernetes node forwards: its agent adds TC ingress.
        netns::sysctl(SERVER, "net.ipv4.ip_forward", "1")?;
        let forwarding = each(2, &local);
        netns::sysctl(SERVER, "net.ipv4.ip_forward", "0")?;
        forwarding?;
        each(3, &|bin| {
            cost_pass(LB, &lb_cg, &["efb-lc", "efb-ls"], (client_cg, VIP), bin)
        })?;
    }
    let _ = std::fs::remove_dir(&lb_cg);
    Ok(passes)
}

/// Per program, this tree's cost above the empty program less the
/// baseline's, round by round (their passes ran back to back): the median,
/// the 95 % interval of the median where there are rounds enough, and the
/// range.
fn print_cost_differences(base: &str, this: &Passes, baseline: &Passes) {
    println!(
        "\nthis tree less {base}, per run above the empty program, pass by pass (median; 95 % interval of the median; range over the rounds):"
    );
    for ((pass, this), baseline) in COST_PASSES.iter().zip(this).zip(baseline) {
        println!("  {pass}:");
        let Some(first) = this.first() else {
            continue;
        };
        for c in first {
            let above = |passes: &[Vec<Cost>], round: usize| {
                passes
                    .get(round)
                    .and_then(|p| p.iter().find(|x| x.name == c.name))
                    .map(Cost::above)
            };
            let diffs: Vec<f64> = (0..this.len())
                .filter_map(|r| Some(above(this, r)? - above(baseline, r)?))
                .collect();
            if diffs.is_empty() {
                continue;
            }
            let interval = median_interval(&diffs)
                .map(|(lo, hi)| format!("{lo:+.1} … {hi:+.1}"))
                .unwrap_or_else(|| "needs 6 rounds".to_owned());
            println!(
                "    {:<22} {:>+7.1} ns   ({interval}; {})",
                c.name,
                median(diffs.clone()),
                spread(&diffs, 1.0, 1)
            );
            // Where the journal's drain moved work off the packet path.
            if c.walks > 0.0 && pass.starts_with("forwarded") {
                let with_walks = |passes: &[Vec<Cost>], round: usize| {
                    passes
                        .get(round)
                        .and_then(|p| p.iter().find(|x| x.name == c.name))
                        .map(|x| x.above() + x.walks)
                };
                let diffs: Vec<f64> = (0..this.len())
                    .filter_map(|r| Some(with_walks(this, r)? - with_walks(baseline, r)?))
                    .collect();
                println!(
                    "    {:<22} {:>+7.1} ns   (with the agent's walks; {})",
                    "",
                    median(diffs.clone()),
                    spread(&diffs, 1.0, 1)
                );
            }
        }
    }
}

/// The passes of a round, as printed.
const COST_PASSES: [&str; 4] = [
    "local sockets (agent on the server, which does not forward)",
    "sockets that connect out (agent on the client, which does not forward)",
    "local sockets on a node that forwards (the server, ip_forward on)",
    "forwarded (agent on the DNAT lb)",
];

fn print_costs(rounds: usize, agent: &str, passes: &Passes) {
    println!(
        "\nper-run cost above an empty program behind it on the same hooks, {agent} (kernel bpf stats; {rounds} passes of one iperf3 + one churn run, medians, and each run apart; \"first\": an empty program ahead of it, which pays what any program first on the hook pays):"
    );
    for ((pass, passes), (tc_target, forwards)) in COST_PASSES.iter().zip(passes).zip([
        (20.0, false),
        (20.0, false),
        (20.0, true),
        (60.0, true),
    ]) {
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
            if let Some((ns, runs)) = c.per_conn {
                println!(
                    "    {:<22} per connection the node opened in the churn run: {:>+7.0} ns over {runs:.1} runs",
                    "", ns
                );
            }
            if forwards && c.walks > 0.0 {
                println!(
                    "    {:<22} and the agent's walks (drain, sweepers), off the packet path: {:>+7.1} ns per run of it",
                    "", c.walks
                );
            }
        }
    }
}

/// CPU windows the footprint is measured over: the median decides, the
/// range shows what else the machine was doing.
const WINDOWS: usize = 5;

/// What the agent holds live in a footprint measurement: 10,000 of each.
const FOOTPRINT_LIVE: u64 = 10_000;

/// The agent's footprint while it holds [`FOOTPRINT_LIVE`] of `what`.
struct Footprint {
    what: &'static str,
    live: u64,
    window: f64,
    cpu_pct: Vec<f64>,
    rss: f64,
    idle_rss: f64,
    /// The kernel memory of the agent's maps, which RSS does not show.
    maps_mib: f64,
    /// The agent's iterators that visited anything in one window with bpf
    /// stats on: name, what they ran, and how often.
    iterators: Vec<(String, Stats)>,
    /// The `/metrics` pages scraped while the CPU was measured.
    scrapes: Vec<Scrape>,
}

/// How often the footprint's windows scrape the agent's `/metrics`: the
/// shipped DaemonSet asks Prometheus to scrape every agent, and 15 s is
/// the interval most set. At 10,000 endpoints a page is some 14 MB, so
/// what building it costs belongs in the agent's footprint.
const SCRAPE_EVERY: Duration = Duration::from_secs(15);

/// One scrape of the agent's `/metrics`: its size and how long it took
/// (as the scraper saw it, `curl` included).
struct Scrape {
    bytes: usize,
    took: Duration,
}

/// Scrapes `node`'s agent every [`SCRAPE_EVERY`], starting now, until
/// `stop` is set; the scrapes, once it is.
fn scraper(
    node: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Result<Vec<Scrape>>> {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        let mut scrapes = Vec::new();
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                let t = Instant::now();
                let page = metrics(node)?;
                scrapes.push(Scrape {
                    bytes: page.len(),
                    took: t.elapsed(),
                });
                next += SCRAPE_EVERY;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(scrapes)
    })
}

/// The walks and iterators the agent runs before each read: what they
/// cost grows with the endpoints and connections, not with traffic. A
/// walk's run is one pass over its map; an iterator's, one element.
const ITERATORS: [&str; 6] = [
    "evenflow_ct_drain",
    "evenflow_slot_sampler",
    "evenflow_sock_sampler",
    "evenflow_flow_sweeper",
    "evenflow_ct_sweeper",
    "evenflow_ct_young_sweeper",
];

/// Cumulative stats of the agent's iterators (the only agent running).
fn iterator_stats() -> Result<Vec<(String, Stats)>> {
    let out = netns::sh("bpftool", &["-j", "prog", "show"])?;
    let progs: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    Ok(progs
        .iter()
        .filter_map(|p| {
            // bpftool names a program by its BTF function, or else by
            // the kernel's first 15 bytes of its name.
            let name = p["name"].as_str().filter(|n| n.starts_with("evenflow_"))?;
            ITERATORS
                .iter()
                .any(|&i| i.starts_with(name))
                .then(|| (name.to_owned(), Stats::of(p)))
        })
        .collect())
}

/// Sleeps `secs` seconds, stopping early on Ctrl-C.
fn wait(secs: u64) -> Result<()> {
    for _ in 0..secs * 5 {
        crate::interrupt::check()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// What the agent's iterators ran over one window of `secs` with bpf
/// stats on (apart from the CPU windows: the stats' clock reads add to
/// every visit).
fn iterator_window(secs: u64) -> Result<Vec<(String, Stats)>> {
    let _stats = BpfStats::off()?;
    BpfStats::set(true)?;
    let before = iterator_stats()?;
    wait(secs)?;
    let after = iterator_stats()?;
    Ok(after
        .into_iter()
        .filter_map(|(name, now)| {
            let was = before.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)?;
            Some((name, now.since(was)))
        })
        .filter(|(_, s)| s.runs > 0)
        .collect())
}

/// Both footprints: a node's sockets' endpoints, a balancer's forwarded
/// connections.
fn footprints(env: &Env) -> Result<[Footprint; 2]> {
    Ok([endpoint_footprint(env)?, forwarded_footprint(env)?])
}

/// The client's agent sees SENDS_TO 10.50.0.2:20000..29999, one connection
/// each; its CPU over windows at a 1 s interval and its RSS after.
fn endpoint_footprint(env: &Env) -> Result<Footprint> {
    let client_cg = &env.cgroup(A.client_cgroup);
    let agent = start_agent(CLIENT, client_cg, &this_agent()?, &[])?;
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
    let live = gauge(CLIENT, "evenflow_datapath_endpoints{")?;
    let footprint = measure((CLIENT, pid), "live endpoints", live, idle_rss);
    drop(agent);
    drop(maker);
    footprint
}

/// The balancer's agent follows [`FOOTPRINT_LIVE`] forwarded connections:
/// keep-alive connections the client opens through the VIP after one
/// request each and then holds idle, settled in `EF_CT_FLOWS`, so that
/// every sweep visits them all. Its CPU over windows at a 1 s interval and
/// its RSS after.
fn forwarded_footprint(env: &Env) -> Result<Footprint> {
    let lb_cg = env.cgroup("lb");
    std::fs::create_dir_all(&lb_cg)?;
    let agent = start_agent(LB, &lb_cg, &this_agent()?, &[])?;
    let pid = agent_pid(LB)?;
    let idle_rss = rss_mib(pid)?;
    let script = format!(
        "import resource, socket, time\n\
         hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n\
         resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))\n\
         held = []\n\
         for _ in range({FOOTPRINT_LIVE}):\n s=socket.create_connection(('{VIP}', 8080), timeout=5)\n \
         s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n s.recv(4096)\n held.append(s)\n\
         time.sleep(3600)\n"
    );
    let holder = spawn_in(
        &env.cgroup(A.client_cgroup),
        CLIENT,
        "python3",
        &["-c", &script],
    )?;
    let followed = evenflow_tests::wait_for(Duration::from_secs(120), || {
        crate::interrupt::check().ok()?;
        gauge(LB, "evenflow_datapath_flows{")
            .ok()
            .filter(|&n| n >= FOOTPRINT_LIVE)
    });
    // Two sweeps: every connection open since an earlier one is settled.
    std::thread::sleep(Duration::from_secs(3));
    let footprint = followed
        .context("the balancer's agent did not come to follow the held connections")
        .and_then(|live| measure((LB, pid), "live forwarded connections", live, idle_rss));
    drop(agent);
    drop(holder);
    let _ = std::fs::remove_dir(&lb_cg);
    footprint
}

/// The agent on `node`'s metrics page (it listens on 127.0.0.1:9464 in
/// the node's namespace, as [`start_agent`] starts it).
pub fn metrics(node: &str) -> Result<String> {
    netns::exec(node, "curl", &["-sf", "127.0.0.1:9464/metrics"])
}

/// Where the agent on `node` pins its maps and links.
fn pins(node: &str) -> PathBuf {
    PathBuf::from(evenflow_tests::BPFFS)
        .join("evenflow")
        .join(node)
}

/// Removes `node`'s pins, which detaches its programs whether or not its
/// agent is still running.
pub fn remove_pins(node: &str) {
    let _ = std::fs::remove_dir_all(pins(node));
}

/// A gauge from `node`'s agent's metrics, by the start of its line.
fn gauge(node: &str, line_start: &str) -> Result<u64> {
    metrics(node)?
        .lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {line_start}...}} in the agent's metrics"))
}

/// The CPU of `node`'s agent `pid` over [`WINDOWS`] windows, and its RSS
/// and maps after.
fn measure(
    (node, pid): (&'static str, u32),
    what: &'static str,
    live: u64,
    idle_rss: f64,
) -> Result<Footprint> {
    let window = 8.0;
    eprintln!(
        "    agent pid {pid}: {live} {what}; measuring CPU over {WINDOWS} windows of {window:.0} s"
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraping = scraper(node, stop.clone());
    let windows = cpu_windows(pid, window);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes = scraping
        .join()
        .map_err(|_| anyhow::anyhow!("the /metrics scraper panicked"))??;
    let cpu_pct = windows?;
    Ok(Footprint {
        what,
        live,
        window,
        cpu_pct,
        rss: rss_mib(pid)?,
        idle_rss,
        maps_mib: maps_mib(node)?,
        iterators: iterator_window(window as u64)?,
        scrapes,
    })
}

/// The CPU of process `pid`, in % of one core, over [`WINDOWS`] windows
/// of `window` seconds.
fn cpu_windows(pid: u32, window: f64) -> Result<Vec<f64>> {
    let mut cpu_pct = Vec::with_capacity(WINDOWS);
    for _ in 0..WINDOWS {
        let cpu0 = proc_cpu_secs(pid)?;
        wait(window as u64)?;
        cpu_pct.push((proc_cpu_secs(pid)? - cpu0) / window * 100.0);
    }
    Ok(cpu_pct)
}

/// What the kernel holds for `node`'s pinned maps (bpftool's
/// `bytes_memlock`: their memory in use, on kernels since 6.4), in MiB.
fn maps_mib(node: &str) -> Result<f64> {
    let dir = pins(node);
    let mut bytes = 0;
    for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        if !e.file_type()?.is_file() {
            continue;
        }
        let path = e.path().display().to_string();
        let out = netns::sh("bpftool", &["-j", "map", "show", "pinned", &path])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        bytes += v["bytes_memlock"].as_u64().unwrap_or(0);
    }
    Ok(bytes as f64 / (1024.0 * 1024.0))
}

impl Footprint {
    fn print(&self) {
        let Footprint {
            what,
            live,
            window,
            cpu_pct,
            rss,
            idle_rss,
            maps_mib,
            iterators,
            scrapes,
        } = self;
        println!("\nagent footprint, {live} {what}, 1 s interval:");
        println!(
            "  CPU {:.2}% of one core, median of {WINDOWS} windows of {window:.0} s (range {}%)   (target <= 1%)",
            median(cpu_pct.clone()),
            spread(cpu_pct, 1.0, 2)
        );
        println!("  RSS {rss:.1} MiB (idle {idle_rss:.1} MiB)   (target <= 32 MiB)");
        println!("  kernel maps {maps_mib:.1} MiB (bpftool's bytes_memlock of the pinned maps)");
        if let Some(largest) = scrapes.iter().map(|s| s.bytes).max() {
            let took: Vec<f64> = scrapes.iter().map(|s| s.took.as_secs_f64() * 1e3).collect();
            println!(
                "  /metrics scraped every {} s meanwhile (as Prometheus does the DaemonSet's agents): {} scrapes, up to {:.1} MB, {:.0} ms each (median; range {} ms), in the CPU and RSS above",
                SCRAPE_EVERY.as_secs(),
                scrapes.len(),
                largest as f64 / 1e6,
                median(took.clone()),
                spread(&took, 1.0, 0)
            );
        }
        for (name, s) in iterators {
            println!(
                "  {name:<26} {:>9.0} ns a run, {:>7.0} runs/s: {:.2}% of one core (one {window:.0} s window, bpf stats on)",
                s.mean(),
                s.runs as f64 / window,
                s.ns as f64 / window / 1e7
            );
        }
        if *live < FOOTPRINT_LIVE {
            println!("  note: only {live} {what} (expected {FOOTPRINT_LIVE})");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Stats, median_interval, per_connection, tcp_opens_of};

    #[test]
    fn tcp_opens_are_active_and_passive_opens_of_the_tcp_lines() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm RtoMin ActiveOpens PassiveOpens AttemptFails\n\
                    Tcp: 1 200 12 30 4\n\
                    Udp: InDatagrams\nUdp: 7\n";
        assert_eq!(tcp_opens_of(snmp), Some(42));
        assert_eq!(tcp_opens_of("Tcp: ActiveOpens PassiveOpens\n"), None);
        assert_eq!(tcp_opens_of("Ip: 1\nIp: 2\n"), None);
    }

    #[test]
    fn per_connection_is_the_time_above_the_empty_program_over_connections() {
        // 1,000 runs at 130 ns against an empty program's 50 ns behind it,
        // over 125 connections: 80 µs above, 640 ns and 8 runs each.
        let prog = Stats {
            ns: 130_000,
            runs: 1_000,
        };
        let empty = Stats {
            ns: 50_000,
            runs: 1_000,
        };
        assert_eq!(per_connection(prog, empty, 125), Some((640.0, 8.0)));
        assert_eq!(per_connection(prog, empty, 0), None);
    }

    #[test]
    fn median_interval_is_the_order_statistics_that_cover_95_percent() {
        let eleven: Vec<f64> = (1..=11).map(f64::from).collect();
        assert_eq!(median_interval(&eleven), Some((2.0, 10.0)));
        let twenty_one: Vec<f64> = (1..=21).rev().map(f64::from).collect();
        assert_eq!(median_interval(&twenty_one), Some((6.0, 16.0)));
        assert_eq!(
            median_interval(&[3.0, 1.0, 2.0, 6.0, 5.0, 4.0]),
            Some((1.0, 6.0))
        );
        assert_eq!(median_interval(&[1.0; 5]), None);
    }
}

//! `bench-datapath --only load`: what an agent's start costs on nodes of
//! 2 to 8,192 CPU numbers. Most of it is the kernel's verifier, which
//! walks every path of every program once as it loads, in the agent's
//! system time; the journal's drain, sized by the node's CPU numbers, is
//! the program whose walk grows with the node. Each start runs in a
//! network namespace of its own, its journal sized by the agent's test
//! switch `EVENFLOW_TEST_JOURNAL_CPUS`, under the DaemonSet's CPU limit
//! (the verifier's time counts against it), and is measured once the
//! agent serves: how long that took, its CPU time (user and system) and
//! the instructions the verifier checked in each of its programs
//! (`verified_insns`).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::loaded_programs;
use evenflow_tests::{
    cgroup::{self, Hierarchy},
    netns,
};

use crate::bench::{self, NODE_CPUS, median, proc_cpu_secs, spread};

/// The namespace and node name the agents start in.
const NODE: &str = "efb-load";

/// The DaemonSet's CPU limit (`deploy/kubernetes/agent-daemonset.yaml`,
/// 200m): a CFS quota of 20 ms in every 100 ms.
const QUOTA_US: u32 = 20_000;
const PERIOD_US: u32 = 100_000;

/// One start: how long the agent took to serve and its CPU seconds until
/// then, and each of its programs' verified instructions.
#[derive(Clone)]
struct Start {
    wall_secs: f64,
    cpu_secs: f64,
    verified: Vec<(String, u32)>,
}

impl Start {
    fn total(&self) -> u32 {
        self.verified.iter().map(|(_, n)| n).sum()
    }

    fn largest(&self) -> Option<&(String, u32)> {
        self.verified.iter().max_by_key(|(_, n)| *n)
    }
}

/// One agent's starts, round by round, a start for each of [`NODE_CPUS`].
type Rounds = Vec<Vec<Start>>;

/// Runs `rounds` rounds, the agents alternating, and prints each agent's
/// medians with their ranges and, with a baseline, this tree's to the
/// baseline's round by round.
pub fn run(rounds: usize, agents: &[(String, PathBuf)]) -> Result<()> {
    let lab = Lab::new()?;
    let mut measured: Vec<Rounds> = vec![Vec::new(); agents.len()];
    for round in 0..rounds {
        for ((name, bin), rounds) in agents.iter().zip(&mut measured) {
            let starts = NODE_CPUS
                .iter()
                .map(|&cpus| lab.start(bin, cpus))
                .collect::<Result<Vec<_>>>()
                .with_context(|| format!("{name}, round {}", round + 1))?;
            rounds.push(starts);
        }
    }
    println!(
        "\nthe agent's start by the node's CPU numbers ({rounds} rounds, medians, range over the rounds):"
    );
    print_secs(
        "time until it serves, under the DaemonSet's CPU limit of 200m",
        agents,
        &measured,
        |s| s.wall_secs,
    );
    print_secs(
        "CPU time until it serves (user and system; the verifier's is system)",
        agents,
        &measured,
        |s| s.cpu_secs,
    );
    print_verified(agents, &measured);
    Ok(())
}

fn print_secs(
    what: &str,
    agents: &[(String, PathBuf)],
    measured: &[Rounds],
    pick: impl Fn(&Start) -> f64,
) {
    println!("  {what}:");
    for ((name, _), rounds) in agents.iter().zip(measured) {
        println!("    {name}:");
        for (i, cpus) in NODE_CPUS.iter().enumerate() {
            let v: Vec<f64> = rounds.iter().map(|r| pick(&r[i])).collect();
            println!(
                "      {cpus:>5} CPUs {:>7.2} s  ({})",
                median(v.clone()),
                spread(&v, 1.0, 2)
            );
        }
    }
    print_ratios(agents, measured, pick);
}

fn print_verified(agents: &[(String, PathBuf)], measured: &[Rounds]) {
    println!(
        "  instructions the verifier checked, all programs (the largest; the limit is 1,000,000 a program):"
    );
    for ((name, _), rounds) in agents.iter().zip(measured) {
        println!("    {name}:");
        for (i, cpus) in NODE_CPUS.iter().enumerate() {
            let v: Vec<f64> = rounds.iter().map(|r| f64::from(r[i].total())).collect();
            let largest = rounds
                .first()
                .and_then(|r| r[i].largest())
                .map(|(p, n)| format!("{p} {n}"))
                .unwrap_or_default();
            println!("      {cpus:>5} CPUs {:>9.0}  ({largest})", median(v));
        }
    }
    print_ratios(agents, measured, |s| f64::from(s.total()));
}

/// This tree's figure over the baseline's, round by round.
fn print_ratios(agents: &[(String, PathBuf)], measured: &[Rounds], pick: impl Fn(&Start) -> f64) {
    if let ([_, (base, _)], [this, baseline]) = (agents, measured) {
        bench::print_ratios(base, this, baseline, |r, i| pick(&r[i]));
    }
}

/// The namespace the agents start in, the cgroup whose sockets they count
/// and the CPU limit they run under, removed on drop.
struct Lab {
    cgroup: PathBuf,
    limit: CpuLimit,
}

impl Lab {
    fn new() -> Result<Self> {
        netns::create(NODE)?;
        let cgroup = cgroup::root()?.join(NODE);
        cgroup::create(&cgroup)?;
        let limit = CpuLimit::new()?;
        Ok(Self { cgroup, limit })
    }

    /// Starts `bin` with a journal sized for `cpus` CPU numbers, measures
    /// it once it serves, stops it and removes its pins.
    fn start(&self, bin: &Path, cpus: u32) -> Result<Start> {
        let before: BTreeSet<u32> = evenflow_programs()?.into_keys().collect();
        let started = Instant::now();
        let mut agent = Agent(self.spawn(bin, cpus)?);
        evenflow_tests::wait_for(Duration::from_secs(60), || bench::metrics(NODE).ok())
            .with_context(|| format!("{} did not serve within 60 s", bin.display()))?;
        let wall_secs = started.elapsed().as_secs_f64();
        let cpu_secs = proc_cpu_secs(agent.0.id())?;
        let counts = verified_counts()?;
        let mut verified = Vec::new();
        for (id, name) in evenflow_programs()? {
            if before.contains(&id) {
                continue;
            }
            let n = counts.get(&id).copied().with_context(|| {
                format!("the kernel reports no verified instructions for {name} (id {id})")
            })?;
            verified.push((name, n));
        }
        if verified.is_empty() {
            bail!("{} serves, but loaded no program", bin.display());
        }
        if agent.0.try_wait()?.is_some() {
            bail!("{} exited while it was measured", bin.display());
        }
        Ok(Start {
            wall_secs,
            cpu_secs,
            verified,
        })
    }

    /// Starts `bin` in the limited cgroup from its first instruction: a
    /// shell that moves itself there, then becomes the agent (same pid).
    fn spawn(&self, bin: &Path, cpus: u32) -> Result<Child> {
        let ns = netns::path(NODE);
        let cgroup = self.cgroup.display().to_string();
        Command::new("sh")
            .args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
            .arg(&self.limit.procs)
            .arg(bin)
            .args(["--netns", &ns, "--node-name", NODE, "--cgroup", &cgroup])
            .args([
                "--grpc-addr",
                "127.0.0.1:50051",
                "--metrics-addr",
                "127.0.0.1:9464",
            ])
            .env("EVENFLOW_TEST_JOURNAL_CPUS", cpus.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        cgroup::remove(&self.cgroup);
        netns::delete(NODE);
    }
}

/// A cgroup holding [`QUOTA_US`] in [`PERIOD_US`] of CPU, in whichever
/// hierarchy has the `cpu` controller (cgroup v1's `cpu.cfs_quota_us` on
/// this project's VMs, else cgroup v2's `cpu.max`).
struct CpuLimit {
    dir: PathBuf,
    /// The file a process joins it through.
    procs: PathBuf,
}

impl CpuLimit {
    fn new() -> Result<Self> {
        let (root, hierarchy) =
            cgroup::controller_root("cpu").context("a CPU limit for --only load")?;
        let dir = root.join(format!("{NODE}-cpu"));
        cgroup::create(&dir)?;
        let procs = match hierarchy {
            Hierarchy::V1 => {
                write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &QUOTA_US.to_string())?;
                dir.join("tasks")
            }
            Hierarchy::V2 => {
                write(&dir.join("cpu.max"), &format!("{QUOTA_US} {PERIOD_US}"))?;
                dir.join("cgroup.procs")
            }
        };
        Ok(Self { dir, procs })
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        cgroup::remove(&self.dir);
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

/// A started agent: killed on drop, its programs detached with its pins.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        bench::remove_pins(NODE);
    }
}

/// The programs loaded on this machine whose names are evenflow's, by
/// id, with their full names (bpftool reads them from the programs' BTF:
/// the kernel's own name of a program keeps 15 characters).
fn evenflow_programs() -> Result<BTreeMap<u32, String>> {
    let out = netns::sh("bpftool", &["-j", "prog", "show"])?;
    let progs: Vec<serde_json::Value> =
        serde_json::from_str(&out).context("reading `bpftool -j prog show`")?;
    Ok(progs
        .iter()
        .filter_map(|p| {
            let id = u32::try_from(p["id"].as_u64()?).ok()?;
            let name = p["name"].as_str()?;
            name.starts_with("evenflow").then(|| (id, name.to_owned()))
        })
        .collect())
}

/// Every loaded program's verified instructions, by id.
fn verified_counts() -> Result<BTreeMap<u32, u32>> {
    let mut out = BTreeMap::new();
    for p in loaded_programs() {
        let p = p.context("listing the loaded BPF programs")?;
        if let Some(n) = p.verified_instruction_count() {
            out.insert(p.id(), n);
        }
    }
    Ok(out)
}

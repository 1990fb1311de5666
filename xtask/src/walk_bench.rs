//! `bench-datapath --only walk`: what sampling sockets by a walk over
//! every network namespace (`--socket-sampling walk`) costs the agent each
//! interval, against slots in the same run. The TCP iterator filters one
//! namespace's sockets out of a table of established sockets, which every
//! namespace shares with the one it was created from unless
//! `net.ipv4.tcp_child_ehash_entries` gave it its own: so the agent runs
//! alone in its namespace, then beside [`BESIDE`] empty namespaces that
//! share the table, then beside as many with tables of their own; its CPU
//! over a window at a 1 s interval, rounds alternating the setups.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use evenflow_tests::{cgroup, netns};

use crate::bench::{self, median, proc_cpu_secs, spread};

/// The namespace and node name the agent runs in.
const NODE: &str = "efb-walk";
/// Empty namespaces beside it.
const BESIDE: usize = 50;
/// Buckets of a table of their own (`tcp_child_ehash_entries`).
const OWN_TABLE: u32 = 1024;
/// The sysctl that gives namespaces created afterwards their own table.
const CHILD_EHASH: &str = "/proc/sys/net/ipv4/tcp_child_ehash_entries";
/// Seconds the agent settles before, and is measured over.
const SETTLE_SECS: u64 = 3;
const WINDOW_SECS: u64 = 10;

/// One way to run the agent.
struct Setup {
    name: &'static str,
    sampling: &'static str,
    beside: usize,
    own_tables: bool,
}

const SETUPS: [Setup; 5] = [
    Setup {
        name: "slots, alone",
        sampling: "slots",
        beside: 0,
        own_tables: false,
    },
    Setup {
        name: "slots, beside 50 namespaces",
        sampling: "slots",
        beside: BESIDE,
        own_tables: false,
    },
    Setup {
        name: "walk, alone",
        sampling: "walk",
        beside: 0,
        own_tables: false,
    },
    Setup {
        name: "walk, beside 50 sharing the table",
        sampling: "walk",
        beside: BESIDE,
        own_tables: false,
    },
    Setup {
        name: "walk, beside 50 with tables of 1,024",
        sampling: "walk",
        beside: BESIDE,
        own_tables: true,
    },
];

/// Runs `rounds` rounds of every setup with this tree's agent `bin` and
/// prints each one's CPU (median, range over the rounds), and what the
/// walk costs a namespace an interval.
pub fn run(rounds: usize, bin: &std::path::Path) -> Result<()> {
    let restore = std::fs::read_to_string(CHILD_EHASH)
        .with_context(|| format!("reading {CHILD_EHASH} (Linux 6.1 and later)"))?;
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); SETUPS.len()];
    let measured = (0..rounds).try_for_each(|round| {
        for (setup, cpu) in SETUPS.iter().zip(&mut cpu) {
            let pct = measure(setup, bin)
                .with_context(|| format!("{}, round {}", setup.name, round + 1))?;
            cpu.push(pct);
        }
        Ok::<_, anyhow::Error>(())
    });
    let _ = std::fs::write(CHILD_EHASH, restore.trim());
    measured?;
    println!(
        "\nthe agent's CPU at a 1 s interval by how it samples sockets ({rounds} rounds, medians, \
         range over the rounds; % of one core over {WINDOW_SECS} s):"
    );
    for (setup, cpu) in SETUPS.iter().zip(&cpu) {
        println!(
            "  {:<40} {:>6.2} %  ({})",
            setup.name,
            median(cpu.clone()),
            spread(cpu, 1.0, 2)
        );
    }
    let per_ns = |i: usize| -> Vec<f64> {
        cpu[i]
            .iter()
            .zip(&cpu[2])
            .map(|(beside, alone)| (beside - alone) / 100.0 / BESIDE as f64 * 1000.0)
            .collect()
    };
    for (i, what) in [(3, "sharing the table"), (4, "with a table of its own")] {
        let v = per_ns(i);
        println!(
            "  the walk, a namespace {what}: {:.3} ms an interval ({})",
            median(v.clone()),
            spread(&v, 1.0, 3)
        );
    }
    Ok(())
}

/// The agent's CPU in `setup`, in % of one core.
fn measure(setup: &Setup, bin: &std::path::Path) -> Result<f64> {
    std::fs::write(CHILD_EHASH, "0").with_context(|| format!("writing {CHILD_EHASH}"))?;
    let lab = Lab::new(setup)?;
    let agent = bench::start_agent(
        NODE,
        &lab.cgroup,
        bin,
        &["--socket-sampling", setup.sampling],
    )?;
    std::thread::sleep(Duration::from_secs(SETTLE_SECS));
    let pid = agent.pid();
    let cpu0 = proc_cpu_secs(pid)?;
    std::thread::sleep(Duration::from_secs(WINDOW_SECS));
    let pct = (proc_cpu_secs(pid)? - cpu0) / WINDOW_SECS as f64 * 100.0;
    crate::interrupt::check()?;
    Ok(pct)
}

/// The agent's namespace and cgroup, and the namespaces beside it, made
/// for one measurement and removed on drop.
struct Lab {
    cgroup: PathBuf,
    beside: Vec<String>,
}

impl Lab {
    /// The agent's namespace shares the table (as a node's own does); the
    /// ones beside it get tables of their own when the setup says.
    fn new(setup: &Setup) -> Result<Self> {
        netns::create(NODE)?;
        let cgroup = cgroup::root()?.join(NODE);
        cgroup::create(&cgroup)?;
        let mut lab = Self {
            cgroup,
            beside: Vec::new(),
        };
        if setup.own_tables {
            std::fs::write(CHILD_EHASH, OWN_TABLE.to_string())
                .with_context(|| format!("writing {CHILD_EHASH}"))?;
        }
        for i in 0..setup.beside {
            let ns = format!("efb-wx{i}");
            netns::create(&ns)?;
            lab.beside.push(ns);
        }
        Ok(lab)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.beside {
            netns::delete(ns);
        }
        cgroup::remove(&self.cgroup);
        netns::delete(NODE);
    }
}

//! `evenflow-agent bench-drain`: what the journal's drain costs an event
//! on a node of a given number of CPU numbers (`cargo xtask bench-datapath
//! --only drain` runs it). The drain merges the CPUs' parts by time, so
//! its cost an event depends on how many parts there are; this measures it
//! on this machine for node shapes it does not have.
//!
//! It loads this agent's eBPF object with its maps pinned in a directory
//! of its own (so a running agent's are never touched), fills the journal
//! with events spread over every part, in time order across them, and
//! times the agent's drain applying them: many at once (the agent's
//! read), and 64 at a time (TC egress's drain, whose packet waits for
//! them; wall time around `BPF_PROG_TEST_RUN`, a few microseconds of
//! which are the system call's). The events are of no kind the
//! drain acts on: what is measured is finding each next event and moving
//! past it, not the maps' work an event asks for, which is the same on
//! any node.

use std::{path::PathBuf, time::Instant};

use agent_common::{CT_JOURNAL_POS_WORDS, CtEvent, maps};
use anyhow::{Context as _, Result, bail};
use aya::{
    EbpfLoader,
    maps::{Array, MapData},
};

use crate::journal::Journal;

/// What one node shape measured.
pub struct Figures {
    /// The drain's time an event, over a run of many events (ns).
    pub per_event: f64,
    /// The time of a run of [`INLINE_EVENTS`] events, what the packet
    /// that runs TC egress's drain waits (µs; median of [`RUNS`]).
    pub per_run: f64,
}

/// Events TC egress's drain applies at most in one run.
const INLINE_EVENTS: u32 = 64;
/// Runs of [`INLINE_EVENTS`] events timed.
const RUNS: usize = 21;

/// Times the drain on a journal of `cpus` parts: a run over `events`
/// events spread over them, then runs of [`INLINE_EVENTS`].
pub fn run(bpffs: &std::path::Path, cpus: u32, events: u32) -> Result<Figures> {
    let journal = Journal::for_cpus(cpus)?;
    let dir = PinDir::new(bpffs)?;
    let mut loader = EbpfLoader::new();
    journal.configure(&mut loader);
    let mut ebpf = loader
        .default_map_pin_directory(&dir.0)
        .load(crate::datapath::EBPF_OBJECT)
        .context("loading evenflow's eBPF object for the drain bench")?;
    let drains = journal
        .load_drains(&mut ebpf)?
        .context("the journal has no drain")?;
    let mut filled = Filled {
        slots: crate::datapath::take(&mut ebpf, maps::CT_JOURNAL)?,
        pos: crate::datapath::take(&mut ebpf, maps::CT_JOURNAL_POS)?,
        cpus,
        per_part: journal.slots(),
    };
    let events = events.min(filled.per_part * cpus);
    let per_event = filled.time(&drains, events)? / f64::from(events.max(1));
    let mut runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        runs.push(filled.time(&drains, INLINE_EVENTS.min(events))? / 1_000.0);
    }
    runs.sort_by(f64::total_cmp);
    Ok(Figures {
        per_event,
        per_run: runs[RUNS / 2],
    })
}

/// The journal's maps, as the bench fills them.
struct Filled {
    slots: Array<MapData, CtEvent>,
    pos: Array<MapData, u64>,
    cpus: u32,
    per_part: u32,
}

impl Filled {
    /// Fills the parts with `events` events, round the parts in time
    /// order, has the agent's drain apply them and returns its time (ns).
    fn time(&mut self, drains: &crate::journal::Drains, events: u32) -> Result<f64> {
        // Old enough for the drain to apply (it leaves the last 10 ms).
        let start = monotonic_ns()?.saturating_sub(1_000_000_000);
        let tails = (0..self.cpus)
            .map(|cpu| self.pos.get(&tail(cpu), 0))
            .collect::<Result<Vec<_>, _>>()
            .context("reading the tails")?;
        for i in 0..events {
            let cpu = i % self.cpus;
            let at = tails[cpu as usize] + u64::from(i / self.cpus);
            let index = cpu * self.per_part + (at as u32 & (self.per_part - 1));
            self.slots
                .set(index, event(start + u64::from(i)), 0)
                .context("writing an event")?;
        }
        for cpu in 0..self.cpus {
            let held = events / self.cpus + u32::from(cpu < events % self.cpus);
            self.pos
                .set(
                    cpu * CT_JOURNAL_POS_WORDS,
                    tails[cpu as usize] + u64::from(held),
                    0,
                )
                .context("writing a head")?;
        }
        let began = Instant::now();
        drop(drains.run()?);
        let took = began.elapsed();
        for cpu in 0..self.cpus {
            let (head, tail) = (
                self.pos.get(&(cpu * CT_JOURNAL_POS_WORDS), 0)?,
                self.pos.get(&tail(cpu), 0)?,
            );
            if head != tail {
                bail!("the drain left part {cpu} at {tail} of {head} events");
            }
        }
        Ok(took.as_nanos() as f64)
    }
}

/// `cpu`'s tail word in `EF_CT_JOURNAL_POS`.
fn tail(cpu: u32) -> u32 {
    cpu * CT_JOURNAL_POS_WORDS + CT_JOURNAL_POS_WORDS / 2
}

/// An event written at `at` of no kind the drain acts on.
fn event(at: u64) -> CtEvent {
    CtEvent {
        at,
        conn: 0,
        kind: 0,
        flags: 0,
        port: 0,
        seq: 0,
        addr: [0; 4],
        client_addr: [0; 4],
        client_port: 0,
        _pad: [0; 3],
    }
}

/// `CLOCK_MONOTONIC`, the clock `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(std::io::Error::last_os_error()).context("clock_gettime");
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// The bench's own pin directory, removed when it is done.
struct PinDir(PathBuf);

impl PinDir {
    fn new(bpffs: &std::path::Path) -> Result<Self> {
        let dir = bpffs.join(format!("evenflow-bench-drain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

//! `evenflow-agent bench-drain`: what the journal's drain costs an event
//! on a node of a given number of CPU numbers (`cargo xtask bench-datapath
//! --only drain` runs it). The drain merges the CPUs' parts by time, so
//! its cost an event depends on how many parts there are; this measures it
//! on this machine for node shapes it does not have.
//!
//! It loads this agent's eBPF object with its maps pinned in a directory
//! of its own (so a running agent's are never touched), fills the journal
//! with events spread over every part, in time order across them, and
//! times the agent's drain applying them. The events are of no kind the
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

/// Runs the drain over `events` events spread over `cpus` parts and
/// returns its time an event, in nanoseconds.
pub fn run(bpffs: &std::path::Path, cpus: u32, events: u32) -> Result<f64> {
    let journal = Journal::for_cpus(cpus)?;
    let per_part = journal.slots();
    let events = events.min(per_part * cpus);
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
    let mut slots: Array<MapData, CtEvent> = crate::datapath::take(&mut ebpf, maps::CT_JOURNAL)?;
    let mut pos: Array<MapData, u64> = crate::datapath::take(&mut ebpf, maps::CT_JOURNAL_POS)?;
    // Old enough for the drain to apply (it leaves the last 10 ms).
    let start = monotonic_ns()?.saturating_sub(1_000_000_000);
    for i in 0..events {
        let (cpu, at) = (i % cpus, i / cpus);
        let ev = CtEvent {
            at: start + u64::from(i),
            conn: 0,
            kind: 0,
            flags: 0,
            port: 0,
            seq: 0,
            addr: [0; 4],
            client_addr: [0; 4],
            client_port: 0,
            _pad: [0; 3],
        };
        slots
            .set(cpu * per_part + at, ev, 0)
            .context("writing an event")?;
    }
    for cpu in 0..cpus {
        let held = events / cpus + u32::from(cpu < events % cpus);
        pos.set(cpu * CT_JOURNAL_POS_WORDS, u64::from(held), 0)
            .context("writing a head")?;
    }
    let began = Instant::now();
    drop(drains.run()?);
    let took = began.elapsed();
    for cpu in 0..cpus {
        let (head, tail) = (
            pos.get(&(cpu * CT_JOURNAL_POS_WORDS), 0)?,
            pos.get(&(cpu * CT_JOURNAL_POS_WORDS + CT_JOURNAL_POS_WORDS / 2), 0)?,
        );
        if head != tail {
            bail!("the drain left part {cpu} at {tail} of {head} events");
        }
    }
    Ok(took.as_nanos() as f64 / f64::from(events.max(1)))
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

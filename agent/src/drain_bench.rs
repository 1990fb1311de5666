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

use crate::{
    direct_reads::Reads,
    journal::{Drains, Journal},
};

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
    let mut bench = Bench::load(bpffs, cpus)?;
    let events = events.min(bench.per_part * cpus);
    let per_event = bench.time(events)? / f64::from(events.max(1));
    let mut runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        runs.push(bench.time(INLINE_EVENTS.min(events))? / 1_000.0);
    }
    runs.sort_by(f64::total_cmp);
    Ok(Figures {
        per_event,
        per_run: runs[RUNS / 2],
    })
}

/// This agent's eBPF object loaded with a journal of its own.
struct Bench {
    slots: Array<MapData, CtEvent>,
    pos: Array<MapData, u64>,
    cpus: u32,
    per_part: u32,
    drains: Drains,
    _ebpf: aya::Ebpf,
    _dir: PinDir,
}

impl Bench {
    fn load(bpffs: &std::path::Path, cpus: u32) -> Result<Self> {
        let journal = Journal::for_cpus(cpus)?;
        let dir = PinDir::new(bpffs, cpus)?;
        let mut loader = EbpfLoader::new();
        journal.configure(&mut loader);
        // The drains read no kernel memory.
        let object = Reads::Helper
            .prepare(&mut loader, crate::datapath::EBPF_OBJECT)
            .context("preparing evenflow's eBPF object for the drain bench")?;
        let mut ebpf = loader
            .default_map_pin_directory(&dir.0)
            .load(&object)
            .context("loading evenflow's eBPF object for the drain bench")?;
        let drains = journal
            .load_drains(&mut ebpf)?
            .context("the journal has no drain")?;
        Ok(Self {
            slots: crate::datapath::take(&mut ebpf, maps::CT_JOURNAL)?,
            pos: crate::datapath::take(&mut ebpf, maps::CT_JOURNAL_POS)?,
            cpus,
            per_part: journal.slots(),
            drains,
            _ebpf: ebpf,
            _dir: dir,
        })
    }

    /// Fills the parts with `events` events, round the parts in time
    /// order, has the agent's drain apply them and returns its time (ns).
    fn time(&mut self, events: u32) -> Result<f64> {
        // Old enough for the drain to apply (it leaves the last 10 ms).
        let start = monotonic_ns()?.saturating_sub(1_000_000_000);
        let mut parts = vec![Vec::new(); self.cpus as usize];
        for i in 0..events {
            parts[(i % self.cpus) as usize].push(start + u64::from(i));
        }
        self.append(&parts)?;
        let began = Instant::now();
        let held = self.drains.run()?;
        let took = began.elapsed();
        drop(held);
        for cpu in 0..self.cpus {
            let (head, tail) = (self.pos.get(&head(cpu), 0)?, self.pos.get(&tail(cpu), 0)?);
            if head != tail {
                bail!("the drain left part {cpu} at {tail} of {head} events");
            }
        }
        Ok(took.as_nanos() as f64)
    }

    /// Appends to each CPU's part the events written at the times listed
    /// for it (in order), as TC egress would; returns the tails before.
    fn append(&mut self, parts: &[Vec<u64>]) -> Result<Vec<u64>> {
        let tails = (0..self.cpus)
            .map(|cpu| self.pos.get(&tail(cpu), 0))
            .collect::<Result<Vec<_>, _>>()
            .context("reading the tails")?;
        for ((cpu, times), &t) in (0..self.cpus).zip(parts).zip(&tails) {
            for (at, &time) in (t..).zip(times) {
                let index = cpu * self.per_part + (at as u32 & (self.per_part - 1));
                self.slots
                    .set(index, event(time), 0)
                    .context("writing an event")?;
            }
            self.pos
                .set(head(cpu), t + times.len() as u64, 0)
                .context("writing a head")?;
        }
        Ok(tails)
    }
}

/// `cpu`'s head word in `EF_CT_JOURNAL_POS`.
fn head(cpu: u32) -> u32 {
    cpu * CT_JOURNAL_POS_WORDS
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

/// The bench's own pin directory, removed when it is done. Named for its
/// process, a count and the node shape, so that no run finds another's
/// maps; ones
/// whose process is gone (a bench interrupted) are removed first.
struct PinDir(PathBuf);

const PREFIX: &str = "evenflow-bench-drain-";

impl PinDir {
    fn new(bpffs: &std::path::Path, cpus: u32) -> Result<Self> {
        remove_abandoned(bpffs);
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = bpffs.join(format!("{PREFIX}{}-{seq}-{cpus}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), "removing the drain bench's pins: {e}");
        }
    }
}

/// Removes the pin directories of drain benches whose process is gone.
fn remove_abandoned(bpffs: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(bpffs) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Bench;

    /// TC egress's drain applies the 64 earliest events across the parts,
    /// whatever the parts: events at scattered times (each part in
    /// order, as its CPU writes them) on journals of 1 to 1,024 CPU
    /// numbers, and its one run must leave each part's tail past exactly
    /// its events among the 64 earliest. Needs root (BPF).
    #[test]
    fn the_drain_applies_the_earliest_events_first() {
        let bpffs = std::path::Path::new("/sys/fs/bpf");
        // TC egress's drain runs on the CPU whose part is past half.
        on_cpu_zero();
        for cpus in [1u32, 2, 3, 5, 64, 1_024] {
            let mut bench = Bench::load(bpffs, cpus).expect("the object loads (needs root)");
            let start = super::monotonic_ns()
                .expect("the clock reads")
                .saturating_sub(2_000_000_000);
            // A linear congruential sequence: the same scatter each run,
            // over half a second (equal times go to the lower CPU number,
            // in the tree as in this sort).
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(cpus);
            let per_part = 40.min(bench.per_part as usize);
            let parts: Vec<Vec<u64>> = (0..cpus)
                .map(|_| {
                    let mut times: Vec<u64> = (0..per_part)
                        .map(|_| {
                            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                            start + (x >> 35)
                        })
                        .collect();
                    times.sort_unstable();
                    times
                })
                .collect();
            let tails = bench.append(&parts).expect("the journal fills");
            let mut all: Vec<(u64, usize)> = parts
                .iter()
                .enumerate()
                .flat_map(|(cpu, times)| times.iter().map(move |&t| (t, cpu)))
                .collect();
            all.sort_unstable();
            let mut expected = vec![0u64; cpus as usize];
            for &(_, cpu) in all.iter().take(64) {
                expected[cpu] += 1;
            }
            bench.drains.run_inline().expect("TC egress's drain runs");
            let moved: Vec<u64> = (0..cpus)
                .map(|cpu| {
                    bench.pos.get(&super::tail(cpu), 0).expect("a tail") - tails[cpu as usize]
                })
                .collect();
            assert_eq!(moved, expected, "{cpus} CPU numbers");
        }
    }

    /// TC egress's drain does nothing while its own CPU's part holds no
    /// event old enough to apply, whatever the other parts hold: in a
    /// burst, the appends past half that call it find it returning at
    /// once (the test above has it drain where its part's are old).
    /// Needs root (BPF).
    #[test]
    fn the_inline_drain_waits_for_its_own_part() {
        let bpffs = std::path::Path::new("/sys/fs/bpf");
        on_cpu_zero();
        let mut bench = Bench::load(bpffs, 2).expect("the object loads (needs root)");
        let now = super::monotonic_ns().expect("the clock reads");
        let old = now - 1_000_000_000;
        // CPU 0's event is younger than the drain's 10 ms; CPU 1's old.
        let tails = bench
            .append(&[vec![now + 60_000_000_000], vec![old, old + 1]])
            .expect("the journal fills");
        bench.drains.run_inline().expect("TC egress's drain runs");
        let moved = |bench: &Bench| -> Vec<u64> {
            (0..2)
                .map(|cpu| {
                    bench.pos.get(&super::tail(cpu), 0).expect("a tail") - tails[cpu as usize]
                })
                .collect()
        };
        assert_eq!(
            moved(&bench),
            [0, 0],
            "drained for a part it cannot relieve"
        );
        // The agent's drain applies what is old enough, wherever it is.
        drop(bench.drains.run().expect("the agent's drain runs"));
        assert_eq!(moved(&bench), [0, 2]);
    }

    /// Runs the calling thread on CPU 0 only.
    fn on_cpu_zero() {
        // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes within it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::CPU_SET(0, &mut set) };
        // SAFETY: the calling thread (0), a valid set of its size.
        let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

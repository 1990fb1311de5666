//! The journal of forwarded connections' state changes (`EF_CT_JOURNAL`,
//! see `agent-ebpf/src/journal.rs`): how large it is, and its drains.
//!
//! The agent's drain runs before every read. TC egress's own runs between
//! the agent's reads, and while no agent runs: each append that leaves a
//! CPU's part past half full tail-calls it through `EF_CT_DRAIN`, a pinned
//! program array, so that it outlives the agent that filled it. The two
//! share a lock, which the agent's drain takes for the whole read (the
//! sweepers must not run beside a drain) and [`Held`] gives back.

use std::{path::Path, time::Duration};

use agent_common::maps;
use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, ProgramArray},
    programs::{ProgramFd, SchedClassifier},
};

use crate::walk::Walk;

/// Whether the journal's writers publish with a fully ordered operation:
/// not on x86, where a plain store keeps the order (see
/// `agent-ebpf/src/journal.rs`).
const JOURNAL_ORDERED: u8 = if cfg!(target_arch = "x86_64") { 0 } else { 1 };

/// The journal of forwarded connections' state changes: sized for the
/// node's CPUs where conntrack is followed, one entry each elsewhere.
pub struct Journal {
    /// CPUs it has parts for; 0 for none.
    cpus: u32,
    /// Events each part holds, less one (a power of two less one).
    slots_mask: u32,
    /// Leaves of the drains' trees: `cpus` rounded up to a power of two.
    leaves: u32,
}

impl Journal {
    pub fn of(conntrack: bool, pin_dir: &Path) -> Result<Self> {
        if !conntrack {
            return Ok(Self {
                cpus: 0,
                slots_mask: 0,
                leaves: 1,
            });
        }
        const POSSIBLE: &str = "/sys/devices/system/cpu/possible";
        let possible = std::fs::read_to_string(POSSIBLE)
            .with_context(|| format!("reading {POSSIBLE} to size the journal"))?;
        let cpus = cpu_numbers(&possible)
            .filter(|&n| n <= agent_common::CT_JOURNAL_MAX_CPUS)
            .with_context(|| {
                format!(
                    "{POSSIBLE} reads {:?}: evenflow's journal of forwarded connections \
                     needs CPU numbers below {}",
                    possible.trim(),
                    agent_common::CT_JOURNAL_MAX_CPUS
                )
            })?;
        // A test switch: a journal sized for more CPU numbers than this
        // node has, as on the largest nodes (deep drain trees, small parts).
        let cpus = std::env::var("EVENFLOW_TEST_JOURNAL_CPUS")
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|&n| n <= agent_common::CT_JOURNAL_MAX_CPUS)
            .map_or(cpus, |n| n.max(cpus));
        // The pinned journal keeps its parts until a new epoch.
        let cpus = pinned_cpus(pin_dir).filter(|&p| p >= cpus).unwrap_or(cpus);
        Ok(Self {
            cpus,
            slots_mask: journal_slots(pin_dir, cpus) - 1,
            leaves: cpus.next_power_of_two(),
        })
    }

    /// A journal for `cpus` CPU numbers, its parts sized as on such a node
    /// (the drain bench's).
    pub fn for_cpus(cpus: u32) -> Result<Self> {
        if cpus == 0 || cpus > agent_common::CT_JOURNAL_MAX_CPUS {
            bail!(
                "a journal has parts for 1 to {} CPU numbers, not {cpus}",
                agent_common::CT_JOURNAL_MAX_CPUS
            );
        }
        Ok(Self {
            cpus,
            slots_mask: journal_budget(cpus) - 1,
            leaves: cpus.next_power_of_two(),
        })
    }

    /// Events each part holds.
    pub fn slots(&self) -> u32 {
        self.slots_mask + 1
    }

    /// Sizes its maps and writes its constants for the programs.
    pub fn configure<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        for (map, entries) in self.sizes() {
            loader.map_max_entries(map, entries);
        }
        loader
            .override_global("JOURNAL_CPUS", &self.cpus, true)
            .override_global("JOURNAL_SLOTS_MASK", &self.slots_mask, true)
            .override_global("JOURNAL_LEAVES", &self.leaves, true)
            .override_global("JOURNAL_ORDERED", &JOURNAL_ORDERED, true);
    }

    /// Its maps' entries: a part of each map per CPU (and the spill's
    /// count and the drains' lock after the parts' positions), two trees
    /// over the parts.
    fn sizes(&self) -> [(&'static str, u32); 4] {
        let parts = self.cpus;
        [
            (maps::CT_JOURNAL, parts * (self.slots_mask + 1)),
            (
                maps::CT_JOURNAL_POS,
                (parts + 1) * agent_common::CT_JOURNAL_POS_WORDS,
            ),
            (maps::CT_SPILL, spill_entries()),
            (maps::CT_DRAIN_ORDER, 4 * self.leaves),
        ]
        .map(|(map, entries)| (map, if self.cpus == 0 { 1 } else { entries }))
    }

    /// Loads both drains, where there is a journal.
    pub fn load_drains(&self, ebpf: &mut Ebpf) -> Result<Option<Drains>> {
        if self.cpus == 0 {
            return Ok(None);
        }
        let agent = Walk::load(ebpf, "evenflow_ct_drain")?;
        let release = Walk::load(ebpf, "evenflow_ct_release")?;
        let prog: &mut SchedClassifier = crate::datapath::program(ebpf, INLINE)?;
        prog.load()
            .with_context(|| format!("loading {INLINE} (TC egress's drain of the journal)"))?;
        let inline = prog
            .fd()
            .and_then(|fd| fd.try_clone().map_err(Into::into))
            .with_context(|| format!("{INLINE}'s fd"))?;
        Ok(Some(Drains {
            agent,
            release,
            inline,
        }))
    }
}

/// TC egress's drain.
const INLINE: &str = "evenflow_ct_drain_inline";

/// What the agent's drain returns while TC egress's holds the lock.
const BUSY: u32 = 1;

/// The journal's drains (see the module's doc).
pub struct Drains {
    agent: Walk,
    release: Walk,
    inline: ProgramFd,
}

impl Drains {
    /// Puts TC egress's drain in `EF_CT_DRAIN`, in place of the one an
    /// earlier agent put there (the attached programs call this one from
    /// then on). Once this agent's programs are attached.
    pub fn install(&self, ebpf: &mut Ebpf) -> Result<()> {
        let mut array: ProgramArray<MapData> = crate::datapath::take(ebpf, maps::CT_DRAIN)?;
        array
            .set(0, &self.inline, 0)
            .with_context(|| format!("putting {INLINE} in {}", maps::CT_DRAIN))
    }

    /// Applies every event old enough, waiting out a drain TC egress is
    /// running (tens of microseconds), and holds the lock until the
    /// returned [`Held`] goes: what runs meanwhile (the sweepers, the
    /// adoption) runs beside no drain.
    pub fn run(&self) -> Result<Held<'_>> {
        for _ in 0..1_000 {
            match self.agent.run() {
                Ok(BUSY) => std::thread::sleep(Duration::from_micros(200)),
                Ok(_) => return Ok(Held(self)),
                Err(e) => {
                    // It may have taken the lock before the run failed.
                    drop(Held(self));
                    return Err(e);
                }
            }
        }
        bail!(
            "the journal's drain found TC egress's drain holding its lock for 200 ms, \
             where it takes microseconds: the node is starved of CPU; the next reading \
             tries again"
        )
    }
}

impl Drains {
    /// Runs TC egress's drain once, as an append past half a part would.
    #[cfg(test)]
    pub fn run_inline(&self) -> Result<u32> {
        use std::os::fd::AsFd as _;
        crate::sys::test_run(self.inline.as_fd(), &[0; 64], &mut [0; 64])
            .with_context(|| format!("running {INLINE}"))
    }
}

/// The drains' lock, held by the agent: released when dropped, or by
/// the kernel [`CT_DRAIN_LEASE_NS`](agent_common::CT_DRAIN_LEASE_NS) after
/// the drain took it.
pub struct Held<'a>(&'a Drains);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.release.run() {
            tracing::warn!(
                error = format!("{e:#}"),
                "releasing the journal's drain lock failed: TC egress drains again once it lapses"
            );
        }
    }
}

/// The CPU numbers `/sys/devices/system/cpu/possible` lists ("0-3,8-11"):
/// the highest one, plus one. `bpf_get_smp_processor_id` can return any of
/// them, and a sparse list has fewer CPUs than numbers.
fn cpu_numbers(possible: &str) -> Option<u32> {
    possible
        .trim()
        .split(',')
        .map(|range| range.rsplit('-').next()?.trim().parse::<u32>().ok())
        .try_fold(0, |max, last| Some(max.max(last? + 1)))
        .filter(|&n| n > 0)
}

/// The CPU numbers a pinned journal has parts for, read from the size of
/// its positions (`EF_CT_JOURNAL_POS`).
fn pinned_cpus(pin_dir: &Path) -> Option<u32> {
    let info = aya::maps::MapInfo::from_pin(pin_dir.join(maps::CT_JOURNAL_POS)).ok()?;
    (info.max_entries() / agent_common::CT_JOURNAL_POS_WORDS)
        .checked_sub(1)
        .filter(|&n| n > 0 && n <= agent_common::CT_JOURNAL_MAX_CPUS)
}

/// Events each part of the journal holds: the pinned journal's, which
/// keeps its size until a new epoch; else the most that keeps all parts
/// within [`CT_JOURNAL_EVENTS`](agent_common::CT_JOURNAL_EVENTS) (16 MiB),
/// or what the test switch asks for.
fn journal_slots(pin_dir: &Path, cpus: u32) -> u32 {
    let pinned = aya::maps::MapInfo::from_pin(pin_dir.join(maps::CT_JOURNAL))
        .ok()
        .filter(|info| info.max_entries() % cpus == 0)
        .map(|info| info.max_entries() / cpus)
        .filter(|slots| slots.is_power_of_two() && *slots <= agent_common::CT_JOURNAL_SLOTS);
    // A test switch: parts of a few events, so that nearly every event
    // goes through the spill.
    let asked = std::env::var("EVENFLOW_TEST_JOURNAL_SLOTS")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|s| s.is_power_of_two() && *s <= agent_common::CT_JOURNAL_SLOTS);
    pinned.or(asked).unwrap_or_else(|| journal_budget(cpus))
}

/// The largest power of two of events a part that keeps all `cpus` parts
/// within the journal's budget, between its least and most.
fn journal_budget(cpus: u32) -> u32 {
    let share = agent_common::CT_JOURNAL_EVENTS / cpus.max(1);
    let floor = if share == 0 {
        0
    } else {
        1 << (31 - share.leading_zeros())
    };
    floor.clamp(
        agent_common::CT_JOURNAL_MIN_SLOTS,
        agent_common::CT_JOURNAL_SLOTS,
    )
}

/// Events the spill holds: [`CT_SPILL_ENTRIES`](agent_common::CT_SPILL_ENTRIES),
/// or what the test switch asks for (a spill that fills within a test).
fn spill_entries() -> u32 {
    std::env::var("EVENFLOW_TEST_SPILL_ENTRIES")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|&n| n > 0 && n <= agent_common::CT_SPILL_ENTRIES)
        .unwrap_or(agent_common::CT_SPILL_ENTRIES)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_journal_has_a_part_for_every_cpu_number() {
        assert_eq!(super::cpu_numbers("0-1\n"), Some(2));
        assert_eq!(super::cpu_numbers("0"), Some(1));
        // Sparse: eight CPUs, numbers up to 11.
        assert_eq!(super::cpu_numbers("0-3,8-11\n"), Some(12));
        assert_eq!(super::cpu_numbers("0-3,6"), Some(7));
        assert_eq!(super::cpu_numbers(""), None);
        assert_eq!(super::cpu_numbers("0-x"), None);
    }

    #[test]
    fn the_journal_keeps_within_its_budget() {
        assert_eq!(super::journal_budget(2), 32_768);
        assert_eq!(super::journal_budget(8), 32_768);
        assert_eq!(super::journal_budget(12), 16_384);
        assert_eq!(super::journal_budget(64), 4_096);
        assert_eq!(super::journal_budget(8_192), 64);
        for cpus in [1, 2, 3, 8, 12, 64, 96, 1_024] {
            let slots = super::journal_budget(cpus);
            assert!(slots.is_power_of_two());
            assert!(u64::from(slots) * u64::from(cpus) <= 262_144, "{cpus} CPUs");
        }
    }
}

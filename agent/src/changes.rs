//! Reading only the endpoints counted since the last reading.
//!
//! At 10,000 endpoints, reading the whole per-CPU endpoint map every
//! interval was half of the agent's CPU, mostly the kernel waiting on
//! lines of memory no earlier reading left in its cache, though in any
//! second few endpoints carry traffic. So the programs note each endpoint
//! they count in `EF_CHANGED`, once a reading generation on each CPU
//! (`META_CHANGES_GEN`), and a reading looks up the endpoints noted.
//!
//! A reading clears the next generation's buffer, advances the generation,
//! and reads the endpoints noted in the two generations before: the one it
//! just closed, and the one before that again, because a program that read
//! the generation just before it advanced can count, and note, after the
//! reading read that buffer. The reading after reads those counts. The
//! whole map is read instead at the agent's first two readings (counts
//! from before it started were noted in generations it did not see), when
//! a buffer ran out of room, after the agent wrote into the map itself
//! (retiring endpoints), after a reading failed, every [`WHOLE_EVERY`]
//! readings (an endpoint a program outside evenflow's deleted or edited),
//! and when more than a quarter of the endpoints (and more than
//! [`LOOKUP_FLOOR`]) changed, where the kernel's batch read costs less an
//! endpoint than a lookup each.

use std::os::fd::{AsRawFd as _, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering, fence};

use agent_common::{
    CHANGED_BUFFERS, CHANGED_KEYS, ChangedKeys, EndpointCounters, EndpointKey, META_CHANGES_GEN,
};
use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, MapData};

/// One reading in this many is whole, whatever was noted: a minute at the
/// default interval.
pub const WHOLE_EVERY: u64 = 60;
/// Readings of the whole map an agent starts with.
const WHOLE_FIRST: u64 = 2;
/// Of the endpoints the agent knows of, the part that may have changed for
/// a reading to look them up one by one rather than read them all...
const LOOKUP_SHARE: usize = 4;
/// ...or this many, whatever the part: a few hundred lookups cost a
/// fraction of a millisecond however small the map. (So every lab of a
/// few endpoints reads them this way, which is what the suites test.)
const LOOKUP_FLOOR: usize = 256;

/// What one reading read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// Every endpoint in the map.
    Whole,
    /// The endpoints counted since the reading before (and maybe some
    /// more): the others are as that reading found them.
    Changed,
}

/// The generations, their buffers, and when the next reading must be
/// whole.
pub struct Changes {
    buffers: Buffers,
    meta: Array<MapData, u64>,
    generation: u64,
    readings: u64,
    whole_next: bool,
    keys: Vec<EndpointKey>,
    values: Vec<EndpointCounters>,
}

impl Changes {
    /// Follows the generations in `meta` (`EF_META`) with the buffers of
    /// the map behind `changed` (`EF_CHANGED`) on a node of `ncpus`
    /// possible CPUs.
    pub fn new(changed: BorrowedFd<'_>, meta: Array<MapData, u64>, ncpus: usize) -> Result<Self> {
        let generation = meta
            .get(&META_CHANGES_GEN, 0)
            .context("reading EF_META's reading generation")?;
        Ok(Self {
            buffers: Buffers::map(changed)?,
            meta,
            generation,
            readings: 0,
            whole_next: false,
            keys: Vec::new(),
            values: vec![EndpointCounters::default(); ncpus.max(1)],
        })
    }

    /// The next reading reads the whole map: the agent wrote into it.
    pub fn read_whole_next(&mut self) {
        self.whole_next = true;
    }

    /// Advances the generation and reads the endpoints counted since the
    /// last reading from the endpoint map behind `endpoints` into `out`;
    /// false when this reading must read the whole map instead (`out` then
    /// holds nothing). `live`: the endpoints the agent knows of.
    pub fn read(
        &mut self,
        endpoints: BorrowedFd<'_>,
        live: usize,
        out: &mut Vec<(EndpointKey, EndpointCounters)>,
    ) -> Result<bool> {
        out.clear();
        // Until this reading has read what it chose, the next is whole:
        // one that fails half-way leaves the generation advanced.
        let whole = std::mem::replace(&mut self.whole_next, true)
            || self.readings < WHOLE_FIRST
            || self.readings.is_multiple_of(WHOLE_EVERY);
        let closed = self.advance()?;
        let noted = self.noted(closed);
        self.readings += 1;
        if whole || !noted || self.keys.len() > (live / LOOKUP_SHARE).max(LOOKUP_FLOOR) {
            self.whole_next = false;
            return Ok(false);
        }
        for key in &self.keys {
            match crate::retire::lookup(endpoints, key, &mut self.values) {
                Ok(()) => out.push((*key, EndpointCounters::sum(&self.values))),
                // Retired, or a note torn by a late writer: nothing to read.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e).context("reading a changed endpoint from EF_ENDPOINTS"),
            }
        }
        self.whole_next = false;
        Ok(true)
    }

    /// Clears the next generation's buffer and moves the programs to it;
    /// returns the generation closed.
    fn advance(&mut self) -> Result<u64> {
        let closed = self.generation;
        let next = closed.wrapping_add(1).max(1);
        self.buffers.clear(next);
        // The clear must be seen before the generation: a program that read
        // the new generation and then the old count would have its note
        // erased. A release store orders only what came before it, and the
        // kernel's copy into EF_META is a plain store (weakly ordered CPUs
        // such as arm64 may show it first).
        fence(Ordering::SeqCst);
        self.meta
            .set(META_CHANGES_GEN, next, 0)
            .context("advancing EF_META's reading generation")?;
        self.generation = next;
        Ok(closed)
    }

    /// Gathers the keys noted in generation `closed` and the one before
    /// into `self.keys`, each once; false when a buffer ran out of room.
    fn noted(&mut self, closed: u64) -> bool {
        self.keys.clear();
        let fit = self.buffers.keys(closed, &mut self.keys)
            && self.buffers.keys(closed.wrapping_sub(1), &mut self.keys);
        self.keys.sort_unstable();
        self.keys.dedup();
        fit
    }
}

/// `EF_CHANGED` mapped into the agent's memory: the programs append to it,
/// the agent reads and clears it, with no syscall.
struct Buffers {
    base: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, read and written through
// atomics and volatile accesses only.
unsafe impl Send for Buffers {}
unsafe impl Sync for Buffers {}

impl Buffers {
    /// Maps the array behind `fd`, `CHANGED_BUFFERS` elements of
    /// `ChangedKeys` (a multiple of 8 bytes, as the kernel lays them out).
    fn map(fd: BorrowedFd<'_>) -> Result<Self> {
        const _: () = assert!(size_of::<ChangedKeys>().is_multiple_of(8));
        let len = size_of::<ChangedKeys>() * CHANGED_BUFFERS as usize;
        // SAFETY: a new shared mapping of the map's values, which the kernel
        // lays out from offset 0; nothing else in this process aliases it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            bail!(
                "mapping EF_CHANGED into memory: {e}; it needs BPF_F_MMAPABLE array maps (Linux 5.5)"
            );
        }
        let base = std::ptr::NonNull::new(base.cast()).context("mmap returned NULL")?;
        Ok(Self { base, len })
    }

    /// Generation `generation`'s buffer.
    fn buffer(&self, generation: u64) -> *mut ChangedKeys {
        let at = (generation % u64::from(CHANGED_BUFFERS)) as usize * size_of::<ChangedKeys>();
        debug_assert!(at + size_of::<ChangedKeys>() <= self.len);
        // SAFETY: inside the mapping: the buffer index is below
        // CHANGED_BUFFERS.
        unsafe { self.base.as_ptr().add(at).cast() }
    }

    /// The count of notes in generation `generation`'s buffer, which
    /// programs add to atomically.
    fn count(&self, generation: u64) -> &AtomicU64 {
        // SAFETY: `len` is an aligned u64 of the mapping, which lives as
        // long as `self`; the programs write it with atomic adds only.
        unsafe { AtomicU64::from_ptr(&raw mut (*self.buffer(generation)).len) }
    }

    /// Empties generation `generation`'s buffer before the programs start
    /// writing it.
    fn clear(&self, generation: u64) {
        self.count(generation).store(0, Ordering::Release);
    }

    /// Appends generation `generation`'s keys to `out`; false when notes
    /// found no room.
    fn keys(&self, generation: u64, out: &mut Vec<EndpointKey>) -> bool {
        let buffer = self.buffer(generation);
        let noted = self.count(generation).load(Ordering::Acquire);
        let n = (noted as usize).min(CHANGED_KEYS);
        out.reserve(n);
        for i in 0..n {
            // SAFETY: inside the buffer; a key a program is writing as it
            // is read may come out torn, which only looks up an endpoint
            // that is not there (the reading after reads it whole).
            out.push(unsafe { std::ptr::read_volatile(&raw const (*buffer).keys[i]) });
        }
        noted as usize <= CHANGED_KEYS
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of `len` bytes, unused after.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd as _, OwnedFd};

    use agent_common::Direction;
    use aya::maps::IterableMap as _;

    use super::*;
    use crate::retire::tests::{endpoint_map, put};

    /// The agent's side, and the programs' side played by the test: the
    /// endpoint map, and a second mapping of the buffers.
    struct Lab {
        changes: Changes,
        endpoints: OwnedFd,
        programs: Buffers,
        ncpus: usize,
        out: Vec<(EndpointKey, EndpointCounters)>,
    }

    impl Lab {
        fn new() -> Self {
            let changed = Array::<MapData, ChangedKeys>::create(CHANGED_BUFFERS, 1024)
                .expect("an mmapable array (the agent's tests run as root)");
            let meta =
                Array::<MapData, u64>::create(agent_common::META_COUNT, 0).expect("an array");
            let fd = changed.map().fd().as_fd();
            let (endpoints, ncpus) = endpoint_map(1024);
            Self {
                changes: Changes::new(fd, meta, ncpus).expect("the buffers map"),
                programs: Buffers::map(fd).expect("a second mapping"),
                endpoints,
                ncpus,
                out: Vec::new(),
            }
        }

        /// What a program does: counts `opened` connections of `port` and
        /// notes it in generation `generation`'s buffer.
        fn count_in(&self, generation: u64, port: u16, opened: u64) {
            let key = key(port);
            let counters = EndpointCounters {
                conns_opened: opened,
                ..Default::default()
            };
            put(
                self.endpoints.as_fd(),
                &key,
                &mut vec![counters; self.ncpus],
            );
            let at = self
                .programs
                .count(generation)
                .fetch_add(1, Ordering::AcqRel) as usize;
            if at < CHANGED_KEYS {
                // SAFETY: inside the buffer.
                unsafe { (*self.programs.buffer(generation)).keys[at] = key };
            }
        }

        /// Counts in the generation the programs write now.
        fn count(&self, port: u16, opened: u64) {
            self.count_in(self.changes.generation, port, opened);
        }

        /// One reading: `None` when it must read the whole map, else the
        /// ports read with what each opened in all.
        fn read(&mut self, live: usize) -> Option<Vec<(u16, u64)>> {
            let changed = self
                .changes
                .read(self.endpoints.as_fd(), live, &mut self.out)
                .expect("a reading");
            if !changed {
                return None;
            }
            let n = self.ncpus as u64;
            Some(
                self.out
                    .iter()
                    .map(|(k, c)| (k.port, c.conns_opened / n))
                    .collect(),
            )
        }
    }

    fn key(port: u16) -> EndpointKey {
        EndpointKey::tcp(
            agent_common::v4_mapped(0x0100_000a),
            port,
            Direction::SendsTo,
        )
    }

    #[test]
    fn a_reading_reads_the_endpoints_counted_since_the_last_and_counts_that_landed_late() {
        let mut lab = Lab::new();
        lab.count(80, 1);
        assert_eq!(lab.read(100), None, "the first reading is whole");
        assert_eq!(lab.read(100), None, "and the second");
        assert_eq!(lab.read(100), Some(vec![]), "nothing counted since");
        lab.count(80, 2);
        lab.count(81, 1);
        lab.count(80, 3);
        assert_eq!(lab.read(100), Some(vec![(80, 3), (81, 1)]), "each once");
        // A program that read the generation before the reading advanced
        // it counts after the reading read its buffer.
        let closed = lab.changes.generation - 1;
        lab.count_in(closed, 82, 7);
        lab.count(83, 1);
        assert_eq!(
            lab.read(100),
            Some(vec![(80, 3), (81, 1), (82, 7), (83, 1)]),
            "the generation closed last time is read again"
        );
        assert_eq!(lab.read(100), Some(vec![(83, 1)]));
        assert_eq!(lab.read(100), Some(vec![]));
    }

    #[test]
    fn the_whole_map_is_read_when_notes_cannot_say_what_changed() {
        let mut lab = Lab::new();
        lab.read(100);
        lab.read(100);
        assert_eq!(lab.read(100), Some(vec![]));
        // A buffer out of room: read whole, and once more, while the
        // generation it was is read again.
        lab.programs
            .count(lab.changes.generation)
            .store(CHANGED_KEYS as u64 + 1, Ordering::Release);
        assert_eq!(lab.read(100), None, "a buffer overflowed");
        assert_eq!(lab.read(100), None, "it is read again");
        assert_eq!(lab.read(100), Some(vec![]));
        // More than a quarter of what the agent knows of changed, and
        // more than the floor.
        for port in 0..300 {
            lab.count(port, 1);
        }
        assert_eq!(lab.read(1000), None, "300 of 1000 changed");
        assert_eq!(lab.read(1000), None, "and are read again");
        assert_eq!(lab.read(1000), Some(vec![]));
        for port in 0..300 {
            lab.count(port, 2);
        }
        let read = lab.read(1200).expect("300 of 1200 are looked up");
        assert_eq!(read.len(), 300);
        lab.read(1000);
        // Under the floor, however few the agent knows of.
        for port in 0..200 {
            lab.count(port, 3);
        }
        let read = lab.read(10).expect("200 of 10 are looked up");
        assert!(read.iter().all(|&(_, opened)| opened == 3), "{read:?}");
        lab.read(100);
        // The agent wrote into the map.
        lab.changes.read_whole_next();
        assert_eq!(lab.read(100), None, "after the agent's own write");
        assert_eq!(lab.read(100), Some(vec![]));
        // An endpoint retired since it was noted is not read.
        lab.count(90, 1);
        let seen = EndpointCounters {
            conns_opened: lab.ncpus as u64,
            ..Default::default()
        };
        let retired = crate::retire::retire(lab.endpoints.as_fd(), lab.ncpus, &key(90), &seen);
        assert_eq!(retired.ok(), Some(crate::retire::Outcome::Retired));
        assert_eq!(lab.read(100), Some(vec![]), "retired: nothing to read");
        // Every WHOLE_EVERY readings, whatever was noted.
        while !lab.changes.readings.is_multiple_of(WHOLE_EVERY) {
            assert!(lab.read(100).is_some());
        }
        assert_eq!(lab.read(100), None, "reading {}", lab.changes.readings);
    }
}

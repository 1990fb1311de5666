//! `BPF_MAP_LOOKUP_BATCH` on the per-CPU endpoint map: a few syscalls per
//! interval instead of two per endpoint, which is what keeps the agent's CPU
//! low with tens of thousands of endpoints. aya 0.14 has no batch API, so
//! this is the raw `bpf(2)` call.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use agent_common::{EndpointCounters, EndpointKey};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries per syscall, at most.
const CHUNK: usize = 4096;
/// Bytes of per-CPU values one syscall may bring: the buffer they land in
/// is the agent's, kept between readings, and a value is one per possible
/// CPU. 4,096 entries would be 18 MiB on a node of 64 possible CPUs and
/// 75 MiB on one of 256 (the DaemonSet's limit is 128 MiB), where at 1 MiB
/// the reading takes a syscall per few hundred entries instead.
const VALUES_BUDGET: usize = 1 << 20;
/// Entries per syscall, at least, however many CPUs: a hash bucket holding
/// more than a chunk fails the batch (`ENOSPC`), and buckets hold a few.
const MIN_CHUNK: usize = 8;

/// Entries per syscall on a node of `ncpus` possible CPUs.
fn chunk(ncpus: usize) -> usize {
    let value = ncpus.max(1) * std::mem::size_of::<EndpointCounters>();
    (VALUES_BUDGET / value).clamp(MIN_CHUNK, CHUNK)
}

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Whether a batch read's error says the kernel refuses batch lookups on
/// this map for good (no support, or not allowed), rather than failing
/// this once (memory, a bucket larger than a chunk): only then is batching
/// given up for the agent's life.
pub fn refused(e: &std::io::Error) -> bool {
    /// The kernel's internal `ENOTSUPP`, which `bpf(2)` can leak.
    const ENOTSUPP: i32 = 524;
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | libc::EPERM | libc::ENOSYS | ENOTSUPP)
    )
}

/// Batch reads that failed in a row for a reason other than a refusal:
/// the first is worth a warning, the ones after it are not (a map that
/// keeps failing would log one at every reading), and the first success
/// after them says how many there were.
#[derive(Debug, Default)]
pub struct Streak {
    failed: u64,
}

impl Streak {
    /// Counts a failure; true when it starts the streak.
    pub fn failed(&mut self) -> bool {
        self.failed += 1;
        self.failed == 1
    }

    /// Ends the streak; how many failed in it (0: there was none).
    pub fn succeeded(&mut self) -> u64 {
        std::mem::take(&mut self.failed)
    }
}

/// Reusable buffers for batch reads, and the failures in a row.
pub struct Reader {
    ncpus: usize,
    /// Entries per syscall ([`chunk`]).
    chunk: usize,
    keys: Vec<EndpointKey>,
    values: Vec<EndpointCounters>,
    pub streak: Streak,
}

impl Reader {
    pub fn new(ncpus: usize) -> Self {
        Self::with_chunk(ncpus, chunk(ncpus))
    }

    /// A reader of `chunk` entries a syscall.
    fn with_chunk(ncpus: usize, chunk: usize) -> Self {
        Self {
            ncpus,
            chunk,
            keys: Vec::new(),
            values: Vec::new(),
            streak: Streak::default(),
        }
    }

    /// Reads every entry, summing per-CPU values, into `out` (appended).
    /// `Err` carries the errno when the kernel refuses batch operations, so
    /// the caller can fall back to iterating.
    pub fn read(
        &mut self,
        fd: BorrowedFd<'_>,
        out: &mut Vec<(EndpointKey, EndpointCounters)>,
    ) -> Result<(), std::io::Error> {
        let zero_key = EndpointKey {
            addr: [0; 4],
            port: 0,
            direction: 0,
            proto: 0,
        };
        self.keys.resize(self.chunk, zero_key);
        // Per-CPU values come as one value per possible CPU, each 8-aligned
        // (EndpointCounters is a multiple of 8 bytes).
        self.values
            .resize(self.chunk * self.ncpus, EndpointCounters::default());
        let mut token: u64 = 0;
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { &raw const token as u64 },
                out_batch: &raw mut token as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: self.chunk as u32,
                map_fd: fd.as_raw_fd() as u32,
                ..Default::default()
            };
            first = false;
            // SAFETY: attr points at live buffers sized for `count` entries;
            // the kernel writes at most that many keys and values.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &raw mut attr,
                    std::mem::size_of::<BatchAttr>() as u32,
                )
            };
            let err = (rc < 0).then(std::io::Error::last_os_error);
            let done = match &err {
                None => false,
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
                Some(e) => {
                    return Err(std::io::Error::from_raw_os_error(
                        e.raw_os_error().unwrap_or(0),
                    ));
                }
            };
            let n = (attr.count as usize).min(self.chunk);
            for i in 0..n {
                let per_cpu = &self.values[i * self.ncpus..(i + 1) * self.ncpus];
                out.push((self.keys[i], EndpointCounters::sum(per_cpu)));
            }
            if done {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CHUNK, MIN_CHUNK, Reader, Streak, VALUES_BUDGET, chunk, refused};
    use crate::retire::tests::{endpoint_map, key, put};
    use agent_common::{Direction, EndpointCounters};

    /// Every entry of a real per-CPU hash map, read a few entries a
    /// syscall as on a node of many CPUs, once each, its CPUs' values
    /// summed. Needs root, as the agent does.
    #[test]
    fn a_map_read_in_small_chunks_comes_whole() {
        use std::os::fd::AsFd as _;
        let (map, ncpus) = endpoint_map(256);
        let fd = map.as_fd();
        let ports = 1000..1200u16;
        for port in ports.clone() {
            let mut values: Vec<EndpointCounters> = (0..ncpus as u64)
                .map(|cpu| EndpointCounters {
                    conns_opened: u64::from(port) + cpu,
                    bytes_rx: 1,
                    ..Default::default()
                })
                .collect();
            put(fd, &key(port, Direction::Serves), &mut values);
        }
        let n = ncpus as u64;
        let want: Vec<_> = ports
            .map(|port| {
                (
                    key(port, Direction::Serves),
                    u64::from(port) * n + n * (n - 1) / 2,
                    n,
                )
            })
            .collect();
        for chunk in [MIN_CHUNK, 13, CHUNK] {
            let mut out = Vec::new();
            Reader::with_chunk(ncpus, chunk)
                .read(fd, &mut out)
                .expect("a batch read");
            out.sort_by_key(|(k, _)| k.port);
            let got: Vec<_> = out
                .iter()
                .map(|(k, c)| (*k, c.conns_opened, c.bytes_rx))
                .collect();
            assert_eq!(got, want, "{chunk} entries a syscall");
        }
    }

    #[test]
    fn a_chunks_values_fit_the_budget_on_nodes_of_any_size() {
        let value = std::mem::size_of::<EndpointCounters>();
        assert_eq!(chunk(2), CHUNK, "a small node reads 4,096 a syscall");
        for ncpus in [1, 2, 8, 64, 96, 256, 1024, 8192] {
            let c = chunk(ncpus);
            assert!((MIN_CHUNK..=CHUNK).contains(&c), "{ncpus} CPUs: {c}");
            assert!(
                c * ncpus * value <= VALUES_BUDGET || c == MIN_CHUNK,
                "{ncpus} CPUs: {c} entries take {} bytes",
                c * ncpus * value
            );
        }
        assert!(chunk(64) >= 200, "64 CPUs: {}", chunk(64));
        assert_eq!(chunk(0), CHUNK, "no CPU count reads as one CPU");
    }

    #[test]
    fn a_streak_of_failures_is_announced_once_and_counted_at_its_end() {
        let mut s = Streak::default();
        assert_eq!(s.succeeded(), 0, "no streak yet");
        assert!(s.failed(), "the first failure starts the streak");
        assert!(!s.failed() && !s.failed(), "the next ones are quiet");
        assert_eq!(s.succeeded(), 3);
        assert_eq!(s.succeeded(), 0, "a success ends the streak");
        assert!(s.failed(), "a failure after a success starts a new one");
    }

    #[test]
    fn only_a_kernel_that_refuses_batches_ends_batching() {
        let e = std::io::Error::from_raw_os_error;
        for errno in [
            libc::EINVAL,
            libc::EOPNOTSUPP,
            libc::EPERM,
            libc::ENOSYS,
            524,
        ] {
            assert!(refused(&e(errno)), "errno {errno}");
        }
        for errno in [libc::ENOMEM, libc::ENOSPC, libc::EFAULT, libc::EAGAIN] {
            assert!(!refused(&e(errno)), "errno {errno}");
        }
    }
}

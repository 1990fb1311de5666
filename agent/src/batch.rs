//! `BPF_MAP_LOOKUP_BATCH` on the per-CPU endpoint map: a few syscalls per
//! interval instead of two per endpoint, which is what keeps the agent's CPU
//! low with tens of thousands of endpoints. aya 0.14 has no batch API, so
//! this is the raw `bpf(2)` call.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use agent_common::{EndpointCounters, EndpointKey};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries per syscall.
const CHUNK: usize = 4096;

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
    keys: Vec<EndpointKey>,
    values: Vec<EndpointCounters>,
    pub streak: Streak,
}

impl Reader {
    pub fn new(ncpus: usize) -> Self {
        Self {
            ncpus,
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
        self.keys.resize(CHUNK, zero_key);
        // Per-CPU values come as one value per possible CPU, each 8-aligned
        // (EndpointCounters is a multiple of 8 bytes).
        self.values
            .resize(CHUNK * self.ncpus, EndpointCounters::default());
        let mut token: u64 = 0;
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { &raw const token as u64 },
                out_batch: &raw mut token as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: CHUNK as u32,
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
            let n = (attr.count as usize).min(CHUNK);
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
    use super::{Streak, refused};

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

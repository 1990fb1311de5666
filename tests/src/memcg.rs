//! A memory cgroup whose limit a test sets.
//!
//! The kernel charges a BPF map's entries to the memory cgroup of the
//! process that created the map, for the map's whole life. An agent started
//! in such a cgroup, then restarted outside it on the same pinned maps,
//! leaves the maps charged to a cgroup with no process in it: a limit set
//! there makes the kernel refuse the maps' new entries (`-ENOMEM`) without
//! the out-of-memory killer taking any process, which a limit on the
//! agent's own cgroup would do first.
//!
//! On a host whose memory controller is on a cgroup v1 hierarchy (this
//! project's VMs) the cgroup is made there; on a pure cgroup v2 host, in
//! the v2 hierarchy.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::cgroup::Hierarchy;

/// The limit and usage files of one hierarchy's memory controller.
struct Files {
    usage: &'static str,
    limit: &'static str,
    unlimited: &'static str,
}

const V1: Files = Files {
    usage: "memory.usage_in_bytes",
    limit: "memory.limit_in_bytes",
    unlimited: "-1",
};

const V2: Files = Files {
    usage: "memory.current",
    limit: "memory.max",
    unlimited: "max",
};

/// How long the usage must hold still before [`MemCg::hold_at_usage`]
/// trusts it.
const SETTLED: Duration = Duration::from_millis(500);

/// How long [`MemCg::hold_at_usage`] waits for the usage to hold still.
const HOLD_WITHIN: Duration = Duration::from_secs(10);

/// A memory cgroup, removed on drop.
pub struct MemCg {
    dir: PathBuf,
    files: &'static Files,
}

impl MemCg {
    /// Creates the memory cgroup `name` (a leftover of a crashed run is
    /// removed first).
    pub fn create(name: &str) -> Result<Self> {
        let (root, files) = match crate::cgroup::controller_root("memory")? {
            (root, Hierarchy::V1) => (root, &V1),
            (root, Hierarchy::V2) => (root, &V2),
        };
        let dir = root.join(name);
        crate::cgroup::remove(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating memory cgroup {}", dir.display()))?;
        Ok(Self { dir, files })
    }

    /// The file a process writes its pid to, to join.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Bytes charged to it now.
    pub fn usage(&self) -> Result<u64> {
        let path = self.dir.join(self.files.usage);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{}: {text:?} is not a byte count", path.display()))
    }

    /// Limits it to what is charged to it once the kernel has taken back
    /// all it can (page cache, the charges it keeps ahead on each CPU),
    /// and returns that: a new charge then fails, where the charges kept
    /// ahead would have let a few hundred KiB through.
    ///
    /// The kernel drains the charges kept ahead on other CPUs in work it
    /// queues there and does not wait for, and frees some objects after an
    /// RCU grace period: usage can fall after it is read. So the limit
    /// follows the usage down until the usage has held for [`SETTLED`].
    pub fn hold_at_usage(&self) -> Result<u64> {
        let deadline = Instant::now() + HOLD_WITHIN;
        let mut held = self.hold_once()?;
        let mut since = Instant::now();
        while since.elapsed() < SETTLED {
            if Instant::now() > deadline {
                bail!(
                    "the usage of {} kept falling for {HOLD_WITHIN:?} (now {held} B): \
                     something in it is still being freed",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
            // Drained and held again only when it fell: each drain on a
            // cgroup v2 host goes through the out-of-memory path.
            if self.usage()? != held {
                held = self.hold_once()?;
                since = Instant::now();
            }
        }
        Ok(held)
    }

    /// Takes back all the kernel can and sets the limit at what is left.
    fn hold_once(&self) -> Result<u64> {
        // Refused (-EBUSY) where what is charged cannot all be taken back,
        // as the maps' entries cannot: the reclaim and the drain it tried
        // are what is wanted.
        let _ = self.limit(Some(0));
        let usage = self.usage()?;
        self.limit(Some(usage))?;
        Ok(usage)
    }

    /// Limits it to `bytes`, or lifts the limit (`None`).
    pub fn limit(&self, bytes: Option<u64>) -> Result<()> {
        let path = self.dir.join(self.files.limit);
        let value = bytes.map_or_else(|| self.files.unlimited.to_owned(), |b| b.to_string());
        std::fs::write(&path, &value)
            .with_context(|| format!("writing {value} to {}", path.display()))
    }
}

impl Drop for MemCg {
    fn drop(&mut self) {
        let _ = self.limit(None);
        crate::cgroup::remove(&self.dir);
    }
}

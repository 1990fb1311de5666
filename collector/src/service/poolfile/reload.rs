//! Reading the pool file again when it changes on disk, so an edit (or a
//! ConfigMap update, which swaps a symlink) takes effect without a restart
//! that would forget every pool's history.
//!
//! The tick looks at the file's identity (device, inode, length, mtime)
//! once a tick, following symlinks. A change is read once it has held for
//! a tick, so an editor that writes in place is read when it is done, not
//! half-way. A file that cannot be read or parsed is logged with what is
//! wrong and how to fix it, counted, and the pools it declared before stay.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
};

use tracing::{error, info};

use super::{PoolFile, PoolFileError, load};

/// What the reloads did, for /metrics.
#[derive(Debug)]
pub struct ReloadStats {
    /// Changes read and put in place.
    pub reloads: AtomicU64,
    /// Changes that could not be used.
    pub failures: AtomicU64,
    /// Whether the last change was used (true before any change).
    pub last_ok: AtomicBool,
}

impl Default for ReloadStats {
    fn default() -> Self {
        Self {
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_ok: AtomicBool::new(true),
        }
    }
}

/// What identifies one version of the file on disk; `None` when it cannot
/// be looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
    })
}

/// The pool file's path and the version of it last looked at and read.
pub struct Reloader {
    path: PathBuf,
    /// What the last look saw.
    seen: Option<Stamp>,
    /// What the pools in use were read from (or last failed to be).
    read: Option<Stamp>,
    stats: std::sync::Arc<ReloadStats>,
}

impl Reloader {
    /// Reads the file at `path` the first time; an error here stops the
    /// collector (nothing to keep yet).
    pub fn start(
        path: &Path,
        stats: std::sync::Arc<ReloadStats>,
    ) -> Result<(PoolFile, Self), PoolFileError> {
        // Looked at before it is read: a change in between is read again.
        let at = stamp(path);
        let file = load(path)?;
        let reloader = Self {
            path: path.to_owned(),
            seen: at,
            read: at,
            stats,
        };
        Ok((file, reloader))
    }

    /// The file's pools if it changed, has held still since the last look,
    /// and is valid; `None` otherwise (then the pools in use stay).
    pub fn poll(&mut self) -> Option<PoolFile> {
        let now = stamp(&self.path);
        if now != self.seen {
            self.seen = now;
            return None;
        }
        if now == self.read {
            return None;
        }
        self.read = now;
        match load(&self.path) {
            Ok(file) => {
                self.stats.reloads.fetch_add(1, Relaxed);
                self.stats.last_ok.store(true, Relaxed);
                info!(
                    path = %self.path.display(),
                    pools = file.len(),
                    "pool file changed: its pools replace the ones it declared"
                );
                Some(file)
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Relaxed);
                self.stats.last_ok.store(false, Relaxed);
                error!(
                    "pool file changed but cannot be used, so the pools it declared before stay: {e}"
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const ONE: &str = "[[pool]]\nname = \"web\"\nmembers = [{ address = \"10.0.0.1:80\" }]\n";
    const TWO: &str = "[[pool]]\nname = \"web\"\nmembers = [{ address = \"10.0.0.1:80\" }, { address = \"10.0.0.2:80\" }]\n";

    fn members(file: &PoolFile) -> usize {
        file.get("web").map_or(0, |pool| pool.members.len())
    }

    #[test]
    fn a_change_is_read_once_it_held_for_a_look_and_a_bad_one_keeps_the_pools() {
        let dir = std::env::temp_dir().join(format!("evenflow-reload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pools.toml");
        std::fs::write(&path, ONE).unwrap();
        let stats = Arc::new(ReloadStats::default());
        let (file, mut reloader) = Reloader::start(&path, stats.clone()).unwrap();
        assert_eq!(members(&file), 1);
        assert!(reloader.poll().is_none(), "unchanged");

        std::fs::write(&path, TWO).unwrap();
        assert!(
            reloader.poll().is_none(),
            "changed this look: read next look"
        );
        let file = reloader.poll().expect("read once it held");
        assert_eq!(members(&file), 2);
        assert!(reloader.poll().is_none(), "read once");
        assert_eq!(stats.reloads.load(Relaxed), 1);

        std::fs::write(
            &path,
            "[[pool]]\nname = \"web\"\nmembers = [{ address = \"nowhere\" }]\n",
        )
        .unwrap();
        assert!(reloader.poll().is_none());
        assert!(reloader.poll().is_none(), "invalid: the pools in use stay");
        assert_eq!(stats.failures.load(Relaxed), 1);
        assert!(!stats.last_ok.load(Relaxed));
        assert!(reloader.poll().is_none(), "an invalid version fails once");
        assert_eq!(stats.failures.load(Relaxed), 1);

        std::fs::remove_file(&path).unwrap();
        assert!(reloader.poll().is_none());
        assert!(reloader.poll().is_none(), "gone: the pools in use stay");
        assert_eq!(stats.failures.load(Relaxed), 2);

        std::fs::write(&path, ONE).unwrap();
        assert!(reloader.poll().is_none());
        assert_eq!(reloader.poll().map(|file| members(&file)), Some(1));
        assert!(stats.last_ok.load(Relaxed));
        assert_eq!(stats.reloads.load(Relaxed), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

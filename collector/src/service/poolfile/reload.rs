//! Reading the pool file again when it changes on disk, so an edit (or a
//! ConfigMap update, which swaps a symlink) takes effect without a restart
//! that would forget every pool's history.
//!
//! A thread of its own looks at the file's identity (device, inode,
//! length, mtime, ctime; through symlinks) every [`LOOK_EVERY`], so a file
//! on a mount that hangs never stalls the detection tick. A change is read
//! once it has held still for [`HOLD_STILL`], and used only if the file
//! did not change while it was read: an editor or a shell redirect that
//! writes in place is read when it is done, not half-way. A version that
//! cannot be parsed is logged with what is wrong and how to fix it,
//! counted, and the pools it declared before stay; one that cannot be
//! read (permissions, a missing file) is tried again every look and
//! logged once.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc,
    },
    time::{Duration, Instant},
};

use evenflow_daemon::watch::{Stamp, stamp};
use tracing::{error, info, warn};

use super::{PoolFile, PoolFileError, load};

/// How often the file is looked at.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// How long a change must hold still before it is read.
const HOLD_STILL: Duration = Duration::from_secs(2);

/// What the reloads did, for /metrics.
#[derive(Debug)]
pub struct ReloadStats {
    /// Changes read and put in place.
    pub reloads: AtomicU64,
    /// Changes that could not be used (each version once).
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

/// The pool file's path and the versions of it looked at and read.
pub struct Reloader {
    path: PathBuf,
    /// What the last look saw, and since when.
    seen: (Option<Stamp>, Instant),
    /// What the pools in use were read from, or last failed to parse, and
    /// whether it parsed.
    read: (Option<Stamp>, bool),
    /// The version whose read error was last logged.
    unreadable: Option<Option<Stamp>>,
    stats: Arc<ReloadStats>,
}

impl Reloader {
    /// Reads the file at `path` the first time; an error here stops the
    /// collector (nothing to keep yet).
    pub fn start(path: &Path, stats: Arc<ReloadStats>) -> Result<(PoolFile, Self), PoolFileError> {
        // Looked at before it is read: a change in between is read again.
        let at = stamp(path);
        let file = load(path)?;
        let reloader = Self {
            path: path.to_owned(),
            seen: (at, Instant::now()),
            read: (at, true),
            unreadable: None,
            stats,
        };
        Ok((file, reloader))
    }

    /// Looks at the file every [`LOOK_EVERY`] on a thread of its own and
    /// sends each new version's pools; the thread ends once `stop` is set
    /// (or the receiver is dropped).
    pub fn spawn(mut self, stop: Arc<AtomicBool>) -> std::io::Result<mpsc::Receiver<PoolFile>> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("evenflow-pools".into())
            .spawn(move || {
                while !stop.load(Relaxed) {
                    std::thread::sleep(LOOK_EVERY);
                    if let Some(file) = self.poll(Instant::now())
                        && tx.send(file).is_err()
                    {
                        return;
                    }
                }
            })?;
        Ok(rx)
    }

    /// The file's pools if it changed, has held still for [`HOLD_STILL`]
    /// at `now`, did not change while read, and is valid; `None` otherwise
    /// (then the pools in use stay).
    fn poll(&mut self, now: Instant) -> Option<PoolFile> {
        let at = stamp(&self.path);
        if at == self.read.0 {
            // The version last read, perhaps back after it could not be
            // read for a while: its outcome is the one that stands.
            self.seen = (at, now);
            if self.unreadable.take().is_some() {
                self.stats.last_ok.store(self.read.1, Relaxed);
            }
            return None;
        }
        if at != self.seen.0 {
            self.seen = (at, now);
            return None;
        }
        if now.duration_since(self.seen.1) < HOLD_STILL {
            return None;
        }
        let loaded = load(&self.path);
        if stamp(&self.path) != at {
            return None;
        }
        match loaded {
            Ok(file) => {
                self.read = (at, true);
                self.unreadable = None;
                self.stats.reloads.fetch_add(1, Relaxed);
                self.stats.last_ok.store(true, Relaxed);
                info!(
                    path = %self.path.display(),
                    pools = file.len(),
                    "pool file changed: its pools replace the ones it declared"
                );
                Some(file)
            }
            Err(e @ PoolFileError::Read { .. }) => {
                // Tried again every look: a permission or a mount fixed
                // is taken up as soon as it is.
                if self.unreadable != Some(at) {
                    self.unreadable = Some(at);
                    self.stats.failures.fetch_add(1, Relaxed);
                    self.stats.last_ok.store(false, Relaxed);
                    warn!("pool file cannot be read, so the pools it declared stay: {e}");
                }
                None
            }
            Err(e) => {
                self.read = (at, false);
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
    use super::*;

    const ONE: &str = "[[pool]]\nname = \"web\"\nmembers = [{ address = \"10.0.0.1:80\" }]\n";
    const TWO: &str = "[[pool]]\nname = \"web\"\nmembers = [{ address = \"10.0.0.1:80\" }, { address = \"10.0.0.2:80\" }]\n";

    fn members(file: &PoolFile) -> usize {
        file.get("web").map_or(0, |pool| pool.members.len())
    }

    /// Looks at the file now and once it has held still.
    fn settle(reloader: &mut Reloader, clock: &mut Instant) -> Option<PoolFile> {
        assert!(reloader.poll(*clock).is_none(), "a change waits");
        *clock += HOLD_STILL;
        reloader.poll(*clock)
    }

    #[test]
    fn a_change_is_read_once_it_held_still_and_a_bad_one_keeps_the_pools() {
        let dir = std::env::temp_dir().join(format!("evenflow-reload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pools.toml");
        std::fs::write(&path, ONE).unwrap();
        let stats = Arc::new(ReloadStats::default());
        let (file, mut reloader) = Reloader::start(&path, stats.clone()).unwrap();
        let mut clock = Instant::now();
        assert_eq!(members(&file), 1);
        clock += HOLD_STILL;
        assert!(reloader.poll(clock).is_none(), "unchanged");

        std::fs::write(&path, TWO).unwrap();
        assert!(
            reloader.poll(clock).is_none(),
            "changed: read once it held still"
        );
        clock += HOLD_STILL / 2;
        assert!(reloader.poll(clock).is_none(), "not held still long enough");
        clock += HOLD_STILL / 2;
        let file = reloader.poll(clock).expect("read once it held still");
        assert_eq!(members(&file), 2);
        assert!(reloader.poll(clock + HOLD_STILL).is_none(), "read once");
        assert_eq!(stats.reloads.load(Relaxed), 1);

        std::fs::write(
            &path,
            "[[pool]]\nname = \"web\"\nmembers = [{ address = \"nowhere\" }]\n",
        )
        .unwrap();
        assert!(
            settle(&mut reloader, &mut clock).is_none(),
            "invalid: the pools stay"
        );
        assert_eq!(stats.failures.load(Relaxed), 1);
        assert!(!stats.last_ok.load(Relaxed));
        clock += HOLD_STILL;
        assert!(reloader.poll(clock).is_none());
        assert_eq!(
            stats.failures.load(Relaxed),
            1,
            "an invalid version fails once"
        );

        // Unreadable (a directory where the file was): tried again every
        // look, counted once, and read as soon as it can be.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(settle(&mut reloader, &mut clock).is_none());
        assert_eq!(stats.failures.load(Relaxed), 2);
        clock += HOLD_STILL;
        assert!(reloader.poll(clock).is_none());
        assert_eq!(stats.failures.load(Relaxed), 2, "logged and counted once");
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, ONE).unwrap();
        let got = settle(&mut reloader, &mut clock);
        assert_eq!(got.map(|file| members(&file)), Some(1));
        assert!(stats.last_ok.load(Relaxed));

        // Out of reach for a while (its directory moved away and back, as a
        // mount that hiccups): the same version again, nothing to read,
        // and the failure no longer stands.
        let reloads = stats.reloads.load(Relaxed);
        let away = dir.with_extension("away");
        std::fs::rename(&dir, &away).unwrap();
        assert!(settle(&mut reloader, &mut clock).is_none());
        assert!(!stats.last_ok.load(Relaxed), "cannot be read");
        std::fs::rename(&away, &dir).unwrap();
        assert!(
            reloader.poll(clock + HOLD_STILL).is_none(),
            "the version in use"
        );
        assert!(stats.last_ok.load(Relaxed), "the version in use parsed");
        assert_eq!(stats.reloads.load(Relaxed), reloads);

        std::fs::remove_file(&path).unwrap();
        assert!(
            settle(&mut reloader, &mut clock).is_none(),
            "gone: the pools stay"
        );
        let failures = stats.failures.load(Relaxed);
        clock += HOLD_STILL;
        assert!(reloader.poll(clock).is_none());
        assert_eq!(stats.failures.load(Relaxed), failures, "counted once");

        std::fs::write(&path, TWO).unwrap();
        let got = settle(&mut reloader, &mut clock);
        assert_eq!(got.map(|file| members(&file)), Some(2));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

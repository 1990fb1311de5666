//! Which version of a file is on disk, for the daemons' files read again
//! when they change (the collector's pool file, its TLS certificate):
//! a ConfigMap or Secret volume swaps a symlink, an editor renames or
//! writes in place, and each shows as a new [`Stamp`].

use std::{os::unix::fs::MetadataExt as _, path::Path};

/// What identifies one version of a file on disk, through symlinks. The
/// ctime changes with the permissions, so fixing them is a change too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The file's stamp; `None` when it cannot be looked at.
pub fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    })
}

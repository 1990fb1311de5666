//! Pinned links: evenflow's programs stay attached when the agent exits,
//! crashes or is SIGKILLed, so counting never stops; a starting agent
//! adopts what is pinned and swaps its own programs in atomically
//! (`BPF_LINK_UPDATE`), so not one connection goes uncounted across an
//! agent restart or upgrade. `evenflow-agent uninstall` removes the pins,
//! and with them the programs.
//!
//! Links are pinned under `<pin dir>/links/`, one per attachment, named for
//! what they attach to: `sockops@<cgroup inode>`, `resets@<cgroup inode>`,
//! `<program>@<interface>`.
//! Pins for attachments this agent no longer wants (another cgroup, an
//! interface it no longer selects, a device that went away) are removed.

use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use tracing::{debug, info};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

fn bpf(cmd: libc::c_long, attr: &[u32]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a readable bpf_attr member of the given size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_ptr(),
            std::mem::size_of_val(attr) as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// The directory of a node's pinned links.
pub fn dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// Opens the link pinned at `path`.
fn open(path: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let ptr = c.as_ptr() as u64;
    let attr = [ptr as u32, (ptr >> 32) as u32, 0, 0];
    let fd = bpf(BPF_OBJ_GET, &attr)?;
    // SAFETY: the kernel returned a new descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Points the link pinned at `path` at `prog`. `Ok(false)` when there is no
/// usable pin (none, or its device or cgroup is gone: the stale pin is
/// removed), so the caller attaches afresh and pins.
pub fn adopt(path: &Path, prog: BorrowedFd<'_>) -> Result<bool> {
    let link = match open(path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(e).with_context(|| format!("opening the pinned link {}", path.display()));
        }
    };
    let attr = [link.as_raw_fd() as u32, prog.as_raw_fd() as u32, 0, 0];
    match bpf(BPF_LINK_UPDATE, &attr) {
        Ok(_) => {
            debug!(link = %path.display(), "adopted a pinned link, program replaced in place");
            Ok(true)
        }
        Err(e) => {
            info!(link = %path.display(), error = %e, "a pinned link could not be updated (its target is gone): attaching afresh");
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale pin {}", path.display()))?;
            Ok(false)
        }
    }
}

/// Removes every pin in `dir` whose name is not in `keep`: attachments this
/// agent no longer makes. Their programs detach as the pins go.
pub fn prune(dir: &Path, keep: &[String]) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            info!(link = %entry.path().display(), "detaching an attachment this agent no longer makes");
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The pin name of program `what` on `cgroup`: its inode identifies it
/// even if it is mounted elsewhere next time.
pub fn cgroup_name(what: &str, cgroup: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let ino = std::fs::metadata(cgroup)
        .with_context(|| format!("reading {}", cgroup.display()))?
        .ino();
    Ok(format!("{what}@{ino}"))
}

/// Removes a node's whole pin directory (links, maps, epoch): every
/// program detaches and the counters are gone.
pub fn uninstall(pin_dir: &Path) -> Result<bool> {
    match std::fs::remove_dir_all(pin_dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", pin_dir.display())),
    }
}

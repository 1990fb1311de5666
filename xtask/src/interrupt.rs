//! Ctrl-C and SIGTERM for the tasks that build labs: the signal only sets a
//! flag, so the task stops at its next check and its guards remove what it
//! made (namespaces, processes, cgroups, pinned maps) on the way out.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM.
pub fn install() {
    // SAFETY: the handler only stores to an atomic, which is signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Whether SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails when interrupted, so `?` unwinds through the cleanup guards.
pub fn check() -> Result<()> {
    if interrupted() {
        bail!("interrupted; everything the task made is being removed");
    }
    Ok(())
}

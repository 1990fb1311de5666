//! Network namespaces and the commands that run inside them.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Runs `cmd args…` on the host, failing with its stderr.
pub fn sh(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd args…` inside namespace `ns` (`ip netns exec`).
pub fn exec(ns: &str, cmd: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", ns, cmd];
    all.extend_from_slice(args);
    sh("ip", &all)
}

/// `/run/netns/<ns>`.
pub fn path(ns: &str) -> String {
    format!("/run/netns/{ns}")
}

/// Creates `ns` (removing a leftover of the same name) with `lo` up.
pub fn create(ns: &str) -> Result<()> {
    let _ = sh("ip", &["netns", "del", ns]);
    sh("ip", &["netns", "add", ns])?;
    exec(ns, "ip", &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes `ns`; errors are ignored (cleanup path).
pub fn delete(ns: &str) {
    let _ = sh("ip", &["netns", "del", ns]);
}

/// Runs `f` on a new thread that has entered `ns`; only that thread moves.
pub fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let file = File::open(path(ns)).with_context(|| format!("opening {}", path(ns)))?;
    let h = std::thread::spawn(move || {
        // SAFETY: plain setns on a valid fd, affecting only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f())
    });
    h.join()
        .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
        .with_context(|| format!("entering {ns}"))
}

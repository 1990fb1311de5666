//! evenflow's lab: real network namespaces joined by veths, one per node,
//! with real servers (nginx), real load balancers (HAProxy, nftables DNAT)
//! and one real `evenflow-agent` per node, read back with the real grpcurl.
//! The end-to-end tests in `tests/` and `cargo xtask demo` build on it.
//!
//! Every number the tests assert is compared with a count someone else made:
//! the test's own client, nginx's access log, HAProxy's stats socket.
//!
//! Everything a lab creates is removed when it is dropped: processes,
//! namespaces, cgroups, temporary directories and pinned maps.

pub mod agent;
pub mod certs;
pub mod cgroup;
pub mod client;
pub mod grpclab;
pub mod grpcurl;
pub mod haproxy;
pub mod judged;
pub mod kubeapi;
pub mod kubenode;
pub mod lab;
pub mod memcg;
pub mod netns;
pub mod nft;
pub mod nginx;
pub mod simagent;
pub mod tcx;
pub mod tmux;
pub mod truth;

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};

/// Where the agents pin their maps: `<BPFFS>/evenflow/<node-name>/`.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Fails, with a message that says what to do, unless this process can run a
/// lab: root, BTF, a cgroup v2 hierarchy, bpffs (mounted here when absent)
/// and a working `bpf()` syscall. Tests call it first so that a machine that
/// cannot run them makes them fail, never silently skip.
pub fn require_root() {
    if let Err(e) = preflight() {
        panic!("evenflow's end-to-end tests cannot run here: {e:#}");
    }
}

/// Whether the running kernel is `major.minor` or later (what features
/// the agent finds, and so what a test expects of it, follow the version).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .split(['.', '-'])
        .map(|n| n.trim().parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (major, minor)
}

/// The checks behind [`require_root`], as a `Result` for callers (xtask)
/// that report rather than panic.
pub fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "they need root (network namespaces, cgroups, BPF): run them as root, \
             as `cargo xtask test` in CI does"
        );
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("this kernel has no BTF (/sys/kernel/btf/vmlinux); the agent needs it");
    }
    cgroup::root()?;
    ensure_bpffs()?;
    bpf_usable()?;
    Ok(())
}

/// Mounts bpffs at [`BPFFS`] unless it is there already: agents pin their
/// maps in it, and a fresh machine may not have it mounted.
pub fn ensure_bpffs() -> Result<()> {
    if mount_type(Path::new(BPFFS))?.as_deref() == Some("bpf") {
        return Ok(());
    }
    std::fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    netns::sh("mount", &["-t", "bpf", "bpf", BPFFS])
        .with_context(|| format!("mounting bpffs at {BPFFS}"))?;
    Ok(())
}

/// The filesystem type mounted exactly at `dir`, if any (the last mount
/// there wins, as in the kernel).
pub fn mount_type(dir: &Path) -> Result<Option<String>> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(parse_mount_type(&info, dir))
}

fn parse_mount_type(mountinfo: &str, dir: &Path) -> Option<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let point = pre.split_whitespace().nth(4)?;
            let fstype = post.split_whitespace().next()?;
            (Path::new(point) == dir).then(|| fstype.to_owned())
        })
        .next_back()
}

/// Proves the `bpf()` syscall works (creates and closes a one-entry array
/// map): root is not enough when seccomp, a container or a lockdown forbids
/// BPF, and the agent's failure would then be much less clear.
fn bpf_usable() -> Result<()> {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size,
    // max_entries; the rest zero (the kernel checks that unknown tails are).
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4;
    attr[2] = 8;
    attr[3] = 1;
    // SAFETY: BPF_MAP_CREATE reads `size` bytes of a valid, initialised buffer.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0, // BPF_MAP_CREATE
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        bail!(
            "the bpf() syscall fails ({}): BPF is not usable by this process",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: closing the fd the kernel just gave us.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// Polls `f` every 200 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Replaces `path` with `contents` in one rename, as an editor or a
/// ConfigMap update does: a reader sees the old file or the new one, never
/// half of it.
pub fn replace_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    let mut next = path.as_os_str().to_owned();
    next.push(".next");
    std::fs::write(&next, contents).with_context(|| format!("writing {}", path.display()))?;
    std::fs::rename(&next, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_mount_at_a_point() {
        let info = "\
22 1 0:21 / /sys rw - sysfs sysfs rw\n\
35 22 0:30 / /sys/fs/bpf rw,relatime shared:9 - tmpfs none rw\n\
36 35 0:31 / /sys/fs/bpf rw,relatime - bpf bpf rw\n";
        assert_eq!(
            parse_mount_type(info, Path::new("/sys/fs/bpf")).as_deref(),
            Some("bpf")
        );
        assert_eq!(parse_mount_type(info, Path::new("/sys/fs")), None);
    }
}

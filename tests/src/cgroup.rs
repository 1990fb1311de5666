//! One cgroup v2 directory per lab node, and the processes that run in it.
//!
//! The agent's `sock_ops` program is attached to a node's cgroup and only
//! sees sockets created by processes inside it, so a node's servers (nginx,
//! HAProxy) must be in the cgroup *before* they create their listening
//! sockets. [`spawn`] does that: the child joins the cgroup and the node's
//! network namespace between fork and exec.

use std::{
    fs::{File, OpenOptions},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

/// Where the cgroup v2 hierarchy is mounted (the first cgroup2 mount; here
/// `/sys/fs/cgroup/unified`, on a pure v2 host `/sys/fs/cgroup`).
pub fn root() -> Result<PathBuf> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    parse_root(&info).context(
        "no cgroup v2 hierarchy is mounted (run `cargo xtask setup`, or \
         `mount -t cgroup2 none /sys/fs/cgroup/unified`)",
    )
}

fn parse_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2")
            .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// Which cgroup hierarchy holds a controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    V1,
    V2,
}

/// Where cgroups that `controller` (`memory`, `cpu`) limits are made: the
/// cgroup v1 hierarchy that has it if one is mounted (this project's
/// VMs), else the cgroup v2 hierarchy, with the controller enabled for its
/// children.
pub fn controller_root(controller: &str) -> Result<(PathBuf, Hierarchy)> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    if let Some(root) = v1_mount(&info, controller) {
        return Ok((root, Hierarchy::V1));
    }
    let root = root()?;
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == controller) {
        bail!(
            "no {controller} controller: neither a cgroup v1 {controller} hierarchy is mounted \
             nor {} lists `{controller}` in cgroup.controllers (boot with the {controller} \
             cgroup enabled)",
            root.display()
        );
    }
    let path = root.join("cgroup.subtree_control");
    std::fs::write(&path, format!("+{controller}"))
        .with_context(|| format!("writing +{controller} to {}", path.display()))?;
    Ok((root, Hierarchy::V2))
}

/// The mount point of a cgroup v1 hierarchy with `controller`.
fn v1_mount(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut post = post.split_whitespace();
        let has = post.next()? == "cgroup" && post.nth(1)?.split(',').any(|o| o == controller);
        has.then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// Creates `dir` afresh: a leftover from a crashed run is emptied (its
/// processes killed) and removed first, so nothing old is counted.
pub fn create(dir: &Path) -> Result<()> {
    remove(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating cgroup {}", dir.display()))
}

/// The pids in `dir`.
pub fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills every process in `dir` (including ones that daemonised or
/// escaped their process group) and removes it; bounded, errors ignored:
/// this is the cleanup path.
pub fn remove(dir: &Path) {
    if !dir.exists() {
        return;
    }
    // cgroup.kill (Linux 5.14+) SIGKILLs the whole subtree at once.
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        for pid in procs(dir) {
            // SAFETY: signalling a pid listed in our own test cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    crate::wait_for(Duration::from_secs(3), || {
        procs(dir).is_empty().then_some(())
    });
    // A cgroup is removable once empty (and its children are removed).
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A process a lab started. Dropping it stops its whole process group:
/// SIGTERM first (so an agent detaches cleanly and nginx closes its log),
/// SIGKILL after a second.
pub struct Proc {
    /// What it is, for messages: "nginx-b1", "agent-lb"…
    pub name: String,
    /// The child (the leader of its own process group).
    pub child: Child,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl Proc {
    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The process's output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` to its process group.
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        let pid = i32::try_from(self.child.id())
            .map_err(|_| std::io::Error::other("pid out of range"))?;
        // SAFETY: signalling the process group we created for this child.
        if unsafe { libc::kill(-pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: signalling the process group we created for this child.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
        let stopped = crate::wait_for(Duration::from_secs(1), || {
            matches!(self.child.try_wait(), Ok(Some(_))).then_some(())
        });
        if stopped.is_none() {
            // SAFETY: as above.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// Starts `cmd args…` inside cgroup `cgroup` and network namespace `ns`,
/// in a process group of its own, stdout and stderr to `log`.
///
/// The child joins both between fork and exec, so every socket the program
/// ever creates belongs to the cgroup and the namespace. Unlike `ip netns
/// exec` this keeps the host's mounts: the agent still finds bpffs and the
/// cgroup v2 hierarchy under /sys.
pub fn spawn(
    name: &str,
    cgroup: &Path,
    ns: &str,
    log: &Path,
    cmd: &str,
    args: &[&str],
) -> Result<Proc> {
    let logf = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    // Opened here, used in the child: between fork and exec only
    // async-signal-safe calls are allowed (no allocation, no formatting).
    let procs = OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .with_context(|| format!("opening {}/cgroup.procs", cgroup.display()))?;
    let netns = crate::netns::open(ns)?;
    let (procs_fd, netns_fd) = (procs.as_raw_fd(), netns.as_raw_fd());
    let mut command = Command::new(cmd);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .process_group(0);
    // SAFETY: the closure makes two syscalls (write, setns) on fds that stay
    // open in the parent until spawn returns; both are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            // "0" means the writing process itself.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            crate::netns::enter(netns_fd)
        });
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {cmd} in {ns} (cgroup {})", cgroup.display()))?;
    drop((procs, netns));
    Ok(Proc {
        name: name.to_owned(),
        child,
        log: log.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let info = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
40 30 0:35 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_root(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(parse_root("31 30 0:27 / /x rw - cgroup cgroup rw\n"), None);
    }

    #[test]
    fn finds_a_controllers_v1_hierarchy() {
        let info = "\
35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
36 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
37 25 0:32 / /sys/fs/cgroup/cpuset rw,nosuid - cgroup cgroup rw,cpuset
40 25 0:35 / /sys/fs/cgroup/memory rw,nosuid,nodev - cgroup cgroup rw,memory
";
        assert_eq!(
            v1_mount(info, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            v1_mount(info, "cpu"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        let without = info.lines().take(3).collect::<Vec<_>>().join("\n");
        assert_eq!(v1_mount(&without, "memory"), None);
        assert_eq!(
            v1_mount(&info.lines().take(1).collect::<String>(), "cpu"),
            None
        );
    }
}

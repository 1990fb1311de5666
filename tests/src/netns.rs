//! Network namespaces: creating and deleting them, wiring them with veth
//! pairs, addresses, routes and sysctls, and running code inside them —
//! as a command (`ip netns exec`), as a spawned process (joined before exec,
//! see [`crate::cgroup::spawn`]) or as a closure on a thread of the test
//! itself, so the test can be the client and count exactly what it sent.

use std::{
    fs::File,
    os::fd::{AsRawFd as _, RawFd},
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
            "`{cmd} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd args…` inside namespace `ns` (`ip netns exec`, which also
/// remounts /sys for the namespace, as `ip` and `sysctl` expect).
pub fn exec(ns: &str, cmd: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", ns, cmd];
    all.extend_from_slice(args);
    sh("ip", &all)
}

/// `/run/netns/<ns>`, the handle `ip netns add` creates.
pub fn path(ns: &str) -> String {
    format!("/run/netns/{ns}")
}

/// Opens the namespace handle, for [`enter`] or `setns` in a child.
pub fn open(ns: &str) -> Result<File> {
    File::open(path(ns)).with_context(|| format!("opening network namespace {}", path(ns)))
}

/// Creates `ns` (removing a leftover of the same name from a crashed run)
/// with `lo` up: the agents' gRPC and metrics listen on 127.0.0.1.
///
/// Links made in it later skip duplicate address detection for their
/// link-local addresses too, as a node's links are long past it. A fresh
/// link-local is tentative for a second or two, and a neighbour
/// solicitation for a packet whose source is not on the link (a hostNetwork
/// proxy's socket to a VIP on `lo`, which DNAT sends to a backend) can
/// only come from it: the SYN waited in the neighbour queue past its first
/// retransmission timeout, in no field's shape.
pub fn create(ns: &str) -> Result<()> {
    delete(ns);
    sh("ip", &["netns", "add", ns])?;
    exec(ns, "ip", &["link", "set", "lo", "up"])?;
    for conf in ["all", "default"] {
        sysctl(ns, &format!("net.ipv6.conf.{conf}.accept_dad"), "0")?;
    }
    Ok(())
}

/// Deletes `ns`, and with it every interface inside (a veth's peer goes
/// too). Errors are ignored: this is the cleanup path.
pub fn delete(ns: &str) {
    if std::path::Path::new(&path(ns)).exists() {
        let _ = sh("ip", &["netns", "del", ns]);
    }
}

/// Joins two namespaces with a veth pair named `a` (in `ns_a`) and `b` (in
/// `ns_b`), both up. Names must fit IFNAMSIZ (15 characters).
pub fn veth(a: &str, ns_a: &str, b: &str, ns_b: &str) -> Result<()> {
    let _ = sh("ip", &["link", "del", a]);
    sh(
        "ip",
        &[
            "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b,
        ],
    )
    .with_context(|| format!("creating veth {a} ({ns_a}) <-> {b} ({ns_b})"))?;
    exec(ns_a, "ip", &["link", "set", a, "up"])?;
    exec(ns_b, "ip", &["link", "set", b, "up"])?;
    Ok(())
}

/// Adds `cidr` to `dev` in `ns`. IPv6 addresses skip duplicate address
/// detection (`nodad`): the lab's links are point-to-point, and a tentative
/// address would refuse to bind and route for a second or two.
pub fn addr(ns: &str, dev: &str, cidr: &str) -> Result<()> {
    let mut args = vec!["addr", "add", cidr, "dev", dev];
    if cidr.contains(':') {
        args.push("nodad");
    }
    exec(ns, "ip", &args).map(drop)
}

/// Adds the default route via `gw` (IPv4 or IPv6) in `ns`.
pub fn default_route(ns: &str, gw: &str) -> Result<()> {
    let family = if gw.contains(':') { "-6" } else { "-4" };
    exec(ns, "ip", &[family, "route", "add", "default", "via", gw]).map(drop)
}

/// Sets a sysctl inside `ns` (network sysctls are per namespace).
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    exec(ns, "sysctl", &["-qw", &format!("{key}={value}")]).map(drop)
}

/// Moves the calling thread into the namespace behind `fd`. Only that
/// thread moves; threads it creates afterwards inherit the namespace. It
/// makes a single syscall, so it is safe between fork and exec.
pub fn enter(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: setns on an fd we hold open; it affects only this thread.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a new thread that has entered `ns`, and returns its result.
/// The test's other threads stay where they are, so a test can be the
/// client of a lab without running any outside program.
pub fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let file = open(ns)?;
    let h = std::thread::spawn(move || {
        enter(file.as_raw_fd())?;
        drop(file);
        Ok::<_, std::io::Error>(f())
    });
    h.join()
        .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
        .with_context(|| format!("entering {ns}"))
}

/// Counter `name` of protocol `proto` in the text of a namespace's
/// `/proc/net/snmp` or `/proc/net/netstat`, which give each protocol two
/// lines: `Proto: names…`, then `Proto: values…`.
pub fn proc_net_counter(text: &str, proto: &str, name: &str) -> Option<u64> {
    let prefix = format!("{proto}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
}

//! What the agent needs from the host, checked before anything is loaded so
//! a missing piece is reported as one line naming it and the fix.
//!
//! Nothing here reads `/sys/class/net`: under `nsenter --net` sysfs still
//! shows the host's devices, so interfaces are queried with ioctls on a
//! socket of the agent's own network namespace.

use std::{
    ffi::{CStr, CString},
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_NET_ADMIN: u32 = 12;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Enters the network namespace at `path`. Call before any thread is spawned:
/// `setns` moves only the calling thread, and threads inherit it.
pub fn enter_netns(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| {
        format!(
            "opening network namespace {}: check --netns (ip netns list shows /run/netns/NAME)",
            path.display()
        )
    })?;
    // SAFETY: plain syscall on a valid fd.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "entering network namespace {}: {} (needs CAP_SYS_ADMIN)",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Fails unless the process holds what loading and attaching need: CAP_BPF,
/// CAP_NET_ADMIN (TC) and CAP_PERFMON (pointer reads in the verifier), or
/// CAP_SYS_ADMIN, which implies the BPF ones.
pub fn check_capabilities() -> Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| anyhow!("no CapEff line in /proc/self/status"))?;
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    let sys_admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !sys_admin {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_PERFMON) && !sys_admin {
        missing.push("CAP_PERFMON");
    }
    if !missing.is_empty() {
        bail!(
            "missing capabilities {}: run evenflow-agent as root, or grant CAP_BPF, \
             CAP_NET_ADMIN and CAP_PERFMON (e.g. setcap cap_bpf,cap_net_admin,cap_perfmon+ep)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Fails when the kernel exposes no BTF.
pub fn check_btf() -> Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing): \
             run a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        );
    }
    Ok(())
}

/// Fails on a kernel older than 6.6. Before TCX, aya attaches TC programs
/// as netlink filters, which no link holds: they cannot be pinned, so they
/// outlive the agent unseen, and each restart would add another that
/// counts every packet again.
pub fn check_kernel() -> Result<()> {
    let release = kernel_release()?;
    match kernel_version(&release) {
        Some(v) if v >= (6, 6) => Ok(()),
        Some(_) => bail!(
            "kernel {release} is older than 6.6: evenflow attaches its TC programs with TCX links \
             (6.6 and later), which stay pinned across agent restarts; run a kernel >= 6.6"
        ),
        None => bail!("cannot read the kernel version from its release {release:?}"),
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> Result<String> {
    // SAFETY: a zeroed utsname is a valid out-parameter.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return Err(std::io::Error::last_os_error()).context("uname");
    }
    // SAFETY: uname NUL-terminates the release.
    Ok(unsafe { CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}

/// Fails where the BPF JIT is off: evenflow's programs call functions of
/// their own, loop with `bpf_loop` and tail-call TC egress's drain, none
/// of which the kernel's interpreter runs (the verifier refuses them, in
/// words that do not say the JIT is the cause). Kernels built with
/// `CONFIG_BPF_JIT_ALWAYS_ON` cannot turn it off.
pub fn check_jit() -> Result<()> {
    const JIT: &str = "/proc/sys/net/core/bpf_jit_enable";
    match std::fs::read_to_string(JIT) {
        Ok(v) if !jit_on(&v) => bail!(
            "the BPF JIT is off ({JIT} reads {:?}): evenflow's eBPF programs need it (they call \
             functions of their own, loop with bpf_loop and tail-call); turn it on with \
             `sysctl -w net.core.bpf_jit_enable=1`",
            v.trim()
        ),
        // Unreadable (a /proc/sys masked by the runtime): the load says.
        _ => Ok(()),
    }
}

/// Whether `bpf_jit_enable` reads on (1, or 2: on with debug output).
fn jit_on(value: &str) -> bool {
    value.trim() != "0"
}

/// The major and minor version at the start of a kernel release string.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn fs_magic(path: &Path) -> Result<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .with_context(|| format!("path {} contains NUL", path.display()))?;
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    Ok(st.f_type as i64)
}

/// Fails unless `path` is a mounted bpffs.
pub fn check_bpffs(path: &Path) -> Result<()> {
    match fs_magic(path) {
        Ok(BPF_FS_MAGIC) => Ok(()),
        _ => bail!(
            "{} is not a mounted bpffs: mount it with `mount -t bpf bpf {}` (or run `cargo xtask setup`); \
             under `ip netns exec`, which remounts /sys, use `evenflow-agent --netns /run/netns/NAME` instead",
            path.display(),
            path.display()
        ),
    }
}

/// Fails unless `path` is a directory of a cgroup v2 hierarchy.
pub fn check_cgroup2(path: &Path) -> Result<()> {
    match fs_magic(path) {
        Ok(CGROUP2_SUPER_MAGIC) => Ok(()),
        Ok(_) => bail!(
            "--cgroup {} is not in a cgroup v2 hierarchy: pass a cgroup v2 directory, \
             or mount one with `mount -t cgroup2 none DIR`",
            path.display()
        ),
        Err(e) => bail!(
            "--cgroup {}: {e:#}: pass an existing cgroup v2 directory, \
             or mount one with `mount -t cgroup2 none DIR`",
            path.display()
        ),
    }
}

/// The mount point of the first cgroup v2 hierarchy in this mount namespace.
pub fn cgroup2_root() -> Result<PathBuf> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    info.lines()
        .find_map(|line| {
            // "<id> <parent> <maj:min> <root> <mount point> <opts> ... - <fstype> ..."
            let (pre, post) = line.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(unescape_mount))?
        })
        .ok_or_else(|| {
            anyhow!(
                "no cgroup v2 hierarchy is mounted: mount one with \
                 `mount -t cgroup2 none /sys/fs/cgroup/unified`, or pass --cgroup"
            )
        })
}

fn unescape_mount(s: &str) -> PathBuf {
    PathBuf::from(
        s.replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\134", "\\"),
    )
}

/// An interface of this network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// Index: a device deleted and created again under the same name gets
    /// another.
    pub index: u32,
    /// IFF_UP is set.
    pub up: bool,
    /// ARPHRD_* hardware type (1 = Ethernet, 772 = loopback).
    pub hw_type: u16,
}

const ARPHRD_ETHER: u16 = 1;

/// Every interface of the current network namespace.
pub fn interfaces() -> Result<Vec<Interface>> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for interface ioctls");
    }
    // SAFETY: we own fd.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: if_nameindex returns a NULL-terminated array we free below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(std::io::Error::last_os_error()).context("if_nameindex");
    }
    let mut out = Vec::new();
    let mut p = list;
    // SAFETY: walk until the terminating zero entry.
    unsafe {
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            let name = CStr::from_ptr((*p).if_name).to_string_lossy().into_owned();
            let index = (*p).if_index;
            let mut req: libc::ifreq = std::mem::zeroed();
            for (dst, src) in req
                .ifr_name
                .iter_mut()
                .zip(CStr::from_ptr((*p).if_name).to_bytes())
            {
                *dst = *src as libc::c_char;
            }
            let up = libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) == 0
                && (req.ifr_ifru.ifru_flags as i32 & libc::IFF_UP) != 0;
            let hw_type = if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) == 0 {
                req.ifr_ifru.ifru_hwaddr.sa_family
            } else {
                0
            };
            out.push(Interface {
                name,
                index,
                up,
                hw_type,
            });
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    Ok(out)
}

/// The node's unicast addresses in the current network namespace, sorted:
/// where a listener bound to `0.0.0.0` or `::` can be reached. Loopback and
/// link-local addresses are left out (no load balancer on another node
/// reaches them). The collector uses these so that a labelled wildcard
/// listener is a pool member from the first report, before (and even if
/// never) any traffic arrives: a backend that gets nothing is exactly what
/// evenflow must see.
pub fn addresses() -> Result<Vec<std::net::IpAddr>> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut out = Vec::new();
    let mut p = head;
    // SAFETY: walk the list getifaddrs returned; each ifa_addr is either
    // NULL or a sockaddr of the family it names.
    unsafe {
        while !p.is_null() {
            let sa = (*p).ifa_addr;
            if !sa.is_null() {
                match i32::from((*sa).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(sa as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(sa as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out.retain(|a| reachable_from_elsewhere(*a));
    out.sort();
    out.dedup();
    Ok(out)
}

/// Not loopback, unspecified, multicast or link-local.
fn reachable_from_elsewhere(a: std::net::IpAddr) -> bool {
    match a {
        std::net::IpAddr::V4(v) => {
            !(v.is_loopback() || v.is_unspecified() || v.is_multicast() || v.is_link_local())
        }
        std::net::IpAddr::V6(v) => {
            !(v.is_loopback()
                || v.is_unspecified()
                || v.is_multicast()
                || v.is_unicast_link_local())
        }
    }
}

/// Resolves `--iface`: the named interfaces, each checked to exist and to be
/// Ethernet (the TC programs parse Ethernet frames), or by default every
/// Ethernet interface that is up.
pub fn select_interfaces(requested: &[String]) -> Result<Vec<String>> {
    let all = interfaces()?;
    if requested.is_empty() {
        let picked = up_ethernet(&all);
        if picked.is_empty() {
            tracing::warn!(
                "no Ethernet interface is up; only sockets will be counted (sock_ops), no bytes"
            );
        }
        return Ok(picked);
    }
    let names = || {
        all.iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    requested
        .iter()
        .map(|name| {
            let iface = all.iter().find(|i| &i.name == name).ok_or_else(|| {
                anyhow!(
                    "--iface {name}: no such interface in this network namespace (have: {}); fix --iface",
                    names()
                )
            })?;
            if iface.hw_type != ARPHRD_ETHER {
                bail!(
                    "--iface {name}: not an Ethernet interface (hardware type {}); evenflow's TC programs parse \
                     Ethernet frames, so pick an Ethernet interface (loopback is not supported)",
                    iface.hw_type
                );
            }
            Ok(name.clone())
        })
        .collect()
}

/// Whether an interface named `name` exists in this network namespace.
pub fn exists(name: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a NUL-terminated name; no other precondition.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

/// Every Ethernet interface that is up in `all`: what the agent follows
/// when no `--iface` is given.
pub fn up_ethernet(all: &[Interface]) -> Vec<String> {
    all.iter()
        .filter(|i| i.up && i.hw_type == ARPHRD_ETHER)
        .map(|i| i.name.clone())
        .collect()
}

/// The sysctls that make a node pass on packets it does not terminate.
/// (`br_netfilter`'s `bridge-nf-call-iptables` is left out: it is on in
/// every namespace once the module is loaded, bridge or not. A namespace
/// that DNATs between bridge ports with IP forwarding off is not followed;
/// every Kubernetes node and Docker host forwards.)
const FORWARDING_SYSCTLS: [&str; 2] = [
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
];

/// Whether this network namespace forwards IPv4 or IPv6. A sysctl that is
/// absent (no IPv6) does not; one that cannot be read is taken to, so a
/// forwarded connection is never missed.
pub fn forwards() -> bool {
    FORWARDING_SYSCTLS
        .iter()
        .any(|path| match std::fs::read_to_string(path) {
            Ok(v) => v.trim() != "0",
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::debug!(path, error = %e, "unreadable: taken as forwarding");
                true
            }
        })
}

/// Lifts RLIMIT_MEMLOCK for kernels that still charge BPF maps to it (< 5.11).
pub fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain setrlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!(
            "could not lift RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_loopback() {
        let all = interfaces().expect("if_nameindex works");
        let lo = all.iter().find(|i| i.name == "lo").expect("lo exists");
        assert_eq!(lo.hw_type, 772);
        assert!(lo.index > 0);
        assert!(exists("lo"));
        assert!(!exists("no-such-iface"));
    }

    #[test]
    fn kernel_versions_are_read_from_releases() {
        assert_eq!(kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(kernel_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(kernel_version("6.6"), Some((6, 6)));
        assert_eq!(kernel_version("garbage"), None);
        check_kernel().expect("this machine's kernel is new enough");
    }

    #[test]
    fn the_jit_reads_off_only_at_zero() {
        assert!(jit_on("1\n"));
        assert!(jit_on("2\n"));
        assert!(!jit_on("0\n"));
        check_jit().expect("this machine runs BPF programs through the JIT");
    }

    #[test]
    fn addresses_leave_out_what_no_other_node_reaches() {
        let all = addresses().expect("getifaddrs works");
        assert!(all.iter().all(|a| reachable_from_elsewhere(*a)), "{all:?}");
        assert!(
            all.windows(2).all(|w| w[0] < w[1]),
            "sorted, unique: {all:?}"
        );
        for (a, keep) in [
            ("127.0.0.1", false),
            ("169.254.1.1", false),
            ("fe80::1", false),
            ("::1", false),
            ("10.1.2.3", true),
            ("2001:db8::1", true),
        ] {
            let ip: std::net::IpAddr = a.parse().expect("literal");
            assert_eq!(reachable_from_elsewhere(ip), keep, "{a}");
        }
    }

    #[test]
    fn unknown_interface_is_named_in_the_error() {
        let err = select_interfaces(&["nope0".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope0") && err.contains("no such interface"),
            "{err}"
        );
    }

    #[test]
    fn loopback_is_refused_when_asked_for() {
        let err = select_interfaces(&["lo".into()]).unwrap_err().to_string();
        assert!(err.contains("not an Ethernet"), "{err}");
    }

    #[test]
    fn non_cgroup_dir_is_refused() {
        let err = check_cgroup2(Path::new("/tmp")).unwrap_err().to_string();
        assert!(err.contains("not in a cgroup v2 hierarchy"), "{err}");
        let err = check_bpffs(Path::new("/tmp")).unwrap_err().to_string();
        assert!(err.contains("mount -t bpf"), "{err}");
    }
}

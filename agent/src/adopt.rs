//! Adopting the connections established before sock_ops could see them
//! (evenflow's first start on a node, or a start on fresh maps after an
//! upgrade to another map layout): the `iter/tcp` program
//! `evenflow_adopt`, run once when the agent starts, in its own network
//! namespace and then in every other one it can enter (pods'). See
//! agent-ebpf's `adopt.rs`.
//!
//! An `iter/tcp` iterator walks the namespace of the thread that opens
//! it, so a thread enters each namespace (`setns`, which takes
//! `CAP_SYS_ADMIN`) to open it there. The namespaces are the ones the
//! node's processes are in (`/proc/*/ns/net`, all of them only with the
//! host's PID namespace) and the ones `ip netns` and CNI plugins name
//! (`/run/netns`).

use std::{
    collections::HashSet,
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use agent_common::{ADOPT_ADOPTED, ADOPT_UNSUPPORTED};
use anyhow::{Context as _, Result};
use aya::Ebpf;

use crate::{btf::Btf, iter::MapIter};

const PROGRAM: &str = "evenflow_adopt";

/// The `.rodata` constants the program takes from this kernel's BTF.
pub fn offsets(btf: &Btf<'_>) -> Result<Vec<(&'static str, u32)>> {
    let off = |s: &str, m: &str| {
        btf.member_offset(s, m)
            .with_context(|| format!("finding {s}.{m} in the kernel's BTF"))
    };
    Ok(vec![
        ("SKC_DADDR", off("sock_common", "skc_daddr")?),
        ("SKC_RCV_SADDR", off("sock_common", "skc_rcv_saddr")?),
        ("SKC_V6_DADDR", off("sock_common", "skc_v6_daddr")?),
        ("SKC_V6_RCV_SADDR", off("sock_common", "skc_v6_rcv_saddr")?),
        ("SKC_DPORT", off("sock_common", "skc_dport")?),
        ("SKC_NUM", off("sock_common", "skc_num")?),
        ("SKC_FAMILY", off("sock_common", "skc_family")?),
        ("SKC_STATE", off("sock_common", "skc_state")?),
        ("SKC_NET", off("sock_common", "skc_net")?),
        (
            "SOCK_CGROUP",
            off("sock", "sk_cgrp_data")? + off("sock_cgroup_data", "cgroup")?,
        ),
        ("CGROUP_LEVEL", off("cgroup", "level")?),
        ("CGROUP_ANCESTORS", off("cgroup", "ancestors")?),
        ("CGROUP_KN", off("cgroup", "kn")?),
        ("KERNFS_NODE_ID", off("kernfs_node", "id")?),
    ])
}

/// The id of the cgroup at `path` (cgroup v2: its directory's inode).
pub fn cgroup_id(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("reading the cgroup {}", path.display()))?
        .ino())
}

/// What one run adopted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Sockets now counted: opened, their bytes from now on, their close.
    pub sockets: usize,
    /// Sockets left uncounted: this kernel cannot give them sock_ops'
    /// state callbacks.
    pub unsupported: usize,
    /// Network namespaces walked, the agent's own included.
    pub namespaces: usize,
    /// Why the other namespaces could not be entered, if they could not.
    pub unreachable: Option<String>,
}

impl Adopted {
    /// Adds what the program wrote in one namespace.
    fn tally(&mut self, out: &[u8]) {
        let count = |b| out.iter().filter(|&&x| x == b).count();
        self.sockets += count(ADOPT_ADOPTED);
        self.unsupported += count(ADOPT_UNSUPPORTED);
        self.namespaces += 1;
    }
}

/// Runs the adoption (`iter`, from [`attach`]) once, in the agent's
/// network namespace and in every other it can enter. Call it after
/// sock_ops is attached: a socket established from then on is sock_ops'
/// own, and the program leaves it alone.
pub fn run(iter: &MapIter) -> Result<Adopted> {
    let walked =
        in_each_namespace(|| iter.output()).with_context(|| format!("running {PROGRAM}"))?;
    let mut adopted = Adopted::default();
    for out in &walked.results {
        adopted.tally(out);
    }
    adopted.unreachable = walked.unreachable;
    Ok(adopted)
}

/// What [`in_each_namespace`] ran.
pub struct Walked<T> {
    /// One result per namespace walked, the agent's own first.
    pub results: Vec<T>,
    /// Why the other namespaces could not be entered, if they could not.
    pub unreachable: Option<String>,
}

/// Runs `run` in this thread's network namespace, then on one thread that
/// enters every other one it can in turn (an `iter/tcp` iterator walks
/// the namespace of the thread that opens it; one thread, not one per
/// namespace, since a walk that samples sockets runs every interval). An
/// error in its own namespace is returned; another namespace's (one that
/// went meanwhile) is skipped.
pub fn in_each_namespace<T: Send>(
    run: impl Fn() -> std::io::Result<T> + Sync,
) -> std::io::Result<Walked<T>> {
    let mut walked = Walked {
        results: vec![run()?],
        unreachable: None,
    };
    let others = other_namespaces();
    if others.is_empty() {
        return Ok(walked);
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                for ns in &others {
                    match enter(ns).and_then(|()| run()) {
                        Ok(out) => walked.results.push(out),
                        // Entering takes CAP_SYS_ADMIN: without it, none can
                        // be entered.
                        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                            walked.unreachable = Some(format!("entering {}: {e}", ns.display()));
                            break;
                        }
                        Err(e) => tracing::debug!(ns = %ns.display(), error = %e, "not walked"),
                    }
                }
            })
            .join()
            .map_err(|_| std::io::Error::other("the walking thread panicked"))
    })?;
    Ok(walked)
}

/// Moves this thread into the network namespace at `ns`.
fn enter(ns: &Path) -> std::io::Result<()> {
    let file = File::open(ns)?;
    // SAFETY: setns on a descriptor we hold open; it moves only this
    // thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Loads `evenflow_adopt` and links it.
pub fn attach(ebpf: &mut Ebpf, btf: &aya::Btf) -> Result<MapIter> {
    let fd = crate::datapath::load_iter(ebpf, btf, PROGRAM, "tcp")?;
    MapIter::attach_target(fd).with_context(|| format!("attaching {PROGRAM} (iter/tcp)"))
}

/// A path to each network namespace other than this thread's, one per
/// namespace: those of the node's processes and those named under
/// `/run/netns`.
fn other_namespaces() -> Vec<PathBuf> {
    let own = std::fs::metadata("/proc/thread-self/ns/net").map(|m| (m.dev(), m.ino()));
    let mut seen: HashSet<(u64, u64)> = own.into_iter().collect();
    let processes = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"));
    let named = ["/run/netns", "/var/run/netns"]
        .into_iter()
        .flat_map(std::fs::read_dir)
        .flatten()
        .flatten()
        .map(|e| e.path());
    processes
        .chain(named)
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| seen.insert((m.dev(), m.ino()))))
        .collect()
}

/// Whether this agent may enter network namespaces (`setns` takes
/// `CAP_SYS_ADMIN`), tried on its own.
pub fn can_enter_namespaces() -> std::io::Result<()> {
    in_namespace(Path::new("/proc/thread-self/ns/net"), &|| Ok(()))
}

/// Runs `f` on a thread that entered the network namespace at `ns`.
fn in_namespace<T: Send>(
    ns: &Path,
    f: &(impl Fn() -> std::io::Result<T> + Sync),
) -> std::io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(ns)?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the adopting thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_what_the_program_wrote() {
        let mut a = Adopted::default();
        a.tally(b"aauaa");
        a.tally(b"");
        a.tally(b"a");
        assert_eq!(
            a,
            Adopted {
                sockets: 5,
                unsupported: 1,
                namespaces: 3,
                unreachable: None,
            }
        );
    }

    /// This thread's namespace is never among the others; each of the
    /// others is listed once.
    #[test]
    fn lists_each_other_namespace_once() {
        let own = std::fs::metadata("/proc/thread-self/ns/net").expect("this thread's namespace");
        let others = other_namespaces();
        let ids: Vec<_> = others
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| (m.dev(), m.ino()))
            .collect();
        assert!(!ids.contains(&(own.dev(), own.ino())));
        let unique: HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{others:?}");
    }

    /// Every field the program reads is in this kernel's BTF.
    #[test]
    fn finds_this_kernels_socket_and_cgroup_fields() {
        let blob = std::fs::read("/sys/kernel/btf/vmlinux").expect("this kernel has BTF");
        let btf = Btf::parse(&blob).expect("parses");
        let offsets = offsets(&btf).expect("every field");
        assert_eq!(offsets.len(), 14);
        let at = |name| offsets.iter().find(|(n, _)| *n == name).map(|(_, o)| *o);
        assert_eq!(
            at("SKC_DADDR"),
            Some(0),
            "sock_common begins with skc_daddr"
        );
        assert!(at("CGROUP_ANCESTORS") > at("CGROUP_KN"));
    }
}

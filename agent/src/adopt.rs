//! Adopting the connections established before sock_ops could see them
//! (evenflow's first start on a node, or a start on fresh maps after an
//! upgrade to another map layout): the `iter/tcp` program
//! `evenflow_adopt`, run once when the agent starts, over the sockets of
//! the agent's network namespace. See agent-ebpf's `adopt.rs`.

use std::{os::fd::AsFd as _, os::unix::fs::MetadataExt as _, path::Path};

use agent_common::{ADOPT_ADOPTED, ADOPT_UNSUPPORTED};
use anyhow::{Context as _, Result};
use aya::{Ebpf, programs::Iter};

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
}

impl Adopted {
    fn tally(out: &[u8]) -> Self {
        let count = |b| out.iter().filter(|&&x| x == b).count();
        Self {
            sockets: count(ADOPT_ADOPTED),
            unsupported: count(ADOPT_UNSUPPORTED),
        }
    }
}

/// Runs the adoption once, over the sockets of this thread's network
/// namespace. Call it after sock_ops is attached: a socket established
/// from then on is sock_ops' own, and the program leaves it alone.
pub fn run(ebpf: &mut Ebpf) -> Result<Adopted> {
    let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
    let prog: &mut Iter = ebpf
        .program_mut(PROGRAM)
        .with_context(|| format!("eBPF object has no program {PROGRAM}"))?
        .try_into()
        .with_context(|| format!("{PROGRAM} is not an iterator"))?;
    prog.load("tcp", &btf)
        .with_context(|| format!("loading {PROGRAM} (iter/tcp)"))?;
    let fd = prog.fd().with_context(|| format!("{PROGRAM} has no fd"))?;
    let iter = MapIter::attach_target(fd.as_fd())
        .with_context(|| format!("attaching {PROGRAM} (iter/tcp)"))?;
    let out = iter
        .output()
        .with_context(|| format!("running {PROGRAM}"))?;
    Ok(Adopted::tally(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_what_the_program_wrote() {
        assert_eq!(
            Adopted::tally(b"aauaa"),
            Adopted {
                sockets: 4,
                unsupported: 1
            }
        );
        assert_eq!(Adopted::tally(b""), Adopted::default());
    }

    /// Every field the program reads is in this kernel's BTF.
    #[test]
    fn finds_this_kernels_socket_and_cgroup_fields() {
        let blob = std::fs::read("/sys/kernel/btf/vmlinux").expect("this kernel has BTF");
        let btf = Btf::parse(&blob).expect("parses");
        let offsets = offsets(&btf).expect("every field");
        assert_eq!(offsets.len(), 13);
        let at = |name| offsets.iter().find(|(n, _)| *n == name).map(|(_, o)| *o);
        assert_eq!(
            at("SKC_DADDR"),
            Some(0),
            "sock_common begins with skc_daddr"
        );
        assert!(at("CGROUP_ANCESTORS") > at("CGROUP_KN"));
    }
}

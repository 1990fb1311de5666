//! A foreign TCX program — not evenflow's — to sit beside evenflow's on a
//! device, as a CNI's (Cilium, Calico eBPF) would: it passes every packet on
//! (`TCX_NEXT`) and the kernel counts its runs. If a program before it in
//! the chain ended the chain, its run count would stay at zero.
//!
//! Raw `bpf(2)`: the program is two instructions, and the tests crate has
//! no eBPF toolchain of its own.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::{Context as _, Result, bail};

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_F_QUERY_EFFECTIVE: u32 = 1;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_SOCK_OPS: u32 = 13;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_CGROUP_SOCK_OPS: u32 = 3;
const BPF_CGROUP_INET_INGRESS: u32 = 0;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_F_BEFORE: u32 = 1 << 3;
const BPF_F_AFTER: u32 = 1 << 4;
/// Offset of `run_cnt` in `struct bpf_prog_info`.
const RUN_CNT_OFFSET: usize = 200;

/// `r0 = -1 (TCX_NEXT); exit`.
const PASS_ON: [u8; 16] = [
    0xb7, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x95, 0, 0, 0, 0, 0, 0, 0,
];

/// `r0 = 1; exit`: a sock_ops program that does nothing, a cgroup_skb one
/// that passes every packet.
const RETURN_ONE: [u8; 16] = [
    0xb7, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x95, 0, 0, 0, 0, 0, 0, 0,
];

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a readable and writable bpf_attr-sized buffer.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn fd(r: i64) -> OwnedFd {
    // SAFETY: the kernel returned a new descriptor we now own.
    unsafe { OwnedFd::from_raw_fd(r as i32) }
}

/// Where in a device's chain to attach.
#[derive(Clone, Copy, Debug)]
pub enum Place {
    /// Ahead of every program attached so far.
    First,
    /// Behind every program attached so far.
    Last,
}

/// The foreign program and its links; dropping it detaches them.
pub struct Neighbour {
    prog: OwnedFd,
    _links: Vec<OwnedFd>,
    /// Keeps run counting on while the neighbour lives.
    _stats: OwnedFd,
}

impl Neighbour {
    /// Loads the program and links it at `place` on ingress and egress of
    /// each interface (by index, in the calling thread's network namespace).
    pub fn attach(ifindexes: &[u32], place: Place) -> Result<Self> {
        Self::attach_insns(ifindexes, place, &PASS_ON)
    }

    /// Like [`Neighbour::attach`], but the program counts down from
    /// `iterations` before it passes the packet on: a known cost per
    /// packet, for a benchmark to check that it can see one.
    pub fn attach_spinning(ifindexes: &[u32], place: Place, iterations: u32) -> Result<Self> {
        let mut insns = vec![0xb7, 0x01, 0, 0]; // r1 = iterations
        insns.extend(iterations.to_ne_bytes());
        insns.extend([0x17, 0x01, 0, 0, 1, 0, 0, 0]); // r1 -= 1
        insns.extend([0x55, 0x01, 0xfe, 0xff, 0, 0, 0, 0]); // if r1 != 0 goto -2
        insns.extend(PASS_ON);
        Self::attach_insns(ifindexes, place, &insns)
    }

    fn attach_insns(ifindexes: &[u32], place: Place, insns: &[u8]) -> Result<Self> {
        let stats = enable_stats()?;
        let prog = load(BPF_PROG_TYPE_SCHED_CLS, insns)?;
        let flags = match place {
            Place::First => BPF_F_BEFORE,
            Place::Last => BPF_F_AFTER,
        };
        let mut links = Vec::new();
        for &ifindex in ifindexes {
            for attach_type in [BPF_TCX_INGRESS, BPF_TCX_EGRESS] {
                let mut attr = [0u8; 64];
                put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
                put_u32(&mut attr, 4, ifindex);
                put_u32(&mut attr, 8, attach_type);
                put_u32(&mut attr, 12, flags);
                let link = bpf(BPF_LINK_CREATE, &mut attr).with_context(|| {
                    format!("linking the neighbour to ifindex {ifindex} ({place:?})")
                })?;
                links.push(fd(link));
            }
        }
        Ok(Self {
            prog,
            _links: links,
            _stats: stats,
        })
    }

    /// An empty sock_ops program on the cgroup v2 directory `cgroup`: the
    /// baseline a benchmark subtracts from evenflow's sock_ops cost.
    pub fn attach_sockops(cgroup: &std::path::Path) -> Result<Self> {
        Self::attach_cgroup(cgroup, BPF_PROG_TYPE_SOCK_OPS, BPF_CGROUP_SOCK_OPS)
    }

    /// An empty cgroup_skb ingress program (it passes every packet) on
    /// the cgroup v2 directory `cgroup`: the baseline for evenflow's.
    pub fn attach_cgroup_skb(cgroup: &std::path::Path) -> Result<Self> {
        Self::attach_cgroup(cgroup, BPF_PROG_TYPE_CGROUP_SKB, BPF_CGROUP_INET_INGRESS)
    }

    /// A program of `prog_type` that returns 1 (sock_ops: done; cgroup_skb:
    /// pass), linked to `cgroup` at `attach_type`, behind whatever is there.
    fn attach_cgroup(cgroup: &std::path::Path, prog_type: u32, attach_type: u32) -> Result<Self> {
        let stats = enable_stats()?;
        let prog = load(prog_type, &RETURN_ONE)?;
        let dir =
            std::fs::File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        let mut attr = [0u8; 64];
        put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
        put_u32(&mut attr, 4, dir.as_raw_fd() as u32);
        put_u32(&mut attr, 8, attach_type);
        let link = bpf(BPF_LINK_CREATE, &mut attr).with_context(|| {
            format!(
                "linking an empty program (type {prog_type}) to {}",
                cgroup.display()
            )
        })?;
        Ok(Self {
            prog,
            _links: vec![fd(link)],
            _stats: stats,
        })
    }

    /// Mean nanoseconds per run, and runs, while stats were on.
    pub fn cost(&self) -> Result<(f64, u64)> {
        let (ns, runs) = self.stats()?;
        Ok((
            if runs == 0 {
                0.0
            } else {
                ns as f64 / runs as f64
            },
            runs,
        ))
    }

    /// How many times the kernel ran the program.
    pub fn runs(&self) -> Result<u64> {
        Ok(self.stats()?.1)
    }

    /// `run_time_ns` and `run_cnt` from the program's info (cumulative
    /// while stats are on).
    pub fn stats(&self) -> Result<(u64, u64)> {
        let mut info = [0u8; 256];
        let mut attr = [0u8; 16];
        put_u32(&mut attr, 0, self.prog.as_raw_fd() as u32);
        put_u32(&mut attr, 4, info.len() as u32);
        put_u64(&mut attr, 8, info.as_mut_ptr() as u64);
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("reading the neighbour's info")?;
        let got = u32::from_ne_bytes([attr[4], attr[5], attr[6], attr[7]]) as usize;
        if got < RUN_CNT_OFFSET + 8 {
            bail!("the kernel's bpf_prog_info ({got} bytes) has no run_cnt");
        }
        let at = |off: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&info[off..off + 8]);
            u64::from_ne_bytes(v)
        };
        Ok((at(RUN_CNT_OFFSET - 8), at(RUN_CNT_OFFSET)))
    }
}

/// Turns run statistics on while the returned descriptor is open.
fn enable_stats() -> Result<OwnedFd> {
    let mut attr = [0u8; 8];
    Ok(fd(
        bpf(BPF_ENABLE_STATS, &mut attr).context("BPF_ENABLE_STATS")?
    ))
}

/// Loads a program of `prog_type` made of `insns`.
fn load(prog_type: u32, insns: &[u8]) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog_type);
    put_u32(&mut attr, 4, (insns.len() / 8) as u32);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    attr[48..48 + 9].copy_from_slice(b"neighbour");
    Ok(fd(
        bpf(BPF_PROG_LOAD, &mut attr).context("loading the neighbour program")?
    ))
}

/// The ids of the programs on the TCX hook of the device `ifindex` (in the
/// calling thread's network namespace), ingress or egress. The kernel is
/// asked directly: the bpftool this project installs (Debian 12's 7.1)
/// lists TCX links only as "type 11", without their device.
pub fn tcx_programs(ifindex: u32, ingress: bool) -> Result<Vec<u32>> {
    let hook = if ingress {
        BPF_TCX_INGRESS
    } else {
        BPF_TCX_EGRESS
    };
    query(ifindex, hook, 0).with_context(|| format!("querying TCX on ifindex {ifindex}"))
}

/// The ids of the sock_ops programs that run for sockets of the cgroup v2
/// directory `cgroup`: its own and those it inherits from its ancestors.
pub fn sockops_programs(cgroup: &std::path::Path) -> Result<Vec<u32>> {
    let dir =
        std::fs::File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
    query(
        dir.as_raw_fd() as u32,
        BPF_CGROUP_SOCK_OPS,
        BPF_F_QUERY_EFFECTIVE,
    )
    .with_context(|| format!("querying sock_ops on {}", cgroup.display()))
}

/// `BPF_PROG_QUERY` on `target` (a device index or a cgroup descriptor).
fn query(target: u32, attach_type: u32, flags: u32) -> Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut attr = [0u8; 64];
    put_u32(&mut attr, 0, target);
    put_u32(&mut attr, 4, attach_type);
    put_u32(&mut attr, 8, flags);
    put_u64(&mut attr, 16, ids.as_mut_ptr() as u64);
    put_u32(&mut attr, 24, ids.len() as u32);
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let count = u32::from_ne_bytes([attr[24], attr[25], attr[26], attr[27]]) as usize;
    Ok(ids[..count.min(ids.len())].to_vec())
}

/// The indexes of `names` in the calling thread's network namespace.
pub fn ifindexes(names: &[String]) -> Result<Vec<u32>> {
    names
        .iter()
        .map(|name| {
            let c = std::ffi::CString::new(name.as_str())?;
            // SAFETY: a valid C string.
            match unsafe { libc::if_nametoindex(c.as_ptr()) } {
                0 => bail!("no interface {name} here"),
                idx => Ok(idx),
            }
        })
        .collect()
}

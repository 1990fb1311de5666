//! Finding conntrack's record of a connection (its `struct nf_conn`'s
//! address) from the connection's tuple, as the forwarded path's packets
//! carry it: what adopting a forwarded connection needs (see
//! [`crate::adopt_forwarded`]).
//!
//! Nothing in user space can name a record's address, and conntrack's
//! table cannot be walked from BPF without symbols this kernel may not
//! export. The `bpf_xdp_ct_lookup` kfunc finds a record by its tuple, in
//! the network namespace of the thread that runs the program. aya cannot
//! relocate kfunc calls yet, so the program is a handful of instructions
//! written here, loaded with a raw `bpf(BPF_PROG_LOAD)` and run with
//! `bpf(BPF_PROG_TEST_RUN)` on a "packet" that carries the tuple in and
//! the address out. Reading a kernel address back this way takes
//! `CAP_PERFMON` (the verifier lets the program store a pointer), which the
//! agent has.

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
};

use thiserror::Error;

use crate::{
    btf::Btf,
    sys::{
        ADD_IMM, CALL, EXIT, FP, Insn, JEQ_IMM, JGT_IMM, JGT_REG, JLT_IMM, KFUNC, LOAD_W, MOV_IMM,
        MOV_REG, STORE_B, STORE_DW, STORE_REG_DW, STORE_W, insn, kernel_btf_object, load_xdp,
        test_run,
    },
};

#[derive(Debug, Error)]
pub enum CtLookupError {
    #[error("finding conntrack's kfuncs in the kernel's BTF: {0}")]
    Btf(#[from] crate::btf::BtfError),
    #[error("reading {0}: {1}")]
    Read(&'static str, std::io::Error),
    #[error("opening nf_conntrack's BTF object (is nf_conntrack loaded?): {0}")]
    ModuleBtf(std::io::Error),
    #[error("the kernel refused the conntrack lookup program: {0}\n{1}")]
    Load(std::io::Error, String),
    #[error("running the conntrack lookup program: {0}")]
    Run(std::io::Error),
}

const XDP_PASS: i32 = 2;

/// The program's "packet": `struct bpf_sock_tuple` (IPv4's 12 bytes or
/// IPv6's 36), then the tuple's size, then where the program writes the
/// record's address (0: none).
const TUPLE_SIZE_AT: usize = 36;
const ADDRESS_AT: usize = 40;
const PACKET_LEN: usize = 64;

/// The kfuncs a [`program`] calls, by BTF id, in the BTF object at
/// `btf_index` of its `fd_array` (0: the kernel's), and the size of
/// `struct bpf_ct_opts` that object declares (12 before conntrack zones
/// were added to it, 16 since: the kfunc refuses any other).
struct Kfuncs {
    lookup: i32,
    release: i32,
    btf_index: i16,
    opts_size: i32,
}

impl Kfuncs {
    fn find(btf: &Btf<'_>, btf_index: i16) -> Result<Self, CtLookupError> {
        Ok(Self {
            lookup: btf.func_id("bpf_xdp_ct_lookup")? as i32,
            release: btf.func_id("bpf_ct_release")? as i32,
            btf_index,
            opts_size: btf.struct_size("bpf_ct_opts")? as i32,
        })
    }
}

/// `bpf_xdp_ct_lookup(ctx, tuple, size, opts, sizeof(opts))`; on a hit,
/// the record's address stored after the tuple and the reference
/// released.
fn program(k: &Kfuncs) -> [Insn; 25] {
    const PACKET: i32 = ADDRESS_AT as i32 + 8;
    const EXIT_AT: i16 = 23;
    // A jump's offset counts from the instruction after it.
    let to_exit = |from: i16| EXIT_AT - from - 1;
    [
        insn(MOV_REG, 6, 1, 0, 0),
        // The packet's bounds, checked to cover all of it.
        insn(LOAD_W, 2, 6, 0, 0),
        insn(LOAD_W, 3, 6, 4, 0),
        insn(MOV_REG, 4, 2, 0, 0),
        insn(ADD_IMM, 4, 0, 0, PACKET),
        insn(JGT_REG, 4, 3, to_exit(5), 0),
        insn(LOAD_W, 3, 2, TUPLE_SIZE_AT as i16, 0),
        insn(JGT_IMM, 3, 0, to_exit(7), 36),
        insn(JLT_IMM, 3, 0, to_exit(8), 12),
        // `struct bpf_ct_opts` on the stack (16 bytes zeroed, whichever
        // size the kernel's is): this thread's namespace
        // (BPF_F_CURRENT_NETNS), TCP, zone 0.
        insn(STORE_W, FP, 0, -16, -1),
        insn(STORE_W, FP, 0, -12, 0),
        insn(STORE_DW, FP, 0, -8, 0),
        insn(STORE_B, FP, 0, -8, libc::IPPROTO_TCP),
        insn(MOV_REG, 7, 2, 0, 0),
        insn(MOV_REG, 1, 6, 0, 0),
        insn(MOV_REG, 4, FP, 0, 0),
        insn(ADD_IMM, 4, 0, 0, -16),
        insn(MOV_IMM, 5, 0, 0, k.opts_size),
        insn(CALL, 0, KFUNC, k.btf_index, k.lookup),
        insn(JEQ_IMM, 0, 0, to_exit(19), 0),
        insn(STORE_REG_DW, 7, 0, ADDRESS_AT as i16, 0),
        insn(MOV_REG, 1, 0, 0, 0),
        insn(CALL, 0, KFUNC, k.btf_index, k.release),
        insn(MOV_IMM, 0, 0, 0, XDP_PASS),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// The loaded lookup program.
pub struct CtLookup {
    prog: OwnedFd,
    /// nf_conntrack's BTF object, where conntrack is a module: the
    /// program's kfunc calls name it.
    _module: Option<OwnedFd>,
}

impl CtLookup {
    /// Loads the program, with conntrack's kfuncs from `vmlinux` (the
    /// kernel's BTF) or, where conntrack is a module, from its BTF.
    pub fn load(vmlinux: &Btf<'_>) -> Result<Self, CtLookupError> {
        if let Ok(k) = Kfuncs::find(vmlinux, 0) {
            return Ok(Self {
                prog: load(&program(&k), None)?,
                _module: None,
            });
        }
        let blob = std::fs::read("/sys/kernel/btf/nf_conntrack")
            .map_err(|e| CtLookupError::Read("/sys/kernel/btf/nf_conntrack", e))?;
        let module = Btf::parse_split(&blob, vmlinux)?;
        // A kfunc call's offset indexes `fd_array`; 0 means the kernel's.
        let k = Kfuncs::find(&module, 1)?;
        let module_fd = kernel_btf_object("nf_conntrack").map_err(CtLookupError::ModuleBtf)?;
        let fds = [0, module_fd.as_raw_fd()];
        Ok(Self {
            prog: load(&program(&k), Some(&fds))?,
            _module: Some(module_fd),
        })
    }

    /// The address of conntrack's record of the TCP connection from
    /// `client` to `dialled` (its original direction, before translation),
    /// in the calling thread's network namespace; `None` if conntrack has
    /// none. The record may be freed the moment this returns: whoever uses
    /// the address checks it still is this connection's.
    pub fn find(
        &self,
        client: SocketAddr,
        dialled: SocketAddr,
    ) -> Result<Option<u64>, CtLookupError> {
        let mut packet = [0u8; PACKET_LEN];
        let size = tuple(&mut packet, client, dialled);
        packet[TUPLE_SIZE_AT..TUPLE_SIZE_AT + 4].copy_from_slice(&(size as u32).to_ne_bytes());
        let mut out = [0u8; PACKET_LEN];
        test_run(self.prog.as_fd(), &packet, &mut out).map_err(CtLookupError::Run)?;
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&out[ADDRESS_AT..ADDRESS_AT + 8]);
        Ok(Some(u64::from_ne_bytes(addr)).filter(|&a| a != 0))
    }
}

/// Loads the lookup program.
fn load(insns: &[Insn], fd_array: Option<&[i32; 2]>) -> Result<OwnedFd, CtLookupError> {
    load_xdp(insns, c"evenflow_ct_fnd", fd_array).map_err(|(e, log)| CtLookupError::Load(e, log))
}

/// Writes `struct bpf_sock_tuple` for `src` → `dst` at the start of
/// `packet`; returns its size (IPv4's or IPv6's member).
fn tuple(packet: &mut [u8; PACKET_LEN], src: SocketAddr, dst: SocketAddr) -> usize {
    let v6 = |a: IpAddr| match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            packet[0..4].copy_from_slice(&s.octets());
            packet[4..8].copy_from_slice(&d.octets());
            packet[8..10].copy_from_slice(&src.port().to_be_bytes());
            packet[10..12].copy_from_slice(&dst.port().to_be_bytes());
            12
        }
        (s, d) => {
            packet[0..16].copy_from_slice(&v6(s));
            packet[16..32].copy_from_slice(&v6(d));
            packet[32..34].copy_from_slice(&src.port().to_be_bytes());
            packet[34..36].copy_from_slice(&dst.port().to_be_bytes());
            36
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup() -> CtLookup {
        let blob = std::fs::read("/sys/kernel/btf/vmlinux").expect("this kernel has BTF");
        let btf = Btf::parse(&blob).expect("parses");
        CtLookup::load(&btf).expect("the verifier takes the lookup program")
    }

    /// The program loads on this kernel, and a tuple conntrack does not
    /// know finds nothing.
    #[test]
    fn finds_nothing_for_a_connection_conntrack_never_saw() {
        let found = lookup()
            .find(
                "192.0.2.1:40000".parse().expect("addr"),
                "192.0.2.2:80".parse().expect("addr"),
            )
            .expect("the program runs");
        assert_eq!(found, None);
    }

    /// A connection conntrack follows is found by its tuple, in the
    /// namespace that runs the lookup, for either family; its reverse is
    /// not a connection's original direction but is found too (conntrack
    /// finds a record by either direction's tuple).
    #[test]
    fn finds_a_followed_connections_record() {
        let ct = lookup();
        let found = crate::ctnetlink::testing::in_tracked_namespace(|| {
            ["127.0.0.1:0", "[::1]:0"].map(|at| {
                let l = std::net::TcpListener::bind(at).expect("bind");
                let server = l.local_addr().expect("addr");
                let c = std::net::TcpStream::connect(server).expect("connect");
                let client = c.local_addr().expect("addr");
                let stranger: SocketAddr = match server {
                    SocketAddr::V4(_) => "127.0.0.1:9".parse().expect("addr"),
                    SocketAddr::V6(_) => "[::1]:9".parse().expect("addr"),
                };
                let found = [
                    ct.find(client, server).expect("runs"),
                    ct.find(server, client).expect("runs"),
                    ct.find(client, stranger).expect("runs"),
                ];
                (client, server, found)
            })
        });
        for (at, (client, server, [original, reverse, other])) in ["IPv4", "IPv6"].iter().zip(found)
        {
            let addr = original.unwrap_or_else(|| panic!("{at}: the connection's record"));
            assert!(
                addr > 0xffff_0000_0000_0000,
                "{at}: a kernel address {addr:#x}"
            );
            assert_eq!(reverse, Some(addr), "{at}");
            assert_eq!(other, None, "{at}");
            // Conntrack keeps the closed connection's record a while, but
            // in that namespace only.
            assert_eq!(ct.find(client, server).expect("runs"), None, "{at}");
        }
    }

    #[test]
    fn writes_both_families_tuples() {
        let mut p = [0u8; PACKET_LEN];
        let n = tuple(
            &mut p,
            "10.0.0.1:1234".parse().expect("addr"),
            "10.0.0.2:80".parse().expect("addr"),
        );
        assert_eq!(n, 12);
        assert_eq!(&p[..12], &[10, 0, 0, 1, 10, 0, 0, 2, 4, 210, 0, 80]);
        let n = tuple(
            &mut p,
            "[fd00::1]:1234".parse().expect("addr"),
            "[fd00::2]:80".parse().expect("addr"),
        );
        assert_eq!(n, 36);
        assert_eq!((p[15], p[31], p[33], p[35]), (1, 2, 210, 80));
    }
}

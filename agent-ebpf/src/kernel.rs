//! Reading the kernel's own structures: the `struct tcp_sock` fields the
//! socket samplers and sock_ops read, and how an address is read at all.
//!
//! The samplers read the kernel's own socket counters, through a BTF
//! pointer (socket storage's iterator) or a socket's address (a slot's),
//! and the layout changes with every kernel build. The agent reads the offsets
//! from this kernel's BTF (`/sys/kernel/btf/vmlinux`) and writes them here
//! before loading; they sit in `.rodata`, which the verifier treats as
//! constants, so each read is a checked fixed-offset access. An address
//! (a slot's socket, `skb->_nfct`, conntrack's record) is read by loads
//! where the kernel casts it to read-only memory ([`rdonly_cast`], Linux
//! 6.17), else through `bpf_probe_read_kernel`.

use core::ptr::read_volatile;

use agent_common::sock_id;
use aya_ebpf::helpers::bpf_probe_read_kernel;

#[unsafe(no_mangle)]
static TCP_SOCK_BYTES_RECEIVED: u32 = 0;
#[unsafe(no_mangle)]
static TCP_SOCK_BYTES_ACKED: u32 = 0;
#[unsafe(no_mangle)]
static TCP_SOCK_SEGS_IN: u32 = 0;
#[unsafe(no_mangle)]
static TCP_SOCK_SEGS_OUT: u32 = 0;
/// `struct tcp_sock.snd_una` and `.rcv_nxt`: with the counters that move
/// with them, the socket's identity (`agent_common::sock_id`).
#[unsafe(no_mangle)]
static TCP_SOCK_SND_UNA: u32 = 0;
#[unsafe(no_mangle)]
static TCP_SOCK_RCV_NXT: u32 = 0;
/// `struct sock.sk_flags`.
#[unsafe(no_mangle)]
static SOCK_FLAGS: u32 = 0;
/// `struct tcp_sock.write_seq`: the sequence number after the last byte
/// the application wrote (and after a queued FIN).
#[unsafe(no_mangle)]
static TCP_SOCK_WRITE_SEQ: u32 = 0;

/// `struct tcp_sock.fastopen_rsk`: a passive Fast Open socket's request,
/// set until its handshake completes.
#[unsafe(no_mangle)]
static TCP_SOCK_FASTOPEN_RSK: u32 = 0;

/// 1 where the agent made this object's `bpf_rdonly_cast` calls real:
/// kernel memory is then read by plain loads (see `agent/src/direct_reads.rs`).
#[unsafe(no_mangle)]
static DIRECT_READS: u8 = 0;

/// Whether kernel memory is read by plain loads, through [`rdonly_cast`].
#[inline(always)]
pub fn direct() -> bool {
    // SAFETY: a plain static; volatile so the agent's value is used.
    unsafe { read_volatile(&DIRECT_READS) != 0 }
}

/// `bpf_rdonly_cast(addr, 0)`: `addr` as read-only memory of no type, whose
/// loads the JIT guards (a fault reads zero). The verifier replaces the
/// call with a move. Reached only where [`direct`]: elsewhere the agent
/// turned the call into a move the verifier never sees run.
#[inline(always)]
pub fn rdonly_cast(addr: u64) -> *const u8 {
    // SAFETY: the agent rewrites this call number into the kfunc's call
    // (see `RDONLY_CAST_CALL`), which takes any value and a BTF type id.
    unsafe {
        let cast: unsafe extern "C" fn(u64, u32) -> *const u8 =
            core::mem::transmute(agent_common::RDONLY_CAST_CALL as usize);
        cast(addr, 0)
    }
}

/// `SOCK_DONE` of `enum sock_flags`: set by `tcp_fin()`, when the peer's
/// FIN is taken in order (and counted in `bytes_received`); cleared only by
/// `tcp_disconnect()`.
const SOCK_DONE: u64 = 1;

/// A TCP socket's own counters.
#[derive(Copy, Clone)]
pub struct SockCounters {
    /// `bytes_received`: payload bytes received, plus one for a FIN.
    pub bytes_received: u64,
    /// `bytes_acked`: bytes the peer acknowledged, plus one for an active
    /// opener's SYN and one for an acknowledged FIN.
    pub bytes_acked: u64,
    pub segs_in: u64,
    pub segs_out: u64,
}

/// Reads the counters of the `struct tcp_sock` at `tp` (a BTF pointer from
/// `bpf_skc_to_tcp_sock`, or a socket's address cast to read-only memory).
///
/// # Safety
/// `tp` is a non-null `struct tcp_sock` BTF pointer, or a TCP socket's
/// address cast by [`rdonly_cast`].
#[inline(always)]
pub unsafe fn tcp_sock_counters(tp: *const u8) -> SockCounters {
    // SAFETY: the offsets are this kernel's (see the module comment); the
    // verifier checks each access against BTF, or the JIT guards it.
    unsafe {
        let at = |off: &u32| tp.add(read_volatile(off) as usize);
        SockCounters {
            bytes_received: read_volatile(at(&TCP_SOCK_BYTES_RECEIVED) as *const u64),
            bytes_acked: read_volatile(at(&TCP_SOCK_BYTES_ACKED) as *const u64),
            segs_in: read_volatile(at(&TCP_SOCK_SEGS_IN) as *const u32) as u64,
            segs_out: read_volatile(at(&TCP_SOCK_SEGS_OUT) as *const u32) as u64,
        }
    }
}

/// The identity of the socket at `tp` whose counters are `c`: its
/// sequence numbers, read after the counters, against them.
///
/// # Safety
/// As for [`tcp_sock_counters`].
#[inline(always)]
pub unsafe fn tcp_sock_id(tp: *const u8, c: &SockCounters) -> u64 {
    // SAFETY: as for `tcp_sock_counters`.
    unsafe {
        let at = |off: &u32| tp.add(read_volatile(off) as usize) as *const u32;
        sock_id(
            read_volatile(at(&TCP_SOCK_SND_UNA)),
            c.bytes_acked,
            read_volatile(at(&TCP_SOCK_RCV_NXT)),
            c.bytes_received,
        )
    }
}

/// Reads the counters and the identity of the socket at `sk` (a `struct
/// tcp_sock` address kept in a slot), which may have died and its memory
/// gone to another socket: counters whose identity is the owner's are the
/// owner's (loads that fault read zeroes, whose identity is no live
/// socket's but by a chance of 2^-48).
#[inline(always)]
pub fn probe_tcp_sock_counters(sk: u64) -> Option<(SockCounters, u64)> {
    if direct() {
        let tp = rdonly_cast(sk);
        // SAFETY: read-only memory whose loads the JIT guards.
        return unsafe {
            let c = tcp_sock_counters(tp);
            Some((c, tcp_sock_id(tp, &c)))
        };
    }
    // SAFETY: `bpf_probe_read_kernel` checks every address; the offsets
    // are this kernel's.
    unsafe {
        let at = |off: &u32| (sk + read_volatile(off) as u64) as *const u8;
        let c = SockCounters {
            bytes_received: bpf_probe_read_kernel(at(&TCP_SOCK_BYTES_RECEIVED) as *const u64)
                .ok()?,
            bytes_acked: bpf_probe_read_kernel(at(&TCP_SOCK_BYTES_ACKED) as *const u64).ok()?,
            segs_in: bpf_probe_read_kernel(at(&TCP_SOCK_SEGS_IN) as *const u32).ok()? as u64,
            segs_out: bpf_probe_read_kernel(at(&TCP_SOCK_SEGS_OUT) as *const u32).ok()? as u64,
        };
        let id = sock_id(
            bpf_probe_read_kernel(at(&TCP_SOCK_SND_UNA) as *const u32).ok()?,
            c.bytes_acked,
            bpf_probe_read_kernel(at(&TCP_SOCK_RCV_NXT) as *const u32).ok()?,
            c.bytes_received,
        );
        Some((c, id))
    }
}

/// Whether the peer's FIN arrived, from the socket's `SOCK_DONE` flag.
///
/// # Safety
/// `tp` is a non-null `struct tcp_sock` BTF pointer, or a full TCP
/// socket's address cast to read-only memory ([`rdonly_cast`]).
#[inline(always)]
pub unsafe fn fin_received(tp: *const u8) -> bool {
    // SAFETY: as for `tcp_sock_counters`.
    unsafe {
        let flags = read_volatile(tp.add(read_volatile(&SOCK_FLAGS) as usize) as *const u64);
        flags & (1 << SOCK_DONE) != 0
    }
}

/// Whether the socket is a Fast Open child whose handshake has not
/// completed (its request still hangs on it): counted at its creation.
///
/// # Safety
/// As for [`fin_received`].
#[inline(always)]
pub unsafe fn fast_open_child(tp: *const u8) -> bool {
    // SAFETY: as for `tcp_sock_counters`.
    unsafe {
        read_volatile(tp.add(read_volatile(&TCP_SOCK_FASTOPEN_RSK) as usize) as *const u64) != 0
    }
}

/// The socket's `write_seq`.
///
/// # Safety
/// As for [`fin_received`].
#[inline(always)]
pub unsafe fn write_seq(tp: *const u8) -> u32 {
    // SAFETY: as for `tcp_sock_counters`.
    unsafe { read_volatile(tp.add(read_volatile(&TCP_SOCK_WRITE_SEQ) as usize) as *const u32) }
}

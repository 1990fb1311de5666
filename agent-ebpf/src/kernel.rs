//! Offsets of the `struct tcp_sock` fields the socket sampler reads.
//!
//! The sampler reads the kernel's own socket counters through a BTF pointer,
//! whose layout changes with every kernel build. The agent reads the offsets
//! from this kernel's BTF (`/sys/kernel/btf/vmlinux`) and writes them here
//! before loading; they sit in `.rodata`, which the verifier treats as
//! constants, so each read is a checked fixed-offset access.

use core::ptr::read_volatile;

#[unsafe(no_mangle)]
static TCP_SOCK_BYTES_RECEIVED: u32 = 0;
#[unsafe(no_mangle)]
static TCP_SOCK_BYTES_ACKED: u32 = 0;
#[unsafe(no_mangle)]
static TCP_SOCK_SEGS_IN: u32 = 0;
#[unsafe(no_mangle)]
static TCP_SOCK_SEGS_OUT: u32 = 0;

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
/// `bpf_skc_to_tcp_sock`).
///
/// # Safety
/// `tp` is a non-null `struct tcp_sock` BTF pointer.
#[inline(always)]
pub unsafe fn tcp_sock_counters(tp: *const u8) -> SockCounters {
    // SAFETY: the offsets are this kernel's (see the module comment); the
    // verifier checks each access against BTF.
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

//! sock_ops on the node's cgroup v2: every TCP socket its processes
//! establish, opened at the handshake and closed at TCP_CLOSE, with its
//! bytes taken from the socket's own counters. No packet hook is involved,
//! so a socket is counted the same behind a bridge, across a namespace, with
//! `TCP_DEFER_ACCEPT`, Fast Open or NAT on the node, and on loopback.

use core::ptr::read_volatile;

use agent_common::{
    Direction, EndpointKey, FlowKey, PROTO_TCP, SOCK_ACTIVE, SOCK_CLOSED, SOCK_FIN_ACKED,
    SOCK_FIN_RX, SockState, Stat, v4_mapped,
};
use aya_ebpf::{
    bindings::{
        BPF_SK_STORAGE_GET_F_CREATE, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_TCP_CLOSE, BPF_TCP_CLOSE_WAIT, BPF_TCP_CLOSING, BPF_TCP_FIN_WAIT1, BPF_TCP_FIN_WAIT2,
        BPF_TCP_LAST_ACK, bpf_sock_ops,
    },
    helpers::generated::bpf_sk_storage_get,
    macros::sock_ops,
    programs::SockOpsContext,
};

use aya_log_ebpf::debug;

use crate::{
    counters::{opened, stat},
    kernel::SockCounters,
    sock::{self, Payload, SOCKS},
    tc::LOCAL_NAT,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sock_ops]
pub fn evenflow_sockops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_STATE_CB {
        on_state(&ctx);
    } else if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB || op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
    {
        on_established(&ctx, op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB);
    }
    1
}

/// The socket's storage, created when `create`.
#[inline(always)]
fn storage(ops: *mut bpf_sock_ops, create: bool) -> Option<*mut SockState> {
    // SAFETY: `sk` is a context field sock_ops may read; it is null-checked
    // before use, as the verifier requires.
    let sk = unsafe { read_volatile(&(*ops).__bindgen_anon_2.sk) };
    if sk.is_null() {
        return None;
    }
    let flags = if create {
        BPF_SK_STORAGE_GET_F_CREATE as u64
    } else {
        0
    };
    // SAFETY: a valid map and a non-null socket.
    let st = unsafe { bpf_sk_storage_get(SOCKS.as_ptr(), sk.cast(), core::ptr::null_mut(), flags) }
        as *mut SockState;
    (!st.is_null()).then_some(st)
}

/// A connection was established: count it opened towards its endpoint and
/// ask for the state callbacks that will close it.
#[inline(always)]
fn on_established(ctx: &SockOpsContext, active: bool) {
    let Some(key) = flow_key(ctx) else {
        stat(Stat::UnsupportedFamily, 1);
        return;
    };
    let endpoint = if active {
        // A SYN this socket sent may have been DNATed on the way out (a
        // hostNetwork proxy dialling a ClusterIP): then the backend is
        // where it really went.
        match LOCAL_NAT.get_ptr(&key) {
            // SAFETY: a live entry, copied out at once.
            Some(real) => unsafe { *real },
            None => endpoint(key.remote_addr, key.remote_port, Direction::SendsTo),
        }
    } else {
        endpoint(key.local_addr, key.local_port, Direction::Serves)
    };
    let Some(st) = storage(ctx.ops, true) else {
        stat(Stat::SockStorageFailed, 1);
        debug!(ctx, "evenflow: no socket storage for an established socket");
        return;
    };
    // SAFETY: live socket storage; only this socket's callbacks (serialised
    // by its lock) write these fields.
    unsafe {
        if (*st).endpoint.direction != 0 {
            return;
        }
        (*st).endpoint = endpoint;
        (*st).flags = if active { SOCK_ACTIVE } else { 0 };
    }
    opened(&endpoint);
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

/// A state change: remember the FINs, and at TCP_CLOSE add the final bytes
/// and count the close.
#[inline(always)]
fn on_state(ctx: &SockOpsContext) {
    let (old, new) = (ctx.arg(0), ctx.arg(1));
    let Some(st) = storage(ctx.ops, false) else {
        if new == BPF_TCP_CLOSE {
            stat(Stat::FlowMissingOnClose, 1);
        }
        return;
    };
    let ops = ctx.ops;
    // SAFETY: context fields sock_ops may read.
    let (bytes_received, bytes_acked, snd_una, snd_nxt, segs_in, segs_out) = unsafe {
        (
            read_volatile(&(*ops).bytes_received),
            read_volatile(&(*ops).bytes_acked),
            read_volatile(&(*ops).snd_una),
            read_volatile(&(*ops).snd_nxt),
            read_volatile(&(*ops).segs_in),
            read_volatile(&(*ops).segs_out),
        )
    };
    // SAFETY: live socket storage, written under the socket's lock.
    let flags = unsafe { &mut (*st).flags };
    if *flags & SOCK_CLOSED != 0 {
        return;
    }
    if new == BPF_TCP_CLOSE_WAIT || new == BPF_TCP_CLOSING {
        *flags |= SOCK_FIN_RX;
    } else if old == BPF_TCP_FIN_WAIT1 && new == BPF_TCP_FIN_WAIT2 {
        // Leaving FIN_WAIT1 for FIN_WAIT2 is the ACK of our FIN.
        *flags |= SOCK_FIN_ACKED;
        // SAFETY: as above.
        unsafe { (*st).rx_at_fin_wait2 = bytes_received };
    } else if new == BPF_TCP_CLOSE {
        // SAFETY: as above.
        let rx_at_fin_wait2 = unsafe { (*st).rx_at_fin_wait2 };
        // From FIN_WAIT2 only the peer's FIN moves `bytes_received` before
        // the close (an orphaned socket resets on data).
        let fin_rx = *flags & SOCK_FIN_RX != 0
            || (old == BPF_TCP_FIN_WAIT2 && bytes_received > rx_at_fin_wait2);
        // In LAST_ACK or CLOSING everything up to our FIN was sent: it was
        // acknowledged when nothing is outstanding.
        let fin_acked = *flags & SOCK_FIN_ACKED != 0
            || ((old == BPF_TCP_LAST_ACK || old == BPF_TCP_CLOSING) && snd_una == snd_nxt);
        let syn = (*flags & SOCK_ACTIVE != 0) as u64;
        *flags |= SOCK_CLOSED;
        let c = SockCounters {
            bytes_received,
            bytes_acked,
            segs_in: segs_in as u64,
            segs_out: segs_out as u64,
        };
        let p = Payload {
            rx: c.bytes_received.saturating_sub(fin_rx as u64),
            tx: c.bytes_acked.saturating_sub(syn + fin_acked as u64),
            segs_in: c.segs_in,
            segs_out: c.segs_out,
        };
        sock::fold(st, &p, true);
    }
}

#[inline(always)]
fn endpoint(addr: [u32; 4], port: u16, direction: Direction) -> EndpointKey {
    EndpointKey {
        addr,
        port,
        direction: direction as u8,
        proto: PROTO_TCP,
    }
}

/// The socket's flow key (local and remote address and port).
#[inline(always)]
fn flow_key(ctx: &SockOpsContext) -> Option<FlowKey> {
    let ops = ctx.ops;
    // Every context field is read once, up front, with volatile loads: left
    // to itself LLVM merges the IPv4 and IPv6 paths into one load through a
    // selected field pointer, which the verifier rejects ("dereference of
    // modified ctx ptr").
    // SAFETY: `ops` is the context the kernel passed; the fields are
    // readable by sock_ops programs.
    let (family, l4, r4, l6, r6, lport, rport) = unsafe {
        (
            read_volatile(&(*ops).family),
            read_volatile(&(*ops).local_ip4),
            read_volatile(&(*ops).remote_ip4),
            [
                read_volatile(&(*ops).local_ip6[0]),
                read_volatile(&(*ops).local_ip6[1]),
                read_volatile(&(*ops).local_ip6[2]),
                read_volatile(&(*ops).local_ip6[3]),
            ],
            [
                read_volatile(&(*ops).remote_ip6[0]),
                read_volatile(&(*ops).remote_ip6[1]),
                read_volatile(&(*ops).remote_ip6[2]),
                read_volatile(&(*ops).remote_ip6[3]),
            ],
            read_volatile(&(*ops).local_port),
            read_volatile(&(*ops).remote_port),
        )
    };
    let (local_addr, remote_addr) = match family {
        AF_INET => (v4_mapped(l4), v4_mapped(r4)),
        AF_INET6 => (l6, r6),
        _ => return None,
    };
    Some(FlowKey {
        local_addr,
        remote_addr,
        local_port: lport as u16,
        remote_port: remote_port(rport),
        proto: PROTO_TCP,
        _pad: [0; 3],
    })
}

/// `bpf_sock_ops.remote_port` holds the network-order port shifted into
/// the upper 16 bits on little-endian kernels (the ctx rewrite adds a
/// `<< 16`); older kernels left it in the low 16 bits.
#[inline(always)]
fn remote_port(raw: u32) -> u16 {
    if raw >> 16 != 0 {
        u32::from_be(raw) as u16
    } else {
        u16::from_be(raw as u16)
    }
}

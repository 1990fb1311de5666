//! sock_ops on the node's cgroup v2: every TCP socket its processes
//! establish, opened at the handshake and closed at TCP_CLOSE, with its
//! bytes taken from the socket's own counters, and every connection they
//! dial that never opens, counted failed. No packet hook is involved,
//! so a socket is counted the same behind a bridge, across a namespace, with
//! `TCP_DEFER_ACCEPT`, Fast Open or NAT on the node, and on loopback.

use core::ptr::read_volatile;

use agent_common::{
    Direction, EndpointKey, FlowKey, PROTO_TCP, SOCK_ACTIVE, Stat, sock_id, v4_mapped,
};
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RTO_CB, BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TCP_LISTEN_CB,
        BPF_TCP_CLOSE, BPF_TCP_CLOSING, BPF_TCP_FIN_WAIT1, BPF_TCP_FIN_WAIT2, BPF_TCP_LAST_ACK,
        BPF_TCP_LISTEN, BPF_TCP_SYN_RECV, BPF_TCP_SYN_SENT, bpf_sock,
    },
    helpers::generated::bpf_skc_to_tcp_sock,
    macros::sock_ops,
    programs::SockOpsContext,
};

use crate::{
    counters::{Traffic, add_traffic, opened, stat},
    kernel::{self, SockCounters},
    reset,
    sock::{self, Held, Payload, Scratch},
    tc,
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
    } else if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        watch(&ctx, BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG);
    } else if op == BPF_SOCK_OPS_TCP_LISTEN_CB {
        on_listen(&ctx);
    } else if op == BPF_SOCK_OPS_RTO_CB {
        on_rto(&ctx);
    }
    1
}

/// Asks for the socket's state changes, unless it has them already: at a
/// connect, so that an attempt that never opens is seen leaving `SYN_SENT`
/// for `CLOSE`; at a listen, so that every connection the listener accepts
/// has them from its creation (a child socket is a copy of its listener,
/// callback flags included, since Linux 5.10), and the handshake's run
/// calls no helper for them. A helper's return is one that CPUs
/// mitigating return-stack attacks mispredict (see docs/counting.md,
/// "Callbacks inherited").
#[inline(always)]
fn watch_states(ctx: &SockOpsContext) {
    watch(ctx, BPF_SOCK_OPS_STATE_CB_FLAG);
}

/// A listen: its accepted sockets take their callbacks from it (see
/// [`watch_states`]). Where a walk samples sockets, a connected socket's
/// retransmission-timeout callbacks say it dialled and the walk's flag that
/// it was sampled: a socket that connected (or was sampled) and then
/// listens gives up both, or each socket it accepted would carry them.
#[inline(always)]
fn on_listen(ctx: &SockOpsContext) {
    if !sock::walk_sampling() {
        watch_states(ctx);
        return;
    }
    let cb = ctx.cb_flags();
    let wanted = sock::listener_callbacks(cb);
    if cb != wanted {
        let _ = ctx.set_cb_flags(wanted as i32);
    }
}

/// Asks for the callbacks `wanted`, unless the socket has them already.
/// A connect asks for its retransmission timeouts too, so that a SYN
/// nobody answers is seen at its first (see [`on_rto`]).
#[inline(always)]
fn watch(ctx: &SockOpsContext, wanted: u32) {
    let flags = ctx.cb_flags();
    if flags & wanted != wanted {
        let _ = ctx.set_cb_flags((flags | wanted) as i32);
    }
}

/// A retransmission timeout: at a connecting socket's first (its SYN
/// went unanswered for the initial timeout, a second), the attempt is
/// counted unanswered towards where it went (its first timeout is a
/// second unless a `BPF_SOCK_OPS_TIMEOUT_INIT` program changed it),
/// seconds before its process
/// or the kernel gives it up and it is counted failed. Any other timeout
/// (a later SYN's, an open connection's) counts nothing, nor does a
/// first that already gives the attempt up (`TCP_USER_TIMEOUT` shorter
/// than it): its failure is counted at once, and having sent no SYN
/// again, it would not say it was counted unanswered (see [`on_failed`]).
/// Out of line: only a timeout gets here.
#[inline(never)]
fn on_rto(ctx: &SockOpsContext) {
    // SAFETY: a context field sock_ops may read.
    let state = unsafe { read_volatile(&(*ctx.ops).state) };
    if state != BPF_TCP_SYN_SENT || ctx.arg(0) != 0 || ctx.arg(2) != 0 {
        return;
    }
    let Some(key) = flow_key(ctx) else {
        return;
    };
    add_traffic(&towards(&key, tc::local_nat(&key)), &Traffic::unanswered());
}

/// The socket (null-checked, as the verifier requires).
#[inline(always)]
fn socket(ctx: &SockOpsContext) -> Option<*mut bpf_sock> {
    // SAFETY: `sk` is a context field sock_ops may read.
    let sk = unsafe { read_volatile(&(*ctx.ops).__bindgen_anon_2.sk) };
    (!sk.is_null()).then_some(sk)
}

/// The socket's identity for its slot (see `agent_common::sock_id`), from
/// context fields: the socket is locked, so each pair agrees. No helper
/// call: its return is one that CPUs mitigating return-stack attacks
/// mispredict, and the cookie's first call also generates it (see
/// docs/counting.md, "What the socket cookie cost").
#[inline(always)]
fn identity(ctx: &SockOpsContext) -> u64 {
    let ops = ctx.ops;
    // SAFETY: context fields sock_ops may read.
    unsafe {
        sock_id(
            read_volatile(&(*ops).snd_una),
            read_volatile(&(*ops).bytes_acked),
            read_volatile(&(*ops).rcv_nxt),
            read_volatile(&(*ops).bytes_received),
        )
    }
}

/// The socket's state: in its slot, else in socket storage (only there
/// where a walk samples sockets).
#[inline(always)]
fn held(sk: *mut bpf_sock) -> Option<Held> {
    if !sock::walk_sampling()
        && let Some(h) = sock::address(sk, Scratch::SockOps).and_then(sock::find)
    {
        return Some(h);
    }
    sock::storage(sk, false).map(Held::storage)
}

/// A connection was established: count it opened towards its endpoint and
/// ask for the state callbacks that will close it. Inline, like
/// [`on_close`]: the return from a call between BPF functions is one a CPU
/// that mitigates return-stack attacks mispredicts, and it cost the two
/// runs of a connection that work more than the instruction lines it kept
/// from the six that return at once (see docs/counting.md, "sock_ops in
/// one piece").
#[inline(always)]
fn on_established(ctx: &SockOpsContext, active: bool) {
    let Some(key) = flow_key(ctx) else {
        stat(Stat::UnsupportedFamily, 1);
        return;
    };
    let (endpoint, translated) = if active {
        let real = tc::take_local_nat(&key);
        (towards(&key, real), real.is_some())
    } else {
        (
            EndpointKey::tcp(key.local_addr, key.local_port, Direction::Serves),
            false,
        )
    };
    let flags = if active { SOCK_ACTIVE } else { 0 };
    if sock::walk_sampling() {
        let cb = ctx.cb_flags();
        if !translated && !needs_state(cb, active) {
            opened(&endpoint);
            watch(ctx, callbacks(active));
        } else if let Some(sk) = socket(ctx) {
            keep_state(ctx, sk, cb, &endpoint, active);
        }
        return;
    }
    let Some(sk) = socket(ctx) else {
        return;
    };
    let Some(addr) = sock::address(sk, Scratch::SockOps) else {
        return;
    };
    if sock::count(sk, addr, identity(ctx), &endpoint, flags, &Payload::NONE) {
        watch_states(ctx);
    }
}

/// Where a walk samples sockets, whether a socket with callbacks `cb`
/// established (`active` when it dialled) needs state from its handshake
/// though DNAT did not redirect it: one that carries the walk's flag (it
/// was sampled in an earlier connection, and connects again after
/// `connect(AF_UNSPEC)`: the flag stays, and its close looks for
/// storage), or one that opens passively with the retransmission-timeout
/// callbacks of a connect (a simultaneous open, or a connection to
/// itself), whose close would take it for one it dialled.
#[inline(always)]
fn needs_state(cb: u32, active: bool) -> bool {
    cb & sock::SAMPLED != 0 || (!active && cb & BPF_SOCK_OPS_RTO_CB_FLAG != 0)
}

/// Keeps the state of a socket established towards `endpoint` in socket
/// storage, marked sampled, where a walk samples sockets (see
/// [`needs_state`]). Storage that cannot be had leaves it uncounted, as
/// with slots: its state callbacks go, so its close counts nothing.
#[inline(never)]
fn keep_state(
    ctx: &SockOpsContext,
    sk: *mut bpf_sock,
    cb: u32,
    endpoint: &EndpointKey,
    active: bool,
) {
    let flags = if active { SOCK_ACTIVE } else { 0 };
    let wanted = if sock::count_in_storage(sk, endpoint, flags, &Payload::NONE) {
        cb & !BPF_SOCK_OPS_RTO_CB_FLAG | callbacks(active) | sock::SAMPLED
    } else {
        cb & !BPF_SOCK_OPS_STATE_CB_FLAG
    };
    if cb != wanted {
        let _ = ctx.set_cb_flags(wanted as i32);
    }
}

/// The callbacks a counted socket has: its state changes, and a dialled
/// one its retransmission timeouts too (asked for at its connect), which
/// is how its close tells it dialled where it keeps no state.
#[inline(always)]
fn callbacks(active: bool) -> u32 {
    if active {
        BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG
    } else {
        BPF_SOCK_OPS_STATE_CB_FLAG
    }
}

/// `real`, where DNAT sent the socket `key`, else where it dialled.
#[inline(always)]
fn towards(key: &FlowKey, real: Option<EndpointKey>) -> EndpointKey {
    real.unwrap_or_else(|| EndpointKey::tcp(key.remote_addr, key.remote_port, Direction::SendsTo))
}

/// A state change: at TCP_CLOSE add the final bytes and count the close,
/// or, from `SYN_SENT`, count a connection that never opened. Every other
/// change returns before touching anything: what the close needs to know
/// of the FINs is in the socket itself then; so does a listener's close,
/// which has nothing counted.
#[inline(always)]
fn on_state(ctx: &SockOpsContext) {
    if ctx.arg(1) == BPF_TCP_CLOSE {
        let old = ctx.arg(0);
        if old == BPF_TCP_SYN_SENT {
            on_failed(ctx);
        } else if old != BPF_TCP_LISTEN {
            on_close(ctx, old);
        }
    }
}

/// A connection attempt that closed in `SYN_SENT`: refused (an RST
/// answered the SYN), unanswered until the kernel gave up, or abandoned by
/// its process. Counted failed towards where it went, and said to have
/// been counted unanswered when its SYN was sent again: a SYN is only
/// retransmitted at a retransmission timeout, whose first [`on_rto`]
/// counted. Out of line: only a connection that never opened gets here.
#[inline(never)]
fn on_failed(ctx: &SockOpsContext) {
    let Some(key) = flow_key(ctx) else {
        stat(Stat::UnsupportedFamily, 1);
        return;
    };
    // SAFETY: context fields sock_ops may read.
    let retransmitted = unsafe { read_volatile(&(*ctx.ops).total_retrans) } != 0;
    let timeouts_seen = ctx.cb_flags() & BPF_SOCK_OPS_RTO_CB_FLAG != 0;
    add_traffic(
        &towards(&key, tc::take_local_nat(&key)),
        &Traffic::failed(retransmitted && timeouts_seen),
    );
}

/// TCP_CLOSE from state `old`: the socket's bytes folded into its state,
/// or, where a walk samples sockets and none sampled this one, added to
/// the endpoint its ends name. Inline, for the reason given at
/// [`on_established`].
#[inline(always)]
fn on_close(ctx: &SockOpsContext, old: u32) {
    let Some(sk) = socket(ctx) else {
        return;
    };
    let unsampled = sock::walk_sampling() && ctx.cb_flags() & sock::SAMPLED == 0;
    match (!unsampled).then(|| held(sk)).flatten() {
        Some(held) => close_held(ctx, sk, old, held),
        None if sock::walk_sampling() => close_unsampled(ctx, sk, old),
        // A child socket that closes from SYN_RECV uncounted never was a
        // connection: the copy that lost a race for its request to another
        // CPU, or one the kernel could not hash. It reports its close only
        // because it inherited its listener's callbacks.
        None if old != BPF_TCP_SYN_RECV => stat(Stat::FlowMissingOnClose, 1),
        None => {}
    }
}

/// The close of a socket with state: what it carried past its marks.
#[inline(always)]
fn close_held(ctx: &SockOpsContext, sk: *mut bpf_sock, old: u32, held: Held) {
    if !held.mark_closed() {
        return;
    }
    let p = payload(ctx, sk, old, held.flags() & SOCK_ACTIVE != 0);
    sock::fold(&held.endpoint(), held.marks, held.tag, &p, true);
    held.release();
}

/// The close of a socket no walk sampled: all it carried, to the endpoint
/// its ends name, its retransmission-timeout callbacks saying it dialled
/// (see [`callbacks`]). One closing from SYN_RECV was never counted (see
/// [`on_close`]), unless it is a Fast Open child, counted at its creation
/// and its request still on it.
#[inline(always)]
fn close_unsampled(ctx: &SockOpsContext, sk: *mut bpf_sock, old: u32) {
    // SAFETY: the socket's `tcp_sock` (see `tcp_sock`).
    if old == BPF_TCP_SYN_RECV
        && !tcp_sock(sk).is_some_and(|tp| unsafe { kernel::fast_open_child(tp) })
    {
        return;
    }
    let Some(key) = flow_key(ctx) else {
        stat(Stat::UnsupportedFamily, 1);
        return;
    };
    let active = ctx.cb_flags() & BPF_SOCK_OPS_RTO_CB_FLAG != 0;
    let endpoint = if active {
        EndpointKey::tcp(key.remote_addr, key.remote_port, Direction::SendsTo)
    } else {
        EndpointKey::tcp(key.local_addr, key.local_port, Direction::Serves)
    };
    sock::add_closed(&endpoint, &payload(ctx, sk, old, active));
}

/// The payload bytes and segments of a socket closing from `old`, `active`
/// when it dialled (its SYN is in `bytes_acked`).
#[inline(always)]
fn payload(ctx: &SockOpsContext, sk: *mut bpf_sock, old: u32, active: bool) -> Payload {
    let ops = ctx.ops;
    // SAFETY: context fields sock_ops may read.
    let (c, snd_una, snd_nxt) = unsafe {
        (
            SockCounters {
                bytes_received: read_volatile(&(*ops).bytes_received),
                bytes_acked: read_volatile(&(*ops).bytes_acked),
                segs_in: read_volatile(&(*ops).segs_in) as u64,
                segs_out: read_volatile(&(*ops).segs_out) as u64,
            },
            read_volatile(&(*ops).snd_una),
            read_volatile(&(*ops).snd_nxt),
        )
    };
    let tp = tcp_sock(sk);
    // Our FIN was acknowledged if we left FIN_WAIT1 for FIN_WAIT2 (the
    // only way there), or, from LAST_ACK or CLOSING, when everything up to
    // it is: `write_seq`, which counts the FIN, not `snd_nxt`, which
    // does not while a closed window holds the FIN back.
    let fin_acked = old == BPF_TCP_FIN_WAIT2
        || ((old == BPF_TCP_LAST_ACK || old == BPF_TCP_CLOSING)
            // SAFETY: the socket's `tcp_sock` (see `tcp_sock`).
            && tp.is_some_and(|tp| unsafe { kernel::write_seq(tp) } == snd_una));
    let reset = match tp {
        Some(tp) if snd_una != snd_nxt => {
            reset_acked(ctx, snd_una, snd_nxt, data_end(tp, old, snd_nxt))
        }
        _ => 0,
    };
    Payload {
        rx: c.bytes_received.saturating_sub(peer_fin(tp) as u64),
        tx: (c.bytes_acked + reset).saturating_sub(active as u64 + fin_acked as u64),
        segs_in: c.segs_in,
        segs_out: c.segs_out,
    }
}

/// Data the RST that closed the socket acknowledged past `snd_una`, up to
/// `data_end`, which the kernel never adds to `bytes_acked` (see
/// [`crate::reset`]). Out of line: only a close with data in flight asks.
#[inline(never)]
fn reset_acked(ctx: &SockOpsContext, snd_una: u32, snd_nxt: u32, data_end: u32) -> u64 {
    // SAFETY: a context field sock_ops may read.
    let rcv_nxt = unsafe { read_volatile(&(*ctx.ops).rcv_nxt) };
    u64::from(reset::acked(rcv_nxt, snd_una, snd_nxt, data_end))
}

/// The sequence number after the socket's last data byte, closing from
/// state `old`: one before `write_seq` where our FIN is queued (the FIN is
/// not data), else `snd_nxt`.
#[inline(always)]
fn data_end(tp: *const u8, old: u32, snd_nxt: u32) -> u32 {
    if matches!(
        old,
        BPF_TCP_FIN_WAIT1 | BPF_TCP_FIN_WAIT2 | BPF_TCP_CLOSING | BPF_TCP_LAST_ACK
    ) {
        // SAFETY: the socket's `tcp_sock` (see `tcp_sock`).
        unsafe { kernel::write_seq(tp) }.wrapping_sub(1)
    } else {
        snd_nxt
    }
}

/// Whether the peer's FIN arrived (and counts one in `bytes_received`).
#[inline(always)]
fn peer_fin(tp: Option<*const u8>) -> bool {
    // SAFETY: the socket's `tcp_sock` (see `tcp_sock`).
    tp.is_some_and(|tp| unsafe { kernel::fin_received(tp) })
}

/// The socket as a `struct tcp_sock`: read-only memory where the kernel
/// casts (a TCP socket's state callbacks run on its full socket), else a
/// BTF pointer.
#[inline(always)]
fn tcp_sock(sk: *mut bpf_sock) -> Option<*const u8> {
    if kernel::direct() {
        return Some(kernel::rdonly_cast(sk as u64));
    }
    // SAFETY: a non-null socket.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk.cast()) } as *const u8;
    (!tp.is_null()).then_some(tp)
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

//! The TC programs (TCX on kernels ≥ 6.6, clsact before).
//!
//! * Ingress notes where every SYN entering the node was going (`EF_SYNS`,
//!   a table slotted by its initial sequence number, which NAT leaves
//!   alone), so that egress can tell a translated destination (a balancing
//!   decision) from plain routing. A SYN costs one array store, every other
//!   packet a handful of loads. The agent attaches it only to a forwarding
//!   node that counts forwarded connections packet by packet: where
//!   conntrack follows them, its record tells where a SYN was headed.
//! * Egress returns at once for packets of local sockets (sock_ops counts
//!   those) — reading the socket's state, not the packet, unless the socket
//!   is connecting — after noting a local SYN that DNAT redirected;
//!   everything else goes to [`crate::forward`], and where that leaves
//!   its CPU's part of the journal past half full, to the journal's own
//!   drain ([`journal::relieve`]).
//!
//! Both return `TCX_NEXT` (`TC_ACT_UNSPEC`): the packet goes on to the next
//! program in the device's chain and then the stack, exactly as if evenflow
//! were not there, wherever evenflow sits in the chain.

use core::ptr::{read_volatile, write_volatile};

use agent_common::{
    Direction, EndpointKey, FlowKey, MAX_LOCAL_NAT, MAX_SYNS, META_LOCAL_NAT, PROTO_TCP, SynOrigin,
    SynSlot, v4_mapped,
};
use aya_ebpf::{
    bindings::{BPF_TCP_SYN_SENT, bpf_sock},
    macros::{classifier, map},
    maps::{Array, LruHashMap},
    programs::TcContext,
};

use crate::{
    counters::{meta, raise},
    forward, journal,
    packet::{Packet, Probe, Side, syn_probe, tcp_destination},
};

/// `TCX_NEXT`: pass to the next program in the chain (`TC_ACT_UNSPEC` for
/// clsact, which continues with the next filter the same way).
pub const TCX_NEXT: i32 = -1;

const AF_INET: u32 = 2;

/// Where SYNs entering the node were going, slotted by initial sequence
/// number (see [`SynSlot`]).
#[map(name = "EF_SYNS")]
pub static SYNS: Array<SynSlot> = Array::pinned(MAX_SYNS, 0);

/// The slot of a SYN with initial sequence number `isn`.
#[inline(always)]
fn syn_slot(isn: u32) -> u32 {
    isn & (MAX_SYNS - 1)
}

/// Where the SYN with initial sequence number `isn` was going when it
/// entered, if its slot still holds it. The ISN is checked before and
/// after the copy, so a slot rewritten meanwhile by another SYN (two CPUs,
/// the same low bits, the same microseconds) is not taken for this one.
#[inline(always)]
pub fn syn_origin(isn: u32) -> Option<SynOrigin> {
    let slot = SYNS.get_ptr(syn_slot(isn))?;
    // SAFETY: an array slot, valid for the map's lifetime.
    unsafe {
        if read_volatile(&raw const (*slot).isn) != isn {
            return None;
        }
        let origin = read_volatile(&raw const (*slot).origin);
        (read_volatile(&raw const (*slot).isn) == isn && origin.src_port != 0).then_some(origin)
    }
}

/// Local sockets whose SYN left with a translated destination, by the
/// socket's own flow key: sock_ops counts them towards the real backend,
/// and deletes the entry as it reads it.
#[map(name = "EF_LOCAL_NAT")]
pub static LOCAL_NAT: LruHashMap<FlowKey, EndpointKey> = LruHashMap::pinned(MAX_LOCAL_NAT, 0);

/// Where the socket `key` dialled really went, if a note says so: read
/// and deleted, so that a later connection on the same ends whose SYN
/// nothing translated does not inherit it. On a node that never noted
/// one (`META_LOCAL_NAT` unset: no local SYN was translated there) the
/// map is not looked up at all; the lookup, a cache miss, was most of
/// what a dialled connection cost sock_ops over an accepted one.
#[inline(always)]
pub fn take_local_nat(key: &FlowKey) -> Option<EndpointKey> {
    let real = local_nat(key)?;
    let _ = LOCAL_NAT.remove(key);
    Some(real)
}

/// Where the socket `key` dialled really went, if a note says so, the
/// note left in place (see [`take_local_nat`]).
#[inline(always)]
pub fn local_nat(key: &FlowKey) -> Option<EndpointKey> {
    if meta(META_LOCAL_NAT) == 0 {
        return None;
    }
    let real = LOCAL_NAT.get_ptr(key)?;
    // SAFETY: a live entry, copied out.
    Some(unsafe { *real })
}

#[classifier]
pub fn evenflow_tc_ingress(ctx: TcContext) -> i32 {
    if !matches!(syn_probe(&ctx), Probe::Other) {
        record_syn(&ctx);
    }
    TCX_NEXT
}

#[classifier]
pub fn evenflow_tc_egress(ctx: TcContext) -> i32 {
    // SAFETY: `sk` is a context field tc may read and compare with null.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        if forward::on_egress(&ctx) {
            journal::relieve(&ctx);
        }
    } else if connecting(sk) {
        note_local_nat(&ctx, sk);
    }
    TCX_NEXT
}

/// Whether a local socket is sending its SYN (`SYN_SENT`): the one state
/// in which its packets can be a SYN. Every other local packet leaves
/// without evenflow reading a byte of it.
#[inline(always)]
fn connecting(sk: *mut bpf_sock) -> bool {
    // SAFETY: `state` is a sock_common field tc may read from a non-null
    // `skb->sk`.
    unsafe { read_volatile(&(*sk).state) == BPF_TCP_SYN_SENT }
}

/// Records where an entering SYN was going. Out of line: SYNs only.
#[inline(never)]
fn record_syn(ctx: &TcContext) {
    let Some(pkt) = Packet::parse(ctx, Side::Ingress) else {
        return;
    };
    if !pkt.is_syn() {
        return;
    }
    // On ingress the key's local end is the destination.
    let key = pkt.flow_key();
    let origin = SynOrigin {
        src_addr: key.remote_addr,
        dst_addr: key.local_addr,
        src_port: key.remote_port,
        dst_port: key.local_port,
    };
    let Some(slot) = SYNS.get_ptr_mut(syn_slot(pkt.seq)) else {
        return;
    };
    // SAFETY: an array slot; the origin first, the ISN that validates it
    // last (see `syn_origin`).
    unsafe {
        write_volatile(&raw mut (*slot).isn, 0);
        write_volatile(&raw mut (*slot).origin, origin);
        write_volatile(&raw mut (*slot).isn, pkt.seq);
    }
}

/// A connecting local socket's packet, which is its SYN (a socket sends
/// nothing else in `SYN_SENT`): when it leaves for another destination
/// than the socket's own, DNAT in OUTPUT chose the backend; note it for
/// sock_ops, under the socket's own ends. Those are read from the socket,
/// not the packet: egress runs after POSTROUTING, so a masquerade or SNAT
/// there (kube-proxy masquerades the node's own traffic to a ClusterIP) has
/// rewritten the packet's source. Only the packet's destination is read:
/// its flags need no check, and a retransmitted SYN notes the same backend
/// again. Out of line: the egress program's own frame stays what every
/// other local packet needs (8 bytes, one register saved). Common header
/// shapes only (a hostNetwork proxy's SYNs carry no IP options or VLAN
/// tags here).
#[inline(never)]
fn note_local_nat(ctx: &TcContext, sk: *mut bpf_sock) {
    // Opaque to the optimiser: else it passes the caller's packet pointers
    // in as arguments, zero-extends `data_end` and the verifier refuses the
    // arithmetic on it.
    let ctx = core::hint::black_box(ctx);
    let Some((to_addr, to_port)) = tcp_destination(ctx) else {
        return;
    };
    // SAFETY: sock_common fields tc may read from a non-null `skb->sk`.
    let (family, d4, d6, dport) = unsafe {
        (
            read_volatile(&(*sk).family),
            read_volatile(&(*sk).dst_ip4),
            [
                read_volatile(&(*sk).dst_ip6[0]),
                read_volatile(&(*sk).dst_ip6[1]),
                read_volatile(&(*sk).dst_ip6[2]),
                read_volatile(&(*sk).dst_ip6[3]),
            ],
            u16::from_be(read_volatile(&(*sk).dst_port)),
        )
    };
    let dialled = if family == AF_INET { v4_mapped(d4) } else { d6 };
    if dialled == to_addr && dport == to_port {
        return;
    }
    // SAFETY: as above. `src_port` is in host order (`skc_num`).
    let (s4, s6, sport) = unsafe {
        (
            read_volatile(&(*sk).src_ip4),
            [
                read_volatile(&(*sk).src_ip6[0]),
                read_volatile(&(*sk).src_ip6[1]),
                read_volatile(&(*sk).src_ip6[2]),
                read_volatile(&(*sk).src_ip6[3]),
            ],
            read_volatile(&(*sk).src_port) as u16,
        )
    };
    let socket_key = FlowKey {
        local_addr: if family == AF_INET { v4_mapped(s4) } else { s6 },
        remote_addr: dialled,
        local_port: sport,
        remote_port: dport,
        proto: PROTO_TCP,
        _pad: [0; 3],
    };
    let backend = EndpointKey {
        addr: to_addr,
        port: to_port,
        direction: Direction::SendsTo as u8,
        proto: PROTO_TCP,
    };
    // The flag first: a handshake that finds it unset does not look.
    raise(META_LOCAL_NAT);
    let _ = LOCAL_NAT.insert(&socket_key, &backend, 0);
}

//! evenflow's eBPF programs.
//!
//! Three hooks see the three kinds of traffic a node carries (see
//! `docs/counting.md`):
//!
//! * `evenflow_sockops` (sock_ops on the node's cgroup v2) sees every TCP
//!   socket the node's processes establish: accepted connections
//!   ([`Direction::Serves`] the local listener) and connections a proxy or
//!   client opens ([`Direction::SendsTo`] the remote backend). It counts opens
//!   and closes and registers the flow so the packet hooks can attribute bytes.
//! * `evenflow_tc_egress` / `evenflow_tc_ingress` (TC on each interface) add
//!   bytes and packets to the endpoint of every registered flow, and register
//!   forwarded connections themselves: a SYN leaving the node that no local
//!   socket owns was routed through (DNAT, kube-proxy), and its post-DNAT
//!   destination is the backend.
//!
//! A connection is therefore opened and closed by exactly one hook: sockets
//! by sock_ops, forwarded flows by TC. Every program passes every packet.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

use core::ptr::read_volatile;

mod counters;
mod flow;
mod packet;

use agent_common::{
    Direction, EndpointKey, FLOW_FIN_RX, FLOW_FIN_TX, FlowKey, FlowValue, ORIGIN_FORWARDED,
    ORIGIN_SOCKET, PROTO_TCP, Stat, v4_mapped,
};
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE, TC_ACT_PIPE,
    },
    macros::{classifier, sock_ops},
    programs::{SockOpsContext, TcContext},
};
use aya_log_ebpf::debug;

use crate::{
    counters::{add_traffic, bump_connections, stat},
    flow::FLOWS,
    packet::{Packet, Side},
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Flow flag (in [`FlowValue::flags`]) set once a forwarded flow's backend
/// answered the SYN: from then on it counts as an opened connection.
const FLOW_ESTABLISHED: u8 = 4;

#[sock_ops]
pub fn evenflow_sockops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_STATE_CB
    {
        return 1;
    }
    let Some(key) = sockops_flow_key(&ctx) else {
        stat(Stat::UnsupportedFamily, 1);
        return 1;
    };
    if op == BPF_SOCK_OPS_STATE_CB {
        if ctx.arg(1) == BPF_TCP_CLOSE {
            on_socket_close(&ctx, &key);
        }
        return 1;
    }
    let endpoint = if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        EndpointKey {
            addr: key.local_addr,
            port: key.local_port,
            direction: Direction::Serves as u8,
            proto: PROTO_TCP,
        }
    } else {
        EndpointKey {
            addr: key.remote_addr,
            port: key.remote_port,
            direction: Direction::SendsTo as u8,
            proto: PROTO_TCP,
        }
    };
    let value = FlowValue {
        endpoint,
        origin: ORIGIN_SOCKET,
        flags: 0,
        _pad: [0; 2],
    };
    if flow::insert(&key, &value).is_err() {
        debug!(&ctx, "evenflow: flow map insert failed on socket establish");
    }
    bump_connections(&endpoint, 1, 0);
    // Ask for state callbacks on this socket so its close is seen.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    1
}

/// A socket reached TCP_CLOSE: count the close against the endpoint its flow
/// was registered under, and forget the flow.
fn on_socket_close(ctx: &SockOpsContext, key: &FlowKey) {
    // SAFETY: the value is copied out before the entry is removed.
    let Some(value) = (unsafe { FLOWS.get(key) }).copied() else {
        stat(Stat::FlowMissingOnClose, 1);
        debug!(ctx, "evenflow: socket closed with no flow entry");
        return;
    };
    bump_connections(&value.endpoint, 0, 1);
    flow::remove(key);
}

fn sockops_flow_key(ctx: &SockOpsContext) -> Option<FlowKey> {
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
        remote_port: sockops_remote_port(rport),
        proto: PROTO_TCP,
        _pad: [0; 3],
    })
}

/// `bpf_sock_ops.remote_port` holds the network-order port shifted into
/// the upper 16 bits on little-endian kernels (the ctx rewrite adds a
/// `<< 16`); older kernels left it in the low 16 bits.
#[inline(always)]
fn sockops_remote_port(raw: u32) -> u16 {
    if raw >> 16 != 0 {
        u32::from_be(raw) as u16
    } else {
        u16::from_be(raw as u16)
    }
}

#[classifier]
pub fn evenflow_tc_ingress(ctx: TcContext) -> i32 {
    on_packet(&ctx, Side::Ingress);
    TC_ACT_PIPE
}

#[classifier]
pub fn evenflow_tc_egress(ctx: TcContext) -> i32 {
    on_packet(&ctx, Side::Egress);
    TC_ACT_PIPE
}

#[inline(always)]
fn on_packet(ctx: &TcContext, side: Side) {
    let pkt = match Packet::parse(ctx, side) {
        Ok(Some(pkt)) => pkt,
        Ok(None) => return,
        Err(()) => {
            stat(Stat::PacketUnparsable, 1);
            return;
        }
    };
    let key = pkt.flow_key();
    if side == Side::Egress && pkt.is_syn() && !pkt.has_local_socket(ctx) {
        // A connection attempt routed through this node: no local socket owns
        // it, so it was forwarded (DNAT). Its destination is the backend.
        // SYN retransmissions find the flow already there.
        register_forwarded(ctx, key);
    }
    let Some(flow) = FLOWS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: the pointer comes from a successful lookup; the entry may be
    // replaced concurrently, in which case we count towards a stale copy of
    // the endpoint key at worst.
    let flow = unsafe { &mut *flow };
    // The endpoint key is passed to the endpoint map straight from the flow
    // entry (a map value is a valid key pointer): no copy to the stack.
    add_traffic(&flow.endpoint, side, pkt.payload_len, pkt.segments);
    if flow.origin == ORIGIN_FORWARDED && pkt.proto == PROTO_TCP {
        let endpoint = flow.endpoint;
        track_forwarded(flow, &endpoint, key, &pkt, side);
    }
}

/// Registers a forwarded flow on its first SYN (a retransmitted SYN finds
/// it there). Off the per-packet path: SYNs only.
#[inline(never)]
fn register_forwarded(ctx: &TcContext, key: &FlowKey) {
    if FLOWS.get_ptr(key).is_some() {
        return;
    }
    let value = FlowValue {
        endpoint: EndpointKey {
            addr: key.remote_addr,
            port: key.remote_port,
            direction: Direction::SendsTo as u8,
            proto: key.proto,
        },
        origin: ORIGIN_FORWARDED,
        flags: 0,
        _pad: [0; 2],
    };
    if flow::insert(key, &value).is_err() {
        debug!(ctx, "evenflow: flow map insert failed on forwarded SYN");
    }
}

/// Opens and closes forwarded TCP connections from the flags they carry: the
/// backend's SYN-ACK opens it; an RST, or a FIN from each side, closes it.
#[inline(always)]
fn track_forwarded(
    flow: &mut FlowValue,
    endpoint: &EndpointKey,
    key: &FlowKey,
    pkt: &Packet,
    side: Side,
) {
    let established = flow.flags & FLOW_ESTABLISHED != 0;
    if !established {
        if side == Side::Ingress && pkt.is_syn_ack() {
            flow.flags |= FLOW_ESTABLISHED;
            bump_connections(endpoint, 1, 0);
        } else if pkt.is_rst() {
            // Refused or reset before it was established: never opened.
            flow::remove(key);
        }
        return;
    }
    if pkt.is_rst() {
        bump_connections(endpoint, 0, 1);
        flow::remove(key);
        return;
    }
    if pkt.is_fin() {
        flow.flags |= match side {
            Side::Egress => FLOW_FIN_TX,
            Side::Ingress => FLOW_FIN_RX,
        };
        if flow.flags & (FLOW_FIN_TX | FLOW_FIN_RX) == FLOW_FIN_TX | FLOW_FIN_RX {
            bump_connections(endpoint, 0, 1);
            flow::remove(key);
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

//! cgroup_skb ingress on the node's cgroup: what every RST reaching a
//! local socket acknowledged.
//!
//! A local socket's sent bytes are what its peer acknowledged
//! (`bytes_acked`). A peer that resets the connection has often taken in
//! data it had not acknowledged yet, its ACK being delayed: HAProxy closes
//! server connections with an RST under `option httpclose` right after
//! reading the response, and a client killed mid-download resets with its
//! last segments unacknowledged. The RST's acknowledgement number says how
//! much the peer took, but the kernel ignores an RST's acknowledgement, so
//! `bytes_acked` never learns it and the server would count those bytes as
//! never sent. This program notes it, slotted by the RST's sequence number:
//! the kernel accepts an RST only at the socket's `rcv_nxt` (RFC 5961), so
//! sock_ops finds it from the socket alone at the close the RST causes, in
//! the same softirq ([`acked`]).
//!
//! It runs for every packet a local socket receives, after the kernel
//! found the socket, so it sees every socket sock_ops counts (loopback,
//! pods in their own namespaces, behind NAT) and no forwarded packet. A
//! packet too long to be a bare RST returns before a byte of it is read.
//! It never drops anything.

use core::ptr::{read_volatile, write_volatile};

use agent_common::MAX_RESETS;
use aya_ebpf::{
    macros::{cgroup_skb, map},
    maps::Array,
    programs::SkBuffContext,
};

use crate::packet;

/// cgroup_skb's verdict that lets the packet through.
const PASS: i32 = 1;

/// The longest packet that can be a kernel's RST: an IPv6 header and a TCP
/// header with the most options, or an IPv4 header with the most options
/// and a TCP header with timestamps (92; kernel RSTs carry no payload).
const MAX_RST_LEN: u32 = 40 + 60;

/// What RSTs acknowledged, `seq << 32 | ack`, slotted by `seq`'s low bits.
/// One word, stored and loaded whole: a reader never sees half of one RST
/// and half of another.
#[map(name = "EF_RESETS")]
pub static RESETS: Array<u64> = Array::pinned(MAX_RESETS, 0);

#[cgroup_skb(ingress)]
pub fn evenflow_resets(ctx: SkBuffContext) -> i32 {
    // SAFETY: a scalar context field: the packet's length from its network
    // header on.
    if unsafe { (*ctx.skb.skb).len } <= MAX_RST_LEN {
        note(&ctx);
    }
    PASS
}

/// Notes a short packet's acknowledgement if it is an RST. Inline: most
/// packets a client or a proxy receives in bulk are bare ACKs, short
/// enough to get here, and the return from a call between BPF functions
/// is one a CPU that mitigates return-stack attacks mispredicts (see
/// docs/counting.md, "The RST watcher in one piece").
#[inline(always)]
fn note(ctx: &SkBuffContext) {
    // Opaque to the optimiser, as in `tc::note_local_nat`: the verifier
    // must see the packet pointers derived here.
    let ctx = core::hint::black_box(ctx);
    let skb = ctx.skb.skb;
    // SAFETY: context fields cgroup_skb may read; `data` is the network
    // header on ingress.
    let (protocol, data, end) = unsafe {
        (
            (*skb).protocol,
            (*skb).data as usize,
            (*skb).data_end as usize,
        )
    };
    let reset = match packet::reset_at(protocol, data, end) {
        Ok(reset) => reset,
        Err(()) => packet::reset_parsed(&ctx.skb, protocol),
    };
    let Some((seq, ack)) = reset else {
        return;
    };
    if let Some(slot) = RESETS.get_ptr_mut(seq & (MAX_RESETS - 1)) {
        // SAFETY: an array slot, valid for the map's lifetime.
        unsafe { write_volatile(slot, u64::from(seq) << 32 | u64::from(ack)) };
    }
}

/// The acknowledgement number of the RST with sequence number `seq`, if
/// its slot still holds it.
#[inline(always)]
fn ack_of(seq: u32) -> Option<u32> {
    let slot = RESETS.get_ptr(seq & (MAX_RESETS - 1))?;
    // SAFETY: an array slot, valid for the map's lifetime.
    let word = unsafe { read_volatile(slot) };
    ((word >> 32) as u32 == seq).then_some(word as u32)
}

/// Data bytes past `snd_una` that the RST this socket accepted
/// acknowledged: 0 when none was noted or its acknowledgement is not one
/// this socket could get (before `snd_una`, past `snd_nxt`). `data_end`
/// is the sequence number after the socket's last data byte when its FIN
/// is queued (the FIN is not data), else `snd_nxt`.
///
/// The RST's sequence number is `rcv_nxt`, or one less when the peer's FIN
/// came first (the kernel accepts either then).
#[inline(always)]
pub fn acked(rcv_nxt: u32, snd_una: u32, snd_nxt: u32, data_end: u32) -> u32 {
    let Some(ack) = ack_of(rcv_nxt).or_else(|| ack_of(rcv_nxt.wrapping_sub(1))) else {
        return 0;
    };
    let flight = snd_nxt.wrapping_sub(snd_una);
    let acked = ack.wrapping_sub(snd_una);
    if acked > flight {
        return 0;
    }
    let data = data_end.wrapping_sub(snd_una);
    if (data as i32) < 0 {
        return 0;
    }
    acked.min(data)
}

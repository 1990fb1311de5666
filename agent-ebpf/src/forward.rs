//! Forwarded connections: ones this node routes but does not terminate, and
//! whose destination it translated (DNAT: nftables, iptables, kube-proxy).
//! Those are balancing decisions; a connection merely routed through (to a
//! local pod, across an overlay) is not, and is never tracked.
//!
//! Where the agent found conntrack, a connection is followed in
//! conntrack's record of it (see [`crate::ct_flow`]) and one without a
//! record is not tracked at all: nothing translated it through netfilter.
//! This module counts connections packet by packet where the agent found
//! no conntrack, or was told to (`--forwarded-per-packet`).
//!
//! Each such connection is two entries in `EF_FLOWS`, one per direction,
//! both counted where the packets leave the node (see [`FlowValue`]): one
//! lookup per packet, which counts its bytes by sequence number and stamps
//! it for idle expiry. A connection opens when the client acknowledges the
//! backend's SYN-ACK (a half-open one never opens), and ends at an RST, at
//! a FIN each way, or when the sweeper finds it idle past conntrack's
//! timeout. Its bytes reach the endpoint when it ends and whenever the
//! sweeper runs.

use core::ptr::read_volatile;

use agent_common::{
    Direction, EndpointKey, FLOW_FIN_RX, FLOW_FIN_TX, FLOW_OPEN, FLOW_SYNACK, FlowKey, FlowValue,
    HALF_REPLY, HALF_REQUEST, MAX_FLOWS, META_TIMEOUT_CLOSING_NS, META_TIMEOUT_ESTABLISHED_NS,
    META_TIMEOUT_SYN_NS, PROTO_TCP, Stat, TAG_SHIFT, UNANSWERED_AFTER_NS, flow_tag,
};
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::map,
    maps::HashMap,
    programs::TcContext,
};

use aya_log_ebpf::debug;

use crate::{
    atomic, conntrack,
    counters::{Traffic, add_traffic, insert_failed, meta, opened, stat},
    ct_flow,
    packet::{Packet, Probe, Side, may_change_state, syn_probe},
    tc::syn_origin,
};

/// State bit of either half: its sequence numbers are known (the request's
/// from the SYN, the reply's from the SYN-ACK), so its bytes can be counted.
const SEQ_KNOWN: u8 = 16;

/// State bit of a request half: the client sent more than SYNs though no
/// SYN-ACK of its connection was seen (it left through a device without
/// the program), so it was counted open then, and its replies go
/// uncounted; counted once in `Stat::ReplyUnseen` (see
/// [`answered_unseen`]).
const REPLY_UNSEEN: u8 = 32;

/// A reply half's `next_seq` before its SYN-ACK, once its attempt was
/// counted unanswered (see [`note_unanswered`]).
const UNANSWERED_MARK: u64 = 1;

/// A reply half's `next_seq` before its SYN-ACK, once its attempt ended
/// uncounted as unanswered: the sweep can no longer count it (see
/// [`was_unanswered`]).
const ENDED_MARK: u64 = 2;

/// State bit of a reply half: its attempt was counted unanswered before
/// its SYN-ACK came, whose sequence number took the place of the mark.
const WAS_UNANSWERED: u8 = 64;

/// Live forwarded connections counted packet by packet, two halves each.
/// Not preallocated: its memory grows with the connections tracked. A
/// deleted entry goes to the next insert on its CPU at once, so what the
/// sweeper writes is tagged (see [`TAG_SHIFT`]).
#[map(name = "EF_FLOWS")]
pub static FLOWS: HashMap<FlowKey, FlowValue> = HashMap::pinned(MAX_FLOWS, BPF_F_NO_PREALLOC);

/// A packet leaving the node without a local socket. Inline, with only
/// the header probe most packets of a followed connection need: a call
/// between BPF functions costs more than the instruction lines it keeps
/// off the local sockets' path (see docs/counting.md), so the work a packet
/// may need beyond it, and its stack, is one call away. Returns whether
/// the packet left its CPU's part of the journal past half full.
#[inline(always)]
pub fn on_egress(ctx: &TcContext) -> bool {
    if conntrack::followed() {
        // The packet's headers are read before its conntrack record: most
        // packets change no state, and those are done without reading
        // `skb->_nfct`.
        return may_change_state(ctx) && on_conntrack_packet(ctx);
    }
    on_packet(ctx);
    false
}

/// A packet of a forwarded connection counted packet by packet. Out of
/// line: inlined, its parsed packet would make the program's own frame,
/// which every local socket's packet sets up, 168 bytes instead of 8, and
/// save four registers more.
#[inline(never)]
fn on_packet(ctx: &TcContext) {
    // Opaque to the optimiser, as in `tc::note_local_nat`.
    let ctx = core::hint::black_box(ctx);
    let Some(pkt) = Packet::parse_tcp(ctx, Side::Egress) else {
        return;
    };
    // A SYN is nearly always a new connection: registering it is tried
    // first, which spares the lookup that would miss.
    if pkt.is_syn() && register(ctx, &pkt) {
        return;
    }
    if let Some(f) = FLOWS.get_ptr_mut(pkt.flow_key()) {
        on_flow_packet(ctx, f, &pkt);
    }
}

/// A packet that may change its connection's state, where conntrack
/// follows forwarded connections. Returns whether its CPU's part of the
/// journal is past half full. Out of line, for the same reason as
/// [`on_packet`], with everything it does inlined: one call for a packet
/// of a common shape (a VLAN tag, IPv4 options or IPv6 extension headers
/// add the general parser's).
#[inline(never)]
fn on_conntrack_packet(ctx: &TcContext) -> bool {
    // Opaque to the optimiser, as in `tc::note_local_nat`.
    let ctx = core::hint::black_box(ctx);
    if let Some(ct) = conntrack::of_packet(ctx) {
        return ct_flow::on_packet(ctx, ct);
    }
    if matches!(syn_probe(ctx), Probe::Syn) {
        // Conntrack does not follow this connection, so nothing translated
        // it through netfilter: it is routed (or NATed some other way,
        // which `--forwarded-per-packet` counts).
        stat(Stat::SynRouted, 1);
    }
    false
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: a scalar context field.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// A packet of a tracked half: counted, then on to [`on_state`] if it may
/// change the connection's state.
#[inline(always)]
fn on_flow_packet(ctx: &TcContext, f: *mut FlowValue, pkt: &Packet) {
    // SAFETY: a live entry. Two CPUs writing one half at once (one flow's
    // packets leaving on two queues) could lose an increment; a flow's
    // packets in one direction are serialised in practice.
    let f = unsafe { &mut *f };
    let completes_handshake = count_packet(ctx, f, pkt);
    if (pkt.has_state_flags() || completes_handshake) && on_state(f, pkt) {
        let _ = register(ctx, pkt);
    }
}

/// Counts a packet of a half: its new bytes (by
/// sequence number, on whichever device: a bridge and its port see the
/// same bytes, and a retransmission adds nothing), its segments on the
/// half's own device only. Returns whether it is the handshake's last ACK.
#[inline(always)]
fn count_packet(ctx: &TcContext, f: &mut FlowValue, pkt: &Packet) -> bool {
    let dev = ifindex(ctx);
    if f.ifindex == 0 {
        f.ifindex = dev;
    }
    // Bytes are how far the highest sequence number moved: a segment
    // that passes after an earlier one was lost (dropped before egress)
    // counts the gap too, which its retransmission then finds counted.
    if pkt.payload_len != 0 && f.state & SEQ_KNOWN != 0 {
        let end = pkt.data_seq().wrapping_add(pkt.payload_len as u32);
        let ahead = end.wrapping_sub(f.next_seq) as i32;
        if ahead > 0 {
            f.bytes += ahead as u64;
            f.next_seq = end;
        }
    }
    if f.half == HALF_REQUEST
        && f.state & (FLOW_SYNACK | REPLY_UNSEEN) == 0
        && !pkt.is_syn()
        && !pkt.is_rst()
    {
        answered_unseen(f);
    }
    if f.ifindex == dev {
        f.packets += pkt.segments;
        // SAFETY: no arguments.
        f.last_seen_ns = unsafe { bpf_ktime_get_coarse_ns() };
    }
    f.half == HALF_REQUEST && f.state & (FLOW_SYNACK | FLOW_OPEN) == FLOW_SYNACK && pkt.is_ack()
}

/// A client's packet other than a SYN or an RST though no SYN-ACK of its
/// connection was seen: a client waiting on its SYN sends nothing else, so
/// the backend answered through a device without the program (asymmetric
/// routing). The connection is counted open now, and in
/// `Stat::ReplyUnseen` (its replies go uncounted), once. Out of line:
/// once a connection, and only where replies leave unseen.
#[inline(never)]
fn answered_unseen(f: &mut FlowValue) {
    f.state |= REPLY_UNSEEN | FLOW_OPEN;
    opened(&f.endpoint);
    stat(Stat::ReplyUnseen, 1);
}

/// SYN, SYN-ACK, FIN, RST and the handshake's last ACK. Out of line: a few
/// packets per connection. Returns whether the packet starts a new
/// connection on the tuple, to be registered by the caller (which keeps
/// the call chain, and so the stack, short).
#[inline(never)]
fn on_state(f: &mut FlowValue, pkt: &Packet) -> bool {
    // Both halves carry the connection's tag.
    let tag = f.tag;
    if f.half == HALF_REQUEST {
        if pkt.is_syn() {
            // A SYN with a new initial sequence number on a tracked 5-tuple
            // is a new connection: the old one is over.
            if pkt.seq != f.isn {
                end(f, u64::from(tag), pkt.flow_key());
                return true;
            }
            return false;
        }
        if pkt.is_rst() {
            end(f, u64::from(tag), pkt.flow_key());
            return false;
        }
        if f.state & (FLOW_SYNACK | FLOW_OPEN) == FLOW_SYNACK && pkt.is_ack() {
            f.state |= FLOW_OPEN;
            opened(&f.endpoint);
        }
        if pkt.is_fin() {
            f.state |= FLOW_FIN_TX;
            if f.state & FLOW_FIN_RX != 0 {
                end(f, u64::from(tag), pkt.flow_key());
            }
        }
        return false;
    }
    if pkt.is_syn_ack() {
        if f.state & SEQ_KNOWN == 0 {
            f.isn = pkt.seq;
            learn_next_seq(f, u64::from(tag), pkt.seq.wrapping_add(1));
            f.state |= SEQ_KNOWN;
        }
        if let Some(req) = FLOWS.get_ptr_mut(&f.peer) {
            // SAFETY: a live entry.
            unsafe { (*req).state |= FLOW_SYNACK };
        }
        return false;
    }
    let request_key = f.peer;
    let Some(req) = FLOWS.get_ptr_mut(&request_key) else {
        return false;
    };
    // SAFETY: a live entry.
    let req = unsafe { &mut *req };
    if pkt.is_rst() {
        end(req, u64::from(tag), &request_key);
    } else if pkt.is_fin() {
        req.state |= FLOW_FIN_RX;
        if req.state & FLOW_FIN_TX != 0 {
            end(req, u64::from(tag), &request_key);
        }
    }
    false
}

/// Starts tracking a SYN leaving with no local socket, if this node
/// translated its destination (TC ingress noted where it was headed).
/// Returns false only when its 5-tuple is tracked already (a
/// retransmission, or a new connection on it, for the caller to look up).
/// Out of line: SYNs only.
#[inline(never)]
fn register(ctx: &TcContext, pkt: &Packet) -> bool {
    let Some(origin) = syn_origin(pkt.seq) else {
        stat(Stat::SynOriginUnknown, 1);
        return true;
    };
    let key = pkt.flow_key();
    if origin.dst_addr == key.remote_addr && origin.dst_port == key.remote_port {
        stat(Stat::SynRouted, 1);
        return true;
    }
    let reply_key = FlowKey {
        local_addr: origin.dst_addr,
        remote_addr: origin.src_addr,
        local_port: origin.dst_port,
        remote_port: origin.src_port,
        proto: PROTO_TCP,
        _pad: [0; 3],
    };
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let data_end = pkt.data_seq().wrapping_add(pkt.payload_len as u32);
    let tag = flow_tag(pkt.seq, key.local_port);
    let mut v = FlowValue {
        endpoint: EndpointKey {
            addr: key.remote_addr,
            port: key.remote_port,
            direction: Direction::SendsTo as u8,
            proto: PROTO_TCP,
        },
        half: HALF_REQUEST,
        state: SEQ_KNOWN,
        _pad: [0; 2],
        ifindex: ifindex(ctx),
        isn: pkt.seq,
        next_seq: data_end,
        tag: tag as u32,
        // A Fast Open SYN carries data.
        bytes: pkt.payload_len,
        packets: pkt.segments,
        folded_bytes: tag << TAG_SHIFT,
        folded_packets: tag << TAG_SHIFT,
        last_seen_ns: now,
        peer: reply_key,
    };
    match FLOWS.insert(key, &v, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // -EEXIST.
        Err(-17) => return false,
        Err(e) => {
            insert_failed(e, Stat::FlowInsertFailed, Stat::FlowNoMemory);
            debug!(ctx, "evenflow: flow map insert failed on a forwarded SYN");
            return true;
        }
    }
    v.half = HALF_REPLY;
    v.state = 0;
    v.ifindex = 0;
    v.isn = 0;
    v.next_seq = 0;
    v.bytes = 0;
    v.packets = 0;
    v.peer = *key;
    if let Err(e) = FLOWS.insert(&reply_key, &v, 0) {
        let _ = FLOWS.remove(key);
        insert_failed(e, Stat::FlowInsertFailed, Stat::FlowNoMemory);
        return true;
    }
    stat(Stat::FlowInserted, 1);
    true
}

/// The sweeper's visit to a half under `key`: adds what the half carried
/// since the last fold, and ends a connection idle past its timeout.
///
/// The entry can be deleted and given to another half while the sweeper
/// holds it (see [`TAG_SHIFT`]): its tag is read first and checked again
/// once the key and the endpoint are copied, and the folds expect it.
#[inline(always)]
pub fn sweep(key: *const FlowKey, f: &mut FlowValue) {
    // SAFETY: fields of the element being visited.
    let (tag, key, endpoint, half) = unsafe {
        (
            read_volatile(&f.tag),
            read_volatile(key),
            read_volatile(&f.endpoint),
            read_volatile(&f.half),
        )
    };
    // SAFETY: as above.
    if unsafe { read_volatile(&f.tag) } != tag {
        return;
    }
    let tag = u64::from(tag);
    add_traffic(&endpoint, &unfolded(f, tag, half));
    if half == HALF_REQUEST {
        let reply = FLOWS.get_ptr_mut(&f.peer);
        if let Some(reply) = reply {
            // SAFETY: a live (or just reused) entry.
            note_unanswered(f.state, unsafe { &mut *reply }, tag, &endpoint);
        }
        expire_if_idle(f, tag, &key, reply);
    }
}

/// Counts the attempt whose request half holds `req_state` unanswered,
/// once, when its SYN has waited [`UNANSWERED_AFTER_NS`] and the backend
/// sent nothing back: no SYN-ACK (`FLOW_SYNACK`), nothing but SYNs from
/// the client (which sends more only once answered: [`REPLY_UNSEEN`]),
/// and no SYN-ACK through the reply half, whose `last_seen_ns` holds the
/// SYN's time until its first packet. The once-only mark is the reply half's `next_seq`, unused
/// until a SYN-ACK gives it a sequence number (and overwrites the mark):
/// one compare-and-swap of it and the half's tag beside it, so the mark is
/// set once, and never on an entry that went to another connection.
#[inline(always)]
fn note_unanswered(req_state: u8, reply: &mut FlowValue, tag: u64, endpoint: &EndpointKey) {
    // SAFETY: fields of a live (or just reused) entry.
    let (state, syn_ns) = unsafe {
        (
            read_volatile(&reply.state),
            read_volatile(&reply.last_seen_ns),
        )
    };
    if req_state & (FLOW_SYNACK | FLOW_OPEN | REPLY_UNSEEN) != 0 || state & SEQ_KNOWN != 0 {
        return;
    }
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(syn_ns) < UNANSWERED_AFTER_NS {
        return;
    }
    let unmarked = tag << 32;
    // SAFETY: `next_seq` and `tag` share an aligned word
    // (`agent_common::FlowValue`'s layout test).
    let word = (&raw mut reply.next_seq).cast::<u64>();
    if unsafe { atomic::cmpxchg(word, unmarked, unmarked | UNANSWERED_MARK) } == unmarked {
        add_traffic(endpoint, &Traffic::unanswered());
    }
}

/// Sets the reply half `f`'s `next_seq` from its SYN-ACK, where the
/// sweep may be marking its attempt unanswered at the same moment: the
/// mark the SYN-ACK replaces is kept as [`WAS_UNANSWERED`], so that a
/// failure after it (a SYN-ACK that came after the client gave up, which
/// its kernel resets) is said to have been counted unanswered.
#[inline(always)]
fn learn_next_seq(f: &mut FlowValue, tag: u64, next_seq: u32) {
    let unmarked = tag << 32;
    // SAFETY: `next_seq` and `tag` share an aligned word
    // (`agent_common::FlowValue`'s layout test).
    let word = (&raw mut f.next_seq).cast::<u64>();
    let found = unsafe { atomic::cmpxchg(word, unmarked, unmarked | u64::from(next_seq)) };
    if found != unmarked {
        // Marked: the sweep marks only an unmarked word, so a plain store
        // loses nothing now.
        if found == unmarked | UNANSWERED_MARK {
            f.state |= WAS_UNANSWERED;
        }
        f.next_seq = next_seq;
    }
}

/// Whether [`note_unanswered`] counted the attempt whose reply half, tagged
/// `tag`, is `reply`, which ends failed: its mark, or, where no mark is
/// there yet, the ending mark in its place, so that a sweep racing this
/// end counts nothing after it.
#[inline(always)]
fn was_unanswered(reply: &mut FlowValue, tag: u64) -> bool {
    // SAFETY: fields of a live (or just reused) entry.
    let (state, its_tag) = unsafe { (read_volatile(&reply.state), read_volatile(&reply.tag)) };
    let kept = (state & WAS_UNANSWERED != 0) & (u64::from(its_tag) == tag);
    let unmarked = tag << 32;
    // SAFETY: as in `note_unanswered`. Where a SYN-ACK came, the word
    // holds its sequence number, and the swap changes nothing.
    let word = (&raw mut reply.next_seq).cast::<u64>();
    let found = unsafe { atomic::cmpxchg(word, unmarked, unmarked | ENDED_MARK) };
    kept | (found == unmarked | UNANSWERED_MARK)
}

/// What the half tagged `tag` carried since the last fold, marked folded
/// (racing folders each take only what they raised the marks by; nothing
/// once the entry holds another half).
#[inline(always)]
fn unfolded(f: &mut FlowValue, tag: u64, half: u8) -> Traffic {
    const TAG_BITS: u32 = 64 - TAG_SHIFT;
    // SAFETY: fields of a live (or just reused) entry.
    let (bytes, packets) = unsafe {
        (
            atomic::raise_tagged(&raw mut f.folded_bytes, tag, TAG_BITS, f.bytes).unwrap_or(0),
            atomic::raise_tagged(&raw mut f.folded_packets, tag, TAG_BITS, f.packets).unwrap_or(0),
        )
    };
    if half == HALF_REQUEST {
        Traffic {
            bytes_tx: bytes,
            packets_tx: packets,
            ..Traffic::default()
        }
    } else {
        Traffic {
            bytes_rx: bytes,
            packets_rx: packets,
            ..Traffic::default()
        }
    }
}

/// Ends the connection whose request half is `req` (under `req_key`):
/// folds both halves, counts the close if it had opened (its failure if
/// it never did), forgets both.
/// Removing the request half is the claim: of two CPUs ending one
/// connection at once, only one succeeds.
#[inline(never)]
fn end(req: &mut FlowValue, tag: u64, req_key: &FlowKey) {
    // Copied before the removal, after which the entry may go to the next
    // half inserted on this CPU (the tagged folds below then fail).
    let (reply_key, endpoint, state) = (req.peer, req.endpoint, req.state);
    if FLOWS.remove(req_key).is_err() {
        return;
    }
    // Both halves count towards the same endpoint: one update for both and
    // the close.
    let mut t = unfolded(req, tag, HALF_REQUEST);
    t.conns_closed = (state & FLOW_OPEN != 0) as u64;
    t.conns_failed = 1 - t.conns_closed;
    if let Some(reply) = FLOWS.get_ptr_mut(&reply_key) {
        // SAFETY: a live entry.
        let reply = unsafe { &mut *reply };
        let r = unfolded(reply, tag, HALF_REPLY);
        t.bytes_rx = r.bytes_rx;
        t.packets_rx = r.packets_rx;
        t.conns_failed_unanswered = t.conns_failed & was_unanswered(reply, tag) as u64;
    }
    add_traffic(&endpoint, &t);
    let _ = FLOWS.remove(&reply_key);
    stat(Stat::FlowDeleted, 1);
}

/// Ends a connection conntrack does not follow once it has idled longer
/// than conntrack would keep it in its state (timeouts the agent copied
/// from conntrack's sysctls).
#[inline(always)]
fn expire_if_idle(req: &mut FlowValue, tag: u64, req_key: &FlowKey, reply: Option<*mut FlowValue>) {
    let reply_seen = match reply {
        // SAFETY: a live entry.
        Some(r) => unsafe { (*r).last_seen_ns },
        None => 0,
    };
    let last = req.last_seen_ns.max(reply_seen);
    let timeout = if req.state & FLOW_OPEN == 0 {
        meta(META_TIMEOUT_SYN_NS)
    } else if req.state & (FLOW_FIN_TX | FLOW_FIN_RX) != 0 {
        meta(META_TIMEOUT_CLOSING_NS)
    } else {
        meta(META_TIMEOUT_ESTABLISHED_NS)
    };
    // The fine clock: tracing programs may not read the coarse one. The
    // coarse clock the TC programs stamp with lags it by a tick at most.
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if timeout != 0 && now.saturating_sub(last) > timeout && still_under(req_key, tag) {
        end(req, tag, req_key);
        stat(Stat::FlowExpired, 1);
    }
}

/// Whether the half under `key` is still the connection tagged `tag`. The
/// end removes by key: had a packet ended this connection since the
/// sweeper read it and a new one registered on the same addresses and
/// ports, the removal would take the new one's entries instead.
#[inline(always)]
fn still_under(key: &FlowKey, tag: u64) -> bool {
    // SAFETY: a field of a live (or just reused) entry.
    FLOWS
        .get_ptr(key)
        .is_some_and(|f| u64::from(unsafe { read_volatile(&(*f).tag) }) == tag)
}

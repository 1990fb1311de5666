//! Forwarded connections conntrack follows: any the node translated through
//! netfilter (nftables, iptables, kube-proxy). Every packet of one carries
//! conntrack's record of it (see [`crate::conntrack`]), so the connection is
//! one entry in `EF_CT_FLOWS` for both directions, keyed by the record's
//! address. No packet looks it up: the three that change its state (its
//! SYN, the backend's SYN-ACK, and the second FIN or an RST that closed
//! it) go to the journal, and the drain applies them here in the order
//! they happened ([`start`], [`answered`], [`finish`]; see
//! [`crate::journal`]). Only a packet whose sequence numbers cross a
//! multiple of 2^29 is looked up (see [`crate::packet::may_change_state`]).
//! It starts in `EF_CT_YOUNG`, a table small enough to stay in the cache,
//! and the sweeper moves it to `EF_CT_FLOWS` once it has been open an
//! interval: most connections end young. Conntrack marks the direction
//! that sent the first FIN, so that FIN changes nothing here. Its bytes
//! are read from conntrack at its end (as the end packet saw them) and by
//! the sweeper every interval; it opens when conntrack marks it assured
//! (the client acknowledged the backend's SYN-ACK), counted by the next
//! sweep or with its close, and is gone when its record is.

use core::ptr::read_volatile;

use agent_common::{
    CT_ADOPT_ADOPTED, CT_ADOPT_FOLLOWED, CT_ADOPT_FULL, CT_ADOPT_GONE, CT_ADOPTED, CT_CLOSING,
    CT_COPY, CT_ENDED, CT_EVENT_ASSURED, CT_EVENT_CROSSING, CT_EVENT_END, CT_EVENT_REPLY,
    CT_EVENT_SYN, CT_EVENT_SYN_ACK, CT_ISN_ORIGINAL, CT_ISN_REPLY, CT_MOVED, CT_ORIGINAL, CT_REPLY,
    CT_REPLY_UNSEEN, CT_UNANSWERED, CT_YOUNG_ENTRIES, CtEvent, CtFlow, Direction, EndpointKey,
    FLOW_OPEN, MAX_FLOWS, PROTO_TCP, Stat, TAG_SHIFT, UNANSWERED_AFTER_NS, flow_tag,
};
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::generated::bpf_ktime_get_ns,
    macros::map,
    maps::HashMap,
    programs::TcContext,
};
use aya_log_ebpf::debug;

use crate::{
    atomic,
    conntrack::{self, Ct, Seen},
    counters::{Traffic, add_traffic, insert_failed, opened, stat},
    journal,
    packet::{Packet, Side},
};

/// Live conntrack-followed connections that settled (open since an
/// earlier sweep), by their `nf_conn`'s address. Not preallocated: its
/// memory grows with the connections followed. A deleted entry goes to the
/// next insert on its CPU at once (preallocated or not), so what the
/// sweeper writes is tagged (see [`TAG_SHIFT`]).
#[map(name = "EF_CT_FLOWS")]
pub static CT_FLOWS: HashMap<u64, CtFlow> = HashMap::pinned(MAX_FLOWS / 2, BPF_F_NO_PREALLOC);

/// Connections from their SYN until they settle, as `EF_CT_FLOWS` (see
/// [`CT_YOUNG_ENTRIES`]): its buckets stay in the cache, where a lookup in
/// `EF_CT_FLOWS` lands on a cold one.
#[map(name = "EF_CT_YOUNG")]
pub static CT_YOUNG: HashMap<u64, CtFlow> = HashMap::pinned(CT_YOUNG_ENTRIES, BPF_F_NO_PREALLOC);

/// Which map holds a connection.
#[derive(Copy, Clone, PartialEq, Eq)]
pub enum Tier {
    /// `EF_CT_YOUNG`.
    Young,
    /// `EF_CT_FLOWS`.
    Settled,
}

impl Tier {
    #[inline(always)]
    fn map(self) -> &'static HashMap<u64, CtFlow> {
        match self {
            Tier::Young => &CT_YOUNG,
            Tier::Settled => &CT_FLOWS,
        }
    }
}

/// The entry of the connection whose record is at `conn`, and its map:
/// young unless the sweeper moved it (it copies it first, so a packet that
/// finds it moved finds the copy).
#[inline(always)]
fn find<'a>(conn: u64) -> Option<(&'a mut CtFlow, Tier)> {
    if let Some(f) = CT_YOUNG.get_ptr_mut(&conn) {
        // SAFETY: a live entry.
        let f = unsafe { &mut *f };
        // SAFETY: as above.
        if unsafe { read_volatile(&f.flags) } & CT_MOVED == 0 {
            return Some((f, Tier::Young));
        }
    }
    // SAFETY: a live entry.
    CT_FLOWS
        .get_ptr_mut(&conn)
        .map(|f| (unsafe { &mut *f }, Tier::Settled))
}

/// A packet of a connection conntrack follows that may change its state.
/// Its SYN, its backend's SYN-ACK and the packet that ends it go to the
/// journal, which the drain applies (see [`crate::journal`]). Returns
/// whether that left the CPU's part past half full. Inline, with its
/// handlers, into `forward::on_conntrack_packet`: a packet that may change
/// state then makes one call between BPF functions, each of which costs a
/// return (see docs/counting.md, "One call a packet").
#[inline(always)]
pub fn on_packet(ctx: &TcContext, ct: Ct) -> bool {
    let Some(pkt) = Packet::parse_tcp(ctx, Side::Egress) else {
        return false;
    };
    if pkt.is_syn() && !ct.reply {
        return on_syn(&pkt, ct.conn);
    }
    if pkt.is_fin() || pkt.is_rst() {
        return on_close(&pkt, ct);
    }
    if pkt.is_syn_ack() {
        return ct.reply && on_syn_ack(&pkt, ct.conn);
    }
    on_crossing(&pkt, ct)
}

/// A packet's destination, which tells the connection it belongs to from
/// another on a reused record (see [`is_for`]).
#[inline(always)]
fn to(pkt: &Packet) -> ([u32; 4], u16) {
    let key = pkt.flow_key();
    (key.remote_addr, key.remote_port)
}

/// A SYN leaving for its backend: journaled if conntrack translated its
/// destination.
#[inline(always)]
fn on_syn(pkt: &Packet, conn: u64) -> bool {
    let key = pkt.flow_key();
    let Some(origin) = conntrack::dialled(conn, (&key.remote_addr, key.remote_port)) else {
        stat(Stat::SynRouted, 1);
        return false;
    };
    let syn = Syn {
        conn,
        backend: (key.remote_addr, key.remote_port),
        client: (origin.src_addr, origin.src_port),
        isn: pkt.seq,
        // The journal stamps the event as it appends it.
        at: 0,
    };
    journal::append(&mut syn.event())
}

/// The backend's SYN-ACK: journaled with its initial sequence number.
#[inline(always)]
fn on_syn_ack(pkt: &Packet, conn: u64) -> bool {
    if conntrack::translated(conn).is_none() {
        return false;
    }
    let a = SynAck {
        conn,
        client: to(pkt),
        isn: pkt.seq,
    };
    journal::append(&mut a.event())
}

/// A translated SYN, as the journal holds it.
pub struct Syn {
    conn: u64,
    backend: ([u32; 4], u16),
    /// The client as it dialled.
    client: ([u32; 4], u16),
    isn: u32,
    /// When it left (`bpf_ktime_get_ns`).
    at: u64,
}

/// The backend's SYN-ACK, as the journal holds it.
pub struct SynAck {
    conn: u64,
    client: ([u32; 4], u16),
    isn: u32,
}

/// The packet that ended a connection, as the journal holds it: where it
/// was going, and what conntrack had seen by then.
pub struct End {
    conn: u64,
    to: ([u32; 4], u16),
    reply: bool,
    last: Last,
}

/// What conntrack had seen of a connection when it ended: each
/// direction's end in sequence space, how many sequence numbers of each to
/// hold back (its FINs'), and whether the handshake completed.
#[derive(Copy, Clone)]
pub struct Last {
    ends: [u32; 2],
    held: (u32, u32),
    assured: bool,
}

impl Syn {
    #[inline(always)]
    fn event(&self) -> CtEvent {
        CtEvent {
            at: 0,
            conn: self.conn,
            kind: CT_EVENT_SYN,
            flags: 0,
            port: self.backend.1,
            seq: self.isn,
            addr: self.backend.0,
            client_addr: self.client.0,
            client_port: self.client.1,
            _pad: [0; 3],
        }
    }
}

impl From<&CtEvent> for Syn {
    #[inline(always)]
    fn from(ev: &CtEvent) -> Self {
        Self {
            conn: ev.conn,
            backend: (ev.addr, ev.port),
            client: (ev.client_addr, ev.client_port),
            isn: ev.seq,
            at: ev.at,
        }
    }
}

impl SynAck {
    #[inline(always)]
    fn event(&self) -> CtEvent {
        CtEvent {
            at: 0,
            conn: self.conn,
            kind: CT_EVENT_SYN_ACK,
            flags: CT_EVENT_REPLY,
            port: self.client.1,
            seq: self.isn,
            addr: self.client.0,
            client_addr: [0; 4],
            client_port: 0,
            _pad: [0; 3],
        }
    }
}

impl From<&CtEvent> for SynAck {
    #[inline(always)]
    fn from(ev: &CtEvent) -> Self {
        Self {
            conn: ev.conn,
            client: (ev.addr, ev.port),
            isn: ev.seq,
        }
    }
}

impl End {
    #[inline(always)]
    fn event(&self) -> CtEvent {
        let l = &self.last;
        CtEvent {
            at: 0,
            conn: self.conn,
            kind: CT_EVENT_END,
            flags: if self.reply { CT_EVENT_REPLY } else { 0 }
                | if l.assured { CT_EVENT_ASSURED } else { 0 },
            port: self.to.1,
            seq: 0,
            addr: self.to.0,
            client_addr: [l.ends[0], l.ends[1], l.held.0, l.held.1],
            client_port: 0,
            _pad: [0; 3],
        }
    }
}

impl From<&CtEvent> for End {
    #[inline(always)]
    fn from(ev: &CtEvent) -> Self {
        let w = ev.client_addr;
        Self {
            conn: ev.conn,
            to: (ev.addr, ev.port),
            reply: ev.flags & CT_EVENT_REPLY != 0,
            last: Last {
                ends: [w[0], w[1]],
                held: (w[2], w[3]),
                assured: ev.flags & CT_EVENT_ASSURED != 0,
            },
        }
    }
}

/// Starts following a translated SYN's connection, as the drain applies
/// it. A record followed
/// for another connection was reused by conntrack before the sweeper saw
/// that one go: it is ended first.
#[inline(always)]
pub fn start(ctx: &TcContext, syn: &Syn) {
    if register(ctx, syn) {
        // Ended here, not in `register`: the call chain, and so the
        // stack, stays short.
        if let Some((old, tier)) = find(syn.conn) {
            end_stale(old, tag(old), syn.conn, tier);
        }
        let _ = register(ctx, syn);
    }
}

/// Notes the backend's initial sequence number, from its first SYN-ACK:
/// a retransmission carries the same one and writes nothing, so that no
/// SYN-ACK writes into an entry the sweeper is moving (only a connection
/// whose number is known moves) or has just freed.
#[inline(always)]
pub fn answered(a: &SynAck) {
    let ct = Ct {
        conn: a.conn,
        reply: true,
    };
    let Some((f, tag, _)) = followed(&a.client, ct) else {
        return;
    };
    // SAFETY: a field of a live entry.
    if unsafe { read_volatile(&f.flags) } & CT_ISN_REPLY == 0 {
        f.isn[CT_REPLY] = a.isn;
        set_tagged(f, tag, CT_ISN_REPLY);
    }
}

/// Ends the connection an end packet belongs to, with what conntrack had
/// seen as it passed.
#[inline(always)]
pub fn finish(e: &End) {
    let ct = Ct {
        conn: e.conn,
        reply: e.reply,
    };
    if let Some((f, tag, tier)) = followed(&e.to, ct) {
        end(f, tag, e.conn, tier, Some(&e.last));
    }
}

/// A packet whose sequence numbers crossed a multiple of 2^29: journaled
/// with conntrack's end that way, for the count to catch up with.
#[inline(always)]
fn on_crossing(pkt: &Packet, ct: Ct) -> bool {
    if conntrack::translated(ct.conn).is_none() {
        return false;
    }
    let Some(seen) = Seen::of(ct.conn) else {
        return false;
    };
    let dir = if ct.reply {
        conntrack::REPLY
    } else {
        conntrack::ORIGINAL
    };
    let c = Crossing {
        conn: ct.conn,
        to: to(pkt),
        reply: ct.reply,
        end: seen.end(dir),
    };
    journal::append(&mut c.event())
}

/// A packet that crossed a multiple of 2^29, as the journal holds it.
pub struct Crossing {
    conn: u64,
    to: ([u32; 4], u16),
    reply: bool,
    end: u32,
}

impl Crossing {
    #[inline(always)]
    fn event(&self) -> CtEvent {
        CtEvent {
            at: 0,
            conn: self.conn,
            kind: CT_EVENT_CROSSING,
            flags: if self.reply { CT_EVENT_REPLY } else { 0 },
            port: self.to.1,
            seq: self.end,
            addr: self.to.0,
            client_addr: [0; 4],
            client_port: 0,
            _pad: [0; 3],
        }
    }
}

impl From<&CtEvent> for Crossing {
    #[inline(always)]
    fn from(ev: &CtEvent) -> Self {
        Self {
            conn: ev.conn,
            to: (ev.addr, ev.port),
            reply: ev.flags & CT_EVENT_REPLY != 0,
            end: ev.seq,
        }
    }
}

/// Catches a connection's bytes up with the end a crossing saw.
#[inline(always)]
pub fn crossed(c: &Crossing) {
    let ct = Ct {
        conn: c.conn,
        reply: c.reply,
    };
    if let Some((f, tag, _)) = followed(&c.to, ct) {
        catch_up_bytes(f, tag, c.end, c.reply, 1);
    }
}

/// A FIN or an RST. The close's first FIN (or a retransmission of it)
/// needs no lookup: conntrack remembers which side sent it. The other
/// side's FIN ends the connection with both FINs held back from
/// conntrack's sequence numbers; an RST that closed it in conntrack's
/// view ends it holding back the first FIN, if one was sent (had the other
/// side's followed, that FIN would have ended the connection).
#[inline(always)]
fn on_close(pkt: &Packet, ct: Ct) -> bool {
    let Some(seen) = Seen::of(ct.conn) else {
        return false;
    };
    let (this, other) = if ct.reply {
        (conntrack::REPLY, conntrack::ORIGINAL)
    } else {
        (conntrack::ORIGINAL, conntrack::REPLY)
    };
    let ends = if pkt.is_rst() {
        seen.reset()
    } else {
        seen.closed_first(other) && !seen.closed_first(this)
    };
    if !ends {
        return false;
    }
    let Some(assured) = conntrack::translated(ct.conn) else {
        return false;
    };
    let e = End {
        conn: ct.conn,
        to: to(pkt),
        reply: ct.reply,
        last: Last {
            ends: [seen.end(conntrack::ORIGINAL), seen.end(conntrack::REPLY)],
            held: seen.held(),
            assured,
        },
    };
    journal::append(&mut e.event())
}

/// The connection a packet leaving for `to` belongs to, if it is followed, its tag and its
/// map. A record followed for another connection was reused by conntrack
/// for one evenflow does not follow (routed, or picked up midway) before
/// the sweeper saw the followed one go: that one is over.
#[inline(always)]
fn followed<'a>(to: &([u32; 4], u16), ct: Ct) -> Option<(&'a mut CtFlow, u64, Tier)> {
    let (f, tier) = find(ct.conn)?;
    let tag = tag(f);
    if is_for(f, to, ct.reply) {
        Some((f, tag, tier))
    } else {
        end_stale(f, tag, ct.conn, tier);
        None
    }
}

/// The tag `f`'s words carry (see [`TAG_SHIFT`]).
#[inline(always)]
fn tag(f: &CtFlow) -> u64 {
    // SAFETY: a field of a live (or just reused) entry.
    unsafe { read_volatile(&f.flags) >> TAG_SHIFT }
}

/// A new connection's entry: every word the sweeper may write tagged.
#[inline(always)]
fn entry(
    endpoint: EndpointKey,
    client: (&[u32; 4], u16),
    isn: [u32; 2],
    flags: u64,
    syn_ns: u64,
) -> CtFlow {
    let tag = flow_tag(isn[CT_ORIGINAL], client.1) << TAG_SHIFT;
    CtFlow {
        endpoint,
        client_port: client.1,
        _pad: 0,
        client_addr: *client.0,
        isn,
        flags: tag | flags,
        bytes: [tag; 2],
        folded: [tag; 2],
        syn_ns,
    }
}

/// Whether a packet leaving for `to` belongs to the connection `f`
/// follows: it leaves for the backend in the original direction, for the
/// client in the reply one.
#[inline(always)]
fn is_for(f: &CtFlow, to: &([u32; 4], u16), reply: bool) -> bool {
    let (addr, port) = if reply {
        (&f.client_addr, f.client_port)
    } else {
        (&f.endpoint.addr, f.endpoint.port)
    };
    to.1 == port && agent_common::same_addr(&to.0, addr)
}

/// Sets `bits` in the flags of the connection tagged `tag`; the flags
/// before, or `None` once the entry holds another connection (or, after
/// eight lost races in a row, to be tried again by the next sweep).
#[inline(always)]
fn set_tagged(f: &mut CtFlow, tag: u64, bits: u64) -> Option<u64> {
    set_tagged_unless(f, tag, bits, 0)
}

/// [`set_tagged`], unless any of the bits `unless` is set (`None` then).
#[inline(always)]
fn set_tagged_unless(f: &mut CtFlow, tag: u64, bits: u64, unless: u64) -> Option<u64> {
    for _ in 0..8 {
        // SAFETY: a field of a live (or just reused) entry.
        let cur = unsafe { read_volatile(&f.flags) };
        if cur >> TAG_SHIFT != tag || cur & unless != 0 {
            return None;
        }
        // SAFETY: as above.
        if unsafe { atomic::cmpxchg(&raw mut f.flags, cur, cur | bits) } == cur {
            return Some(cur);
        }
    }
    None
}

/// Starts following a translated SYN's connection. Returns true when its
/// record is followed already for another connection: conntrack freed
/// the record and reused it for this one before the sweeper saw the old
/// one go, which the caller ends before registering again. Out of line.
#[inline(never)]
fn register(ctx: &TcContext, syn: &Syn) -> bool {
    let conn = syn.conn;
    if adopted(conn, syn) {
        return false;
    }
    let endpoint = EndpointKey {
        addr: syn.backend.0,
        port: syn.backend.1,
        direction: Direction::SendsTo as u8,
        proto: PROTO_TCP,
    };
    let client = (&syn.client.0, syn.client.1);
    let v = entry(endpoint, client, [syn.isn, 0], CT_ISN_ORIGINAL, syn.at);
    let mut tier = Tier::Young;
    let mut inserted = CT_YOUNG.insert(&conn, &v, BPF_NOEXIST as u64);
    // -E2BIG: the young are as many as it holds.
    if inserted == Err(-7) {
        tier = Tier::Settled;
        inserted = CT_FLOWS.insert(&conn, &v, BPF_NOEXIST as u64);
    }
    match inserted {
        Ok(()) => stat(Stat::FlowInserted, 1),
        // -EEXIST: a retransmitted SYN, or a reused record.
        Err(-17) => return !is_followed(conn, tier, &v),
        Err(e) => {
            insert_failed(e, Stat::FlowInsertFailed, Stat::FlowNoMemory);
            debug!(ctx, "evenflow: flow map insert failed on a forwarded SYN");
        }
    }
    false
}

/// Whether the agent's start adopted the connection whose SYN this is,
/// from conntrack, before the drain applied the SYN (it was journaled
/// just before): an adopted connection's initial sequence number is
/// where conntrack's count stood at the adoption, at or past its SYN's.
#[inline(always)]
fn adopted(conn: u64, syn: &Syn) -> bool {
    CT_FLOWS.get_ptr(&conn).is_some_and(|f| {
        // SAFETY: a live entry.
        let f = unsafe { &*f };
        f.client_port == syn.client.1
            && f.endpoint.port == syn.backend.1
            && f.flags & CT_ADOPTED != 0
            && f.isn[CT_ORIGINAL].wrapping_sub(syn.isn) as i32 >= 0
            && agent_common::same_addr(&f.client_addr, &syn.client.0)
    })
}

/// Follows the established connection from `client` to `backend` whose
/// record is at `conn`, begun before evenflow saw its SYN: counted opened
/// now, its bytes from now on (as if each direction's SYN had ended where
/// conntrack's count of it ends now), its close as any other's. Returns
/// what the adoption iterator writes for it.
#[inline(always)]
pub fn adopt(conn: u64, client: (&[u32; 4], u16), backend: (&[u32; 4], u16)) -> u8 {
    if !conntrack::is_connection(conn, client, backend) {
        return CT_ADOPT_GONE;
    }
    let Some(seen) = Seen::of(conn) else {
        return CT_ADOPT_GONE;
    };
    // Checked again after the read, as the sweeper does: the record could
    // have been reused meanwhile for another connection.
    if !seen.established() || !conntrack::is_connection(conn, client, backend) {
        return CT_ADOPT_GONE;
    }
    let endpoint = EndpointKey::tcp(*backend.0, backend.1, Direction::SendsTo);
    let isn = [
        seen.end(conntrack::ORIGINAL).wrapping_sub(1),
        seen.end(conntrack::REPLY).wrapping_sub(1),
    ];
    let v = entry(
        endpoint,
        client,
        isn,
        CT_ISN_ORIGINAL | CT_ISN_REPLY | CT_ADOPTED | FLOW_OPEN as u64,
        0,
    );
    // Its SYN was seen a moment ago: it is young.
    if CT_YOUNG.get_ptr(&conn).is_some() {
        return CT_ADOPT_FOLLOWED;
    }
    // Settled at once: it has been open for longer than an interval.
    match CT_FLOWS.insert(&conn, &v, BPF_NOEXIST as u64) {
        Ok(()) => {
            stat(Stat::FlowInserted, 1);
            opened(&v.endpoint);
            CT_ADOPT_ADOPTED
        }
        // -EEXIST: its SYN was seen, or an earlier start adopted it.
        Err(-17) => CT_ADOPT_FOLLOWED,
        Err(e) => {
            insert_failed(e, Stat::FlowInsertFailed, Stat::FlowNoMemory);
            CT_ADOPT_FULL
        }
    }
}

/// Whether `conn` is followed in `tier` as `v`'s connection already.
#[inline(always)]
fn is_followed(conn: u64, tier: Tier, v: &CtFlow) -> bool {
    tier.map().get_ptr(&conn).is_some_and(|old| {
        // SAFETY: a live entry.
        let old = unsafe { &*old };
        // A retransmitted SYN has the connection's initial sequence number
        // and client port; a new connection on a reused record has others.
        old.isn[CT_ORIGINAL] == v.isn[CT_ORIGINAL] && old.client_port == v.client_port
    })
}

/// Ends a connection whose record conntrack reused for another: with the
/// bytes it had at the last sweep (the record now holds the other's).
#[inline(always)]
fn end_stale(f: &mut CtFlow, tag: u64, conn: u64, tier: Tier) {
    if end(f, tag, conn, tier, None) {
        stat(Stat::FlowExpired, 1);
    }
}

/// The sweeper's visit to the entry under `key` in `tier`: a connection
/// conntrack still has is caught up with it and its bytes since the last
/// visit added to its endpoint; one it no longer has (it timed out, or was
/// flushed) ends with the bytes it had. A young one open since an earlier
/// visit then settles.
///
/// The entry can be deleted and given to another connection while the
/// sweeper holds it (see [`TAG_SHIFT`]): its tag is read first and checked
/// again once the key and the ends are copied, so they are one
/// connection's, and every write after expects it.
#[inline(always)]
pub fn sweep(key: *const u64, f: &mut CtFlow, tier: Tier) {
    // SAFETY: a field of the element being visited.
    let flags = unsafe { read_volatile(&f.flags) };
    let tag = flags >> TAG_SHIFT;
    // SAFETY: the key of the element being visited.
    let conn = unsafe { read_volatile(key) };
    let endpoint = f.endpoint;
    let (client, backend) = (
        (f.client_addr, f.client_port),
        (endpoint.addr, endpoint.port),
    );
    // A moved entry is the settled copy's to count.
    if self::tag(f) != tag || flags & CT_MOVED != 0 {
        return;
    }
    let is_it = || conntrack::is_connection(conn, (&client.0, client.1), (&backend.0, backend.1));
    if !is_it() || (tier == Tier::Settled && young_again(conn, tag)) {
        if end(f, tag, conn, tier, None) {
            // Not read once more: an expired record's sequence numbers may
            // be a SYN's that never left (a retry conntrack took on the
            // record before a rule dropped it); a connection idle until it
            // expired carried nothing since the last sweep but the byte
            // held back.
            stat(Stat::FlowExpired, 1);
        }
        return;
    }
    let seen = Seen::of(conn);
    // The sweeper holds no reference to the record: checked again after
    // the read, so that a record freed and reused for another connection
    // in between never lends this one its sequence numbers. The next
    // sweep ends it.
    if !is_it() {
        return;
    }
    // One sequence number held back each way while the connection lives (a
    // FIN may be among them); what an end holds back once it closed.
    let closing = flags & CT_CLOSING != 0;
    if let Some(seen) = seen {
        let held = if closing { seen.held() } else { (1, 1) };
        catch_up_bytes(f, tag, seen.end(conntrack::ORIGINAL), false, held.0);
        catch_up_bytes(f, tag, seen.end(conntrack::REPLY), true, held.1);
    }
    catch_up_open(f, tag, &endpoint, conn);
    note_unanswered(f, tag, &endpoint, conn);
    note_reply_unseen(f, tag, flags);
    let t = unfolded(f, tag);
    add_traffic(&endpoint, &t);
    if closing {
        // Caught up to its close and folded: the end counts the close.
        end(f, tag, conn, tier, None);
        return;
    }
    let settled = CT_ISN_REPLY | FLOW_OPEN as u64;
    if tier == Tier::Young && flags & settled == settled {
        settle(f, tag, conn);
    }
}

/// Whether a young connection other than the settled one tagged `tag`
/// holds `conn`: conntrack reused the record for a new connection on the
/// same addresses and ports, and the settled one is over.
#[inline(always)]
fn young_again(conn: u64, tag: u64) -> bool {
    CT_YOUNG.get_ptr(&conn).is_some_and(|y| {
        // SAFETY: a field of a live (or just reused) entry.
        let flags = unsafe { read_volatile(&(*y).flags) };
        flags >> TAG_SHIFT != tag && flags & CT_MOVED == 0
    })
}

/// Moves the young connection tagged `tag` (open since an earlier visit,
/// just caught up and folded) to `EF_CT_FLOWS`:
///
/// 1. a copy goes there, marked [`CT_COPY`]: nothing ends it yet;
/// 2. the young entry is marked moved, unless a packet ended it first (the
///    copy, which nothing could end meanwhile, is then dropped);
/// 3. the copy's mark is cleared: packets find the copy from the moment
///    the young entry is marked, and an end that claims the young entry
///    then ends the copy;
/// 4. if an end claimed the young entry while the copy was still marked,
///    it could not end the copy: the copy is marked [`CT_CLOSING`], and
///    the next sweep ends it as that end would have, from conntrack's
///    record (ending it here would take more stack than an iterator has);
/// 5. the young entry goes.
#[inline(never)]
fn settle(f: &mut CtFlow, tag: u64, conn: u64) {
    // SAFETY: the element being visited, copied whole.
    let mut copy = unsafe { read_volatile(f) };
    if copy.flags >> TAG_SHIFT != tag {
        return;
    }
    copy.flags |= CT_COPY;
    if CT_FLOWS.insert(&conn, &copy, BPF_NOEXIST as u64).is_err() {
        return;
    }
    if !set_tagged(f, tag, CT_MOVED).is_some_and(|before| before & CT_ENDED == 0) {
        let _ = CT_FLOWS.remove(&conn);
        return;
    }
    // Nothing but this removes the copy while it is marked.
    if let Some(moved) = CT_FLOWS.get_ptr_mut(&conn) {
        // SAFETY: a live entry.
        let moved = unsafe { &mut *moved };
        // SAFETY: as above.
        unsafe { atomic::fetch_and(&raw mut moved.flags, !CT_COPY) };
        // SAFETY: a field of the element being visited.
        if unsafe { read_volatile(&f.flags) } & CT_ENDED != 0 {
            set_tagged(moved, tag, CT_CLOSING);
        }
    }
    let _ = CT_YOUNG.remove(&conn);
}

/// Counts the connection opened once conntrack saw its handshake end (its
/// last ACK passed unlooked-at), unless it ended meanwhile: setting the
/// open bit and the end's bit are ordered, so either the end sees it open
/// and counts the close, or the open sees it ended and counts nothing (the
/// end then counts both). Only the sweeper calls this: a connection that
/// ends before a sweep saw it open has its open counted with its close, in
/// one update of its endpoint instead of two.
#[inline(always)]
fn catch_up_open(f: &mut CtFlow, tag: u64, endpoint: &EndpointKey, conn: u64) {
    // SAFETY: a field of a live entry.
    let flags = unsafe { read_volatile(&f.flags) };
    let done = FLOW_OPEN as u64 | CT_ENDED;
    if flags & done == 0
        && conntrack::assured(conn)
        && set_tagged(f, tag, FLOW_OPEN as u64).is_some_and(|before| before & done == 0)
    {
        opened(endpoint);
    }
}

/// Counts the connection's SYN unanswered, once, when no SYN-ACK came
/// [`UNANSWERED_AFTER_NS`] after it and it neither opened nor ended: its
/// backend is silent, seconds before conntrack gives the attempt up.
/// Answered means the journal's SYN-ACK (the drain has applied every one
/// that left by the sweep) or, for one evenflow did not see leave (it left
/// through a device without the program, or the journal lost it),
/// conntrack's word, read last: only an attempt still unanswered pays for
/// it. An adopted connection was open (its SYN's time is unknown, 0).
#[inline(always)]
fn note_unanswered(f: &mut CtFlow, tag: u64, endpoint: &EndpointKey, conn: u64) {
    // SAFETY: fields of a live entry.
    let (flags, syn_ns) = unsafe { (read_volatile(&f.flags), read_volatile(&f.syn_ns)) };
    let answered = CT_ISN_REPLY | FLOW_OPEN as u64 | CT_ENDED | CT_UNANSWERED | CT_ADOPTED;
    if flags & answered != 0 || syn_ns == 0 {
        return;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(syn_ns) >= UNANSWERED_AFTER_NS
        && !conntrack::replied(conn)
        && set_tagged_unless(f, tag, CT_UNANSWERED, answered).is_some()
    {
        add_traffic(endpoint, &Traffic::unanswered());
    }
}

/// Flags of a connection whose replies' bytes can be counted (its SYN-ACK
/// applied, or its sequence numbers read from conntrack when it was
/// adopted), or that was counted in [`Stat::ReplyUnseen`] already.
const REPLY_SEEN_OR_SAID: u64 = CT_ISN_REPLY | CT_ADOPTED | CT_REPLY_UNSEEN;

/// Counts in [`Stat::ReplyUnseen`], once, a connection an earlier sweep
/// counted open (`flags`, as this sweep found them) whose SYN-ACK the
/// drain never applied: it left through a device the program is not on
/// (or the journal lost it), and without its sequence number the
/// connection's bytes are not counted ([`catch_up_bytes`]). Every SYN-ACK
/// that left before the connection opened was drained before this sweep,
/// so none is on its way. A connection that ends first is counted by its
/// end ([`end`]); `CT_REPLY_UNSEEN` and the end bit keep it to once.
#[inline(always)]
fn note_reply_unseen(f: &mut CtFlow, tag: u64, flags: u64) {
    let known = REPLY_SEEN_OR_SAID | CT_ENDED;
    if flags & FLOW_OPEN as u64 != 0
        && flags & known == 0
        && set_tagged_unless(f, tag, CT_REPLY_UNSEEN, known).is_some()
    {
        stat(Stat::ReplyUnseen, 1);
    }
}

/// Raises a direction's bytes to what conntrack saw sent that way, less
/// `held` sequence numbers at the end: one while the connection lives (a
/// FIN may be among them: the end adds it back if not), its FIN's when it
/// ends. `bytes` is a high-water mark, so racing catch-ups (the sweeper
/// and a packet) never add twice; tagged, so it is never raised once the
/// entry holds another connection.
#[inline(always)]
fn catch_up_bytes(f: &mut CtFlow, tag: u64, end: u32, reply: bool, held: u32) {
    let (known, isn, bytes) = if reply {
        (CT_ISN_REPLY, f.isn[CT_REPLY], &raw mut f.bytes[CT_REPLY])
    } else {
        (
            CT_ISN_ORIGINAL,
            f.isn[CT_ORIGINAL],
            &raw mut f.bytes[CT_ORIGINAL],
        )
    };
    // Until the backend answered, conntrack's count for the client's side
    // may stem from a retried SYN that never left (a rule dropped it): it
    // is read only once the handshake passed.
    if f.flags & (known | CT_ISN_REPLY) != known | CT_ISN_REPLY {
        return;
    }
    // SAFETY: a field of a live (or just reused) entry.
    let have = unsafe { read_volatile(bytes) } & VALUE;
    // Where the bytes counted so far end, in sequence space: past the SYN.
    let at = isn.wrapping_add(1).wrapping_add(have as u32);
    let ahead = end.wrapping_sub(held).wrapping_sub(at) as i32;
    if ahead > 0 {
        // SAFETY: as above.
        unsafe { atomic::raise_tagged(bytes, tag, TAG_BITS, have + ahead as u64) };
    }
}

/// The value bits of a tagged word.
const VALUE: u64 = (1 << TAG_SHIFT) - 1;
const TAG_BITS: u32 = 64 - TAG_SHIFT;

/// What the connection tagged `tag` carried since the last fold, each
/// way, marked folded (racing folders each take only what they raised the
/// marks by; nothing once the entry holds another connection).
#[inline(always)]
fn unfolded(f: &mut CtFlow, tag: u64) -> Traffic {
    let mut fold = |dir: usize| {
        // SAFETY: fields of a live (or just reused) entry.
        unsafe {
            let bytes = read_volatile(&f.bytes[dir]) & VALUE;
            atomic::raise_tagged(&raw mut f.folded[dir], tag, TAG_BITS, bytes).unwrap_or(0)
        }
    };
    Traffic {
        bytes_tx: fold(CT_ORIGINAL),
        bytes_rx: fold(CT_REPLY),
        ..Traffic::default()
    }
}

/// Ends the connection: catches it up with what conntrack `seen` when
/// `last` has it, holding back as many sequence numbers each way as it
/// says (original, reply: its FINs'; `None` when its record is no longer
/// its own), adds what it carried since the last fold, its open if no
/// sweep counted it yet and its close, if it had opened (its failure if
/// it never did), to its endpoint in one update, and forgets it. Returns
/// whether this call ended it: the end bit is the claim, so of two CPUs
/// ending one connection at once (or the sweeper holding an entry a SYN's
/// end replaced) only one does, and only the claimer removes the key,
/// which then still holds this entry.
#[inline(never)]
fn end(f: &mut CtFlow, tag: u64, conn: u64, tier: Tier, last: Option<&Last>) -> bool {
    let Some((f, tier, flags)) = claim(f, tag, conn, tier) else {
        return false;
    };
    // Copied before the removal, after which the entry may go to the next
    // connection inserted on this CPU (the tagged writes below then fail).
    let endpoint = f.endpoint;
    let _ = tier.map().remove(&conn);
    if let Some(last) = last {
        catch_up_bytes(f, tag, last.ends[CT_ORIGINAL], false, last.held.0);
        catch_up_bytes(f, tag, last.ends[CT_REPLY], true, last.held.1);
    }
    let mut t = unfolded(f, tag);
    // The end bit is set: no sweep counts the open from here on.
    let counted = flags & FLOW_OPEN as u64 != 0;
    t.conns_opened = (!counted && last.is_some_and(|l| l.assured)) as u64;
    t.conns_closed = (counted || t.conns_opened != 0) as u64;
    // Never opened: refused, unanswered until conntrack forgot it, or
    // given up by the client.
    t.conns_failed = 1 - t.conns_closed;
    t.conns_failed_unanswered = t.conns_failed & (flags & CT_UNANSWERED != 0) as u64;
    add_traffic(&endpoint, &t);
    // Opened, its SYN-ACK never applied (the drain applies events in the
    // order they happened), and no sweep said so yet: most connections
    // end before a sweep could (see `note_reply_unseen`).
    if t.conns_closed != 0 && flags & REPLY_SEEN_OR_SAID == 0 {
        stat(Stat::ReplyUnseen, 1);
    }
    stat(Stat::FlowDeleted, 1);
    true
}

/// Sets the end bit of the connection tagged `tag`, in `f` or, once the
/// sweeper moved it, in its settled copy; returns the entry claimed, its
/// map and its flags before. `None` when it is no longer this
/// connection's, or another end claimed it first.
#[inline(always)]
fn claim<'a>(
    f: &'a mut CtFlow,
    tag: u64,
    conn: u64,
    tier: Tier,
) -> Option<(&'a mut CtFlow, Tier, u64)> {
    let flags = mark_ended(f, tag)?;
    if flags & CT_MOVED == 0 {
        return Some((f, tier, flags));
    }
    // SAFETY: a live entry.
    let moved = unsafe { &mut *CT_FLOWS.get_ptr_mut(&conn)? };
    let flags = mark_ended(moved, tag)?;
    Some((moved, Tier::Settled, flags))
}

/// Sets the end bit of the connection tagged `tag`; the flags before, or
/// `None` when it is no longer this connection's, another end set the bit
/// first, or it is the sweeper's copy of a connection it is moving (which
/// the sweeper then ends: see [`settle`]).
#[inline(always)]
fn mark_ended(f: &mut CtFlow, tag: u64) -> Option<u64> {
    set_tagged_unless(f, tag, CT_ENDED, CT_ENDED | CT_COPY)
}

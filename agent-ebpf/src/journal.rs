//! The journal of forwarded connections' state changes (`EF_CT_JOURNAL`).
//!
//! A connection conntrack follows changes state at three packets: its SYN
//! (it starts), the backend's SYN-ACK (the reply's initial sequence
//! number) and the packet that ends it. Applied where they pass, each is
//! an insert, a lookup or a removal in a hash map whose line last sat in
//! the other CPU's cache: two thirds of TC egress's cost on a balancer
//! whose connections are short (see docs/counting.md). So TC egress only
//! appends what it saw to its own CPU's part of the journal, one array
//! slot written in order, and the sweeper's drain, run by the agent before
//! every read, applies the events to the maps in the order they happened
//! ([`drain`]). The endpoint's counts are the same and reach the same
//! report; the maps' work moves from the packet's softirq to the agent's
//! read, in one batch.
//!
//! Each CPU's part is a ring with one writer (TC egress on that CPU) and
//! one reader (the drain): the head, which the writer publishes after the
//! event, and the tail, which the drain moves past what it applied, sit a
//! cache line apart in `EF_CT_JOURNAL_POS`. Where a part is full (the
//! agent stopped draining, or drains slower than connections come), an
//! event goes to `EF_CT_SPILL` under its CPU and position instead, at the
//! cost of a hash-map insert, and the drain takes it from there in its
//! turn: the order holds, and `journal_spilled` counts them. Only an event
//! that finds the spill full too is lost (`journal_lost`).
//!
//! Between the agent's reads, and while no agent runs at all (stopped,
//! crashed, upgrading), TC egress drains itself, so that the journal never
//! fills: an append that leaves its part past half full tail-calls
//! [`evenflow_ct_drain_inline`] (through `EF_CT_DRAIN`, pinned, so it
//! outlives the agent), which applies up to [`INLINE_MAX`] events. A tail
//! call, not a call: verified within TC egress, the drain's loops take
//! the verifier past its million instructions. One drain runs at a time,
//! under a lock word that says until when its holder may keep it: TC
//! egress's for the microseconds of its drain, the agent's through its
//! whole read (its drain, its sweepers, which no drain may run beside,
//! and at its start the adoption), released after it
//! ([`evenflow_ct_release`]) or, should the agent die holding it, taken
//! back [`CT_DRAIN_LEASE_NS`] later (by TC egress; a new agent takes its
//! predecessor's at once).

use core::{
    ffi::c_void,
    ptr::{read_volatile, write_volatile},
};

use agent_common::{
    CT_DRAIN_LEASE_NS, CT_EVENT_CROSSING, CT_EVENT_END, CT_EVENT_SYN, CT_EVENT_SYN_ACK,
    CT_JOURNAL_MAX_CPUS, CT_JOURNAL_POS_WORDS, CT_JOURNAL_SLOTS, CT_SPILL_ENTRIES, CtEvent, Stat,
};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::generated::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_loop},
    macros::{classifier, map},
    maps::{Array, HashMap, ProgramArray},
    programs::TcContext,
};

use crate::{atomic, counters::stat, ct_flow, tc::TCX_NEXT};

/// The events, a part of [`JOURNAL_SLOTS_MASK`] + 1 for each CPU (the
/// agent sizes it for the node's CPU numbers; one entry where forwarded
/// connections are not followed in conntrack).
#[map(name = "EF_CT_JOURNAL")]
pub static JOURNAL: Array<CtEvent> = Array::pinned(1, 0);

/// Each CPU's head and tail (see [`CT_JOURNAL_POS_WORDS`]), then the
/// number of events in the spill and the drains' lock.
#[map(name = "EF_CT_JOURNAL_POS")]
pub static POS: Array<u64> = Array::pinned(1, 0);

/// Events whose CPU's part was full, by [`spill_key`]. Not preallocated:
/// it takes memory only while the journal overflows.
#[map(name = "EF_CT_SPILL")]
pub static SPILL: HashMap<u64, CtEvent> = HashMap::pinned(CT_SPILL_ENTRIES, BPF_F_NO_PREALLOC);

/// The order of the parts' next events: two tournament trees, the
/// agent's drain's and TC egress's (see [`Order`]), each of
/// `2 × JOURNAL_LEAVES` words.
#[map(name = "EF_CT_DRAIN_ORDER")]
static ORDER: Array<u64> = Array::pinned(1, 0);

/// [`evenflow_ct_drain_inline`], which the agent puts at index 0.
#[map(name = "EF_CT_DRAIN")]
static DRAIN: ProgramArray = ProgramArray::pinned(1, 0);

/// The CPU numbers the agent sized the journal for (the highest possible
/// one, plus one); 0: no journal.
#[unsafe(no_mangle)]
static JOURNAL_CPUS: u32 = 0;
/// The trees' leaves: [`JOURNAL_CPUS`] rounded up to a power of two.
#[unsafe(no_mangle)]
static JOURNAL_LEAVES: u32 = 1;
/// 1 where the head is published with a fully ordered operation (see
/// [`ordered`]); the agent writes 0 on x86.
#[unsafe(no_mangle)]
static JOURNAL_ORDERED: u8 = 1;
/// Events a CPU's part holds, less one (a power of two less one): fewer
/// than [`CT_JOURNAL_SLOTS`] on a node of many CPUs, and in tests of the
/// spill.
#[unsafe(no_mangle)]
static JOURNAL_SLOTS_MASK: u32 = CT_JOURNAL_SLOTS - 1;

const HEAD: u32 = 0;
const TAIL: u32 = CT_JOURNAL_POS_WORDS / 2;

/// Events one run of the drain applies at most: `bpf_loop`'s bound (the
/// agent's next read goes on where it stopped).
const DRAIN_MAX: u32 = 1 << 23;

/// Events one drain by TC egress applies at most: the packet that runs it
/// waits for them (tens of microseconds), and the next append past half a
/// part runs another.
const INLINE_MAX: u32 = 64;

/// What the agent's drain returns when TC egress's holds the lock: run it
/// again.
const DRAIN_BUSY: i32 = 1;

/// How long TC egress's drain may hold the lock: far longer than its
/// [`INLINE_MAX`] events take.
const INLINE_HOLD_NS: u64 = 10_000_000;

/// How old an event must be for the drain to apply it: a writer stamps an
/// event before it publishes it, and an interrupt (or the hypervisor)
/// between the two must not let a later event of another CPU be applied
/// first. Younger events wait for the next read.
const SETTLED_NS: u64 = 10_000_000;

#[inline(always)]
fn cpus() -> u32 {
    // SAFETY: a plain static; volatile so the agent's value is used.
    unsafe { read_volatile(&JOURNAL_CPUS) }.min(CT_JOURNAL_MAX_CPUS)
}

/// `cpu`'s head (or tail) word.
#[inline(always)]
fn pos(cpu: u32, which: u32) -> Option<*mut u64> {
    POS.get_ptr_mut(cpu * CT_JOURNAL_POS_WORDS + which)
}

/// The count of events in the spill.
#[inline(always)]
fn spilled() -> Option<*mut u64> {
    POS.get_ptr_mut(cpus() * CT_JOURNAL_POS_WORDS)
}

/// The drains' lock: 0 while free, else until when (`bpf_ktime_get_ns`)
/// its holder may keep it, odd for the agent's (see [`take`]).
#[inline(always)]
fn lock() -> Option<*mut u64> {
    POS.get_ptr_mut(cpus() * CT_JOURNAL_POS_WORDS + 1)
}

/// Takes the lock until `until`, if it is free or its holder's time ran
/// out (or, for the agent, `over_agent`, if the holder is an agent: only
/// one runs per node, so an agent's lock it finds is its dead
/// predecessor's); returns whether it did.
#[inline(always)]
fn take(lock: *mut u64, now: u64, until: u64, over_agent: bool) -> bool {
    // SAFETY: an array slot.
    let held = unsafe { read_volatile(lock) };
    let free = held == 0 || held <= now || (over_agent && held & 1 != 0);
    // SAFETY: an array slot.
    free && unsafe { atomic::cmpxchg(lock, held, until) } == held
}

/// Events a CPU's part holds, less one.
#[inline(always)]
fn slots_mask() -> u32 {
    // SAFETY: a plain static; volatile so the agent's value is used.
    unsafe { read_volatile(&JOURNAL_SLOTS_MASK) }
}

#[inline(always)]
fn slot(cpu: u32, at: u64) -> Option<*mut CtEvent> {
    let mask = slots_mask();
    JOURNAL.get_ptr_mut(cpu * (mask + 1) + (at as u32 & mask))
}

/// The spill's key of `cpu`'s event at position `at`.
#[inline(always)]
fn spill_key(cpu: u32, at: u64) -> u64 {
    (u64::from(cpu) << 48) | (at & ((1 << 48) - 1))
}

/// Appends `ev` to this CPU's part (or, where it is full, to the spill),
/// stamped with the time. Returns whether the part is past half full (or
/// was full): the caller then has TC egress drain ([`relieve`]).
#[inline(always)]
pub fn append(ev: &mut CtEvent) -> bool {
    if cpus() == 0 {
        return false;
    }
    // SAFETY: no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let (Some(head), Some(tail), Some(spilled)) = (pos(cpu, HEAD), pos(cpu, TAIL), spilled())
    else {
        stat(Stat::JournalLost, 1);
        return false;
    };
    if cpu >= cpus() {
        stat(Stat::JournalLost, 1);
        return false;
    }
    // SAFETY: array slots, valid for the map's lifetime. Only this CPU's
    // TC egress writes its head, and no other program of this CPU runs
    // between the read and the write (softirq).
    let (h, t) = unsafe { (read_volatile(head), read_volatile(tail)) };
    // SAFETY: no arguments.
    ev.at = unsafe { bpf_ktime_get_ns() };
    let held = h.wrapping_sub(t);
    if held <= u64::from(slots_mask()) {
        let Some(slot) = slot(cpu, h) else {
            stat(Stat::JournalLost, 1);
            return false;
        };
        // SAFETY: the slot is past the tail, so the drain does not read
        // it until the head passes it.
        unsafe { write_volatile(slot, *ev) };
    } else if SPILL.insert(spill_key(cpu, h), ev, 0).is_ok() {
        // SAFETY: an array slot.
        unsafe { atomic::add(spilled, 1) };
        stat(Stat::JournalSpilled, 1);
    } else {
        stat(Stat::JournalLost, 1);
        return true;
    }
    // Published after the event: on x86 a plain store is (stores are
    // seen in order), elsewhere a fully ordered operation.
    // SAFETY: an array slot.
    unsafe {
        if ordered() {
            atomic::cmpxchg(head, h, h + 1);
        } else {
            write_volatile(head, h + 1);
        }
    }
    held > u64::from(slots_mask() / 2)
}

/// Has this CPU's TC egress drain the journal ([`evenflow_ct_drain_inline`],
/// a tail call: it does not return). Called from the program's own frame,
/// where the verifier allows one.
#[inline(always)]
pub fn relieve(ctx: &TcContext) {
    // SAFETY: the slot holds a TC program or nothing; on failure (nothing
    // there, or too many tail calls) control comes back and the packet
    // goes on.
    unsafe { DRAIN.tail_call(ctx, 0) };
}

/// Whether publishing needs a fully ordered operation: everywhere but on
/// x86, whose stores are seen in the order they were made and whose loads
/// are not reordered with each other.
#[inline(always)]
fn ordered() -> bool {
    // SAFETY: a plain static; volatile so the agent's value is used.
    unsafe { read_volatile(&JOURNAL_ORDERED) != 0 }
}

/// Applies every journaled event, across the CPUs' parts, in the order
/// they were written: a connection's SYN, SYN-ACK and end can each leave
/// on another CPU, and a record conntrack reuses for a new connection on
/// the same addresses and ports starts after the old one ended. The
/// agent's: it takes the lock for the agent's read and keeps it (see
/// [`evenflow_ct_release`]), and returns [`DRAIN_BUSY`] while TC egress
/// drains.
#[classifier]
pub fn evenflow_ct_drain(ctx: TcContext) -> i32 {
    let Some(lock) = lock() else {
        return 0;
    };
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let until = (now + CT_DRAIN_LEASE_NS) | 1;
    if !take(lock, now, until, true) {
        return DRAIN_BUSY;
    }
    drain(ctx, AGENT_TREE, DRAIN_MAX, now);
    0
}

/// TC egress's drain, tail-called when its CPU's part is past half full:
/// up to [`INLINE_MAX`] events, unless another drain runs (or the agent
/// is reading), or this CPU's part holds no event old enough to apply:
/// during a burst of more than half a part within [`SETTLED_NS`], every
/// append past half comes here, and would otherwise build the drain's
/// tree for nothing. Passes the packet on.
#[classifier]
pub fn evenflow_ct_drain_inline(ctx: TcContext) -> i32 {
    let Some(lock) = lock() else {
        return TCX_NEXT;
    };
    // SAFETY: no arguments.
    let (now, cpu) = unsafe { (bpf_ktime_get_ns(), bpf_get_smp_processor_id()) };
    if next_time(cpu, now.saturating_sub(SETTLED_NS)) == u64::MAX {
        return TCX_NEXT;
    }
    let until = (now + INLINE_HOLD_NS) & !1;
    if take(lock, now, until, false) {
        let applied = drain(ctx, INLINE_TREE, INLINE_MAX, now);
        // SAFETY: an array slot, this drain's lock.
        unsafe { atomic::cmpxchg(lock, until, 0) };
        stat(Stat::JournalDrainedInline, u64::from(applied));
    }
    TCX_NEXT
}

/// Releases the lock the agent's drain took, once the agent's sweepers
/// (or, at its start, the adoption) are done: TC egress may drain again.
/// Leaves one TC egress took alone (the agent held it past its time).
#[classifier]
pub fn evenflow_ct_release(_ctx: TcContext) -> i32 {
    if let Some(lock) = lock() {
        // SAFETY: an array slot.
        let held = unsafe { read_volatile(lock) };
        if held & 1 != 0 {
            // SAFETY: an array slot.
            unsafe { atomic::cmpxchg(lock, held, 0) };
        }
    }
    0
}

/// The agent's drain's tree in `EF_CT_DRAIN_ORDER`, and TC egress's: a
/// drain that overran its time (see docs/counting.md) never shares its
/// tree with the other kind's.
const AGENT_TREE: u32 = 0;
const INLINE_TREE: u32 = 1;

/// The deepest a tree is: log2 of [`CT_JOURNAL_MAX_CPUS`].
const MAX_DEPTH: u32 = 13;

/// What the drain's loops carry: its program's context, its tree, the
/// time past which it applies nothing this run, and the events applied.
struct Drain {
    ctx: TcContext,
    order: Order,
    cutoff: u64,
    applied: u32,
}

/// Applies up to `max` events written before `now` less [`SETTLED_NS`],
/// the lock held, in tree `tree`; returns how many.
#[inline(always)]
fn drain(ctx: TcContext, tree: u32, max: u32, now: u64) -> u32 {
    let order = Order::of(tree);
    let cutoff = now.saturating_sub(SETTLED_NS);
    let mut d = Drain {
        ctx,
        order,
        cutoff,
        applied: 0,
    };
    // SAFETY: the callbacks are relocated to subprograms by the loader;
    // their context is this frame's `d`, alive for the loops.
    unsafe {
        bpf_loop(
            order.leaves,
            fill_leaf as *const () as *mut c_void,
            (&raw mut d).cast(),
            0,
        );
        bpf_loop(
            order.leaves - 1,
            settle_node as *const () as *mut c_void,
            (&raw mut d).cast(),
            0,
        );
        bpf_loop(
            max,
            drain_one as *const () as *mut c_void,
            (&raw mut d).cast(),
            0,
        );
    }
    d.applied
}

/// The trees' leaves, as the agent wrote them.
#[inline(always)]
fn leaves() -> u32 {
    // SAFETY: a plain static; volatile so the agent's value is used.
    unsafe { read_volatile(&JOURNAL_LEAVES) }.clamp(1, CT_JOURNAL_MAX_CPUS)
}

/// A tournament tree over the parts' next events, in one half of
/// `EF_CT_DRAIN_ORDER`: finding the earliest takes a read, and replacing
/// a part's next event log2(parts) comparisons, where a scan of every
/// part took as many reads as the node has CPU numbers (milliseconds for
/// TC egress's drain on a node of a thousand). Heap-numbered from 1: node
/// `n`'s children are `2n` and `2n + 1`; leaf `leaves + cpu` holds the
/// time of `cpu`'s next event (`u64::MAX` for none old enough), and every
/// node above the CPU whose next event is the earliest beneath it. Built
/// at each run's start from the parts' heads and tails; an event
/// published during the run is younger than the run's cutoff.
#[derive(Copy, Clone)]
struct Order {
    base: u32,
    leaves: u32,
}

impl Order {
    #[inline(always)]
    fn of(tree: u32) -> Self {
        let leaves = leaves();
        Self {
            base: tree * 2 * leaves,
            leaves,
        }
    }

    #[inline(always)]
    fn word(self, n: u32) -> Option<*mut u64> {
        ORDER.get_ptr_mut(self.base + n)
    }

    /// The time of `cpu`'s next event, as its leaf holds it.
    #[inline(always)]
    fn time(self, cpu: u32) -> u64 {
        // SAFETY: an array slot, written only by this tree's drain.
        self.word(self.leaves + cpu)
            .map_or(u64::MAX, |w| unsafe { read_volatile(w) })
    }

    /// The CPU whose next event is the earliest beneath node `n`.
    #[inline(always)]
    fn winner(self, n: u32) -> u32 {
        if n >= self.leaves {
            return n - self.leaves;
        }
        // SAFETY: as above.
        self.word(n)
            .map_or(u32::MAX, |w| unsafe { read_volatile(w) } as u32)
    }

    /// Sets node `n` (above the leaves) to the earlier of its children's.
    #[inline(always)]
    fn settle(self, n: u32) {
        let (left, right) = (self.winner(2 * n), self.winner(2 * n + 1));
        let first = if self.time(right) < self.time(left) {
            right
        } else {
            left
        };
        if let Some(w) = self.word(n) {
            // SAFETY: an array slot, written only by this tree's drain.
            unsafe { write_volatile(w, u64::from(first)) };
        }
    }

    /// Sets `cpu`'s leaf to `time` and the nodes above it again: as many
    /// as the tree has levels above its leaves, counted from [`leaves`],
    /// which the verifier reads as the constant the agent wrote. Counted
    /// from the node instead (until the root's parent, 0), the climb was
    /// walked by the verifier to [`MAX_DEPTH`] on any node: 377,000
    /// instructions checked in each drain where 57,000 do on 2 CPUs (see
    /// docs/counting.md, "What verifying the drain costs").
    #[inline(always)]
    fn replace(self, cpu: u32, time: u64) {
        self.set_time(cpu, time);
        let mut n = (self.leaves + cpu) / 2;
        let mut width = leaves() / 2;
        for _ in 0..MAX_DEPTH {
            if width == 0 {
                break;
            }
            self.settle(n);
            n /= 2;
            width /= 2;
        }
    }

    #[inline(always)]
    fn set_time(self, cpu: u32, time: u64) {
        if let Some(w) = self.word(self.leaves + cpu) {
            // SAFETY: an array slot, written only by this tree's drain.
            unsafe { write_volatile(w, time) };
        }
    }
}

/// Fills leaf `cpu` of the drain's tree.
#[inline(never)]
extern "C" fn fill_leaf(cpu: u64, ctx: *mut c_void) -> i64 {
    if ctx.is_null() {
        return 1;
    }
    // SAFETY: the drain's own state, passed through `bpf_loop`.
    let d = unsafe { &*ctx.cast::<Drain>() };
    let cpu = cpu as u32;
    d.order.set_time(cpu, next_time(cpu, d.cutoff));
    0
}

/// Settles the drain's tree's nodes, from the last above the leaves up.
#[inline(never)]
extern "C" fn settle_node(i: u64, ctx: *mut c_void) -> i64 {
    if ctx.is_null() {
        return 1;
    }
    // SAFETY: as above.
    let d = unsafe { &*ctx.cast::<Drain>() };
    d.order.settle(d.order.leaves - 1 - i as u32);
    0
}

/// Applies the earliest event across the parts, if one is old enough,
/// then reads its part's next into the tree. One way to the tree's
/// update, whatever became of the event: the verifier walks each copy of
/// it apart.
#[inline(never)]
extern "C" fn drain_one(_: u64, ctx: *mut c_void) -> i64 {
    if ctx.is_null() {
        return 1;
    }
    // SAFETY: as above.
    let d = unsafe { &mut *ctx.cast::<Drain>() };
    let cpu = d.order.winner(1);
    let time = d.order.time(cpu);
    if time == u64::MAX {
        return 1;
    }
    let (Some(head), Some(tail)) = (pos(cpu, HEAD), pos(cpu, TAIL)) else {
        return 1;
    };
    if let Some((ev, spilt, t)) = claim(cpu, head, tail, time) {
        apply(&d.ctx, &ev);
        d.applied += 1;
        if spilt && SPILL.remove(&spill_key(cpu, t)).is_ok() {
            if let Some(spilled) = spilled() {
                // SAFETY: an array slot; adding 2^64 - 1 takes one away.
                unsafe { atomic::add(spilled, u64::MAX) };
            }
        }
    }
    d.order.replace(cpu, next_time(cpu, d.cutoff));
    0
}

/// Claims `cpu`'s next event, which the tree says was written at `time`,
/// by moving its part's tail past it: should another drain run beside
/// this one (one that overran its time), each event is still applied
/// once. Returns the event, whether it is in the spill and its position;
/// `None` where that drain moved the tail since: the leaf is stale.
#[inline(always)]
fn claim(cpu: u32, head: *mut u64, tail: *mut u64, time: u64) -> Option<(CtEvent, bool, u64)> {
    // SAFETY: array slots.
    let t = unsafe { read_volatile(tail) };
    let h = published(head);
    let (ev, spilt) = event(cpu, t).filter(|_| h != t)?;
    // SAFETY: an array slot; drains move tails only by compare-and-swap.
    (ev.at == time && unsafe { atomic::cmpxchg(tail, t, t + 1) } == t).then_some((ev, spilt, t))
}

/// A part's head, read before the events it publishes: fully ordered
/// where the writer orders it so.
#[inline(always)]
fn published(head: *mut u64) -> u64 {
    // SAFETY: an array slot.
    unsafe {
        if ordered() {
            atomic::load(head)
        } else {
            read_volatile(head)
        }
    }
}

/// When `cpu`'s next event was written, if it is at or before `cutoff`;
/// else `u64::MAX`.
#[inline(always)]
fn next_time(cpu: u32, cutoff: u64) -> u64 {
    if cpu >= cpus() {
        return u64::MAX;
    }
    let (Some(head), Some(tail)) = (pos(cpu, HEAD), pos(cpu, TAIL)) else {
        return u64::MAX;
    };
    let h = published(head);
    // SAFETY: an array slot.
    let t = unsafe { read_volatile(tail) };
    if h == t {
        return u64::MAX;
    }
    stamp(cpu, t).filter(|&at| at <= cutoff).unwrap_or(u64::MAX)
}

/// `cpu`'s event at position `at` (published: before the head), and
/// whether it is in the spill.
#[inline(always)]
fn event(cpu: u32, at: u64) -> Option<(CtEvent, bool)> {
    let (ev, spilt) = locate(cpu, at)?;
    // SAFETY: a published event: the writer wrote it whole before the
    // head and does not write it again until the tail passes it.
    Some((unsafe { read_volatile(ev) }, spilt))
}

/// When `cpu`'s event at position `at` was written: all the drain reads
/// of the other parts' next events to find the earliest.
#[inline(always)]
fn stamp(cpu: u32, at: u64) -> Option<u64> {
    let (ev, _) = locate(cpu, at)?;
    // SAFETY: as in `event`.
    Some(unsafe { read_volatile(&raw const (*ev).at) })
}

/// Where `cpu`'s event at position `at` is: in the spill (while it holds
/// any, and holds this one), else in its part.
#[inline(always)]
fn locate(cpu: u32, at: u64) -> Option<(*const CtEvent, bool)> {
    let spilled = spilled()?;
    // SAFETY: an array slot. A writer counts its spilled event before it
    // publishes the head, which the caller read (fully ordered) before.
    if unsafe { read_volatile(spilled) } != 0 {
        if let Some(ev) = SPILL.get_ptr(&spill_key(cpu, at)) {
            return Some((ev, true));
        }
    }
    Some((slot(cpu, at)?.cast_const(), false))
}

#[inline(always)]
fn apply(ctx: &TcContext, ev: &CtEvent) {
    match ev.kind {
        CT_EVENT_SYN => ct_flow::start(ctx, &ct_flow::Syn::from(ev)),
        CT_EVENT_SYN_ACK => ct_flow::answered(&ct_flow::SynAck::from(ev)),
        CT_EVENT_END => ct_flow::finish(&ct_flow::End::from(ev)),
        CT_EVENT_CROSSING => ct_flow::crossed(&ct_flow::Crossing::from(ev)),
        _ => {}
    }
}

//! Walks over every counted socket, in every network namespace: over the
//! slots (a TC program the agent runs with `BPF_PROG_TEST_RUN`, which
//! visits `EF_SOCK_SLOTS` with `bpf_for_each_map_elem`) and over socket
//! storage (`iter/bpf_sk_storage_map` on `EF_SOCKS`, where the kernel
//! allows that iterator), run by the agent before each read, so a
//! long-lived connection's bytes reach its endpoint every interval instead
//! of only at its close. They cost nothing per packet.

use core::{ffi::c_void, ptr::read_volatile};

use agent_common::{Direction, SOCK_ACTIVE, SOCK_CLOSED, SockSlot, SockState};
use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_STATE_CB_FLAG},
    helpers::generated::bpf_skc_to_tcp_sock,
    macros::classifier,
    programs::TcContext,
};

use crate::{
    adopt::{self, TcpIterCtx},
    atomic,
    kernel::{self, SockCounters},
    sock::{self, Payload},
    sweeper,
};

#[classifier]
pub fn evenflow_slot_sampler(_ctx: TcContext) -> i32 {
    sweeper::for_each(&sock::SOCK_SLOTS, sample_slot);
    0
}

#[inline(never)]
extern "C" fn sample_slot(
    _: *mut c_void,
    _: *const c_void,
    slot: *mut c_void,
    _: *mut c_void,
) -> i64 {
    let slot = slot.cast::<SockSlot>();
    if slot.is_null() {
        return 0;
    }
    let Some(v) = sock::view(slot) else {
        return 0;
    };
    if v.flags & SOCK_CLOSED != 0 {
        return 0;
    }
    let Some(c) = owner_counters(&v) else {
        return 0;
    };
    if !sock::still(slot, &v) {
        return 0;
    }
    // SAFETY: a slot of the array.
    let marks = unsafe { &raw mut (*slot).marks };
    sock::fold(
        &v.endpoint,
        marks,
        v.tag,
        &sock::live_payload(v.flags, &c),
        false,
    );
    0
}

/// Reads of a slot's socket before an identity not the owner's is
/// believed (see [`owner_counters`]).
const READS: u32 = 3;

/// The counters of the socket a slot names, if it is still the owner.
/// Another socket at the owner's address (the owner died without its
/// close reaching sock_ops) is not: its next claim there takes the slot
/// over. Nor, for one read, is the owner while an ACK moves `snd_una` and
/// `bytes_acked` (the sampler holds no lock on it): the pair read half
/// moved gives another identity, so it is read again.
#[inline(always)]
fn owner_counters(v: &sock::SlotView) -> Option<SockCounters> {
    for _ in 0..READS {
        let (c, id) = kernel::probe_tcp_sock_counters(v.sk)?;
        if sock::same_socket(v, id) {
            return Some(c);
        }
    }
    None
}

/// `struct bpf_iter__bpf_sk_storage_map`.
#[repr(C)]
pub struct SkStorageIterCtx {
    meta: *mut core::ffi::c_void,
    map: *mut core::ffi::c_void,
    sk: *mut core::ffi::c_void,
    value: *mut SockState,
}

#[unsafe(link_section = "iter/bpf_sk_storage_map")]
#[unsafe(no_mangle)]
pub extern "C" fn evenflow_sock_sampler(ctx: *mut SkStorageIterCtx) -> i32 {
    // SAFETY: the context the kernel passed; both pointers are null-checked.
    let (sk, st) = unsafe { (read_volatile(&(*ctx).sk), read_volatile(&(*ctx).value)) };
    if sk.is_null() || st.is_null() {
        return 0;
    }
    sample_storage(sk, st);
    0
}

/// The TCP sockets of the network namespace the agent opens it in
/// (`iter/tcp`), each one's storage looked up: where a walk samples
/// sockets (see `sock::WALK_SAMPLING`), run in every namespace each
/// interval, it also takes a counted socket it meets without state into
/// storage (see [`take`]); elsewhere, where the kernel refuses socket
/// storage iterators, run once a socket has gone to storage. The iterator
/// holds each socket's lock while the program runs.
#[unsafe(link_section = "iter/tcp")]
#[unsafe(no_mangle)]
pub extern "C" fn evenflow_sock_sampler_tcp(ctx: *mut TcpIterCtx) -> i32 {
    // SAFETY: the context the kernel passed; null-checked.
    let skc = unsafe { read_volatile(&(*ctx).sk_common) };
    if skc.is_null() {
        return 0;
    }
    // SAFETY: a non-null socket pointer.
    let sk = unsafe { bpf_skc_to_tcp_sock(skc) } as *mut c_void;
    if let Some(st) = sock::storage(sk, false) {
        sample_storage(sk, st);
    } else if sock::walk_sampling() && !sk.is_null() {
        take(skc, sk);
    }
    0
}

/// Takes a socket sock_ops counts without state (it has the state
/// callbacks, is open, and no walk sampled it yet) into socket storage,
/// marked [`sock::SAMPLED`] first, and samples it: its close then folds
/// only what this and later samples did not. The mark goes first so that
/// a storage that cannot be had leaves a close that finds none and counts
/// everything. A socket of another cgroup than sock_ops' is another
/// agent's (two agents on one kernel, as in a lab). Out of line: the
/// sampled sockets, met every interval, return before it.
#[inline(never)]
fn take(skc: *mut c_void, sk: *mut c_void) {
    if !adopt::open_state(skc) {
        return;
    }
    let tp = sk as *const u8;
    let Some(cb) = adopt::callbacks(tp) else {
        return;
    };
    if cb & BPF_SOCK_OPS_STATE_CB_FLAG == 0 || !adopt::in_cgroup(skc) {
        return;
    }
    let active = cb & BPF_SOCK_OPS_RTO_CB_FLAG != 0;
    let Some(ends) = adopt::Ends::of(skc) else {
        return;
    };
    let (endpoint, flags) = if active {
        (ends.remote(), SOCK_ACTIVE)
    } else {
        (ends.local(Direction::Serves), 0)
    };
    if cb & sock::SAMPLED == 0 && !adopt::set_callbacks(tp, cb | sock::SAMPLED) {
        return;
    }
    if let Some(st) = sock::keep(sk, &endpoint, flags, &Payload::NONE) {
        sample_storage(sk, st);
    }
}

/// Adds what the socket `sk` carried since its storage `st` last recorded.
/// The generation is read first and the flags before the endpoint (the
/// order a reused storage is written in reverse, see
/// `sock::keep_in_storage`): a reading that spans a reconnect raises no
/// mark of the new connection. Out of line: [`take`] calls it too, and
/// the two frames in one would pass the verifier's bound on stack.
#[inline(never)]
fn sample_storage(sk: *mut c_void, st: *mut SockState) {
    // SAFETY: `st` is this socket's storage.
    let (tag, flags, endpoint, marks) = unsafe {
        let marks = &raw mut (*st).marks;
        let tag = sock::tag_of(atomic::load(&raw mut (*marks).rx));
        let flags = read_volatile(&(*st).flags);
        // Ordered after the flags (arm64 reorders loads): flags without
        // the mark are written after the endpoint.
        atomic::load(&raw mut (*marks).rx);
        (tag, flags, read_volatile(&(*st).endpoint), marks)
    };
    if endpoint.direction == 0 || flags & SOCK_CLOSED != 0 {
        return;
    }
    // SAFETY: a non-null socket pointer.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk) } as *const u8;
    if tp.is_null() {
        return;
    }
    // SAFETY: a non-null tcp_sock BTF pointer.
    let c = unsafe { kernel::tcp_sock_counters(tp) };
    // The storage iterator holds no reference on the socket: it may have
    // closed since its flags were read, and its memory gone to a new
    // socket (the kernel reuses a TCP socket's memory without waiting),
    // whose counters these would then be. Its close marked the storage
    // first; read after a full barrier, the mark tells.
    // SAFETY: `st` is this socket's storage.
    let closed = unsafe {
        atomic::load(&raw mut (*marks).rx);
        read_volatile(&(*st).flags) & SOCK_CLOSED != 0
    };
    if closed {
        return;
    }
    sock::fold(&endpoint, marks, tag, &sock::live_payload(flags, &c), false);
}

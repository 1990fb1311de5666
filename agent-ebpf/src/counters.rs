//! The endpoint counters, the self-accounting stats and the meta array
//! (the agent's, but for one flag the programs raise).

use core::ptr::{read_volatile, write_volatile};

use agent_common::{
    CHANGED_BUFFERS, CHANGED_KEYS, ChangedKeys, EndpointCounters, EndpointKey, MAX_ENDPOINTS,
    META_CHANGES_GEN, META_COUNT, STAT_COUNT, Stat,
};
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, PerCpuArray, PerCpuHashMap},
};

use crate::atomic;

/// Cumulative counters per endpoint. Per CPU so writers on different CPUs
/// never share a cache line; not LRU, because an endpoint's totals must
/// never restart at zero within an epoch; pinned so an agent restart keeps
/// them. Written on connection events and folds only, never per packet.
/// Not preallocated: an endpoint's counters, one set per CPU, are
/// allocated when it first appears, where preallocating would hold
/// `MAX_ENDPOINTS` sets on every CPU (192 MiB on a 64-CPU node).
#[map(name = "EF_ENDPOINTS")]
static ENDPOINTS: PerCpuHashMap<EndpointKey, EndpointCounters> =
    PerCpuHashMap::pinned(MAX_ENDPOINTS, BPF_F_NO_PREALLOC);

/// The endpoints counted in each reading generation, which the agent reads
/// instead of the whole map (see `META_CHANGES_GEN`). Memory-mappable, so
/// the agent reads the keys and clears a buffer without a syscall.
#[map(name = "EF_CHANGED")]
static CHANGED: Array<ChangedKeys> = Array::pinned(CHANGED_BUFFERS, BPF_F_MMAPABLE as u32);

/// What could not be counted, and bookkeeping userspace reports.
#[map(name = "EF_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(STAT_COUNT, 0);

/// Written by userspace (epoch, layout version, flow timeouts), but for
/// the flags the programs raise ([`raise`]); pinned with the counters so it
/// lives and dies with them.
#[map(name = "EF_META")]
static META: Array<u64> = Array::pinned(META_COUNT, 0);

#[inline(always)]
pub fn stat(which: Stat, n: u64) {
    if let Some(slot) = STATS.get_ptr_mut(which as u32) {
        // SAFETY: a per-CPU slot of a live array.
        unsafe { atomic::add(slot, n) };
    }
}

/// Counts an insert the kernel refused with `err`: in `failed`, and in
/// `no_memory` as well when it could not allocate the entry (`-ENOMEM`)
/// instead of finding the map full, so that the agent can say which limit
/// to raise.
#[inline(always)]
pub fn insert_failed(err: i32, failed: Stat, no_memory: Stat) {
    stat(failed, 1);
    if err == -12 {
        stat(no_memory, 1);
    }
}

/// A `u64` the agent wrote into `EF_META`.
#[inline(always)]
pub fn meta(slot: u32) -> u64 {
    META.get(slot).copied().unwrap_or(0)
}

/// Raises the flag in `EF_META`'s `slot`, reading it first: raised once,
/// its line then stays shared in every CPU's cache, not written again.
#[inline(always)]
pub fn raise(slot: u32) {
    if let Some(flag) = META.get_ptr_mut(slot) {
        // SAFETY: a slot of a live array; a flag only ever goes 0 → 1.
        unsafe {
            if read_volatile(flag) == 0 {
                write_volatile(flag, 1);
            }
        }
    }
}

/// This CPU's counters for `key`, created zeroed on first use, and the
/// key noted as counted in this reading generation.
#[inline(always)]
fn counters(key: &EndpointKey) -> Option<*mut EndpointCounters> {
    let c = match ENDPOINTS.get_ptr_mut(key) {
        Some(c) => c,
        None => create(key)?,
    };
    let generation = meta(META_CHANGES_GEN);
    // SAFETY: a per-CPU value of a live entry. Only this CPU writes it; a
    // program interrupting this one between the read and the write notes
    // the key a second time, which the agent reads once.
    unsafe {
        let noted = &raw mut (*c).noted;
        if read_volatile(noted) != generation {
            write_volatile(noted, generation);
            note_changed(key, generation);
        }
    }
    Some(c)
}

/// Appends `key` to `generation`'s buffer in `EF_CHANGED`. Out of line:
/// an endpoint gets here once a generation on each CPU, not at each count.
/// A note past the buffer's room is only counted: the agent then reads
/// the whole map.
#[inline(never)]
fn note_changed(key: &EndpointKey, generation: u64) {
    let Some(buf) = CHANGED.get_ptr_mut((generation % CHANGED_BUFFERS as u64) as u32) else {
        return;
    };
    // SAFETY: a live array element; `at` is checked against the room and
    // masked to it (a power of two), which the verifier needs to see.
    unsafe {
        let at = atomic::fetch_add(&raw mut (*buf).len, 1);
        if at < CHANGED_KEYS as u64 {
            let slot = &raw mut (*buf).keys[(at as usize) & (CHANGED_KEYS - 1)];
            write_volatile(slot, *key);
        }
    }
}

/// Zeroed counters, for [`create`] to insert: the helper reads them from
/// here, so no zeroed copy is built on the stack (LLVM would write it with
/// a call to a byte-loop `memset`, two more frames on the deepest call
/// chain, which kernels before 6.9 count 32 bytes each against the
/// 512-byte stack).
static ZERO: EndpointCounters = EndpointCounters {
    conns_opened: 0,
    conns_closed: 0,
    bytes_rx: 0,
    bytes_tx: 0,
    packets_rx: 0,
    packets_tx: 0,
    conns_failed: 0,
    conns_unanswered: 0,
    conns_failed_unanswered: 0,
    noted: 0,
};

/// Inserts zeroed counters for `key`. Out of line: only an endpoint's first
/// event (per CPU) gets here.
#[inline(never)]
fn create(key: &EndpointKey) -> Option<*mut EndpointCounters> {
    match ENDPOINTS.insert(key, &ZERO, BPF_NOEXIST as u64) {
        Ok(()) => stat(Stat::EndpointInserted, 1),
        // -EEXIST: another CPU inserted it first; anything else is a failure.
        Err(e) if e == -17 => {}
        Err(e) => {
            insert_failed(e, Stat::EndpointInsertFailed, Stat::EndpointNoMemory);
            return None;
        }
    }
    ENDPOINTS.get_ptr_mut(key)
}

/// Counts one connection opened towards `key`.
#[inline(always)]
pub fn opened(key: &EndpointKey) {
    if let Some(c) = counters(key) {
        // SAFETY: a per-CPU value of a live entry.
        unsafe { atomic::add(&raw mut (*c).conns_opened, 1) };
    }
}

/// Traffic to add to an endpoint: payload bytes and packets each way, from
/// this node's point of view (rx = received from the other side), and the
/// connection's open and close, or its failure, when it ended (one lookup
/// for all).
#[derive(Copy, Clone, Default)]
pub struct Traffic {
    pub bytes_rx: u64,
    pub bytes_tx: u64,
    pub packets_rx: u64,
    pub packets_tx: u64,
    pub conns_opened: u64,
    pub conns_closed: u64,
    pub conns_failed: u64,
    pub conns_unanswered: u64,
    pub conns_failed_unanswered: u64,
}

impl Traffic {
    /// A connection attempt that never opened, alone; `unanswered` when
    /// it was counted unanswered first.
    #[inline(always)]
    pub fn failed(unanswered: bool) -> Self {
        Self {
            conns_failed: 1,
            conns_failed_unanswered: unanswered as u64,
            ..Self::default()
        }
    }

    /// A connection attempt whose SYN went unanswered for
    /// `UNANSWERED_AFTER_NS`, alone.
    #[inline(always)]
    pub fn unanswered() -> Self {
        Self {
            conns_unanswered: 1,
            ..Self::default()
        }
    }

    #[inline(always)]
    fn is_empty(&self) -> bool {
        self.bytes_rx
            | self.bytes_tx
            | self.packets_rx
            | self.packets_tx
            | self.conns_opened
            | self.conns_closed
            | self.conns_failed
            | self.conns_unanswered
            | self.conns_failed_unanswered
            == 0
    }
}

/// Adds `t` to `key`'s counters (nothing at all when `t` is empty).
#[inline(always)]
pub fn add_traffic(key: &EndpointKey, t: &Traffic) {
    if t.is_empty() {
        return;
    }
    let Some(c) = counters(key) else {
        return;
    };
    // SAFETY: a per-CPU value of a live entry.
    unsafe {
        for (field, v) in [
            (&raw mut (*c).bytes_rx, t.bytes_rx),
            (&raw mut (*c).bytes_tx, t.bytes_tx),
            (&raw mut (*c).packets_rx, t.packets_rx),
            (&raw mut (*c).packets_tx, t.packets_tx),
            (&raw mut (*c).conns_opened, t.conns_opened),
            (&raw mut (*c).conns_closed, t.conns_closed),
            (&raw mut (*c).conns_failed, t.conns_failed),
            (&raw mut (*c).conns_unanswered, t.conns_unanswered),
            (
                &raw mut (*c).conns_failed_unanswered,
                t.conns_failed_unanswered,
            ),
        ] {
            if v != 0 {
                atomic::add(field, v);
            }
        }
    }
}

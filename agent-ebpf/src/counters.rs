//! The endpoint counters and the self-accounting stats map.

use agent_common::{EndpointCounters, EndpointKey, MAX_ENDPOINTS, META_COUNT, STAT_COUNT, Stat};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, LruPerCpuHashMap, PerCpuArray},
};

use crate::packet::Side;

/// Cumulative counters per endpoint. Per CPU because every packet writes;
/// LRU because keys come from traffic; pinned so an agent restart keeps them.
#[map(name = "EF_ENDPOINTS")]
static ENDPOINTS: LruPerCpuHashMap<EndpointKey, EndpointCounters> =
    LruPerCpuHashMap::pinned(MAX_ENDPOINTS, 0);

/// What could not be counted, and insert counts from which userspace derives
/// LRU evictions (inserted - live).
#[map(name = "EF_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(STAT_COUNT, 0);

/// Written by userspace only (epoch, layout version); pinned with the
/// counters so it lives and dies with them.
#[map(name = "EF_META")]
pub static META: Array<u64> = Array::pinned(META_COUNT, 0);

#[inline(always)]
pub fn stat(which: Stat, n: u64) {
    if let Some(slot) = STATS.get_ptr_mut(which as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *slot += n };
    }
}

/// This CPU's counters for `key`, created zeroed on first use.
#[inline(always)]
fn counters(key: &EndpointKey) -> Option<&'static mut EndpointCounters> {
    match ENDPOINTS.get_ptr_mut(key) {
        // SAFETY: per-CPU value of a live entry.
        Some(c) => Some(unsafe { &mut *c }),
        None => create(key),
    }
}

/// Inserts zeroed counters for `key` and returns this CPU's. Out of line:
/// only an endpoint's first packet (per CPU) or connection gets here.
#[inline(never)]
fn create(key: &EndpointKey) -> Option<&'static mut EndpointCounters> {
    let zero = EndpointCounters::default();
    match ENDPOINTS.insert(key, &zero, BPF_NOEXIST as u64) {
        Ok(()) => stat(Stat::EndpointInserted, 1),
        // -EEXIST: another CPU inserted it first; anything else is a failure.
        Err(e) if e == -17 => {}
        Err(_) => {
            stat(Stat::EndpointInsertFailed, 1);
            return None;
        }
    }
    // SAFETY: as above.
    ENDPOINTS.get_ptr_mut(key).map(|c| unsafe { &mut *c })
}

#[inline(always)]
pub fn bump_connections(key: &EndpointKey, opened: u64, closed: u64) {
    if let Some(c) = counters(key) {
        c.conns_opened += opened;
        c.conns_closed += closed;
    }
}

#[inline(always)]
pub fn add_traffic(key: &EndpointKey, side: Side, bytes: u64, packets: u64) {
    if let Some(c) = counters(key) {
        match side {
            Side::Ingress => {
                c.bytes_rx += bytes;
                c.packets_rx += packets;
            }
            Side::Egress => {
                c.bytes_tx += bytes;
                c.packets_tx += packets;
            }
        }
    }
}

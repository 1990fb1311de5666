//! The flow map: which endpoint each live flow's packets count towards.

use agent_common::{FlowKey, FlowValue, MAX_FLOWS, Stat};
use aya_ebpf::{macros::map, maps::LruHashMap};

use crate::counters::stat;

/// Live flows. Written on open and close only (sock_ops, forwarded SYNs and
/// FINs), read by every packet. LRU so flows whose close was never seen age
/// out; pinned so a restarted agent still attributes old connections.
#[map(name = "EF_FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::pinned(MAX_FLOWS, 0);

#[inline(always)]
pub fn insert(key: &FlowKey, value: &FlowValue) -> Result<(), i32> {
    match FLOWS.insert(key, value, 0) {
        Ok(()) => {
            stat(Stat::FlowInserted, 1);
            Ok(())
        }
        Err(e) => {
            stat(Stat::FlowInsertFailed, 1);
            Err(e)
        }
    }
}

#[inline(always)]
pub fn remove(key: &FlowKey) {
    if FLOWS.remove(key).is_ok() {
        stat(Stat::FlowDeleted, 1);
    }
}

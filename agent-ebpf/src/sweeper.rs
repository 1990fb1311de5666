//! Iterators over forwarded connections (`iter/bpf_map_elem` on `EF_FLOWS`,
//! `EF_CT_FLOWS` and `EF_CT_YOUNG`), run by the agent before each read: they fold each
//! connection's bytes into its endpoint, so long-lived forwarded
//! connections show up every interval, and end the connections that are
//! gone (idle past their timeout: a peer that vanished, an asymmetric
//! return path, a SYN nobody answered; or forgotten by conntrack), so no
//! flow state outlives its flow.

use core::ptr::read_volatile;

use agent_common::{CtFlow, FlowKey, FlowValue};

use crate::{
    ct_flow::{self, Tier},
    forward,
};

/// `struct bpf_iter__bpf_map_elem` over a map of `K` to `V`.
#[repr(C)]
pub struct MapElemIterCtx<K, V> {
    pub meta: *mut crate::adopt::IterMeta,
    map: *mut core::ffi::c_void,
    pub key: *const K,
    pub value: *mut V,
}

#[unsafe(link_section = "iter/bpf_map_elem")]
#[unsafe(no_mangle)]
pub extern "C" fn evenflow_flow_sweeper(ctx: *mut MapElemIterCtx<FlowKey, FlowValue>) -> i32 {
    if let Some((key, value)) = visited(ctx) {
        forward::sweep(key, value);
    }
    0
}

#[unsafe(link_section = "iter/bpf_map_elem")]
#[unsafe(no_mangle)]
pub extern "C" fn evenflow_ct_sweeper(ctx: *mut MapElemIterCtx<u64, CtFlow>) -> i32 {
    if let Some((key, value)) = visited(ctx) {
        ct_flow::sweep(key, value, Tier::Settled);
    }
    0
}

#[unsafe(link_section = "iter/bpf_map_elem")]
#[unsafe(no_mangle)]
pub extern "C" fn evenflow_ct_young_sweeper(ctx: *mut MapElemIterCtx<u64, CtFlow>) -> i32 {
    if let Some((key, value)) = visited(ctx) {
        ct_flow::sweep(key, value, Tier::Young);
    }
    0
}

/// The element being visited, its key left in place: a sweeper reads it
/// only after the entry's tag, since the element may be deleted and
/// given to another connection meanwhile (see `agent_common::TAG_SHIFT`).
#[inline(always)]
pub fn visited<'a, K, V>(ctx: *mut MapElemIterCtx<K, V>) -> Option<(*const K, &'a mut V)> {
    // SAFETY: the context the kernel passed; both pointers are null-checked
    // before use, and stay valid memory until the visit is over.
    unsafe {
        let (key, value) = (read_volatile(&(*ctx).key), read_volatile(&(*ctx).value));
        if key.is_null() || value.is_null() {
            return None;
        }
        Some((key, &mut *value))
    }
}

//! Walks over forwarded connections (`EF_FLOWS`, `EF_CT_FLOWS` and
//! `EF_CT_YOUNG`), run by the agent before each read: they fold each
//! connection's bytes into its endpoint, so long-lived forwarded
//! connections show up every interval, and end the connections that are
//! gone (idle past their timeout: a peer that vanished, an asymmetric
//! return path, a SYN nobody answered; or forgotten by conntrack), so no
//! flow state outlives its flow.
//!
//! Each walk is a TC program that is never attached: the agent runs it
//! with `BPF_PROG_TEST_RUN`, and it visits the map with
//! `bpf_for_each_map_elem` (Linux 5.13). Not a map-element iterator:
//! kernels hardened against those (seen: lockdown builds that refuse
//! `iter/bpf_map_elem` with EPERM) still run these.

use core::ffi::c_void;

use agent_common::{CtFlow, FlowKey, FlowValue};
use aya_ebpf::{
    helpers::generated::bpf_for_each_map_elem, macros::classifier, programs::TcContext,
};

use crate::{
    ct_flow::{self, CT_FLOWS, CT_YOUNG, Tier},
    forward::{self, FLOWS},
};

/// Calls `visit` on every element of `map`, in the kernel's order. The
/// element may be deleted (and its memory given to another entry) while
/// `visit` runs: see [`element`].
#[inline(always)]
pub fn for_each<M>(
    map: &M,
    visit: extern "C" fn(*mut c_void, *const c_void, *mut c_void, *mut c_void) -> i64,
) {
    // SAFETY: `map` is a map definition the loader relocates to its fd,
    // `visit` a function it relocates to a callback subprogram.
    unsafe {
        bpf_for_each_map_elem(
            map as *const M as *mut c_void,
            visit as *const () as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
    }
}

#[classifier]
pub fn evenflow_flow_sweeper(_ctx: TcContext) -> i32 {
    for_each(&FLOWS, sweep_flow);
    0
}

#[classifier]
pub fn evenflow_ct_sweeper(_ctx: TcContext) -> i32 {
    for_each(&CT_FLOWS, sweep_settled);
    0
}

#[classifier]
pub fn evenflow_ct_young_sweeper(_ctx: TcContext) -> i32 {
    for_each(&CT_YOUNG, sweep_young);
    0
}

#[inline(never)]
extern "C" fn sweep_flow(
    _: *mut c_void,
    key: *const c_void,
    value: *mut c_void,
    _: *mut c_void,
) -> i64 {
    if let Some((key, value)) = element::<FlowKey, FlowValue>(key, value) {
        forward::sweep(key, value);
    }
    0
}

#[inline(never)]
extern "C" fn sweep_settled(
    _: *mut c_void,
    key: *const c_void,
    value: *mut c_void,
    _: *mut c_void,
) -> i64 {
    sweep_ct(key, value, Tier::Settled)
}

#[inline(never)]
extern "C" fn sweep_young(
    _: *mut c_void,
    key: *const c_void,
    value: *mut c_void,
    _: *mut c_void,
) -> i64 {
    sweep_ct(key, value, Tier::Young)
}

#[inline(always)]
fn sweep_ct(key: *const c_void, value: *mut c_void, tier: Tier) -> i64 {
    if let Some((key, value)) = element::<u64, CtFlow>(key, value) {
        ct_flow::sweep(key, value, tier);
    }
    0
}

/// The element a walk visits, its key left in place: a sweeper reads it
/// only after the entry's tag, since the element may be deleted and
/// given to another connection meanwhile (see `agent_common::TAG_SHIFT`).
#[inline(always)]
pub fn element<'a, K, V>(key: *const c_void, value: *mut c_void) -> Option<(*const K, &'a mut V)> {
    if key.is_null() || value.is_null() {
        return None;
    }
    // SAFETY: non-null pointers the kernel passed to a map's element,
    // valid memory until the visit is over.
    Some((key.cast(), unsafe { &mut *value.cast::<V>() }))
}

//! An iterator over forwarded flows (`iter/bpf_map_elem` on `EF_FLOWS`), run
//! by the agent before each read: it folds each half's bytes into its
//! endpoint, so long-lived forwarded connections show up every interval, and
//! ends the connections that went idle past their timeout (a peer that
//! vanished, an asymmetric return path, a SYN nobody answered), so no flow
//! state outlives its flow.

use core::ptr::read_volatile;

use agent_common::{FlowKey, FlowValue};

use crate::forward;

/// `struct bpf_iter__bpf_map_elem`.
#[repr(C)]
pub struct MapElemIterCtx {
    meta: *mut core::ffi::c_void,
    map: *mut core::ffi::c_void,
    key: *const FlowKey,
    value: *mut FlowValue,
}

#[unsafe(link_section = "iter/bpf_map_elem")]
#[unsafe(no_mangle)]
pub extern "C" fn evenflow_flow_sweeper(ctx: *mut MapElemIterCtx) -> i32 {
    // SAFETY: the context the kernel passed; both pointers are null-checked.
    let (key, value) = unsafe { (read_volatile(&(*ctx).key), read_volatile(&(*ctx).value)) };
    if key.is_null() || value.is_null() {
        return 0;
    }
    // SAFETY: the element being visited (valid until the visit is over);
    // the key is copied to the stack for the helpers.
    unsafe {
        let key = read_volatile(key);
        forward::sweep(&key, &mut *value);
    }
    0
}

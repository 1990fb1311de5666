//! A walk the agent runs once at start over the forwarded connections
//! conntrack follows that were established before evenflow could see their
//! SYN (evenflow's first start on a node that forwards, or a start on
//! fresh maps after an upgrade): it adopts each into `EF_CT_FLOWS`, as if
//! its handshake had just ended.
//!
//! Without it such a connection is never counted on the node that
//! balances it: a gRPC channel through a load balancer stays invisible
//! there until it reconnects, and the backend holding the most of them
//! looks the least loaded. The agent finds them in conntrack's table
//! (ctnetlink) and their records' addresses with a lookup by tuple (see
//! the agent's `ct_lookup.rs`), and hands them over in `EF_CT_ADOPT`.

use core::{
    ffi::c_void,
    ptr::{read_volatile, write_volatile},
};

use agent_common::{CT_ADOPT_BATCH, CtAdopt};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::{classifier, map},
    maps::HashMap,
    programs::TcContext,
};

use crate::{ct_flow, sweeper};

/// The connections to adopt, by their record's address. Not pinned: the
/// agent fills it for each run.
#[map(name = "EF_CT_ADOPT")]
static CT_ADOPT: HashMap<u64, CtAdopt> =
    HashMap::with_max_entries(CT_ADOPT_BATCH, BPF_F_NO_PREALLOC);

/// A walk over `EF_CT_ADOPT` (see [`sweeper`]), which the agent reads the
/// outcomes back from.
#[classifier]
pub fn evenflow_ct_adopt(_ctx: TcContext) -> i32 {
    sweeper::for_each(&CT_ADOPT, adopt_one);
    0
}

#[inline(never)]
extern "C" fn adopt_one(
    _: *mut c_void,
    key: *const c_void,
    value: *mut c_void,
    _: *mut c_void,
) -> i64 {
    if let Some((conn, c)) = sweeper::element::<u64, CtAdopt>(key, value) {
        // SAFETY: the key of the element being visited; nothing else
        // deletes from this map.
        let conn = unsafe { read_volatile(conn) };
        let outcome = ct_flow::adopt(
            conn,
            (&c.client_addr, c.client_port),
            (&c.backend_addr, c.backend_port),
        );
        // SAFETY: a field of the element being visited.
        unsafe { write_volatile(&raw mut c.outcome, outcome) };
    }
    0
}

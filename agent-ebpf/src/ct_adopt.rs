//! An iterator the agent runs once at start over the forwarded connections
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

use core::ptr::read_volatile;

use agent_common::{CT_ADOPT_BATCH, CtAdopt};
use aya_ebpf::{bindings::BPF_F_NO_PREALLOC, macros::map, maps::HashMap};

use crate::{
    adopt::write,
    ct_flow,
    sweeper::{MapElemIterCtx, visited},
};

/// The connections to adopt, by their record's address. Not pinned: the
/// agent fills it for each run.
#[map(name = "EF_CT_ADOPT")]
static CT_ADOPT: HashMap<u64, CtAdopt> =
    HashMap::with_max_entries(CT_ADOPT_BATCH, BPF_F_NO_PREALLOC);

#[unsafe(link_section = "iter/bpf_map_elem")]
#[unsafe(no_mangle)]
pub extern "C" fn evenflow_ct_adopt(ctx: *mut MapElemIterCtx<u64, CtAdopt>) -> i32 {
    if let Some((conn, c)) = visited(ctx) {
        // SAFETY: the key of the element being visited; nothing else
        // deletes from this map.
        let conn = unsafe { read_volatile(conn) };
        let client = (&c.client_addr, c.client_port);
        let backend = (&c.backend_addr, c.backend_port);
        // SAFETY: the context the kernel passed.
        write(
            unsafe { (*ctx).meta },
            ct_flow::adopt(conn, client, backend),
        );
    }
    0
}

//! Local sockets: their storage and how their kernel counters become
//! endpoint counters, shared by sock_ops (at close) and the sampler (while
//! they live).
//!
//! A socket's payload bytes are the kernel's `bytes_received` and
//! `bytes_acked` less the sequence numbers that carry no data: the peer's
//! FIN (one in `bytes_received`), an active opener's SYN and an
//! acknowledged FIN of ours (one each in `bytes_acked`). sock_ops knows at
//! close which of those happened; a sample taken while the socket lives
//! cannot tell a FIN in flight from a data byte, so it always leaves one
//! byte each way for the close to add.

use agent_common::{SOCK_ACTIVE, SockState};
use aya_ebpf::bindings::{BPF_F_NO_PREALLOC, bpf_map_type::BPF_MAP_TYPE_SK_STORAGE};

use crate::{
    atomic,
    counters::{Traffic, add_traffic},
    kernel::SockCounters,
};

/// A BTF map definition for `EF_SOCKS`, written out because aya-ebpf's
/// `SkStorage` has no `pinning` field: the storage must outlive the agent
/// so sockets opened before a restart are still closed (and counted) after.
#[repr(C)]
pub struct SockStorage {
    r#type: *const [i32; BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const SockState,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
    /// `LIBBPF_PIN_BY_NAME`.
    pinning: *const [i32; 1],
}

// SAFETY: the fields are BTF placeholders, never dereferenced.
unsafe impl Sync for SockStorage {}

impl SockStorage {
    pub fn as_ptr(&self) -> *mut core::ffi::c_void {
        self as *const Self as *mut core::ffi::c_void
    }
}

/// Every counted socket's [`SockState`].
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "EF_SOCKS")]
pub static SOCKS: SockStorage = SockStorage {
    r#type: core::ptr::null(),
    key: core::ptr::null(),
    value: core::ptr::null(),
    max_entries: core::ptr::null(),
    map_flags: core::ptr::null(),
    pinning: core::ptr::null(),
};

/// Payload bytes and segments so far, from the socket's counters and what
/// is known of its SYN and FINs.
#[derive(Copy, Clone)]
pub struct Payload {
    pub rx: u64,
    pub tx: u64,
    pub segs_in: u64,
    pub segs_out: u64,
}

/// What a sample of a live socket may count: everything but one byte each
/// way (see the module comment).
#[inline(always)]
pub fn live_payload(flags: u8, c: &SockCounters) -> Payload {
    let syn = (flags & SOCK_ACTIVE != 0) as u64;
    Payload {
        rx: c.bytes_received.saturating_sub(1),
        tx: c.bytes_acked.saturating_sub(syn + 1),
        segs_in: c.segs_in,
        segs_out: c.segs_out,
    }
}

/// Adds to the socket's endpoint whatever of `p` was not added before, and
/// its close when `closing`. Racing folders (sock_ops on one CPU, the
/// sampler on another) each add only what they raised the high-water marks
/// by.
#[inline(always)]
pub fn fold(st: *mut SockState, p: &Payload, closing: bool) {
    // SAFETY: `st` points into live socket storage.
    let t = unsafe {
        Traffic {
            bytes_rx: atomic::raise_to(&raw mut (*st).folded_rx, p.rx),
            bytes_tx: atomic::raise_to(&raw mut (*st).folded_tx, p.tx),
            packets_rx: atomic::raise_to(&raw mut (*st).folded_segs_in, p.segs_in),
            packets_tx: atomic::raise_to(&raw mut (*st).folded_segs_out, p.segs_out),
            conns_closed: closing as u64,
        }
    };
    // SAFETY: as above.
    add_traffic(unsafe { &(*st).endpoint }, &t);
}

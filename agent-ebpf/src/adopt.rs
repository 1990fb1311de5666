//! An iterator over the TCP sockets of a network namespace (`iter/tcp`),
//! run once in each namespace each time the agent starts: it adopts the
//! connections established before sock_ops was there to see their
//! handshake (evenflow's first start, or a start on fresh maps after an
//! upgrade to another map layout).
//!
//! Without it such a connection is never counted: a gRPC channel or a
//! database pool opened before evenflow stays invisible until it
//! reconnects, which can be days, and the member holding the most of them
//! looks the least loaded. An adopted socket gets sock_ops' state
//! callbacks, so its close is counted exactly like any other; it is
//! counted opened; and it takes a slot (or socket storage) whose marks
//! start at what its counters say now, so only what it carries from then
//! on is counted (the counters of a new epoch start at zero).
//!
//! The iterator runs with each socket locked: no callback of the socket
//! runs meanwhile. Listening sockets come before established ones in a
//! namespace's walk, so a socket is told apart as accepted (it serves its
//! local address and port, on which something in its namespace listens)
//! or connected (it sends to its peer).
//! Only sockets in the cgroup sock_ops is attached to (or below it) are
//! adopted, the ones sock_ops would have counted. A connected socket
//! whose SYN the node's own DNAT redirected counts towards where it went,
//! which the agent noted in `EF_LOCAL_NAT` from conntrack's table before
//! the walk, as TC egress notes it for sock_ops.

use core::{ffi::c_void, ptr::read_volatile};

use agent_common::{
    ADOPT_ADOPTED, ADOPT_UNSUPPORTED, Direction, EndpointKey, FlowKey, META_ADOPT_COUNTED,
    PROTO_TCP, SOCK_ACTIVE, v4_mapped,
};
use aya_ebpf::{
    bindings::{
        BPF_F_NO_PREALLOC, BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_TCP_CLOSE_WAIT, BPF_TCP_CLOSING, BPF_TCP_ESTABLISHED, BPF_TCP_FIN_WAIT1,
        BPF_TCP_FIN_WAIT2, BPF_TCP_LAST_ACK, BPF_TCP_LISTEN,
    },
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_getsockopt, bpf_seq_write, bpf_setsockopt, bpf_skc_to_tcp_sock},
    },
    macros::map,
    maps::HashMap,
};

use crate::{
    counters::meta,
    kernel::{self, SockCounters},
    sock::{self, Payload, Scratch},
    tc::LOCAL_NAT,
};

/// `offsetof(struct sock_common, …)` of the fields that name a socket's
/// ends, and of its family and state.
#[unsafe(no_mangle)]
static SKC_DADDR: u32 = 0;
#[unsafe(no_mangle)]
static SKC_RCV_SADDR: u32 = 0;
#[unsafe(no_mangle)]
static SKC_V6_DADDR: u32 = 0;
#[unsafe(no_mangle)]
static SKC_V6_RCV_SADDR: u32 = 0;
#[unsafe(no_mangle)]
static SKC_DPORT: u32 = 0;
#[unsafe(no_mangle)]
static SKC_NUM: u32 = 0;
#[unsafe(no_mangle)]
static SKC_FAMILY: u32 = 0;
#[unsafe(no_mangle)]
static SKC_STATE: u32 = 0;
/// `offsetof(struct sock_common, skc_net)`: the socket's network
/// namespace (`struct net *`).
#[unsafe(no_mangle)]
static SKC_NET: u32 = 0;
/// `offsetof(struct sock, sk_cgrp_data.cgroup)`: the socket's cgroup.
#[unsafe(no_mangle)]
static SOCK_CGROUP: u32 = 0;
/// `offsetof(struct cgroup, level)`, `…ancestors` and `…kn`.
#[unsafe(no_mangle)]
static CGROUP_LEVEL: u32 = 0;
#[unsafe(no_mangle)]
static CGROUP_ANCESTORS: u32 = 0;
#[unsafe(no_mangle)]
static CGROUP_KN: u32 = 0;
/// `offsetof(struct kernfs_node, id)`: a cgroup's id.
#[unsafe(no_mangle)]
static KERNFS_NODE_ID: u32 = 0;
/// The id of the cgroup sock_ops is attached to.
#[unsafe(no_mangle)]
static ADOPT_CGROUP_ID: u64 = 0;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOL_TCP: i32 = 6;
/// `TCP_BPF_SOCK_OPS_CB_FLAGS` (kernel ≥ 6.12): a socket's sock_ops
/// callback flags, read and set through `bpf_{get,set}sockopt`.
const TCP_BPF_SOCK_OPS_CB_FLAGS: i32 = 1008;
/// The deepest cgroup nesting looked through.
const MAX_CGROUP_LEVEL: u32 = 16;

/// A local end something listens on, in the network namespace at `net`.
#[repr(C)]
#[derive(Copy, Clone)]
struct Listener {
    net: u64,
    end: EndpointKey,
    /// Explicit, so the key has no bytes left uninitialised.
    _pad: u32,
}

/// Local ends something listens on, seen earlier in the walk of their
/// namespace. Not preallocated: a node's listeners are few.
#[map(name = "EF_ADOPT_LISTENERS")]
static LISTENERS: HashMap<Listener, u8> = HashMap::with_max_entries(65_536, BPF_F_NO_PREALLOC);

/// `struct bpf_iter_meta`.
#[repr(C)]
pub struct IterMeta {
    seq: *mut c_void,
    session_id: u64,
    seq_num: u64,
}

/// `struct bpf_iter__tcp`.
#[repr(C)]
pub struct TcpIterCtx {
    meta: *mut IterMeta,
    pub sk_common: *mut c_void,
    uid: u32,
}

/// Writes one byte to the iterator's output, which the agent tallies.
#[inline(always)]
pub fn write(meta: *mut IterMeta, note: u8) {
    if meta.is_null() {
        return;
    }
    // SAFETY: the iterator's seq_file; one byte from the stack.
    unsafe { bpf_seq_write((*meta).seq.cast(), (&raw const note).cast(), 1) };
}

#[unsafe(link_section = "iter/tcp")]
#[unsafe(no_mangle)]
pub extern "C" fn evenflow_adopt(ctx: *mut TcpIterCtx) -> i32 {
    // SAFETY: the context the kernel passed; both pointers are null-checked.
    let (meta, skc) = unsafe {
        (
            read_volatile(&(*ctx).meta),
            read_volatile(&(*ctx).sk_common),
        )
    };
    if meta.is_null() || skc.is_null() {
        return 0;
    }
    match read::<u8>(skc, &SKC_STATE).map(u32::from) {
        Some(BPF_TCP_LISTEN) => {
            if let Some(ends) = Ends::of(skc) {
                let _ = LISTENERS.insert(&ends.listener(ends.local), &1, 0);
            }
            if in_cgroup(skc) {
                watch_listener(skc);
            }
        }
        Some(BPF_TCP_ESTABLISHED) if in_cgroup(skc) => {
            if let Some(note) = Ends::of(skc).and_then(|ends| adopt(skc, &ends)) {
                write(meta, note);
            }
        }
        // Before a new epoch's programs attach, a closing socket the last
        // epoch counted is adopted too: its close would otherwise count
        // all it carried again (see `adopt_into_storage`).
        Some(_) if adopting_counted() && open_state(skc) && in_cgroup(skc) => {
            if let Some(note) = Ends::of(skc).and_then(|ends| adopt(skc, &ends)) {
                write(meta, note);
            }
        }
        // TIME_WAIT, request and closing sockets: nothing to adopt.
        _ => {}
    }
    0
}

/// `size_of::<T>()` bytes at `off` (an offset the agent wrote) into the
/// kernel object at `obj`.
#[inline(always)]
fn read<T>(obj: *const c_void, off: &u32) -> Option<T> {
    // SAFETY: the helper checks the address; `off` is a `.rodata` constant.
    unsafe {
        let at = obj.byte_add(read_volatile(off) as usize);
        bpf_probe_read_kernel(at as *const T).ok()
    }
}

/// A socket's two ends, addresses in flow-key form (IPv4-mapped), and its
/// network namespace.
pub struct Ends {
    net: u64,
    local: [u32; 4],
    remote: [u32; 4],
    local_port: u16,
    remote_port: u16,
}

impl Ends {
    #[inline(always)]
    pub fn of(skc: *const c_void) -> Option<Self> {
        let (local, remote) = match read::<u16>(skc, &SKC_FAMILY)? {
            AF_INET => (
                v4_mapped(read(skc, &SKC_RCV_SADDR)?),
                v4_mapped(read(skc, &SKC_DADDR)?),
            ),
            AF_INET6 => (read(skc, &SKC_V6_RCV_SADDR)?, read(skc, &SKC_V6_DADDR)?),
            _ => return None,
        };
        Some(Self {
            net: read(skc, &SKC_NET)?,
            local,
            remote,
            local_port: read(skc, &SKC_NUM)?,
            remote_port: u16::from_be(read(skc, &SKC_DPORT)?),
        })
    }

    #[inline(always)]
    pub fn local(&self, direction: Direction) -> EndpointKey {
        EndpointKey::tcp(self.local, self.local_port, direction)
    }

    /// The peer, as a connected socket sends to it.
    #[inline(always)]
    pub fn remote(&self) -> EndpointKey {
        EndpointKey::tcp(self.remote, self.remote_port, Direction::SendsTo)
    }

    /// Where a connected socket sends: its peer, or where the node's own
    /// DNAT sent its SYN (a hostNetwork proxy dialling a ClusterIP), which
    /// the agent noted from conntrack's records before the walk.
    #[inline(always)]
    fn dialled(&self) -> EndpointKey {
        let key = FlowKey {
            local_addr: self.local,
            remote_addr: self.remote,
            local_port: self.local_port,
            remote_port: self.remote_port,
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        match LOCAL_NAT.get_ptr(&key) {
            // SAFETY: a live entry, copied out at once.
            Some(real) => unsafe { *real },
            None => self.remote(),
        }
    }

    /// Whether something listens on the local end: on its address, or on
    /// every address (IPv4's or IPv6's wildcard, which takes IPv4 too).
    #[inline(always)]
    fn accepted(&self) -> bool {
        [self.local, v4_mapped(0), [0; 4]].iter().any(|addr| {
            // SAFETY: the value is only tested for presence.
            unsafe { LISTENERS.get(&self.listener(*addr)) }.is_some()
        })
    }

    /// The listener key of `addr` and the local port, in this namespace.
    #[inline(always)]
    fn listener(&self, addr: [u32; 4]) -> Listener {
        Listener {
            net: self.net,
            end: EndpointKey::tcp(addr, self.local_port, Direction::Serves),
            _pad: 0,
        }
    }
}

/// Whether this walk runs before the programs of a new epoch attach, and
/// adopts the sockets the last epoch's counted (see `META_ADOPT_COUNTED`).
#[inline(always)]
fn adopting_counted() -> bool {
    meta(META_ADOPT_COUNTED) != 0
}

/// Whether the socket is open: established, or closing but not closed
/// (what sock_ops counts and has not yet closed).
#[inline(always)]
pub fn open_state(skc: *const c_void) -> bool {
    matches!(
        read::<u8>(skc, &SKC_STATE).map(u32::from),
        Some(
            BPF_TCP_ESTABLISHED
                | BPF_TCP_FIN_WAIT1
                | BPF_TCP_FIN_WAIT2
                | BPF_TCP_CLOSE_WAIT
                | BPF_TCP_LAST_ACK
                | BPF_TCP_CLOSING
        )
    )
}

/// Whether the socket's cgroup is sock_ops' or one below it.
#[inline(always)]
pub fn in_cgroup(skc: *const c_void) -> bool {
    // SAFETY: a `.rodata` constant.
    let want = unsafe { read_volatile(&ADOPT_CGROUP_ID) };
    let Some(cgroup) = read::<u64>(skc, &SOCK_CGROUP) else {
        return false;
    };
    let cgroup = cgroup as *const c_void;
    let Some(level) = read::<i32>(cgroup, &CGROUP_LEVEL) else {
        return false;
    };
    // SAFETY: a `.rodata` constant.
    let ancestors = unsafe { read_volatile(&CGROUP_ANCESTORS) } as u64;
    for i in 0..MAX_CGROUP_LEVEL {
        if i as i32 > level {
            return false;
        }
        let at = (cgroup as u64 + ancestors + u64::from(i) * 8) as *const u64;
        // SAFETY: the helper checks the address.
        let Ok(ancestor) = (unsafe { bpf_probe_read_kernel(at) }) else {
            return false;
        };
        let id = read::<u64>(ancestor as *const c_void, &CGROUP_KN)
            .and_then(|kn| read::<u64>(kn as *const c_void, &KERNFS_NODE_ID));
        if id == Some(want) {
            return true;
        }
    }
    false
}

/// Adopts an established socket nobody counts yet; what to write for it.
/// Its state callbacks go on first: a socket counted already (by the
/// agent before a restart) has them on anyway, and one whose storage
/// cannot be had then closes as `flow_missing_on_close`, uncounted, as it
/// would have without adoption. Out of line: the iterator's own frame
/// stays small.
#[inline(never)]
fn adopt(skc: *mut c_void, ends: &Ends) -> Option<u8> {
    // SAFETY: a non-null socket from the iterator.
    let tp = unsafe { bpf_skc_to_tcp_sock(skc) } as *const u8;
    if tp.is_null() || sock::storage(skc, false).is_some_and(sock::counted_in_storage) {
        return None;
    }
    if sock::walk_sampling() {
        return adopt_into_storage(skc, tp, ends);
    }
    if !watch_states(tp) {
        return Some(ADOPT_UNSUPPORTED);
    }
    let (endpoint, flags) = endpoint(ends);
    let addr = sock::address(skc, Scratch::Adopt)?;
    // SAFETY: a non-null tcp_sock BTF pointer, of a socket the iterator
    // holds locked: its sequence numbers and counters agree.
    let (c, id) = unsafe {
        let c = kernel::tcp_sock_counters(tp);
        (c, kernel::tcp_sock_id(tp, &c))
    };
    sock::count(skc, addr, id, &endpoint, flags, &so_far(&c, flags)).then_some(ADOPT_ADOPTED)
}

/// Where an adopted socket counts, and its `SOCK_*` flags.
#[inline(always)]
fn endpoint(ends: &Ends) -> (EndpointKey, u8) {
    if ends.accepted() {
        (ends.local(Direction::Serves), 0)
    } else {
        (ends.dialled(), SOCK_ACTIVE)
    }
}

/// Adopts a socket where a walk samples sockets (see
/// `sock::WALK_SAMPLING`): into socket storage, marked sampled, with the
/// callbacks its close reads (a dialled one's retransmission timeouts say
/// it dialled). A socket that has the state callbacks is sock_ops' already,
/// unless this walk runs before the programs of a new epoch attach
/// (`META_ADOPT_COUNTED`): then every open socket is adopted, since what
/// the last epoch's programs knew of it is in their maps.
#[inline(always)]
fn adopt_into_storage(skc: *mut c_void, tp: *const u8, ends: &Ends) -> Option<u8> {
    let cb = callbacks(tp)?;
    let counted = cb & BPF_SOCK_OPS_STATE_CB_FLAG != 0;
    if counted && !adopting_counted() {
        return None;
    }
    // A socket sock_ops counted says which way it went by its callbacks
    // (its listener may be gone); one never counted, by the listeners.
    let (endpoint, flags) = match (counted, cb & BPF_SOCK_OPS_RTO_CB_FLAG != 0) {
        (true, true) => (ends.dialled(), SOCK_ACTIVE),
        (true, false) => (ends.local(Direction::Serves), 0),
        (false, _) => endpoint(ends),
    };
    let mut wanted = cb & !BPF_SOCK_OPS_RTO_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG | sock::SAMPLED;
    if flags & SOCK_ACTIVE != 0 {
        wanted |= BPF_SOCK_OPS_RTO_CB_FLAG;
    }
    let base = so_far(&kernel_counters(tp), flags);
    // Storage first: a socket that cannot have it is left uncounted, its
    // callbacks untouched, as with slots.
    if !sock::count_in_storage(skc, &endpoint, flags, &base) {
        return None;
    }
    // The storage names the socket counted: a kernel that refuses the
    // flags (before 6.12; walk mode is refused there) would leave it
    // open for good.
    set_callbacks(tp, wanted).then_some(ADOPT_ADOPTED)
}

/// The counters of a socket the iterator holds locked.
#[inline(always)]
fn kernel_counters(tp: *const u8) -> SockCounters {
    // SAFETY: a non-null tcp_sock BTF pointer.
    unsafe { kernel::tcp_sock_counters(tp) }
}

/// The socket's sock_ops callback flags; `None` where this kernel cannot
/// tell (no `TCP_BPF_SOCK_OPS_CB_FLAGS`).
#[inline(always)]
pub fn callbacks(tp: *const u8) -> Option<u32> {
    let mut cb: i32 = 0;
    (cb_flags(tp, &mut cb, false) == 0).then_some(cb as u32)
}

/// Sets the socket's sock_ops callback flags to `cb`; false where this
/// kernel cannot.
#[inline(always)]
pub fn set_callbacks(tp: *const u8, cb: u32) -> bool {
    let mut cb = cb as i32;
    cb_flags(tp, &mut cb, true) == 0
}

/// Gives a listener that was there before sock_ops the state callbacks
/// sock_ops gives the ones that listen after it (at their
/// `BPF_SOCK_OPS_TCP_LISTEN_CB`), so that the connections it accepts have
/// them from their creation and their handshake's run need not ask.
/// Out of line, like [`adopt`].
#[inline(never)]
fn watch_listener(skc: *mut c_void) {
    // SAFETY: a non-null socket from the iterator.
    let tp = unsafe { bpf_skc_to_tcp_sock(skc) } as *const u8;
    if tp.is_null() {
        return;
    }
    if !sock::walk_sampling() {
        watch_states(tp);
        return;
    }
    // As sock_ops' `on_listen`: a listener that connected or was sampled
    // before gives those callbacks up, or its accepted sockets would
    // inherit them.
    if let Some(cb) = callbacks(tp) {
        let wanted = sock::listener_callbacks(cb);
        if cb != wanted {
            set_callbacks(tp, wanted);
        }
    }
}

/// Gives the socket sock_ops' state callbacks, unless it has them; false
/// where this kernel cannot (no `TCP_BPF_SOCK_OPS_CB_FLAGS`).
#[inline(always)]
fn watch_states(tp: *const u8) -> bool {
    let Some(cb) = callbacks(tp) else {
        return false;
    };
    cb & BPF_SOCK_OPS_STATE_CB_FLAG != 0 || set_callbacks(tp, cb | BPF_SOCK_OPS_STATE_CB_FLAG)
}

/// Reads (or, when `set`, writes) the socket's sock_ops callback flags;
/// the helper's result (non-zero: this kernel has no such option).
#[inline(always)]
fn cb_flags(tp: *const u8, cb: &mut i32, set: bool) -> i64 {
    let (tp, cb) = (tp as *mut c_void, (cb as *mut i32).cast());
    // SAFETY: a locked full socket; `cb` is 4 writable bytes.
    unsafe {
        if set {
            bpf_setsockopt(tp, SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, cb, 4)
        } else {
            bpf_getsockopt(tp, SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, cb, 4)
        }
    }
}

/// What an established socket carried before it was adopted, as sock_ops
/// reckons it at the close: no FIN either way yet; an active opener's SYN
/// is in `bytes_acked`.
#[inline(always)]
fn so_far(c: &SockCounters, flags: u8) -> Payload {
    Payload {
        rx: c.bytes_received,
        tx: c.bytes_acked.saturating_sub(u64::from(flags & SOCK_ACTIVE)),
        segs_in: c.segs_in,
        segs_out: c.segs_out,
    }
}

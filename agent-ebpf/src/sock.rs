//! Local sockets: where their state lives and how their kernel counters
//! become endpoint counters, shared by sock_ops (at close) and the
//! samplers (while they live).
//!
//! A socket's state lives in a slot of `EF_SOCK_SLOTS`, found by its
//! address; a socket whose slots are all taken gets socket storage
//! (`EF_SOCKS`) instead, which costs an allocation per connection. See
//! [`SockSlot`] for how a slot changes hands under a sampler reading it.
//!
//! A socket's payload bytes are the kernel's `bytes_received` and
//! `bytes_acked` less the sequence numbers that carry no data: the peer's
//! FIN (one in `bytes_received`), an active opener's SYN and an
//! acknowledged FIN of ours (one each in `bytes_acked`). sock_ops knows at
//! close which of those happened; a sample taken while the socket lives
//! cannot tell a FIN in flight from a data byte, so it always leaves one
//! byte each way for the close to add.

use core::ptr::{read_volatile, write_volatile};

use agent_common::{
    DEFAULT_SOCK_SLOTS, Direction, EndpointKey, Marks, PROTO_TCP, SOCK_ACTIVE, SOCK_CLOSED,
    SOCK_ID_BITS, SOCK_ID_MASK, SOCK_MARK_TAG_BITS, SOCK_SLOT_FILLING, SOCK_SLOT_FLAGS, SockSlot,
    SockState, Stat, segs_past,
};
use aya_ebpf::{
    bindings::{
        BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_SK_STORAGE_GET_F_CREATE,
        BPF_SOCK_OPS_RETRANS_CB_FLAG, BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_STATE_CB_FLAG,
        bpf_map_type::BPF_MAP_TYPE_SK_STORAGE,
    },
    helpers::generated::bpf_sk_storage_get,
    macros::map,
    maps::{Array, PerCpuArray},
};

use crate::{
    atomic,
    counters::{Traffic, add_traffic, opened, stat},
    kernel::SockCounters,
};

/// Counted local sockets, by address (see [`SockSlot`]).
#[map(name = "EF_SOCK_SLOTS")]
pub static SOCK_SLOTS: Array<SockSlot> = Array::pinned(DEFAULT_SOCK_SLOTS, BPF_F_MMAPABLE);

/// Words per CPU that turn a socket pointer into a number (see
/// [`address`]): one for sock_ops, one for the adoption iterator, so that
/// a callback interrupting the iterator on its CPU never writes the
/// iterator's word.
#[map(name = "EF_SCRATCH")]
static SCRATCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// Which word of `EF_SCRATCH` a program uses.
#[derive(Copy, Clone)]
pub enum Scratch {
    SockOps = 0,
    Adopt = 1,
}

/// The socket's address as a number. The verifier forbids arithmetic on a
/// socket pointer (a slot's index is computed from it) and reading a spilled
/// one back in halves; a word read back from a map is a plain number.
/// A program that ran between the store and the load on this CPU (a
/// softirq's callback interrupting a process-context one) may have left
/// its own socket in the word: it is read until it holds this one.
#[inline(always)]
pub fn address<T>(sk: *const T, word: Scratch) -> Option<u64> {
    let word = SCRATCH.get_ptr_mut(word as u32)?;
    for _ in 0..3 {
        // SAFETY: this CPU's word.
        let addr = unsafe {
            write_volatile(word, sk as u64);
            read_volatile(word)
        };
        if same(addr, sk as u64) {
            return Some(addr);
        }
    }
    None
}

/// Whether the number `addr` is the pointer `sk`, compared where LLVM
/// cannot see it: knowing them equal, it would hash the pointer instead
/// of the number, which the verifier refuses.
#[inline(always)]
fn same(addr: u64, sk: u64) -> bool {
    let eq: u64;
    // SAFETY: register arithmetic only.
    unsafe {
        core::arch::asm!(
            "{eq} = 1",
            "if {addr} == {sk} goto +1",
            "{eq} = 0",
            eq = out(reg) eq,
            addr = in(reg) addr,
            sk = in(reg) sk,
            options(pure, nomem, nostack)
        )
    };
    eq != 0
}

/// Slots a socket may take, from the one its address hashes to.
const PROBES: u32 = 4;

/// `EF_SOCK_SLOTS`'s size less one (a power of two less one): written by
/// the agent before loading, to the size of the map it pins.
#[unsafe(no_mangle)]
static SOCK_SLOTS_MASK: u32 = DEFAULT_SOCK_SLOTS - 1;

/// The value bits of a mark (below its generation).
const MARK_VALUE: u64 = (1 << (64 - SOCK_MARK_TAG_BITS)) - 1;

/// The `i`th slot socket `sk` may take. The kernel allocates TCP sockets
/// from slabs of 32 KiB, a dozen or so of about 2.3 KiB to a slab: a
/// slab's sockets take neighbouring slots of one group of 16 (1 KiB),
/// chosen by a hash of the slab's address, each by where it lies in its
/// slab (sockets of 2 KiB or more never share a position). So the live
/// sockets of a node touch as few of the array's pages and cache lines as
/// they fill slabs, where a hash of each socket's address spread them over
/// the whole array: at 16,384 slots a TLB and cache miss in nearly every
/// claim and close, a fifth of sock_ops' cost. A socket freed and allocated
/// again at the same address (the slab hands out what was freed last)
/// finds the slot its predecessor left, still in cache. Each probe past
/// the first goes to the next group and the next position: in an array
/// of fewer than 16 slots, the next slot.
#[inline(always)]
fn slot(sk: u64, i: u32) -> Option<*mut SockSlot> {
    // SAFETY: a `.rodata` constant.
    let mask = unsafe { read_volatile(&SOCK_SLOTS_MASK) };
    let group = ((sk >> 15).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32;
    let position = (sk >> 11) as u32 & 15;
    SOCK_SLOTS.get_ptr_mut((group << 4 | position).wrapping_add(i * 17) & mask)
}

/// A counted socket's state, held by the socket's own callbacks (under its
/// lock): in a slot, or in socket storage.
#[derive(Copy, Clone)]
pub struct Held {
    pub marks: *mut Marks,
    /// The generation its marks carry.
    pub tag: u64,
    /// The slot, or null.
    slot: *mut SockSlot,
    /// The socket storage, or null.
    st: *mut SockState,
}

impl Held {
    /// State in socket storage.
    #[inline(always)]
    pub fn storage(st: *mut SockState) -> Self {
        Self {
            // SAFETY: a field of live socket storage.
            marks: unsafe { &raw mut (*st).marks },
            // SAFETY: as above.
            tag: tag_of(unsafe { read_volatile(&raw const (*st).marks.rx) }),
            slot: core::ptr::null_mut(),
            st,
        }
    }

    /// The socket's `SOCK_*` bits.
    #[inline(always)]
    pub fn flags(&self) -> u8 {
        // SAFETY: the held slot or storage.
        unsafe {
            if self.slot.is_null() {
                (*self.st).flags
            } else {
                (read_volatile(&raw const (*self.slot).owner) & SOCK_SLOT_FLAGS) as u8
            }
        }
    }

    /// Sets `SOCK_CLOSED`; false if it was set already.
    #[inline(always)]
    pub fn mark_closed(&self) -> bool {
        // SAFETY: the held slot or storage; only the owner writes its flags.
        unsafe {
            if self.slot.is_null() {
                let was = (*self.st).flags;
                (*self.st).flags = was | SOCK_CLOSED;
                return was & SOCK_CLOSED == 0;
            }
            let owner = read_volatile(&raw const (*self.slot).owner);
            write_volatile(&raw mut (*self.slot).owner, owner | SOCK_CLOSED as u64);
            owner & SOCK_CLOSED as u64 == 0
        }
    }

    /// The endpoint the socket counts towards.
    #[inline(always)]
    pub fn endpoint(&self) -> EndpointKey {
        // SAFETY: the held slot or storage.
        unsafe {
            if self.slot.is_null() {
                (*self.st).endpoint
            } else {
                slot_endpoint(
                    read_volatile(&raw const (*self.slot).id),
                    read_volatile(&raw const (*self.slot).addr),
                    self.flags(),
                )
            }
        }
    }

    /// Gives the slot back once the socket closed (socket storage goes with
    /// the socket).
    #[inline(always)]
    pub fn release(&self) {
        if !self.slot.is_null() {
            // SAFETY: a slot of the array; a full barrier after the close's
            // fold.
            unsafe {
                let owner = read_volatile(&raw const (*self.slot).owner);
                atomic::cmpxchg(&raw mut (*self.slot).owner, owner, 0);
            }
        }
    }
}

/// A slot's endpoint, from its `id` and `addr` and the owner's flags.
#[inline(always)]
fn slot_endpoint(id: u64, addr: [u32; 4], flags: u8) -> EndpointKey {
    let direction = if flags & SOCK_ACTIVE != 0 {
        Direction::SendsTo
    } else {
        Direction::Serves
    };
    EndpointKey {
        addr,
        port: (id >> SOCK_ID_BITS) as u16,
        direction: direction as u8,
        proto: PROTO_TCP,
    }
}

/// The generation a mark carries (its top bits).
#[inline(always)]
pub fn tag_of(mark: u64) -> u64 {
    mark >> (64 - SOCK_MARK_TAG_BITS)
}

/// The generation a slot's marks carry (its `rx` mark's), read as a full
/// barrier for the sampler's checks.
///
/// # Safety
/// `slot` is a slot of the array.
#[inline(always)]
unsafe fn generation(slot: *mut SockSlot) -> u64 {
    // SAFETY: per the contract.
    tag_of(unsafe { atomic::load(&raw mut (*slot).marks.rx) })
}

/// Counts socket `sk` (at address `addr`, identity `id`: see
/// `agent_common::sock_id`) opened towards `endpoint`, its marks at
/// `base`, in a slot or else in socket storage; false if it is counted
/// already or cannot be.
#[inline(always)]
pub fn count<T>(
    sk: *mut T,
    addr: u64,
    id: u64,
    endpoint: &EndpointKey,
    flags: u8,
    base: &Payload,
) -> bool {
    match claim(addr, id, endpoint, flags, base) {
        Claim::Taken => {
            opened(endpoint);
            true
        }
        Claim::Held => false,
        Claim::Full => count_in_storage(sk, endpoint, flags, base),
    }
}

/// Counts socket `sk` opened towards `endpoint`, its state in socket
/// storage, its marks at `base`; false if it is counted there already or
/// its storage cannot be had.
#[inline(always)]
pub fn count_in_storage<T>(sk: *mut T, endpoint: &EndpointKey, flags: u8, base: &Payload) -> bool {
    if keep(sk, endpoint, flags, base).is_none() {
        return false;
    }
    opened(endpoint);
    true
}

/// Keeps socket `sk`'s state in its storage, created if need be, and
/// returns it; `None` if the storage counts it already or cannot be had.
#[inline(always)]
pub fn keep<T>(
    sk: *mut T,
    endpoint: &EndpointKey,
    flags: u8,
    base: &Payload,
) -> Option<*mut SockState> {
    let Some(st) = storage(sk, true) else {
        stat(Stat::SockStorageFailed, 1);
        return None;
    };
    if !keep_in_storage(st, endpoint, flags, base) {
        return None;
    }
    stat(Stat::SockInStorage, 1);
    Some(st)
}

/// 1 where the agent walks every network namespace's sockets each
/// interval (`--socket-sampling walk`): a socket then has no state until
/// that walk first samples it, and says so with [`SAMPLED`] among its
/// callback flags, so that the close of every other socket looks nothing
/// up (see docs/counting.md, "Sockets sampled by a walk"). 0: every
/// socket takes a slot at its handshake. Written by the agent before
/// loading.
#[unsafe(no_mangle)]
static WALK_SAMPLING: u8 = 0;

/// Whether sockets carry no state until the walk samples them (see
/// [`WALK_SAMPLING`]).
#[inline(always)]
pub fn walk_sampling() -> bool {
    // SAFETY: a `.rodata` constant.
    unsafe { read_volatile(&WALK_SAMPLING) != 0 }
}

/// The callback flag that says a walk sampled the socket (and kept its
/// state in socket storage): the one for retransmissions, whose runs
/// return at once. Only a program holding the socket's lock sets it (the
/// walk, or sock_ops keeping state from the handshake), and its close
/// holds the lock too.
pub const SAMPLED: u32 = BPF_SOCK_OPS_RETRANS_CB_FLAG;

/// The callbacks a listener keeps where a walk samples sockets, from its
/// callbacks `cb`: its state changes, without the retransmission-timeout
/// callbacks of an earlier connect (which say a socket dialled) or the
/// walk's [`SAMPLED`], since every socket it accepts inherits them. Shared
/// by sock_ops at a listen and the adoption's walk over older listeners.
#[inline(always)]
pub fn listener_callbacks(cb: u32) -> u32 {
    cb & !(BPF_SOCK_OPS_RTO_CB_FLAG | SAMPLED) | BPF_SOCK_OPS_STATE_CB_FLAG
}

/// Counts the close of a socket no walk sampled, with all it carried.
#[inline(always)]
pub fn add_closed(endpoint: &EndpointKey, p: &Payload) {
    add_traffic(
        endpoint,
        &Traffic {
            bytes_rx: p.rx,
            bytes_tx: p.tx,
            packets_rx: p.segs_in,
            packets_tx: p.segs_out,
            conns_closed: 1,
            ..Traffic::default()
        },
    );
}

/// What [`claim`] did.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Claim {
    Taken,
    /// The socket already holds a slot.
    Held,
    Full,
}

/// Takes a slot for socket `sk` (identity `id`), counting towards
/// `endpoint` (whose direction `flags`' `SOCK_ACTIVE` says): a free one, or
/// one a dead socket at the same address left (its close never reached
/// this program: the programs were detached from its cgroup meanwhile).
#[inline(always)]
fn claim(sk: u64, id: u64, endpoint: &EndpointKey, flags: u8, base: &Payload) -> Claim {
    if sk & SOCK_SLOT_FLAGS != 0 {
        return Claim::Full;
    }
    for i in 0..PROBES {
        let Some(slot) = slot(sk, i) else {
            return Claim::Full;
        };
        // SAFETY: a slot of the array.
        unsafe {
            let owner = read_volatile(&raw const (*slot).owner);
            let stale = owner & !SOCK_SLOT_FLAGS == sk;
            if stale && (read_volatile(&raw const (*slot).id) ^ id) & SOCK_ID_MASK == 0 {
                return Claim::Held;
            }
            if (owner == 0 || stale)
                && atomic::cmpxchg(&raw mut (*slot).owner, owner, SOCK_SLOT_FILLING) == owner
            {
                fill(slot, sk, id, endpoint, flags, base);
                return Claim::Taken;
            }
        }
    }
    Claim::Full
}

/// Fills a slot just claimed for socket `sk`: the marks start at `base`
/// (what the socket carried before it was counted: nothing for one
/// counted from its handshake) in the next generation, then the socket is
/// named.
///
/// # Safety
/// The caller claimed `slot`.
#[inline(always)]
unsafe fn fill(
    slot: *mut SockSlot,
    sk: u64,
    id: u64,
    endpoint: &EndpointKey,
    flags: u8,
    base: &Payload,
) {
    // SAFETY: per the contract.
    unsafe {
        write_volatile(&raw mut (*slot).marks, base.marks(generation(slot) + 1));
        write_volatile(
            &raw mut (*slot).id,
            id & SOCK_ID_MASK | u64::from(endpoint.port) << SOCK_ID_BITS,
        );
        write_volatile(&raw mut (*slot).addr, endpoint.addr);
        atomic::cmpxchg(
            &raw mut (*slot).owner,
            SOCK_SLOT_FILLING,
            sk | u64::from(flags) & SOCK_SLOT_FLAGS,
        );
    }
}

/// The slot socket `sk` holds, if any. Only the socket's own callbacks
/// (under its lock) call this: a slot it holds cannot change hands.
#[inline(always)]
pub fn find(sk: u64) -> Option<Held> {
    for i in 0..PROBES {
        let slot = slot(sk, i)?;
        // SAFETY: a slot of the array.
        unsafe {
            if read_volatile(&raw const (*slot).owner) & !SOCK_SLOT_FLAGS == sk {
                return Some(Held {
                    marks: &raw mut (*slot).marks,
                    tag: tag_of(read_volatile(&raw const (*slot).marks.rx)),
                    slot,
                    st: core::ptr::null_mut(),
                });
            }
        }
    }
    None
}

/// A consistent read of a slot someone else owns, for the sampler.
#[derive(Copy, Clone)]
pub struct SlotView {
    pub sk: u64,
    pub id: u64,
    pub endpoint: EndpointKey,
    pub flags: u8,
    pub tag: u64,
    owner: u64,
}

/// Reads `slot` between two reads of its generation and owner; `None`
/// while it is free or being filled.
#[inline(always)]
pub fn view(slot: *mut SockSlot) -> Option<SlotView> {
    // SAFETY: a slot of the array.
    unsafe {
        let tag = generation(slot);
        let owner = atomic::load(&raw mut (*slot).owner);
        let sk = owner & !SOCK_SLOT_FLAGS;
        if sk == 0 {
            return None;
        }
        let id = read_volatile(&raw const (*slot).id);
        let flags = (owner & SOCK_SLOT_FLAGS) as u8;
        let v = SlotView {
            sk,
            id: id & SOCK_ID_MASK,
            endpoint: slot_endpoint(id, read_volatile(&raw const (*slot).addr), flags),
            flags,
            tag,
            owner,
        };
        still(slot, &v).then_some(v)
    }
}

/// Whether `slot` still holds what `v` read: the same owner, not given
/// back, not claimed again since.
#[inline(always)]
pub fn still(slot: *mut SockSlot, v: &SlotView) -> bool {
    // SAFETY: a slot of the array.
    unsafe { atomic::load(&raw mut (*slot).owner) == v.owner && generation(slot) == v.tag }
}

/// Whether identity `id` is the owner's of a slot (`v`'s).
#[inline(always)]
pub fn same_socket(v: &SlotView, id: u64) -> bool {
    id & SOCK_ID_MASK == v.id
}

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

/// The socket's storage, created when `create`.
#[inline(always)]
pub fn storage<T>(sk: *mut T, create: bool) -> Option<*mut SockState> {
    // The verifier requires the null check before the helper.
    if sk.is_null() {
        return None;
    }
    let flags = if create {
        BPF_SK_STORAGE_GET_F_CREATE as u64
    } else {
        0
    };
    // SAFETY: a valid map and a non-null socket.
    let st = unsafe { bpf_sk_storage_get(SOCKS.as_ptr(), sk.cast(), core::ptr::null_mut(), flags) }
        as *mut SockState;
    (!st.is_null()).then_some(st)
}

/// Keeps a socket's state in its storage `st`, its marks at `base`; false
/// if the storage holds a counted socket already. Storage whose socket
/// closed and was counted is taken again: the socket disconnected
/// (`connect(AF_UNSPEC)`) and is connecting anew, its counters started
/// over. Its marks go to the next generation, so a sampler still holding
/// the last connection's reading raises nothing, and the storage stays
/// marked closed until the endpoint is written: a sampler skips it
/// meanwhile (and skips fresh storage until the endpoint names one).
#[inline(always)]
fn keep_in_storage(st: *mut SockState, endpoint: &EndpointKey, flags: u8, base: &Payload) -> bool {
    // SAFETY: live socket storage; only the socket's own callbacks and the
    // adoption iterator (each holding the socket's lock) write its fields.
    unsafe {
        let was = read_volatile(&raw const (*st).flags);
        if (*st).endpoint.direction != 0 && was & SOCK_CLOSED == 0 {
            return false;
        }
        write_volatile(&raw mut (*st).flags, flags | SOCK_CLOSED);
        // Fresh storage keeps generation 0, which builds before
        // generations in storage read too (a rollback keeps counting it).
        let tag = tag_of(atomic::load(&raw mut (*st).marks.rx)) + u64::from(was & SOCK_CLOSED != 0);
        write_volatile(&raw mut (*st).marks, base.marks(tag));
        atomic::load(&raw mut (*st).marks.rx);
        write_volatile(&raw mut (*st).endpoint, *endpoint);
        atomic::load(&raw mut (*st).marks.rx);
        write_volatile(&raw mut (*st).flags, flags);
    }
    true
}

/// Whether the socket's storage counts it now (its slots were taken at its
/// handshake): it names an endpoint and has not closed since.
#[inline(always)]
pub fn counted_in_storage(st: *mut SockState) -> bool {
    // SAFETY: live socket storage.
    unsafe {
        (*st).endpoint.direction != 0 && read_volatile(&raw const (*st).flags) & SOCK_CLOSED == 0
    }
}

/// Payload bytes and segments so far, from the socket's counters and what
/// is known of its SYN and FINs.
#[derive(Copy, Clone)]
pub struct Payload {
    pub rx: u64,
    pub tx: u64,
    pub segs_in: u64,
    pub segs_out: u64,
}

impl Payload {
    /// Nothing yet: a socket counted from its handshake.
    pub const NONE: Self = Self {
        rx: 0,
        tx: 0,
        segs_in: 0,
        segs_out: 0,
    };

    /// Marks at these counts, in generation `tag` (wrapping).
    #[inline(always)]
    fn marks(&self, tag: u64) -> Marks {
        let tag_mask = (1 << SOCK_MARK_TAG_BITS) - 1;
        let mark = (tag & tag_mask) << (64 - SOCK_MARK_TAG_BITS);
        Marks {
            rx: mark | self.rx & MARK_VALUE,
            tx: mark | self.tx & MARK_VALUE,
            segs_in: mark | self.segs_in & MARK_VALUE,
            segs_out: mark | self.segs_out & MARK_VALUE,
        }
    }
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

/// Adds to `endpoint` whatever of `p` was not added before, and the close
/// when `closing`. Racing folders (sock_ops on one CPU, a sampler on
/// another) each add only what they raised the high-water marks by; a
/// sampler stops at the first mark of another generation than `tag` (the
/// slot changed hands) and adds what it raised before. Segment counts are
/// the kernel's 32 bits, carried past a wrap (see [`segs_past`]).
#[inline(always)]
pub fn fold(endpoint: &EndpointKey, marks: *mut Marks, tag: u64, p: &Payload, closing: bool) {
    let mut t = Traffic {
        conns_closed: closing as u64,
        ..Traffic::default()
    };
    // SAFETY: `marks` points into a slot or live socket storage.
    unsafe {
        let marks = [
            (&raw mut (*marks).rx, p.rx, false, &raw mut t.bytes_rx),
            (&raw mut (*marks).tx, p.tx, false, &raw mut t.bytes_tx),
            (
                &raw mut (*marks).segs_in,
                p.segs_in,
                true,
                &raw mut t.packets_rx,
            ),
            (
                &raw mut (*marks).segs_out,
                p.segs_out,
                true,
                &raw mut t.packets_tx,
            ),
        ];
        for (mark, reading, segs, out) in marks {
            let target = if segs {
                segs_past(read_volatile(mark) & MARK_VALUE, reading)
            } else {
                reading
            };
            match atomic::raise_tagged(mark, tag, SOCK_MARK_TAG_BITS, target) {
                Some(v) => *out = v,
                None => break,
            }
        }
    }
    add_traffic(endpoint, &t);
}

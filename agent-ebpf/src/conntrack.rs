//! Conntrack's own record of a forwarded connection (`struct nf_conn`).
//!
//! Translating a destination takes conntrack: every packet of a connection
//! the node DNATs carries its `nf_conn` (`skb->_nfct`), and conntrack has
//! already followed each direction's highest sequence number
//! (`proto.tcp.seen[dir].td_end`) by the time the packet reaches TC egress.
//! So a forwarded connection's bytes can be read from conntrack whenever
//! they are wanted (at its end, and by the sweeper every interval), and its
//! data packets need no flow lookup of their own.
//!
//! Kernel memory is read at offsets the agent takes from this kernel's BTF
//! and writes here before loading (`.rodata`: constants to the verifier).
//! All zero means this kernel's BTF has no conntrack: then every forwarded
//! packet is counted by its own lookup. Where the kernel lets a program
//! cast any address to read-only memory (`bpf_rdonly_cast` to `void`,
//! Linux 6.17), a read is a load the JIT guards against faults; before, it
//! is a call of `bpf_probe_read_kernel`, which on a CPU that mitigates
//! return-stack attacks costs several mispredicted returns (see
//! docs/counting.md, "Reads without a call").

use core::{ffi::c_void, ptr::read_volatile};

use agent_common::SynOrigin;

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, generated::bpf_jiffies64},
    programs::TcContext,
};

use crate::kernel::{direct, rdonly_cast};

/// `offsetof(struct sk_buff, _nfct)`; 0 turns the conntrack path off.
#[unsafe(no_mangle)]
static SKB_NFCT: u32 = 0;
/// `offsetof(struct nf_conn, status)`.
#[unsafe(no_mangle)]
static NF_CONN_STATUS: u32 = 0;
/// `offsetof(struct nf_conn, timeout)`: when it expires, in jiffies.
#[unsafe(no_mangle)]
static NF_CONN_TIMEOUT: u32 = 0;
/// `offsetof(struct nf_conn, tuplehash[0].tuple.src)`.
#[unsafe(no_mangle)]
static NF_CONN_ORIGINAL_SRC: u32 = 0;
/// `offsetof(struct nf_conn, proto.tcp.seen)`: both directions' TCP
/// state, then the connection's, laid out as [`TcpTrack`] (the agent
/// checks).
#[unsafe(no_mangle)]
static NF_CONN_SEEN: u32 = 0;

/// `IPS_SEEN_REPLY`: conntrack saw a packet in the reply direction.
const IPS_SEEN_REPLY: u64 = 1 << 1;
/// `IPS_ASSURED`: conntrack saw the handshake's last ACK.
const IPS_ASSURED: u64 = 1 << 2;
/// `IPS_DST_NAT`: the connection's destination was translated.
const IPS_DST_NAT: u64 = 1 << 5;
/// `IP_CT_TCP_FLAG_CLOSE_INIT`: the direction whose FIN began the close.
const CLOSE_INIT: u8 = 0x04;
/// Low bits of `skb->_nfct` hold the packet's ctinfo, not the pointer.
const NFCT_INFOMASK: u64 = 7;

/// Directions of `tuplehash` and `seen`.
pub const ORIGINAL: u32 = 0;
pub const REPLY: u32 = 1;

#[inline(always)]
fn offset(at: &u32) -> u64 {
    // SAFETY: a plain static; volatile so the agent's value is used.
    unsafe { read_volatile(at) as u64 }
}

/// `size_of::<T>()` bytes of kernel memory at `addr`: `None` where the
/// helper cannot read them, zeroes where loads fault (each caller takes
/// zeroes for no match: no status bits, no tuple, no sequence numbers).
#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    if direct() {
        // Plain loads, of the fields used only: a volatile copy of the
        // whole struct measured 4 ns a run dearer on TC egress. The
        // sweepers' check that a record is still their connection's, after
        // the read, is an out-of-line call that calls helpers, which may
        // write any memory: LLVM moves no load of the read past it.
        // SAFETY: read-only memory to the verifier, whose loads the JIT
        // guards; every address read here is a kernel object's field.
        return Some(unsafe { core::ptr::read(rdonly_cast(addr) as *const T) });
    }
    // SAFETY: the helper copies at most `size_of::<T>()` bytes and fails
    // cleanly on an address it cannot read.
    unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
}

/// Whether the agent found conntrack's layout: forwarded connections are
/// then followed in conntrack's records, and only there.
#[inline(always)]
pub fn followed() -> bool {
    offset(&SKB_NFCT) != 0
}

/// `IP_CT_IS_REPLY`: a ctinfo from it on is a reply direction's packet.
const IP_CT_IS_REPLY: u64 = 3;

/// A packet's conntrack record.
#[derive(Copy, Clone)]
pub struct Ct {
    /// The `nf_conn`'s address.
    pub conn: u64,
    /// Whether the packet travels the connection's reply direction.
    pub reply: bool,
}

/// The packet's conntrack record, if it has one (and this kernel's BTF
/// told the agent where to find it).
#[inline(always)]
pub fn of_packet(ctx: &TcContext) -> Option<Ct> {
    let nfct = nfct(ctx);
    let conn = nfct & !NFCT_INFOMASK;
    (conn != 0).then_some(Ct {
        conn,
        reply: nfct & NFCT_INFOMASK >= IP_CT_IS_REPLY,
    })
}

/// `skb->_nfct`: the record's address, ctinfo in its low bits.
#[inline(always)]
fn nfct(ctx: &TcContext) -> u64 {
    let at = offset(&SKB_NFCT);
    if at == 0 {
        return 0;
    }
    // The context is the kernel's `struct sk_buff`.
    let skb = ctx.skb.skb as *const u8;
    if direct() {
        // SAFETY: read-only memory to the verifier, whose loads the JIT
        // guards: the context is cast itself, at no offset, and `at` is
        // `_nfct`'s.
        return unsafe { read_volatile(rdonly_cast(skb as u64).add(at as usize) as *const u64) };
    }
    // SAFETY: a read through the helper, which checks the address.
    unsafe { bpf_probe_read_kernel((skb as *const c_void).byte_add(at as usize) as *const u64) }
        .unwrap_or(0)
}

/// Whether conntrack saw the client acknowledge the backend's SYN-ACK.
#[inline(always)]
pub fn assured(ct: u64) -> bool {
    status(ct).is_some_and(|s| s & IPS_ASSURED != 0)
}

/// Whether conntrack saw `ct`'s backend answer at all (a SYN-ACK, or an
/// RST), whether or not evenflow saw the packet leave.
#[inline(always)]
pub fn replied(ct: u64) -> bool {
    status(ct).is_some_and(|s| s & IPS_SEEN_REPLY != 0)
}

/// `ct`'s status bits (`IPS_*`).
#[inline(always)]
fn status(ct: u64) -> Option<u64> {
    read::<u64>(ct + offset(&NF_CONN_STATUS))
}

/// Whether `ct`'s connection had its destination translated (DNAT), and
/// whether conntrack saw its handshake end: `None` for one not translated,
/// which evenflow does not follow (routed, or masqueraded only).
#[inline(always)]
pub fn translated(ct: u64) -> Option<bool> {
    status(ct)
        .filter(|s| s & IPS_DST_NAT != 0)
        .map(|s| s & IPS_ASSURED != 0)
}

/// `struct ip_ct_tcp_state`: what conntrack saw of one direction's
/// sequence numbers, and its flags.
#[repr(C)]
#[derive(Copy, Clone)]
struct TcpSeen {
    td_end: u32,
    _window: [u32; 3],
    _scale: u8,
    flags: u8,
    _pad: u16,
}

/// `struct ip_ct_tcp` up to its state: both directions' TCP state
/// (`seen`), then conntrack's state of the connection.
#[repr(C)]
#[derive(Copy, Clone)]
struct TcpTrack {
    seen: [TcpSeen; 2],
    state: u8,
    _rest: [u8; 3],
}

/// `TCP_CONNTRACK_ESTABLISHED`.
const TCP_CONNTRACK_ESTABLISHED: u8 = 3;
/// `TCP_CONNTRACK_CLOSE`: an RST closed the connection.
const TCP_CONNTRACK_CLOSE: u8 = 8;

/// What conntrack saw of a TCP connection (`proto.tcp`), read in one go.
#[derive(Copy, Clone)]
pub struct Seen(TcpTrack);

impl Seen {
    /// `ct`'s, or `None` (or zeroes) where its memory cannot be read (see
    /// [`read`]).
    #[inline(always)]
    pub fn of(ct: u64) -> Option<Self> {
        read::<TcpTrack>(ct + offset(&NF_CONN_SEEN)).map(Self)
    }

    /// Whether an RST closed the connection. Conntrack lets an RST through
    /// in the window but not at the expected sequence number without
    /// closing (the receiver answers it with a challenge ACK and the
    /// connection lives on).
    #[inline(always)]
    pub fn reset(&self) -> bool {
        self.0.state == TCP_CONNTRACK_CLOSE
    }

    /// Whether the handshake is over and neither side began to close.
    #[inline(always)]
    pub fn established(&self) -> bool {
        self.0.state == TCP_CONNTRACK_ESTABLISHED
    }

    /// The sequence number just past everything conntrack saw sent in
    /// `dir` (SYN and FIN included).
    #[inline(always)]
    pub fn end(&self, dir: u32) -> u32 {
        self.0.seen[dir as usize & 1].td_end
    }

    /// The sequence numbers to hold back from each direction's end
    /// (original, reply) when the connection ends now: its FINs, or, where
    /// an RST closed it, the first FIN, if one was sent (had the other
    /// side's followed, that FIN would have ended the connection).
    #[inline(always)]
    pub fn held(&self) -> (u32, u32) {
        if self.reset() {
            (
                self.closed_first(ORIGINAL) as u32,
                self.closed_first(REPLY) as u32,
            )
        } else {
            (1, 1)
        }
    }

    /// Whether `dir` sent the connection's first FIN: conntrack marks the
    /// direction whose FIN moved the connection into `FIN_WAIT` (a
    /// retransmission of that FIN, or the other side's, marks nothing; a
    /// flowtable's teardown, which evenflow does not count through, marks
    /// the original direction).
    #[inline(always)]
    pub fn closed_first(&self, dir: u32) -> bool {
        self.0.seen[dir as usize & 1].flags & CLOSE_INIT != 0
    }
}

/// `struct nf_conntrack_man`, and a tuple's destination, which is laid out
/// the same way up to its port: an address (`union nf_inet_addr`), then
/// its port (network order). The agent checks this kernel's BTF agrees for
/// the source; the destination is an anonymous struct BTF cannot be asked
/// for by name, laid out so since conntrack has had IPv6.
#[repr(C)]
#[derive(Copy, Clone)]
struct Man {
    addr: [u32; 4],
    port: u16,
    _rest: u16,
}

/// `struct nf_conntrack_tuple`: where a direction's packets come from and
/// go to.
#[repr(C)]
#[derive(Copy, Clone)]
struct Tuple {
    src: Man,
    dst: Man,
}

/// `tuplehash[0].tuple` up to `tuplehash[1].tuple.src`: the original
/// direction's tuple and where the reply comes from, read in one go (by
/// the sweeper: on the TC programs' stack it would not fit).
#[repr(C)]
#[derive(Copy, Clone)]
struct Tuples {
    original: Tuple,
    _node: [u32; 4],
    reply_src: Man,
}

impl Tuples {
    #[inline(always)]
    fn of(ct: u64) -> Option<Self> {
        read::<Self>(ct + offset(&NF_CONN_ORIGINAL_SRC))
    }
}

/// From the original direction's tuple to the reply's: the size of a
/// `struct nf_conntrack_tuple_hash` (a 16-byte hash node, then the
/// tuple), which the agent checks is 56.
const TUPLE_STRIDE: u64 = core::mem::offset_of!(Tuples, reply_src) as u64;

/// Whether a flow key's address is IPv4 (IPv4-mapped).
#[inline(always)]
fn is_v4(addr: &[u32; 4]) -> bool {
    let mapped = agent_common::v4_mapped(0);
    addr[0] | addr[1] == 0 && addr[2] == mapped[2]
}

/// `ct_addr` in flow-key form: IPv4-mapped where `like` (a flow key's
/// address of the same connection) is.
#[inline(always)]
fn key_addr(ct_addr: [u32; 4], like: &[u32; 4]) -> [u32; 4] {
    if is_v4(like) {
        agent_common::v4_mapped(ct_addr[0])
    } else {
        ct_addr
    }
}

/// Whether `man` is `(addr, port)` (address in flow-key form, port in
/// host order).
#[inline(always)]
fn is(man: &Man, (addr, port): (&[u32; 4], u16)) -> bool {
    u16::from_be(man.port) == port && is_ct_addr(addr, &man.addr)
}

/// Where a connection that conntrack translated to `backend` (address in
/// flow-key form, port) was headed: the client and the destination it
/// dialled, from conntrack's original tuple. `None` where conntrack's
/// reply does not come from `backend`, or the client dialled `backend`
/// itself: conntrack routed the connection untranslated.
#[inline(always)]
pub fn dialled(ct: u64, backend: (&[u32; 4], u16)) -> Option<SynOrigin> {
    // Two small reads, not one of both tuples: the state packets' frame
    // (`forward::on_conntrack_packet`) holds them, and on kernels before
    // 6.8 (which round frames to 32 bytes) the tuples' 76 bytes bring the
    // call chain through the general parser to the 512-byte limit.
    let reply = read::<Man>(ct + offset(&NF_CONN_ORIGINAL_SRC) + TUPLE_STRIDE)?;
    if !is(&reply, backend) {
        return None;
    }
    let original = read::<Tuple>(ct + offset(&NF_CONN_ORIGINAL_SRC))?;
    let (src, dst) = (original.src, original.dst);
    if dst.port == reply.port && agent_common::same_addr(&dst.addr, &reply.addr) {
        return None;
    }
    Some(SynOrigin {
        src_addr: key_addr(src.addr, backend.0),
        dst_addr: key_addr(dst.addr, backend.0),
        src_port: u16::from_be(src.port),
        dst_port: u16::from_be(dst.port),
    })
}

/// Whether `addr` (IPv4-mapped for IPv4, as flow keys hold it) is the
/// `union nf_inet_addr` `ct_addr` (IPv4 in its first word, the rest zero).
#[inline(always)]
fn is_ct_addr(addr: &[u32; 4], ct_addr: &[u32; 4]) -> bool {
    if is_v4(addr) {
        ct_addr[0] == addr[3] && ct_addr[1] | ct_addr[2] | ct_addr[3] == 0
    } else {
        agent_common::same_addr(addr, ct_addr)
    }
}

/// Whether `ct` still is the live connection from `client` to `backend`
/// (address, port): a stored `nf_conn` may since have been freed and
/// reused for another, or have expired (conntrack frees an expired record
/// only when its garbage collector, which can wait a minute, gets to it).
/// Out of line: the iterators that ask it twice a visit would otherwise
/// hold a copy of the tuples for each ask in the frame below every call
/// they make, and run out of stack.
#[inline(never)]
pub fn is_connection(ct: u64, client: (&[u32; 4], u16), backend: (&[u32; 4], u16)) -> bool {
    let (Some(tuples), Some(timeout)) =
        (Tuples::of(ct), read::<u32>(ct + offset(&NF_CONN_TIMEOUT)))
    else {
        return false;
    };
    let (orig, reply) = (tuples.original.src, tuples.reply_src);
    // `nf_ct_is_expired`: the timeout is in 32-bit jiffies.
    // SAFETY: no arguments.
    let now = unsafe { bpf_jiffies64() } as u32;
    timeout.wrapping_sub(now) as i32 > 0 && is(&orig, client) && is(&reply, backend)
}

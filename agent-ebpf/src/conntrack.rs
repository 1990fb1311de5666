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
//! Kernel memory is read with `bpf_probe_read_kernel`, at offsets the agent
//! takes from this kernel's BTF and writes here before loading (`.rodata`:
//! constants to the verifier). All zero means this kernel's BTF has no
//! conntrack: then every forwarded packet is counted by its own lookup.

use core::{ffi::c_void, ptr::read_volatile};

use agent_common::SynOrigin;

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, generated::bpf_jiffies64},
    programs::TcContext,
};

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
/// `offsetof(struct nf_conn, tuplehash[0].tuple.dst)`: its port follows
/// its address as the source's does (see [`NF_CONN_MAN_PORT`]).
#[unsafe(no_mangle)]
static NF_CONN_ORIGINAL_DST: u32 = 0;
/// `sizeof(struct nf_conntrack_tuple_hash)`: from the original direction's
/// tuple to the reply's.
#[unsafe(no_mangle)]
static NF_CONN_TUPLE_STRIDE: u32 = 0;
/// `offsetof(struct nf_conntrack_man, u)`: the port after the address.
#[unsafe(no_mangle)]
static NF_CONN_MAN_PORT: u32 = 0;
/// `offsetof(struct nf_conn, proto.tcp.seen[0].td_end)`.
#[unsafe(no_mangle)]
static NF_CONN_TD_END: u32 = 0;
/// `sizeof(struct ip_ct_tcp_state)`: from `seen[0]` to `seen[1]`.
#[unsafe(no_mangle)]
static NF_CONN_SEEN_STRIDE: u32 = 0;

/// `IPS_ASSURED`: conntrack saw the handshake's last ACK.
const IPS_ASSURED: u64 = 1 << 2;
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

/// `size_of::<T>()` bytes of kernel memory at `addr`, or `None` where they
/// cannot be read.
#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
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
    // SAFETY: a read through the helper, which checks the address.
    unsafe { bpf_probe_read_kernel((skb as *const c_void).byte_add(at as usize) as *const u64) }
        .unwrap_or(0)
}

/// Whether conntrack saw the client acknowledge the backend's SYN-ACK.
#[inline(always)]
pub fn assured(ct: u64) -> bool {
    read::<u64>(ct + offset(&NF_CONN_STATUS)).is_some_and(|s| s & IPS_ASSURED != 0)
}

/// The sequence number just past everything conntrack saw sent in `dir`
/// (SYN and FIN included).
#[inline(always)]
pub fn seq_end(ct: u64, dir: u32) -> Option<u32> {
    read::<u32>(ct + offset(&NF_CONN_TD_END) + dir as u64 * offset(&NF_CONN_SEEN_STRIDE))
}

/// The address and port (host order) a direction's tuple comes from.
#[inline(always)]
fn source(ct: u64, dir: u32) -> Option<([u32; 4], u16)> {
    address_at(ct + offset(&NF_CONN_ORIGINAL_SRC) + dir as u64 * offset(&NF_CONN_TUPLE_STRIDE))
}

/// The address (`union nf_inet_addr`) at `at` and the port (host order)
/// after it.
#[inline(always)]
fn address_at(at: u64) -> Option<([u32; 4], u16)> {
    let addr = read::<[u32; 4]>(at)?;
    let port = read::<u16>(at + offset(&NF_CONN_MAN_PORT))?;
    Some((addr, u16::from_be(port)))
}

/// `ct_addr` in flow-key form: IPv4-mapped where `like` (a flow key's
/// address of the same connection) is.
#[inline(always)]
fn key_addr(ct_addr: [u32; 4], like: &[u32; 4]) -> [u32; 4] {
    if like[..3] == agent_common::v4_mapped(0)[..3] {
        agent_common::v4_mapped(ct_addr[0])
    } else {
        ct_addr
    }
}

/// Where a connection that conntrack translated to `backend` (address in
/// flow-key form, port) was headed: the client and the destination it
/// dialled, from conntrack's original tuple. `None` where conntrack's
/// reply does not come from `backend`, or the client dialled `backend`
/// itself: conntrack routed the connection untranslated.
#[inline(always)]
pub fn dialled(ct: u64, backend: (&[u32; 4], u16)) -> Option<SynOrigin> {
    let reply = source(ct, REPLY)?;
    if !same_addr(backend.0, &reply.0) || backend.1 != reply.1 {
        return None;
    }
    let dst = address_at(ct + offset(&NF_CONN_ORIGINAL_DST))?;
    if dst == reply {
        return None;
    }
    let src = source(ct, ORIGINAL)?;
    Some(SynOrigin {
        src_addr: key_addr(src.0, backend.0),
        dst_addr: key_addr(dst.0, backend.0),
        src_port: src.1,
        dst_port: dst.1,
    })
}

/// Whether `addr` (IPv4-mapped for IPv4, as flow keys hold it) is the
/// `union nf_inet_addr` `ct_addr` (IPv4 in its first word, the rest zero).
#[inline(always)]
fn same_addr(addr: &[u32; 4], ct_addr: &[u32; 4]) -> bool {
    if addr[..3] == agent_common::v4_mapped(0)[..3] {
        ct_addr[0] == addr[3] && ct_addr[1] | ct_addr[2] | ct_addr[3] == 0
    } else {
        addr == ct_addr
    }
}

/// Whether `ct` still is the live connection from `client` to `backend`
/// (address, port): a stored `nf_conn` may since have been freed and
/// reused for another, or have expired (conntrack frees an expired record
/// only when its garbage collector, which can wait a minute, gets to it).
#[inline(always)]
pub fn is_connection(ct: u64, client: (&[u32; 4], u16), backend: (&[u32; 4], u16)) -> bool {
    let (Some(orig), Some(reply), Some(timeout)) = (
        source(ct, ORIGINAL),
        source(ct, REPLY),
        read::<u32>(ct + offset(&NF_CONN_TIMEOUT)),
    ) else {
        return false;
    };
    // `nf_ct_is_expired`: the timeout is in 32-bit jiffies.
    // SAFETY: no arguments.
    let now = unsafe { bpf_jiffies64() } as u32;
    if timeout.wrapping_sub(now) as i32 <= 0 {
        return false;
    }
    same_addr(client.0, &orig.0)
        && client.1 == orig.1
        && same_addr(backend.0, &reply.0)
        && backend.1 == reply.1
}

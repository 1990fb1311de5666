//! Header parsing for the TC programs: Ethernet (with one VLAN tag), IPv4 or
//! IPv6 (walking common extension headers), then TCP or UDP; and an RST's
//! numbers for the RST watcher. Only what counting needs is read.

use agent_common::{FlowKey, PROTO_TCP, PROTO_UDP, Stat, v4_mapped};
use aya_ebpf::programs::{TcContext, sk_buff::SkBuff};

use crate::counters::stat;

#[derive(Copy, Clone, PartialEq, Eq)]
pub enum Side {
    Ingress,
    Egress,
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV6_HLEN: usize = 40;
const IPV6_MAX_EXT: usize = 4;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// What counting needs from one packet.
pub struct Packet {
    /// The flow key's bytes (see [`FlowKey::words`]).
    key: [u64; 5],
    proto: u8,
    tcp_flags: u8,
    /// TCP sequence number (host order; 0 for UDP).
    pub seq: u32,
    /// Transport payload bytes (all segments of a GSO/GRO packet).
    pub payload_len: u64,
    /// Wire packets this skb stands for.
    pub segments: u64,
}

/// What the slow parser fills in (see [`parse_into`]).
struct Raw {
    src: [u32; 4],
    dst: [u32; 4],
    sport: u16,
    dport: u16,
    proto: u8,
    tcp_flags: u8,
    seq: u32,
    payload_len: u64,
    segments: u64,
}

// Headers are read in place (direct packet access: no helper call, no stack
// copy) when they sit in the skb's linear area, which is nearly always; else
// one `bpf_skb_load_bytes` per header fetches them. Whole structs, not field
// by field, keep the stack small (512 bytes for the whole call chain).

#[repr(C)]
#[derive(Copy, Clone)]
struct EthHdr {
    _addrs: [u8; 12],
    proto: u16,
    _vlan_tci: u16,
    inner_proto: u16,
}

#[repr(C)]
#[derive(Copy, Clone)]
struct Ipv4Hdr {
    vihl: u8,
    _tos: u8,
    tot_len: u16,
    _id: u16,
    frag_off: u16,
    _ttl: u8,
    proto: u8,
    _csum: u16,
    src: u32,
    dst: u32,
}

#[repr(C)]
#[derive(Copy, Clone)]
struct Ipv6Hdr {
    _vtcfl: u32,
    payload_len: u16,
    next_hdr: u8,
    _hop_limit: u8,
    src: [u32; 4],
    dst: [u32; 4],
}

/// The first 14 bytes of a TCP header.
#[repr(C)]
#[derive(Copy, Clone)]
struct TcpHdr {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    doff: u8,
    flags: u8,
}

/// `parse_into` results. A BPF subprogram may return only a scalar, never a
/// pointer to its stack, so the packet travels through an out-parameter.
const PARSED: i32 = 0;
const SKIPPED: i32 = 1;
const UNPARSABLE: i32 = 2;

impl Packet {
    /// `None`: not a packet evenflow counts (ARP, ICMP, non-first
    /// fragment), or one that should have been parsable but was not
    /// (truncated headers, more than four IPv6 extension headers), which
    /// `packet_unparsable` counts.
    ///
    /// The common shapes (untagged IPv4 without options, IPv6 without
    /// extension headers, TCP or UDP, headers in the linear area) are read
    /// in place at constant offsets; anything else goes to the general
    /// parser, a subprogram of its own.
    #[inline(always)]
    pub fn parse(ctx: &TcContext, side: Side) -> Option<Self> {
        let parsed = match fast(ctx, side) {
            Fast::Parsed(pkt) => Ok(Some(pkt)),
            Fast::Skipped => Ok(None),
            Fast::Slow => slow(ctx, side),
        };
        parsed.unwrap_or_else(|()| {
            stat(Stat::PacketUnparsable, 1);
            None
        })
    }

    /// [`Packet::parse`], TCP only: what counting forwarded connections
    /// needs.
    #[inline(always)]
    pub fn parse_tcp(ctx: &TcContext, side: Side) -> Option<Self> {
        let pkt = Self::parse(ctx, side)?;
        // Opaque to the optimiser: else, merging this `None` with the
        // parser's, it may read the protocol of a packet that was never
        // parsed (a register never written, which the verifier refuses).
        (core::hint::black_box(pkt.proto) == PROTO_TCP).then_some(pkt)
    }

    /// The flow key as this node sees it: the local end is the source of an
    /// egress packet and the destination of an ingress one.
    #[inline(always)]
    pub fn flow_key(&self) -> &FlowKey {
        // SAFETY: `key` holds the 40 bytes of a FlowKey (see
        // `FlowKey::words`), is at least as aligned, and every bit pattern
        // is a valid FlowKey.
        unsafe { &*(self.key.as_ptr() as *const FlowKey) }
    }

    #[inline(always)]
    fn new(side: Side, src: [u32; 4], dst: [u32; 4], sport: u16, dport: u16, proto: u8) -> Self {
        let key = match side {
            Side::Egress => FlowKey::words(src, dst, sport, dport, proto),
            Side::Ingress => FlowKey::words(dst, src, dport, sport, proto),
        };
        Packet {
            key,
            proto,
            tcp_flags: 0,
            seq: 0,
            payload_len: 0,
            segments: 1,
        }
    }

    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.proto == PROTO_TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    #[inline(always)]
    pub fn is_syn_ack(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
    }

    #[inline(always)]
    pub fn is_rst(&self) -> bool {
        self.tcp_flags & TCP_RST != 0
    }

    #[inline(always)]
    pub fn is_fin(&self) -> bool {
        self.tcp_flags & TCP_FIN != 0
    }

    /// Whether the packet carries SYN, FIN or RST: the ones that change a
    /// connection's state.
    #[inline(always)]
    pub fn has_state_flags(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0
    }

    #[inline(always)]
    pub fn is_ack(&self) -> bool {
        self.tcp_flags & TCP_ACK != 0
    }

    /// The sequence number of the first payload byte (a SYN occupies one).
    #[inline(always)]
    pub fn data_seq(&self) -> u32 {
        self.seq
            .wrapping_add((self.tcp_flags & TCP_SYN != 0) as u32)
    }
}

// The fast path reads 16-bit words in place, at even offsets from skb->data.
// skb->data is even in practice (the kernel aligns the IP header), but the
// verifier forbids testing a packet pointer's bits, so a Rust reference
// could not promise alignment: the loads are BPF instructions of their own
// (`ldxh`), which may be misaligned on packet data wherever the kernel runs
// BPF without strict alignment (x86-64, arm64: the verifier enforces it
// elsewhere). Byte order arithmetic below assumes the little-endian target
// the agent builds for.
const _: () = assert!(cfg!(target_endian = "little"));

/// What [`syn_probe`] saw.
pub enum Probe {
    /// A TCP SYN without ACK: a connection attempt.
    Syn,
    /// Anything else in a common shape.
    Other,
    /// A shape the probe does not read (VLAN, IPv4 options, IPv6 extension
    /// headers, headers outside the linear area): parse it fully.
    Unknown,
}

/// Tells a SYN from everything else with a handful of loads, for the hooks
/// that only care about connection attempts (TC ingress; on egress, a
/// forwarded SYN conntrack does not follow).
#[inline(always)]
pub fn syn_probe(ctx: &TcContext) -> Probe {
    // SAFETY: a scalar context field.
    let gso_segs = unsafe { (*ctx.skb.skb).gso_segs };
    // A GRO/GSO super-packet stands for several segments, which a SYN never
    // is: bulk traffic is told apart without touching the packet.
    if gso_segs > 1 {
        return Probe::Other;
    }
    match tcp_header(ctx) {
        // SAFETY: `tcp_header` checked that the header's first 14 bytes
        // are in the linear area.
        Ok(Some(tcp)) if unsafe { flags(tcp) } & (TCP_SYN | TCP_ACK) == TCP_SYN => Probe::Syn,
        Ok(_) => Probe::Other,
        Err(()) => Probe::Unknown,
    }
}

/// Where a TCP packet of a common shape is going: its destination address
/// (IPv4 mapped into IPv6) and port, read in place; `None` for anything
/// else (see [`tcp_at`]). For a connecting local socket's packets, which
/// are its SYNs: the socket's state already says what they are.
#[inline(always)]
pub fn tcp_destination(ctx: &TcContext) -> Option<([u32; 4], u16)> {
    let at = tcp_headers(ctx).ok()??;
    // SAFETY: `tcp_at` checked the IP header and the TCP header's first 14
    // bytes. Should the compiler merge the two families' paths, each
    // address read stays inside either family's checked headers, which the
    // verifier asks of every path it walks.
    unsafe {
        let d = at.dst;
        let addr = if at.v4 {
            v4_mapped(rd32(d))
        } else {
            [rd32(d), rd32(d + 4), rd32(d + 8), rd32(d + 12)]
        };
        Some((addr, u16::from_be(rd16(at.header + 2))))
    }
}

/// Whether a forwarded packet of a connection conntrack follows needs more
/// than this probe: it may change the connection's state (SYN, FIN, RST:
/// journaled), or its sequence numbers cross a multiple of 2^29 (its flow
/// looked up), where the flow's byte
/// count catches up with conntrack's (so it never falls 2^31 behind, where
/// sequence arithmetic would lose track). A shape the probe does not read
/// says yes.
#[inline(always)]
pub fn may_change_state(ctx: &TcContext) -> bool {
    let tcp = match tcp_header(ctx) {
        Ok(Some(tcp)) => tcp,
        Ok(None) => return false,
        Err(()) => return true,
    };
    // SAFETY: `tcp_header` checked the header's first 14 bytes.
    let (flags, seq) = unsafe { (flags(tcp), u32::from_be(rd32(tcp + 4))) };
    if flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
        return true;
    }
    // SAFETY: a scalar context field. The packet's length past the TCP
    // header's start bounds its payload (from above: a boundary is never
    // missed, at worst a lookup is spared less often).
    let len = unsafe { (*ctx.skb.skb).len }.saturating_sub((tcp - ctx.data()) as u32);
    (seq ^ seq.wrapping_add(len)) >> 29 != 0
}

/// Where the TCP header of a common-shape packet starts: [`tcp_headers`]'
/// header alone.
#[inline(always)]
fn tcp_header(ctx: &TcContext) -> Result<Option<usize>, ()> {
    tcp_headers(ctx).map(|at| at.map(|at| at.header))
}

/// [`tcp_at`] for the packet in `ctx`, whose network header follows an
/// Ethernet header; a VLAN-tagged one is a shape it does not read.
#[inline(always)]
fn tcp_headers(ctx: &TcContext) -> Result<Option<TcpAt>, ()> {
    // SAFETY: a scalar context field. The skb's protocol is the Ethernet
    // header's type (network order), read from the skb rather than the
    // packet.
    let protocol = unsafe { (*ctx.skb.skb).protocol };
    match tcp_at(protocol, ctx.data() + ETH_HLEN, ctx.data_end()) {
        Ok(None) if matches!(u16::from_be(protocol as u16), ETH_P_8021Q | ETH_P_8021AD) => Err(()),
        at => at,
    }
}

/// [`tcp_at`]'s TCP header alone.
#[inline(always)]
fn tcp_header_at(protocol: u32, l3: usize, end: usize) -> Result<Option<usize>, ()> {
    tcp_at(protocol, l3, end).map(|at| at.map(|at| at.header))
}

/// Where a common-shape TCP packet's headers are.
struct TcpAt {
    /// The TCP header (its first 14 bytes in the linear area).
    header: usize,
    /// The destination address: 4 bytes for IPv4, 16 for IPv6, in the
    /// linear area either way (see [`tcp_destination`]).
    dst: usize,
    /// IPv4: `dst` holds 4 bytes, else 16.
    v4: bool,
}

/// Where the headers of a common-shape TCP packet are, from its network
/// header at `l3` (the packet's linear area ending at `end`, its skb
/// protocol `protocol`); `Ok(None)` for a common shape that is not TCP,
/// `Err(())` for a shape this does not read (IPv4 options, IPv6 extension
/// headers, headers outside the linear area).
#[inline(always)]
fn tcp_at(protocol: u32, l3: usize, end: usize) -> Result<Option<TcpAt>, ()> {
    // IPv4 + the first 14 bytes of TCP.
    if l3 + 20 + 14 > end {
        return Err(());
    }
    let ethertype = u16::from_be(protocol as u16);
    // SAFETY (every read below): bounds-checked against `end`.
    let at = if ethertype == ETH_P_IP {
        let vihl_tos = unsafe { rd16(l3) };
        if vihl_tos & 0xff != 0x45 {
            return Err(());
        }
        if (unsafe { rd16(l3 + 8) } >> 8) as u8 != PROTO_TCP {
            return Ok(None);
        }
        TcpAt {
            header: l3 + 20,
            dst: l3 + 16,
            v4: true,
        }
    } else if ethertype == ETH_P_IPV6 {
        if l3 + IPV6_HLEN + 14 > end {
            return Err(());
        }
        match (unsafe { rd16(l3 + 6) } & 0xff) as u8 {
            PROTO_TCP => TcpAt {
                header: l3 + IPV6_HLEN,
                dst: l3 + 24,
                v4: false,
            },
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT => {
                return Err(());
            }
            _ => return Ok(None),
        }
    } else {
        return Ok(None);
    };
    if at.header + 14 > end {
        return Err(());
    }
    Ok(Some(at))
}

/// The sequence and acknowledgement numbers (host order) of a TCP RST
/// that carries an ACK, from the network header at `l3` (see
/// [`tcp_header_at`]); `Ok(None)` for anything else, `Err(())` for the
/// shapes [`tcp_header_at`] does not read (see [`reset_parsed`]).
#[inline(always)]
pub fn reset_at(protocol: u32, l3: usize, end: usize) -> Result<Option<(u32, u32)>, ()> {
    let Some(tcp) = tcp_header_at(protocol, l3, end)? else {
        return Ok(None);
    };
    // SAFETY: `tcp_header_at` checked the header's first 14 bytes.
    unsafe {
        if flags(tcp) & (TCP_RST | TCP_ACK) != TCP_RST | TCP_ACK {
            return Ok(None);
        }
        Ok(Some((
            u32::from_be(rd32(tcp + 4)),
            u32::from_be(rd32(tcp + 8)),
        )))
    }
}

/// [`reset_at`] for what it does not read in place: IPv4 options, IPv6
/// extension headers, headers outside the linear area (a peer's kernel
/// echoes a packet's IPv4 options in its RST; a socket with `IP_OPTIONS`
/// or `IPV6_DSTOPTS` sends them on all of its packets). `skb`'s data
/// starts at the network header; `protocol` is the skb's.
#[inline(always)]
pub fn reset_parsed(skb: &SkBuff, protocol: u32) -> Option<(u32, u32)> {
    let l4 = match u16::from_be(protocol as u16) {
        ETH_P_IP => {
            let ip = skb.load::<Ipv4Hdr>(0).ok()?;
            let ihl = ((ip.vihl & 0x0f) as usize) * 4;
            if ihl < 20 || ip.proto != PROTO_TCP {
                return None;
            }
            ihl
        }
        ETH_P_IPV6 => {
            let next = skb.load::<Ipv6Hdr>(0).ok()?.next_hdr;
            match walk_ipv6_ext(skb, next, IPV6_HLEN)? {
                (PROTO_TCP, l4) => l4,
                _ => return None,
            }
        }
        _ => return None,
    };
    let tcp = skb.load::<TcpHdr>(l4).ok()?;
    (tcp.flags & (TCP_RST | TCP_ACK) == TCP_RST | TCP_ACK)
        .then(|| (u32::from_be(tcp.seq), u32::from_be(tcp.ack)))
}

/// The flags byte of the TCP header at `tcp`.
///
/// # Safety
/// The header's first 14 bytes are in the linear area.
#[inline(always)]
unsafe fn flags(tcp: usize) -> u8 {
    // The flags byte sits at an odd offset: read the 16-bit word before it.
    // SAFETY: per the contract.
    (unsafe { rd16(tcp + 12) } >> 8) as u8
}

enum Fast {
    Parsed(Packet),
    Skipped,
    Slow,
}

/// The native-endian `u16` at packet address `p`.
///
/// # Safety
/// `p + 2` is within the packet's linear area (checked against data_end).
#[inline(always)]
unsafe fn rd16(p: usize) -> u16 {
    let v: u64;
    // SAFETY: per the contract; a BPF load has no alignment requirement on
    // packet data where the verifier does not enforce one.
    unsafe {
        core::arch::asm!(
            "{v} = *(u16 *)({p} + 0)",
            p = in(reg) p,
            v = lateout(reg) v,
            options(pure, readonly, nostack, preserves_flags)
        )
    };
    v as u16
}

/// The native-endian `u32` at packet address `p`.
///
/// # Safety
/// `p + 4` is within the packet's linear area.
#[inline(always)]
unsafe fn rd32(p: usize) -> u32 {
    let v: u64;
    // SAFETY: as for `rd16`.
    unsafe {
        core::arch::asm!(
            "{v} = *(u32 *)({p} + 0)",
            p = in(reg) p,
            v = lateout(reg) v,
            options(pure, readonly, nostack, preserves_flags)
        )
    };
    v as u32
}

#[inline(always)]
fn fast(ctx: &TcContext, side: Side) -> Fast {
    const IP4: usize = ETH_HLEN;
    const IP6: usize = ETH_HLEN;
    const L4_4: usize = ETH_HLEN + 20;
    const L4_6: usize = ETH_HLEN + IPV6_HLEN;
    let start = ctx.data();
    let end = ctx.data_end();
    if start + ETH_HLEN > end {
        return Fast::Slow;
    }
    // SAFETY (every read below): each is bounds-checked against `end`
    // first.
    let ethertype = u16::from_be(unsafe { rd16(start + 12) });
    let (mut pkt, l4, l4_len) = if ethertype == ETH_P_IP {
        if start + L4_4 > end {
            return Fast::Slow;
        }
        let vihl = unsafe { rd16(start + IP4) } & 0xff;
        if vihl != 0x45 {
            // Options (or not IPv4 at all): the general parser decides.
            return Fast::Slow;
        }
        if u16::from_be(unsafe { rd16(start + IP4 + 6) }) & 0x1fff != 0 {
            return Fast::Skipped;
        }
        let proto = (unsafe { rd16(start + IP4 + 8) } >> 8) as u8;
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return Fast::Skipped;
        }
        let tot_len = u16::from_be(unsafe { rd16(start + IP4 + 2) }) as u64;
        let src = v4_mapped(unsafe { rd32(start + IP4 + 12) });
        let dst = v4_mapped(unsafe { rd32(start + IP4 + 16) });
        (
            Packet::new(side, src, dst, 0, 0, proto),
            L4_4,
            tot_len.saturating_sub(20),
        )
    } else if ethertype == ETH_P_IPV6 {
        if start + L4_6 > end {
            return Fast::Slow;
        }
        let proto = (unsafe { rd16(start + IP6 + 6) } & 0xff) as u8;
        match proto {
            PROTO_TCP | PROTO_UDP => {}
            // Extension headers: the general parser walks them.
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT => {
                return Fast::Slow;
            }
            _ => return Fast::Skipped,
        }
        let payload_len = u16::from_be(unsafe { rd16(start + IP6 + 4) }) as u64;
        let a = start + IP6 + 8;
        let (src, dst) = unsafe {
            (
                [rd32(a), rd32(a + 4), rd32(a + 8), rd32(a + 12)],
                [rd32(a + 16), rd32(a + 20), rd32(a + 24), rd32(a + 28)],
            )
        };
        (Packet::new(side, src, dst, 0, 0, proto), L4_6, payload_len)
    } else if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        return Fast::Slow;
    } else {
        return Fast::Skipped;
    };
    let (sport, dport, hdr_len) = if pkt.proto == PROTO_TCP {
        if start + l4 + 14 > end {
            return Fast::Slow;
        }
        let (sport, dport, doff_flags) = unsafe {
            (
                rd16(start + l4),
                rd16(start + l4 + 2),
                rd16(start + l4 + 12),
            )
        };
        pkt.tcp_flags = (doff_flags >> 8) as u8;
        pkt.seq = u32::from_be(unsafe { rd32(start + l4 + 4) });
        (sport, dport, (((doff_flags & 0xff) >> 4) as u64) * 4)
    } else {
        if start + l4 + 4 > end {
            return Fast::Slow;
        }
        let (sport, dport) = unsafe { (rd16(start + l4), rd16(start + l4 + 2)) };
        (sport, dport, 8)
    };
    let (sport, dport) = (u16::from_be(sport), u16::from_be(dport));
    // The ports go into the last key word (see FlowKey::words).
    let (lport, rport) = match side {
        Side::Egress => (sport, dport),
        Side::Ingress => (dport, sport),
    };
    pkt.key[4] |= lport as u64 | (rport as u64) << 16;
    pkt.payload_len = payload_len(ctx, l4, l4_len, hdr_len);
    pkt.segments = gso_segments(ctx);
    Fast::Parsed(pkt)
}

/// Transport payload bytes: the IP header's transport length (`l4_len`,
/// from offset `l4`) less the transport header. A zero IP length is a BIG
/// TCP super-packet: the skb's length stands for it.
#[inline(always)]
fn payload_len(ctx: &TcContext, l4: usize, l4_len: u64, hdr_len: u64) -> u64 {
    let l4_len = if l4_len == 0 {
        (ctx.len() as u64).saturating_sub(l4 as u64)
    } else {
        l4_len
    };
    l4_len.saturating_sub(hdr_len)
}

#[inline(always)]
fn gso_segments(ctx: &TcContext) -> u64 {
    // SAFETY: reading a scalar field of the context the kernel gave us.
    let gso_segs = unsafe { (*ctx.skb.skb).gso_segs } as u64;
    if gso_segs > 1 { gso_segs } else { 1 }
}

/// The general parser, for what the fast path leaves: VLAN tags, IPv4
/// options, IPv6 extension headers, headers outside the linear area.
#[inline(always)]
fn slow(ctx: &TcContext, side: Side) -> Result<Option<Packet>, ()> {
    let mut raw = Raw {
        src: [0; 4],
        dst: [0; 4],
        sport: 0,
        dport: 0,
        proto: 0,
        tcp_flags: 0,
        seq: 0,
        payload_len: 0,
        segments: 1,
    };
    match parse_into(ctx, &mut raw) {
        PARSED => {
            let mut pkt = Packet::new(side, raw.src, raw.dst, raw.sport, raw.dport, raw.proto);
            pkt.tcp_flags = raw.tcp_flags;
            pkt.seq = raw.seq;
            pkt.payload_len = raw.payload_len;
            pkt.segments = raw.segments;
            Ok(Some(pkt))
        }
        SKIPPED => Ok(None),
        _ => Err(()),
    }
}

/// Parses headers into `pkt`. Not inlined, so parsing has a stack frame of
/// its own.
#[inline(never)]
fn parse_into(ctx: &TcContext, pkt: &mut Raw) -> i32 {
    match parse_headers(ctx, pkt) {
        Ok(true) => PARSED,
        Ok(false) => SKIPPED,
        Err(()) => UNPARSABLE,
    }
}

/// Where headers are read from: a TC program's packet, in place where it
/// can, or any skb, copied out.
trait Headers {
    fn load<T: Copy>(&self, off: usize) -> Result<T, ()>;
}

impl Headers for TcContext {
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Result<T, ()> {
        load(self, off)
    }
}

impl Headers for SkBuff {
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Result<T, ()> {
        SkBuff::load(self, off).map_err(|_| ())
    }
}

/// The `T` at `off` in the packet: read in place when it lies in the linear
/// area, else copied out with `bpf_skb_load_bytes`.
#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    // The explicit bound on `off` lets the verifier prove the access.
    if off < 256 && start + off + core::mem::size_of::<T>() <= end {
        // SAFETY: bounds checked against data_end just above.
        return Ok(unsafe { core::ptr::read_unaligned((start + off) as *const T) });
    }
    ctx.load::<T>(off).map_err(|_| ())
}

#[inline(always)]
fn parse_headers(ctx: &TcContext, pkt: &mut Raw) -> Result<bool, ()> {
    let Ok(eth) = load::<EthHdr>(ctx, 0) else {
        return Ok(false);
    };
    let mut off = ETH_HLEN;
    let mut ethertype = u16::from_be(eth.proto);
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = u16::from_be(eth.inner_proto);
        off += 4;
    }
    let (l4_off, l4_len) = match ethertype {
        ETH_P_IP => {
            let ip = load::<Ipv4Hdr>(ctx, off)?;
            let ihl = ((ip.vihl & 0x0f) as usize) * 4;
            if ihl < 20 {
                return Err(());
            }
            if u16::from_be(ip.frag_off) & 0x1fff != 0 {
                return Ok(false);
            }
            pkt.src = v4_mapped(ip.src);
            pkt.dst = v4_mapped(ip.dst);
            pkt.proto = ip.proto;
            (
                off + ihl,
                (u16::from_be(ip.tot_len) as u64).saturating_sub(ihl as u64),
            )
        }
        ETH_P_IPV6 => {
            let ip = load::<Ipv6Hdr>(ctx, off)?;
            let Some((proto, l4_off)) = walk_ipv6_ext(ctx, ip.next_hdr, off + IPV6_HLEN) else {
                return Ok(false);
            };
            if proto != PROTO_TCP && proto != PROTO_UDP {
                return match proto {
                    IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT => {
                        Err(())
                    }
                    _ => Ok(false),
                };
            }
            pkt.src = ip.src;
            pkt.dst = ip.dst;
            pkt.proto = proto;
            let ext_len = (l4_off - off - IPV6_HLEN) as u64;
            (
                l4_off,
                (u16::from_be(ip.payload_len) as u64).saturating_sub(ext_len),
            )
        }
        _ => return Ok(false),
    };
    let hdr_len = match pkt.proto {
        PROTO_TCP => {
            let tcp = load::<TcpHdr>(ctx, l4_off)?;
            pkt.sport = u16::from_be(tcp.sport);
            pkt.dport = u16::from_be(tcp.dport);
            pkt.tcp_flags = tcp.flags;
            pkt.seq = u32::from_be(tcp.seq);
            ((tcp.doff >> 4) as u64) * 4
        }
        PROTO_UDP => {
            let ports = load::<[u16; 2]>(ctx, l4_off)?;
            pkt.sport = u16::from_be(ports[0]);
            pkt.dport = u16::from_be(ports[1]);
            8
        }
        _ => return Ok(false),
    };
    pkt.payload_len = payload_len(ctx, l4_off, l4_len, hdr_len);
    pkt.segments = gso_segments(ctx);
    Ok(true)
}

/// Walks the IPv6 extension headers a host commonly sees (hop-by-hop on MLD,
/// destination options, routing, fragment), at most [`IPV6_MAX_EXT`] of them.
/// Returns the transport protocol and its offset, or `None` for a non-first
/// fragment (no transport header). A header that cannot be read leaves the
/// extension header as the protocol, which the caller counts as unparsable.
#[inline(always)]
fn walk_ipv6_ext(h: &impl Headers, mut proto: u8, mut off: usize) -> Option<(u8, usize)> {
    for _ in 0..IPV6_MAX_EXT {
        match proto {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Ok(hdr) = h.load::<[u8; 2]>(off) else {
                    break;
                };
                proto = hdr[0];
                off += (hdr[1] as usize + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                let Ok(hdr) = h.load::<[u8; 4]>(off) else {
                    break;
                };
                if u16::from_be_bytes([hdr[2], hdr[3]]) & 0xfff8 != 0 {
                    return None;
                }
                proto = hdr[0];
                off += 8;
            }
            _ => break,
        }
    }
    Some((proto, off))
}

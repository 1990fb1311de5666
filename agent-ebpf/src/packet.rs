//! Header parsing for the TC programs: Ethernet (with one VLAN tag), IPv4 or
//! IPv6 (walking common extension headers), then TCP or UDP. Only what
//! counting needs is read.

use agent_common::{FlowKey, PROTO_TCP, PROTO_UDP, v4_mapped};
use aya_ebpf::programs::TcContext;

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
    src: [u32; 4],
    dst: [u32; 4],
    sport: u16,
    dport: u16,
    pub proto: u8,
    tcp_flags: u8,
    side: Side,
    /// Transport payload bytes (all segments of a GSO/GRO packet).
    pub payload_len: u64,
    /// Wire packets this skb stands for.
    pub segments: u64,
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
    _seq: u32,
    _ack: u32,
    doff: u8,
    flags: u8,
}

/// `parse_into` results. A BPF subprogram may return only a scalar, never a
/// pointer to its stack, so the packet travels through an out-parameter.
const PARSED: i32 = 0;
const SKIPPED: i32 = 1;
const UNPARSABLE: i32 = 2;

impl Packet {
    /// `Ok(None)`: not a packet evenflow counts (ARP, ICMP, non-first
    /// fragment). `Err(())`: a packet that should have been parsable but was
    /// not (truncated headers, more than four IPv6 extension headers).
    #[inline(always)]
    pub fn parse(ctx: &TcContext, side: Side) -> Result<Option<Self>, ()> {
        let mut pkt = Packet {
            src: [0; 4],
            dst: [0; 4],
            sport: 0,
            dport: 0,
            proto: 0,
            tcp_flags: 0,
            side,
            payload_len: 0,
            segments: 1,
        };
        match parse_into(ctx, &mut pkt) {
            PARSED => Ok(Some(pkt)),
            SKIPPED => Ok(None),
            _ => Err(()),
        }
    }

    /// The flow key as this node sees it: the local end is the source of an
    /// egress packet and the destination of an ingress one.
    #[inline(always)]
    pub fn flow_key(&self) -> FlowKey {
        let (local_addr, local_port, remote_addr, remote_port) = match self.side {
            Side::Egress => (self.src, self.sport, self.dst, self.dport),
            Side::Ingress => (self.dst, self.dport, self.src, self.sport),
        };
        FlowKey {
            local_addr,
            remote_addr,
            local_port,
            remote_port,
            proto: self.proto,
            _pad: [0; 3],
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

    /// Whether a local socket owns this skb. Locally originated SYNs always
    /// carry their socket; forwarded packets carry none.
    #[inline(always)]
    pub fn has_local_socket(&self, ctx: &TcContext) -> bool {
        // SAFETY: `sk` is a context field the verifier allows tc to read and
        // compare with null.
        !unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk }.is_null()
    }
}

/// Parses headers into `pkt` (whose `side` is already set). Not inlined, so
/// parsing has a stack frame of its own.
#[inline(never)]
fn parse_into(ctx: &TcContext, pkt: &mut Packet) -> i32 {
    match parse_headers(ctx, pkt) {
        Ok(true) => PARSED,
        Ok(false) => SKIPPED,
        Err(()) => UNPARSABLE,
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
fn parse_headers(ctx: &TcContext, pkt: &mut Packet) -> Result<bool, ()> {
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
    // A zero IP length is a BIG TCP super-packet: take the skb's length.
    let l4_len = if l4_len == 0 {
        (ctx.len() as u64).saturating_sub(l4_off as u64)
    } else {
        l4_len
    };
    let hdr_len = match pkt.proto {
        PROTO_TCP => {
            let tcp = load::<TcpHdr>(ctx, l4_off)?;
            pkt.sport = u16::from_be(tcp.sport);
            pkt.dport = u16::from_be(tcp.dport);
            pkt.tcp_flags = tcp.flags;
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
    pkt.payload_len = l4_len.saturating_sub(hdr_len);
    // SAFETY: reading a scalar field of the context the kernel gave us.
    let gso_segs = unsafe { (*ctx.skb.skb).gso_segs } as u64;
    pkt.segments = if gso_segs > 1 { gso_segs } else { 1 };
    Ok(true)
}

/// Walks the IPv6 extension headers a host commonly sees (hop-by-hop on MLD,
/// destination options, routing, fragment), at most [`IPV6_MAX_EXT`] of them.
/// Returns the transport protocol and its offset, or `None` for a non-first
/// fragment (no transport header). A header that cannot be read leaves the
/// extension header as the protocol, which the caller counts as unparsable.
#[inline(always)]
fn walk_ipv6_ext(ctx: &TcContext, mut proto: u8, mut off: usize) -> Option<(u8, usize)> {
    for _ in 0..IPV6_MAX_EXT {
        match proto {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Ok(hdr) = load::<[u8; 2]>(ctx, off) else {
                    break;
                };
                proto = hdr[0];
                off += (hdr[1] as usize + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                let Ok(hdr) = load::<[u8; 4]>(ctx, off) else {
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

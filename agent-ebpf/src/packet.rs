//! Header parsing for the TC programs: Ethernet (with one VLAN tag), IPv4 or
//! IPv6, then TCP or UDP. Only what counting needs is read.

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

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

pub struct Packet {
    src: [u8; 16],
    dst: [u8; 16],
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

impl Packet {
    /// `Ok(None)`: not a packet evenflow counts (ARP, ICMP, non-first IPv4
    /// fragment). `Err(())`: a packet that should have been parsable but was
    /// not (truncated headers, IPv6 extension headers).
    #[inline(always)]
    pub fn parse(ctx: &TcContext, side: Side) -> Result<Option<Self>, ()> {
        let mut off = ETH_HLEN;
        let mut ethertype = u16::from_be(ctx.load::<u16>(12).map_err(|_| ())?);
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = u16::from_be(ctx.load::<u16>(16).map_err(|_| ())?);
            off += 4;
        }
        let (src, dst, proto, l4_off, l4_len) = match ethertype {
            ETH_P_IP => {
                let vihl: u8 = ctx.load(off).map_err(|_| ())?;
                let ihl = ((vihl & 0x0f) as usize) * 4;
                if ihl < 20 {
                    return Err(());
                }
                let frag: u16 = u16::from_be(ctx.load(off + 6).map_err(|_| ())?);
                if frag & 0x1fff != 0 {
                    return Ok(None);
                }
                let tot_len = u16::from_be(ctx.load(off + 2).map_err(|_| ())?) as u64;
                let proto: u8 = ctx.load(off + 9).map_err(|_| ())?;
                let s: [u8; 4] = ctx.load(off + 12).map_err(|_| ())?;
                let d: [u8; 4] = ctx.load(off + 16).map_err(|_| ())?;
                let l4_len = tot_len.saturating_sub(ihl as u64);
                (v4_mapped(s), v4_mapped(d), proto, off + ihl, l4_len)
            }
            ETH_P_IPV6 => {
                let proto: u8 = ctx.load(off + 6).map_err(|_| ())?;
                let plen = u16::from_be(ctx.load(off + 4).map_err(|_| ())?) as u64;
                let s: [u8; 16] = ctx.load(off + 8).map_err(|_| ())?;
                let d: [u8; 16] = ctx.load(off + 24).map_err(|_| ())?;
                if proto != PROTO_TCP && proto != PROTO_UDP {
                    // ICMPv6 (58) and no-next-header (59) are not flows;
                    // other extension headers are not walked.
                    return if proto == 58 || proto == 59 {
                        Ok(None)
                    } else {
                        Err(())
                    };
                }
                (s, d, proto, off + IPV6_HLEN, plen)
            }
            _ => return Ok(None),
        };
        // A zero IP length is a BIG TCP super-packet: take the skb's length.
        let l4_len = if l4_len == 0 {
            (ctx.len() as u64).saturating_sub(l4_off as u64)
        } else {
            l4_len
        };
        let (sport, dport, tcp_flags, hdr_len) = match proto {
            PROTO_TCP => {
                let ports: [u8; 4] = ctx.load(l4_off).map_err(|_| ())?;
                let doff: u8 = ctx.load(l4_off + 12).map_err(|_| ())?;
                let flags: u8 = ctx.load(l4_off + 13).map_err(|_| ())?;
                (
                    u16::from_be_bytes([ports[0], ports[1]]),
                    u16::from_be_bytes([ports[2], ports[3]]),
                    flags,
                    ((doff >> 4) as u64) * 4,
                )
            }
            PROTO_UDP => {
                let ports: [u8; 4] = ctx.load(l4_off).map_err(|_| ())?;
                (
                    u16::from_be_bytes([ports[0], ports[1]]),
                    u16::from_be_bytes([ports[2], ports[3]]),
                    0,
                    8,
                )
            }
            _ => return Ok(None),
        };
        // SAFETY: reading a scalar field of the context the kernel gave us.
        let gso_segs = unsafe { (*ctx.skb.skb).gso_segs } as u64;
        Ok(Some(Packet {
            src,
            dst,
            sport,
            dport,
            proto,
            tcp_flags,
            side,
            payload_len: l4_len.saturating_sub(hdr_len),
            segments: if gso_segs > 1 { gso_segs } else { 1 },
        }))
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

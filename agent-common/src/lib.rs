//! Types shared by evenflow's eBPF programs (`agent-ebpf`) and its agent.
//!
//! Every type here is `#[repr(C)]`, padded explicitly and free of pointers, so
//! the bytes the kernel writes into a map are the bytes userspace reads. Keep
//! it `no_std`: the same file compiles for `bpfel-unknown-none`.
//!
//! # Counting model
//! The unit is the **endpoint**: the service side of a flow, the address and
//! port that stays the same across connections. A connection this node
//! accepted is keyed by its local listener ([`Direction::Serves`]); one this
//! node opened or forwarded is keyed by the remote backend
//! ([`Direction::SendsTo`]). Ephemeral client ports never become keys, so the
//! endpoint map stays small.
#![no_std]

/// Which side of the endpoint this node is on.
#[repr(u8)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// This node accepted the connection: the endpoint is a local listener.
    Serves = 1,
    /// This node opened the connection (a proxy or client) or forwarded it
    /// (DNAT): the endpoint is the remote backend.
    SendsTo = 2,
}

impl Direction {
    /// Decodes the byte stored in [`EndpointKey::direction`].
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Serves),
            2 => Some(Self::SendsTo),
            _ => None,
        }
    }
}

/// IP protocol numbers stored in keys.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number for UDP.
pub const PROTO_UDP: u8 = 17;

/// An endpoint: address (IPv4 as IPv4-mapped IPv6), port (host byte order),
/// direction and protocol. 20 bytes, no implicit padding.
///
/// Addresses are four 32-bit words holding the address bytes in network
/// order, exactly as they sit in a packet or in `bpf_sock_ops`: the kernel
/// side copies words (four loads) instead of sixteen bytes, which keeps the
/// programs well inside the 512-byte BPF stack.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    /// IPv6 address words; IPv4 is `::ffff:a.b.c.d`. See [`addr_bytes`].
    pub addr: [u32; 4],
    /// Port in host byte order.
    pub port: u16,
    /// A [`Direction`] as `u8`.
    pub direction: u8,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
}

/// Cumulative counters of one endpoint. Stored per CPU; userspace sums them.
///
/// `rx` is what this node received from the other side of the flow, `tx`
/// what it sent. Bytes are transport payload bytes (TCP/UDP payload, no
/// headers), so they compare with what applications and proxies report.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointCounters {
    /// Connections established (TCP) or flows first seen (UDP).
    pub conns_opened: u64,
    /// Connections closed (FIN from both sides, RST, or socket close).
    pub conns_closed: u64,
    /// Payload bytes received by this node on flows of this endpoint.
    pub bytes_rx: u64,
    /// Payload bytes sent by this node on flows of this endpoint.
    pub bytes_tx: u64,
    /// Packets received (GSO/GRO segments counted individually).
    pub packets_rx: u64,
    /// Packets sent (GSO/GRO segments counted individually).
    pub packets_tx: u64,
}

impl EndpointCounters {
    /// Adds `other` field by field; used to merge per-CPU values.
    pub fn accumulate(&mut self, other: &Self) {
        self.conns_opened = self.conns_opened.wrapping_add(other.conns_opened);
        self.conns_closed = self.conns_closed.wrapping_add(other.conns_closed);
        self.bytes_rx = self.bytes_rx.wrapping_add(other.bytes_rx);
        self.bytes_tx = self.bytes_tx.wrapping_add(other.bytes_tx);
        self.packets_rx = self.packets_rx.wrapping_add(other.packets_rx);
        self.packets_tx = self.packets_tx.wrapping_add(other.packets_tx);
    }
}

/// A flow as seen from this node: `local` is the packet's source on egress
/// and its destination on ingress, so both directions of one flow share a key.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Local address words (IPv4-mapped for IPv4).
    pub local_addr: [u32; 4],
    /// Remote address words (IPv4-mapped for IPv4).
    pub remote_addr: [u32; 4],
    /// Local port, host byte order.
    pub local_port: u16,
    /// Remote port, host byte order.
    pub remote_port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// Explicit padding; always zero so keys hash identically.
    pub _pad: [u8; 3],
}

impl FlowKey {
    /// The key's forty bytes as five native-endian `u64` words, built from
    /// its fields. The TC programs build their lookup keys this way: five
    /// stores of computed values, where LLVM would otherwise merge the
    /// constant zero words and padding into a `memset` call (a byte loop on
    /// BPF). Identical bytes to the struct with the same fields.
    #[inline(always)]
    pub const fn words(
        local_addr: [u32; 4],
        remote_addr: [u32; 4],
        local_port: u16,
        remote_port: u16,
        proto: u8,
    ) -> [u64; 5] {
        // Two u32 words as the u64 that covers both in memory.
        const fn pair(lo_addr: u32, hi_addr: u32) -> u64 {
            if cfg!(target_endian = "little") {
                lo_addr as u64 | (hi_addr as u64) << 32
            } else {
                (lo_addr as u64) << 32 | hi_addr as u64
            }
        }
        let tail = if cfg!(target_endian = "little") {
            local_port as u64 | (remote_port as u64) << 16 | (proto as u64) << 32
        } else {
            (local_port as u64) << 48 | (remote_port as u64) << 32 | (proto as u64) << 24
        };
        [
            pair(local_addr[0], local_addr[1]),
            pair(local_addr[2], local_addr[3]),
            pair(remote_addr[0], remote_addr[1]),
            pair(remote_addr[2], remote_addr[3]),
            tail,
        ]
    }
}

/// Who registered a flow.
pub const ORIGIN_SOCKET: u8 = 1;
/// A flow registered by the TC program for forwarded (DNAT) traffic.
pub const ORIGIN_FORWARDED: u8 = 2;

/// A FIN left this node on the flow.
pub const FLOW_FIN_TX: u8 = 1;
/// A FIN reached this node on the flow.
pub const FLOW_FIN_RX: u8 = 2;

/// What the flow map remembers about a live flow: which endpoint its packets
/// count towards and how far it has closed.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FlowValue {
    /// The endpoint this flow's bytes and packets are added to.
    pub endpoint: EndpointKey,
    /// [`ORIGIN_SOCKET`] or [`ORIGIN_FORWARDED`].
    pub origin: u8,
    /// `FLOW_FIN_*` bits seen so far (forwarded flows only).
    pub flags: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
}

/// Indices into the per-CPU `EF_STATS` array: what the datapath could not
/// count, and the bookkeeping userspace needs to derive LRU evictions.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Stat {
    /// A packet whose headers could not be parsed (truncated, unknown IPv6
    /// extension header). It still passed.
    PacketUnparsable = 0,
    /// A new endpoint entry was inserted.
    EndpointInserted = 1,
    /// Inserting a new endpoint failed (map full beyond LRU's reach).
    EndpointInsertFailed = 2,
    /// A new flow entry was inserted.
    FlowInserted = 3,
    /// Inserting a new flow failed.
    FlowInsertFailed = 4,
    /// A flow entry was removed because its connection closed.
    FlowDeleted = 5,
    /// A socket closed whose flow was no longer in the map (evicted, or the
    /// agent attached after it opened): its close was still counted.
    FlowMissingOnClose = 6,
    /// A sock_ops callback for an address family other than IPv4/IPv6.
    UnsupportedFamily = 7,
}

/// Number of [`Stat`] slots.
pub const STAT_COUNT: u32 = 8;

/// Names of [`Stat`] slots, in index order, as userspace reports them.
pub const STAT_NAMES: [&str; STAT_COUNT as usize] = [
    "packet_unparsable",
    "endpoint_inserted",
    "endpoint_insert_failed",
    "flow_inserted",
    "flow_insert_failed",
    "flow_deleted",
    "flow_missing_on_close",
    "unsupported_family",
];

/// Capacity of the endpoint map (LRU, per CPU).
pub const MAX_ENDPOINTS: u32 = 65_536;
/// Capacity of the flow map (LRU).
pub const MAX_FLOWS: u32 = 262_144;

/// Map names. They are also the pin file names under
/// `/sys/fs/bpf/evenflow/<node>/`, so renaming one orphans pinned state.
pub mod maps {
    /// Per-CPU LRU hash `EndpointKey -> EndpointCounters`.
    pub const ENDPOINTS: &str = "EF_ENDPOINTS";
    /// LRU hash `FlowKey -> FlowValue`.
    pub const FLOWS: &str = "EF_FLOWS";
    /// Per-CPU array of `u64` indexed by `Stat`.
    pub const STATS: &str = "EF_STATS";
    /// Array of `u64` owned by userspace; see [`super::META_EPOCH`].
    pub const META: &str = "EF_META";
}

/// Slot of `EF_META` holding the agent epoch: a random non-zero number the
/// agent writes when it finds the pinned maps freshly created. It lives as
/// long as the counters do, so it changes exactly when they restart at zero.
pub const META_EPOCH: u32 = 0;
/// Slot of `EF_META` holding the layout version of the pinned maps.
pub const META_LAYOUT: u32 = 1;
/// Number of `EF_META` slots.
pub const META_COUNT: u32 = 4;
/// Version of the pinned map layout. Bump it when a key or value changes so
/// an agent refuses maps pinned by an incompatible one.
pub const LAYOUT_VERSION: u64 = 1;

/// The IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) of an IPv4 address given
/// as it sits in memory (network byte order bytes read as a native `u32`).
#[inline(always)]
pub const fn v4_mapped(v4: u32) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), v4]
}

/// The sixteen address bytes, in network order, of address words.
pub fn addr_bytes(words: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

/// Address words from sixteen network-order bytes (the inverse of
/// [`addr_bytes`]).
pub fn addr_words(bytes: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all are #[repr(C)], contain only integers and byte arrays, and
    // have no implicit padding, so every bit pattern is valid.
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for EndpointCounters {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<EndpointKey>(), 16 + 2 + 1 + 1);
        assert_eq!(size_of::<EndpointCounters>(), 6 * 8);
        assert_eq!(size_of::<FlowKey>(), 16 + 16 + 2 + 2 + 1 + 3);
        assert_eq!(size_of::<FlowValue>(), size_of::<EndpointKey>() + 4);
    }

    #[test]
    fn flow_key_words_match_the_struct() {
        let key = FlowKey {
            local_addr: v4_mapped(u32::from_ne_bytes([10, 0, 0, 1])),
            remote_addr: [1, 0x0203_0405, 0xdead_beef, 7],
            local_port: 8080,
            remote_port: 54321,
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let words = FlowKey::words(
            key.local_addr,
            key.remote_addr,
            key.local_port,
            key.remote_port,
            key.proto,
        );
        // SAFETY: both are 40 plain bytes; FlowKey has no padding.
        let bytes: [u8; 40] = unsafe { core::mem::transmute(key) };
        // SAFETY: as above.
        let from_words: [u8; 40] = unsafe { core::mem::transmute(words) };
        assert_eq!(bytes, from_words);
    }

    #[test]
    fn accumulate_sums_every_field() {
        let mut a = EndpointCounters {
            conns_opened: 1,
            conns_closed: 2,
            bytes_rx: 3,
            bytes_tx: 4,
            packets_rx: 5,
            packets_tx: 6,
        };
        a.accumulate(&a.clone());
        assert_eq!(
            a,
            EndpointCounters {
                conns_opened: 2,
                conns_closed: 4,
                bytes_rx: 6,
                bytes_tx: 8,
                packets_rx: 10,
                packets_tx: 12,
            }
        );
    }

    #[test]
    fn v4_mapped_matches_std() {
        let mapped = addr_bytes(&v4_mapped(u32::from_ne_bytes([10, 0, 0, 1])));
        assert_eq!(mapped[10..], [0xff, 0xff, 10, 0, 0, 1]);
        assert_eq!(
            addr_words(&mapped),
            v4_mapped(u32::from_ne_bytes([10, 0, 0, 1]))
        );
        assert_eq!(Direction::from_u8(2), Some(Direction::SendsTo));
        assert_eq!(Direction::from_u8(0), None);
    }
}

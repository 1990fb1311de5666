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
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

impl EndpointKey {
    /// A TCP endpoint.
    pub const fn tcp(addr: [u32; 4], port: u16, direction: Direction) -> Self {
        Self {
            addr,
            port,
            direction: direction as u8,
            proto: PROTO_TCP,
        }
    }
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
    /// Connection attempts that never opened: refused (an RST answered
    /// the SYN), unanswered until the client gave up, or abandoned by the
    /// client before its handshake completed. Counted where the SYN left:
    /// by the connecting socket's node, or by the node that forwarded it.
    pub conns_failed: u64,
    /// Connection attempts whose SYN went unanswered for
    /// [`UNANSWERED_AFTER_NS`]: counted once each, when that time is up,
    /// whatever happens to the attempt later (it may still open, or fail
    /// when its client or conntrack gives up). What the backend's silence
    /// looks like seconds before an attempt is given up. Counted where the
    /// SYN left, as `conns_failed`.
    pub conns_unanswered: u64,
    /// Of `conns_failed`, the attempts counted in `conns_unanswered`
    /// before they were given up: what a reader that weighs each failing
    /// attempt once, as early as it can (the collector, at its
    /// unanswered count), must not weigh again when its failure comes,
    /// minutes later (conntrack's SYN_SENT timeout, the kernel's SYN
    /// retries, a proxy's connect timeout).
    pub conns_failed_unanswered: u64,
    /// Not a count: the reading generation ([`META_CHANGES_GEN`]) in which
    /// this CPU last noted the endpoint in [`ChangedKeys`], so that it is
    /// noted once a generation, not at every count. Summing leaves it 0.
    pub noted: u64,
}

impl EndpointCounters {
    /// Adds `other` field by field (`noted` aside); used to merge per-CPU
    /// values.
    pub fn accumulate(&mut self, other: &Self) {
        self.conns_opened = self.conns_opened.wrapping_add(other.conns_opened);
        self.conns_closed = self.conns_closed.wrapping_add(other.conns_closed);
        self.bytes_rx = self.bytes_rx.wrapping_add(other.bytes_rx);
        self.bytes_tx = self.bytes_tx.wrapping_add(other.bytes_tx);
        self.packets_rx = self.packets_rx.wrapping_add(other.packets_rx);
        self.packets_tx = self.packets_tx.wrapping_add(other.packets_tx);
        self.conns_failed = self.conns_failed.wrapping_add(other.conns_failed);
        self.conns_unanswered = self.conns_unanswered.wrapping_add(other.conns_unanswered);
        self.conns_failed_unanswered = self
            .conns_failed_unanswered
            .wrapping_add(other.conns_failed_unanswered);
    }

    /// One endpoint's per-CPU values merged into its totals.
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a Self>) -> Self {
        let mut total = Self::default();
        for c in per_cpu {
            total.accumulate(c);
        }
        total
    }
}

/// Keys of the endpoints counted in one reading generation, one buffer of
/// `EF_CHANGED` (generation `g` writes buffer `g % CHANGED_BUFFERS`): the
/// agent reads these endpoints instead of the whole map (see
/// [`META_CHANGES_GEN`]). Each CPU notes an endpoint once a generation,
/// so a key can be here once per CPU. `len` counts every note, also those
/// past [`CHANGED_KEYS`] that found no room: the agent then reads the
/// whole map.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct ChangedKeys {
    pub len: u64,
    pub keys: [EndpointKey; CHANGED_KEYS],
}

/// Room for keys in each [`ChangedKeys`] buffer (a power of two).
pub const CHANGED_KEYS: usize = 8_192;
/// Buffers in `EF_CHANGED`: the generation being written, the one the
/// agent just closed (read at once, and again a reading later for counts
/// that landed after it was read), and the one it clears for the next.
pub const CHANGED_BUFFERS: u32 = 3;

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

/// Which half of a forwarded connection a [`FlowValue`] counts. Both halves
/// are counted on **egress**, where every forwarded packet passes exactly
/// once per device: the request half leaves towards the backend (post-DNAT
/// addresses), the reply half leaves towards the client (un-NATed back to
/// the address the client dialled).
pub const HALF_REQUEST: u8 = 1;
/// The reply half of a forwarded connection (see [`HALF_REQUEST`]).
pub const HALF_REPLY: u8 = 2;

/// Connection state bits of a forwarded flow, kept in the request half.
/// The backend answered the SYN.
pub const FLOW_SYNACK: u8 = 1;
/// The client acknowledged the SYN-ACK: the connection is open (counted).
pub const FLOW_OPEN: u8 = 2;
/// A FIN left towards the backend.
pub const FLOW_FIN_TX: u8 = 4;
/// A FIN left towards the client (the backend closed its side).
pub const FLOW_FIN_RX: u8 = 8;

/// One half of a forwarded TCP connection: the endpoint (the post-DNAT
/// backend) its bytes count towards and what has been counted so far.
///
/// Bytes are counted by sequence number (only data beyond the highest
/// sequence seen), so retransmissions and a packet crossing several devices
/// (a bridge and its port) count once; packets are counted on one device
/// only, the first this half was seen leaving through.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FlowValue {
    /// The backend this connection was sent to.
    pub endpoint: EndpointKey,
    /// [`HALF_REQUEST`] or [`HALF_REPLY`].
    pub half: u8,
    /// `FLOW_*` state bits (request half only).
    pub state: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
    /// The device this half is counted on (0 until its first packet).
    pub ifindex: u32,
    /// The sender's initial sequence number (tells a reused 5-tuple from a
    /// retransmitted SYN).
    pub isn: u32,
    /// The next sequence number beyond every byte counted. A reply half's
    /// before its SYN-ACK: 0, or 1 once the sweeper counted the attempt
    /// unanswered (with `tag`, one aligned word it swaps at once).
    pub next_seq: u32,
    /// The connection's tag (both halves'; see [`TAG_SHIFT`]), which the
    /// folded marks carry too.
    pub tag: u32,
    /// Payload bytes this half carried.
    pub bytes: u64,
    /// Packets (GSO segments counted individually) this half carried.
    pub packets: u64,
    /// Of `bytes`, what was already added to the endpoint's counters; the
    /// tag above [`TAG_SHIFT`].
    pub folded_bytes: u64,
    /// Of `packets`, what was already added to the endpoint's counters;
    /// the tag above [`TAG_SHIFT`].
    pub folded_packets: u64,
    /// `bpf_ktime_get_coarse_ns` of the last packet, for idle expiry.
    pub last_seen_ns: u64,
    /// The other half's key, so either half can reach the other.
    pub peer: FlowKey,
}

// The sweeper swaps a reply half's `next_seq` and `tag` as one word.
const _: () = assert!(
    core::mem::offset_of!(FlowValue, next_seq) % 8 == 0
        && core::mem::offset_of!(FlowValue, tag) == core::mem::offset_of!(FlowValue, next_seq) + 4
);

/// A forwarded TCP connection that conntrack follows (`EF_CT_FLOWS`, keyed
/// by the kernel address of conntrack's `struct nf_conn`, which every
/// packet of it carries): one entry for both directions, whose bytes are
/// read from conntrack. [`CT_ORIGINAL`] indexes the direction towards the
/// backend, [`CT_REPLY`] the one back to the client.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CtFlow {
    /// The backend this connection was sent to.
    pub endpoint: EndpointKey,
    /// The client's port, host order.
    pub client_port: u16,
    /// Explicit padding.
    pub _pad: u16,
    /// The client's address (IPv4-mapped for IPv4), as it dialled: with
    /// the backend, what tells this connection's record from a reused one.
    pub client_addr: [u32; 4],
    /// Each direction's initial sequence number.
    pub isn: [u32; 2],
    /// `FLOW_OPEN`, [`CT_ENDED`], and which directions' initial sequence
    /// numbers are known ([`CT_ISN_ORIGINAL`], [`CT_ISN_REPLY`]); which
    /// side sent a FIN is conntrack's to remember, not this. Set
    /// atomically, so that of two CPUs racing to open or end the
    /// connection exactly one does. Above [`TAG_SHIFT`]: the connection's
    /// tag, as in `bytes` and `folded`.
    pub flags: u64,
    /// Payload bytes each direction carried, as far as conntrack saw;
    /// the tag above [`TAG_SHIFT`].
    pub bytes: [u64; 2],
    /// Of `bytes`, what was already added to the endpoint's counters; the
    /// tag above [`TAG_SHIFT`].
    pub folded: [u64; 2],
    /// When the client's first SYN left (`bpf_ktime_get_ns`), so that the
    /// sweeper can count it unanswered; 0 for an adopted connection.
    pub syn_ns: u64,
}

/// Where the tag of a [`CtFlow`] (or [`FlowValue`]) sits in the words a
/// reader other than the packet path writes: its top 16 bits.
///
/// The kernel gives a deleted hash-map element to the next insert on the
/// same CPU at once (its allocator reuses freed elements, preallocated or
/// not), while an iterator run by the agent may still hold it. Every write
/// the sweeper makes is a compare-and-swap that expects the tag it read
/// first, so once the element holds another connection (another tag) its
/// writes fail instead of landing in the other connection's counts.
pub const TAG_SHIFT: u32 = 48;

/// The call number the eBPF object's `bpf_rdonly_cast(addr, 0)` calls
/// carry until the agent rewrites each into a call of that kfunc (or, on a
/// kernel without it, into a move the programs never reach): aya cannot
/// relocate kfunc calls. No helper has this number.
pub const RDONLY_CAST_CALL: i32 = 0x4546_4b31;

/// The tag of a connection whose client's initial sequence number is
/// `isn` and port `client_port`: sixteen bits that another connection
/// shares one time in 65,535, never zero.
pub const fn flow_tag(isn: u32, client_port: u16) -> u64 {
    let t = (isn ^ (isn >> 16) ^ client_port as u32) & 0xffff;
    if t == 0 { 1 } else { t as u64 }
}

/// A packet of a forwarded connection conntrack follows that changes its
/// state, as TC egress writes it to `EF_CT_JOURNAL` instead of looking the
/// connection up: the sweeper's drain replays them in the order they
/// happened (see `agent-ebpf/src/journal.rs`).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CtEvent {
    /// When the packet left (`bpf_ktime_get_ns`): the order across CPUs.
    pub at: u64,
    /// The address of the connection's `nf_conn`.
    pub conn: u64,
    /// [`CT_EVENT_SYN`], [`CT_EVENT_SYN_ACK`] or [`CT_EVENT_END`].
    pub kind: u8,
    /// [`CT_EVENT_REPLY`], and for an end [`CT_EVENT_ASSURED`].
    pub flags: u8,
    /// The packet's destination port, host order.
    pub port: u16,
    /// A SYN's or SYN-ACK's sequence number: its direction's initial one;
    /// a crossing's: conntrack's end of its direction.
    pub seq: u32,
    /// The packet's destination (IPv4-mapped for IPv4): the backend for a
    /// SYN, the client for a SYN-ACK.
    pub addr: [u32; 4],
    /// For a SYN, the client as it dialled (address, port); for an end,
    /// conntrack's ends of both directions' sequence numbers and how many
    /// of each to hold back: `[end original, end reply, held original,
    /// held reply]` and 0.
    pub client_addr: [u32; 4],
    /// The client's port as it dialled (a SYN's).
    pub client_port: u16,
    /// Explicit padding.
    pub _pad: [u16; 3],
}

/// [`CtEvent::kind`] of a translated SYN leaving for its backend.
pub const CT_EVENT_SYN: u8 = 1;
/// [`CtEvent::kind`] of the backend's SYN-ACK.
pub const CT_EVENT_SYN_ACK: u8 = 2;
/// [`CtEvent::kind`] of the packet that ended the connection (the second
/// FIN, or an RST that closed it).
pub const CT_EVENT_END: u8 = 3;
/// [`CtEvent::kind`] of a packet whose sequence numbers crossed a multiple
/// of 2^29: the connection's bytes catch up with conntrack's end that way
/// (carried in `seq`), so they never fall 2^31 behind.
pub const CT_EVENT_CROSSING: u8 = 4;
/// [`CtEvent::flags`]: the packet travelled the connection's reply
/// direction (towards the client).
pub const CT_EVENT_REPLY: u8 = 2;
/// [`CtEvent::flags`] of an end: conntrack had seen the handshake's last
/// ACK (`IPS_ASSURED`).
pub const CT_EVENT_ASSURED: u8 = 1;

/// Events each CPU's part of `EF_CT_JOURNAL` holds at most (a power of
/// two): 32,768 of 64 bytes, 2 MiB, an interval's worth at ten thousand
/// connections a second on one CPU. A CPU whose part is full puts its
/// events in `EF_CT_SPILL`.
pub const CT_JOURNAL_SLOTS: u32 = 32_768;
/// Events all the parts hold together at most: 16 MiB. A node with more
/// than eight CPUs gets smaller parts (never under [`CT_JOURNAL_MIN_SLOTS`]).
pub const CT_JOURNAL_EVENTS: u32 = 262_144;
/// The fewest events a part holds.
pub const CT_JOURNAL_MIN_SLOTS: u32 = 64;
/// Capacity of `EF_CT_SPILL`, where events go while a CPU's part of the
/// journal is full: with the parts, about fifteen seconds of an undrained
/// journal at ten thousand connections a second.
pub const CT_SPILL_ENTRIES: u32 = 393_216;
/// Words of `EF_CT_JOURNAL_POS` each CPU owns: its part's head (written
/// by TC egress) and tail (written by the drain), a cache line apart.
pub const CT_JOURNAL_POS_WORDS: u32 = 16;
/// The most CPUs the drain visits: Linux's own limit (`NR_CPUS`).
pub const CT_JOURNAL_MAX_CPUS: u32 = 8_192;
/// How long the agent may hold the journal's drain lock before TC egress
/// takes it back: long past one reading
/// (the drain, then the sweepers, which no other drain may run beside),
/// and the time an agent that dies holding it leaves the journal to fill
/// (seconds, where it holds minutes at ten thousand connections a second).
pub const CT_DRAIN_LEASE_NS: u64 = 5_000_000_000;

/// [`CtFlow`] index of the direction towards the backend (conntrack's
/// `IP_CT_DIR_ORIGINAL`).
pub const CT_ORIGINAL: usize = 0;
/// [`CtFlow`] index of the direction back to the client.
pub const CT_REPLY: usize = 1;
/// [`CtFlow::flags`] bit: the client's initial sequence number is known.
pub const CT_ISN_ORIGINAL: u64 = 16;
/// [`CtFlow::flags`] bit: the backend's initial sequence number is known.
pub const CT_ISN_REPLY: u64 = 32;
/// [`CtFlow::flags`] bit: the connection was ended (counted closed if it
/// had opened, its bytes folded). Whoever sets it first ends it; an open
/// that finds it set is not counted.
pub const CT_ENDED: u64 = 64;
/// [`CtFlow::flags`] bit, in `EF_CT_YOUNG` only: the sweeper copied the
/// connection into `EF_CT_FLOWS`, which holds it from then on. Set like
/// [`CT_ENDED`], and exclusive with it: whichever is set first decides
/// whether the connection ended young or moved.
pub const CT_MOVED: u64 = 128;
/// [`CtFlow::flags`] bit, in `EF_CT_FLOWS` only: the sweeper's copy of a
/// young connection it is moving, which nothing may end until the young
/// entry is marked [`CT_MOVED`] and the bit cleared.
pub const CT_COPY: u64 = 256;
/// [`CtFlow::flags`] bit: an end claimed this connection's young entry
/// while the sweeper was moving it and could not end the copy; the next
/// sweep ends it, as that end would have, unless a packet does first.
pub const CT_CLOSING: u64 = 512;
/// [`CtFlow::flags`] bit: the agent's start adopted this connection from
/// conntrack (its SYN was not seen); a SYN of it journaled meanwhile is
/// dropped when the drain applies it.
pub const CT_ADOPTED: u64 = 1024;
/// [`CtFlow::flags`] bit: the sweeper counted the connection's SYN
/// unanswered (no SYN-ACK [`UNANSWERED_AFTER_NS`] after it), once.
pub const CT_UNANSWERED: u64 = 2048;
/// [`CtFlow::flags`] bit: the sweeper counted the connection in
/// [`Stat::ReplyUnseen`] (open, its SYN-ACK never seen), once.
pub const CT_REPLY_UNSEEN: u64 = 4096;

/// How long a connection attempt's SYN waits for an answer before it is
/// counted unanswered (`conns_unanswered`): a second, Linux's initial
/// retransmission timeout, after which the client sends its SYN again. A
/// backend that answers at all answers within milliseconds; one that is
/// down, cut off or behind a rule that drops its SYNs never does, and its
/// attempts are given up only much later (a proxy's connect timeout, or
/// conntrack's `nf_conntrack_tcp_timeout_syn_sent`, two minutes).
pub const UNANSWERED_AFTER_NS: u64 = 1_000_000_000;

/// A forwarded connection conntrack follows that was established before
/// evenflow could see its SYN, for the agent's adoption walk (`EF_CT_ADOPT`,
/// by the address of its record): its client and backend (addresses
/// IPv4-mapped for IPv4, ports in host order), which the record must still
/// name when it is adopted, and what the walk did with it.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CtAdopt {
    pub client_addr: [u32; 4],
    pub backend_addr: [u32; 4],
    pub client_port: u16,
    pub backend_port: u16,
    /// One of the `CT_ADOPT_*` outcomes, written by the walk; 0 before.
    pub outcome: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}

/// The forwarded adoption walk's outcome for a connection it adopted:
/// counted opened, its bytes from now on, its close.
pub const CT_ADOPT_ADOPTED: u8 = b'a';
/// Its outcome for a connection evenflow follows already.
pub const CT_ADOPT_FOLLOWED: u8 = b'f';
/// Its outcome for a record that no longer is that connection, or no
/// longer established.
pub const CT_ADOPT_GONE: u8 = b'g';
/// Its outcome where the flow map was full: not adopted.
pub const CT_ADOPT_FULL: u8 = b'x';
/// How many connections the agent hands the forwarded adoption walk at a
/// time.
pub const CT_ADOPT_BATCH: u32 = 4096;

/// One slot of the SYN-origin table (`EF_SYNS`): an entering SYN's initial
/// sequence number, which NAT leaves alone, and where the SYN was going.
/// The slot is the ISN's low bits; a SYN is matched within microseconds
/// of entering or never, so a later SYN taking the slot loses nothing.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SynSlot {
    /// Where the SYN was going.
    pub origin: SynOrigin,
    /// The client's initial sequence number; written after `origin`.
    pub isn: u32,
}

/// Where a SYN was going when it entered the node (before any DNAT).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SynOrigin {
    /// The client address and port.
    pub src_addr: [u32; 4],
    /// The address the client dialled (a VIP, a ClusterIP, a node port).
    pub dst_addr: [u32; 4],
    /// Client port, host order.
    pub src_port: u16,
    /// Dialled port, host order.
    pub dst_port: u16,
}

/// How much of a socket's own counters (`tcp_sock.bytes_received`,
/// `bytes_acked`, `segs_in`, `segs_out`, less what carries no data) was
/// already added to its endpoint: high-water marks that only rise.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    pub rx: u64,
    pub tx: u64,
    pub segs_in: u64,
    pub segs_out: u64,
}

/// Per-socket state in socket storage (`EF_SOCKS`), for sockets that found
/// their slots taken: which endpoint the socket counts towards and its
/// [`Marks`].
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SockState {
    /// The endpoint; `direction == 0` means "not counted".
    pub endpoint: EndpointKey,
    /// `SOCK_*` bits.
    pub flags: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
    pub marks: Marks,
}

/// A slot of `EF_SOCK_SLOTS`: one local socket's endpoint and [`Marks`],
/// found by the socket's address. A slot costs sock_ops two
/// compare-and-swaps on one cache line where socket storage costs two
/// allocations and a memory charge per connection; a socket whose slots
/// are all taken gets socket storage instead.
///
/// A slot is reused as soon as its socket closes, possibly while the
/// sampler is reading it. So every mark carries the slot's generation in
/// its top [`SOCK_MARK_TAG_BITS`] bits, a new owner changes the generation
/// before it writes anything else and names its socket last, and a sampler
/// trusts what it read only if the owner and the generation are the same
/// afterwards and the socket at the owner's address still has the owner's
/// identity ([`sock_id`]): it cannot raise the marks of the next owner, nor
/// count another socket that took a dead owner's address.
///
/// 64 bytes, in an array whose values start on a page (`BPF_F_MMAPABLE`):
/// one cache line per slot.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SockSlot {
    /// The owning `struct sock`'s address (cache-line aligned) with the
    /// socket's `SOCK_*` bits in its low bits ([`SOCK_SLOT_FLAGS`]); 0
    /// when free, [`SOCK_SLOT_FILLING`] while a new owner fills the slot.
    pub owner: u64,
    /// The owner's identity ([`sock_id`]) in the low [`SOCK_ID_BITS`]
    /// bits, its endpoint's port in the top 16.
    pub id: u64,
    /// The endpoint's address (its direction follows from `SOCK_ACTIVE`).
    pub addr: [u32; 4],
    pub marks: Marks,
}

/// The bits of [`SockSlot::owner`] that hold `SOCK_*` flags.
pub const SOCK_SLOT_FLAGS: u64 = 0x3f;
/// [`SockSlot::owner`] while a new owner fills the slot.
pub const SOCK_SLOT_FILLING: u64 = 0x20;
/// Bits of a socket's identity a slot keeps.
pub const SOCK_ID_BITS: u32 = 48;
/// The bits of [`SockSlot::id`] that hold the identity.
pub const SOCK_ID_MASK: u64 = (1 << SOCK_ID_BITS) - 1;

/// A TCP socket's identity, for the slot it holds: its two initial
/// sequence numbers, each the distance between a sequence number and the
/// counter the kernel moves with it (`snd_una` and `bytes_acked` in
/// `tcp_snd_una_update`, `rcv_nxt` and `bytes_received` in
/// `tcp_rcv_nxt_update` and Fast Open's first segment; neither pair moves
/// apart once the handshake set them). So it stays the same for the
/// connection's life, sock_ops reads it from its context without a call,
/// and a sampler from the socket's memory; a socket allocated at the same
/// address (zeroed, then a connection of its own) has another one but
/// with a chance of 2^-48. Unlike the socket cookie, which the first
/// `bpf_get_socket_cookie` generates (a helper call on every handshake,
/// and a compare-and-swap on the socket), it costs four loads of lines
/// the kernel just wrote. Read unlocked, a pair can be seen half moved:
/// a sampler reads again before it takes a mismatch for another socket.
#[inline(always)]
pub const fn sock_id(snd_una: u32, bytes_acked: u64, rcv_nxt: u32, bytes_received: u64) -> u64 {
    let iss = snd_una.wrapping_sub(bytes_acked as u32) as u64;
    let irs = rcv_nxt.wrapping_sub(bytes_received as u32) as u64;
    (iss << 16 ^ irs) & SOCK_ID_MASK
}

/// Top bits of a slot's marks that hold its generation (see
/// [`SockSlot`]); the marks count up to 2^48 each.
pub const SOCK_MARK_TAG_BITS: u32 = 16;

/// A socket's segment count past a mark at `have`, from the kernel's
/// 32-bit counter (`segs_in`, `segs_out`) reading `now`: the mark plus
/// what the counter grew by since, modulo 2^32, so the count keeps growing
/// after the counter wraps (2^32 segments is about fourteen hours of one
/// connection at 1 Gb/s). A reading behind the mark (taken before another
/// folder raised it) adds nothing. Readings come at least once an
/// interval, far fewer than 2^31 segments apart.
pub const fn segs_past(have: u64, now: u64) -> u64 {
    let ahead = (now as u32).wrapping_sub(have as u32) as i32;
    if ahead > 0 { have + ahead as u64 } else { have }
}

/// Default number of `EF_SOCK_SLOTS` slots (`--sock-slots`, a power of
/// two; 64 bytes each). Sockets beyond what fits get socket storage:
/// counted the same, at a higher cost.
pub const DEFAULT_SOCK_SLOTS: u32 = 16_384;

/// The socket opened the connection: its `bytes_acked` counts the SYN.
pub const SOCK_ACTIVE: u8 = 1;
/// The socket closed and was counted; samplers leave it alone.
pub const SOCK_CLOSED: u8 = 2;

/// Key of the local-NAT map: a local socket whose SYN left with another
/// destination than the socket's own (DNAT in OUTPUT, e.g. a hostNetwork
/// proxy dialling a ClusterIP).
pub type LocalNatKey = FlowKey;

/// Indices into the per-CPU `EF_STATS` array: what the datapath could not
/// count, and the bookkeeping userspace needs.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Stat {
    /// A packet whose headers could not be parsed (truncated, unknown IPv6
    /// extension header). It still passed.
    PacketUnparsable = 0,
    /// A new endpoint entry was inserted.
    EndpointInserted = 1,
    /// Inserting a new endpoint failed: the map is full, or (counted in
    /// [`Stat::EndpointNoMemory`] as well) its counters could not be
    /// allocated.
    EndpointInsertFailed = 2,
    /// A forwarded flow (both halves) was registered.
    FlowInserted = 3,
    /// Registering a forwarded flow failed: the flow map is full, or
    /// (counted in [`Stat::FlowNoMemory`] as well) its entry could not be
    /// allocated.
    FlowInsertFailed = 4,
    /// A forwarded flow ended (FIN both ways, RST, or expiry) and was removed.
    FlowDeleted = 5,
    /// A socket closed that was never counted as opened: established before
    /// the agent first attached where adoption does not reach, or accepted
    /// with its listener's state callbacks but refused storage
    /// ([`Stat::SockStorageFailed`]).
    FlowMissingOnClose = 6,
    /// A sock_ops callback for an address family other than IPv4/IPv6.
    UnsupportedFamily = 7,
    /// A SYN was routed through the node with its destination untranslated:
    /// plain routing (to a pod, across an overlay), not a balancing decision.
    SynRouted = 8,
    /// A SYN left the node with no local socket and no record of how it
    /// entered (it came in on a device evenflow is not attached to).
    SynOriginUnknown = 9,
    /// A forwarded flow ended without an end of its own: idle past its
    /// conntrack-like timeout, or, followed in conntrack, its record
    /// expired, was flushed or was taken by another connection (see
    /// docs/counting.md, `flows_expired`).
    FlowExpired = 10,
    /// A socket could not get its storage (memory pressure): not counted.
    SockStorageFailed = 11,
    /// A socket found its slots taken and was kept in socket storage:
    /// counted the same, at a higher cost.
    SockInStorage = 12,
    /// Of [`Stat::EndpointInsertFailed`], the inserts the kernel refused
    /// for want of memory (`-ENOMEM`: the maps are not preallocated, and
    /// their memory is charged to the cgroup that created them), not room.
    EndpointNoMemory = 13,
    /// Of [`Stat::FlowInsertFailed`], the inserts refused for want of
    /// memory, as [`Stat::EndpointNoMemory`].
    FlowNoMemory = 14,
    /// Endpoints the agent removed from the endpoint map to make room:
    /// idle for long, with no connection open, while the map filled up.
    /// Written by the agent, not the programs.
    EndpointRetired = 15,
    /// State changes of forwarded connections TC egress put in
    /// `EF_CT_SPILL`, its CPU's part of the journal being full (the agent
    /// was not draining it: stopped, or slower than the connections).
    /// Applied all the same, in their turn.
    JournalSpilled = 16,
    /// State changes of forwarded connections lost: the journal's part and
    /// the spill were full.
    JournalLost = 17,
    /// State changes of forwarded connections TC egress applied itself: its
    /// CPU's part of the journal was past half full between the agent's
    /// reads, or with no agent running.
    JournalDrainedInline = 18,
    /// Forwarded connections counted open whose backend's SYN-ACK evenflow
    /// never saw: it left through a device the TC programs are not on
    /// (`--iface`, or replies routed out another way), or the journal lost
    /// it. Their reply bytes (the reply's sequence numbers unknown) are
    /// not counted; followed in conntrack, nor are their request bytes.
    ReplyUnseen = 19,
}

/// What the adoption iterator (`iter/tcp`, run once at the agent's start)
/// writes for each established socket it adopted.
pub const ADOPT_ADOPTED: u8 = b'a';
/// What it writes for a socket it could not give sock_ops' state callbacks
/// (a kernel without `TCP_BPF_SOCK_OPS_CB_FLAGS`, 6.12): left uncounted.
pub const ADOPT_UNSUPPORTED: u8 = b'u';

/// Number of [`Stat`] slots.
pub const STAT_COUNT: u32 = 20;

/// Capacity of the endpoint map (per CPU). Not LRU: an endpoint's totals
/// must never restart at zero within an epoch; when the map is full new
/// endpoints are not counted and `endpoint_insert_failed` says so.
pub const MAX_ENDPOINTS: u32 = 65_536;
/// Default capacity of the forwarded-flow map (two entries per connection;
/// the agent's `--max-flows` sets it in connections, and the conntrack
/// flow map's capacity to as many). Not LRU: a flow
/// leaves when it closes or expires, never silently; when the map is full a
/// new connection is not tracked and `flow_insert_failed` counts it.
pub const MAX_FLOWS: u32 = 262_144;
/// Capacity of `EF_CT_YOUNG`, where a connection conntrack follows is kept
/// from its SYN until the sweeper has seen it open for an interval (most
/// connections end there), before it moves to `EF_CT_FLOWS`. Small so that
/// its buckets (16 bytes each, 32 KiB) stay in the cache and come from
/// the kernel's linear mapping: the packets that look a connection up land
/// on a bucket at random, and in `EF_CT_FLOWS`' megabytes of buckets that
/// was a miss (see docs/counting.md). When it is full, new connections go
/// to `EF_CT_FLOWS` at once.
pub const CT_YOUNG_ENTRIES: u32 = 2_048;
/// Slots of the SYN-origin table (a power of two: the slot is the ISN's
/// low bits). An array slot costs a store where an LRU insert costs a
/// lock and a list move, on every SYN the node receives.
pub const MAX_SYNS: u32 = 16_384;
/// Capacity of the local-NAT map (LRU: read once, at the handshake).
pub const MAX_LOCAL_NAT: u32 = 16_384;
/// Slots of the reset table (a power of two: the slot is the RST's
/// sequence number's low bits). A slot lives from the RST's arrival to the
/// socket's close a few microseconds later, in the same softirq.
pub const MAX_RESETS: u32 = 4_096;

/// Map names. They are also the pin file names under
/// `/sys/fs/bpf/evenflow/<node>/`, so renaming one orphans pinned state.
pub mod maps {
    /// Per-CPU hash `EndpointKey -> EndpointCounters`.
    pub const ENDPOINTS: &str = "EF_ENDPOINTS";
    /// Hash `FlowKey -> FlowValue`: forwarded connections counted packet
    /// by packet, two halves each.
    pub const FLOWS: &str = "EF_FLOWS";
    /// Hash `u64 -> CtFlow`: forwarded connections conntrack follows, by
    /// the address of its record.
    pub const CT_FLOWS: &str = "EF_CT_FLOWS";
    /// Hash `u64 -> CtFlow`, as `EF_CT_FLOWS`: the connections conntrack
    /// follows until the sweeper moves them there (see
    /// [`CT_YOUNG_ENTRIES`](super::CT_YOUNG_ENTRIES)).
    pub const CT_YOUNG: &str = "EF_CT_YOUNG";
    /// Array of `CtEvent`, [`CT_JOURNAL_SLOTS`](super::CT_JOURNAL_SLOTS)
    /// a CPU: state changes of connections conntrack follows, drained into
    /// `EF_CT_YOUNG` and `EF_CT_FLOWS` by the sweeper.
    pub const CT_JOURNAL: &str = "EF_CT_JOURNAL";
    /// Array of `u64`: each CPU's head and tail in `EF_CT_JOURNAL` (see
    /// [`CT_JOURNAL_POS_WORDS`](super::CT_JOURNAL_POS_WORDS)), then the
    /// number of events in `EF_CT_SPILL` and the drains' lock.
    pub const CT_JOURNAL_POS: &str = "EF_CT_JOURNAL_POS";
    /// Hash `u64 -> CtEvent`: journal events whose CPU's part was full,
    /// by CPU and position.
    pub const CT_SPILL: &str = "EF_CT_SPILL";
    /// Program array of one: the drain TC egress calls (a tail call) when
    /// its CPU's part of the journal is past half full. Pinned, so that it
    /// outlives the agent.
    pub const CT_DRAIN: &str = "EF_CT_DRAIN";
    /// Array of `u64`: the drains' tournament trees over the journal's
    /// parts, each `2 × leaves` words (leaves: the CPU numbers rounded up
    /// to a power of two), the agent's drain's, then TC egress's.
    pub const CT_DRAIN_ORDER: &str = "EF_CT_DRAIN_ORDER";
    /// Hash `u64 -> CtAdopt`, not pinned: the forwarded connections the
    /// agent asks the adoption iterator to adopt, by their record.
    pub const CT_ADOPT: &str = "EF_CT_ADOPT";
    /// Socket storage `SockState`: counted local sockets that found no
    /// free slot in `EF_SOCK_SLOTS`.
    pub const SOCKS: &str = "EF_SOCKS";
    /// Array of `SockSlot` by socket address: counted local sockets.
    pub const SOCK_SLOTS: &str = "EF_SOCK_SLOTS";
    /// Array of `SynSlot` by ISN: where SYNs entering the node went.
    pub const SYNS: &str = "EF_SYNS";
    /// LRU hash `FlowKey -> EndpointKey`: local sockets whose SYN was DNATed.
    pub const LOCAL_NAT: &str = "EF_LOCAL_NAT";
    /// Array of `u64` by sequence number: the acknowledgement each RST
    /// arriving at a local socket carried (see `MAX_RESETS`).
    pub const RESETS: &str = "EF_RESETS";
    /// Per-CPU array of `u64` indexed by `Stat`.
    pub const STATS: &str = "EF_STATS";
    /// Array of `u64` owned by userspace; see [`super::META_EPOCH`].
    pub const META: &str = "EF_META";
    /// Array of [`ChangedKeys`](super::ChangedKeys), memory-mappable: the
    /// endpoints counted in each reading generation.
    pub const CHANGED: &str = "EF_CHANGED";
}

/// Slot of `EF_META` holding the agent epoch: a random non-zero number the
/// agent writes when it finds the pinned maps freshly created. It lives as
/// long as the counters do, so it changes exactly when they restart at zero.
pub const META_EPOCH: u32 = 0;
/// Slot of `EF_META` holding the layout version of the pinned maps.
pub const META_LAYOUT: u32 = 1;
/// Slot of `EF_META`: nanoseconds a forwarded flow may idle before the
/// sweeper expires it while its handshake is incomplete (conntrack's
/// `nf_conntrack_tcp_timeout_syn_sent`).
pub const META_TIMEOUT_SYN_NS: u32 = 2;
/// Slot of `EF_META`: idle nanoseconds before an open forwarded flow expires
/// (conntrack's `nf_conntrack_tcp_timeout_established`).
pub const META_TIMEOUT_ESTABLISHED_NS: u32 = 3;
/// Slot of `EF_META`: idle nanoseconds before a half-closed forwarded flow
/// expires (conntrack's `nf_conntrack_tcp_timeout_fin_wait`).
pub const META_TIMEOUT_CLOSING_NS: u32 = 4;
/// Slot of `EF_META`, the one the programs write: non-zero once a note
/// was written in `EF_LOCAL_NAT` (by TC egress at a DNATed SYN, or by the
/// agent from conntrack's table at its start). Until then a handshake
/// does not look there: on a node that translates no SYN of its own the
/// lookup, a cache miss, was most of what a dialled connection cost over
/// an accepted one.
pub const META_LOCAL_NAT: u32 = 5;
/// Slot of `EF_META`: the reading generation, which the agent advances at
/// each reading. The first count of an endpoint on a CPU in a generation
/// notes its key in that generation's [`ChangedKeys`], and the agent reads
/// only the endpoints noted: at 10,000 endpoints of which few carry
/// traffic, reading every one was half of the agent's CPU. Never 0 once
/// an agent has run (an entry's `noted` starts at 0).
pub const META_CHANGES_GEN: u32 = 6;
/// Slot of `EF_META`: non-zero while the adoption walk runs before the
/// programs of a new epoch attach, where a walk samples sockets: it then
/// adopts the sockets that the last epoch's programs counted too.
pub const META_ADOPT_COUNTED: u32 = 7;
/// Number of `EF_META` slots.
pub const META_COUNT: u32 = 8;
/// Version of the pinned map layout. Bump it when a key or value changes so
/// an agent refuses maps pinned by an incompatible one.
/// 7: a socket's slot is placed by its slab; programs of layout 6 would
/// look for it elsewhere. 8: forwarded connections' marks carry a tag
/// ([`TAG_SHIFT`]), which programs of layout 7 would take for bytes.
/// 9: a connection conntrack follows starts in `EF_CT_YOUNG`, where
/// programs of layout 8 would not look for it. 10: `EF_ENDPOINTS` is not
/// preallocated, and the flow maps the layout does not use have one entry.
/// 11: `EF_STATS` counts inserts refused for want of memory apart, and
/// the endpoints the agent retired. 12: `EndpointCounters` counts failed
/// connection attempts. 13: connections conntrack follows change state
/// through `EF_CT_JOURNAL`, which programs of layout 12 would not drain.
/// 14: TC egress drains the journal itself between the agent's reads
/// (`EF_CT_DRAIN`, a lock in `EF_CT_JOURNAL_POS`, a new statistic).
/// 15: the drains find the earliest event in a tournament tree
/// (`EF_CT_DRAIN_ORDER`), and the lock moved where the cutoff was.
/// 16: a handshake looks in `EF_LOCAL_NAT` only once `META_LOCAL_NAT` is
/// set, which TC programs of layout 15 write notes without setting.
/// 17: a slot names its socket by [`sock_id`], not by its cookie, which
/// programs of layout 16 would take for another socket's.
/// 18: `EndpointCounters` counts attempts left unanswered, and a
/// [`CtFlow`] holds its SYN's time.
/// 19: a new statistic ([`Stat::ReplyUnseen`]).
/// 20: `EndpointCounters` counts the failed attempts it had counted
/// unanswered.
/// 21: `EndpointCounters` notes the generation it was counted in
/// (`noted`), and counted endpoints are noted in `EF_CHANGED`.
pub const LAYOUT_VERSION: u64 = 21;

/// The IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) of an IPv4 address given
/// as it sits in memory (network byte order bytes read as a native `u32`).
#[inline(always)]
pub const fn v4_mapped(v4: u32) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), v4]
}

/// Whether two addresses (four words each) are the same, compared word by
/// word: in an eBPF program an array comparison becomes a call to `memcmp`.
#[inline(always)]
pub fn same_addr(a: &[u32; 4], b: &[u32; 4]) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) == 0
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
    unsafe impl aya::Pod for ChangedKeys {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for CtFlow {}
    unsafe impl aya::Pod for CtEvent {}
    unsafe impl aya::Pod for CtAdopt {}
    unsafe impl aya::Pod for SynSlot {}
    unsafe impl aya::Pod for SynOrigin {}
    unsafe impl aya::Pod for SockState {}
    unsafe impl aya::Pod for SockSlot {}
    unsafe impl aya::Pod for Marks {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn tags_fit_above_the_shift_and_are_never_zero() {
        assert_eq!(flow_tag(0, 0), 1);
        assert_eq!(flow_tag(0x1234_5678, 0), 0x1234 ^ 0x5678);
        for (isn, port) in [(u32::MAX, u16::MAX), (0xdead_beef, 443), (7, 7)] {
            let t = flow_tag(isn, port);
            assert!(
                t != 0 && t << TAG_SHIFT >> TAG_SHIFT == t,
                "{isn:#x} {port}"
            );
        }
        // Two connections differing in either part mostly differ in tag.
        assert_ne!(flow_tag(1000, 40000), flow_tag(1001, 40000));
        assert_ne!(flow_tag(1000, 40000), flow_tag(1000, 40001));
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<EndpointKey>(), 16 + 2 + 1 + 1);
        assert_eq!(size_of::<EndpointCounters>(), 10 * 8);
        assert_eq!(size_of::<ChangedKeys>(), 8 + CHANGED_KEYS * 20);
        assert!(CHANGED_KEYS.is_power_of_two());
        assert_eq!(size_of::<FlowKey>(), 16 + 16 + 2 + 2 + 1 + 3);
        // endpoint, half/state/pad, ifindex, isn, next_seq, pad, five u64
        // (bytes, packets, their folded marks, last_seen_ns), peer.
        assert_eq!(size_of::<FlowValue>(), 20 + 4 + 4 + 4 + 4 + 4 + 5 * 8 + 40);
        // endpoint, client_port/pad, client_addr, isn, flags, bytes, folded.
        assert_eq!(size_of::<CtFlow>(), 20 + 4 + 16 + 8 + 8 + 16 + 16 + 8);
        // at, conn, kind/flags/port, seq, addr, client_addr, client_port/pad:
        // one cache line, so that a journal's events never straddle two.
        assert_eq!(size_of::<CtEvent>(), 8 + 8 + 4 + 4 + 16 + 16 + 8);
        assert_eq!(size_of::<CtEvent>(), 64);
        assert_eq!(size_of::<SockState>(), 56);
        assert_eq!(size_of::<SockSlot>(), 64);
        assert_eq!(size_of::<SynOrigin>(), 36);
        assert_eq!(size_of::<SynSlot>(), 40);
        assert_eq!(size_of::<CtAdopt>(), 16 + 16 + 2 + 2 + 1 + 3);
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
            conns_failed: 7,
            conns_unanswered: 8,
            conns_failed_unanswered: 9,
            noted: 10,
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
                conns_failed: 14,
                conns_unanswered: 16,
                conns_failed_unanswered: 18,
                // Which generation a CPU noted it in is not a count.
                noted: 10,
            }
        );
    }

    #[test]
    fn segment_counts_grow_past_the_kernels_32_bits() {
        assert_eq!(segs_past(10, 25), 25);
        // Read before another folder raised the mark: nothing.
        assert_eq!(segs_past(25, 10), 25);
        assert_eq!(segs_past(25, 25), 25);
        // The counter wrapped: 10 past 2^32 - 6 is 16 more.
        let have = u64::from(u32::MAX) - 5;
        assert_eq!(segs_past(have, 10), have + 16);
        // Marks past 2^32 keep growing with the counter's low bits.
        let have = (3u64 << 32) + 100;
        assert_eq!(segs_past(have, 150), have + 50);
        assert_eq!(segs_past(have, 50), have);
    }

    #[test]
    fn a_sockets_identity_lasts_its_life() {
        // An active opener at its handshake: the SYN acknowledged (one
        // byte acked), nothing received yet.
        let (iss, irs) = (0xfffff000u32, 0x7000_0000u32);
        let at_handshake = sock_id(iss.wrapping_add(1), 1, irs.wrapping_add(1), 0);
        // 6 GiB later each way, both sequence numbers wrapped, and a FIN
        // each way counted in both the sequence and the counter.
        let (sent, got) = (6u64 << 30, (6u64 << 30) + 12_345);
        let later = sock_id(
            iss.wrapping_add(1 + sent as u32 + 1),
            1 + sent + 1,
            irs.wrapping_add(1 + got as u32 + 1),
            got + 1,
        );
        assert_eq!(at_handshake, later);
        assert!(at_handshake < 1 << SOCK_ID_BITS);
        // Another connection: another identity, whichever ISN differs.
        assert_ne!(
            at_handshake,
            sock_id(iss.wrapping_add(2), 1, irs.wrapping_add(1), 0)
        );
        assert_ne!(
            at_handshake,
            sock_id(iss.wrapping_add(1), 1, irs.wrapping_add(2), 0)
        );
        // A pair read half moved (the counter, not yet the sequence) does
        // not pass for the socket: a sampler reads it again.
        assert_ne!(
            at_handshake,
            sock_id(iss.wrapping_add(1), 1 + 1448, irs.wrapping_add(1), 0)
        );
        // A zeroed socket (freshly allocated at a dead owner's address).
        assert_ne!(at_handshake, sock_id(0, 0, 0, 0));
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

//! What conntrack tells the adoptions at the agent's start (its first on
//! a node, or one on fresh maps after an upgrade) about connections
//! established before evenflow could see their SYN: conntrack's table
//! (ctnetlink) lists the connections the node translated (DNAT).
//!
//! * One a local socket opened (its client is one of the node's
//!   addresses: a hostNetwork proxy dialling a ClusterIP) went where its
//!   reply comes from, not where it was dialled: that is noted in
//!   `EF_LOCAL_NAT` as sock_ops would have noted it, and the socket
//!   adoption ([`crate::adopt`]) counts the socket towards it.
//! * One the node forwards (neither end is the node's) is adopted into
//!   `EF_CT_FLOWS` by the walk `evenflow_ct_adopt` (see agent-ebpf's
//!   `ct_adopt.rs`), where conntrack follows forwarded
//!   connections: its record is found by its tuple ([`crate::ct_lookup`])
//!   and handed to the program, which checks the record still is that
//!   connection's before following it.

use std::net::{IpAddr, SocketAddr};

use agent_common::{
    CT_ADOPT_ADOPTED, CT_ADOPT_BATCH, CT_ADOPT_FOLLOWED, CT_ADOPT_FULL, CT_ADOPT_GONE, CtAdopt,
    Direction, EndpointKey, FlowKey, META_LOCAL_NAT, PROTO_TCP, maps,
};
use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};

use crate::{btf::Btf, ct_lookup::CtLookup, ctnetlink::Translated, walk::Walk};

const PROGRAM: &str = "evenflow_ct_adopt";

/// Conntrack's translated connections, by who opened them.
#[derive(Debug, Default)]
pub struct Translations {
    /// Opened by a local socket.
    pub local: Vec<Translated>,
    /// Forwarded: neither end is the node's.
    pub forwarded: Vec<Translated>,
}

impl Translations {
    /// Lists them in the calling thread's network namespace.
    pub fn list() -> Result<Self> {
        let all = crate::ctnetlink::translated()
            .context("listing conntrack's connections (ctnetlink)")?;
        Ok(Self::split(all, &crate::host::addresses()?))
    }

    /// Sorts `all` by whether their client is one of `local` (or loopback).
    fn split(all: Vec<Translated>, local: &[IpAddr]) -> Self {
        let is_local = |end: SocketAddr| end.ip().is_loopback() || local.contains(&end.ip());
        let mut out = Self::default();
        for t in all {
            if is_local(t.client) {
                out.local.push(t);
            } else if !is_local(t.backend) {
                out.forwarded.push(t);
            }
        }
        out
    }
}

/// Notes where each of `local`'s connections really went, for the socket
/// adoption to count it there; returns how many were noted. The flag in
/// `meta` goes up first, as TC egress raises it: a connection still in
/// `SYN_SENT` is counted at its handshake, which looks for notes only
/// once it is up.
pub fn note_local_nat(
    ebpf: &mut Ebpf,
    meta: &mut Array<MapData, u64>,
    local: &[Translated],
) -> Result<usize> {
    if local.is_empty() {
        return Ok(0);
    }
    meta.set(META_LOCAL_NAT, 1, 0)
        .context("raising the local-NAT flag in EF_META")?;
    let map = ebpf
        .map_mut(maps::LOCAL_NAT)
        .with_context(|| format!("the eBPF object has no map {}", maps::LOCAL_NAT))?;
    let mut nat: HashMap<_, FlowKey, EndpointKey> = HashMap::try_from(map)
        .with_context(|| format!("map {} has another type", maps::LOCAL_NAT))?;
    for t in local {
        let socket = FlowKey {
            local_addr: key_addr(t.client),
            remote_addr: key_addr(t.dialled),
            local_port: t.client.port(),
            remote_port: t.dialled.port(),
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let backend = EndpointKey::tcp(key_addr(t.backend), t.backend.port(), Direction::SendsTo);
        nat.insert(socket, backend, 0)
            .with_context(|| format!("noting in {} where {} went", maps::LOCAL_NAT, t.client))?;
    }
    Ok(local.len())
}

/// What one run adopted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Connections now counted: opened, their bytes from now on, their
    /// close.
    pub connections: usize,
    /// Connections evenflow followed already (it saw their SYN).
    pub followed: usize,
    /// Connections that ended, or whose record went, before their turn.
    pub gone: usize,
    /// Connections left uncounted: the flow map was full.
    pub full: usize,
}

impl Adopted {
    /// Adds the walk's outcome for one connection.
    fn note(&mut self, outcome: u8) {
        match outcome {
            CT_ADOPT_ADOPTED => self.connections += 1,
            CT_ADOPT_FOLLOWED => self.followed += 1,
            CT_ADOPT_GONE => self.gone += 1,
            CT_ADOPT_FULL => self.full += 1,
            _ => {}
        }
    }
}

/// What adopting forwarded connections takes, made ready before the
/// adoption itself: the lookup by tuple, the walk and its map. Readying
/// them (the kernel's BTF parsed, two programs verified) takes far longer
/// than adopting, and the journal's drain lock is held only for the
/// adoption.
pub struct Adoption {
    lookup: CtLookup,
    todo: HashMap<MapData, u64, CtAdopt>,
    walk: Walk,
}

impl Adoption {
    pub fn prepare(ebpf: &mut Ebpf) -> Result<Self> {
        let blob = std::fs::read("/sys/kernel/btf/vmlinux").context("reading the kernel's BTF")?;
        let vmlinux = Btf::parse(&blob).context("parsing the kernel's BTF")?;
        let lookup = CtLookup::load(&vmlinux).context("loading the conntrack lookup")?;
        let map = ebpf
            .take_map(maps::CT_ADOPT)
            .with_context(|| format!("the eBPF object has no map {}", maps::CT_ADOPT))?;
        let todo = HashMap::try_from(map)
            .with_context(|| format!("map {} has another type", maps::CT_ADOPT))?;
        let walk = Walk::load(ebpf, PROGRAM)?;
        Ok(Self { lookup, todo, walk })
    }

    /// Adopts the `forwarded` connections, in the calling thread's network
    /// namespace. Call it after TC egress is attached: a connection whose
    /// SYN leaves from then on is the forwarded path's own, and the
    /// program leaves it alone.
    pub fn run(mut self, forwarded: &[Translated]) -> Result<Adopted> {
        let mut adopted = Adopted::default();
        let mut batch = Vec::new();
        for t in forwarded {
            let Some(conn) = self.lookup.find(t.client, t.dialled)? else {
                // Closed since the listing.
                adopted.gone += 1;
                continue;
            };
            self.todo
                .insert(conn, entry(t), 0)
                .with_context(|| format!("filling {}", maps::CT_ADOPT))?;
            batch.push(conn);
            if batch.len() == CT_ADOPT_BATCH as usize {
                adopt_batch(&self.walk, &mut self.todo, &mut batch, &mut adopted)?;
            }
        }
        adopt_batch(&self.walk, &mut self.todo, &mut batch, &mut adopted)?;
        Ok(adopted)
    }
}

/// Runs the walk over the batch in the map, reads back each outcome,
/// then empties both.
fn adopt_batch(
    walk: &Walk,
    todo: &mut HashMap<MapData, u64, CtAdopt>,
    batch: &mut Vec<u64>,
    adopted: &mut Adopted,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    walk.run()?;
    for conn in batch.drain(..) {
        let done = todo
            .get(&conn, 0)
            .with_context(|| format!("reading {}", maps::CT_ADOPT))?;
        adopted.note(done.outcome);
        todo.remove(&conn)
            .with_context(|| format!("emptying {}", maps::CT_ADOPT))?;
    }
    Ok(())
}

/// What the program is handed for `t`.
fn entry(t: &Translated) -> CtAdopt {
    CtAdopt {
        client_addr: key_addr(t.client),
        backend_addr: key_addr(t.backend),
        client_port: t.client.port(),
        backend_port: t.backend.port(),
        ..CtAdopt::default()
    }
}

/// An address as flow keys hold it: IPv4-mapped for IPv4.
fn key_addr(end: SocketAddr) -> [u32; 4] {
    let bytes = match end.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    agent_common::addr_words(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_connections_by_who_opened_them() {
        let t = |client: &str, backend: &str| Translated {
            client: client.parse().expect("addr"),
            dialled: "10.96.0.1:80".parse().expect("addr"),
            backend: backend.parse().expect("addr"),
        };
        let node: IpAddr = "10.0.0.5".parse().expect("addr");
        let proxy = t("10.0.0.5:40000", "10.1.0.7:8080");
        let looped = t("127.0.0.1:40001", "10.1.0.7:8080");
        let forwarded = t("10.1.0.9:40002", "10.1.0.7:8080");
        let to_the_node = t("10.1.0.9:40003", "10.0.0.5:8080");
        let s = Translations::split(vec![proxy, looped, forwarded, to_the_node], &[node]);
        assert_eq!(s.local, vec![proxy, looped]);
        assert_eq!(
            s.forwarded,
            vec![forwarded],
            "not the one served by the node"
        );
    }

    #[test]
    fn tallies_the_walks_outcomes() {
        let mut a = Adopted::default();
        // 0: an entry the walk did not reach (it counts as nothing).
        for outcome in *b"aafgax\0" {
            a.note(outcome);
        }
        assert_eq!(
            a,
            Adopted {
                connections: 3,
                followed: 1,
                gone: 1,
                full: 1,
            }
        );
    }

    /// Flow keys hold IPv4 addresses IPv4-mapped, as the programs compare
    /// them with conntrack's.
    #[test]
    fn hands_addresses_over_as_flow_keys_hold_them() {
        let v4: SocketAddr = "10.1.2.3:80".parse().expect("addr");
        assert_eq!(
            key_addr(v4),
            agent_common::v4_mapped(u32::from_ne_bytes([10, 1, 2, 3]))
        );
        let v6: SocketAddr = "[fd00::1]:80".parse().expect("addr");
        assert_eq!(agent_common::addr_bytes(&key_addr(v6))[15], 1);
    }
}

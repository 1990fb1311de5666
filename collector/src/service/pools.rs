//! Pool formation: which backends belong to which service, and what each
//! view says about each of them this tick.
//!
//! # The grouping rule
//! A pool is named by its service. Its members are `address:port` pairs:
//!
//! 1. **Announced** by a backend's own agent: every endpoint the agent
//!    *serves* (direction SERVES) with a non-empty service label is a
//!    member of that service's pool; so is every labelled listening socket
//!    bound to a specific address. A labelled listener bound to `0.0.0.0`
//!    announces every IPv4 address the node has been seen serving on (any
//!    port, from its SERVES endpoints); one bound to `::` announces every
//!    address seen. A node that has served nothing yet is not left out:
//!    its wildcard listener announces, from the node addresses its agent
//!    reports, the one address per family closest (longest common prefix)
//!    to the pool's other members (all of them when the pool has none), so
//!    a backend its load balancers never send to is a member, judged ZERO,
//!    from its agent's first report. Loopback, unspecified and multicast addresses never
//!    become members by announcement (no load balancer on another node
//!    reaches them); declare them in the pool file if you mean them.
//! 2. **Declared** in the pool file (`--pools FILE`), with a weight
//!    (default 1) and `draining = true|false`. A member both announced and
//!    declared takes its weight and state from the file (source
//!    `announced+file`). A declared member that no agent serves has no
//!    server view: it is NO_DATA, never ZERO.
//!
//! Announced members have weight 1 and state serving. An agent keeps
//! announcing its members while it is stale (they become NO_DATA) until it
//! is forgotten (`--agent-retention`).
//!
//! **Server view** of a member: the SERVES counters of every agent that
//! serves its `address:port` (normally the one node that owns the
//! address), summed; fresh only while every such agent is.
//!
//! **LB view**: the SENDS_TO counters towards the member's `address:port`
//! from the pool's load balancer nodes, summed. The load balancers are the
//! `lb_nodes` the pool file declares; when it declares none, every node
//! with a SENDS_TO endpoint to any member of the pool. Stale LB agents are
//! left out of the sum (every member is summed over the same LBs, so the
//! shares stay comparable); the view is fresh while at least one LB agent
//! is, and unknown for a tick in which an LB's counters reset.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use crate::{
    detect::{MemberInput, PoolInput, ViewInput},
    service::{
        agents::{AgentTick, Dir, ListenerInfo},
        fxhash::FxHashMap,
        poolfile::PoolFile,
    },
};

/// Where a member comes from.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    /// Announced by an agent.
    pub announced: bool,
    /// Declared in the pool file.
    pub file: bool,
}

impl Source {
    /// "announced", "file" or "announced+file".
    pub fn as_str(self) -> &'static str {
        match (self.announced, self.file) {
            (true, true) => "announced+file",
            (false, true) => "file",
            _ => "announced",
        }
    }
}

/// A member's facts beyond the detector's input.
#[derive(Clone, Debug, Default)]
pub struct MemberMeta {
    /// Backend address.
    pub addr: Option<SocketAddr>,
    /// Node serving it (first, by name).
    pub node: String,
    /// Where it comes from.
    pub source: Source,
    /// Server view: measured rates (conns/s, bytes in/s, bytes out/s) and
    /// exact new connections since the collector first saw them.
    pub server: Measured,
    /// LB view, likewise.
    pub lb: Measured,
}

/// Rates and totals as measured, before the detector's per-tick counts.
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct Measured {
    /// New connections per second.
    pub conns_per_sec: f64,
    /// Bytes into the member per second.
    pub bytes_in_per_sec: f64,
    /// Bytes out of the member per second.
    pub bytes_out_per_sec: f64,
    /// Exact new connections since first seen.
    pub conns_total: u64,
    /// New connections as the agents' counters report them (each since
    /// its epoch): the kernels' totals, also after a collector restart.
    pub reported_total: u64,
}

impl Measured {
    fn add(&mut self, e: &crate::service::agents::TickEndpoint) {
        self.conns_per_sec += e.rate[0];
        self.bytes_in_per_sec += e.rate[1];
        self.bytes_out_per_sec += e.rate[2];
        self.conns_total += e.total;
        self.reported_total += e.cumulative;
    }
}

/// One pool ready for the detector.
#[derive(Clone, Debug)]
pub struct PoolTick {
    /// The detector's input.
    pub input: PoolInput,
    /// Per member (same order as `input.members`).
    pub meta: Vec<MemberMeta>,
    /// Load balancer nodes (declared or seen).
    pub lb_nodes: Vec<String>,
}

#[derive(Default)]
struct Draft {
    weight: Option<f64>,
    draining: bool,
    source: Source,
    announcers: BTreeSet<usize>,
}

fn announceable(a: IpAddr) -> bool {
    !(a.is_loopback() || a.is_unspecified() || a.is_multicast())
}

type Index = FxHashMap<(IpAddr, u16), Vec<(usize, usize)>>;

/// The members a labelled wildcard listener announces on a node that has
/// served nothing yet: of the node's own addresses (in the listener's
/// family), per family the pool already has members in, the one sharing
/// the longest prefix with one of them (a node has one address on the
/// pool's network, and docker0 or a second NIC must not become phantom
/// members); every address when the pool has no member yet.
fn dark_targets<'a>(
    node: &[IpAddr],
    l: &ListenerInfo,
    members: impl Iterator<Item = &'a SocketAddr>,
) -> Vec<IpAddr> {
    let candidates: Vec<IpAddr> = node
        .iter()
        .copied()
        .filter(|x| announceable(*x) && (l.addr.is_ipv6() || x.is_ipv4()))
        .collect();
    let members: Vec<IpAddr> = members.map(SocketAddr::ip).collect();
    if members.is_empty() {
        return candidates;
    }
    let mut out = Vec::new();
    for v4 in [true, false] {
        let best = candidates
            .iter()
            .filter(|c| c.is_ipv4() == v4)
            .filter_map(|c| {
                members
                    .iter()
                    .filter(|m| m.is_ipv4() == v4)
                    .map(|m| common_prefix(*c, *m))
                    .max()
                    .map(|len| (len, *c))
            })
            // Longest prefix; the lowest address on a tie.
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        out.extend(best.map(|(_, c)| c));
    }
    out
}

/// Leading bits two addresses of one family share.
fn common_prefix(a: IpAddr, b: IpAddr) -> u32 {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) ^ u32::from(b)).leading_zeros(),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a) ^ u128::from(b)).leading_zeros(),
        _ => 0,
    }
}

/// Groups this tick's agents into pools (sorted by name, members sorted by
/// address and port). `agents` must be sorted by node name.
pub fn build(agents: &[AgentTick], file: &PoolFile, tick: u64) -> Vec<PoolTick> {
    // Index every endpoint by (address, port) and direction.
    let mut serves: Index = FxHashMap::default();
    let mut sends: Index = FxHashMap::default();
    // Per-pool marks of LB agents: `lb_mark[i] == stamp` while pool
    // number `stamp` is being built.
    let mut lb_mark: Vec<usize> = vec![usize::MAX; agents.len()];
    let mut drafts: BTreeMap<Arc<str>, BTreeMap<SocketAddr, Draft>> = BTreeMap::new();
    let mut node_addrs: Vec<BTreeSet<IpAddr>> = Vec::with_capacity(agents.len());
    for (ai, a) in agents.iter().enumerate() {
        let mut addrs = BTreeSet::new();
        for (ei, e) in a.endpoints.iter().enumerate() {
            let k = (e.key.addr, e.key.port);
            match e.key.dir {
                Dir::Serves => {
                    serves.entry(k).or_default().push((ai, ei));
                    if announceable(e.key.addr) {
                        addrs.insert(e.key.addr);
                        if let Some(svc) = &e.service {
                            drafts
                                .entry(svc.clone())
                                .or_default()
                                .entry(SocketAddr::new(e.key.addr, e.key.port))
                                .or_default()
                                .announcers
                                .insert(ai);
                        }
                    }
                }
                Dir::SendsTo => sends.entry(k).or_default().push((ai, ei)),
            }
        }
        node_addrs.push(addrs);
    }
    // Wildcard listeners of nodes that have served nothing yet ("dark"),
    // resolved once every other member is known.
    let mut dark: Vec<(usize, &ListenerInfo)> = Vec::new();
    for (ai, a) in agents.iter().enumerate() {
        for l in a.listeners.iter().filter(|l| !l.service.is_empty()) {
            let targets: Vec<IpAddr> = if l.addr.is_unspecified() {
                let seen: Vec<IpAddr> = node_addrs[ai]
                    .iter()
                    .copied()
                    .filter(|x| l.addr.is_ipv6() || x.is_ipv4())
                    .collect();
                if seen.is_empty() {
                    dark.push((ai, l));
                }
                seen
            } else if announceable(l.addr) {
                vec![l.addr]
            } else {
                vec![]
            };
            for t in targets {
                drafts
                    .entry(l.service.clone())
                    .or_default()
                    .entry(SocketAddr::new(t, l.port))
                    .or_default()
                    .announcers
                    .insert(ai);
            }
        }
    }
    for (ai, l) in dark {
        let pool = drafts.entry(l.service.clone()).or_default();
        for t in dark_targets(&agents[ai].addresses, l, pool.keys()) {
            pool.entry(SocketAddr::new(t, l.port))
                .or_default()
                .announcers
                .insert(ai);
        }
    }
    for d in drafts.values_mut() {
        for m in d.values_mut() {
            m.source.announced = true;
        }
    }
    for (name, fp) in file {
        let pool = drafts.entry(Arc::from(name.as_str())).or_default();
        for m in &fp.members {
            let d = pool.entry(m.addr).or_default();
            d.weight = Some(m.weight);
            d.draining = m.draining;
            d.source.file = true;
        }
    }

    let node_index: HashMap<&str, usize> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| (&*a.node, i))
        .collect();
    let mut out = Vec::with_capacity(drafts.len());
    for (stamp, (name, members)) in drafts.into_iter().enumerate() {
        // Load balancers: declared, or every node sending to a member.
        let declared = file
            .get(&*name)
            .map(|f| f.lb_nodes.as_slice())
            .unwrap_or(&[]);
        let mut lb_idx: Vec<usize> = Vec::new();
        let mut lb_nodes: Vec<String> = Vec::new();
        let mut lb_missing = false;
        if declared.is_empty() {
            for addr in members.keys() {
                if let Some(v) = sends.get(&(addr.ip(), addr.port())) {
                    for &(ai, _) in v {
                        if lb_mark[ai] != stamp {
                            lb_mark[ai] = stamp;
                            lb_idx.push(ai);
                        }
                    }
                }
            }
            // Agents come sorted by node name: sorting indices sorts names.
            lb_idx.sort_unstable();
            lb_nodes.extend(lb_idx.iter().map(|&i| String::from(&*agents[i].node)));
        } else {
            for n in declared {
                match node_index.get(n.as_str()) {
                    Some(&i) => {
                        if lb_mark[i] != stamp {
                            lb_mark[i] = stamp;
                            lb_idx.push(i);
                        }
                    }
                    None => lb_missing = true,
                }
                lb_nodes.push(n.clone());
            }
        }
        if !declared.is_empty() {
            lb_nodes.sort_unstable();
        }
        let lb_fresh = lb_idx.iter().any(|&i| agents[i].fresh);
        let lb_reset = lb_idx.iter().any(|&i| agents[i].fresh && agents[i].reset);
        let has_lb = !lb_idx.is_empty() || lb_missing;

        let mut inputs = Vec::with_capacity(members.len());
        let mut metas = Vec::with_capacity(members.len());
        for (addr, d) in members {
            let key = (addr.ip(), addr.port());
            // Server view: every agent serving this address:port, plus the
            // agents that announced it (a listener with no traffic yet).
            let eps = serves.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            let mut observers: Vec<usize> = d.announcers.iter().copied().collect();
            observers.extend(eps.iter().map(|&(ai, _)| ai));
            observers.sort_unstable();
            observers.dedup();
            let mut server_m = Measured::default();
            let mut lb_m = Measured::default();
            let server = (!observers.is_empty()).then(|| {
                let mut v = ViewInput {
                    fresh: observers.iter().all(|&i| agents[i].fresh),
                    reset: observers.iter().any(|&i| agents[i].reset),
                    ..ViewInput::default()
                };
                for &(ai, ei) in eps {
                    let e = &agents[ai].endpoints[ei];
                    v.reset |= e.reset;
                    v.new_conns += e.delta.conns;
                    v.bytes_in += e.delta.bytes_in;
                    v.bytes_out += e.delta.bytes_out;
                    v.active += e.active;
                    server_m.add(e);
                }
                v
            });
            let lb = has_lb.then(|| {
                let mut v = ViewInput {
                    fresh: lb_fresh,
                    reset: lb_reset,
                    ..ViewInput::default()
                };
                if let Some(eps) = sends.get(&key) {
                    for &(ai, ei) in eps {
                        if lb_mark[ai] != stamp || !agents[ai].fresh {
                            continue;
                        }
                        let e = &agents[ai].endpoints[ei];
                        v.reset |= e.reset;
                        v.new_conns += e.delta.conns;
                        v.bytes_in += e.delta.bytes_in;
                        v.bytes_out += e.delta.bytes_out;
                        v.active += e.active;
                        lb_m.add(e);
                    }
                }
                v
            });
            let first = observers
                .iter()
                .map(|&i| &agents[i])
                .min_by(|a, b| a.node.cmp(&b.node));
            inputs.push(MemberInput {
                id: addr.to_string(),
                weight: d.weight.unwrap_or(1.0),
                draining: d.draining,
                server,
                lb,
                cpu: first.and_then(|a| a.cpu),
            });
            metas.push(MemberMeta {
                addr: Some(addr),
                node: first.map(|a| String::from(&*a.node)).unwrap_or_default(),
                source: d.source,
                server: server_m,
                lb: lb_m,
            });
        }
        out.push(PoolTick {
            input: PoolInput {
                name: String::from(&*name),
                tick,
                members: inputs,
            },
            meta: metas,
            lb_nodes,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::agents::{Delta, EpKey, TickEndpoint};

    fn ep(addr: &str, port: u16, dir: Dir, service: Option<&str>, conns: u64) -> TickEndpoint {
        TickEndpoint {
            key: EpKey {
                addr: addr.parse().unwrap(),
                port,
                dir,
                proto: 1,
            },
            service: service.map(Arc::from),
            delta: Delta {
                conns,
                bytes_in: conns * 10,
                bytes_out: conns * 100,
            },
            rate: [conns as f64, conns as f64 * 10.0, conns as f64 * 100.0],
            total: conns,
            cumulative: conns,
            reset: false,
            active: 1,
        }
    }

    fn agent(node: &str, endpoints: Vec<TickEndpoint>, listeners: Vec<ListenerInfo>) -> AgentTick {
        AgentTick {
            node: node.into(),
            fresh: true,
            age: 0.0,
            reset: false,
            cpu: Some(0.5),
            endpoints,
            listeners,
            addresses: Vec::new(),
        }
    }

    #[test]
    fn announced_members_wildcard_listeners_and_lb_view() {
        let agents = vec![
            agent(
                "b1",
                vec![
                    ep("10.0.0.1", 8080, Dir::Serves, Some("web"), 10),
                    ep("127.0.0.1", 8080, Dir::Serves, Some("web"), 3),
                ],
                vec![],
            ),
            // b2 serves health checks on 9000 only, and listens on 0.0.0.0:8080.
            agent(
                "b2",
                vec![ep("10.0.0.2", 9000, Dir::Serves, None, 1)],
                vec![ListenerInfo {
                    addr: "0.0.0.0".parse().unwrap(),
                    port: 8080,
                    service: "web".into(),
                }],
            ),
            agent(
                "lb",
                vec![
                    ep("10.0.0.1", 8080, Dir::SendsTo, None, 9),
                    ep("10.0.0.2", 8080, Dir::SendsTo, None, 0),
                ],
                vec![],
            ),
        ];
        let pools = build(&agents, &PoolFile::new(), 1);
        assert_eq!(pools.len(), 1);
        let p = &pools[0];
        let ids: Vec<_> = p.input.members.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["10.0.0.1:8080", "10.0.0.2:8080"]);
        assert_eq!(p.lb_nodes, ["lb"]);
        let m0 = &p.input.members[0];
        assert_eq!(m0.server.unwrap().new_conns, 10);
        assert_eq!(m0.lb.unwrap().new_conns, 9);
        assert_eq!(m0.lb.unwrap().bytes_in, 90);
        let m1 = &p.input.members[1];
        assert_eq!(m1.server.unwrap().new_conns, 0);
        assert!(m1.server.unwrap().fresh);
        assert_eq!(p.meta[1].node, "b2");
    }

    #[test]
    fn a_wildcard_listener_is_a_member_before_any_traffic() {
        // Four backends listen on 0.0.0.0:8080 labelled web; the LB has only
        // ever sent to three. The fourth must be a member (judged ZERO), not
        // invisible: its agent's node addresses name it from the start.
        let mut agents: Vec<AgentTick> = (1..=4)
            .map(|i| {
                let mut a = agent(
                    &format!("b{i}"),
                    if i < 4 {
                        vec![ep(
                            &format!("10.0.0.{i}"),
                            8080,
                            Dir::Serves,
                            Some("web"),
                            10,
                        )]
                    } else {
                        vec![]
                    },
                    vec![ListenerInfo {
                        addr: "0.0.0.0".parse().unwrap(),
                        port: 8080,
                        service: "web".into(),
                    }],
                );
                a.addresses = vec![
                    "127.0.0.1".parse().unwrap(),
                    "172.17.0.1".parse().unwrap(),
                    format!("10.0.0.{i}").parse().unwrap(),
                    format!("fd00::{i}").parse().unwrap(),
                ];
                a
            })
            .collect();
        let pools = build(&agents, &PoolFile::new(), 1);
        let ids: Vec<_> = pools[0]
            .input
            .members
            .iter()
            .map(|m| m.id.as_str())
            .collect();
        // The address on the pool's network only: not IPv6 (0.0.0.0 does
        // not take it, and the pool has no IPv6 member), not loopback, not
        // the docker bridge.
        assert_eq!(
            ids,
            [
                "10.0.0.1:8080",
                "10.0.0.2:8080",
                "10.0.0.3:8080",
                "10.0.0.4:8080"
            ]
        );
        let dark = &pools[0].input.members[3];
        assert_eq!(dark.server.unwrap().new_conns, 0);
        assert!(dark.server.unwrap().fresh);
        // A `::` listener on the dark node still picks only the pool's family.
        agents[3].listeners[0].addr = "::".parse().unwrap();
        let pools = build(&agents, &PoolFile::new(), 1);
        assert_eq!(pools[0].input.members[3].id, "10.0.0.4:8080");
        assert_eq!(pools[0].input.members.len(), 4);
        // Once it serves, what it serves on decides, as for every node.
        agents[3].endpoints = vec![ep("10.0.0.4", 8080, Dir::Serves, Some("web"), 1)];
        assert_eq!(
            build(&agents, &PoolFile::new(), 1)[0].input.members.len(),
            4
        );
        // Without node addresses (an older agent) it stays unseen.
        agents[3].endpoints.clear();
        agents[3].addresses.clear();
        assert_eq!(
            build(&agents, &PoolFile::new(), 1)[0].input.members.len(),
            3
        );
    }

    #[test]
    fn file_members_weights_and_missing_agents() {
        let file = crate::service::poolfile::parse(
            std::path::Path::new("p.toml"),
            r#"
[[pool]]
name = "web"
lb_nodes = ["lb"]
members = [
  { address = "10.0.0.1:8080", weight = 3 },
  { address = "10.0.0.9:8080", draining = true },
]
"#,
        )
        .unwrap();
        let agents = vec![agent(
            "b1",
            vec![ep("10.0.0.1", 8080, Dir::Serves, Some("web"), 10)],
            vec![],
        )];
        let pools = build(&agents, &file, 1);
        let p = &pools[0];
        assert_eq!(p.input.members[0].weight, 3.0);
        assert_eq!(p.meta[0].source.as_str(), "announced+file");
        assert!(p.input.members[1].draining);
        assert!(p.input.members[1].server.is_none());
        assert_eq!(p.meta[1].source.as_str(), "file");
        // Declared LB that never reported: LB view present but not fresh.
        assert!(!p.input.members[0].lb.unwrap().fresh);
    }
}

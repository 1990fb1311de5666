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
//!    a backend its load balancers never send to is a member from its
//!    agent's first report (one joining a running pool SETTLING until it is
//!    taken in, then ZERO). Loopback, unspecified and multicast addresses
//!    never become members by announcement (no load balancer on another
//!    node reaches them); declare them in the pool file if you mean them.
//! 2. **Declared** in the pool file (`--pools FILE`), with a weight
//!    (default 1) and `draining = true|false`. A member both announced and
//!    declared takes its weight and state from the file (source
//!    `announced+file`). A declared member that no agent serves has no
//!    server view: it is NO_DATA, never ZERO.
//! 3. **Kubernetes** (`--kubernetes`): one pool per Service port, its
//!    members the EndpointSlices' addresses with that port, matched to the
//!    endpoints agents report by address and port alone (no labels), so two
//!    Services on port 8080 of one node are two pools. A member's server
//!    view is observed by the agent of its slice's `nodeName` from the
//!    start, so an endpoint nothing reaches is ZERO, not missing. Members
//!    that are not ready (or within the drain grace) are not judged: they
//!    are listed apart ([`PoolTick::unjudged`]) with what they received.
//!    How these sources combine is in [`crate::service::declared`]: an
//!    address:port of a Service is never announced into a label's pool.
//!
//! Announced members have weight 1 and state serving. An agent keeps
//! announcing its members while it is stale (they become NO_DATA) until it
//! is forgotten (`--agent-retention`).
//!
//! **Server view** of a member: the SERVES counters of every agent that
//! serves its `address:port` (normally the one node that owns the
//! address), summed; fresh only while every such agent is.
//!
//! **Listening**: whether a socket listens on the member's address and
//! port (bound to it or to a wildcard of its family), as the agents that
//! observe it and own its address (it is one of their node's addresses)
//! list it; unknown when no such agent listed any listener, or one is
//! stale. The detector calls a member that listened and no longer does
//! DOWN rather than judging its silence.
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

pub use crate::service::declared::Source;
use crate::{
    detect::{Balancing, MemberInput, PoolInput, ViewInput},
    fxhash::FxHashMap,
    parallel::Threads,
    service::{
        declared::{Declared, Expect, KubeService, LbNodes},
        ingest::{AgentTick, Dir, ListenerInfo, TickEndpoint},
    },
};

/// A member's facts beyond the detector's input.
#[derive(Clone, Debug)]
pub struct MemberMeta {
    /// Backend address.
    pub addr: SocketAddr,
    /// Node serving it: the one its source names, else the first observer
    /// by name (empty when none). Shared with the agent's state: a tick
    /// copies no node name.
    pub node: Arc<str>,
    /// Where it comes from.
    pub source: Source,
    /// The Pod behind it, "namespace/name" (Kubernetes).
    pub pod: Option<Arc<str>>,
    /// Its zone (Kubernetes).
    pub zone: Option<Arc<str>>,
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
    /// Connection attempts per second that never opened.
    pub failed_per_sec: f64,
    /// Exact failed attempts since first seen.
    pub failed_total: u64,
    /// New connections as the agents' counters report them (each since
    /// its epoch): the kernels' totals, also after a collector restart.
    /// A stale agent's last figure stays in: its kernel's count stands
    /// while its agent restarts, and a sum that dropped with it would read
    /// to Prometheus as a reset of every other node's count.
    pub reported_total: u64,
    /// Failed attempts as the agents' counters report them, likewise.
    pub reported_failed: u64,
}

impl Measured {
    fn add(&mut self, e: &TickEndpoint) {
        self.conns_per_sec += e.rate[0];
        self.bytes_in_per_sec += e.rate[1];
        self.bytes_out_per_sec += e.rate[2];
        self.failed_per_sec += e.rate[3];
        // Totals from agents near u64::MAX must not overflow the sum.
        self.conns_total = self.conns_total.saturating_add(e.total);
        self.failed_total = self.failed_total.saturating_add(e.failed_total);
        self.add_reported(e);
    }

    fn add_reported(&mut self, e: &TickEndpoint) {
        self.reported_total = self.reported_total.saturating_add(e.cumulative);
        self.reported_failed = self.reported_failed.saturating_add(e.cumulative_failed);
    }
}

/// A member the detector does not judge, with what it received.
#[derive(Clone, Debug)]
pub struct Unjudged {
    /// Its facts and measured rates.
    pub meta: MemberMeta,
    /// Terminating (draining) rather than not ready.
    pub draining: bool,
    /// Why it is not judged.
    pub reason: String,
    /// Its server view this tick, when an agent observes it.
    pub server: Option<ViewInput>,
    /// Its LB view this tick, when the pool has load balancers.
    pub lb: Option<ViewInput>,
}

/// A judged member: the detector's input and the facts that travel with
/// it to publishing.
#[derive(Clone, Debug)]
pub struct PoolMember {
    /// What the detector judges.
    pub input: MemberInput,
    /// Its address, node, source and measured rates.
    pub meta: MemberMeta,
}

impl AsRef<MemberInput> for PoolMember {
    fn as_ref(&self) -> &MemberInput {
        &self.input
    }
}

/// One pool ready for the detector.
#[derive(Clone, Debug)]
pub struct PoolTick {
    /// The detector's input, each member with its facts.
    pub input: PoolInput<PoolMember>,
    /// Members listed but not judged (sorted by address).
    pub unjudged: Vec<Unjudged>,
    /// Load balancer nodes (declared or seen), sorted; the agents' own
    /// names, shared, and the same list from tick to tick while the pool's
    /// plan holds.
    pub lb_nodes: Arc<[Arc<str>]>,
    /// The Kubernetes Service port it stands for.
    pub kubernetes: Option<Arc<KubeService>>,
    /// Said with the pool's verdict.
    pub note: Option<Arc<str>>,
}

#[derive(Default)]
struct Draft {
    weight: Option<f64>,
    expect: Expect,
    source: Source,
    announcers: BTreeSet<usize>,
    node: Option<Arc<str>>,
    pod: Option<Arc<str>>,
    zone: Option<Arc<str>>,
}

fn announceable(a: IpAddr) -> bool {
    !(a.is_loopback() || a.is_unspecified() || a.is_multicast())
}

/// Whether a listener bound to the wildcard `wildcard` (`0.0.0.0` or `::`)
/// takes connections to `addr`: `::` takes both families.
fn wildcard_takes(wildcard: IpAddr, addr: IpAddr) -> bool {
    wildcard.is_ipv6() || addr.is_ipv4()
}

/// Whether `l` takes connections to `addr`.
fn listens_on(l: &ListenerInfo, addr: SocketAddr) -> bool {
    l.port == addr.port()
        && (l.addr == addr.ip() || (l.addr.is_unspecified() && wildcard_takes(l.addr, addr.ip())))
}

/// Whether a socket listens on `addr`, by the agents among `observers`
/// that can say: those whose node owns the address (its listeners are
/// theirs to list) and that listed any listener at all (an empty listing
/// may be one that failed). `None` when no such agent observes it.
fn listening(agents: &[AgentTick], observers: &[usize], addr: SocketAddr) -> Option<bool> {
    let mut owners = (observers.iter().map(|&i| &agents[i]))
        .filter(|a| !a.listeners.is_empty() && a.addresses.binary_search(&addr.ip()).is_ok())
        .peekable();
    owners.peek()?;
    Some(owners.any(|a| a.listeners.iter().any(|l| listens_on(l, addr))))
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
        .filter(|x| announceable(*x) && wildcard_takes(l.addr, *x))
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

type Drafts = BTreeMap<Arc<str>, BTreeMap<SocketAddr, Draft>>;

/// Records that agent `ai` announces `addrs` as members of `service`'s
/// pool, but those a Kubernetes Service has: they are that Service's
/// members, whatever the label says.
fn announce(
    drafts: &mut Drafts,
    declared: &Declared,
    service: &Arc<str>,
    addrs: impl IntoIterator<Item = SocketAddr>,
    ai: usize,
) {
    for addr in addrs {
        if !declared.kubernetes_members.contains(&addr) {
            drafts
                .entry(service.clone())
                .or_default()
                .entry(addr)
                .or_default()
                .announcers
                .insert(ai);
        }
    }
}

/// Groups this tick's agents into pools (sorted by name, members sorted by
/// address and port). `agents` must be sorted by node name.
pub fn build(
    agents: &[AgentTick],
    declared: &Declared,
    tick: u64,
    threads: Threads,
) -> Vec<PoolTick> {
    plan(agents, declared, threads).assemble(agents, tick, threads)
}

/// The pools stage across ticks: the plan it last made and what it made
/// it from. A plan depends only on the agents' layouts and the declared
/// pools, which rarely change, so most ticks only read the agents' counts
/// through the plan they already have.
#[derive(Default)]
pub struct Builder {
    last: Option<(PlanKey, Plan)>,
}

/// What a plan was made from: every agent's layout number, in the order
/// of the agents (sorted by node name), and the declared pools (kept, so
/// their address is not reused by other pools while compared).
struct PlanKey {
    layouts: Vec<u64>,
    declared: Arc<Declared>,
}

impl PlanKey {
    fn new(agents: &[AgentTick], declared: Arc<Declared>) -> Self {
        Self {
            layouts: agents.iter().map(|agent| agent.layout).collect(),
            declared,
        }
    }

    /// Whether a plan made from `self` holds for these agents and pools.
    fn holds(&self, agents: &[AgentTick], declared: &Arc<Declared>) -> bool {
        Arc::ptr_eq(&self.declared, declared)
            && self
                .layouts
                .iter()
                .copied()
                .eq(agents.iter().map(|a| a.layout))
    }
}

impl Builder {
    /// As [`build`], planning anew only when an agent's layout or the
    /// declared pools changed since the last call.
    pub fn build(
        &mut self,
        agents: &[AgentTick],
        declared: Arc<Declared>,
        tick: u64,
        threads: Threads,
    ) -> Vec<PoolTick> {
        let plan = match self.last.take() {
            Some((key, plan)) if key.holds(agents, &declared) => (key, plan),
            _ => (
                PlanKey::new(agents, declared.clone()),
                plan(agents, &declared, threads),
            ),
        };
        let (_, plan) = self.last.insert(plan);
        plan.assemble(agents, tick, threads)
    }
}

/// Every pool as the agents' layouts and the declared pools make it: its
/// members and, per member, which agents' endpoints are its views. Agents
/// are referred to by their index in the (sorted) agents it was made from.
pub struct Plan {
    pools: Vec<PoolPlan>,
}

/// One pool of a [`Plan`].
struct PoolPlan {
    name: Arc<str>,
    members: Vec<MemberPlan>,
    /// Its load balancer agents.
    lb_agents: Vec<usize>,
    /// Its members' LB view endpoints by agent: (agent, [(endpoint,
    /// member)]), agents in order. A tick reads each agent's endpoints in
    /// one pass, not every member's from each agent in turn: a pool behind
    /// a thousand kube-proxies is a million endpoints a tick, spread over
    /// a thousand agents' memory.
    lb_sends: Vec<(usize, Vec<(usize, usize)>)>,
    /// Their node names (or the declared ones), sorted.
    lb_nodes: Arc<[Arc<str>]>,
    /// The pool has load balancers (seen or declared): its members have
    /// an LB view.
    lb_present: bool,
    /// Some load balancer agent sends to two members or more: one
    /// balancer's own split can be judged, so the members' LB views are
    /// kept by node. Not in a pool each of whose balancers reaches one
    /// member (clients spread over many pools), where that would cost
    /// every tick and judge nothing.
    lb_splits: bool,
    kubernetes: Option<Arc<KubeService>>,
    note: Option<Arc<str>>,
    /// How its balancer places new connections.
    balancing: Balancing,
}

/// One member of a [`PoolPlan`].
struct MemberPlan {
    addr: SocketAddr,
    /// Its detector id, "address:port".
    id: String,
    weight: f64,
    expect: Expect,
    source: Source,
    node: Arc<str>,
    pod: Option<Arc<str>>,
    zone: Option<Arc<str>>,
    /// Agents that observe its server side (sorted); it has a server view
    /// when there is one.
    observers: Vec<usize>,
    /// The first observer by node name: its CPU is the member's.
    first: Option<usize>,
    /// SERVES endpoints of its address and port: (agent, endpoint).
    serving: Vec<(usize, usize)>,
    /// Whether a socket listens on its address and port, by the observers
    /// that can say (see [`listening`]).
    listening: Option<bool>,
}

/// Plans the pools of `agents` (sorted by node name) and `declared`.
pub fn plan(agents: &[AgentTick], declared: &Declared, threads: Threads) -> Plan {
    let mut drafts: Drafts = BTreeMap::new();
    let (serves, sends, node_addrs) = index_endpoints(agents, declared, &mut drafts);
    announce_listeners(agents, declared, (&node_addrs, &serves), &mut drafts);
    for pool in drafts.values_mut() {
        for member in pool.values_mut() {
            member.source.announced = true;
        }
    }
    add_declared(declared, &mut drafts);

    let node_index: HashMap<&str, usize> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| (&*a.node, i))
        .collect();
    let seen = Seen {
        agents,
        node_index,
        serves,
        sends,
    };
    // Each pool is planned on its own from what the agents reported:
    // spread over the tick's threads, each with its own LB marks.
    let mut drafts: Vec<(Arc<str>, BTreeMap<SocketAddr, Draft>)> = drafts.into_iter().collect();
    let pools = threads.map_with(
        &mut drafts,
        |(_, members)| members.len(),
        || vec![usize::MAX; agents.len()],
        |lb_mark, stamp, (name, members)| {
            seen.pool(declared, lb_mark, stamp, name, std::mem::take(members))
        },
    );
    Plan { pools }
}

impl Plan {
    /// This tick's pools: each member's views summed from the agents'
    /// counts (`agents` as the plan was made from), spread over the tick's
    /// threads.
    pub fn assemble(&self, agents: &[AgentTick], tick: u64, threads: Threads) -> Vec<PoolTick> {
        let mut pools: Vec<&PoolPlan> = self.pools.iter().collect();
        threads.map(
            &mut pools,
            |pool| pool.members.len(),
            |_, pool| pool.assemble(agents, tick),
        )
    }
}

/// Indexes every endpoint by (address, port) and direction, announces the
/// labelled endpoints agents serve, and returns, per agent, the
/// announceable addresses it serves on.
fn index_endpoints(
    agents: &[AgentTick],
    declared: &Declared,
    drafts: &mut Drafts,
) -> (Index, Index, Vec<BTreeSet<IpAddr>>) {
    let mut serves: Index = FxHashMap::default();
    let mut sends: Index = FxHashMap::default();
    let mut node_addrs: Vec<BTreeSet<IpAddr>> = Vec::with_capacity(agents.len());
    for (agent_index, agent) in agents.iter().enumerate() {
        let mut addrs = BTreeSet::new();
        for (endpoint_index, endpoint) in agent.endpoints.iter().enumerate() {
            let key = (endpoint.key.addr, endpoint.key.port);
            match endpoint.key.dir {
                Dir::Serves => {
                    serves
                        .entry(key)
                        .or_default()
                        .push((agent_index, endpoint_index));
                    if announceable(endpoint.key.addr) {
                        addrs.insert(endpoint.key.addr);
                        if let Some(svc) = &endpoint.service {
                            let addr = SocketAddr::new(endpoint.key.addr, endpoint.key.port);
                            announce(drafts, declared, svc, [addr], agent_index);
                        }
                    }
                }
                Dir::SendsTo => sends
                    .entry(key)
                    .or_default()
                    .push((agent_index, endpoint_index)),
            }
        }
        node_addrs.push(addrs);
    }
    (serves, sends, node_addrs)
}

/// Whether agent `agent_index` serves `addr` on `listener`'s port under
/// another label than the listener's: a service labelled by its address
/// (`--service api=ADDR:PORT` beside `web=PORT`), which a wildcard
/// listener's label must not take into its own pool.
fn labelled_otherwise(
    agents: &[AgentTick],
    serves: &Index,
    agent_index: usize,
    addr: IpAddr,
    listener: &ListenerInfo,
) -> bool {
    let other = |&(a, e): &(usize, usize)| {
        a == agent_index
            && (agents[a].endpoints[e].service.as_deref()).is_some_and(|s| s != &*listener.service)
    };
    serves
        .get(&(addr, listener.port))
        .is_some_and(|found| found.iter().any(other))
}

/// Announces the members labelled listeners name: a specific address
/// itself, a wildcard every address its node serves on, and the wildcard
/// listeners of nodes that have served nothing yet ("dark") once every
/// other member is known.
fn announce_listeners(
    agents: &[AgentTick],
    declared: &Declared,
    (node_addrs, serves): (&[BTreeSet<IpAddr>], &Index),
    drafts: &mut Drafts,
) {
    let mut dark: Vec<(usize, &ListenerInfo)> = Vec::new();
    for (agent_index, agent) in agents.iter().enumerate() {
        for listener in agent.listeners.iter().filter(|l| !l.service.is_empty()) {
            let targets: Vec<IpAddr> = if listener.addr.is_unspecified() {
                let seen: Vec<IpAddr> = node_addrs[agent_index]
                    .iter()
                    .copied()
                    .filter(|x| wildcard_takes(listener.addr, *x))
                    .filter(|x| !labelled_otherwise(agents, serves, agent_index, *x, listener))
                    .collect();
                if seen.is_empty() {
                    dark.push((agent_index, listener));
                }
                seen
            } else if announceable(listener.addr) {
                vec![listener.addr]
            } else {
                vec![]
            };
            let addrs = targets
                .into_iter()
                .map(|t| SocketAddr::new(t, listener.port));
            announce(drafts, declared, &listener.service, addrs, agent_index);
        }
    }
    for (agent_index, listener) in dark {
        let known = drafts
            .get(&listener.service)
            .into_iter()
            .flat_map(|p| p.keys());
        let targets = dark_targets(&agents[agent_index].addresses, listener, known);
        let addrs = targets
            .into_iter()
            .map(|t| SocketAddr::new(t, listener.port));
        announce(drafts, declared, &listener.service, addrs, agent_index);
    }
}

/// The pool file's and Kubernetes' members: their weight, expectation,
/// node, Pod and zone override what announcing said.
fn add_declared(declared: &Declared, drafts: &mut Drafts) {
    for (name, declared_pool) in &declared.pools {
        let pool = drafts.entry(name.clone()).or_default();
        for member in &declared_pool.members {
            let draft = pool.entry(member.addr).or_default();
            draft.weight = Some(member.weight);
            draft.expect = member.expect.clone();
            draft.source.file |= member.source.file;
            draft.source.kubernetes |= member.source.kubernetes;
            draft.node.clone_from(&member.node);
            draft.pod.clone_from(&member.pod);
            draft.zone.clone_from(&member.zone);
        }
    }
}

/// What every pool of a plan is made from: the agents and their
/// endpoints indexed by address and port.
struct Seen<'a> {
    /// The agents, sorted by node name.
    agents: &'a [AgentTick],
    /// Agent index by node name.
    node_index: HashMap<&'a str, usize>,
    /// SERVES endpoints by address and port: (agent, endpoint) indices.
    serves: Index,
    /// SENDS_TO endpoints, likewise.
    sends: Index,
}

impl Seen<'_> {
    /// One pool's plan: its load balancers, and its members with the
    /// endpoints of their views, from its drafts. `lb_mark[i] == stamp`
    /// marks the pool's LB agents while it is planned (`stamp` is the
    /// pool's number, so marks need no clearing between pools).
    fn pool(
        &self,
        declared: &Declared,
        lb_mark: &mut [usize],
        stamp: usize,
        name: &Arc<str>,
        members: BTreeMap<SocketAddr, Draft>,
    ) -> PoolPlan {
        let declared_pool = declared.pools.get(name);
        let (lb_agents, lb_nodes, lb_missing) = load_balancers(
            self.agents,
            &self.node_index,
            &self.sends,
            lb_mark,
            stamp,
            members.keys(),
            declared_pool.map_or(&LbNodes::Senders, |p| &p.lb_nodes),
        );
        let lb_present = !lb_agents.is_empty() || lb_missing;
        let (members, sending): (Vec<MemberPlan>, Vec<_>) = (members.into_iter())
            .map(|(addr, draft)| self.member(lb_mark, stamp, addr, draft))
            .unzip();
        let lb_sends = by_agent(&sending);
        // Some load balancer agent sends to two members or more (each
        // agent's endpoints in member order: one listed twice, TCP and
        // UDP, is one member).
        let lb_splits = lb_agents.len() > 1
            && (lb_sends.iter()).any(|(_, s)| s.windows(2).any(|w| w[0].1 != w[1].1));
        PoolPlan {
            lb_splits,
            name: name.clone(),
            lb_sends,
            members,
            lb_agents,
            lb_nodes: lb_nodes.into(),
            lb_present,
            kubernetes: declared_pool.and_then(|p| p.kubernetes.clone()),
            note: declared_pool.and_then(|p| p.note.clone()),
            balancing: declared_pool.map_or(Balancing::default(), |p| p.balancing),
        }
    }

    /// One member of a pool: the agents that observe its server side
    /// (every agent serving its address:port, plus the agents that
    /// announced it and the agent of the node its source names), the
    /// endpoints of its server view, its facts; and apart, the endpoints
    /// of its LB view (the SENDS_TO endpoints towards it of the pool's
    /// load balancers, marked `stamp` in `lb_mark`), which the pool keeps
    /// by agent (see [`PoolPlan::lb_sends`]).
    fn member(
        &self,
        lb_mark: &[usize],
        stamp: usize,
        addr: SocketAddr,
        draft: Draft,
    ) -> (MemberPlan, Vec<(usize, usize)>) {
        let Self {
            agents,
            node_index,
            serves,
            sends,
        } = self;
        let key = (addr.ip(), addr.port());
        let serving = serves.get(&key).cloned().unwrap_or_default();
        let mut observers: Vec<usize> = draft.announcers.iter().copied().collect();
        observers.extend(serving.iter().map(|&(ai, _)| ai));
        if let Some(&i) = draft.node.as_deref().and_then(|n| node_index.get(n)) {
            observers.push(i);
        }
        observers.sort_unstable();
        observers.dedup();
        let sending = (sends.get(&key).map(Vec::as_slice).unwrap_or(&[]).iter())
            .filter(|&&(ai, _)| lb_mark[ai] == stamp)
            .copied()
            .collect();
        let first =
            (observers.iter().copied()).min_by(|&a, &b| agents[a].node.cmp(&agents[b].node));
        let node = match (&draft.node, first) {
            (Some(n), _) => n.clone(),
            (None, Some(i)) => agents[i].node.clone(),
            (None, None) => Arc::from(""),
        };
        let member = MemberPlan {
            listening: listening(agents, &observers, addr),
            addr,
            id: addr.to_string(),
            weight: draft.weight.unwrap_or(1.0),
            expect: draft.expect,
            source: draft.source,
            node,
            pod: draft.pod,
            zone: draft.zone,
            observers,
            first,
            serving,
        };
        (member, sending)
    }
}

impl PoolPlan {
    /// The pool this tick, from the agents' counts.
    fn assemble(&self, agents: &[AgentTick], tick: u64) -> PoolTick {
        let lbs = PoolLbs {
            fresh: self.lb_agents.iter().any(|&i| agents[i].fresh),
            reset: (self.lb_agents.iter()).any(|&i| agents[i].fresh && agents[i].reset),
            present: self.lb_present,
            several: self.lb_splits,
        };
        let mut judged = Vec::with_capacity(self.members.len());
        let mut unjudged = Vec::new();
        let lb_views = self.lb_views(agents, &lbs);
        for (member, lb) in self.members.iter().zip(lb_views) {
            match member.assemble(agents, &lbs, lb) {
                Assembled::Judged(member) => judged.push(member),
                Assembled::Unjudged(member) => unjudged.push(member),
            }
        }
        PoolTick {
            input: PoolInput {
                name: String::from(&*self.name),
                tick,
                members: judged,
                balancing: self.balancing,
            },
            unjudged,
            lb_nodes: self.lb_nodes.clone(),
            kubernetes: self.kubernetes.clone(),
            note: self.note.clone(),
        }
    }

    /// Every member's LB view this tick (the fresh load balancers' counts,
    /// and by node where it is kept), agent after agent.
    fn lb_views(&self, agents: &[AgentTick], lbs: &PoolLbs) -> Vec<LbView> {
        let mut views: Vec<LbView> = (self.members.iter())
            .map(|m| {
                // An unjudged member's counts by node would go unread.
                let judged = !matches!(m.expect, Expect::Unjudged { .. });
                LbView {
                    view: ViewInput {
                        fresh: lbs.fresh,
                        reset: lbs.reset,
                        ..ViewInput::default()
                    },
                    opened_by_node: judged && (lbs.several || m.draining()),
                    failed_by_node: judged && lbs.several,
                    ..LbView::default()
                }
            })
            .collect();
        for (ai, sends) in &self.lb_sends {
            let agent = &agents[*ai];
            for &(ei, mi) in sends {
                views[mi].add(agent, &agent.endpoints[ei]);
            }
        }
        views
    }
}

/// One member's LB view as a tick gathers it.
#[derive(Default)]
struct LbView {
    view: ViewInput,
    measured: Measured,
    /// Whether its new connections are kept by node (`opened`): where the
    /// pool's balancers split, or it is out of rotation.
    opened_by_node: bool,
    /// Whether its failed attempts are (`failed`): where they split.
    failed_by_node: bool,
    /// New connections by fresh load balancer node (those with some).
    opened: Vec<(Arc<str>, u64)>,
    /// Failed attempts likewise.
    failed: Vec<(Arc<str>, u64)>,
}

impl LbView {
    /// Adds `agent`'s endpoint towards the member, and by node where kept.
    fn add(&mut self, agent: &AgentTick, e: &TickEndpoint) {
        if !agent.fresh {
            self.measured.add_reported(e);
            return;
        }
        add_endpoint(&mut self.view, &mut self.measured, e);
        if self.opened_by_node && e.delta.conns > 0 {
            self.opened.push((agent.node.clone(), e.delta.conns));
        }
        if self.failed_by_node && e.delta.failed > 0 {
            self.failed.push((agent.node.clone(), e.delta.failed));
        }
    }
}

/// The members' LB view endpoints (`sending`, member by member) by agent
/// (see [`PoolPlan::lb_sends`]).
fn by_agent(sending: &[Vec<(usize, usize)>]) -> Vec<(usize, Vec<(usize, usize)>)> {
    let mut sends: Vec<(usize, usize, usize)> = (sending.iter().enumerate())
        .flat_map(|(mi, s)| s.iter().map(move |&(ai, ei)| (ai, ei, mi)))
        .collect();
    // Stable: each agent's endpoints keep their members' order.
    sends.sort_by_key(|&(ai, ..)| ai);
    (sends.chunk_by(|a, b| a.0 == b.0))
        .map(|group| {
            (
                group[0].0,
                group.iter().map(|&(_, ei, mi)| (ei, mi)).collect(),
            )
        })
        .collect()
}

impl MemberPlan {
    /// Out of rotation while judged: its new connections are a violation,
    /// and by node they say whose.
    fn draining(&self) -> bool {
        matches!(self.expect, Expect::Draining | Expect::NotReady)
    }

    /// The member this tick: its server view (fresh while every observer
    /// is), its LB view (`lb`, gathered by [`PoolPlan::lb_views`]), its
    /// facts.
    fn assemble(&self, agents: &[AgentTick], lbs: &PoolLbs, lb: LbView) -> Assembled {
        let mut server_measured = Measured::default();
        let server = (!self.observers.is_empty()).then(|| {
            let mut v = ViewInput {
                fresh: self.observers.iter().all(|&i| agents[i].fresh),
                reset: self.observers.iter().any(|&i| agents[i].reset),
                ..ViewInput::default()
            };
            for &(ai, ei) in &self.serving {
                add_endpoint(&mut v, &mut server_measured, &agents[ai].endpoints[ei]);
            }
            v
        });
        let LbView {
            view,
            measured: lb_measured,
            opened,
            failed,
            ..
        } = lb;
        let lb = lbs.present.then_some(view);
        let meta = MemberMeta {
            addr: self.addr,
            node: self.node.clone(),
            source: self.source,
            pod: self.pod.clone(),
            zone: self.zone.clone(),
            server: server_measured,
            lb: lb_measured,
        };
        let (draining, not_ready) = match &self.expect {
            Expect::Share => (false, false),
            Expect::Draining => (true, false),
            Expect::NotReady => (true, true),
            Expect::Unjudged { draining, reason } => {
                return Assembled::Unjudged(Unjudged {
                    meta,
                    draining: *draining,
                    reason: reason.clone(),
                    server,
                    lb,
                });
            }
        };
        Assembled::Judged(PoolMember {
            input: MemberInput {
                id: self.id.clone(),
                weight: self.weight,
                draining,
                not_ready,
                lb_by_node: opened,
                lb_failed_by_node: failed,
                server,
                lb,
                cpu: self.first.and_then(|i| agents[i].cpu),
                // What a stale agent listed is old news.
                listening: self.listening.filter(|_| server.is_some_and(|v| v.fresh)),
            },
            meta,
        })
    }
}

/// A member as assembled: judged, or listed but not judged.
enum Assembled {
    Judged(PoolMember),
    Unjudged(Unjudged),
}

/// A pool's load balancers as its members' LB views need them this tick.
struct PoolLbs {
    /// At least one LB agent is fresh.
    fresh: bool,
    /// A fresh LB agent's counters reset this tick.
    reset: bool,
    /// The pool has load balancers (seen or declared).
    present: bool,
    /// One of several splits over its members ([`PoolPlan::lb_splits`]):
    /// each member's LB view is kept by node too.
    several: bool,
}

/// Adds one observer's endpoint to a member's view and measured rates.
fn add_endpoint(v: &mut ViewInput, m: &mut Measured, e: &TickEndpoint) {
    // Counts come from agents: several near u64::MAX must not overflow.
    v.reset |= e.reset;
    v.new_conns = v.new_conns.saturating_add(e.delta.conns);
    v.bytes_in = v.bytes_in.saturating_add(e.delta.bytes_in);
    v.bytes_out = v.bytes_out.saturating_add(e.delta.bytes_out);
    v.failed = v.failed.saturating_add(e.delta.failed);
    v.active = v.active.saturating_add(e.active);
    m.add(e);
}

/// A pool's load balancer agents (indices, marked `stamp` in `lb_mark`),
/// their node names sorted, and whether a named one never reported.
fn load_balancers<'a>(
    agents: &[AgentTick],
    node_index: &HashMap<&str, usize>,
    sends: &Index,
    lb_mark: &mut [usize],
    stamp: usize,
    members: impl Iterator<Item = &'a SocketAddr>,
    which: &LbNodes,
) -> (Vec<usize>, Vec<Arc<str>>, bool) {
    let mut idx: Vec<usize> = Vec::new();
    let mut mark = |i: usize, idx: &mut Vec<usize>| {
        if lb_mark[i] != stamp {
            lb_mark[i] = stamp;
            idx.push(i);
        }
    };
    match which {
        LbNodes::Senders | LbNodes::SendersAmong(_) => {
            let among = match which {
                LbNodes::SendersAmong(set) => Some(set),
                _ => None,
            };
            for addr in members {
                for &(ai, _) in sends.get(&(addr.ip(), addr.port())).into_iter().flatten() {
                    if among.is_none_or(|s| s.contains(&*agents[ai].node)) {
                        mark(ai, &mut idx);
                    }
                }
            }
            // Agents come sorted by node name: sorting indices sorts names.
            idx.sort_unstable();
            let names = idx.iter().map(|&i| agents[i].node.clone()).collect();
            (idx, names, false)
        }
        LbNodes::Named(declared) => {
            let mut missing = false;
            for n in declared {
                match node_index.get(n.as_str()) {
                    Some(&i) => mark(i, &mut idx),
                    None => missing = true,
                }
            }
            let mut names: Vec<Arc<str>> = declared.iter().map(|n| Arc::from(n.as_str())).collect();
            names.sort_unstable();
            (idx, names, missing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ingest::{Delta, EpKey, TickEndpoint};

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
                failed: 0,
            },
            rate: [conns as f64, conns as f64 * 10.0, conns as f64 * 100.0, 0.0],
            total: conns,
            failed_total: 0,
            cumulative: conns,
            cumulative_failed: 0,
            reset: false,
            active: 1,
        }
    }

    fn agent(node: &str, endpoints: Vec<TickEndpoint>, listeners: Vec<ListenerInfo>) -> AgentTick {
        AgentTick {
            node: node.into(),
            layout: 0,
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
        let pools = build(&agents, &Declared::default(), 1, Threads::ONE);
        assert_eq!(pools.len(), 1);
        let p = &pools[0];
        let ids: Vec<_> = p
            .input
            .members
            .iter()
            .map(|m| m.input.id.as_str())
            .collect();
        assert_eq!(ids, ["10.0.0.1:8080", "10.0.0.2:8080"]);
        assert_eq!(*p.lb_nodes, [Arc::from("lb")]);
        let m0 = &p.input.members[0].input;
        assert_eq!(m0.server.unwrap().new_conns, 10);
        assert_eq!(m0.lb.unwrap().new_conns, 9);
        assert_eq!(m0.lb.unwrap().bytes_in, 90);
        let m1 = &p.input.members[1].input;
        assert_eq!(m1.server.unwrap().new_conns, 0);
        assert!(m1.server.unwrap().fresh);
        assert_eq!(&*p.input.members[1].meta.node, "b2");
    }

    /// `--service web=8080,api=10.0.0.3:8080` on one node with a wildcard
    /// listener on 8080: the listener's label takes the node's addresses
    /// but not the one api is labelled on.
    #[test]
    fn a_wildcard_listener_leaves_an_address_labelled_otherwise() {
        let agents = vec![agent(
            "n1",
            vec![
                ep("10.0.0.2", 8080, Dir::Serves, Some("web"), 4),
                ep("10.0.0.3", 8080, Dir::Serves, Some("api"), 6),
            ],
            vec![ListenerInfo {
                addr: "0.0.0.0".parse().unwrap(),
                port: 8080,
                service: "web".into(),
            }],
        )];
        let pools = build(&agents, &Declared::default(), 1, Threads::ONE);
        let members = |name: &str| -> Vec<String> {
            let pool = pools.iter().find(|p| p.input.name == name);
            (pool.into_iter().flat_map(|p| &p.input.members))
                .map(|m| m.input.id.clone())
                .collect()
        };
        assert_eq!(members("web"), ["10.0.0.2:8080"]);
        assert_eq!(members("api"), ["10.0.0.3:8080"]);
    }

    #[test]
    fn a_plan_is_kept_while_layouts_hold_and_made_anew_when_one_moves() {
        let mut agents = vec![
            agent(
                "b1",
                vec![ep("10.0.0.1", 8080, Dir::Serves, Some("web"), 10)],
                vec![],
            ),
            agent(
                "lb",
                vec![ep("10.0.0.1", 8080, Dir::SendsTo, None, 9)],
                vec![],
            ),
        ];
        agents[0].layout = 1;
        agents[1].layout = 2;
        let declared = Arc::new(Declared::default());
        let views = |pools: &[PoolTick]| -> Vec<(String, Option<u64>, Option<u64>)> {
            (pools.iter().flat_map(|p| &p.input.members))
                .map(|m| {
                    let input = &m.input;
                    let conns = |v: Option<ViewInput>| v.map(|v| v.new_conns);
                    (input.id.clone(), conns(input.server), conns(input.lb))
                })
                .collect()
        };
        let mut builder = Builder::default();
        let first = builder.build(&agents, declared.clone(), 1, Threads::ONE);
        assert_eq!(
            views(&first),
            views(&build(&agents, &declared, 1, Threads::ONE))
        );
        // New counts, the same layouts: the kept plan reads the new counts.
        agents[0].endpoints[0].delta.conns = 4;
        agents[1].endpoints[0].delta.conns = 3;
        let kept = builder.build(&agents, declared.clone(), 2, Threads::ONE);
        assert!(Arc::ptr_eq(&first[0].lb_nodes, &kept[0].lb_nodes));
        assert_eq!(
            views(&kept),
            [("10.0.0.1:8080".to_owned(), Some(4), Some(3))]
        );
        // A new endpoint comes with a new layout: planned anew.
        agents[0]
            .endpoints
            .push(ep("10.0.0.2", 8080, Dir::Serves, Some("web"), 5));
        agents[0].layout = 3;
        let moved = builder.build(&agents, declared.clone(), 3, Threads::ONE);
        assert_eq!(moved[0].input.members.len(), 2);
        assert_eq!(
            views(&moved),
            views(&build(&agents, &declared, 3, Threads::ONE))
        );
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
        let pools = build(&agents, &Declared::default(), 1, Threads::ONE);
        let ids: Vec<_> = pools[0]
            .input
            .members
            .iter()
            .map(|m| m.input.id.as_str())
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
        let dark = &pools[0].input.members[3].input;
        assert_eq!(dark.server.unwrap().new_conns, 0);
        assert!(dark.server.unwrap().fresh);
        // A `::` listener on the dark node still picks only the pool's family.
        agents[3].listeners[0].addr = "::".parse().unwrap();
        let pools = build(&agents, &Declared::default(), 1, Threads::ONE);
        assert_eq!(pools[0].input.members[3].input.id, "10.0.0.4:8080");
        assert_eq!(pools[0].input.members.len(), 4);
        // Once it serves, what it serves on decides, as for every node.
        agents[3].endpoints = vec![ep("10.0.0.4", 8080, Dir::Serves, Some("web"), 1)];
        assert_eq!(
            build(&agents, &Declared::default(), 1, Threads::ONE)[0]
                .input
                .members
                .len(),
            4
        );
        // Without node addresses (an older agent) it stays unseen.
        agents[3].endpoints.clear();
        agents[3].addresses.clear();
        assert_eq!(
            build(&agents, &Declared::default(), 1, Threads::ONE)[0]
                .input
                .members
                .len(),
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
        let pools = build(&agents, &Declared::from_file(&file), 1, Threads::ONE);
        let p = &pools[0];
        assert_eq!(p.input.members[0].input.weight, 3.0);
        assert_eq!(p.input.members[0].meta.source.as_str(), "announced+file");
        assert!(p.input.members[1].input.draining);
        assert!(p.input.members[1].input.server.is_none());
        assert_eq!(p.input.members[1].meta.source.as_str(), "file");
        // Declared LB that never reported: LB view present but not fresh.
        assert!(!p.input.members[0].input.lb.unwrap().fresh);
    }

    fn kube_member(
        addr: &str,
        node: &str,
        expect: Expect,
    ) -> crate::service::declared::DeclaredMember {
        crate::service::declared::DeclaredMember {
            addr: addr.parse().unwrap(),
            weight: 1.0,
            expect,
            node: Some(node.into()),
            pod: Some(format!("default/pod-{addr}").into()),
            zone: None,
            source: Source {
                kubernetes: true,
                ..Source::default()
            },
        }
    }

    fn kube(pools: Vec<(&str, Vec<crate::service::declared::DeclaredMember>)>) -> Declared {
        let pools = pools
            .into_iter()
            .map(|(n, members)| {
                (
                    Arc::from(n),
                    crate::service::declared::DeclaredPool {
                        members,
                        ..Default::default()
                    },
                )
            })
            .collect();
        Declared::merge(pools, &crate::service::poolfile::PoolFile::new())
    }

    #[test]
    fn kubernetes_pools_match_endpoints_by_address_not_by_label() {
        // One node runs pods of two Services, all on port 8080, and a
        // client sending to them; its agent even labels 8080 "web".
        let agents = vec![agent(
            "n1",
            vec![
                ep("10.244.0.2", 8080, Dir::Serves, Some("web"), 5),
                ep("10.244.0.3", 8080, Dir::Serves, Some("web"), 7),
                ep("10.244.0.2", 8080, Dir::SendsTo, None, 5),
                ep("10.244.0.3", 8080, Dir::SendsTo, None, 7),
                ep("10.244.0.5", 8080, Dir::SendsTo, None, 2),
            ],
            vec![ListenerInfo {
                addr: "0.0.0.0".parse().unwrap(),
                port: 8080,
                service: "web".into(),
            }],
        )];
        let declared = kube(vec![
            (
                "default/a:http",
                vec![
                    kube_member("10.244.0.2:8080", "n1", Expect::Share),
                    // Ready, but nothing ever reached it.
                    kube_member("10.244.0.4:8080", "n1", Expect::Share),
                ],
            ),
            (
                "default/b:http",
                vec![
                    kube_member("10.244.0.3:8080", "n1", Expect::Share),
                    kube_member(
                        "10.244.0.5:8080",
                        "n1",
                        Expect::Unjudged {
                            draining: false,
                            reason: "not ready".into(),
                        },
                    ),
                ],
            ),
        ]);
        let pools = build(&agents, &declared, 1, Threads::ONE);
        let names: Vec<_> = pools.iter().map(|p| p.input.name.as_str()).collect();
        // No "web" pool: the label names only Service addresses.
        assert_eq!(names, ["default/a:http", "default/b:http"]);
        let a = &pools[0];
        let ids: Vec<_> = a
            .input
            .members
            .iter()
            .map(|m| m.input.id.as_str())
            .collect();
        assert_eq!(ids, ["10.244.0.2:8080", "10.244.0.4:8080"]);
        assert_eq!(a.input.members[0].input.server.unwrap().new_conns, 5);
        // The dark pod is observed by its node's agent: fresh, zero.
        let dark = a.input.members[1]
            .input
            .server
            .expect("observed by n1's agent");
        assert!(dark.fresh && dark.new_conns == 0);
        assert_eq!(a.input.members[1].input.lb.unwrap().new_conns, 0);
        assert_eq!(&*a.input.members[1].meta.node, "n1");
        assert_eq!(a.input.members[1].meta.source.as_str(), "kubernetes");
        assert_eq!(
            a.input.members[1].meta.pod.as_deref(),
            Some("default/pod-10.244.0.4:8080")
        );
        let b = &pools[1];
        assert_eq!(b.input.members.len(), 1);
        assert_eq!(b.input.members[0].input.server.unwrap().new_conns, 7);
        // Not ready: listed apart, with what it got, never judged.
        assert_eq!(b.unjudged.len(), 1);
        assert_eq!(b.unjudged[0].meta.lb.conns_total, 2);
        assert_eq!(b.unjudged[0].reason, "not ready");
    }

    #[test]
    fn a_zone_pool_takes_its_lb_view_from_its_zone_only() {
        let agents = vec![
            agent(
                "a1",
                vec![ep("10.244.1.2", 8080, Dir::SendsTo, None, 4)],
                vec![],
            ),
            agent(
                "b1",
                vec![ep("10.244.1.2", 8080, Dir::SendsTo, None, 9)],
                vec![],
            ),
        ];
        let mut declared = kube(vec![(
            "default/a:http@zone-a",
            vec![kube_member("10.244.1.2:8080", "a1", Expect::Share)],
        )]);
        for p in declared.pools.values_mut() {
            p.lb_nodes = LbNodes::SendersAmong(Arc::new(["a1".to_owned()].into()));
        }
        let p = &build(&agents, &declared, 1, Threads::ONE)[0];
        assert_eq!(*p.lb_nodes, [Arc::from("a1")]);
        assert_eq!(p.input.members[0].input.lb.unwrap().new_conns, 4);
    }

    #[test]
    fn a_member_listens_as_the_agent_owning_its_address_says() {
        let listener = |addr: &str, port: u16| ListenerInfo {
            addr: addr.parse().unwrap(),
            port,
            service: "".into(),
        };
        // Node i serves 10.0.0.i:8080. b1 listens on every IPv4 address,
        // b2 on another port only, b3 listed no listener (a listing that
        // failed), b4 does not own its member's address (forwarded to it),
        // b5 listens on `::` (both families), b6 on another address.
        let listeners = [
            vec![listener("0.0.0.0", 8080)],
            vec![listener("10.0.0.2", 9090)],
            vec![],
            vec![listener("0.0.0.0", 8080)],
            vec![listener("::", 8080)],
            vec![listener("10.0.0.60", 8080)],
        ];
        let mut agents: Vec<AgentTick> = (listeners.into_iter().enumerate())
            .map(|(i, listeners)| {
                let i = i + 1;
                let mut a = agent(
                    &format!("b{i}"),
                    vec![ep(
                        &format!("10.0.0.{i}"),
                        8080,
                        Dir::Serves,
                        Some("web"),
                        5,
                    )],
                    listeners,
                );
                let own = if i == 4 { 99 } else { i };
                a.addresses = vec![format!("10.0.0.{own}").parse().unwrap()];
                a
            })
            .collect();
        let listening = |agents: &[AgentTick]| -> Vec<Option<bool>> {
            build(agents, &Declared::default(), 1, Threads::ONE)[0]
                .input
                .members
                .iter()
                .map(|m| m.input.listening)
                .collect()
        };
        assert_eq!(
            listening(&agents),
            [Some(true), Some(false), None, None, Some(true), Some(false)]
        );
        // What a stale agent listed is not news.
        agents[0].fresh = false;
        assert_eq!(listening(&agents)[0], None);
    }

    /// Two agents serving one member with counts near u64::MAX: its views
    /// saturate rather than overflow.
    /// A load balancer whose agent goes stale (restarting in a DaemonSet
    /// rollout) keeps its last count in the member's reported total: the
    /// exported counter never goes down for it.
    #[test]
    fn a_stale_load_balancer_keeps_its_count_in_the_reported_total() {
        let lb = |node: &str, total: u64| {
            let mut e = ep("10.0.0.1", 8080, Dir::SendsTo, None, 1);
            e.cumulative = total;
            agent(node, vec![e], vec![])
        };
        let mut agents = vec![
            agent(
                "b1",
                vec![ep("10.0.0.1", 8080, Dir::Serves, Some("web"), 1)],
                vec![],
            ),
            lb("lb1", 700),
            lb("lb2", 300),
        ];
        let reported = |agents: &[AgentTick]| {
            let pools = build(agents, &Declared::default(), 1, Threads::ONE);
            pools[0].input.members[0].meta.lb.reported_total
        };
        assert_eq!(reported(&agents), 1000);
        agents[2].fresh = false;
        assert_eq!(reported(&agents), 1000);
    }

    /// Balancers that list the members in different orders, one of them
    /// stale: each member's LB view sums the fresh ones, keeps their
    /// counts by node in the agents' order, and its reported total has
    /// the stale one's too.
    #[test]
    fn each_members_lb_view_is_gathered_agent_by_agent() {
        let sends = |to: &[(&str, u64, u64)]| -> Vec<TickEndpoint> {
            (to.iter())
                .map(|&(addr, conns, failed)| {
                    let mut e = ep(addr, 8080, Dir::SendsTo, None, conns);
                    e.delta.failed = failed;
                    e
                })
                .collect()
        };
        let mut agents = vec![
            agent(
                "b1",
                vec![ep("10.0.0.1", 8080, Dir::Serves, Some("web"), 1)],
                vec![],
            ),
            agent(
                "b2",
                vec![ep("10.0.0.2", 8080, Dir::Serves, Some("web"), 1)],
                vec![],
            ),
            agent(
                "lb1",
                sends(&[("10.0.0.2", 5, 1), ("10.0.0.1", 7, 0)]),
                vec![],
            ),
            agent(
                "lb2",
                sends(&[("10.0.0.1", 3, 2), ("10.0.0.2", 0, 0)]),
                vec![],
            ),
            agent(
                "lb3",
                sends(&[("10.0.0.1", 40, 0), ("10.0.0.2", 40, 0)]),
                vec![],
            ),
        ];
        agents[4].fresh = false;
        let pools = build(&agents, &Declared::default(), 1, Threads::ONE);
        let members = &pools[0].input.members;
        let by_node = |v: &[(Arc<str>, u64)]| -> Vec<(String, u64)> {
            v.iter().map(|(n, c)| (n.to_string(), *c)).collect()
        };
        let (m1, m2) = (&members[0], &members[1]);
        assert_eq!(m1.input.lb.unwrap().new_conns, 10);
        assert_eq!(m2.input.lb.unwrap().new_conns, 5);
        assert_eq!(m1.input.lb.unwrap().failed, 2);
        assert_eq!(
            by_node(&m1.input.lb_by_node),
            [("lb1".to_owned(), 7), ("lb2".to_owned(), 3)]
        );
        assert_eq!(by_node(&m2.input.lb_by_node), [("lb1".to_owned(), 5)]);
        assert_eq!(
            by_node(&m1.input.lb_failed_by_node),
            [("lb2".to_owned(), 2)]
        );
        assert_eq!(
            by_node(&m2.input.lb_failed_by_node),
            [("lb1".to_owned(), 1)]
        );
        assert_eq!(m1.meta.lb.reported_total, 7 + 3 + 40);
        assert_eq!(m2.meta.lb.reported_total, 5 + 40);
    }

    /// Balancers that each send to one member, one of them over TCP and
    /// UDP to the same address and port: no balancer splits, so no
    /// member's LB view is kept by node; a second member for it does.
    #[test]
    fn a_balancer_splits_only_over_two_members_not_two_protocols() {
        let udp = |addr: &str| {
            let mut e = ep(addr, 8080, Dir::SendsTo, None, 2);
            e.key.proto = 2;
            e
        };
        let serves = |node: &str, addr: &str| {
            agent(
                node,
                vec![ep(addr, 8080, Dir::Serves, Some("web"), 1)],
                vec![],
            )
        };
        let mut agents = vec![
            serves("b1", "10.0.0.1"),
            serves("b2", "10.0.0.2"),
            agent(
                "lb1",
                vec![ep("10.0.0.1", 8080, Dir::SendsTo, None, 3), udp("10.0.0.1")],
                vec![],
            ),
            agent(
                "lb2",
                vec![ep("10.0.0.2", 8080, Dir::SendsTo, None, 4)],
                vec![],
            ),
        ];
        let kept = |agents: &[AgentTick]| -> usize {
            let pools = build(agents, &Declared::default(), 1, Threads::ONE);
            (pools[0].input.members.iter())
                .map(|m| m.input.lb_by_node.len())
                .sum()
        };
        assert_eq!(kept(&agents), 0, "one member each: no balancer splits");
        agents[2]
            .endpoints
            .push(ep("10.0.0.2", 8080, Dir::SendsTo, None, 1));
        // lb1's TCP and UDP counts to b1, its one to b2, and lb2's.
        assert_eq!(kept(&agents), 4, "lb1 splits: every count kept by node");
    }

    #[test]
    fn a_members_sums_saturate() {
        let huge = |dir: Dir, service: Option<&str>| {
            let mut e = ep("10.0.0.1", 8080, dir, service, 1);
            e.delta = Delta {
                conns: u64::MAX - 1,
                bytes_in: u64::MAX - 1,
                bytes_out: u64::MAX - 1,
                failed: u64::MAX - 1,
            };
            e.total = u64::MAX - 1;
            e.failed_total = u64::MAX - 1;
            e.cumulative = u64::MAX - 1;
            e.active = u64::MAX - 1;
            e
        };
        let agents = vec![
            agent("b1", vec![huge(Dir::Serves, Some("web"))], vec![]),
            agent("b2", vec![huge(Dir::Serves, Some("web"))], vec![]),
            agent("lb1", vec![huge(Dir::SendsTo, None)], vec![]),
            agent("lb2", vec![huge(Dir::SendsTo, None)], vec![]),
        ];
        let pools = build(&agents, &Declared::default(), 1, Threads::ONE);
        let member = &pools[0].input.members[0];
        for view in [member.input.server, member.input.lb] {
            let view = view.unwrap();
            assert_eq!(
                [view.new_conns, view.bytes_in, view.bytes_out, view.active],
                [u64::MAX; 4]
            );
        }
        for measured in [member.meta.server, member.meta.lb] {
            assert_eq!(measured.conns_total, u64::MAX);
            assert_eq!(measured.reported_total, u64::MAX);
        }
    }
}

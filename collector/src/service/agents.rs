//! What the collector knows about each agent: its run, epoch and sequence,
//! its endpoints' cumulative totals and the deltas accumulated since the
//! last detection tick.
//!
//! Each agent's state sits behind its own mutex, held only by that agent's
//! stream (per report) and, briefly, by the detection tick; the registry
//! that maps node names to states is sharded and write-locked only when a
//! new node first reports. Ingest therefore never takes a global lock.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Instant, SystemTime},
};

use evenflow_proto::v1::{self, AgentReport};

use crate::service::fxhash::FxHashMap;

const SHARDS: usize = 32;
/// Upper bound on endpoints in one report.
pub const MAX_ENDPOINTS: usize = 200_000;
/// Upper bound on listeners in one report.
pub const MAX_LISTENERS: usize = 100_000;

/// A report that cannot be used; the text says what is wrong and how to fix
/// it.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct InvalidReport(pub String);

/// Which side of an endpoint the reporting node is on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dir {
    /// The node accepted the connections (a local listener).
    Serves,
    /// The node opened or forwarded them (a remote backend).
    SendsTo,
}

/// Identifies an endpoint within one agent.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct EpKey {
    /// Endpoint address.
    pub addr: IpAddr,
    /// Endpoint port.
    pub port: u16,
    /// Direction.
    pub dir: Dir,
    /// Protocol number as in the proto enum.
    pub proto: i32,
}

/// Counts accumulated since the last tick, oriented to the *member*: `bytes_in`
/// is what the backend received, whichever side observed it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// New connections.
    pub conns: u64,
    /// Bytes into the backend.
    pub bytes_in: u64,
    /// Bytes out of the backend.
    pub bytes_out: u64,
}

impl Delta {
    fn add(&mut self, o: Delta) {
        self.conns = self.conns.saturating_add(o.conns);
        self.bytes_in = self.bytes_in.saturating_add(o.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(o.bytes_out);
    }
}

#[derive(Debug)]
struct EpState {
    service: Option<Arc<str>>,
    opened: u64,
    bytes_rx: u64,
    bytes_tx: u64,
    active: u64,
    pending: Delta,
    /// Per-second rates (conns, bytes in, bytes out) over the reports of
    /// the last tick that had any; `None` until a report measured them.
    rate: Option<[f64; 3]>,
    /// Fractional counts not yet handed to the detector.
    carry: [f64; 3],
    /// New connections since the collector first saw the endpoint (exact).
    total: u64,
    /// Counters went backwards within the epoch since the last tick.
    reset: bool,
    /// Report generation that last carried this endpoint.
    gen_seen: u64,
}

/// A labelled (or unlabelled) listening socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerInfo {
    /// Bound address (unspecified = every address).
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
    /// Service label.
    pub service: Arc<str>,
}

/// One agent's state.
#[derive(Debug)]
pub struct AgentState {
    node: Arc<str>,
    epoch: u64,
    run: u64,
    last_seq: u64,
    last_taken_at: Option<prost_types::Timestamp>,
    last_received: Instant,
    last_received_wall: SystemTime,
    interval: f64,
    version: String,
    endpoints: FxHashMap<EpKey, EpState>,
    listeners: Vec<ListenerInfo>,
    /// The node's own addresses (sorted), for wildcard listeners.
    addresses: Vec<IpAddr>,
    cpu: Option<f64>,
    generation: u64,
    resets: u64,
    replays: u64,
    endpoint_count: u32,
    /// The epoch changed (or this is the first report) since the last tick:
    /// this tick's deltas are unknown.
    reset_pending: bool,
    /// Agent seconds covered by the reports applied since the last tick.
    covered: f64,
    /// The stream that applied the last report.
    stream: u64,
}

/// Outcome of applying a report.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Processed; ack this sequence.
    New {
        /// The report started a new epoch (counter reset).
        reset: bool,
    },
    /// Already processed; ack this sequence without changing anything.
    Replay,
}

/// Global ingest counters.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Reports processed.
    pub reports: AtomicU64,
    /// Reports ignored as replays.
    pub replays: AtomicU64,
    /// Counter resets (epoch changes of a known agent).
    pub resets: AtomicU64,
    /// Reports rejected as invalid.
    pub invalid: AtomicU64,
    /// Endpoints processed.
    pub endpoints: AtomicU64,
}

/// A report checked and parsed, ready to apply. Reused across reports of a
/// stream to avoid allocating.
#[derive(Default)]
pub struct Parsed {
    eps: Vec<(EpKey, usize)>,
    listeners: Vec<(IpAddr, u16, usize)>,
    addresses: Vec<IpAddr>,
}

fn dir_of(d: i32) -> Option<Dir> {
    match v1::Direction::try_from(d) {
        Ok(v1::Direction::Serves) => Some(Dir::Serves),
        Ok(v1::Direction::SendsTo) => Some(Dir::SendsTo),
        _ => None,
    }
}

/// Checks that a report names its agent: node name, run and sequence.
/// Without them the collector cannot tell whose report it rejects, so the
/// stream ends; any other fault rejects just that report.
pub fn validate_identity(r: &AgentReport) -> Result<(), InvalidReport> {
    let bad = |s: String| Err(InvalidReport(s));
    let node = r.node_name.as_str();
    if node.trim().is_empty() {
        return bad(
            "report has an empty node_name: start the agent with --node-name NAME (or a host name)"
                .into(),
        );
    }
    if node.len() > 253 || node.chars().any(|c| c.is_control()) {
        return bad(format!(
            "node_name {:?} is not a usable name (longer than 253 bytes or with control characters): set --node-name to the node's host name",
            node.chars().take(64).collect::<String>()
        ));
    }
    if r.agent_run == 0 {
        return bad(format!(
            "report from {node} has agent_run 0: the run id must be non-zero (random per agent start)"
        ));
    }
    if r.sequence == 0 {
        return bad(format!(
            "report from {node} has sequence 0: sequences start at 1 within a run"
        ));
    }
    Ok(())
}

/// Checks a report without touching any state.
pub fn validate(r: &AgentReport, out: &mut Parsed) -> Result<(), InvalidReport> {
    let bad = |s: String| Err(InvalidReport(s));
    out.eps.clear();
    out.listeners.clear();
    out.addresses.clear();
    validate_identity(r)?;
    let node = r.node_name.as_str();
    if !(r.interval_seconds.is_finite() && (0.0..=3600.0).contains(&r.interval_seconds)) {
        return bad(format!(
            "report from {node} has interval_seconds {}: it must be between 0 and 3600 (the agent's --interval)",
            r.interval_seconds
        ));
    }
    if let Some(c) = &r.cpu
        && !(c.utilization.is_finite() && (0.0..=1.0001).contains(&c.utilization))
    {
        return bad(format!(
            "report from {node} has cpu.utilization {}: it must be a fraction between 0 and 1",
            c.utilization
        ));
    }
    if r.endpoints.len() > MAX_ENDPOINTS {
        return bad(format!(
            "report from {node} has {} endpoints, more than the collector's limit of {MAX_ENDPOINTS}: lower the agent's map size",
            r.endpoints.len()
        ));
    }
    if r.listeners.len() > MAX_LISTENERS {
        return bad(format!(
            "report from {node} has {} listeners, more than the limit of {MAX_LISTENERS}",
            r.listeners.len()
        ));
    }
    for (i, e) in r.endpoints.iter().enumerate() {
        let Ok(addr) = e.address.parse::<IpAddr>() else {
            return bad(format!(
                "report from {node}: endpoint {i} has address {:?}, which is not an IP address (write \"10.0.0.11\" or \"fd00::11\")",
                e.address.chars().take(64).collect::<String>()
            ));
        };
        let addr = canonical(addr);
        if e.port == 0 || e.port > 65535 {
            return bad(format!(
                "report from {node}: endpoint {addr} has port {}, outside 1..=65535",
                e.port
            ));
        }
        let Some(dir) = dir_of(e.direction) else {
            return bad(format!(
                "report from {node}: endpoint {addr}:{} has no direction: set SERVES or SENDS_TO",
                e.port
            ));
        };
        if let Some(t) = &e.totals
            && (t.conns_closed > t.conns_opened.saturating_add(1 << 40))
        {
            return bad(format!(
                "report from {node}: endpoint {addr}:{} closed {} connections but opened only {}: absurd totals",
                e.port, t.conns_closed, t.conns_opened
            ));
        }
        if e.service.len() > 256 {
            return bad(format!(
                "report from {node}: endpoint {addr}:{} has a service label longer than 256 bytes",
                e.port
            ));
        }
        out.eps.push((
            EpKey {
                addr,
                port: e.port as u16,
                dir,
                proto: e.protocol,
            },
            i,
        ));
    }
    // Duplicate keys would make deltas ambiguous.
    if out.eps.len() > 1 {
        let mut keys: Vec<EpKey> = out.eps.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable_by_key(|k| (k.addr, k.port, k.dir, k.proto));
        if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
            return bad(format!(
                "report from {node} lists endpoint {}:{} ({:?}) twice: each endpoint must appear once",
                w[0].addr, w[0].port, w[0].dir
            ));
        }
    }
    for (i, l) in r.listeners.iter().enumerate() {
        let Ok(addr) = l.address.parse::<IpAddr>() else {
            return bad(format!(
                "report from {node}: listener {i} has address {:?}, which is not an IP address",
                l.address.chars().take(64).collect::<String>()
            ));
        };
        if l.port == 0 || l.port > 65535 {
            return bad(format!(
                "report from {node}: listener {addr} has port {}, outside 1..=65535",
                l.port
            ));
        }
        out.listeners.push((canonical(addr), l.port as u16, i));
    }
    if r.node_addresses.len() > MAX_LISTENERS {
        return bad(format!(
            "report from {node} has {} node addresses, more than the limit of {MAX_LISTENERS}",
            r.node_addresses.len()
        ));
    }
    for a in &r.node_addresses {
        let Ok(addr) = a.parse::<IpAddr>() else {
            return bad(format!(
                "report from {node}: node address {:?} is not an IP address",
                a.chars().take(64).collect::<String>()
            ));
        };
        out.addresses.push(canonical(addr));
    }
    out.addresses.sort_unstable();
    out.addresses.dedup();
    Ok(())
}

/// IPv4-mapped IPv6 addresses as plain IPv4.
pub fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

impl AgentState {
    fn new(node: Arc<str>) -> Self {
        Self {
            node,
            epoch: 0,
            run: 0,
            last_seq: 0,
            last_taken_at: None,
            last_received: Instant::now(),
            last_received_wall: SystemTime::now(),
            interval: 0.0,
            version: String::new(),
            endpoints: FxHashMap::default(),
            listeners: Vec::new(),
            addresses: Vec::new(),
            cpu: None,
            generation: 0,
            resets: 0,
            replays: 0,
            endpoint_count: 0,
            reset_pending: true,
            covered: 0.0,
            stream: 0,
        }
    }

    /// Applies a validated report (`p` from [`validate`] on the same report).
    pub fn apply(&mut self, r: &AgentReport, p: &Parsed, counters: &IngestCounters) -> Applied {
        if r.agent_run == self.run && r.sequence <= self.last_seq {
            self.replays += 1;
            counters.replays.fetch_add(1, Relaxed);
            return Applied::Replay;
        }
        let first = self.generation == 0;
        let new_epoch = !first && r.agent_epoch != self.epoch;
        if new_epoch || first {
            // Counters restarted (or we have no baseline yet): every total
            // becomes the new baseline; this tick's deltas are unknown.
            self.endpoints.clear();
            self.reset_pending = true;
            self.covered = 0.0;
            if new_epoch {
                self.resets += 1;
                counters.resets.fetch_add(1, Relaxed);
            }
        }
        if !(first || new_epoch) {
            // The time this report covers, by the agent's clock.
            let dt = match (self.last_taken_at, r.taken_at) {
                (Some(a), Some(b)) => {
                    (b.seconds - a.seconds) as f64 + f64::from(b.nanos - a.nanos) / 1e9
                }
                _ => 0.0,
            };
            self.covered += if dt > 0.0 && dt <= 3600.0 {
                dt
            } else if r.interval_seconds > 0.0 {
                r.interval_seconds
            } else {
                1.0
            };
        }
        self.epoch = r.agent_epoch;
        self.run = r.agent_run;
        self.last_seq = r.sequence;
        self.last_taken_at = r.taken_at;
        self.last_received = Instant::now();
        self.last_received_wall = SystemTime::now();
        self.interval = r.interval_seconds;
        if self.version != r.agent_version {
            self.version.clone_from(&r.agent_version);
        }
        self.cpu = r.cpu.map(|c| c.utilization.clamp(0.0, 1.0));
        self.generation += 1;
        let generation = self.generation;
        let baseline_only = first || new_epoch;
        for &(key, i) in &p.eps {
            let e = &r.endpoints[i];
            let t = e.totals.unwrap_or_default();
            let service = (!e.service.is_empty()).then_some(e.service.as_str());
            match self.endpoints.get_mut(&key) {
                Some(s) => {
                    if t.conns_opened < s.opened
                        || t.bytes_rx < s.bytes_rx
                        || t.bytes_tx < s.bytes_tx
                    {
                        // Went backwards within an epoch (the kernel evicted
                        // and re-created the entry): new baseline, no delta.
                        s.reset = true;
                    } else {
                        let d = orient(
                            key.dir,
                            t.conns_opened - s.opened,
                            t.bytes_rx - s.bytes_rx,
                            t.bytes_tx - s.bytes_tx,
                        );
                        s.total = s.total.saturating_add(d.conns);
                        s.pending.add(d);
                    }
                    s.opened = t.conns_opened;
                    s.bytes_rx = t.bytes_rx;
                    s.bytes_tx = t.bytes_tx;
                    s.active = e.active_connections;
                    s.gen_seen = generation;
                    if s.service.as_deref() != service {
                        s.service = service.map(Arc::from);
                    }
                }
                None => {
                    // A new endpoint of a known epoch appeared since the
                    // previous report: its totals are new traffic.
                    let pending = if baseline_only {
                        Delta::default()
                    } else {
                        orient(key.dir, t.conns_opened, t.bytes_rx, t.bytes_tx)
                    };
                    self.endpoints.insert(
                        key,
                        EpState {
                            service: service.map(Arc::from),
                            opened: t.conns_opened,
                            bytes_rx: t.bytes_rx,
                            bytes_tx: t.bytes_tx,
                            active: e.active_connections,
                            pending,
                            rate: None,
                            carry: [0.0; 3],
                            total: pending.conns,
                            reset: false,
                            gen_seen: generation,
                        },
                    );
                }
            }
        }
        if self.endpoints.len() != p.eps.len() {
            self.endpoints.retain(|_, s| s.gen_seen == generation);
        }
        self.endpoint_count = p.eps.len() as u32;
        let same = self.listeners.len() == p.listeners.len()
            && self
                .listeners
                .iter()
                .zip(&p.listeners)
                .all(|(a, &(addr, port, i))| {
                    a.addr == addr && a.port == port && *a.service == *r.listeners[i].service
                });
        if !same {
            self.listeners = p
                .listeners
                .iter()
                .map(|&(addr, port, i)| ListenerInfo {
                    addr,
                    port,
                    service: Arc::from(r.listeners[i].service.as_str()),
                })
                .collect();
        }
        if self.addresses != p.addresses {
            self.addresses.clone_from(&p.addresses);
        }
        counters.reports.fetch_add(1, Relaxed);
        counters.endpoints.fetch_add(p.eps.len() as u64, Relaxed);
        Applied::New { reset: new_epoch }
    }

    /// Refuses a report from another agent process using the same node
    /// name while the current one is live: two agents under one name would
    /// turn each other's counters into endless resets.
    pub fn check_owner(&self, stream: u64, r: &AgentReport, now: Instant) -> Result<(), String> {
        let live = self.interval.max(1.0) * 2.0;
        if self.stream != 0
            && self.stream != stream
            && self.run != r.agent_run
            && self.age(now) < live
        {
            return Err(format!(
                "node name {:?} is already reporting from another agent process (run {}, last report {:.1}s ago): \
                 give every agent a unique --node-name (this one is run {})",
                r.node_name,
                self.run,
                self.age(now),
                r.agent_run
            ));
        }
        Ok(())
    }

    /// Records which stream delivers this agent's reports.
    pub fn set_stream(&mut self, stream: u64) {
        self.stream = stream;
    }

    /// The last processed sequence of the current run.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The current run.
    pub fn run(&self) -> u64 {
        self.run
    }

    /// Whether the agent reported within three of its intervals (at least
    /// three of `tick` when it does not say).
    pub fn fresh(&self, now: Instant, tick: f64) -> bool {
        let interval = if self.interval > 0.0 {
            self.interval
        } else {
            tick
        };
        now.saturating_duration_since(self.last_received)
            .as_secs_f64()
            <= 3.0 * interval.max(tick) + 0.05
    }

    /// Seconds since the last report.
    pub fn age(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.last_received)
            .as_secs_f64()
    }

    /// Takes this tick's view of the agent.
    ///
    /// Agents report on their own clocks, so a tick may hold no report of
    /// an agent, or two. Handing raw deltas to the detector would then make
    /// a healthy member look dark for a tick (and double the next one). So
    /// each endpoint's counts for the tick are its *rate*, measured over
    /// the agent seconds its reports since the previous tick cover, times
    /// the tick length (fractions carried over). A fresh agent with no
    /// report this tick keeps its last measured rate. An endpoint whose
    /// rate is not known yet (first report, counter reset) is unknown for
    /// the tick, never zero.
    pub fn take_tick(&mut self, now: Instant, tick: f64, out: &mut AgentTick) {
        out.node = self.node.clone();
        out.fresh = self.fresh(now, tick);
        out.age = self.age(now);
        out.reset = std::mem::take(&mut self.reset_pending);
        out.cpu = self.cpu;
        out.endpoints.clear();
        out.endpoints.reserve(self.endpoints.len());
        let covered = std::mem::take(&mut self.covered);
        for (k, s) in &mut self.endpoints {
            let p = std::mem::take(&mut s.pending);
            if covered > 0.0 {
                s.rate = Some([
                    p.conns as f64 / covered,
                    p.bytes_in as f64 / covered,
                    p.bytes_out as f64 / covered,
                ]);
            }
            let mut delta = Delta::default();
            if let Some(r) = s.rate {
                let mut emit = [0u64; 3];
                for i in 0..3 {
                    s.carry[i] += r[i] * tick;
                    let e = s.carry[i].floor().max(0.0);
                    s.carry[i] -= e;
                    emit[i] = e as u64;
                }
                delta = Delta {
                    conns: emit[0],
                    bytes_in: emit[1],
                    bytes_out: emit[2],
                };
            }
            out.endpoints.push(TickEndpoint {
                key: *k,
                service: s.service.clone(),
                delta,
                rate: s.rate.unwrap_or_default(),
                total: s.total,
                cumulative: s.opened,
                reset: std::mem::take(&mut s.reset) || s.rate.is_none(),
                active: s.active,
            });
        }
        if out.listeners != self.listeners {
            out.listeners.clone_from(&self.listeners);
        }
        if out.addresses != self.addresses {
            out.addresses.clone_from(&self.addresses);
        }
    }

    /// The agent's status for ListAgents.
    pub fn status(&self, now: Instant, tick: f64) -> v1::AgentStatus {
        v1::AgentStatus {
            node_name: self.node.to_string(),
            agent_epoch: self.epoch,
            agent_run: self.run,
            last_sequence: self.last_seq,
            last_report_at: self.last_taken_at,
            age_seconds: self.age(now),
            fresh: self.fresh(now, tick),
            endpoints: self.endpoint_count,
            resets: self.resets,
            replays_ignored: self.replays,
            agent_version: self.version.clone(),
        }
    }

    /// When the collector last received a report (wall clock).
    pub fn last_received_wall(&self) -> SystemTime {
        self.last_received_wall
    }
}

/// Orients an endpoint's counter deltas to the backend: a SERVES endpoint's
/// received bytes went into the backend, a SENDS_TO endpoint's sent bytes
/// did.
fn orient(dir: Dir, conns: u64, rx: u64, tx: u64) -> Delta {
    match dir {
        Dir::Serves => Delta {
            conns,
            bytes_in: rx,
            bytes_out: tx,
        },
        Dir::SendsTo => Delta {
            conns,
            bytes_in: tx,
            bytes_out: rx,
        },
    }
}

/// One endpoint as the tick sees it.
#[derive(Clone, Debug)]
pub struct TickEndpoint {
    /// Which endpoint.
    pub key: EpKey,
    /// Its service label.
    pub service: Option<Arc<str>>,
    /// Counts for this tick (rate times tick length), oriented to the
    /// backend.
    pub delta: Delta,
    /// Measured per-second rates: new connections, bytes in, bytes out.
    pub rate: [f64; 3],
    /// Exact new connections since the collector first saw it.
    pub total: u64,
    /// New connections as the agent's counter reports it (since its
    /// epoch; the kernel's total).
    pub cumulative: u64,
    /// Its counters went backwards or its rate is not known yet: the
    /// tick's count is unknown.
    pub reset: bool,
    /// Connections open now.
    pub active: u64,
}

/// One agent as the tick sees it.
#[derive(Clone, Debug, Default)]
pub struct AgentTick {
    /// Node name.
    pub node: Arc<str>,
    /// Reported within three intervals.
    pub fresh: bool,
    /// Seconds since the last report.
    pub age: f64,
    /// Counters restarted (or first report) since the previous tick.
    pub reset: bool,
    /// CPU utilisation.
    pub cpu: Option<f64>,
    /// Every endpoint.
    pub endpoints: Vec<TickEndpoint>,
    /// Listening sockets.
    pub listeners: Vec<ListenerInfo>,
    /// The node's own addresses, sorted.
    pub addresses: Vec<IpAddr>,
}

type Shard = RwLock<HashMap<Arc<str>, Arc<Mutex<AgentState>>>>;

/// Every agent that has reported, by node name.
pub struct Registry {
    shards: Vec<Shard>,
    /// Ingest counters.
    pub counters: IngestCounters,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            counters: IngestCounters::default(),
        }
    }
}

fn shard_of(node: &str) -> usize {
    // FNV-1a: cheap, stable.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in node.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h as usize) % SHARDS
}

impl Registry {
    /// The state of `node`, created on first use.
    pub fn get_or_insert(&self, node: &str) -> Arc<Mutex<AgentState>> {
        let shard = &self.shards[shard_of(node)];
        if let Some(s) = shard.read().unwrap_or_else(|e| e.into_inner()).get(node) {
            return s.clone();
        }
        let mut w = shard.write().unwrap_or_else(|e| e.into_inner());
        w.entry(Arc::from(node))
            .or_insert_with_key(|k| Arc::new(Mutex::new(AgentState::new(k.clone()))))
            .clone()
    }

    /// Every agent's state handle.
    pub fn all(&self) -> Vec<Arc<Mutex<AgentState>>> {
        let mut v = Vec::new();
        for s in &self.shards {
            v.extend(
                s.read()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .cloned(),
            );
        }
        v
    }

    /// Forgets agents silent for longer than `secs`.
    pub fn forget_older_than(&self, now: Instant, secs: f64) -> Vec<Arc<str>> {
        let mut gone = Vec::new();
        for s in &self.shards {
            let mut w = s.write().unwrap_or_else(|e| e.into_inner());
            w.retain(|k, st| {
                let keep = st.lock().map(|st| st.age(now) <= secs).unwrap_or(true);
                if !keep {
                    gone.push(k.clone());
                }
                keep
            });
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(addr: &str, port: u32, dir: v1::Direction, opened: u64) -> v1::Endpoint {
        v1::Endpoint {
            address: addr.into(),
            port,
            direction: dir as i32,
            protocol: v1::Protocol::Tcp as i32,
            service: "web".into(),
            totals: Some(v1::Counters {
                conns_opened: opened,
                bytes_rx: opened * 10,
                bytes_tx: opened * 100,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn report(epoch: u64, seq: u64, opened: u64) -> AgentReport {
        AgentReport {
            node_name: "n1".into(),
            agent_epoch: epoch,
            agent_run: 7,
            sequence: seq,
            interval_seconds: 1.0,
            endpoints: vec![ep("10.0.0.1", 80, v1::Direction::Serves, opened)],
            ..Default::default()
        }
    }

    fn apply(s: &mut AgentState, r: &AgentReport, c: &IngestCounters) -> Applied {
        let mut p = Parsed::default();
        validate(r, &mut p).unwrap();
        s.apply(r, &p, c)
    }

    #[test]
    fn deltas_replays_and_resets() {
        let c = IngestCounters::default();
        let mut s = AgentState::new("n1".into());
        let mut t = AgentTick::default();
        assert_eq!(
            apply(&mut s, &report(1, 1, 100), &c),
            Applied::New { reset: false }
        );
        s.take_tick(Instant::now(), 1.0, &mut t);
        assert!(t.reset);
        assert_eq!(t.endpoints[0].delta.conns, 0);
        apply(&mut s, &report(1, 2, 130), &c);
        assert_eq!(apply(&mut s, &report(1, 2, 130), &c), Applied::Replay);
        apply(&mut s, &report(1, 3, 150), &c);
        s.take_tick(Instant::now(), 1.0, &mut t);
        assert!(!t.reset);
        // Two reports (2 agent seconds) in one 1 s tick: the rate, not the
        // sum, so shares stay comparable across agents.
        assert_eq!(
            t.endpoints[0].delta,
            Delta {
                conns: 25,
                bytes_in: 250,
                bytes_out: 2500
            }
        );
        assert_eq!(t.endpoints[0].total, 50);
        assert_eq!(t.endpoints[0].rate, [25.0, 250.0, 2500.0]);
        // No report this tick: the last rate holds (a late report is not a
        // dark member).
        s.take_tick(Instant::now(), 1.0, &mut t);
        assert_eq!(t.endpoints[0].delta.conns, 25);
        assert!(!t.reset && !t.endpoints[0].reset);
        // New epoch: counters start again, no negative delta.
        assert_eq!(
            apply(&mut s, &report(2, 4, 5), &c),
            Applied::New { reset: true }
        );
        s.take_tick(Instant::now(), 1.0, &mut t);
        assert!(t.reset);
        assert_eq!(t.endpoints[0].delta.conns, 0);
        apply(&mut s, &report(2, 5, 9), &c);
        s.take_tick(Instant::now(), 1.0, &mut t);
        assert_eq!(t.endpoints[0].delta.conns, 4);
        assert_eq!(c.replays.load(Relaxed), 1);
        assert_eq!(c.resets.load(Relaxed), 1);
    }

    #[test]
    fn invalid_reports_are_named() {
        let mut p = Parsed::default();
        let mut r = report(1, 1, 1);
        r.node_name.clear();
        assert!(validate(&r, &mut p).unwrap_err().0.contains("--node-name"));
        let mut r = report(1, 1, 1);
        r.endpoints[0].address = "nope".into();
        assert!(
            validate(&r, &mut p)
                .unwrap_err()
                .0
                .contains("not an IP address")
        );
        let mut r = report(1, 1, 1);
        r.interval_seconds = f64::NAN;
        assert!(validate(&r, &mut p).is_err());
        let mut r = report(1, 1, 1);
        r.endpoints.push(r.endpoints[0].clone());
        assert!(validate(&r, &mut p).unwrap_err().0.contains("twice"));
    }
}

//! The second ingest stage: one agent's counter state machine. A report
//! of the same epoch adds its counters' growth to each endpoint's pending
//! counts; a new epoch (or the first report) only sets the baseline; a
//! replay changes nothing; counters that went backwards are a reset.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Instant, SystemTime},
};

use evenflow_proto::v1::{self, AgentReport, Endpoint};

use super::{
    registry::IngestCounters,
    validate::{MIN_INTERVAL_SECONDS, Parsed},
};
use crate::fxhash::FxHashMap;

/// Numbers every agent layout (see [`AgentState::layout`]), across agents,
/// so two layouts never share a number.
static LAYOUTS: AtomicU64 = AtomicU64::new(1);

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
    /// Connection attempts that never opened or went unanswered (counted
    /// where the SYN left: the LB view): see [`attempts`].
    pub failed: u64,
}

impl Delta {
    pub(super) fn add(&mut self, o: Delta) {
        self.conns = self.conns.saturating_add(o.conns);
        self.bytes_in = self.bytes_in.saturating_add(o.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(o.bytes_out);
        self.failed = self.failed.saturating_add(o.failed);
    }
}

/// One endpoint's counters as its agent last reported them, and what the
/// collector derived from them since.
#[derive(Debug)]
pub(super) struct EpState {
    /// Which endpoint.
    pub(super) key: EpKey,
    /// Its service label.
    pub(super) service: Option<Arc<str>>,
    /// New connections, as the agent's counter reports them.
    pub(super) opened: u64,
    /// Bytes received, likewise.
    pub(super) bytes_rx: u64,
    /// Bytes sent, likewise.
    pub(super) bytes_tx: u64,
    /// Failed connection attempts, likewise.
    pub(super) failed: u64,
    /// Unanswered connection attempts, likewise.
    pub(super) unanswered: u64,
    /// Failed attempts counted unanswered first, likewise (`None` from an
    /// agent of before that counter).
    pub(super) failed_unanswered: Option<u64>,
    /// Attempts weighed when they were counted unanswered whose failures
    /// have not come (see [`attempts`]).
    pub(super) owed: u64,
    /// Connections open now.
    pub(super) active: u64,
    /// Counts since the last tick, oriented to the backend.
    pub(super) pending: Delta,
    /// Per-second rates (conns, bytes in, bytes out, failed attempts)
    /// over the reports of the last tick that had any; `None` until a
    /// report measured them.
    pub(super) rate: Option<[f64; 4]>,
    /// Fractional counts not yet handed to the detector.
    pub(super) carry: [f64; 4],
    /// New connections since the collector first saw the endpoint (exact).
    pub(super) total: u64,
    /// Failed attempts since the collector first saw the endpoint (exact).
    pub(super) failed_total: u64,
    /// Counters went backwards within the epoch since the last tick.
    pub(super) reset: bool,
    /// The agent's reports no longer list it, but it holds counts no tick
    /// has taken yet: the next tick takes them, then it goes.
    pub(super) departing: bool,
}

impl EpState {
    /// An endpoint first seen in a report, with `endpoint`'s totals as its
    /// counters; they are new traffic unless `baseline_only`.
    fn new(key: EpKey, endpoint: &Endpoint, baseline_only: bool) -> Self {
        let totals = endpoint.totals.unwrap_or_default();
        let mut owed = 0;
        let pending = if baseline_only {
            Delta::default()
        } else {
            orient(key.dir, &totals, &mut owed)
        };
        Self {
            key,
            service: label(endpoint).map(Arc::from),
            opened: totals.conns_opened,
            bytes_rx: totals.bytes_rx,
            bytes_tx: totals.bytes_tx,
            failed: totals.conns_failed,
            unanswered: totals.conns_unanswered,
            failed_unanswered: totals.conns_failed_unanswered,
            owed,
            active: endpoint.active_connections,
            pending,
            rate: None,
            carry: [0.0; 4],
            total: pending.conns,
            failed_total: if baseline_only {
                0
            } else {
                totals.conns_failed
            },
            reset: false,
            departing: false,
        }
    }

    /// The endpoint's next report: its counters' growth becomes pending
    /// counts. Returns whether its label changed.
    fn update(&mut self, endpoint: &Endpoint) -> bool {
        let totals = endpoint.totals.unwrap_or_default();
        if totals.conns_opened < self.opened
            || totals.bytes_rx < self.bytes_rx
            || totals.bytes_tx < self.bytes_tx
            || totals.conns_failed < self.failed
            || totals.conns_unanswered < self.unanswered
            || (totals.conns_failed_unanswered.zip(self.failed_unanswered))
                .is_some_and(|(now, then)| now < then)
        {
            // Went backwards within an epoch (the kernel evicted and
            // re-created the entry): new baseline, no delta.
            self.reset = true;
        } else {
            let growth = orient(
                self.key.dir,
                &v1::Counters {
                    conns_opened: totals.conns_opened - self.opened,
                    bytes_rx: totals.bytes_rx - self.bytes_rx,
                    bytes_tx: totals.bytes_tx - self.bytes_tx,
                    conns_failed: totals.conns_failed - self.failed,
                    conns_unanswered: totals.conns_unanswered - self.unanswered,
                    conns_failed_unanswered: totals
                        .conns_failed_unanswered
                        .zip(self.failed_unanswered)
                        .map(|(now, then)| now - then),
                    ..v1::Counters::default()
                },
                &mut self.owed,
            );
            self.total = self.total.saturating_add(growth.conns);
            self.failed_total = self
                .failed_total
                .saturating_add(totals.conns_failed - self.failed);
            self.pending.add(growth);
        }
        self.opened = totals.conns_opened;
        self.bytes_rx = totals.bytes_rx;
        self.bytes_tx = totals.bytes_tx;
        self.failed = totals.conns_failed;
        self.unanswered = totals.conns_unanswered;
        self.failed_unanswered = totals.conns_failed_unanswered;
        self.active = endpoint.active_connections;
        let service = label(endpoint);
        let relabelled = self.service.as_deref() != service;
        if relabelled {
            self.service = service.map(Arc::from);
        }
        relabelled
    }
}

/// An endpoint's service label, when it has one.
fn label(endpoint: &Endpoint) -> Option<&str> {
    (!endpoint.service.is_empty()).then_some(endpoint.service.as_str())
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
///
/// The fields ListAgents shows are readable across the service (the
/// conversion to `v1::AgentStatus` lives with the other conversions); the
/// rest belongs to this stage.
pub struct AgentState {
    /// Node name, shared with every tick's copy.
    pub(in crate::service) node: Arc<str>,
    /// Counter epoch (a new one means the agent's counters restarted).
    pub(in crate::service) epoch: u64,
    /// Agent process run id.
    pub(in crate::service) run: u64,
    /// Last processed sequence of the run.
    pub(in crate::service) last_seq: u64,
    /// When the agent took its last report.
    pub(in crate::service) last_taken_at: Option<prost_types::Timestamp>,
    last_received: Instant,
    last_received_wall: SystemTime,
    /// The agent's reporting interval, seconds.
    pub(super) interval: f64,
    /// The agent's version.
    pub(in crate::service) version: String,
    /// Every endpoint of the last report, in its order.
    pub(super) endpoints: Vec<EpState>,
    /// Listening sockets of the last report.
    pub(super) listeners: Vec<ListenerInfo>,
    /// The node's own addresses (sorted), for wildcard listeners.
    pub(super) addresses: Vec<IpAddr>,
    /// CPU utilisation, 0..1.
    pub(super) cpu: Option<f64>,
    /// The datapath accounting of the last report that carried it.
    pub(in crate::service) datapath: Option<v1::DatapathStats>,
    /// Reports applied (0: no baseline yet).
    generation: u64,
    /// Epoch changes seen.
    pub(in crate::service) resets: u64,
    /// Replays ignored.
    pub(in crate::service) replays: u64,
    /// Endpoints in the last report.
    pub(in crate::service) endpoint_count: u32,
    /// The epoch changed (or this is the first report) since the last tick:
    /// this tick's deltas are unknown.
    pub(super) reset_pending: bool,
    /// Agent seconds covered by the reports applied since the last tick.
    pub(super) covered: f64,
    /// The stream that applied the last report.
    stream: u64,
    /// What the pools stage builds from: the endpoints (and their order),
    /// their service labels, the listeners and the node addresses. A new
    /// number whenever one of them changes, so the tick can keep the pools
    /// it built while no agent's layout moved (`crate::service::pools`).
    pub(super) layout: u64,
    /// The registry forgot this state (the agent was silent longer than
    /// `--agent-retention`); set under its lock. A stream that kept the
    /// handle (the agent was paused, its connection open) must not report
    /// into it any more: the tick no longer reads it.
    pub(super) forgotten: bool,
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

impl AgentState {
    pub(super) fn new(node: Arc<str>) -> Self {
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
            endpoints: Vec::new(),
            listeners: Vec::new(),
            addresses: Vec::new(),
            cpu: None,
            datapath: None,
            generation: 0,
            resets: 0,
            replays: 0,
            endpoint_count: 0,
            reset_pending: true,
            covered: 0.0,
            stream: 0,
            layout: LAYOUTS.fetch_add(1, Relaxed),
            forgotten: false,
        }
    }

    /// Applies a validated report (`parsed` from
    /// [`super::validate::validate`] on the same report).
    pub fn apply(
        &mut self,
        report: &AgentReport,
        parsed: &Parsed,
        counters: &IngestCounters,
    ) -> Applied {
        if report.agent_run == self.run && report.sequence <= self.last_seq {
            self.replays += 1;
            counters.replays.fetch_add(1, Relaxed);
            return Applied::Replay;
        }
        let first = self.generation == 0;
        let new_epoch = !first && report.agent_epoch != self.epoch;
        if new_epoch || first {
            // Counters restarted (or we have no baseline yet): every total
            // becomes the new baseline; this tick's deltas are unknown.
            self.endpoints.clear();
            self.relayout();
            self.reset_pending = true;
            self.covered = 0.0;
            if new_epoch {
                self.resets += 1;
                counters.resets.fetch_add(1, Relaxed);
            }
        } else {
            self.covered += self.seconds_covered(report);
        }
        self.record_report(report);
        self.apply_endpoints(report, parsed, first || new_epoch);
        self.apply_listeners(report, parsed);
        counters.reports.fetch_add(1, Relaxed);
        counters
            .endpoints
            .fetch_add(parsed.endpoints.len() as u64, Relaxed);
        Applied::New { reset: new_epoch }
    }

    /// The time a report of the current epoch covers, by the agent's clock
    /// (its interval when the clock says nothing usable). The clock is the
    /// node's wall clock, which the reports' timestamps let span reports
    /// the agent never sent; but a step back (NTP) can leave two reports
    /// microseconds apart, whose growth over that would read as millions a
    /// second. So a span under half the interval the report states (its
    /// own monotonic measure), or under the shortest interval, is not used.
    fn seconds_covered(&self, report: &AgentReport) -> f64 {
        let elapsed = match (self.last_taken_at, report.taken_at) {
            // In i128: any two agent timestamps, however far apart (the
            // clock is the agent's), differ without overflow.
            (Some(a), Some(b)) => {
                let nanos = (i128::from(b.seconds) - i128::from(a.seconds)) * 1_000_000_000
                    + (i128::from(b.nanos) - i128::from(a.nanos));
                nanos as f64 / 1e9
            }
            _ => 0.0,
        };
        let shortest = (report.interval_seconds / 2.0).max(MIN_INTERVAL_SECONDS);
        if (shortest..=3600.0).contains(&elapsed) {
            elapsed
        } else if report.interval_seconds > 0.0 {
            report.interval_seconds
        } else {
            1.0
        }
    }

    /// The report's identity, timing, version, CPU and datapath accounting.
    fn record_report(&mut self, report: &AgentReport) {
        self.epoch = report.agent_epoch;
        self.run = report.agent_run;
        self.last_seq = report.sequence;
        self.last_taken_at = report.taken_at;
        self.last_received = Instant::now();
        self.last_received_wall = SystemTime::now();
        self.interval = report.interval_seconds;
        if self.version != report.agent_version {
            self.version.clone_from(&report.agent_version);
        }
        self.cpu = report.cpu.map(|c| c.utilization.clamp(0.0, 1.0));
        if report.datapath.is_some() {
            self.datapath = report.datapath;
        }
        self.generation += 1;
    }

    /// Each endpoint's counters: growth since the last report becomes
    /// pending counts, unless `baseline_only` (first report, new epoch).
    /// Endpoints the report no longer lists are forgotten.
    fn apply_endpoints(&mut self, report: &AgentReport, parsed: &Parsed, baseline_only: bool) {
        // An agent lists the same endpoints in the same order report after
        // report: then each state is the report's endpoint at its place.
        let same = self.endpoints.len() == parsed.endpoints.len()
            && (self.endpoints.iter())
                .zip(&parsed.endpoints)
                .all(|(state, (key, _))| state.key == *key && !state.departing);
        if same {
            let mut relabelled = false;
            for (state, &(_, index)) in self.endpoints.iter_mut().zip(&parsed.endpoints) {
                relabelled |= state.update(&report.endpoints[index]);
            }
            if relabelled {
                self.relayout();
            }
        } else {
            self.lay_out_endpoints(report, parsed, baseline_only);
        }
        self.endpoint_count = parsed.endpoints.len() as u32;
    }

    /// The endpoints in the report's order: known ones updated, new ones
    /// added (a new endpoint of a known epoch appeared since the previous
    /// report: its totals are new traffic), the ones it no longer lists
    /// forgotten — after the next tick when they hold counts no tick has
    /// taken yet (an agent drops an endpoint it retired once the collector
    /// acknowledged its last totals, which can be before a tick).
    fn lay_out_endpoints(&mut self, report: &AgentReport, parsed: &Parsed, baseline_only: bool) {
        let mut known: FxHashMap<EpKey, EpState> = (self.endpoints.drain(..))
            .map(|state| (state.key, state))
            .collect();
        for &(key, index) in &parsed.endpoints {
            let endpoint = &report.endpoints[index];
            let state = match known.remove(&key) {
                Some(mut state) if !state.departing => {
                    state.update(endpoint);
                    state
                }
                // Back before its departure was ticked: new, as any
                // endpoint that comes back, its untaken counts kept.
                Some(gone) => {
                    let mut state = EpState::new(key, endpoint, baseline_only);
                    state.pending.add(gone.pending);
                    state.total = state.total.saturating_add(gone.total);
                    state.failed_total = state.failed_total.saturating_add(gone.failed_total);
                    state
                }
                None => EpState::new(key, endpoint, baseline_only),
            };
            self.endpoints.push(state);
        }
        let mut departing: Vec<EpState> = (known.into_values())
            .filter(|state| state.pending != Delta::default())
            .collect();
        departing.sort_unstable_by_key(|s| (s.key.addr, s.key.port, s.key.dir, s.key.proto));
        for mut state in departing {
            state.departing = true;
            self.endpoints.push(state);
        }
        self.relayout();
    }

    /// Forgets the departing endpoints, once a tick has taken their counts.
    pub(super) fn drop_departed(&mut self) {
        let before = self.endpoints.len();
        self.endpoints.retain(|state| !state.departing);
        if self.endpoints.len() != before {
            self.relayout();
        }
    }

    /// The report's listeners and node addresses, replaced only when they
    /// changed (they rarely do).
    fn apply_listeners(&mut self, report: &AgentReport, parsed: &Parsed) {
        let same =
            self.listeners.len() == parsed.listeners.len()
                && self.listeners.iter().zip(&parsed.listeners).all(
                    |(known, &(addr, port, index))| {
                        known.addr == addr
                            && known.port == port
                            && *known.service == *report.listeners[index].service
                    },
                );
        if !same {
            self.listeners = parsed
                .listeners
                .iter()
                .map(|&(addr, port, index)| ListenerInfo {
                    addr,
                    port,
                    service: Arc::from(report.listeners[index].service.as_str()),
                })
                .collect();
            self.relayout();
        }
        if self.addresses != parsed.addresses {
            self.addresses.clone_from(&parsed.addresses);
            self.relayout();
        }
    }

    /// Gives the agent a new layout number: what the pools stage builds
    /// from changed.
    fn relayout(&mut self) {
        self.layout = LAYOUTS.fetch_add(1, Relaxed);
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

    /// Stream `stream` has ended: if it delivered this agent's reports,
    /// no live stream does now.
    pub fn release_stream(&mut self, stream: u64) {
        if self.stream == stream {
            self.stream = 0;
        }
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

    /// When the collector last received a report (wall clock).
    pub fn last_received_wall(&self) -> SystemTime {
        self.last_received_wall
    }
}

/// Orients an endpoint's counter deltas to the backend: a SERVES endpoint's
/// received bytes went into the backend, a SENDS_TO endpoint's sent bytes
/// did.
fn orient(dir: Dir, c: &v1::Counters, owed: &mut u64) -> Delta {
    let (bytes_in, bytes_out) = match dir {
        Dir::Serves => (c.bytes_rx, c.bytes_tx),
        Dir::SendsTo => (c.bytes_tx, c.bytes_rx),
    };
    Delta {
        conns: c.conns_opened,
        bytes_in,
        bytes_out,
        failed: attempts(c, owed),
    }
}

/// The failed attempts a report's growth `c` weighs, each once, as soon
/// as it is known. An attempt nobody answers is counted unanswered
/// within seconds and failed only when it is given up (a proxy's connect
/// timeout, the kernel's SYN retries, conntrack's two minutes), so it
/// weighs when it is counted unanswered, and is `owed` a failure that
/// weighs nothing when it comes (the agent says which failures it
/// counted unanswered first); every other failure (a refused attempt,
/// one given up within its first second) weighs when it comes. Weighing
/// the failures again would replay an outage minutes after it ended: a
/// pool whose clients went away meanwhile read as one whose every
/// attempt fails. A node that opened connections to the endpoint in the
/// interval reaches it: its unanswered attempts are SYNs lost and
/// answered on a retry, no failure, and weigh nothing then, so those
/// that fail after all weigh at their failure.
///
/// An agent of before `conns_failed_unanswered` cannot tell the two
/// apart: its report weighs its failures, or its unanswered attempts
/// where it opened nothing if they are more (in a steady outage, the
/// same number: the attempts given up now went unanswered two minutes
/// ago), and an outage's last attempts weigh again when they are given
/// up.
fn attempts(c: &v1::Counters, owed: &mut u64) -> u64 {
    let unanswered = if c.conns_opened == 0 {
        c.conns_unanswered
    } else {
        0
    };
    let Some(said) = c.conns_failed_unanswered else {
        return c.conns_failed.max(unanswered);
    };
    *owed = owed.saturating_add(unanswered);
    let paid = said.min(*owed).min(c.conns_failed);
    *owed -= paid;
    (c.conns_failed - paid).saturating_add(unanswered)
}

//! Per-pool state and one tick of judgement.

use std::{collections::HashMap, sync::Arc};

use super::{
    Settings, chi2_bound,
    cut_off::{Attempts, CutOff, CutOffNode},
    joining::{Join, Joins, ViewTick},
    left_out::{self, LeftOut},
    load::{
        Context, LoadState, LoadSummary, LoadVerdict, ROBUST_FROM, apart_from_outliers,
        binomial_score_apart,
    },
    reweight::{Count, Reweights},
    senders::Senders,
    z_bound,
};

/// Which observers the numbers come from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum View {
    /// The backend's own agent (SERVES).
    Server,
    /// The pool's load balancers' agents (SENDS_TO), summed.
    Lb,
}

/// One view's numbers for one member, this tick.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewInput {
    /// Every observer of this view reported within three intervals.
    pub fresh: bool,
    /// An observer's counters restarted this tick: the delta is unknown.
    pub reset: bool,
    /// New connections this tick.
    pub new_conns: u64,
    /// Payload bytes into the member this tick.
    pub bytes_in: u64,
    /// Payload bytes out of the member this tick.
    pub bytes_out: u64,
    /// Connection attempts this tick that never opened (refused,
    /// unanswered, abandoned): counted where the SYN left, so in the LB
    /// view only.
    pub failed: u64,
    /// Connections open now.
    pub active: u64,
}

/// One member's input.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberInput {
    /// "address:port".
    pub id: String,
    /// Relative weight (> 0).
    pub weight: f64,
    /// Expected to receive no new connections.
    pub draining: bool,
    /// With `draining`: out of the balancer's rotation because its
    /// orchestrator says it is not ready (Kubernetes), rather than drained
    /// by an operator. Judged alike; said differently.
    pub not_ready: bool,
    /// This tick's new connections in the LB view by load balancer node,
    /// filled while the pool has several load balancer nodes or the member
    /// is out of rotation (empty otherwise): one balancer that leaves the
    /// member out is found by its own split, and a DRAINING_VIOLATION
    /// names the nodes that still send to it. One node is one `Arc` (the
    /// agent's own name, shared) in every member's list of a tick: a
    /// node's sends are grouped by it.
    pub lb_by_node: Vec<(Arc<str>, u64)>,
    /// This tick's failed attempts to it by load balancer node, filled
    /// while the pool has several load balancer nodes (empty otherwise):
    /// one node cut off from the pool is found by its own attempts (see
    /// `detect/cut_off.rs`).
    pub lb_failed_by_node: Vec<(Arc<str>, u64)>,
    /// The server view, when the member's own agent is known.
    pub server: Option<ViewInput>,
    /// The LB view, when the pool has load balancer agents.
    pub lb: Option<ViewInput>,
    /// The member node's CPU utilisation, 0..1.
    pub cpu: Option<f64>,
    /// Whether its own (fresh) agent lists a socket listening on its
    /// address and port: `None` when no agent can say (the address is not
    /// its node's, or the agent listed no listener at all). A member that
    /// listened and no longer does is DOWN, not judged on its share.
    pub listening: Option<bool>,
}

/// Why a member is out of its balancer's rotation.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum OutOfRotation {
    /// Drained by its operator (pool file, balancer, terminating Pod).
    Draining,
    /// Its orchestrator says it is not ready.
    NotReady,
}

impl OutOfRotation {
    /// The state, in a reason's words.
    pub(super) fn state(self) -> &'static str {
        match self {
            OutOfRotation::Draining => "draining",
            OutOfRotation::NotReady => "not ready",
        }
    }

    /// Who still sends it new connections, when it gets them.
    fn sender(self) -> &'static str {
        match self {
            OutOfRotation::Draining => "its balancer still sends to it",
            OutOfRotation::NotReady => {
                "a balancer still sends to it (a kube-proxy whose rules are stale, or clients that reach the Pod directly)"
            }
        }
    }
}

impl AsRef<MemberInput> for MemberInput {
    fn as_ref(&self) -> &MemberInput {
        self
    }
}

impl MemberInput {
    /// Why it is expected to get no new connections, in a reason's words
    /// (`None` when it is expected to get its share).
    pub(super) fn out_of_rotation(&self) -> Option<OutOfRotation> {
        match (self.draining, self.not_ready) {
            (false, _) => None,
            (true, false) => Some(OutOfRotation::Draining),
            (true, true) => Some(OutOfRotation::NotReady),
        }
    }

    /// Its input in `view`.
    pub(super) fn view(&self, view: View) -> Option<ViewInput> {
        match view {
            View::Server => self.server,
            View::Lb => self.lb,
        }
    }

    /// Its input in `view` when its figures are this tick's: observed
    /// fresh, counters not reset (a stale observer's are its last rate
    /// carried on, a reset tick's delta is unknown).
    pub(super) fn counted(&self, view: View) -> Option<ViewInput> {
        self.view(view).filter(|v| v.fresh && !v.reset)
    }

    /// Its input in `view` when it is eligible for a share: counted,
    /// serving with a weight, not down, and not joining.
    pub(super) fn eligible(&self, view: View, presence: &Presence) -> Option<ViewInput> {
        self.counted(view).filter(|_| {
            !self.draining
                && self.weight > 0.0
                && presence.down_since(&self.id).is_none()
                && presence.joining(&self.id).is_none()
        })
    }
}

/// How a pool's balancer picks the member for each new connection, as its
/// users declare it (pool file `balancing`, Kubernetes annotation
/// `evenflow.io/balancing`). It decides what the split of new connections
/// can be judged against.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Balancing {
    /// By weight, whatever the members hold (round robin, random, hashing,
    /// kube-proxy): new connections are expected to follow the weights.
    #[default]
    Weighted,
    /// To the member holding the fewest open connections for its weight
    /// (HAProxy `leastconn`, nginx `least_conn`, Envoy `LEAST_REQUEST`,
    /// IPVS `wlc`, or `lc` with equal weights).
    /// A member that restarted or joined holds none, so it gets every new
    /// connection until it catches up while the others get none: the split
    /// of new connections is the balancer working, not a fault, and only
    /// the open connections it evens out are judged.
    LeastConnections,
    /// Each client to the same member: a hash of its address or a session
    /// affinity (HAProxy `balance source`, nginx `ip_hash` or `hash`,
    /// Kubernetes `sessionAffinity: ClientIP`), or each balancer to the
    /// members beside it (Kubernetes `externalTrafficPolicy: Local`).
    /// Across the pool's clients the split follows the weights and is
    /// judged so; one balancer with few clients sends to few members by
    /// design, so one balancer's own split is not judged.
    Sticky,
}

impl Balancing {
    /// The values users may write, as they write them.
    pub const ALLOWED: &'static str = "\"least-connections\", \"sticky\" or \"weighted\"";

    /// Said with the verdict of a pool so declared: why its new
    /// connections raise no ZERO, SKEW or CONCENTRATION.
    pub const LEAST_CONNECTIONS_NOTE: &'static str =
        "least-connections: new connections are not judged, open connections are";

    /// The hint a user wrote (`least-connections`, `weighted`), if it is
    /// one.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim() {
            "least-connections" => Some(Self::LeastConnections),
            "sticky" => Some(Self::Sticky),
            "weighted" => Some(Self::Weighted),
            _ => None,
        }
    }

    /// Whether the pool's new connections are judged against the weights
    /// (ZERO, SKEW, CONCENTRATION).
    pub fn judges_new_connections(self) -> bool {
        self != Self::LeastConnections
    }

    /// Whether each load balancer node's own split is judged too (see
    /// [`super::left_out`]).
    pub fn judges_each_balancer(self) -> bool {
        self == Self::Weighted
    }
}

/// One pool's input for one tick. Its members are [`MemberInput`]s or
/// anything that carries one (the collector's members carry their
/// address, node and measured rates along, so nothing is re-joined by
/// index after the detector has judged them).
#[derive(Clone, Debug, PartialEq)]
pub struct PoolInput<M = MemberInput> {
    pub name: String,
    pub tick: u64,
    pub members: Vec<M>,
    /// How its balancer places new connections.
    pub balancing: Balancing,
}

impl<M: AsRef<MemberInput>> PoolInput<M> {
    /// Each member's detector input, in order.
    pub fn members(&self) -> impl Iterator<Item = &MemberInput> {
        self.members.iter().map(AsRef::as_ref)
    }
}

/// A judgement.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Verdict {
    Ok,
    /// No new connections while they were expected. `dark`: no bytes
    /// either; otherwise bytes still flow on old connections (pinned-only).
    Zero {
        dark: bool,
    },
    SkewLow {
        page: bool,
    },
    SkewHigh {
        page: bool,
    },
    NoData,
    /// CPU share well above traffic share; `explained` when a SKEW_HIGH
    /// explains it.
    Hot {
        explained: bool,
    },
    Mismatch,
    DrainingViolation,
    InsufficientTraffic,
    Concentration,
    Settling,
    /// Its own agent no longer lists a listener on its port: the backend
    /// is not listening, so no balancer can give it anything. `page` once
    /// it has been down for `down_page_ticks`.
    Down {
        page: bool,
    },
    /// A pool's: every connection attempt its balancers make to its
    /// members fails, enough of them since one last opened to say clients
    /// are trying (see `Failures::every_attempt_fails`): an outage of the
    /// whole pool, not a quiet one. Or every attempt one load balancer
    /// node makes fails while the others reach the members (see
    /// `detect/cut_off.rs`).
    Failing,
}

impl Verdict {
    /// Ordering for combining views: higher is worse.
    pub(super) fn rank(self) -> u8 {
        match self {
            Verdict::Zero { .. } | Verdict::Failing => 9,
            Verdict::SkewLow { page: true } | Verdict::SkewHigh { page: true } => 8,
            Verdict::DrainingViolation => 7,
            Verdict::Mismatch => 6,
            Verdict::NoData | Verdict::Down { .. } => 5,
            Verdict::SkewLow { page: false } | Verdict::SkewHigh { page: false } => 4,
            Verdict::Hot { .. } => 3,
            Verdict::Concentration => 2,
            Verdict::Settling | Verdict::InsufficientTraffic => 1,
            Verdict::Ok => 0,
        }
    }

    pub fn is_zero(self) -> bool {
        matches!(self, Verdict::Zero { .. })
    }

    /// A fact about the member's observers or its listener (NO_DATA,
    /// DOWN) rather than a judgement of its traffic: a quiet or settling
    /// pool does not hide it.
    pub(super) fn is_fact(self) -> bool {
        matches!(self, Verdict::NoData | Verdict::Down { .. })
    }
}

/// One view's judgement of one member, with the numbers behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewVerdict {
    pub verdict: Verdict,
    pub fresh: bool,
    pub new_conns: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub active: u64,
    /// Share of the pool's new connections over the last 10 ticks.
    pub observed_share: f64,
    /// The share its weight gives it.
    pub expected_share: f64,
    /// Observed / expected over the window that decided the verdict.
    pub ratio: f64,
    /// Observed count over that window.
    pub window_observed: f64,
    /// Expected count over that window.
    pub window_expected: f64,
    /// Expected count accumulated since the member's last new connection.
    pub zero_expected: f64,
    /// Ticks in a row without a new connection.
    pub dark_ticks: u64,
    /// z-score of the deciding window.
    pub z: f64,
    /// Cumulative new connections seen.
    pub conns_total: u64,
    /// Connection attempts to it that failed over the last 10 ticks, as
    /// its load balancers' nodes counted them: the LB view's count, in
    /// both views (see [`ViewVerdict::refused`]).
    pub failed_window: u64,
    pub reason: String,
    /// The load it carries: its open connections...
    pub active_load: LoadVerdict,
    /// ...and its bytes (both ways).
    pub bytes_load: LoadVerdict,
    /// Its share of the pool's bytes into members over the last 10 ticks.
    pub bytes_in_share: f64,
    /// Its share of the pool's bytes out of members over the last 10 ticks.
    pub bytes_out_share: f64,
}

impl ViewVerdict {
    /// Whether the attempts that failed explain why the member gets too
    /// little: ZERO while its balancers' nodes still dial it (a balancer
    /// that left it out would make no attempt at all), or SKEW LOW with
    /// failed attempts making up at least half of what it missed over the
    /// window. The balancer does send the member its connections, and the
    /// member does not take them: the cause is the member, not the routing.
    pub fn refused(&self) -> bool {
        match self.verdict {
            Verdict::Zero { .. } => self.failed_window > 0,
            Verdict::SkewLow { .. } => {
                let missed = self.window_expected - self.window_observed;
                missed > 0.0 && self.failed_window as f64 >= missed / 2.0
            }
            _ => false,
        }
    }
}

/// One member's judgement.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberVerdict {
    pub id: String,
    pub weight: f64,
    /// The weight it is judged against while its balancer has not yet
    /// followed a change of `weight`.
    pub judged_weight: Option<f64>,
    pub draining: bool,
    pub server: Option<ViewVerdict>,
    pub lb: Option<ViewVerdict>,
    pub cpu: Option<f64>,
    /// Both views' new connections combined (and HOT).
    pub verdict: Verdict,
    /// The view whose evidence decided.
    pub view: View,
    pub reason: String,
    /// The open connections' verdict of the worse view.
    pub active: Option<(View, LoadVerdict)>,
    /// The bytes' verdict of the worse view.
    pub bytes: Option<(View, LoadVerdict)>,
    /// Its findings wait while the balancer follows a change (of the
    /// member set, or of this member's entry): they neither fire nor
    /// clear, and those pending stay pending.
    pub settles: bool,
}

/// One pool's judgement.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolVerdict {
    pub name: String,
    pub tick: u64,
    /// Ok, Concentration, InsufficientTraffic or Settling.
    pub verdict: Verdict,
    pub reason: String,
    /// Every finding of the pool waits while its balancer follows a
    /// change of the member set (see [`MemberVerdict::settles`]), its
    /// own too, whatever its verdict (a quiet pool settles as well).
    pub settles: bool,
    /// Effective members (1 / Σ share²) over the last 10 ticks.
    pub effective: f64,
    /// What the weights give.
    pub expected_effective: f64,
    /// The view the pool-level numbers come from.
    pub view: View,
    /// Mean new connections per tick over the last 10 ticks, per view.
    pub server_rate: f64,
    pub lb_rate: f64,
    /// Learned dispersion per view.
    pub dispersion_server: f64,
    pub dispersion_lb: f64,
    /// Open connections and the load statistics, per view.
    pub load_server: LoadSummary,
    pub load_lb: LoadSummary,
    /// One per input member, in the input's order: the collector pairs
    /// each verdict with the member it judged by position.
    pub members: Vec<MemberVerdict>,
    /// The LB view is dark while the members see traffic (see
    /// [`blind_lb`]); the reason says so.
    pub lb_dark: bool,
    /// Load balancer nodes whose every attempt to the members fails while
    /// others reach them: the pool is FAILING for their clients.
    pub cut_off: Vec<CutOffNode>,
}

const RING: usize = 30;
const WINDOWS: [usize; 4] = [1, 3, 10, 30];
pub(super) const SHARE_WINDOW: usize = 10;

#[derive(Clone, Default)]
struct MemberHist {
    observed: [f64; RING],
    expected: [f64; RING],
    /// Ticks recorded (saturating at RING).
    len: usize,
    head: usize,
    zero_e: f64,
    zero_bytes: bool,
    /// Ticks in a row without a new connection.
    dark_ticks: u64,
    conns_total: u64,
    draining_recent: [u64; 10],
    /// While draining: per tick, the new connections it would have got at
    /// its weight had its balancer ignored the drain (of every eligible
    /// member's and its own), for the same window.
    draining_fair: [f64; 10],
    /// When its view last counted new connections, and how many, on the
    /// pool's tick clock: the two views of a member are compared on it.
    seen: Seen,
}

/// When a member's view last counted new connections, on the pool's tick
/// clock, and how many the other view had counted a tick after that and
/// by the time this view's ZERO began: the two views of a member are
/// compared on these marks.
#[derive(Clone, Default)]
struct Seen {
    /// The last tick with new connections.
    last: Option<u64>,
    /// The other view's `conns_total` at the end of the tick after `last`
    /// (a tick of the agents' clocks).
    other_after_clock: u64,
    /// While this view says ZERO: since when, the other view's
    /// `conns_total` then, and the views' rates then (this view's over the
    /// other's). The rates are kept from before: a fault that spreads to
    /// the whole pool takes this view's rate to zero, and the disagreement
    /// with it.
    zero: Option<ZeroMark>,
}

#[derive(Clone, Copy)]
struct ZeroMark {
    since: u64,
    other_total: u64,
    ratio: f64,
}

impl Seen {
    fn record(&mut self, tick: u64, conns: u64) {
        if conns > 0 {
            self.last = Some(tick);
        }
    }

    /// Notes the other view's `other_total` at the end of tick `now`, and
    /// whether this view says ZERO (with the views' rate ratio now).
    fn mark(&mut self, now: u64, other_total: u64, zero_ratio: Option<f64>) {
        if self.last.is_some_and(|last| last == now || last + 1 == now) {
            self.other_after_clock = other_total;
        }
        match zero_ratio {
            None => self.zero = None,
            Some(ratio) if self.zero.is_none() => {
                self.zero = Some(ZeroMark {
                    since: now,
                    other_total,
                    ratio: if ratio.is_finite() { ratio } else { 0.0 },
                });
            }
            Some(_) => {}
        }
    }

    /// The other view's count after which its new connections disagree
    /// with this view's ZERO: past the agents' clocks, and counted while
    /// this view said ZERO (those from before belong to a sparse view's
    /// ordinary gaps).
    fn other_disagreeing_after(&self) -> u64 {
        (self.other_after_clock).max(self.zero.map_or(0, |zero| zero.other_total))
    }
}

impl MemberHist {
    fn push(&mut self, o: f64, e: f64) {
        self.head = (self.head + 1) % RING;
        self.observed[self.head] = o;
        self.expected[self.head] = e;
        self.len = (self.len + 1).min(RING);
    }

    fn sums(&self, w: usize) -> (f64, f64) {
        let w = w.min(self.len);
        (0..w).fold((0.0, 0.0), |(o, e), k| {
            let i = (self.head + RING - k) % RING;
            (o + self.observed[i], e + self.expected[i])
        })
    }
}

/// Which members listened on their port, and since when those that no
/// longer do are down. Only a member seen listening can be down: an
/// address its agent owns but never listens on (a port the node forwards
/// elsewhere) says nothing about the backend. And which members are
/// joining the balancer's rotation (see [`super::joining`]): new ones, and
/// those listening again after being down.
#[derive(Default)]
pub(super) struct Presence {
    /// Members seen listening: the tick each went down, while it is.
    members: HashMap<String, Option<u64>>,
    /// Members down this tick.
    down: usize,
    /// Members down whose agent went stale before they listened again: a
    /// host rebooting.
    unseen_return: std::collections::HashSet<String>,
    /// Members nobody can reach, with the tick each became so: their own
    /// agent is stale and their balancers' last attempts failed (a host
    /// that died or was cut off, whose agent went with it).
    unreachable: HashMap<String, u64>,
    /// Per member that went down, its ticks judged DOWN less its other
    /// ticks since, never below zero: a member that keeps going down (a
    /// crash loop) builds it up across its returns, one that restarts now
    /// and then pays it off.
    down_debt: HashMap<String, u64>,
    joins: Joins,
}

/// A member down: since when, why, and its down debt (its ticks judged
/// DOWN less its other ticks, since it first went down and while that
/// stays above zero): a DOWN pages on the debt, so a member that keeps
/// going down for most of the time pages though no one outage lasts
/// `down_page_ticks`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) struct Downed {
    pub since: u64,
    pub why: Down,
    pub debt: u64,
}

/// Why a member is down.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Down {
    /// Its own agent lists no listener on its port any more.
    NotListening,
    /// Its own agent is stale and its balancers' attempts fail.
    Unreachable,
}

impl Presence {
    /// Records this tick's listener reports and who is unreachable: a
    /// member listening again, or reached again, joins for up to `grace`
    /// ticks.
    fn note(
        &mut self,
        input: &PoolInput<impl AsRef<MemberInput>>,
        failures: &Failures,
        grace: u64,
    ) {
        self.down = 0;
        for m in input.members() {
            self.note_reach(m, failures, input.tick, grace);
            if m.listening.is_none() && self.members.is_empty() {
                continue;
            }
            let state = match (self.members.get_mut(&m.id), m.listening) {
                (Some(state), _) => state,
                (None, Some(true)) => member_entry(&mut self.members, &m.id),
                (None, _) => continue,
            };
            match m.listening {
                Some(false) => {
                    state.get_or_insert(input.tick);
                    self.unseen_return.remove(&m.id);
                    self.down += 1;
                }
                Some(true) => {
                    let unseen = self.unseen_return.remove(&m.id);
                    if state.take().is_some() || unseen {
                        self.joins.start(&m.id, input.tick, grace);
                    }
                }
                // Nobody can say this tick (its agent is stale): not down,
                // but back only when it is seen listening.
                None => {
                    if state.take().is_some() && !self.unreachable.contains_key(&m.id) {
                        self.unseen_return.insert(m.id.clone());
                    }
                }
            }
        }
        self.note_debts(input);
    }

    /// Adds this tick to the down debt of each member judged DOWN, and
    /// pays one tick off for each other member. A member out of rotation
    /// is not judged DOWN (drained, it may well be stopped), nor is an
    /// unreachable one while its balancers' view is stale too: neither
    /// tick is one of an outage anyone is told of.
    fn note_debts(&mut self, input: &PoolInput<impl AsRef<MemberInput>>) {
        for m in input.members() {
            let not_listening = self.members.get(&m.id).is_some_and(Option::is_some);
            let unreachable = self.unreachable.contains_key(&m.id) && m.counted(View::Lb).is_some();
            let down = (not_listening || unreachable) && m.out_of_rotation().is_none();
            match self.down_debt.get_mut(&m.id) {
                Some(debt) if down => *debt += 1,
                Some(debt) if *debt > 1 => *debt -= 1,
                Some(_) => {
                    self.down_debt.remove(&m.id);
                }
                None if down => {
                    self.down_debt.insert(m.id.clone(), 1);
                }
                None => {}
            }
        }
    }

    /// Notes whether member `m` is unreachable this tick. It becomes so
    /// when its own agent is stale (it cannot say whether it listens) and
    /// the LB view's last attempts to it failed: another observer's word,
    /// not an absence, so a stale agent whose member its balancers reach,
    /// or do not dial, stays NO_DATA. It stays so until its balancers
    /// open a connection to it or its agent reports again, however long
    /// they back off from dialling it: their last word was a failure.
    fn note_reach(&mut self, m: &MemberInput, failures: &Failures, tick: u64, grace: u64) {
        let silent = m.server.is_some_and(|v| !v.fresh);
        match self.unreachable.get(&m.id).copied() {
            Some(since) if silent && !failures.opened_since(&m.id, since) => self.down += 1,
            Some(since) => {
                self.unreachable.remove(&m.id);
                if m.listening == Some(false) && self.members.contains_key(&m.id) {
                    // Its agent is back and lists no listener: the same
                    // outage goes on (the listener check counts it down).
                    self.members.insert(m.id.clone(), Some(since));
                } else {
                    self.joins.start(&m.id, tick, grace);
                }
            }
            None if silent && failures.unanswered(&m.id, tick) => {
                // An outage its agent saw begin goes on, unseen by it.
                let since = self.members.get(&m.id).copied().flatten();
                self.unreachable.insert(m.id.clone(), since.unwrap_or(tick));
                // Its return is this outage's end, not one of its own.
                self.unseen_return.remove(&m.id);
                self.down += 1;
            }
            None => {}
        }
    }

    /// Forgets members that left the pool.
    fn retain(&mut self, ids: &std::collections::HashSet<&str>) {
        self.members.retain(|id, _| ids.contains(id.as_str()));
        self.unseen_return.retain(|id| ids.contains(id.as_str()));
        self.unreachable.retain(|id, _| ids.contains(id.as_str()));
        self.down_debt.retain(|id, _| ids.contains(id.as_str()));
        self.joins.retain(ids);
    }

    /// Member `id`, while it joins.
    pub(super) fn joining(&self, id: &str) -> Option<&Join> {
        self.joins.get(id)
    }

    /// Adds this tick of both views to the joining members' pick-up, and
    /// ends the joins picked up (`s.warn_low` of their share) or past the
    /// grace, or every join in a pool too quiet to judge its split. A view
    /// without a member judged for a share (every member joins, or the
    /// others are down) measures the joining members against each other.
    fn note_joins(
        &mut self,
        s: &Settings,
        input: &PoolInput<impl AsRef<MemberInput>>,
        views: [ViewTick; 2],
    ) {
        if views.iter().all(|tick| tick.long_rate < s.min_pool_rate) {
            self.joins.clear();
            return;
        }
        // Only a pool with no member judged for a share in either view;
        // a view that sees none of the others while another view does
        // (their agents stale, or on the balancers only) says nothing.
        let none_judged = views.iter().all(|tick| tick.weight_sum <= 0.0);
        for mut tick in views {
            if tick.weight_sum <= 0.0 && none_judged {
                let joining = input
                    .members()
                    .filter(|m| self.joins.get(&m.id).is_some() && m.weight > 0.0)
                    .filter_map(|m| m.counted(tick.view).map(|v| (m.weight, v.new_conns)));
                (tick.weight_sum, tick.new_conns) =
                    joining.fold((0.0, 0.0), |(w, n), (mw, mn)| (w + mw, n + mn as f64));
            }
            for m in input.members() {
                let taken = (m.counted(tick.view))
                    .filter(|_| tick.weight_sum > 0.0)
                    .map(|v| v.new_conns);
                (self.joins).note(&m.id, m.weight, taken, &tick, input.tick);
            }
        }
        (self.joins).end(input.tick, s.join_grace_ticks, s.warn_low);
    }

    /// The tick member `id` went down, while it is.
    pub(super) fn down_since(&self, id: &str) -> Option<u64> {
        self.down(id).map(|down| down.since)
    }

    /// Since when and why member `id` is down, while it is, and its debt.
    pub(super) fn down(&self, id: &str) -> Option<Downed> {
        if self.down == 0 {
            return None;
        }
        let not_listening = self.members.get(id).copied().flatten();
        let (since, why) = (not_listening.map(|since| (since, Down::NotListening)))
            .or_else(|| Some((*self.unreachable.get(id)?, Down::Unreachable)))?;
        let debt = self.down_debt.get(id).copied().unwrap_or(1);
        Some(Downed { since, why, debt })
    }
}

struct ViewState {
    members: HashMap<String, MemberHist>,
    /// The view was concentrated last tick: when that ends, every member's
    /// windows restart, so the incident's ticks do not linger as SKEW.
    was_concentrated: bool,
    /// Exponentially averaged new connections per tick.
    slow_rate: f64,
    /// The dispersion used: `dispersion_mean` clamped to `[1, max]`.
    dispersion: f64,
    /// Running mean of the per-tick χ²/df, unclamped below: clamping each
    /// tick at 1 before averaging would bias φ upwards (a Poisson pool's
    /// per-tick χ²/df is below 1 about half the time) and slow ZERO by
    /// `(φ−1)/ln φ` for nothing.
    dispersion_mean: f64,
    samples: u32,
    totals: [f64; RING],
    totals_len: usize,
    totals_head: usize,
    /// What the members carry.
    load: LoadState,
    /// The last tick a member paged SKEW_HIGH (see
    /// [`ViewState::explained_shortfalls`]).
    high_paged_at: Option<u64>,
}

impl Default for ViewState {
    fn default() -> Self {
        Self {
            members: HashMap::new(),
            was_concentrated: false,
            slow_rate: 0.0,
            // Until healthy ticks teach otherwise, assume traffic twice as
            // bursty as Poisson.
            dispersion: 2.0,
            dispersion_mean: 2.0,
            samples: 0,
            totals: [0.0; RING],
            totals_len: 0,
            totals_head: 0,
            load: LoadState::default(),
            high_paged_at: None,
        }
    }
}

/// A view's per-tick results before members' views are combined.
struct ViewOutcome {
    verdicts: HashMap<String, ViewVerdict>,
    effective: f64,
    expected_effective: f64,
    concentrated: bool,
    rate: f64,
    long_rate: f64,
    judged: bool,
    load: LoadSummary,
    /// This tick's new connections to the eligible members, and their
    /// weights summed.
    new_conns: f64,
    weight_sum: f64,
    /// Observed for the last [`RING`] ticks without seeing one new
    /// connection, and none open now.
    dark: bool,
}

impl ViewOutcome {
    /// This tick, as a joining member's pick-up sees it.
    fn tick(&self, view: View) -> ViewTick {
        ViewTick {
            view,
            new_conns: self.new_conns,
            weight_sum: self.weight_sum,
            long_rate: self.long_rate,
        }
    }
}

/// Ticks from a pool's first in which the members it gathers found it
/// rather than join it: its agents' first reports after the collector
/// starts arrive over a few seconds, and a member dark from the start is
/// the incident's worst shape, judged at once.
const FOUNDING_TICKS: u64 = 10;

#[derive(Default)]
pub(super) struct PoolState {
    server: ViewState,
    lb: ViewState,
    member_set: Vec<(String, bool, u64)>,
    /// The pool's first tick.
    first_tick: Option<u64>,
    reweights: Reweights,
    settle_left: u32,
    /// Ticks the whole pool has settled in its current run (see
    /// [`SETTLING_RUN`]), and calm ticks since the last.
    settled_for: u32,
    calm_for: u32,
    /// The tick each member's own entry (new, weight, draining) last
    /// changed, for as long as it settles.
    changed: HashMap<String, u64>,
    cpu: HashMap<String, f64>,
    presence: Presence,
    /// Members out of rotation: who sent them new connections.
    senders: HashMap<String, Senders>,
    /// Each load balancer node's own split, in the LB view.
    left_out: LeftOut,
    /// Each member's failed attempts over the share window.
    failures: Failures,
    /// Each load balancer node's failed attempts over the share window.
    cut_off: CutOff,
}

/// Connection attempts to each member that failed, per tick, over the
/// last [`SHARE_WINDOW`] ticks. They are counted where the SYN left, so
/// by its load balancers' nodes (the LB view), and both views judge the
/// member with them: a member whose own agent sees it starve while its
/// balancers' attempts fail is refusing, not left out.
#[derive(Default)]
struct Failures {
    members: HashMap<String, FailedWindow>,
}

#[derive(Default)]
struct FailedWindow {
    /// The member's failed attempts in each of the last ticks, newest
    /// first: one slot a tick, so the window spans the same ticks as the
    /// share window it is weighed against.
    per_tick: [u64; SHARE_WINDOW],
    /// The new connections its own agent counted in each of the same
    /// ticks (the server view).
    served_per_tick: [u64; SHARE_WINDOW],
    /// The tick last noted: a member absent from it left the pool.
    tick: u64,
    /// The last tick the LB view counted a failed attempt to it, and the
    /// last it counted one that opened.
    last_failed: Option<u64>,
    last_opened: Option<u64>,
}

impl Failures {
    /// Records this tick's failed attempts to every member. A tick whose
    /// LB view is stale or reset adds none (what it would hold is not this
    /// tick's) but still moves the window on: failures from before a gap
    /// age out with it, and those within the window keep counting, so the
    /// cause they give a member holds across the gap.
    fn note(&mut self, input: &PoolInput<impl AsRef<MemberInput>>) {
        for m in input.members() {
            let window = match self.members.get_mut(&m.id) {
                Some(window) => window,
                None => self.members.entry(m.id.clone()).or_default(),
            };
            window.tick = input.tick;
            window.per_tick.rotate_right(1);
            window.served_per_tick.rotate_right(1);
            let lb = m.counted(View::Lb).unwrap_or_default();
            window.per_tick[0] = lb.failed;
            window.served_per_tick[0] = m.counted(View::Server).map_or(0, |v| v.new_conns);
            if lb.failed > 0 {
                window.last_failed = Some(input.tick);
            }
            if lb.new_conns > 0 {
                window.last_opened = Some(input.tick);
            }
        }
        self.members.retain(|_, window| window.tick == input.tick);
    }

    /// The member's failed attempts over the window.
    fn window(&self, id: &str) -> u64 {
        self.members
            .get(id)
            .map_or(0, |window| window.per_tick.iter().sum())
    }

    /// Whether the LB view counted a connection to member `id` opening at
    /// or after tick `since`.
    fn opened_since(&self, id: &str, since: u64) -> bool {
        (self.members.get(id)).is_some_and(|w| w.last_opened.is_some_and(|o| o >= since))
    }

    /// The attempts to the pool's members that failed since its balancers
    /// last opened a connection to any of them (within the window), and
    /// over how many ticks, when they are at least `min`, reached enough
    /// of the members `in_rotation` ([`reaches_enough`]) and outnumber
    /// what the members' own agents saw open meanwhile: every attempt
    /// fails. None while one opened this tick. The LB view's openings end
    /// it; the server view's only by outnumbering the failures: a
    /// backend's node still opens the kubelet's probes past a network
    /// policy that drops every client's connection, where clients that
    /// come through balancers without an agent open as many as they need.
    fn every_attempt_fails(
        &self,
        tick: u64,
        min: u64,
        in_rotation: &std::collections::HashSet<&str>,
    ) -> Option<(u64, usize)> {
        let opened = (self.members.values()).filter_map(|w| w.last_opened).max();
        let since = opened.map_or(SHARE_WINDOW as u64, |t| tick.saturating_sub(t));
        let ticks = since.min(SHARE_WINDOW as u64) as usize;
        let (mut failed, mut served, mut reached) = (0, 0, 0);
        for (id, w) in &self.members {
            let f: u64 = w.per_tick[..ticks].iter().sum();
            failed += f;
            served += w.served_per_tick[..ticks].iter().sum::<u64>();
            reached += usize::from(f > 0 && in_rotation.contains(id.as_str()));
        }
        let fails = failed >= min && failed > served && reaches_enough(reached, in_rotation.len());
        fails.then_some((failed, ticks))
    }

    /// Whether its balancers' last attempts to member `id` failed, within
    /// the window, and none opened since (a tick with both opened some:
    /// the member is reachable).
    fn unanswered(&self, id: &str, tick: u64) -> bool {
        self.members.get(id).is_some_and(|w| {
            w.last_failed.is_some_and(|failed| {
                tick < failed + SHARE_WINDOW as u64 && w.last_opened.is_none_or(|o| o < failed)
            })
        })
    }
}

/// Ticks in a row a pool whose member set keeps changing settles as a
/// whole. A balancer follows a change within a tick or two, and meanwhile
/// the shares of members it did not touch may be off (one left and its
/// share moves to them): so every finding waits out `settle_ticks`. A
/// rollout that replaces Pods one after another changes the set every tick
/// or two for minutes, and settled as a whole it would hide every finding
/// until it ends, a rollout's own faults first. Past this run only the
/// members whose own entry changed settle.
const SETTLING_RUN: u32 = 10;

/// Whose findings wait while the balancer follows a change.
#[derive(Clone, Debug, PartialEq)]
enum Settling {
    No,
    /// The member set changed within `settle_ticks`: every member's.
    Pool,
    /// It keeps changing (past [`SETTLING_RUN`]): those whose own entry
    /// changed within `settle_ticks`.
    Members(std::collections::HashSet<String>),
}

impl Settling {
    fn covers(&self, id: &str) -> bool {
        match self {
            Settling::No => false,
            Settling::Pool => true,
            Settling::Members(ids) => ids.contains(id),
        }
    }
}

/// How the pool's views came out, for its members' and its own verdict.
struct PoolJudging {
    /// Too few new connections to judge the balancer's choices.
    conns_insufficient: bool,
    /// Whose findings wait for the balancer to follow a change.
    settling: Settling,
    /// The members' smoothed CPU summed.
    cpu_total: f64,
    /// Members in the pool.
    member_count: usize,
    /// New connections are judged against the weights (not a
    /// least-connections pool).
    judges_new_connections: bool,
    /// The tick judged.
    tick: u64,
    /// Members one load balancer node leaves out while others send to
    /// them.
    left_out: HashMap<String, left_out::Finding>,
    /// Whose attempts all fail, if anyone's (see [`Verdict::Failing`]).
    failing: Option<Failing>,
}

/// Whose connection attempts to the pool's members all fail.
enum Failing {
    /// Every balancer's: the attempts that failed, over how many ticks.
    Pool { failed: u64, ticks: usize },
    /// These nodes', while the others reach the members.
    Nodes(Vec<CutOffNode>),
}

impl PoolState {
    /// Judges one tick of the pool, against the weights its balancer
    /// follows (see [`super::reweight`]).
    pub(super) fn evaluate(
        &mut self,
        s: &Settings,
        input: &PoolInput<impl AsRef<MemberInput>>,
    ) -> PoolVerdict {
        self.note_member_set(s, input);
        self.failures.note(input);
        self.cut_off.note(
            input.tick,
            input.members().map(|m| Attempts {
                id: &m.id,
                opened: &m.lb_by_node,
                failed: &m.lb_failed_by_node,
            }),
        );
        self.presence
            .note(input, &self.failures, s.join_grace_ticks);
        if self.follow_reweights(s, input) {
            // Every member's expected share moves at once: the whole pool
            // settles, in a run of changes too.
            self.settle_left = s.settle_ticks;
            self.settled_for = 0;
        }
        if self.reweights.is_empty() {
            return self.judge(s, input);
        }
        let followed = PoolInput {
            name: input.name.clone(),
            tick: input.tick,
            balancing: input.balancing,
            members: (input.members())
                .map(|m| MemberInput {
                    weight: self.reweights.weight(&m.id, m.weight),
                    ..m.clone()
                })
                .collect(),
        };
        let mut verdict = self.judge(s, &followed);
        for (v, m) in verdict.members.iter_mut().zip(input.members()) {
            v.judged_weight = (v.weight != m.weight).then_some(v.weight);
            v.weight = m.weight;
        }
        let changed = match self.reweights.len() {
            1 => "1 member's weight changed".to_owned(),
            n => format!("{n} members' weights changed"),
        };
        let note = format!(
            "{changed}: judged against the previous weights until the balancer's split follows the new ones (at most {} ticks)",
            s.join_grace_ticks
        );
        verdict.reason = match verdict.reason.is_empty() {
            true => note,
            false => format!("{}; {note}", verdict.reason),
        };
        verdict
    }

    /// Adds this tick's split to the evidence that the balancer follows
    /// changed weights, from the view that counted more; true when it is
    /// taken to follow them from now on.
    fn follow_reweights(
        &mut self,
        s: &Settings,
        input: &PoolInput<impl AsRef<MemberInput>>,
    ) -> bool {
        if self.reweights.is_empty() {
            return false;
        }
        let counts = |view| -> Vec<Count> {
            (input.members())
                .filter_map(|m| {
                    let v = m.eligible(view, &self.presence)?;
                    Some((m.id.as_str(), m.weight, v.new_conns))
                })
                .collect()
        };
        let total = |c: &[Count]| c.iter().map(|&(_, _, n)| n).sum::<u64>();
        let (server, lb) = (counts(View::Server), counts(View::Lb));
        let (counts, phi) = match total(&lb) > total(&server) {
            true => (lb, self.lb.dispersion),
            false => (server, self.server.dispersion),
        };
        (self.reweights).follow(input.tick, s.join_grace_ticks, phi, &counts)
    }

    /// Judges one tick of the pool: both views, then each member (its
    /// views combined, HOT, quiet and settling pools), then the pool.
    fn judge(&mut self, s: &Settings, input: &PoolInput<impl AsRef<MemberInput>>) -> PoolVerdict {
        let judged_with = (&self.presence, &self.failures);
        let server = self.server.evaluate(s, input, View::Server, judged_with);
        let lb = self.lb.evaluate(s, input, View::Lb, judged_with);
        let views = [server.tick(View::Server), lb.tick(View::Lb)];
        self.presence.note_joins(s, input, views);
        self.smooth_cpu(input);
        self.note_senders(input);

        let primary_view = if server.judged || !lb.judged {
            View::Server
        } else {
            View::Lb
        };
        let primary = match primary_view {
            View::Server => &server,
            View::Lb => &lb,
        };
        // New connections too few to judge the balancer's choices; the pool
        // abstains only when it holds too few open connections as well.
        let conns_insufficient =
            !server.judged && !lb.judged || primary.long_rate < s.min_pool_rate;
        let left_out = self.left_out_of(s, input, &lb);
        let judging = PoolJudging {
            left_out,
            conns_insufficient,
            settling: self.settling(s, input.tick),
            cpu_total: input.members().filter_map(|m| self.cpu.get(&m.id)).sum(),
            member_count: input.members.len(),
            judges_new_connections: input.balancing.judges_new_connections(),
            tick: input.tick,
            failing: self.failing(s, input),
        };
        for m in input.members() {
            let zero = |view: &ViewOutcome| {
                view.verdicts
                    .get(&m.id)
                    .is_some_and(|v| v.verdict.is_zero())
            };
            self.mark_views(
                &m.id,
                input.tick,
                (zero(&server), zero(&lb)),
                (server.rate, lb.rate),
            );
        }

        let members = input
            .members()
            .map(|m| self.member_verdict(s, &judging, m, &server, &lb))
            .collect();
        let load = if server.load.judged || !lb.load.judged {
            &server.load
        } else {
            &lb.load
        };
        let insufficient = conns_insufficient && !(server.load.judged || lb.load.judged);
        let (verdict, mut reason) = pool_verdict(s, &judging, insufficient, primary, load);
        let settles = judging.settling == Settling::Pool;
        let blind = blind_lb(s, &server, &lb);
        if let Some(blind) = &blind {
            if !reason.is_empty() {
                reason.push_str("; ");
            }
            reason.push_str(blind);
        }
        PoolVerdict {
            name: input.name.clone(),
            tick: input.tick,
            verdict,
            reason,
            settles,
            effective: primary.effective,
            expected_effective: primary.expected_effective,
            view: primary_view,
            server_rate: server.rate,
            lb_rate: lb.rate,
            dispersion_server: self.server.dispersion,
            dispersion_lb: self.lb.dispersion,
            load_server: server.load,
            load_lb: lb.load,
            members,
            lb_dark: blind.is_some(),
            cut_off: match judging.failing {
                Some(Failing::Nodes(nodes)) => nodes,
                _ => Vec::new(),
            },
        }
    }

    /// Whose findings settle this tick: the pool's, for a change within
    /// `settle_ticks`, and past a run of [`SETTLING_RUN`] settling ticks
    /// (a run that `settle_ticks` calm ticks in a row end) only the
    /// members that changed.
    fn settling(&mut self, s: &Settings, tick: u64) -> Settling {
        let settle = u64::from(s.settle_ticks);
        self.changed.retain(|_, &mut at| tick < at + settle);
        if self.settle_left == 0 {
            self.calm_for += 1;
            if self.calm_for >= s.settle_ticks {
                self.settled_for = 0;
            }
            return Settling::No;
        }
        self.calm_for = 0;
        self.settle_left -= 1;
        self.settled_for += 1;
        match self.settled_for <= SETTLING_RUN.max(s.settle_ticks) {
            true => Settling::Pool,
            false => Settling::Members(self.changed.keys().cloned().collect()),
        }
    }

    /// Notes in each of a member's views what the other had counted at
    /// its last new connection and when its ZERO began (see [`Seen`]).
    fn mark_views(
        &mut self,
        id: &str,
        now: u64,
        (server_zero, lb_zero): (bool, bool),
        (server_rate, lb_rate): (f64, f64),
    ) {
        let (Some(server), Some(lb)) =
            (self.server.members.get_mut(id), self.lb.members.get_mut(id))
        else {
            return;
        };
        server.seen.mark(
            now,
            lb.conns_total,
            server_zero.then_some(server_rate / lb_rate),
        );
        lb.seen.mark(
            now,
            server.conns_total,
            lb_zero.then_some(lb_rate / server_rate),
        );
    }

    /// A changed member set (after the first), or a member's weight or
    /// draining changed (the balancer applies them at its own moment),
    /// starts `settle_ticks`. After the pool's founding ticks, a member
    /// new to the set (or whose weight rose from zero) joins; a changed
    /// weight is judged as before until the balancer follows it.
    fn note_member_set(&mut self, s: &Settings, input: &PoolInput<impl AsRef<MemberInput>>) {
        let mut now: Vec<(&str, bool, u64)> = input
            .members()
            .map(|m| (m.id.as_str(), m.draining, m.weight.to_bits()))
            .collect();
        now.sort_unstable();
        let same = |(id, draining, w): &(&str, bool, u64), was: &(String, bool, u64)| {
            *id == was.0 && *draining == was.1 && *w == was.2
        };
        if now.len() == self.member_set.len()
            && now.iter().zip(&self.member_set).all(|(n, w)| same(n, w))
        {
            return;
        }
        let set: Vec<(String, bool, u64)> = (now.iter())
            .map(|&(id, draining, w)| (id.to_owned(), draining, w))
            .collect();
        let first_tick = *self.first_tick.get_or_insert(input.tick);
        if !self.member_set.is_empty() {
            self.settle_left = s.settle_ticks;
            let before: std::collections::HashSet<&(String, bool, u64)> =
                self.member_set.iter().collect();
            for entry in set.iter().filter(|entry| !before.contains(entry)) {
                self.changed.insert(entry.0.clone(), input.tick);
            }
        }
        let founding = input.tick < first_tick + FOUNDING_TICKS;
        // A member back from draining (or from not ready) joins as a new
        // one does: its balancer takes it back at its own moment.
        let before: HashMap<&str, f64> = (self.member_set.iter())
            .map(|(id, draining, w)| {
                (
                    id.as_str(),
                    if *draining { 0.0 } else { f64::from_bits(*w) },
                )
            })
            .collect();
        for (id, draining, w) in &set {
            let new = f64::from_bits(*w);
            if *draining || new <= 0.0 {
                // Out of the split: no change of its weight pends.
                self.reweights.forget(id);
                continue;
            }
            match before.get(id.as_str()) {
                Some(&old) if old > 0.0 && old != new => {
                    (self.reweights).change(id, (old, new), input.tick, s.join_grace_ticks)
                }
                Some(&old) if old > 0.0 => {}
                _ if founding => {}
                _ => (self.presence.joins).start(id, input.tick, s.join_grace_ticks),
            }
        }
        let ids: std::collections::HashSet<&str> =
            set.iter().map(|(id, _, _)| id.as_str()).collect();
        self.presence.retain(&ids);
        self.reweights.retain(&ids);
        self.server.forget_left(&ids);
        self.lb.forget_left(&ids);
        self.member_set = set;
    }

    /// Whose attempts to the members all fail: every balancer's, else
    /// some nodes' while others reach them.
    fn failing(&self, s: &Settings, input: &PoolInput<impl AsRef<MemberInput>>) -> Option<Failing> {
        let min = failing_min(s);
        let mut in_rotation: std::collections::HashSet<&str> = (input.members())
            .filter(|m| !m.draining)
            .map(|m| m.id.as_str())
            .collect();
        if in_rotation.is_empty() {
            in_rotation = input.members().map(|m| m.id.as_str()).collect();
        }
        let failures = &self.failures;
        if let Some((failed, ticks)) = failures.every_attempt_fails(input.tick, min, &in_rotation) {
            return Some(Failing::Pool { failed, ticks });
        }
        let nodes = (self.cut_off).nodes(input.tick, min, &in_rotation);
        (!nodes.is_empty()).then_some(Failing::Nodes(nodes))
    }

    /// The members one load balancer node leaves out while others send
    /// to them (see [`left_out`]); none where a balancer's own split is
    /// not by weight (least-connections, sticky).
    fn left_out_of(
        &mut self,
        s: &Settings,
        input: &PoolInput<impl AsRef<MemberInput>>,
        lb: &ViewOutcome,
    ) -> HashMap<String, left_out::Finding> {
        if !input.balancing.judges_each_balancer() {
            // A pool that turned sticky (or least-connections) keeps no
            // balancer's split: should it turn back, what was gathered
            // before would be stale.
            self.left_out = LeftOut::default();
            return HashMap::new();
        }
        if self.left_out.is_idle() && input.members().all(|m| m.lb_by_node.is_empty()) {
            return HashMap::new();
        }
        let eligible: Vec<left_out::Eligible<'_>> = (input.members())
            .filter(|m| m.eligible(View::Lb, &self.presence).is_some())
            .map(|m| left_out::Eligible {
                id: &m.id,
                weight: m.weight,
                by_node: &m.lb_by_node,
            })
            .collect();
        let judged = lb.judged && lb.long_rate >= s.min_pool_rate;
        let gain = Bounds::new(s, self.lb.dispersion, 1).zero_gain;
        (self.left_out).tick(input.tick, &eligible, judged, gain, s.zero_alpha)
    }

    /// Who sent each member out of rotation its new connections; forgets
    /// the members back in rotation or gone.
    fn note_senders(&mut self, input: &PoolInput<impl AsRef<MemberInput>>) {
        let mut out = input.members().filter(|m| m.draining).peekable();
        if out.peek().is_none() && self.senders.is_empty() {
            return;
        }
        let mut kept = HashMap::with_capacity(self.senders.len());
        for m in out {
            let mut senders = self.senders.remove(&m.id).unwrap_or_default();
            senders.push(&m.lb_by_node);
            kept.insert(m.id.clone(), senders);
        }
        self.senders = kept;
    }

    /// CPU: smoothed per member.
    fn smooth_cpu(&mut self, input: &PoolInput<impl AsRef<MemberInput>>) {
        // A member that left, or whose agent stopped sending its CPU, has
        // no CPU now: an old figure would still count towards HOT.
        let reporting: std::collections::HashSet<&str> = (input.members())
            .filter(|m| m.cpu.is_some())
            .map(|m| m.id.as_str())
            .collect();
        self.cpu.retain(|id, _| reporting.contains(id.as_str()));
        for m in input.members() {
            if let Some(c) = m.cpu {
                let e = self.cpu.entry(m.id.clone()).or_insert(c);
                *e = 0.7 * *e + 0.3 * c;
            }
        }
    }

    /// One member's verdict: its views combined, then HOT, then a quiet or
    /// settling pool's abstention.
    fn member_verdict(
        &self,
        s: &Settings,
        judging: &PoolJudging,
        m: &MemberInput,
        server: &ViewOutcome,
        lb: &ViewOutcome,
    ) -> MemberVerdict {
        let mut sv = server.verdicts.get(&m.id).cloned();
        let mut lv = lb.verdicts.get(&m.id).cloned();
        let (mut verdict, mut view, mut reason) = combine(
            m,
            (sv.as_ref(), self.server.seen(&m.id)),
            (lv.as_ref(), self.lb.seen(&m.id)),
            judging.tick,
        );
        if !judging.judges_new_connections {
            // After combining: a view's raw ZERO still makes a MISMATCH
            // when the other view sees new connections now.
            unjudge_split(&mut verdict, &mut reason);
            for v in sv.iter_mut().chain(lv.iter_mut()) {
                unjudge_split(&mut v.verdict, &mut v.reason);
            }
        }
        if verdict == Verdict::Ok
            && let Some(finding) = judging.left_out.get(&m.id)
        {
            verdict = Verdict::SkewLow { page: false };
            view = View::Lb;
            reason = finding.reason();
        }
        if let (Some(&cpu), true) = (self.cpu.get(&m.id), judging.cpu_total > 0.0) {
            let share = sv
                .as_ref()
                .or(lv.as_ref())
                .map_or(0.0, |v| v.observed_share.max(v.expected_share));
            hot(s, judging, cpu, share, &mut verdict, &mut reason);
        }
        // A MISMATCH stands in a pool one view sees too little of: it
        // weighs the other view's connections, and when a fault takes a
        // whole pool's connections away in one view, it is what is left.
        // A joining member stays SETTLING: not taken in yet is no abstention.
        let settles = judging.settling.covers(&m.id);
        let abstains = !verdict.is_fact()
            && verdict != Verdict::Mismatch
            && !(verdict == Verdict::Settling && self.presence.joining(&m.id).is_some());
        if judging.conns_insufficient && verdict.rank() > 0 && abstains {
            verdict = Verdict::InsufficientTraffic;
            reason = "too few new connections to judge".into();
        } else if settles && verdict.rank() > 1 && !verdict.is_fact() {
            verdict = Verdict::Settling;
            reason = "member set changed; settling".into();
        }
        if verdict == Verdict::DrainingViolation
            && let Some(nodes) = self.senders.get(&m.id).and_then(Senders::named)
        {
            reason = format!("{reason}; in the LB view they came from {nodes}");
        }
        let refuses = matches!(judging.failing, Some(Failing::Pool { .. }))
            && judging.judges_new_connections
            && !m.draining
            && !verdict.is_fact();
        if refuses {
            let judged = match lv.as_mut() {
                Some(l) => Some((l, View::Lb)),
                None => sv.as_mut().map(|s| (s, View::Server)),
            };
            if let Some((v, v_view)) = judged.filter(|(v, _)| v.failed_window > 0) {
                refuses_all(v);
                (verdict, view, reason) = (v.verdict, v_view, v.reason.clone());
            }
        }
        if let Some(l) = lv.as_mut().filter(|l| l.failed_window > 0) {
            l.reason = with_failures(&l.reason, l.verdict, l.failed_window);
            reason = with_failures(&reason, verdict, l.failed_window);
        }
        let active = worse(sv.as_ref(), lv.as_ref(), |v| &v.active_load);
        let bytes = worse(sv.as_ref(), lv.as_ref(), |v| &v.bytes_load);
        MemberVerdict {
            id: m.id.clone(),
            weight: m.weight,
            judged_weight: None,
            draining: m.draining,
            server: sv,
            lb: lv,
            cpu: self.cpu.get(&m.id).copied(),
            verdict,
            view,
            reason,
            active,
            bytes,
            settles,
        }
    }
}

impl Failing {
    /// What the pool's reason says.
    fn reason(&self) -> String {
        match self {
            Failing::Pool { failed, ticks } => format!(
                "every connection attempt to its members fails: {failed} in the last {ticks} ticks, refused or unanswered, and not one opened; clients are trying and no member takes their connections"
            ),
            Failing::Nodes(nodes) => {
                let each: Vec<String> = nodes.iter().map(CutOffNode::reason).collect();
                each.join("; ")
            }
        }
    }
}

/// Whether failed attempts that reached `reached` of a pool's `members`
/// in rotation are every attempt failing rather than one member's: half
/// of them, and two where there are two or more. A forwarding balancer
/// whose agent is of before `conns_failed_unanswered` counts an
/// unanswered attempt failed when conntrack forgets it, two minutes after
/// it weighed as unanswered, with nothing to say it did: clients that
/// stopped soon after some of their attempts went to one dead member
/// would otherwise read, two minutes on, as a pool where nothing opens
/// and attempts fail. So would a hash balancer whose one client maps to
/// one refusing member. A pool that refuses
/// everything fails the attempts to each member its balancers dial, and
/// they dial them all (their health checks too).
pub(super) fn reaches_enough(reached: usize, members: usize) -> bool {
    reached > 0 && 2 * reached >= members && reached >= members.min(2)
}

/// The fewest failed attempts over the window that make a pool whose
/// every attempt fails [`Verdict::Failing`]: as many as the least new
/// connections a judged pool opens over it, and at least three, so that
/// one client giving up now and then in a quiet pool is not an outage.
fn failing_min(s: &Settings) -> u64 {
    ((s.min_pool_rate * SHARE_WINDOW as f64).ceil() as u64).max(3)
}

/// Judges `v` ZERO: a member of a pool whose every attempt fails, its
/// balancers' attempts to it among them.
fn refuses_all(v: &mut ViewVerdict) {
    v.verdict = Verdict::Zero {
        dark: v.bytes_in == 0 && v.bytes_out == 0,
    };
    v.reason = "no connection to it opened while its balancers tried it".into();
}

/// `reason` with the `failed` connection attempts the LB view counted over
/// the last 10 ticks. Beside a member that gets too little or nothing, or
/// is down, they tell a backend that does not take connections from a
/// balancer that leaves it out, which makes no attempt (a balancer's
/// health checks of a dead member are attempts too, a few a window).
fn with_failures(reason: &str, verdict: Verdict, failed: u64) -> String {
    let attempts = if failed == 1 { "attempt" } else { "attempts" };
    let what = format!(
        "{failed} connection {attempts} to it failed in the last 10 ticks (refused or unanswered)"
    );
    let why = match verdict {
        Verdict::Zero { .. } | Verdict::SkewLow { .. } | Verdict::Down { .. } => {
            ": its load balancers' nodes still dial it (their rules, or their health checks), and it does not take them"
        }
        _ => "",
    };
    if reason.is_empty() {
        format!("{what}{why}")
    } else {
        format!("{reason}; {what}{why}")
    }
}

/// Drops a ZERO or SKEW on new connections from a pool that does not
/// judge them ([`Balancing::LeastConnections`]): there a member's share of
/// new connections follows how few it holds, not its weight.
fn unjudge_split(verdict: &mut Verdict, reason: &mut String) {
    if matches!(
        verdict,
        Verdict::Zero { .. } | Verdict::SkewLow { .. } | Verdict::SkewHigh { .. }
    ) {
        *verdict = Verdict::Ok;
        *reason = Balancing::LEAST_CONNECTIONS_NOTE.into();
    }
}

/// HOT, from the member's smoothed CPU against its traffic share; a SKEW
/// HIGH whose CPU follows the traffic says so.
fn hot(
    s: &Settings,
    judging: &PoolJudging,
    cpu: f64,
    share: f64,
    verdict: &mut Verdict,
    reason: &mut String,
) {
    let cpu_share = cpu / judging.cpu_total;
    if cpu >= s.hot_min_utilization
        && cpu_share > s.hot_ratio * share
        && share > 0.0
        && verdict.rank() < 3
    {
        *verdict = Verdict::Hot { explained: false };
        *reason = format!(
            "CPU {:.0}% is {:.0}% of the pool's CPU but it gets {:.0}% of the traffic: a host problem",
            cpu * 100.0,
            cpu_share * 100.0,
            share * 100.0
        );
    } else if cpu >= s.hot_min_utilization
        && cpu_share > s.hot_ratio / (judging.member_count.max(1) as f64)
        && matches!(verdict, Verdict::SkewHigh { .. })
    {
        reason.push_str(&format!(
            "; its CPU ({:.0}%) follows the traffic",
            cpu * 100.0
        ));
    }
}

/// The pool's own verdict: FAILING when every attempt to its members
/// fails; else its split's ([`split_verdict`]), which a node cut off from
/// the pool turns FAILING unless it is CONCENTRATION (a finding of its own,
/// whose reason then names the node too).
fn pool_verdict(
    s: &Settings,
    judging: &PoolJudging,
    insufficient: bool,
    primary: &ViewOutcome,
    load: &LoadSummary,
) -> (Verdict, String) {
    match &judging.failing {
        Some(f @ Failing::Pool { .. }) => (Verdict::Failing, f.reason()),
        Some(f @ Failing::Nodes(_)) => match split_verdict(s, judging, insufficient, primary, load)
        {
            (Verdict::Concentration, reason) => {
                (Verdict::Concentration, format!("{reason}; {}", f.reason()))
            }
            _ => (Verdict::Failing, f.reason()),
        },
        None => split_verdict(s, judging, insufficient, primary, load),
    }
}

/// The pool's verdict on its split: too quiet, settling, concentrated, or
/// OK.
fn split_verdict(
    s: &Settings,
    judging: &PoolJudging,
    insufficient: bool,
    primary: &ViewOutcome,
    load: &LoadSummary,
) -> (Verdict, String) {
    if insufficient {
        (
            Verdict::InsufficientTraffic,
            format!(
                "{:.2} new connections/tick (minimum {:.2}) and {} open connections (minimum {:.0}): too quiet to judge",
                primary.long_rate, s.min_pool_rate, load.active, s.min_pool_active
            ),
        )
    } else if judging.settling == Settling::Pool {
        (Verdict::Settling, "member set changed; settling".into())
    } else if primary.concentrated {
        (
            Verdict::Concentration,
            format!(
                "traffic concentrates on {:.1} effective members of {:.1}",
                primary.effective, primary.expected_effective
            ),
        )
    } else if judging.conns_insufficient {
        (
            Verdict::Ok,
            format!(
                "{:.2} new connections/tick: too few to judge the balancer's choices; judged on {} open connections",
                primary.long_rate, load.active
            ),
        )
    } else {
        (Verdict::Ok, String::new())
    }
}

/// What the pool's reason says when its load balancers' view is dark
/// while its members' own view sees traffic: the balancer's packets do not
/// pass the hooks its agent reads (direct server return, IPVS-DR, XDP, a
/// flowtable's offloaded flows), or clients do not go through it. Nothing
/// is judged on a dark view; saying so keeps its zeros from being read as
/// a balancer that sends nothing.
fn blind_lb(s: &Settings, server: &ViewOutcome, lb: &ViewOutcome) -> Option<String> {
    let busy =
        server.long_rate >= s.min_pool_rate || server.load.active as f64 >= s.min_pool_active;
    (lb.dark && busy).then(|| {
        format!(
            "the load balancers' view saw no connection to any member in {RING} ticks while the members received {:.1} new connections/tick: the balancer's traffic does not pass its agent's hooks (direct server return, IPVS-DR, XDP, offloaded flows) or clients bypass it; judged on the members' own view",
            server.long_rate
        )
    })
}

/// Whether a draining member's `recent` new connections over the last 10
/// ticks say its balancer still sends to it: at least 3, and at least a
/// tenth of the `fair` count its weight would have drawn had the drain
/// been ignored. Health checks and readiness probes keep arriving at a
/// fixed rate (a probe a second is ten a window) whatever the pool's
/// traffic, so in a busy pool they are a sliver of that count; a balancer
/// that ignores the drain (or one of several balancers that does) sends a
/// large part of it.
fn leaks(recent: u64, fair: f64) -> bool {
    recent >= 3 && recent as f64 >= DRAIN_LEAK * fair
}

/// See [`leaks`].
const DRAIN_LEAK: f64 = 0.1;

/// New connections `view` counted this tick to members out of rotation
/// (draining, not ready). They are part of the pool's rate, which decides
/// whether it is judged, though not of anyone's share: a balancer that
/// sends everything to a drained member leaves a busy pool whose eligible
/// members open nothing, and its DRAINING_VIOLATION must not abstain as
/// in a quiet one.
fn out_of_rotation(input: &PoolInput<impl AsRef<MemberInput>>, view: View) -> f64 {
    (input.members())
        .filter(|m| m.out_of_rotation().is_some())
        .filter_map(|m| m.counted(view))
        .map(|v| v.new_conns as f64)
        .sum()
}

/// The worse of a member's two views of one load signal (the server's on
/// a tie).
fn worse(
    sv: Option<&ViewVerdict>,
    lv: Option<&ViewVerdict>,
    signal: impl Fn(&ViewVerdict) -> &LoadVerdict,
) -> Option<(View, LoadVerdict)> {
    match (sv.map(&signal), lv.map(&signal)) {
        (Some(s), Some(l)) if l.severity_rank() > s.severity_rank() => Some((View::Lb, l.clone())),
        (Some(s), _) => Some((View::Server, s.clone())),
        (None, Some(l)) => Some((View::Lb, l.clone())),
        (None, None) => None,
    }
}

/// Expected connections one view would have counted of those the other
/// saw, at which its silence is no chance: the chance of missing them all
/// is then e⁻⁵ < 1%. It bounds both ways: the ZERO view's missing
/// connections the other counted since its last one (a MISMATCH), and the
/// other view's own silence since its last (then it went dark too, and
/// the ZERO stands).
const SILENCE_EXPECTED: f64 = 5.0;

/// What the other view's new connections say of one view's ZERO.
#[derive(Debug, PartialEq)]
enum Disagreement {
    /// None since the ZERO view's last, a tick of the agents' clocks
    /// apart, or the other view has been silent long enough to be dark
    /// too: the same outage, seen by both.
    None,
    /// Some, too few yet for the ZERO view to have surely counted one (it
    /// may see a fraction of the traffic), and the other view not yet
    /// surely dark: the ZERO waits, the other view's verdict stands.
    Pending,
    /// This many, more than the ZERO view could have missed.
    Mismatch(u64),
}

/// Reads `other`'s new connections since the ZERO view's last one (as
/// marked in `zero_seen` on the pool's tick clock, see [`Seen`]) against
/// the ZERO, at tick `now`. The views cross ZERO's bound each at its own
/// pace (one may count only the balancers that run an agent, or be more
/// dispersed), and the slower one still holds connections from before the
/// member went dark: those are no disagreement. Nor are the first
/// connections after an outage ends, which the sparser view counts later.
/// The expectation scales by the views' rates when the ZERO began: a view
/// that sees a tenth of the traffic needs ten times the other's
/// connections. The ZERO waits for the other view at most
/// [`SHARE_WINDOW`] ticks from its start.
fn disagreement(zero_seen: &Seen, other: &ViewVerdict, now: u64) -> Disagreement {
    let Some(mark) = zero_seen.zero else {
        return Disagreement::None;
    };
    let disagreeing = (other.conns_total).saturating_sub(zero_seen.other_disagreeing_after());
    let other_dark = other.zero_expected >= SILENCE_EXPECTED;
    if disagreeing as f64 * mark.ratio >= SILENCE_EXPECTED {
        Disagreement::Mismatch(disagreeing)
    } else if !other_dark && now < mark.since + SHARE_WINDOW as u64 {
        Disagreement::Pending
    } else {
        Disagreement::None
    }
}

/// Combines a member's views: ZERO needs every fresh observer to agree;
/// an LB that sends to a backend that receives nothing (or the reverse) is
/// a MISMATCH.
fn combine(
    m: &MemberInput,
    (sv, server_seen): (Option<&ViewVerdict>, Option<&Seen>),
    (lv, lb_seen): (Option<&ViewVerdict>, Option<&Seen>),
    now: u64,
) -> (Verdict, View, String) {
    let none = Seen::default();
    let (server_seen, lb_seen) = (server_seen.unwrap_or(&none), lb_seen.unwrap_or(&none));
    match (sv, lv) {
        (None, None) => (
            Verdict::NoData,
            View::Server,
            "no agent reports this member".into(),
        ),
        (None, Some(_)) if m.server.is_none() => (
            Verdict::NoData,
            View::Server,
            "the member's own agent never reported (NO_DATA, not zero)".into(),
        ),
        (Some(s), None) | (None, Some(s)) => {
            let view = if sv.is_some() { View::Server } else { View::Lb };
            (s.verdict, view, s.reason.clone())
        }
        (Some(s), Some(l)) => {
            // The LB view's DOWN is its own word on a member whose agent
            // went silent (unreachable), not a guess from that silence.
            if s.verdict == Verdict::NoData && matches!(l.verdict, Verdict::Down { .. }) {
                return (l.verdict, View::Lb, l.reason.clone());
            }
            if s.verdict == Verdict::NoData {
                return (Verdict::NoData, View::Server, s.reason.clone());
            }
            if l.verdict == Verdict::NoData {
                return (s.verdict, View::Server, s.reason.clone());
            }
            let zero_in = match (s.verdict.is_zero(), l.verdict.is_zero()) {
                (true, false) => Some((View::Server, disagreement(server_seen, l, now))),
                (false, true) => Some((View::Lb, disagreement(lb_seen, s, now))),
                _ => None,
            };
            match zero_in {
                Some((View::Server, Disagreement::Mismatch(n))) => (
                    Verdict::Mismatch,
                    View::Server,
                    format!(
                        "its load balancers sent {n} new connections since it last received one, and it received none"
                    ),
                ),
                Some((View::Lb, Disagreement::Mismatch(n))) => (
                    Verdict::Mismatch,
                    View::Lb,
                    format!(
                        "it received {n} new connections since its load balancers last sent one, and they sent none"
                    ),
                ),
                Some((View::Server, Disagreement::Pending)) => {
                    (l.verdict, View::Lb, l.reason.clone())
                }
                Some((View::Lb, Disagreement::Pending)) => {
                    (s.verdict, View::Server, s.reason.clone())
                }
                _ if l.verdict.rank() > s.verdict.rank() => (l.verdict, View::Lb, l.reason.clone()),
                _ => (s.verdict, View::Server, s.reason.clone()),
            }
        }
    }
}

/// The bounds one view's members are judged against this tick.
struct Bounds {
    /// Dispersion (φ ≥ 1).
    phi: f64,
    /// ZERO evidence per expected connection under dispersion φ.
    zero_gain: f64,
    /// ZERO evidence that fires (Bonferroni over the members).
    zero_bound: f64,
    /// SKEW z that pages, and that warns.
    z_page: f64,
    z_warn: f64,
}

impl Bounds {
    fn new(s: &Settings, dispersion: f64, count: usize) -> Self {
        let phi = dispersion.max(1.0);
        let zero_gain = if phi > 1.0001 {
            phi.ln() / (phi - 1.0)
        } else {
            1.0
        };
        let tests = count.max(1) * WINDOWS.len();
        Self {
            phi,
            zero_gain,
            zero_bound: (count.max(1) as f64 / s.zero_alpha).ln(),
            z_page: z_bound(s.skew_alpha, tests),
            z_warn: z_bound(s.skew_alpha * 1e3, tests),
        }
    }
}

/// The pool-wide facts one view's members are judged in this tick.
struct ShareTick {
    /// The tick judged.
    tick: u64,
    /// New connections to the eligible members.
    new_conns: f64,
    /// Their weights' sum.
    weight_sum: f64,
    /// Whether the pool's long-run rate is high enough to judge ZERO.
    judged_rate: bool,
}

/// What judging the members leaves for the pool-wide statistics.
#[derive(Default)]
struct Tally {
    /// χ² of this tick's counts against the weights, and its terms.
    chi2: f64,
    dof: usize,
    /// Something looks wrong (a SKEW, or half a ZERO's evidence): this
    /// tick teaches the dispersion nothing.
    suspect: bool,
    /// Each judged member's (observed, expected) over the share window.
    window: Vec<(f64, f64)>,
    /// And this tick's, in the same order.
    tick: Vec<(f64, f64)>,
}

impl Tally {
    /// This tick's χ² per degree of freedom: the dispersion it shows.
    ///
    /// In a pool of fewer than [`ROBUST_FROM`] members, the members far
    /// off over the share window (one at a time, against the others and
    /// the dispersion `learned` so far) are left out, and the rest measured
    /// against their own total. Without that, a pool skewed from its first
    /// tick (evenflow started, or its collector restarted, during the
    /// incident) learns its skew as burstiness while each tick is too few
    /// connections to flag it, and at 4 new connections a tick 7:1:1:1
    /// never paged (`a_pool_skewed_from_its_first_tick_pages_as_soon_as_one_watched_first`).
    /// Over the window, and not the tick, because a tick of a quiet pool
    /// holds too few connections to tell.
    fn dispersion(&self, learned: f64) -> Option<f64> {
        if self.window.len() >= ROBUST_FROM {
            return (self.dof >= 2).then(|| self.chi2 / (self.dof - 1) as f64);
        }
        // Members with a share only: one of weight 0 that still takes
        // connections (persistent ones, behind HAProxy) would otherwise
        // add to the total the others are measured against.
        let shared: Vec<usize> = (0..self.window.len())
            .filter(|&i| self.window[i].1 > 0.0)
            .collect();
        let window: Vec<(f64, f64)> = shared.iter().map(|&i| self.window[i]).collect();
        let tick: Vec<(f64, f64)> = shared.iter().map(|&i| self.tick[i]).collect();
        let keep = apart_from_outliers(window.len(), learned, |i, keep| {
            binomial_score_apart(&window, i, keep)
        });
        let (o, e) = (keep.iter()).fold((0.0, 0.0), |(o, e), &i| (o + tick[i].0, e + tick[i].1));
        if e <= 0.0 {
            return None;
        }
        let (chi2, dof) = (keep.iter())
            .map(|&i| (tick[i].0, tick[i].1 * o / e))
            .filter(|&(_, e)| e >= 1.0)
            .fold((0.0, 0usize), |(c, d), (o, e)| {
                (c + (o - e).powi(2) / e, d + 1)
            });
        (dof >= 2).then(|| chi2 / (dof - 1) as f64)
    }
}

/// The strongest SKEW finding over the windows: (verdict, ratio, observed,
/// z, expected).
type Skew = (Verdict, f64, f64, f64, f64);

impl ViewState {
    /// Forgets the members not in `ids`, the pool's members since its
    /// set last changed: once per change, not every tick, which in a pool
    /// of thousands of members took a search of the pool per member.
    fn forget_left(&mut self, ids: &std::collections::HashSet<&str>) {
        self.members.retain(|id, _| ids.contains(id.as_str()));
        self.load.forget_left(ids);
    }

    /// A member's recent new connections in this view.
    fn seen(&self, id: &str) -> Option<&Seen> {
        self.members.get(id).map(|hist| &hist.seen)
    }

    /// Judges one view of a pool: each member's share, ZERO and SKEW, the
    /// pool's concentration, then the load signals.
    fn evaluate(
        &mut self,
        s: &Settings,
        input: &PoolInput<impl AsRef<MemberInput>>,
        view: View,
        (presence, failures): (&Presence, &Failures),
    ) -> ViewOutcome {
        let eligible: Vec<(&MemberInput, ViewInput)> = input
            .members()
            .filter_map(|m| m.eligible(view, presence).map(|v| (m, v)))
            .collect();
        let observed_any = input.members().any(|m| m.view(view).is_some());
        let n: f64 = eligible.iter().map(|(_, v)| v.new_conns as f64).sum();
        let wsum: f64 = eligible.iter().map(|(m, _)| m.weight).sum();
        let count = eligible.len();
        // A tick without one eligible member (every observer reset or
        // stale, a pool before its agents' first reports) says nothing of
        // the pool's traffic: it is not a tick of none.
        if count > 0 {
            self.record_total(n + out_of_rotation(input, view));
        }
        let (rate, long_rate) = self.rates();
        let share_tick = ShareTick {
            tick: input.tick,
            new_conns: n,
            weight_sum: wsum,
            judged_rate: long_rate >= s.min_pool_rate,
        };

        let bounds = Bounds::new(s, self.dispersion, count);
        let mut verdicts = HashMap::with_capacity(input.members.len());
        let mut tally = Tally {
            window: Vec::with_capacity(count),
            tick: Vec::with_capacity(count),
            ..Tally::default()
        };
        for m in input.members() {
            let Some(v) = m.view(view) else { continue };
            let mut vv = self.judge_member(s, &bounds, &share_tick, (m, presence), v, &mut tally);
            vv.failed_window = failures.window(&m.id);
            verdicts.insert(m.id.clone(), vv);
        }
        self.observed_shares(&mut verdicts, &tally.window);
        self.explained_shortfalls(s, input.tick, &mut verdicts);
        let expected_effective = if wsum > 0.0 {
            1.0 / eligible
                .iter()
                .map(|(m, _)| (m.weight / wsum).powi(2))
                .sum::<f64>()
        } else {
            0.0
        };
        let (effective, concentrated) =
            self.concentration(s, &eligible, expected_effective, bounds.phi);
        // A least-connections balancer concentrates new connections on the
        // members holding the fewest: by design, not a fault.
        let least_connections = !input.balancing.judges_new_connections();
        let concentrated = concentrated && !least_connections;
        self.learn_dispersion(s, &tally, concentrated);
        let load = self.load.evaluate(
            s,
            input,
            view,
            presence,
            &mut verdicts,
            &Context {
                turnover: long_rate,
                concentrated,
                new_conns: n,
                least_connections,
            },
        );
        ViewOutcome {
            verdicts,
            effective,
            expected_effective,
            concentrated,
            rate,
            long_rate,
            judged: observed_any && count > 0,
            dark: count > 0
                && self.totals_len == RING
                && self.totals.iter().all(|&t| t == 0.0)
                && load.active == 0,
            load,
            new_conns: n,
            weight_sum: wsum,
        }
    }

    /// Records this tick's new connections.
    fn record_total(&mut self, n: f64) {
        self.totals_head = (self.totals_head + 1) % RING;
        self.totals[self.totals_head] = n;
        self.totals_len = (self.totals_len + 1).min(RING);
        // The long-run rate decides whether the pool is judged at all: an
        // exponential average over about five minutes, so one burst does not
        // make a trickle judgeable.
        self.slow_rate = if self.totals_len <= 1 {
            n
        } else {
            0.99 * self.slow_rate + 0.01 * n
        };
    }

    /// The rate over the share window and the long-run rate, of the ticks
    /// recorded.
    fn rates(&self) -> (f64, f64) {
        let total_w = |w: usize| -> f64 {
            let w = w.min(self.totals_len);
            (0..w)
                .map(|k| self.totals[(self.totals_head + RING - k) % RING])
                .sum()
        };
        let rate = total_w(SHARE_WINDOW) / SHARE_WINDOW.min(self.totals_len).max(1) as f64;
        let long_rate = self
            .slow_rate
            .min(total_w(RING) / self.totals_len.max(1) as f64);
        (rate, long_rate)
    }

    /// One member's verdict in this view: NO_DATA when its observer is
    /// stale or reset, DRAINING_VIOLATION when a draining member keeps
    /// getting connections, DOWN when it stopped listening, SETTLING while
    /// it joins, else ZERO or SKEW from its share.
    fn judge_member(
        &mut self,
        s: &Settings,
        bounds: &Bounds,
        share_tick: &ShareTick,
        (member, presence): (&MemberInput, &Presence),
        input: ViewInput,
        tally: &mut Tally,
    ) -> ViewVerdict {
        let down = presence.down(&member.id);
        let joining = presence.joining(&member.id);
        let hist = member_entry(&mut self.members, &member.id);
        // A stale observer's figures are its last rate carried on, and a
        // reset tick's delta is unknown: neither is a connection seen.
        if input.fresh && !input.reset {
            hist.conns_total += input.new_conns;
        }
        let expected_share = if member.draining
            || !input.fresh
            || input.reset
            || down.is_some()
            || joining.is_some()
            || share_tick.weight_sum <= 0.0
        {
            0.0
        } else {
            member.weight / share_tick.weight_sum
        };
        let mut judged = ViewVerdict {
            verdict: Verdict::Ok,
            fresh: input.fresh,
            new_conns: input.new_conns,
            bytes_in: input.bytes_in,
            bytes_out: input.bytes_out,
            active: input.active,
            observed_share: 0.0,
            expected_share,
            ratio: 1.0,
            window_observed: 0.0,
            window_expected: 0.0,
            zero_expected: 0.0,
            dark_ticks: 0,
            z: 0.0,
            conns_total: hist.conns_total,
            failed_window: 0,
            reason: String::new(),
            active_load: LoadVerdict::default(),
            bytes_load: LoadVerdict::default(),
            bytes_in_share: 0.0,
            bytes_out_share: 0.0,
        };
        if !input.fresh || input.reset {
            judged.verdict = Verdict::NoData;
            judged.reason = if input.reset {
                "its agent's counters restarted this tick".into()
            } else {
                "its observer missed three reports (stale)".into()
            };
            // A gap: start the ZERO evidence again afterwards.
            hist.zero_e = 0.0;
            return judged;
        }
        hist.seen.record(share_tick.tick, input.new_conns);
        if let Some(out) = member.out_of_rotation() {
            hist.draining_recent.rotate_right(1);
            hist.draining_recent[0] = input.new_conns;
            hist.draining_fair.rotate_right(1);
            let weights = share_tick.weight_sum + member.weight;
            hist.draining_fair[0] = if weights > 0.0 {
                (share_tick.new_conns + input.new_conns as f64) * member.weight / weights
            } else {
                0.0
            };
            let recent: u64 = hist.draining_recent.iter().sum();
            let fair: f64 = hist.draining_fair.iter().sum();
            judged.window_observed = recent as f64;
            judged.window_expected = fair;
            if leaks(recent, fair) {
                judged.verdict = Verdict::DrainingViolation;
                judged.reason = format!(
                    "{}, yet it got {recent} new connections in 10 ticks (its weight would draw {fair:.0}): {}",
                    out.state(),
                    out.sender()
                );
            }
            return judged;
        }
        if let Some(Downed { since, why, debt }) = down {
            let ticks = share_tick.tick.saturating_sub(since) + 1;
            judged.verdict = Verdict::Down {
                page: debt >= s.down_page_ticks,
            };
            judged.reason = match why {
                Down::NotListening => format!(
                    "its agent lists no listener on its port ({ticks} ticks): the backend is down, so no balancer can send it connections"
                ),
                Down::Unreachable => format!(
                    "its own agent is silent (stale) and its balancers' last connection attempts to it failed, none opening since ({ticks} ticks): its host is down or cut off from them"
                ),
            };
            if debt > ticks {
                judged.reason.push_str(&format!(
                    "; it keeps going down: with its outages before this one, down {debt} ticks more than up"
                ));
            }
            // Its silence is the outage's, not the balancer's: the ZERO
            // evidence and the windows start again when it is back.
            hist.zero_e = 0.0;
            hist.zero_bytes = false;
            hist.len = 0;
            return judged;
        }
        if let Some(join) = joining {
            judged.verdict = Verdict::Settling;
            judged.reason = join.reason(share_tick.tick, s.join_grace_ticks);
            // Judged from when it joins the rotation, on windows of its own.
            hist.zero_e = 0.0;
            hist.zero_bytes = false;
            hist.len = 0;
            return judged;
        }
        judge_share(s, bounds, share_tick, hist, &input, &mut judged, tally);
        judged
    }

    /// Observed shares over the share window, for display and
    /// concentration.
    fn observed_shares(&self, verdicts: &mut HashMap<String, ViewVerdict>, window: &[(f64, f64)]) {
        let total_obs: f64 = window.iter().map(|(o, _)| o).sum();
        for (id, vv) in verdicts.iter_mut() {
            if vv.expected_share > 0.0
                && total_obs > 0.0
                && let Some(h) = self.members.get(id)
            {
                vv.observed_share = h.sums(SHARE_WINDOW).0 / total_obs;
            }
        }
    }

    /// Demotes to a warning the low pages that a member above its share
    /// explains: in a pool of five whose balancer sends one member 3× its
    /// share, the other four get 0.71× theirs, and a quiet stretch takes
    /// one of them under half (2.9σ below 0.71× over the window, a few
    /// times a day at 20 new connections a second). Measured against the
    /// other members in rotation judged OK or low and not refusing, it gets
    /// its part, over every window it is judged on: the fault is the high
    /// member's, and so is the page. Only while a member pages SKEW_HIGH,
    /// or did within `clear_ticks` and is still high (a member at 2.1× its
    /// share flickers between page and warning). A member under half of
    /// what those others get over any window still pages, and so does one
    /// with no such others (two members; one declared heavier than its
    /// balancer weighs it, whose shortfall the rest share) or one whose
    /// own failed attempts explain its shortfall.
    fn explained_shortfalls(
        &mut self,
        s: &Settings,
        tick: u64,
        verdicts: &mut HashMap<String, ViewVerdict>,
    ) {
        if verdicts
            .values()
            .any(|v| v.verdict == (Verdict::SkewHigh { page: true }))
        {
            self.high_paged_at = Some(tick);
        }
        let lately = self
            .high_paged_at
            .is_some_and(|at| tick.saturating_sub(at) <= u64::from(s.clear_ticks));
        if !lately
            || !verdicts
                .values()
                .any(|v| matches!(v.verdict, Verdict::SkewHigh { .. }))
        {
            return;
        }
        let others: Vec<&str> = verdicts
            .iter()
            .filter(|(_, v)| {
                matches!(v.verdict, Verdict::Ok | Verdict::SkewLow { .. })
                    && v.expected_share > 0.0
                    && !v.refused()
            })
            .map(|(id, _)| id.as_str())
            .collect();
        let explained: Vec<(String, f64)> = verdicts
            .iter()
            .filter(|(_, v)| v.verdict == (Verdict::SkewLow { page: true }) && !v.refused())
            .filter_map(|(id, _)| Some((id.clone(), self.explained(id, &others, s.page_low)?)))
            .collect();
        for (id, least) in explained {
            if let Some(v) = verdicts.get_mut(&id) {
                v.verdict = Verdict::SkewLow { page: false };
                v.reason.push_str(&format!(
                    "; at least {least:.2}× what the other members judged OK or low get: a member above its share takes the rest, and the page is that member's"
                ));
            }
        }
    }

    /// The least, over the windows member `id` is judged on, of its ratio
    /// over the `others`' (itself left out), when at least `page_low` in
    /// every one of them and there are others to measure against.
    fn explained(&self, id: &str, others: &[&str], page_low: f64) -> Option<f64> {
        let mine = self.members.get(id)?;
        let mut least: Option<f64> = None;
        for w in WINDOWS {
            let (o, e) = mine.sums(w);
            if e < 1.0 {
                continue;
            }
            let (ro, re) = others
                .iter()
                .filter(|&&other| other != id)
                .filter_map(|other| self.members.get(*other))
                .fold((0.0, 0.0), |(ro, re), h| {
                    let (o, e) = h.sums(w);
                    (ro + o, re + e)
                });
            if re < 1.0 || ro <= 0.0 {
                return None;
            }
            let relative = (o / e) / (ro / re);
            if relative < page_low {
                return None;
            }
            least = Some(least.map_or(relative, |l: f64| l.min(relative)));
        }
        least
    }

    /// CONCENTRATION over the last 1, 3 and 10 ticks: the effective number
    /// must fall below the ratio *and* the counts must be far from the
    /// weights (a χ² test at skew_alpha, with dispersion), with at least
    /// five expected connections per member in the window (the usual
    /// condition for the χ² approximation). Returns the effective number of
    /// members (over the window that found the concentration, else the
    /// longest) and whether the view is concentrated.
    fn concentration(
        &mut self,
        s: &Settings,
        eligible: &[(&MemberInput, ViewInput)],
        expected_effective: f64,
        phi: f64,
    ) -> (f64, bool) {
        let count = eligible.len();
        let chi_crit = chi2_bound(s.skew_alpha, count.saturating_sub(1).max(1));
        let mut looks = Vec::with_capacity(3);
        for w in [1usize, 3, SHARE_WINDOW] {
            let sums: Vec<(f64, f64)> = eligible
                .iter()
                .filter_map(|(m, _)| self.members.get(&m.id).map(|h| h.sums(w)))
                .collect();
            let obs: f64 = sums.iter().map(|(o, _)| o).sum();
            let exp: f64 = sums.iter().map(|(_, e)| e).sum();
            if obs <= 0.0 {
                continue;
            }
            let effective = 1.0 / sums.iter().map(|(o, _)| (o / obs).powi(2)).sum::<f64>();
            let chi: f64 = sums
                .iter()
                .filter(|(_, e)| *e > 0.0)
                .map(|(o, e)| (o - e) * (o - e) / (phi * e))
                .sum();
            // The shape's distance from the weights, per connection: a
            // window of `exp` connections would see χ² = exp / φ × this.
            let shape: f64 = sums
                .iter()
                .filter(|(_, e)| *e > 0.0)
                .map(|(o, e)| (o / obs - e / exp).powi(2) / (e / exp))
                .sum();
            // Concentration is many members losing their share at once, not
            // one member's skew: at least two, and a quarter of the pool,
            // below the page band.
            let (starved, short, starved_e) = sums
                .iter()
                .filter(|(o, e)| *e > 0.0 && o / e < s.page_low)
                .fold((0, 0.0, 0.0), |(n, short, exp), (o, e)| {
                    (n + 1, short + e - o, exp + e)
                });
            // The starved members' shortfall together is beyond chance (five
            // standard deviations): in a window of a few connections each,
            // members dip below the band by chance.
            let starved = if short > 5.0 * (phi * starved_e).sqrt() {
                starved
            } else {
                0
            };
            let judgeable = count >= 2 && exp >= 5.0 * count as f64 && expected_effective > 0.0;
            let concentrated = judgeable
                && effective / expected_effective < s.concentration_ratio
                && chi > chi_crit
                && starved >= count.div_ceil(4).max(2);
            looks.push(Look {
                window: w,
                expected: exp,
                judgeable,
                concentrated,
                shape,
                effective,
            });
        }
        // The concentrated window that saw the plainest shape.
        let seen = (looks.iter())
            .filter(|look| look.concentrated)
            .max_by(|a, b| a.shape.total_cmp(&b.shape));
        // A short window that is not concentrated says the pool is not
        // (the long window only speaks for pools too quiet for short
        // ones), if it could have seen that shape: one tick of a
        // moderate, overdispersed pool holds too few connections to say
        // anything.
        let concentrated = seen.is_some_and(|seen| {
            !looks.iter().any(|l| {
                l.window <= 3
                    && l.judgeable
                    && !l.concentrated
                    && l.expected / phi * seen.shape >= chi_crit
            })
        });
        // A page says where the traffic went as the window that found it
        // saw it: the longest window still holds the ticks before.
        let effective = match seen {
            Some(seen) if concentrated => seen.effective,
            _ => (looks.iter().find(|l| l.window == SHARE_WINDOW)).map_or(0.0, |l| l.effective),
        };
        if self.was_concentrated && !concentrated {
            for h in self.members.values_mut() {
                h.len = 0;
            }
        }
        self.was_concentrated = concentrated;
        (effective, concentrated)
    }

    /// Learns the dispersion, only from ticks where nothing looks wrong.
    fn learn_dispersion(&mut self, s: &Settings, tally: &Tally, concentrated: bool) {
        if tally.suspect || concentrated {
            return;
        }
        if let Some(phi_tick) = tally.dispersion(self.dispersion) {
            // Winsorise: one burst moves the estimate a little, not a lot.
            let phi_tick = phi_tick.min(self.dispersion * 3.0);
            let alpha = if self.samples < 20 { 0.2 } else { 0.03 };
            self.dispersion_mean = ((1.0 - alpha) * self.dispersion_mean + alpha * phi_tick)
                .clamp(0.0, s.max_dispersion);
            self.dispersion = self.dispersion_mean.clamp(1.0, s.max_dispersion);
            self.samples += 1;
        }
    }
}

/// What [`ViewState::concentration`] saw over one window.
struct Look {
    /// Ticks.
    window: usize,
    /// Connections the weights expected over it.
    expected: f64,
    /// Whether it held enough connections to judge.
    judgeable: bool,
    concentrated: bool,
    /// χ² per connection of the counts' shape against the weights.
    shape: f64,
    /// Effective number of members.
    effective: f64,
}

/// A serving member's ZERO evidence and SKEW over its windows, into `vv`.
fn judge_share(
    s: &Settings,
    bounds: &Bounds,
    share_tick: &ShareTick,
    hist: &mut MemberHist,
    input: &ViewInput,
    judged: &mut ViewVerdict,
    tally: &mut Tally,
) {
    let e = share_tick.new_conns * judged.expected_share;
    let o = input.new_conns as f64;
    // A member that was ZERO and receives again starts its windows
    // afresh: the dark ticks are the ZERO alert's, not a SKEW's.
    if input.new_conns > 0 && hist.zero_e * bounds.zero_gain >= bounds.zero_bound {
        hist.len = 0;
    }
    hist.push(o, e);
    if e >= 1.0 {
        tally.chi2 += (o - e) * (o - e) / e;
        tally.dof += 1;
    }
    // ZERO evidence; a pool too quiet to judge accumulates none.
    if input.new_conns == 0 {
        if share_tick.judged_rate {
            hist.zero_e += e;
        }
        if input.bytes_in + input.bytes_out > 0 {
            hist.zero_bytes = true;
        }
    } else {
        hist.zero_e = 0.0;
        hist.zero_bytes = false;
    }
    hist.dark_ticks = if input.new_conns == 0 {
        hist.dark_ticks + 1
    } else {
        0
    };
    judged.zero_expected = hist.zero_e;
    judged.dark_ticks = hist.dark_ticks;
    let zero_evidence = hist.zero_e * bounds.zero_gain;
    if zero_evidence >= bounds.zero_bound / 2.0 {
        tally.suspect = true;
    }
    let (ow, ew) = hist.sums(SHARE_WINDOW);
    judged.window_observed = ow;
    judged.window_expected = ew;
    judged.ratio = if ew > 0.0 { ow / ew } else { 1.0 };
    tally.window.push((ow, ew));
    tally.tick.push((o, e));
    let best = strongest_skew(s, bounds, hist);
    if zero_evidence >= bounds.zero_bound {
        judged.verdict = Verdict::Zero {
            dark: !hist.zero_bytes,
        };
        judged.reason = format!(
            "0 new connections while {:.1} were expected since its last one (P ≈ {:.1e}; {})",
            hist.zero_e,
            (-zero_evidence).exp(),
            if hist.zero_bytes {
                "bytes still flow on old connections"
            } else {
                "fully dark"
            }
        );
        judged.z = -zero_evidence.sqrt();
    } else if let Some((verdict, r, ow, z, ew)) = best {
        tally.suspect = true;
        judged.verdict = verdict;
        judged.ratio = r;
        judged.z = z;
        judged.reason = format!(
            "{:.0} new connections where {:.1} were expected ({:.2}× its share, z = {:.1}, dispersion {:.2})",
            ow, ew, r, z, bounds.phi
        );
    }
}

/// SKEW over several windows: the strongest finding.
fn strongest_skew(s: &Settings, bounds: &Bounds, hist: &MemberHist) -> Option<Skew> {
    let mut best: Option<Skew> = None;
    for w in WINDOWS {
        let (ow, ew) = hist.sums(w);
        if ew < 1.0 {
            continue;
        }
        let r = ow / ew;
        let z = anscombe_z(ow, ew, bounds.phi);
        let found = if r > s.page_high && z > bounds.z_page {
            Some(Verdict::SkewHigh { page: true })
        } else if r < s.page_low && -z > bounds.z_page && ow > 0.0 {
            // Nothing at all is ZERO's to call, with its own bound.
            Some(Verdict::SkewLow { page: true })
        } else if r > s.warn_high && z > bounds.z_warn {
            Some(Verdict::SkewHigh { page: false })
        } else if r < s.warn_low && -z > bounds.z_warn && ow > 0.0 {
            Some(Verdict::SkewLow { page: false })
        } else {
            None
        };
        if let Some(f) = found
            && best.is_none_or(|b| {
                f.rank() > b.0.rank() || (f.rank() == b.0.rank() && z.abs() > b.3.abs())
            })
        {
            best = Some((f, r, ow, z, ew));
        }
    }
    best
}

/// A member's state, created on first sight; the id is copied only then
/// (every tick would be an allocation per member).
pub(super) fn member_entry<'a, V: Default>(map: &'a mut HashMap<String, V>, id: &str) -> &'a mut V {
    if !map.contains_key(id) {
        map.insert(id.to_owned(), V::default());
    }
    map.get_mut(id).expect("inserted above")
}

/// z-score of `observed` against `expected` counts after Anscombe's
/// variance-stabilising square root, `2 (√(O + 3/8) − √(E + 3/8)) / √φ`:
/// unlike `(O − E) / √E` it keeps Poisson's heavy right tail at small
/// counts honest, and equals it at large ones.
pub fn anscombe_z(observed: f64, expected: f64, phi: f64) -> f64 {
    2.0 * ((observed + 0.375).sqrt() - (expected + 0.375).sqrt()) / phi.max(1.0).sqrt()
}

#[cfg(test)]
mod forgetting {
    use super::*;
    use crate::detect::tests::input;

    /// How many members each view and its load still hold state for.
    fn held(pool: &PoolState) -> [usize; 4] {
        [
            pool.server.members.len(),
            pool.server.load.members_held(),
            pool.lb.members.len(),
            pool.lb.load.members_held(),
        ]
    }

    #[test]
    fn a_member_that_leaves_is_forgotten_and_one_that_stays_is_not() {
        let s = Settings::default();
        let mut pool = PoolState::default();
        let four = [1.0; 4];
        for t in 0..20 {
            let mut i = input(t, &[10; 4], &four);
            for m in &mut i.members {
                m.lb = m.server;
            }
            pool.evaluate(&s, &i);
        }
        assert_eq!(held(&pool), [4; 4]);
        // The last member leaves: every view forgets it at once.
        let mut three = input(20, &[10; 3], &four[..3]);
        for m in &mut three.members {
            m.lb = m.server;
        }
        pool.evaluate(&s, &three);
        assert_eq!(held(&pool), [3; 4]);
        // Ticks without a change keep what the members hold.
        for t in 21..25 {
            three.tick = t;
            pool.evaluate(&s, &three);
        }
        assert_eq!(held(&pool), [3; 4]);
    }
}

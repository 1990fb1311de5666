//! Load: what each member *carries* — its open connections and its bytes —
//! against its share, beside the new connections the balancer decides.
//!
//! Long-lived connections (gRPC and HTTP/2 channels, HTTP/1.1 keep-alive,
//! database pools) are placed once and then carry load for minutes or
//! hours, so a member can get its share of new connections and still carry
//! three times its share of load, or nothing at all. These verdicts answer
//! the second question; the cause says which of the two it is.
//!
//! # Open connections
//! A fair balancer places each connection on member `i` with probability
//! `p_i` (its weight share), independently of the others (random
//! balancers exactly; round robin and least connections place them more
//! evenly still). The `a_i` of the pool's `A` open connections a member
//! holds is then Binomial(A, p_i), and the test is that tail: exact
//! where a verdict may turn on it, else its Chernoff bound
//! `exp(−A · KL(a_i/A ‖ p_i) / φ)` (see [`super::tail`]), never the
//! normal approximation's optimism. `φ ≥ 1` is the placement's dispersion (clients that open
//! several connections at once behind source hashing land them together),
//! learned from the pool itself: the mean, over members, of each one's
//! squared standardised deviation, leaving out the members far off (by
//! the tick's median in pools of eight or more; in smaller ones one at a
//! time, by what the pool has learned so far, see [`SMALL_POOL_OUTLIER`])
//! and measuring the rest against their own total, and leaving out any
//! member whose load was flagged in the last 600 ticks (so one or two
//! imbalanced members cannot teach the pool that imbalance is normal),
//! averaged over the configurations the pool goes through — a tick counts
//! only as much as its connections are new.
//!
//! Open connections persist from tick to tick: the next tick sees the same
//! connections, not new evidence. So nothing is summed over ticks; the
//! sample is the `A` connections open now, each counted once, and it grows
//! only as connections turn over.
//!
//! # Bytes
//! Bytes per request and per connection are heavy-tailed: a few clients
//! send most of them, and one large request can dominate a tick. So bytes
//! are judged per connection and on a log scale: each tick, the member's
//! bytes (both ways) per open connection against the pool's, `q_i`; the
//! statistic is the mean of the middle half of `ln q_i` over the last 10
//! ticks (one large request moves one tick, which is trimmed). Its
//! variance is `κ / a_i`: the mean of `a_i` connections, `κ` their
//! heterogeneity (and what is left of the requests' noise), learned the
//! same robust way as `φ`. A bytes verdict needs the member's share of the
//! pool's bytes (the same trimmed mean over the same ticks) outside the
//! band, and
//! evidence: its bytes per connection far from the pool's (the finding is
//! its own and alerts), or its open connections (the finding follows
//! them, and the open-connection alert speaks for it).
//!
//! # Pages, and their false-alarm bound
//! A page needs the share outside the page band (below 0.5× or above 2×
//! by default) and the evidence beyond `load_alpha` split over every test
//! of the tick (Bonferroni: two signals, two sides, each member), for
//! `load_sustain` ticks in a row. Inside the page band, or with weaker
//! evidence (1,000 × the bound), it is a warning.
//!
//! The bound does not need ticks to be independent: a false page starts
//! with a tick whose test rejects, and by the union bound over ticks the
//! probability that any tick of a day rejects is at most `86,400 ·
//! load_alpha` (default 5·10⁻⁹: 0.43 per 1,000 pool-days), however
//! strongly one tick's connections resemble the next's. Persistence adds
//! no independent evidence and is not counted as such; it keeps brief
//! states (a restart, a reconnect wave) from paging.
//!
//! # Refilling
//! A member below its share because it restarted or joined refills as
//! connections turn over: the pool opens `c` new connections per tick and
//! holds `A`, so connections live `L = A / c` ticks (Little's law), and a
//! member at `a` of its expected `e` reaches half its share after
//! `L · ln(2 (e − a) / e)` ticks. While the time it has been low plus
//! that projection stays within `load_refill` ticks it is a warning
//! ("refilling"); beyond it — connections that never turn over, or the
//! window spent — it pages. In a least-connections pool the member
//! holding the fewest should get nearly all new connections: one that
//! gets less than half its share of them over the last ten ticks is not
//! refilling at all, and pages once the finding is sustained.
//!
//! # Routing, pinned or refusing
//! Every finding names its cause: **routing** when the member's new
//! connections are judged skewed the same way (SKEW or ZERO, or the pool
//! concentrates) and the last ten ticks still show it — the balancer's
//! choices are off; **pinned** when its new connections are
//! balanced (or too few to move anything) and old connections hold the
//! load — fixed by a maximum connection age, least-connections balancing
//! or request-level balancing. In a least-connections pool, whose new
//! connections are never judged skewed, the cause reads their ratio
//! instead: routing when they do not lean towards evening the member out.
//! A member below its share whose balancers' connection attempts to it
//! fail is **refusing** (see [`ViewVerdict::refused`]): the balancer
//! sends, the member does not take.

use std::collections::HashMap;

use super::{
    Settings,
    pool::{
        MemberInput, OutOfRotation, PoolInput, Presence, Verdict, View, ViewInput, ViewVerdict,
        member_entry,
    },
    tail::binomial_log_tail,
};

/// What a verdict or alert is about.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    /// New connections: the balancer's decisions.
    NewConnections,
    /// Connections open now: the load a member holds.
    ActiveConnections,
    /// Payload bytes both ways: the load its connections carry.
    Bytes,
}

impl Signal {
    /// Machine name (alert ids, metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::NewConnections => "new_connections",
            Signal::ActiveConnections => "active_connections",
            Signal::Bytes => "bytes",
        }
    }

    /// As people say it.
    pub fn label(self) -> &'static str {
        match self {
            Signal::NewConnections => "new connections",
            Signal::ActiveConnections => "open connections",
            Signal::Bytes => "bytes",
        }
    }
}

/// Why a member's load is off.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// Its new connections are skewed too: the balancer's choices are off.
    Routing,
    /// Its new connections are balanced: old connections hold the load.
    Pinned,
    /// Its balancers send it connections and they fail: the member refuses
    /// or does not answer them (see [`ViewVerdict::refused`]).
    Refusing,
}

impl Cause {
    /// Machine name.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Routing => "routing",
            Cause::Pinned => "pinned",
            Cause::Refusing => "refusing",
        }
    }
}

/// What usually fixes pinned load, said in every pinned reason.
pub const PINNED_FIXES: &str = "old connections hold the load; usual fixes: a maximum connection age \
     (gRPC MAX_CONNECTION_AGE, keep-alive limits), least-connections balancing, or request-level (L7) balancing";

/// One load signal's judgement of one member in one view.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadVerdict {
    /// OK, SKEW_LOW / SKEW_HIGH, ZERO (no open connection at all),
    /// NO_DATA, DOWN (not listening: not judged) or INSUFFICIENT_TRAFFIC.
    pub verdict: Verdict,
    /// Whether it pages (outside the page band, significant, sustained,
    /// and for a low member not refilling); otherwise a finding warns.
    pub page: bool,
    /// Routing, pinned or refusing, for findings.
    pub cause: Option<Cause>,
    /// The member's share of the pool's open connections now, or of its
    /// bytes over the last 10 ticks.
    pub observed_share: f64,
    /// The share its weight gives it.
    pub expected_share: f64,
    /// Observed over expected (bytes: the trimmed mean of the last 10
    /// ticks).
    pub ratio: f64,
    /// Natural log of the tail bound behind the verdict.
    pub log_p: f64,
    /// Ticks the finding has lasted.
    pub ticks: u64,
    /// Bytes only: the finding stands on the member's bytes per
    /// connection, beyond what its open connections explain.
    pub own: bool,
    pub reason: String,
}

impl Default for LoadVerdict {
    fn default() -> Self {
        Self {
            verdict: Verdict::Ok,
            page: false,
            cause: None,
            observed_share: 0.0,
            expected_share: 0.0,
            ratio: 1.0,
            log_p: 0.0,
            ticks: 0,
            own: false,
            reason: String::new(),
        }
    }
}

impl LoadVerdict {
    /// A ZERO, SKEW_LOW or SKEW_HIGH finding.
    pub fn is_finding(&self) -> bool {
        matches!(
            self.verdict,
            Verdict::Zero { .. } | Verdict::SkewLow { .. } | Verdict::SkewHigh { .. }
        )
    }

    /// Ordering for picking the worse of two views.
    pub(super) fn severity_rank(&self) -> (bool, u8, bool) {
        (self.page, self.verdict.rank(), self.own)
    }
}

/// Ticks of bytes the robust statistics look back over.
const BYTES_WINDOW: usize = 10;
/// Fewer open connections than this say nothing about a member's bytes per
/// connection: the mean of one or two clients' heavy-tailed rates is not
/// near normal (the open-connection test still speaks for them).
const MIN_BYTES_CONNS: f64 = 5.0;
/// The bytes heterogeneity κ assumed before the pool teaches otherwise
/// (per-connection byte rates with a coefficient of variation of 1), and
/// its bounds.
const KAPPA_PRIOR: f64 = 1.0;
const KAPPA_MIN: f64 = 0.02;
const KAPPA_MAX: f64 = 25.0;
/// The placement dispersion assumed until the pool's turnover shows
/// otherwise: a fifth above binomial's.
const PHI_PRIOR: f64 = 1.2;
/// The priors count as this many configurations of the pool's
/// connections.
const PRIOR_WEIGHT: f64 = 1.0;
/// Beyond this many configurations, older ones fade (an exponential
/// average with this memory).
const MEMORY: f64 = 50.0;

/// A scale learned from the pool's healthy ticks, weighted by how much of
/// the pool is new: a tick whose connections are the previous tick's is
/// the same configuration seen again, not another sample. Each tick counts
/// `min(1, new connections / open connections)` configurations (a pool
/// that never reconnects keeps its prior: one configuration, however long
/// it is watched, says little about the next); the estimate is the prior
/// and the first [`MEMORY`] configurations' mean, then an exponential
/// average over that many.
#[derive(Clone, Copy, Debug)]
struct Learned {
    mean: f64,
    weight: f64,
}

impl Learned {
    fn new(prior: f64) -> Self {
        Self {
            mean: prior,
            weight: PRIOR_WEIGHT,
        }
    }

    /// Folds in one tick's estimate worth `fresh` configurations,
    /// winsorised so one tick moves it a little, not a lot.
    fn learn(&mut self, x: f64, fresh: f64, lo: f64, hi: f64) {
        let x = x.min(self.mean.max(lo) * 3.0);
        let fresh = fresh.clamp(0.0, 1.0);
        self.weight = (self.weight + fresh).min(MEMORY);
        let w = fresh / self.weight;
        self.mean = ((1.0 - w) * self.mean + w * x).clamp(lo, hi);
    }

    fn value(&self, lo: f64, hi: f64) -> f64 {
        self.mean.clamp(lo, hi)
    }
}

/// Median of χ²₁.
const MEDIAN_CHI2_1: f64 = 0.454_936_4;
/// A member whose squared deviation exceeds this many times the pool's
/// robust scale is an outlier the scale is not learned from (a χ²₁ value
/// is beyond 16 about once in sixteen thousand).
const OUTLIER: f64 = 16.0;

/// Pools smaller than this score their members against the scale learned
/// so far instead of the tick's median: with fewer, the median cannot tell
/// one member far off from the rest. For `φ` the members learned from
/// count (judged, and for load not flagged lately); for κ the members
/// judged (see [`bytes_heterogeneity`]).
pub(super) const ROBUST_FROM: usize = 8;
/// In those pools, a member whose squared deviation from the others
/// exceeds this many times the learned scale is left out (a χ²₁ value is
/// beyond it once in a hundred). Without it, a member skewed from the
/// pool's first connection teaches the pool its imbalance while there are
/// still too few connections to flag it: 7 of the first 10 on one of four
/// is a binomial tail of only 3.5·10⁻³, yet once learned, 28 of 40 (a
/// tail of 2.8·10⁻⁹) no longer warns, and a pool of keep-alive connections
/// that never turn over never unlearns it. A scale learned too low still
/// rises: the members it keeps show more than it, tick after tick.
const SMALL_POOL_OUTLIER: f64 = 6.635;
/// What leaving those members out takes from a fair pool's estimate: the
/// mean of χ²₁ below 6.635, `P(χ²₃ ≤ 6.635) / P(χ²₁ ≤ 6.635)`.
const SMALL_POOL_TRUNCATION: f64 = 0.9155 / 0.99;

/// Ticks a member whose load was flagged stays out of what the pool
/// learns, flagged or not. The evidence against a member that holds too
/// much swings around the warning bound as its connections turn over (27
/// of 40, then 28); were it learned from in the ticks it falls short, its
/// deviation would raise the pool's dispersion, which weakens the
/// evidence, which keeps it unflagged: in a pool too small to spot it as
/// an outlier, it would teach the pool that its imbalance is normal. A
/// fair member is flagged once in hundreds of thousands of ticks, so
/// leaving it out a while biases nothing.
const LEARN_QUARANTINE: u64 = 600;

fn median(xs: &[f64]) -> f64 {
    let mut sorted = xs.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    }
}

/// The members the robust estimators keep: those whose `score` (a
/// squared deviation from a robust centre, χ²₁-like) is within
/// [`OUTLIER`] times the robust scale — the median score over the median
/// of χ²₁, at least `floor` (counts tie, and a median of zero would keep
/// nobody but the ties). For pools of [`ROBUST_FROM`] or more.
fn without_outliers(scores: &[f64], floor: f64) -> Vec<usize> {
    let bound = OUTLIER * (median(scores) / MEDIAN_CHI2_1).max(floor);
    (0..scores.len()).filter(|&i| scores[i] <= bound).collect()
}

/// The members a small pool's estimators keep: one at a time, the member
/// whose `score` against the others kept (a squared deviation over its
/// variance, χ²₁-like in scale units) is highest leaves while it exceeds
/// [`SMALL_POOL_OUTLIER`] times the scale `learned` so far. One at a time,
/// so a member far off does not make the others look off with it.
pub(super) fn apart_from_outliers(
    n: usize,
    learned: f64,
    score: impl Fn(usize, &[usize]) -> f64,
) -> Vec<usize> {
    let bound = SMALL_POOL_OUTLIER * learned;
    let mut keep: Vec<usize> = (0..n).collect();
    while keep.len() >= 2 {
        let worst = keep
            .iter()
            .map(|&i| (i, score(i, &keep)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match worst {
            Some((i, s)) if s > bound => keep.retain(|&k| k != i),
            _ => break,
        }
    }
    keep
}

/// The last [`BYTES_WINDOW`] values of one per-tick statistic (NaN where
/// a tick had none).
#[derive(Clone, Debug)]
struct Ring {
    v: [f64; BYTES_WINDOW],
    head: usize,
    len: usize,
}

impl Default for Ring {
    fn default() -> Self {
        Self {
            v: [f64::NAN; BYTES_WINDOW],
            head: 0,
            len: 0,
        }
    }
}

impl Ring {
    fn push(&mut self, x: f64) {
        self.head = (self.head + 1) % BYTES_WINDOW;
        self.v[self.head] = x;
        self.len = (self.len + 1).min(BYTES_WINDOW);
    }

    fn values(&self) -> impl Iterator<Item = f64> + '_ {
        (0..self.len)
            .map(|k| self.v[(self.head + BYTES_WINDOW - k) % BYTES_WINDOW])
            .filter(|x| x.is_finite())
    }

    fn sum(&self) -> f64 {
        self.values().sum()
    }

    /// The harmonic mean of the positive values (0 without any).
    fn harmonic_mean(&self) -> f64 {
        let (n, inv) = self
            .values()
            .filter(|&x| x > 0.0)
            .fold((0.0, 0.0), |(n, inv), x| (n + 1.0, inv + 1.0 / x));
        if inv > 0.0 { n / inv } else { 0.0 }
    }

    /// The mean of the middle half of the defined values (a quarter
    /// trimmed at each end), when at least half the window has one.
    fn trimmed_mean(&self) -> Option<f64> {
        let mut xs = [0.0; BYTES_WINDOW];
        let mut n = 0;
        for x in self.values() {
            xs[n] = x;
            n += 1;
        }
        if n < BYTES_WINDOW / 2 {
            return None;
        }
        let xs = &mut xs[..n];
        xs.sort_unstable_by(f64::total_cmp);
        let mid = &xs[n / 4..n - n / 4];
        Some(mid.iter().sum::<f64>() / mid.len() as f64)
    }
}

/// How strong a tick's evidence is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    None,
    Warn,
    Page,
}

/// A run of consecutive ticks with a finding on one side.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    /// −1 low, +1 high, 0 none.
    dir: i8,
    since: u64,
    page_since: Option<u64>,
}

impl Run {
    /// Records this tick; returns (ticks in the run, ticks at page level).
    fn update(&mut self, tick: u64, dir: i8, level: Level) -> (u64, u64) {
        if level == Level::None || dir == 0 {
            *self = Run::default();
            return (0, 0);
        }
        if self.dir != dir {
            *self = Run {
                dir,
                since: tick,
                page_since: None,
            };
        }
        if level == Level::Page {
            self.page_since.get_or_insert(tick);
        } else {
            self.page_since = None;
        }
        (
            tick.saturating_sub(self.since) + 1,
            self.page_since.map_or(0, |p| tick.saturating_sub(p) + 1),
        )
    }
}

#[derive(Clone, Debug, Default)]
struct MemberLoad {
    /// ln(bytes per open connection / the pool's), per tick.
    per_conn: Ring,
    /// Open connections in the ticks `per_conn` has a value for.
    per_conn_active: Ring,
    /// Share of the pool's bytes over the expected share, per tick.
    share: Ring,
    bytes_in: Ring,
    bytes_out: Ring,
    active: Run,
    bytes: Run,
    /// Ticks in a row it held the fewest open connections for its share
    /// (least-connections pools).
    emptiest_for: u64,
    /// The last tick its load was flagged (warned or paged).
    flagged_at: Option<u64>,
    /// Ticks in a row it has been draining (and its observer fresh).
    draining_for: u64,
}

/// The pool's bytes per tick, for the members' shares.
#[derive(Clone, Debug, Default)]
struct PoolBytes {
    bytes_in: Ring,
    bytes_out: Ring,
}

/// One view's load state of one pool.
#[derive(Clone, Debug)]
pub(super) struct LoadState {
    phi: Learned,
    kappa: Learned,
    members: HashMap<String, MemberLoad>,
    pool: PoolBytes,
}

impl Default for LoadState {
    fn default() -> Self {
        Self {
            phi: Learned::new(PHI_PRIOR),
            kappa: Learned::new(KAPPA_PRIOR),
            members: HashMap::new(),
            pool: PoolBytes::default(),
        }
    }
}

/// What the new-connection side of the view says, for causes and
/// refilling.
pub(super) struct Context {
    /// The pool's long-run new connections per tick.
    pub turnover: f64,
    /// The view's new connections concentrate.
    pub concentrated: bool,
    /// The pool's new connections this tick.
    pub new_conns: f64,
    /// The pool balances by least connections: a member below its share
    /// should get more than its share of new connections, one above it
    /// fewer.
    pub least_connections: bool,
}

/// The view's load in numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadSummary {
    /// Enough open connections to judge (`min_pool_active`, two members).
    pub judged: bool,
    /// Open connections of the eligible members.
    pub active: u64,
    /// Learned placement dispersion φ.
    pub dispersion: f64,
    /// Learned per-connection bytes heterogeneity κ.
    pub bytes_heterogeneity: f64,
}

/// An eligible member's numbers this tick.
struct Numbers {
    a: f64,
    e: f64,
    p: f64,
    bytes: f64,
}

/// The pool's totals over eligible members this tick.
#[derive(Default)]
struct Totals {
    active: f64,
    bytes: f64,
    bytes_in: f64,
    bytes_out: f64,
    count: usize,
}

/// Bounds of the tick's tests.
struct Bounds {
    ln_page: f64,
    ln_warn: f64,
}

/// Everything one tick's member judgements share.
struct Tick<'a> {
    s: &'a Settings,
    tick: u64,
    totals: Totals,
    /// The pool's bytes in and out over the bytes window.
    pool_in: f64,
    pool_out: f64,
    judged: bool,
    phi: f64,
    kappa: f64,
    bounds: Bounds,
    holders: Vec<(f64, &'a str)>,
    /// A least-connections pool's open connections: whom its balancer
    /// sends to, and what it has to refill.
    least_connections: Option<OpenPool>,
    ctx: &'a Context,
}

/// Healthy members' numbers the scales learn from.
#[derive(Default)]
struct Samples {
    placement: Vec<(f64, f64)>,
    bytes: Vec<(f64, f64)>,
    flagged: usize,
}

impl Totals {
    /// Sums over the members eligible in `view` (fresh, not reset, not
    /// draining, weighted).
    fn of(input: &PoolInput<impl AsRef<MemberInput>>, view: View, presence: &Presence) -> Self {
        let mut t = Totals::default();
        for m in input.members() {
            if let Some(v) = m.eligible(view, presence) {
                t.active += v.active as f64;
                t.bytes_in += v.bytes_in as f64;
                t.bytes_out += v.bytes_out as f64;
                t.count += 1;
            }
        }
        t.bytes = t.bytes_in + t.bytes_out;
        t
    }
}

/// A member eligible in `view`: its id, its open connections and what its
/// share of the pool's open connections would be.
type OpenLoad<'a> = (&'a str, f64, f64);

/// Every member eligible in `view` with a verdict, as an [`OpenLoad`] of
/// the pool's `active` open connections.
fn open_loads<'a>(
    input: &'a PoolInput<impl AsRef<MemberInput>>,
    view: View,
    presence: &Presence,
    verdicts: &HashMap<String, ViewVerdict>,
    active: f64,
) -> impl Iterator<Item = OpenLoad<'a>> {
    input.members().filter_map(move |m| {
        let v = m.eligible(view, presence)?;
        let e = active * verdicts.get(&m.id)?.expected_share;
        Some((m.id.as_str(), v.active as f64, e))
    })
}

/// Up to three members holding more than their share of the open
/// connections, most first: who holds what a member below its share lacks.
fn holders<'a>(loads: impl Iterator<Item = OpenLoad<'a>>) -> Vec<(f64, &'a str)> {
    let mut h: Vec<(f64, &str)> = loads
        .filter(|(_, _, e)| *e > 0.0)
        .map(|(id, a, e)| (a / e, id))
        .filter(|(ratio, _)| *ratio > 1.1)
        .collect();
    h.sort_by(|a, b| b.0.total_cmp(&a.0));
    h.truncate(3);
    h
}

/// A least-connections pool's open connections, in one pass.
#[derive(Clone, Copy)]
struct OpenPool {
    /// The lowest open-connection load of a member, as a multiple of its
    /// share (infinite when none has a share): whom the balancer sends to.
    emptiest: f64,
    /// Open connections the members lack to half their shares.
    backlog: f64,
}

impl OpenPool {
    fn of<'a>(loads: impl Iterator<Item = OpenLoad<'a>>) -> Self {
        loads.fold(
            Self {
                emptiest: f64::INFINITY,
                backlog: 0.0,
            },
            |p, (_, a, e)| Self {
                emptiest: if e > 0.0 {
                    p.emptiest.min(a / e)
                } else {
                    p.emptiest
                },
                backlog: p.backlog + (e / 2.0 - a).max(0.0),
            },
        )
    }
}

impl LoadState {
    /// Forgets the members not in `ids` (see `ViewState::forget_left`).
    pub(super) fn forget_left(&mut self, ids: &std::collections::HashSet<&str>) {
        self.members.retain(|id, _| ids.contains(id.as_str()));
    }

    /// How many members it holds state for.
    #[cfg(test)]
    pub(super) fn members_held(&self) -> usize {
        self.members.len()
    }

    /// Judges the load of every member of `view` this tick, writing each
    /// member's [`LoadVerdict`]s into its new-connection verdict.
    pub(super) fn evaluate(
        &mut self,
        s: &Settings,
        input: &PoolInput<impl AsRef<MemberInput>>,
        view: View,
        presence: &Presence,
        verdicts: &mut HashMap<String, ViewVerdict>,
        ctx: &Context,
    ) -> LoadSummary {
        let totals = Totals::of(input, view, presence);
        self.pool.bytes_in.push(totals.bytes_in);
        self.pool.bytes_out.push(totals.bytes_out);
        let tests = 4.0 * totals.count.max(1) as f64;
        let loads = || open_loads(input, view, presence, verdicts, totals.active);
        let (holders, least_connections) = (
            holders(loads()),
            ctx.least_connections.then(|| OpenPool::of(loads())),
        );
        let tick = Tick {
            s,
            tick: input.tick,
            pool_in: self.pool.bytes_in.sum(),
            pool_out: self.pool.bytes_out.sum(),
            judged: totals.count >= 2 && totals.active >= s.min_pool_active.max(1.0),
            phi: self.phi.value(1.0, s.max_dispersion.max(1.0)),
            kappa: self.kappa.value(KAPPA_MIN, KAPPA_MAX),
            bounds: Bounds {
                ln_page: (s.load_alpha / tests).ln(),
                ln_warn: (s.load_alpha * 1e3 / tests).min(0.5).ln(),
            },
            holders,
            least_connections,
            ctx,
            totals,
        };
        let mut samples = Samples::default();
        for m in input.members() {
            let Some(v) = m.view(view) else { continue };
            let Some(vv) = verdicts.get_mut(&m.id) else {
                continue;
            };
            let hist = member_entry(&mut self.members, &m.id);
            (vv.active_load, vv.bytes_load) = hist.judge(&tick, m, &v, vv, &mut samples);
        }
        self.learn(&tick, samples);
        LoadSummary {
            judged: tick.judged,
            active: tick.totals.active as u64,
            dispersion: tick.phi,
            bytes_heterogeneity: tick.kappa,
        }
    }

    /// Learns the scales from ticks where at most a quarter of the members
    /// look off.
    fn learn(&mut self, tick: &Tick, samples: Samples) {
        if !tick.judged || samples.flagged * 4 > tick.totals.count {
            return;
        }
        let fresh = tick.ctx.new_conns / tick.totals.active;
        let hi = tick.s.max_dispersion.max(1.0);
        if let Some(x) = placement_dispersion(&samples.placement, tick.phi) {
            self.phi.learn(x, fresh, 1.0, hi);
        }
        let small = tick.totals.count < ROBUST_FROM;
        if let Some(x) = bytes_heterogeneity(&samples.bytes, tick.kappa, small) {
            self.kappa.learn(x, fresh, KAPPA_MIN, KAPPA_MAX);
        }
    }
}

/// A draining member's load: its shares, and no judgement until it has
/// drained for `drain_deadline_ticks`; past that, every open connection it
/// still holds is one that was meant to close, and it warns (pinned: the
/// balancer sends it nothing new, old connections keep it busy).
fn draining(
    s: &Settings,
    out: OutOfRotation,
    draining_for: u64,
    serving: f64,
    v: &ViewInput,
    active_share: f64,
    bytes_share: f64,
) -> (LoadVerdict, LoadVerdict) {
    let ok = |share: f64, reason: String| LoadVerdict {
        observed_share: share,
        reason,
        ..LoadVerdict::default()
    };
    let deadline = s.drain_deadline_ticks;
    let state = out.state();
    let bytes = ok(bytes_share, state.into());
    if deadline == 0 || draining_for < deadline || v.active == 0 {
        let reason = format!(
            "{state} for {draining_for} ticks: its {} open connections are expected to close",
            v.active
        );
        return (ok(active_share, reason), bytes);
    }
    let lingering = LoadVerdict {
        verdict: Verdict::SkewHigh { page: false },
        cause: Some(Cause::Pinned),
        observed_share: active_share,
        // Of an expected share of none.
        ratio: f64::INFINITY,
        ticks: draining_for - deadline + 1,
        reason: format!(
            "{state} for {draining_for} ticks, yet it still holds {} open connections (the serving members hold {serving:.0}): long-lived connections outlive the {}; give them a maximum age at the client or server, or close them at the backend",
            v.active,
            match out {
                OutOfRotation::Draining => "drain",
                OutOfRotation::NotReady => "balancer's rules",
            },
        ),
        ..LoadVerdict::default()
    };
    (lingering, bytes)
}

/// A member's load in a pool with too few open connections to judge.
fn too_quiet(
    tick: &Tick,
    expected_share: f64,
    active_share: f64,
    bytes_share: f64,
) -> (LoadVerdict, LoadVerdict) {
    let quiet = |share: f64| LoadVerdict {
        verdict: Verdict::InsufficientTraffic,
        observed_share: share,
        expected_share,
        reason: format!(
            "{:.0} open connections in the pool (minimum {:.0}): too few to judge",
            tick.totals.active, tick.s.min_pool_active
        ),
        ..LoadVerdict::default()
    };
    (quiet(active_share), quiet(bytes_share))
}

impl MemberLoad {
    /// One member's open-connection and bytes verdicts this tick; records
    /// its statistics, and its numbers in `samples` when it looks healthy.
    fn judge(
        &mut self,
        tick: &Tick,
        m: &MemberInput,
        v: &ViewInput,
        vv: &mut ViewVerdict,
        samples: &mut Samples,
    ) -> (LoadVerdict, LoadVerdict) {
        let t = &tick.totals;
        if vv.verdict.is_fact() {
            // Stale, reset or down: a gap, the windows start again
            // afterwards (a member back from an outage is judged from its
            // return, refilling). A drain began when it began: its age
            // pauses over the gap and goes on after it.
            *self = MemberLoad {
                draining_for: self.draining_for,
                ..MemberLoad::default()
            };
            let gap = LoadVerdict {
                verdict: vv.verdict,
                reason: vv.reason.clone(),
                ..LoadVerdict::default()
            };
            return (gap.clone(), gap);
        }
        let bytes = (v.bytes_in + v.bytes_out) as f64;
        self.bytes_in.push(v.bytes_in as f64);
        self.bytes_out.push(v.bytes_out as f64);
        let ratio_of = |x: f64, total: f64| if total > 0.0 { x / total } else { 0.0 };
        vv.bytes_in_share = ratio_of(self.bytes_in.sum(), tick.pool_in);
        vv.bytes_out_share = ratio_of(self.bytes_out.sum(), tick.pool_out);
        let bytes_share = ratio_of(
            self.bytes_in.sum() + self.bytes_out.sum(),
            tick.pool_in + tick.pool_out,
        );
        let active_share = ratio_of(v.active as f64, t.active);
        if let Some(out) = m.out_of_rotation() {
            self.draining_for += 1;
            return draining(
                tick.s,
                out,
                self.draining_for,
                t.active,
                v,
                active_share,
                bytes_share,
            );
        }
        self.draining_for = 0;
        let p = vv.expected_share;
        let n = Numbers {
            a: v.active as f64,
            e: t.active * p,
            p,
            bytes,
        };
        self.record_bytes(&n, t);
        if !tick.judged {
            self.active = Run::default();
            self.bytes = Run::default();
            return too_quiet(tick, p, active_share, bytes_share);
        }
        let active = judge_active(tick.s, &tick.bounds, &n, t.active, tick.phi);
        let window = BytesWindow {
            share: self.share.trimmed_mean(),
            per_conn: self.per_conn.trimmed_mean(),
            conns: self.per_conn_active.harmonic_mean(),
        };
        let bytes_j = judge_bytes(tick.s, &tick.bounds, &window, tick.kappa, &active);
        let active_ticks = self.active.update(tick.tick, active.dir, active.level);
        let bytes_ticks = self.bytes.update(tick.tick, bytes_j.dir, bytes_j.level);
        let conns = NewConns::of(vv);
        let lc = tick.least_connections.map(|pool| {
            let lowest = n.e > 0.0 && n.a <= pool.emptiest * n.e + 1.0;
            self.emptiest_for = if lowest { self.emptiest_for + 1 } else { 0 };
            LeastConnections {
                starved: conns.starved(tick.s, self.emptiest_for),
                backlog: pool.backlog,
            }
        });
        let refill = Refill::project(
            tick.s,
            &n,
            (t.active, tick.ctx.turnover),
            active_ticks.0,
            lc,
        );
        if active.level > Level::None || bytes_j.level > Level::None {
            samples.flagged += 1;
            self.flagged_at = Some(tick.tick);
        } else if (self.flagged_at)
            .is_none_or(|at| tick.tick.saturating_sub(at) >= LEARN_QUARANTINE)
        {
            samples.placement.push((n.a, p));
            if let Some(x) = window.per_conn
                && window.conns >= MIN_BYTES_CONNS
            {
                samples.bytes.push((window.conns, x));
            }
        }
        let subject = Subject {
            s: tick.s,
            n: &n,
            conns: &conns,
            ctx: tick.ctx,
        };
        (
            subject.active(
                &active,
                active_ticks,
                &refill,
                t.active,
                &tick.holders,
                active_share,
            ),
            subject.bytes(&bytes_j, bytes_ticks, &refill, bytes_share),
        )
    }

    /// The per-tick bytes statistics, kept also while the pool is too quiet
    /// to judge; a tick without bytes has no bytes per connection.
    fn record_bytes(&mut self, n: &Numbers, t: &Totals) {
        let defined = n.a >= 1.0 && n.bytes > 0.0 && t.active > 0.0 && t.bytes > 0.0;
        self.per_conn.push(if defined {
            ((n.bytes / n.a) / (t.bytes / t.active)).ln()
        } else {
            f64::NAN
        });
        self.per_conn_active
            .push(if defined { n.a } else { f64::NAN });
        self.share.push(if t.bytes > 0.0 && n.p > 0.0 {
            (n.bytes / t.bytes) / n.p
        } else {
            f64::NAN
        });
    }
}

/// A member's bytes statistics over the window, this tick.
struct BytesWindow {
    /// Trimmed mean of its share of the pool's bytes over the expected.
    share: Option<f64>,
    /// Trimmed mean of ln(its bytes per connection / the pool's).
    per_conn: Option<f64>,
    /// The open connections behind `per_conn`: the harmonic mean over its
    /// ticks, since a tick's ratio varies as one over its connections. Not
    /// this tick's: a burst would claim ten ticks' evidence at its own
    /// count.
    conns: f64,
}

/// One signal's evidence this tick.
struct Judged {
    dir: i8,
    level: Level,
    ratio: f64,
    log_p: f64,
    /// Bytes: the per-connection evidence alone reaches `level`.
    own: bool,
    /// Bytes: the member's bytes per connection over the pool's.
    per_conn: f64,
    /// Bytes: the open connections that evidence weighs (see
    /// [`BytesWindow::conns`]).
    conns: f64,
}

fn sign(x: f64) -> i8 {
    if x > 0.0 {
        1
    } else if x < 0.0 {
        -1
    } else {
        0
    }
}

/// Band and evidence together.
fn level(s: &Settings, b: &Bounds, ratio: f64, log_p: f64) -> Level {
    let band_page = ratio > s.page_high || ratio < s.page_low;
    let band_warn = ratio > s.warn_high || ratio < s.warn_low;
    if band_page && log_p <= b.ln_page {
        Level::Page
    } else if band_warn && log_p <= b.ln_warn {
        Level::Warn
    } else {
        Level::None
    }
}

fn judge_active(s: &Settings, b: &Bounds, n: &Numbers, total: f64, phi: f64) -> Judged {
    let ratio = if n.e > 0.0 { n.a / n.e } else { 1.0 };
    let log_p = binomial_log_tail(n.a, total, n.p, phi, b.ln_warn.max(b.ln_page));
    Judged {
        dir: sign(n.a - n.e),
        level: level(s, b, ratio, log_p),
        ratio,
        log_p,
        own: false,
        per_conn: 1.0,
        conns: n.a,
    }
}

/// Bytes: the share's trimmed mean outside the band, with per-connection
/// evidence (its own) or the open connections' (followed).
fn judge_bytes(
    s: &Settings,
    b: &Bounds,
    window: &BytesWindow,
    kappa: f64,
    active: &Judged,
) -> Judged {
    let Some(ratio) = window.share else {
        return Judged {
            dir: 0,
            level: Level::None,
            ratio: 1.0,
            log_p: 0.0,
            own: false,
            per_conn: 1.0,
            conns: window.conns,
        };
    };
    let dir = sign(ratio - 1.0);
    let per_conn = window.per_conn;
    // The normal tail's Chernoff bound, exp(−z²/2), for z the trimmed mean
    // log-ratio over its per-connection standard error √(κ / a), `a` the
    // window's open connections.
    let own_log_p = match per_conn {
        Some(x) if window.conns >= MIN_BYTES_CONNS && sign(x) == dir => {
            -0.5 * x * x * window.conns / kappa
        }
        _ => 0.0,
    };
    let conn_log_p = if active.dir == dir { active.log_p } else { 0.0 };
    let log_p = own_log_p.min(conn_log_p);
    let lvl = level(s, b, ratio, log_p);
    Judged {
        dir,
        level: lvl,
        ratio,
        log_p,
        own: lvl > Level::None && level(s, b, ratio, own_log_p) == lvl,
        per_conn: per_conn.map_or(1.0, f64::exp),
        conns: window.conns,
    }
}

/// What the member's new connections say.
struct NewConns {
    skewed_high: bool,
    skewed_low: bool,
    ratio: f64,
    enough: bool,
    /// Connection attempts that failed over the window, when they explain
    /// its shortfall ([`ViewVerdict::refused`]).
    refused: Option<u64>,
}

impl NewConns {
    /// The new-connection verdict counts for the cause only while the
    /// balancer is still choosing that way: the last ten ticks must hold
    /// enough new connections, on the same side of the member's share. A
    /// ZERO or SKEW left by an old burst (a restarted member's clients
    /// reconnecting elsewhere while it was down) says nothing about the
    /// balancer now.
    fn of(vv: &ViewVerdict) -> Self {
        let enough = vv.window_expected >= 5.0;
        let recent = if enough {
            vv.window_observed / vv.window_expected
        } else {
            1.0
        };
        Self {
            skewed_high: enough && recent > 1.0 && matches!(vv.verdict, Verdict::SkewHigh { .. }),
            skewed_low: enough
                && recent < 1.0
                && matches!(vv.verdict, Verdict::SkewLow { .. } | Verdict::Zero { .. }),
            ratio: recent,
            enough,
            refused: vv.refused().then_some(vv.failed_window),
        }
    }

    /// Under least-connections, a member that held the fewest open
    /// connections for its share (within one) through the whole window,
    /// `emptiest_for` ticks in a row, and got less than half its share of
    /// new connections over it: the balancer, which should send it nearly
    /// all of them, is not. A member below its share but above the
    /// emptiest one rightly gets few while another refills first, and its
    /// window holds those ticks until it has been the emptiest for as long.
    fn starved(&self, s: &Settings, emptiest_for: u64) -> bool {
        emptiest_for >= super::pool::SHARE_WINDOW as u64 && self.enough && self.ratio < s.page_low
    }

    /// Refusing, routing or pinned for a finding on side `dir`, and why:
    /// refusing when failed attempts explain a shortfall; routing
    /// when the member's new connections are judged skewed the same way
    /// (a raw ratio is not enough: a member that was down while its
    /// clients reconnected elsewhere missed those connections through no
    /// fault of the balancer).
    fn cause(&self, s: &Settings, dir: i8, ctx: &Context) -> (Cause, String) {
        if let Some(failed) = self.refused.filter(|_| dir < 0) {
            return (
                Cause::Refusing,
                format!(
                    "{failed} connection attempts to it failed in the last 10 ticks: its balancers send it connections and it does not take them"
                ),
            );
        }
        if ctx.least_connections {
            return self.least_connections_cause(dir, ctx);
        }
        let same_way = if dir > 0 {
            self.skewed_high
        } else {
            self.skewed_low
        };
        if same_way || ctx.concentrated {
            (
                Cause::Routing,
                format!(
                    "new connections are skewed too ({:.2}× its share): the balancer's choices are off",
                    self.ratio
                ),
            )
        } else if self.enough {
            let leans = if dir > 0 {
                self.ratio > s.warn_high
            } else {
                self.ratio < s.warn_low
            };
            let r = self.ratio;
            let why = if leans {
                format!(
                    "new connections lean the same way ({r:.2}× its share) without being judged skewed; if the balancer is fair, {PINNED_FIXES}"
                )
            } else if r > s.warn_high || r < s.warn_low {
                format!(
                    "new connections lean the other way ({r:.2}× its share), evening it out: {PINNED_FIXES}"
                )
            } else {
                format!("new connections are balanced ({r:.2}× its share): {PINNED_FIXES}")
            };
            (Cause::Pinned, why)
        } else {
            (
                Cause::Pinned,
                format!(
                    "the pool opens too few new connections to rebalance ({:.2}/tick): {PINNED_FIXES}",
                    ctx.turnover
                ),
            )
        }
    }
}

impl NewConns {
    /// [`NewConns::cause`] in a least-connections pool, whose new
    /// connections are never judged skewed: the balancer sends them to the
    /// members holding the fewest, so a member below its share should get
    /// more than its share of them and one above it less. The wrong way,
    /// or its bare share, is the balancer's choice (routing); the right
    /// way, old connections the balancer is still evening out (pinned).
    fn least_connections_cause(&self, dir: i8, ctx: &Context) -> (Cause, String) {
        if !self.enough {
            return (
                Cause::Pinned,
                format!(
                    "least-connections, but the pool opens too few new connections to even out ({:.2}/tick): old connections hold the load",
                    ctx.turnover
                ),
            );
        }
        let wrong_way = if dir < 0 {
            self.ratio <= 1.0
        } else {
            self.ratio >= 1.0
        };
        if wrong_way {
            (
                Cause::Routing,
                format!(
                    "least-connections, yet it gets {:.2}× its share of new connections: the balancer is not evening it out",
                    self.ratio
                ),
            )
        } else {
            (
                Cause::Pinned,
                format!(
                    "least-connections is evening it out ({:.2}× its share of new connections); old connections hold the load until they close (a maximum connection age shortens that)",
                    self.ratio
                ),
            )
        }
    }
}

/// Whether a member below its share refills in time.
struct Refill {
    /// Connections live this many ticks (Little's law); infinite when the
    /// pool opens none.
    lifetime: f64,
    /// Ticks until it holds half its share at that turnover.
    to_half: f64,
    /// Ticks it has been low.
    low_for: u64,
    /// Low for, plus the projection, within `load_refill`, and not
    /// `starved`.
    in_time: bool,
    /// A least-connections balancer does not send it the new connections
    /// it would refill with.
    starved: bool,
    /// The projection is a least-connections balancer's: every new
    /// connection to the members lacking most.
    least_connections: bool,
}

/// How a least-connections pool refills a member below its share.
#[derive(Clone, Copy)]
struct LeastConnections {
    /// It holds the fewest and still gets less than half its share of new
    /// connections: it will not refill at all.
    starved: bool,
    /// Open connections the pool's members lack to half their shares: the
    /// balancer hands every new connection to one of them, so all of them
    /// hold half their shares once that many new connections came.
    backlog: f64,
}

impl Refill {
    /// The projection for a member at `low_for` ticks below its share,
    /// in a pool holding `total` open connections and opening `turnover`
    /// new ones a tick: by weight, a share of them; by least connections
    /// (`lc`), all of them, to whichever members lack most.
    fn project(
        s: &Settings,
        n: &Numbers,
        (total, turnover): (f64, f64),
        low_for: u64,
        lc: Option<LeastConnections>,
    ) -> Self {
        let lifetime = if turnover > 1e-9 {
            total / turnover
        } else {
            f64::INFINITY
        };
        let starved = lc.is_some_and(|lc| lc.starved);
        let to_half = if n.a >= n.e / 2.0 {
            0.0
        } else if let Some(lc) = lc.filter(|_| turnover > 1e-9) {
            lc.backlog / turnover
        } else {
            lifetime * (2.0 * (n.e - n.a) / n.e).ln()
        };
        Self {
            lifetime,
            to_half,
            low_for,
            in_time: !starved && low_for as f64 + to_half <= s.load_refill as f64,
            starved,
            least_connections: lc.is_some(),
        }
    }

    fn text(&self) -> String {
        if self.starved {
            "not refilling: a least-connections balancer should send it most new connections, and does not".into()
        } else if self.lifetime.is_infinite() {
            "no new connections reach the pool, so it will not refill".into()
        } else if self.in_time && self.least_connections {
            format!(
                "refilling: least-connections sends new connections to the members lacking most, so it holds half its share in ~{:.0} more ticks",
                self.to_half
            )
        } else if self.in_time {
            format!(
                "refilling: connections live ~{:.0} ticks, so it holds half its share in ~{:.0} more",
                self.lifetime, self.to_half
            )
        } else {
            format!(
                "not refilling in time: low for {} ticks, and connections live ~{:.0} ticks ({:.0} more to half its share)",
                self.low_for, self.lifetime, self.to_half
            )
        }
    }
}

/// "1e-13"-style text for a log-probability.
fn p_text(log_p: f64) -> String {
    if log_p > -700.0 {
        format!("{:.0e}", log_p.exp())
    } else {
        format!("1e{:.0}", log_p / std::f64::consts::LN_10)
    }
}

/// One member's numbers and context, judged into its verdicts.
struct Subject<'a> {
    s: &'a Settings,
    n: &'a Numbers,
    conns: &'a NewConns,
    ctx: &'a Context,
}

impl Subject<'_> {
    /// The verdict both signals share: the finding, whether it pages, its
    /// numbers and, for a finding, its cause with why.
    fn base(
        &self,
        j: &Judged,
        (ticks, page_ticks): (u64, u64),
        refill_in_time: bool,
        zero: Option<bool>,
        share: f64,
    ) -> (LoadVerdict, Option<String>) {
        let sustained =
            j.level == Level::Page && page_ticks >= u64::from(self.s.load_sustain.max(1));
        let page = sustained && (j.dir > 0 || !refill_in_time);
        let verdict = match (j.level, j.dir, zero) {
            (Level::None, _, _) | (_, 0, _) => Verdict::Ok,
            (_, d, Some(dark)) if d < 0 => Verdict::Zero { dark },
            (_, d, _) if d < 0 => Verdict::SkewLow { page },
            _ => Verdict::SkewHigh { page },
        };
        let mut out = LoadVerdict {
            verdict,
            page,
            observed_share: share,
            expected_share: self.n.p,
            ratio: j.ratio,
            log_p: j.log_p,
            ticks,
            ..LoadVerdict::default()
        };
        if verdict == Verdict::Ok {
            return (out, None);
        }
        let (cause, why) = self.conns.cause(self.s, j.dir, self.ctx);
        out.cause = Some(cause);
        (out, Some(why))
    }

    /// Open connections; a member below its share says whether it refills
    /// and who holds its share.
    fn active(
        &self,
        j: &Judged,
        ticks: (u64, u64),
        refill: &Refill,
        total: f64,
        holders: &[(f64, &str)],
        share: f64,
    ) -> LoadVerdict {
        let n = self.n;
        let zero = (n.a == 0.0).then_some(n.bytes == 0.0);
        let (mut out, why) = self.base(j, ticks, refill.in_time, zero, share);
        let Some(why) = why else { return out };
        let mut reason = format!(
            "{:.0} of {:.0} open connections where {:.1} were expected ({:.2}× its share, P ≤ {}) for {} ticks",
            n.a,
            total,
            n.e,
            j.ratio,
            p_text(j.log_p),
            ticks.0
        );
        if j.dir < 0 {
            reason.push_str("; ");
            reason.push_str(&refill.text());
            if !holders.is_empty() {
                let names: Vec<String> = holders
                    .iter()
                    .map(|(r, id)| format!("{id} ({r:.2}×)"))
                    .collect();
                reason.push_str(&format!("; its share is held by {}", names.join(", ")));
            }
        }
        out.reason = format!("{reason}; {why}");
        out
    }

    /// Bytes. A member low on bytes because it is low on connections
    /// refills with them; one whose connections carry little does not.
    fn bytes(&self, j: &Judged, ticks: (u64, u64), refill: &Refill, share: f64) -> LoadVerdict {
        let n = self.n;
        let (mut out, why) = self.base(j, ticks, refill.in_time && !j.own, None, share);
        out.own = j.own;
        let Some(why) = why else { return out };
        let how = if j.own {
            format!(
                "its open connections ({:.0} over the last {BYTES_WINDOW} ticks) carry {:.2}× the pool's bytes per connection (P ≤ {})",
                j.conns,
                j.per_conn,
                p_text(j.log_p)
            )
        } else {
            format!(
                "it follows its open connections ({:.0}, P ≤ {})",
                n.a,
                p_text(j.log_p)
            )
        };
        out.reason = format!(
            "{:.1}% of the pool's bytes where {:.1}% were expected ({:.2}× its share over {BYTES_WINDOW} ticks) for {} ticks; {how}; {why}",
            share * 100.0,
            n.p * 100.0,
            j.ratio,
            ticks.0
        );
        out
    }
}

/// One tick's placement dispersion from the members' open connections and
/// shares `(a, p)`: each member's squared deviation from its share over the
/// binomial variance (1 on average for a fair balancer), averaged over the
/// members after leaving out outliers and measuring the rest against their
/// own total — so one member holding the others' connections neither
/// counts itself nor makes the others look low.
fn placement_dispersion(xs: &[(f64, f64)], learned: f64) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let (keep, factor) = if xs.len() < ROBUST_FROM {
        let keep = apart_from_outliers(xs.len(), learned.max(1.0), |i, keep| {
            binomial_score_apart(xs, i, keep)
        });
        (keep, 1.0 / SMALL_POOL_TRUNCATION)
    } else {
        // Scored against the median member's total, which one member far
        // off does not move.
        let robust_total = median(&xs.iter().map(|&(a, p)| a / p).collect::<Vec<_>>());
        let scores: Vec<f64> = xs
            .iter()
            .map(|&(a, p)| binomial_score(a, p, robust_total))
            .collect();
        (without_outliers(&scores, 1.0), 1.0)
    };
    let (kt, kp) = keep
        .iter()
        .fold((0.0, 0.0), |(t, p), &i| (t + xs[i].0, p + xs[i].1));
    if keep.len() < 2 || kt <= 0.0 || kp <= 0.0 {
        return None;
    }
    Some(
        keep.iter()
            .map(|&i| binomial_score(xs[i].0, xs[i].1 / kp, kt))
            .sum::<f64>()
            / keep.len() as f64
            * factor,
    )
}

/// Member `i`'s squared deviation from the others `keep`s, over its
/// binomial variance: of the counts `xs[k].0` it and they hold, its part
/// against its part of their shares `xs[k].1` (χ²₁ for a fair balancer
/// with counts beyond a few, times the dispersion).
pub(super) fn binomial_score_apart(xs: &[(f64, f64)], i: usize, keep: &[usize]) -> f64 {
    let (a, p) = xs[i];
    let (rest, share) = keep
        .iter()
        .filter(|&&k| k != i)
        .fold((0.0, 0.0), |(t, s), &k| (t + xs[k].0, s + xs[k].1));
    binomial_score(a, p / (p + share), a + rest)
}

/// `a` of `total` against a share `p` of them: the squared deviation over
/// the binomial variance (0 where nothing is expected).
fn binomial_score(a: f64, p: f64, total: f64) -> f64 {
    let e = total * p;
    if e <= 0.0 || p >= 1.0 {
        0.0
    } else {
        (a - e).powi(2) / (e * (1.0 - p))
    }
}

/// One tick's bytes heterogeneity κ from the members' open connections and
/// log bytes-per-connection ratios `(a, x)`: `a · x²` is κ·χ²₁ for a
/// balanced member. Robust like [`placement_dispersion`]: in pools of
/// [`ROBUST_FROM`] members or more, outliers (scored around the median
/// ratio) are left out; in `small` ones, the members far from the others
/// kept, one at a time, against the κ `learned` so far. By the pool's
/// members, not the samples as for `φ`: a pool of ten with three members
/// flagged lately took the small pools' way, and on heavy-tailed bytes
/// leaving the furthest out shrinks κ more than the correction for
/// normal ones restores (5 false bytes pages in 50 pool-days of
/// `cargo xtask bench-detect`'s 10-member pools at 100 a second). The
/// rest are centred on their own connection-weighted mean, so a member
/// with heavy clients neither counts nor makes the others look light.
/// Learned from every member of a small pool, a member whose clients were
/// heavy from the start taught the pool their weight, and was never
/// flagged (3× the bytes in pools of 2 to 6).
fn bytes_heterogeneity(xs: &[(f64, f64)], learned: f64, small: bool) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let (keep, factor) = if small {
        let keep = apart_from_outliers(xs.len(), learned.max(KAPPA_MIN), |i, keep| {
            log_ratio_score_apart(xs, i, keep)
        });
        (keep, 1.0 / SMALL_POOL_TRUNCATION)
    } else {
        let mid = median(&xs.iter().map(|x| x.1).collect::<Vec<_>>());
        let scores: Vec<f64> = xs.iter().map(|&(a, x)| a * (x - mid).powi(2)).collect();
        (without_outliers(&scores, KAPPA_MIN), 1.0)
    };
    let k = keep.len() as f64;
    let weight: f64 = keep.iter().map(|&i| xs[i].0).sum();
    if k < 2.0 || weight <= 0.0 {
        return None;
    }
    let centre = keep.iter().map(|&i| xs[i].0 * xs[i].1).sum::<f64>() / weight;
    // Centring on their own mean takes one degree of freedom.
    Some(
        keep.iter()
            .map(|&i| xs[i].0 * (xs[i].1 - centre).powi(2))
            .sum::<f64>()
            / (k - 1.0)
            * factor,
    )
}

/// Member `i`'s squared deviation of its log ratio from the others
/// `keep`s' connection-weighted mean, over its variance in units of κ
/// (`1 / a` for its own mean, `1 / Σa` for theirs): κ·χ²₁ for a balanced
/// member.
fn log_ratio_score_apart(xs: &[(f64, f64)], i: usize, keep: &[usize]) -> f64 {
    let (a, x) = xs[i];
    let (w, sum) = keep
        .iter()
        .filter(|&&k| k != i)
        .fold((0.0, 0.0), |(w, sum), &k| {
            (w + xs[k].0, sum + xs[k].0 * xs[k].1)
        });
    if a <= 0.0 || w <= 0.0 {
        return 0.0;
    }
    (x - sum / w).powi(2) / (1.0 / a + 1.0 / w)
}

#[cfg(test)]
mod tests {
    use crate::detect::sim::Rng;

    /// Open connections placed by a fair balancer.
    fn multinomial(rng: &mut Rng, total: usize, members: usize) -> Vec<(f64, f64)> {
        clustered(rng, total, members, 1)
    }

    /// Open connections placed by a fair balancer in clusters of `size`
    /// (clients that open several at once behind source hashing): a
    /// dispersion of `size`.
    fn clustered(rng: &mut Rng, total: usize, members: usize, size: usize) -> Vec<(f64, f64)> {
        let mut counts = vec![0.0; members];
        for _ in 0..total / size {
            counts[((rng.f64() * members as f64) as usize).min(members - 1)] += size as f64;
        }
        counts.iter().map(|&a| (a, 1.0 / members as f64)).collect()
    }

    /// The mean of `f`'s estimates over `k` ticks, leaving out the ticks
    /// without one (the pool learns nothing from those).
    fn average(k: usize, mut f: impl FnMut() -> Option<f64>) -> f64 {
        let xs: Vec<f64> = (0..k).filter_map(|_| f()).collect();
        xs.iter().sum::<f64>() / xs.len().max(1) as f64
    }

    /// φ of a fair balancer averages 1 for every pool size, whether the
    /// pool has learned it or still holds the prior: low would page
    /// falsely, high would page late.
    #[test]
    fn placement_dispersion_of_a_fair_balancer_is_one() {
        let mut rng = Rng::new(1);
        for members in [2usize, 3, 4, 5, 7, 8, 10, 20, 50] {
            for (per_member, learned) in [(40, 1.0), (40, super::PHI_PRIOR), (10, 1.0)] {
                let got = average(4000, || {
                    let xs = multinomial(&mut rng, per_member * members, members);
                    super::placement_dispersion(&xs, learned)
                });
                assert!(
                    (0.95..=1.12).contains(&got),
                    "{members} members, {per_member} each, learned {learned}: {got}"
                );
            }
        }
    }

    /// One member holding far more than its share does not teach the
    /// others' dispersion, in pools of every size: scored against the
    /// tick's median in pools of eight or more, against what the pool has
    /// learned (here the prior) in smaller ones.
    #[test]
    fn placement_dispersion_ignores_one_member_far_off() {
        let mut rng = Rng::new(2);
        for members in [3usize, 4, 5, 10, 30] {
            let got = average(2000, || {
                let mut xs = multinomial(&mut rng, 40 * members, members);
                xs[0].0 += 80.0;
                super::placement_dispersion(&xs, super::PHI_PRIOR)
            });
            assert!(got < 1.2, "{members} members: {got}");
        }
        // Four members, ten connections, seven on the first: the first
        // tick a 7:1:1:1 placement is judged.
        let xs = [(7.0, 0.25), (1.0, 0.25), (1.0, 0.25), (1.0, 0.25)];
        let got = super::placement_dispersion(&xs, super::PHI_PRIOR);
        assert!(got.is_some_and(|x| x < 1.0), "{got:?}");
    }

    /// A small pool that really is more dispersed than the prior (clients
    /// open three connections at once) learns it, although each tick
    /// leaves out the members beyond 6.6 times what it has learned so far.
    #[test]
    fn a_small_pools_dispersion_is_learned_from_below() {
        let mut rng = Rng::new(4);
        for members in [3usize, 4, 6] {
            let mut learned = super::PHI_PRIOR;
            for _ in 0..12 {
                learned = average(2000, || {
                    super::placement_dispersion(
                        &clustered(&mut rng, 60 * members, members, 3),
                        learned,
                    )
                });
            }
            assert!(
                (2.7..=3.3).contains(&learned),
                "{members} members: {learned}"
            );
        }
    }

    /// κ of normal log-ratios with variance κ / a averages κ, also with
    /// one member's clients five times heavier, in pools of 3 to 30, from
    /// the truth or from the prior.
    #[test]
    fn bytes_heterogeneity_is_unbiased_and_robust() {
        let mut rng = Rng::new(3);
        for members in [3usize, 5, 10, 30] {
            for (heavy, learned) in [(false, 0.3), (true, 0.3), (false, 1.0), (true, 1.0)] {
                let got = average(4000, || {
                    let xs: Vec<(f64, f64)> = (0..members)
                        .map(|i| {
                            let a = 10.0 + (i % 4) as f64 * 5.0;
                            let shift = if heavy && i == 0 { 5f64.ln() } else { 0.0 };
                            (a, shift + rng.normal() * (0.3 / a).sqrt())
                        })
                        .collect();
                    super::bytes_heterogeneity(&xs, learned, members < super::ROBUST_FROM)
                });
                assert!(
                    (0.9..=1.12).contains(&(got / 0.3)),
                    "{members} members, heavy {heavy}, learned {learned}: {got}"
                );
            }
        }
    }

    /// κ learned too low still rises: from a third of the truth, a tick's
    /// estimate in a small pool is well above what was learned (the
    /// members kept keep showing more than it).
    #[test]
    fn a_small_pools_bytes_heterogeneity_is_learned_from_below() {
        let mut rng = Rng::new(5);
        for members in [3usize, 4, 6] {
            let got = average(4000, || {
                let xs: Vec<(f64, f64)> = (0..members)
                    .map(|i| {
                        let a = 10.0 + (i % 4) as f64 * 5.0;
                        (a, rng.normal() * (0.3 / a).sqrt())
                    })
                    .collect();
                super::bytes_heterogeneity(&xs, 0.1, true)
            });
            assert!(got > 1.3 * 0.1, "{members} members: {got}");
        }
    }
}

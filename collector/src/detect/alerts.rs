//! Alerts from verdicts, with hysteresis: fire when evidence crosses its
//! bound, clear after `clear_ticks` good ticks, reopen (held open longer)
//! instead of firing again when an alert flaps.

use std::collections::{HashMap, HashSet, VecDeque};

use super::{
    Settings,
    load::{Cause, LoadVerdict, Signal},
    pool::{MemberVerdict, PoolVerdict, SHARE_WINDOW, Verdict, View, ViewVerdict},
};

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum AlertKind {
    Zero,
    Skew,
    Concentration,
    Stale,
    Hot,
    Mismatch,
    DrainingViolation,
    Down,
    Failing,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Zero => "ZERO",
            AlertKind::Skew => "SKEW",
            AlertKind::Concentration => "CONCENTRATION",
            AlertKind::Stale => "STALE",
            AlertKind::Hot => "HOT",
            AlertKind::Mismatch => "MISMATCH",
            AlertKind::DrainingViolation => "DRAINING_VIOLATION",
            AlertKind::Down => "DOWN",
            AlertKind::Failing => "FAILING",
        }
    }

    /// A fact about a member's listener or its observers (DOWN, STALE),
    /// or about every attempt to a pool (FAILING), not a judgement of its
    /// traffic's split: booked in a quiet or settling pool.
    fn is_fact(self) -> bool {
        matches!(
            self,
            AlertKind::Down | AlertKind::Stale | AlertKind::Failing
        )
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Severity {
    Page,
    Warning,
}

impl Severity {
    /// A page when `page`, else a warning.
    fn page_if(page: bool) -> Self {
        if page {
            Severity::Page
        } else {
            Severity::Warning
        }
    }
}

/// An alert: pool, member, kind, view, observed vs expected, since when,
/// and the numbers behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub id: String,
    pub pool: String,
    /// "address:port"; empty for pool-level alerts.
    pub member: String,
    pub kind: AlertKind,
    /// What it is about: new connections, open connections or bytes
    /// (none for STALE and HOT).
    pub signal: Option<Signal>,
    /// Routing, pinned or refusing, for ZERO, SKEW and CONCENTRATION.
    pub cause: Option<Cause>,
    pub view: View,
    pub severity: Severity,
    pub observed: f64,
    pub expected: f64,
    /// Tick the evidence first crossed its bound.
    pub since_tick: u64,
    /// Tick it fired, or last reopened (its evidence may have crossed the
    /// bound long before: held while its balancer settled, or a flap).
    opened_tick: u64,
    pub resolved_tick: Option<u64>,
    pub summary: String,
    pub evidence: Vec<(String, f64)>,
    pub flaps: u32,
    ok_streak: u32,
    /// Consecutive ticks a warning has asked to become a page.
    upgrade: u32,
    /// The cause its evidence has named instead, and for how many ticks in
    /// a row (see [`hold_cause`]).
    recause: Option<(Option<Cause>, u32)>,
}

/// What changed this tick.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    Fired(Alert),
    Updated(Alert),
    Resolved(Alert),
}

impl Transition {
    pub fn alert(&self) -> &Alert {
        match self {
            Transition::Fired(a) | Transition::Updated(a) | Transition::Resolved(a) => a,
        }
    }
}

const RESOLVED_KEPT: usize = 1000;

/// Ticks in a row an open alert's evidence must name refusing, or stop
/// naming it, before the alert's cause changes: two share windows, longer
/// than one failed attempt stays in the window. Causes ride in the
/// alert's labels (`evenflow_alert_open`, webhooks), where a new value is
/// a new alert to whoever routes on them, and a stray attempt names
/// refusing for a window; a lasting change (attempts that fail only when
/// given up, minutes after the page: a balancer whose node runs no agent
/// of ours, or an agent from before attempts were counted unanswered) is
/// taken.
pub(super) const CAUSE_HOLD: u32 = 2 * SHARE_WINDOW as u32;

/// Ticks after it opened in which an alert that opened as routing takes
/// refusing at once. An attempt nobody answers is counted a second after
/// its SYN and reaches the collector with the next report, so the first
/// tick a busy pool's member gets nothing can page before its balancers'
/// attempts to it are counted: evidence that late is the alert's first,
/// not a change.
pub(super) const EVIDENCE_LAG: u64 = 2;

/// Whether the open alert `open` takes `cause`, which this `tick`'s
/// evidence names. Into or out of refusing only once the evidence has
/// named the same cause [`CAUSE_HOLD`] ticks in a row: failed attempts
/// come and go with the window. But from routing into refusing at once
/// while the alert is young ([`EVIDENCE_LAG`]). Pinned and routing, which
/// the member's new and open connections decide and which also decide how
/// its alerts are grouped, change at once, as its severity does.
fn hold_cause(open: &mut Alert, cause: Option<Cause>, tick: u64) -> bool {
    if cause == open.cause {
        open.recause = None;
        return false;
    }
    let streak = match open.recause {
        Some((named, n)) if named == cause => n + 1,
        _ => 1,
    };
    let refusing = |c: Option<Cause>| c == Some(Cause::Refusing);
    let late_evidence = refusing(cause)
        && open.cause == Some(Cause::Routing)
        && tick.saturating_sub(open.opened_tick) <= EVIDENCE_LAG;
    if !late_evidence && (refusing(cause) || refusing(open.cause)) && streak < CAUSE_HOLD {
        open.recause = Some((cause, streak));
        return false;
    }
    open.cause = cause;
    open.recause = None;
    true
}

#[derive(Default)]
pub(super) struct Book {
    open: HashMap<String, Alert>,
    /// Alerts wanted on consecutive ticks but not fired yet, with the
    /// count, by [`finding`].
    pending: HashMap<String, (Alert, u32)>,
    resolved: VecDeque<Alert>,
}

/// Consecutive ticks a verdict must hold before its alert fires: two, so
/// one tick's outlier never pages (agents also sample a tick's boundary at
/// slightly different moments). CONCENTRATION included: in 3,000 simulated
/// balanced pool-days with members twice as bursty as Poisson, firing it on
/// the first tick paged 5 times on single-tick χ² tails. Member alerts of a
/// concentrated pool are grouped under it by the pool's verdict on the
/// same tick, so they still make one page. MISMATCH compares two agents'
/// clocks, so it waits longest.
fn fire_after(kind: AlertKind) -> u32 {
    match kind {
        AlertKind::Mismatch => 4,
        _ => 2,
    }
}

/// What an alert says before the book decides whether it fires.
struct Want {
    kind: AlertKind,
    signal: Option<Signal>,
    cause: Option<Cause>,
    view: View,
    severity: Severity,
    observed: f64,
    expected: f64,
    summary: String,
    evidence: Vec<(String, f64)>,
}

/// The view a member's verdict comes from, else its other one.
fn judged_view(m: &MemberVerdict) -> Option<&ViewVerdict> {
    match m.view {
        View::Server => m.server.as_ref().or(m.lb.as_ref()),
        View::Lb => m.lb.as_ref().or(m.server.as_ref()),
    }
}

/// Refusing when the member's failed attempts explain its shortfall
/// ([`ViewVerdict::refused`]), else routing.
fn shortfall_cause(v: &ViewVerdict) -> Cause {
    if v.refused() {
        Cause::Refusing
    } else {
        Cause::Routing
    }
}

/// A CONCENTRATION's cause: refusing when every member below its share
/// refuses the connections sent to it (three crashed backends leave the
/// fourth all the traffic, and the balancer did right), else routing.
fn concentration_cause(pool: &PoolVerdict) -> Cause {
    let mut low = (pool.members.iter())
        .filter_map(judged_view)
        .filter(|v| matches!(v.verdict, Verdict::Zero { .. } | Verdict::SkewLow { .. }))
        .peekable();
    if low.peek().is_some() && low.all(ViewVerdict::refused) {
        Cause::Refusing
    } else {
        Cause::Routing
    }
}

/// The alert a member's new-connection verdict asks for, if any.
fn member_alert(pool: &PoolVerdict, m: &MemberVerdict) -> Option<Want> {
    let v = judged_view(m)?;
    let (kind, sev) = match m.verdict {
        Verdict::Zero { .. } => (AlertKind::Zero, Severity::Page),
        Verdict::SkewLow { page } | Verdict::SkewHigh { page } => {
            (AlertKind::Skew, Severity::page_if(page))
        }
        Verdict::NoData => (AlertKind::Stale, Severity::Warning),
        Verdict::Hot { .. } => (AlertKind::Hot, Severity::Warning),
        Verdict::Mismatch => (AlertKind::Mismatch, Severity::Page),
        Verdict::DrainingViolation => (AlertKind::DrainingViolation, Severity::Page),
        Verdict::Down { page } => (AlertKind::Down, Severity::page_if(page)),
        _ => return None,
    };
    let (observed, expected) = match kind {
        AlertKind::Zero => (0.0, v.zero_expected),
        AlertKind::DrainingViolation => (v.window_observed, 0.0),
        _ => (v.observed_share, v.expected_share),
    };
    let summary = format!(
        "pool {} member {} {}: {}",
        pool.name,
        m.id,
        kind.as_str(),
        m.reason
    );
    let signal = match kind {
        AlertKind::Stale | AlertKind::Hot | AlertKind::Down => None,
        _ => Some(Signal::NewConnections),
    };
    let cause = matches!(kind, AlertKind::Zero | AlertKind::Skew).then(|| shortfall_cause(v));
    let evidence = vec![
        ("observed_share".to_owned(), v.observed_share),
        ("expected_share".to_owned(), v.expected_share),
        ("window_observed".to_owned(), v.window_observed),
        ("window_expected".to_owned(), v.window_expected),
        ("zero_expected".to_owned(), v.zero_expected),
        ("z".to_owned(), v.z),
        ("failed_attempts_window".to_owned(), v.failed_window as f64),
    ];
    Some(Want {
        kind,
        signal,
        cause,
        view: m.view,
        severity: sev,
        observed,
        expected,
        summary,
        evidence,
    })
}

/// The alert one load signal's verdict asks for, if any: ZERO (no open
/// connection) or SKEW, page or warning. A bytes finding that only follows
/// the member's open connections asks for none (theirs speaks for it).
fn load_alert(
    pool: &PoolVerdict,
    m: &MemberVerdict,
    signal: Signal,
    (view, v): &(View, LoadVerdict),
) -> Option<Want> {
    if !v.is_finding() || (signal == Signal::Bytes && !v.own) {
        return None;
    }
    let kind = if v.verdict.is_zero() {
        AlertKind::Zero
    } else {
        AlertKind::Skew
    };
    let cause = v.cause.unwrap_or(Cause::Pinned);
    Some(Want {
        kind,
        signal: Some(signal),
        cause: Some(cause),
        view: *view,
        severity: Severity::page_if(v.page),
        observed: v.observed_share,
        expected: v.expected_share,
        summary: format!(
            "pool {} member {} {} ({}, {}): {}",
            pool.name,
            m.id,
            kind.as_str(),
            signal.label(),
            cause.as_str(),
            v.reason
        ),
        evidence: vec![
            ("observed_share".to_owned(), v.observed_share),
            ("expected_share".to_owned(), v.expected_share),
            ("ratio".to_owned(), v.ratio),
            ("log10_p".to_owned(), v.log_p / std::f64::consts::LN_10),
            ("ticks".to_owned(), v.ticks as f64),
        ],
    })
}

/// The pages a pool's own verdict asks for, by id: CONCENTRATION, or
/// FAILING (every attempt to its members fails, refused or unanswered);
/// and one FAILING for each load balancer node cut off from the members,
/// with no cause the members or the routing give.
fn pool_alerts(pool: &PoolVerdict) -> Vec<(String, Want)> {
    let mut pages = Vec::new();
    let mut page = |id: String, kind: AlertKind, cause, reason: &str, observed| {
        let want = Want {
            kind,
            signal: Some(Signal::NewConnections),
            cause,
            view: pool.view,
            severity: Severity::Page,
            observed,
            expected: pool.expected_effective,
            summary: format!("pool {} {}: {reason}", pool.name, kind.as_str()),
            evidence: vec![
                ("effective_members".into(), observed),
                ("expected_effective_members".into(), pool.expected_effective),
            ],
        };
        pages.push((id, want));
    };
    match pool.verdict {
        Verdict::Concentration => {
            let cause = concentration_cause(pool);
            let why = match cause {
                Cause::Refusing => {
                    "; the members it leaves out refuse the connections their balancers send them (failed attempts): the members, not the routing"
                }
                _ => "",
            };
            let reason = format!("{}{why}", pool.reason);
            let id = format!("{}//CONCENTRATION", pool.name);
            page(
                id,
                AlertKind::Concentration,
                Some(cause),
                &reason,
                pool.effective,
            );
        }
        Verdict::Failing if pool.cut_off.is_empty() => {
            let id = format!("{}//FAILING", pool.name);
            page(
                id,
                AlertKind::Failing,
                Some(Cause::Refusing),
                &pool.reason,
                0.0,
            );
        }
        _ => {}
    }
    for node in &pool.cut_off {
        let id = format!("{}//FAILING/{}", pool.name, node.node);
        page(id, AlertKind::Failing, None, &node.reason(), pool.effective);
    }
    pages
}

/// The evidence key of an alert grouped under its pool's FAILING.
const GROUPED_UNDER_FAILING: &str = "grouped_under_failing";

/// The alerts a pool's verdicts want this tick, by id: its own page
/// (CONCENTRATION, FAILING), and each member's new-connection and load
/// alerts, grouped (as warnings) under the page that explains them.
fn wanted(pool: &PoolVerdict, tick: u64) -> HashMap<String, Alert> {
    let mut want: HashMap<String, Alert> = HashMap::new();
    let everything_fails = pool.verdict == Verdict::Failing && pool.cut_off.is_empty();
    // The pool's page its members' findings are grouped under: not a node's
    // FAILING, which says nothing of the members.
    let pooled = match pool.verdict {
        Verdict::Concentration => Some("grouped_under_concentration"),
        _ if everything_fails => Some(GROUPED_UNDER_FAILING),
        _ => None,
    };
    for (id, w) in pool_alerts(pool) {
        want.insert(id.clone(), w.into_alert(id, &pool.name, "", tick));
    }
    for m in &pool.members {
        let conns = member_alert(pool, m);
        // A member whose new connections page already has its page: its
        // load alerts that its new connections explain (routing or
        // refusing; not pinned, which says its new connections are fine)
        // are grouped under it.
        let conns_page = conns.as_ref().is_some_and(|w| {
            w.severity == Severity::Page
                && matches!(
                    w.kind,
                    AlertKind::Zero | AlertKind::Skew | AlertKind::Mismatch
                )
        });
        let load = [
            (Signal::ActiveConnections, m.active.as_ref()),
            (Signal::Bytes, m.bytes.as_ref()),
        ]
        .into_iter()
        .filter_map(|(signal, v)| load_alert(pool, m, signal, v?));
        for mut w in conns.into_iter().chain(load) {
            // One page for the incident's shape: members' ZERO and SKEW
            // become warnings grouped under the pool's own page, and so do
            // their DOWN under a pool whose every attempt fails (every
            // backend down is that outage, not one page a member).
            let grouped_kind = matches!(w.kind, AlertKind::Zero | AlertKind::Skew)
                || (w.kind == AlertKind::Down && everything_fails);
            if let Some(grouped) = pooled.filter(|_| grouped_kind) {
                w.severity = Severity::Warning;
                w.evidence.push((grouped.to_owned(), 1.0));
            } else if conns_page
                && w.signal != Some(Signal::NewConnections)
                && matches!(w.cause, Some(Cause::Routing | Cause::Refusing))
            {
                w.severity = Severity::Warning;
                w.evidence
                    .push(("grouped_under_new_connections".into(), 1.0));
            }
            let id = match w.signal {
                Some(sig @ (Signal::ActiveConnections | Signal::Bytes)) => format!(
                    "{}/{}/{}/{}",
                    pool.name,
                    m.id,
                    w.kind.as_str(),
                    sig.as_str()
                ),
                _ => format!("{}/{}/{}", pool.name, m.id, w.kind.as_str()),
            };
            want.insert(id.clone(), w.into_alert(id, &pool.name, &m.id, tick));
        }
    }
    want
}

/// An alert of a member below its share (ZERO, SKEW low): an overloaded
/// member is another finding than the dark one it was.
fn low(a: &Alert) -> bool {
    a.observed < a.expected
}

/// What a wanted alert waits for confirmation under: its id, except that
/// a member's ZERO and SKEW of one signal are one finding, so either
/// confirms the other. A starved member's ticks alternate between none
/// (ZERO) and a few (SKEW: a balancer that dropped it still health-checks
/// it), and each kind alone would never be wanted twice in a row.
fn finding(a: &Alert) -> String {
    match a.kind {
        AlertKind::Zero | AlertKind::Skew => format!(
            "{}/{}/ZERO|SKEW/{}",
            a.pool,
            a.member,
            a.signal.map_or("", Signal::as_str)
        ),
        _ => a.id.clone(),
    }
}

impl Book {
    /// Books one pool's tick: the alerts its verdicts want, good ticks
    /// towards clearing those it no longer wants, and the transitions.
    pub(super) fn update(
        &mut self,
        s: &Settings,
        tick: u64,
        pool: &PoolVerdict,
    ) -> Vec<Transition> {
        let mut want = wanted(pool, tick);
        self.fold_findings(&mut want);
        self.keep_cut_nodes_under_failing(&pool.name, &mut want);
        let settling: HashSet<&str> = (pool.members.iter())
            .filter(|m| m.settles)
            .map(|m| m.id.as_str())
            .collect();
        // While the balancer follows a change, a tick is evidence neither
        // way: findings pending before it stay pending (so a set that
        // keeps changing still lets them fire), and open alerts count no
        // good tick. Facts (DOWN, STALE) need no traffic and never wait.
        let waits =
            |a: &Alert| !a.kind.is_fact() && (pool.settles || settling.contains(a.member.as_str()));
        let findings: HashSet<String> = want.values().map(finding).collect();
        self.pending
            .retain(|key, (a, _)| a.pool != pool.name || findings.contains(key) || waits(a));
        let mut out = Vec::new();
        self.count_towards_clearing(s, tick, &pool.name, &want, waits, &mut out);
        // Too little traffic to judge shares; but facts need no traffic
        // (an outage of every member leaves none), and a MISMATCH weighs
        // the other view's connections: it stands in a pool one view sees
        // too little of (see `member_verdict`).
        let judged = pool.verdict != Verdict::InsufficientTraffic;
        for (id, alert) in want {
            let stands = judged || alert.kind == AlertKind::Mismatch;
            if alert.kind.is_fact() || (stands && !waits(&alert)) {
                self.book(s, tick, id, alert, &mut out);
            }
        }
        out
    }

    /// A node's FAILING that the pool-wide FAILING overtook (every node
    /// now fails, not the one) is that outage grown, not one that ended:
    /// kept wanted as it stood, so it neither resolves nor pages again,
    /// and grouped as a warning under the pool's page once that is open;
    /// it then clears on the same good ticks as the pool's (as many as its
    /// own flaps ask). Only one that has counted no more good ticks than
    /// the pool's page: a node that reached its members again before the
    /// pool failed is not held open by an outage it is no part of, and a
    /// tick the pool's FAILING misses (one stray connection opened) does
    /// not set the node's loose.
    fn keep_cut_nodes_under_failing(&self, pool: &str, want: &mut HashMap<String, Alert>) {
        let everything = format!("{pool}//FAILING");
        if !want.contains_key(&everything) {
            return;
        }
        let pool_page = self.open.get(&everything);
        let grouped = pool_page.is_some();
        let good_ticks = pool_page.map_or(0, |p| p.ok_streak);
        let node_prefix = format!("{everything}/");
        for (id, open) in &self.open {
            let overtaken = open.pool == pool
                && id.starts_with(&node_prefix)
                && open.ok_streak <= good_ticks
                && !want.contains_key(id);
            if !overtaken {
                continue;
            }
            let mut a = open.clone();
            a.evidence.retain(|(k, _)| k != GROUPED_UNDER_FAILING);
            if grouped {
                a.severity = Severity::Warning;
                a.evidence.push((GROUPED_UNDER_FAILING.to_owned(), 1.0));
            }
            want.insert(id.clone(), a);
        }
    }

    /// A member's ZERO wanted while its low SKEW of the same signal is
    /// open at the same severity (or the reverse) is that finding still: it
    /// updates the open alert (its kind and id stay; its numbers, summary
    /// and evidence are the new ones) instead of paging a second time. A
    /// member at a tenth of its share is SKEW, and ZERO on each tick it
    /// gets none. At another severity (a ZERO grouped under CONCENTRATION
    /// as a warning, a SKEW page easing to a warning) it books as its own
    /// alert, and the open one clears.
    fn fold_findings(&self, want: &mut HashMap<String, Alert>) {
        let folds: Vec<(String, String)> = want
            .iter()
            .filter(|(_, a)| matches!(a.kind, AlertKind::Zero | AlertKind::Skew))
            .filter_map(|(id, a)| {
                let key = finding(a);
                let (open_id, _) = self.open.iter().find(|(open_id, open)| {
                    *open_id != id
                        && open.pool == a.pool
                        && open.severity == a.severity
                        && finding(open) == key
                        && low(open)
                        && low(a)
                })?;
                Some((id.clone(), open_id.clone()))
            })
            .collect();
        for (id, open_id) in folds {
            let (Some(mut a), Some(open)) = (want.remove(&id), self.open.get(&open_id)) else {
                continue;
            };
            a.kind = open.kind;
            a.id = open_id.clone();
            want.entry(open_id).or_insert(a);
        }
    }

    /// Open alerts of `pool` that are no longer wanted count good ticks
    /// towards clearing, but for those that `waits` holds; a flapping
    /// alert needs more of them.
    fn count_towards_clearing(
        &mut self,
        s: &Settings,
        tick: u64,
        pool: &str,
        want: &HashMap<String, Alert>,
        waits: impl Fn(&Alert) -> bool,
        out: &mut Vec<Transition>,
    ) {
        let ids: Vec<String> = self
            .open
            .iter()
            .filter(|(_, a)| a.pool == pool && !waits(a))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if want.contains_key(&id) {
                continue;
            }
            let Some(a) = self.open.get_mut(&id) else {
                continue;
            };
            a.ok_streak += 1;
            // A tick it is not wanted names no cause.
            a.recause = None;
            let needed = (s.clear_ticks * (1 + a.flaps)).min(120);
            if a.ok_streak >= needed {
                out.extend(self.resolve(&id, tick));
            }
        }
    }

    /// Closes an open alert: it moves to the resolved ones, where a
    /// finding back within the flap window reopens it.
    fn resolve(&mut self, id: &str, tick: u64) -> Option<Transition> {
        let mut a = self.open.remove(id)?;
        a.resolved_tick = Some(tick);
        self.resolved.push_front(a.clone());
        self.resolved.truncate(RESOLVED_KEPT);
        Some(Transition::Resolved(a))
    }

    /// One wanted alert: an open one is kept (and updated), one resolved
    /// within the flap window reopens, a new one fires once it has been
    /// wanted long enough.
    fn book(
        &mut self,
        s: &Settings,
        tick: u64,
        id: String,
        mut a: Alert,
        out: &mut Vec<Transition>,
    ) {
        if let Some(open) = self.open.get_mut(&id) {
            open.ok_streak = 0;
            // Becoming a page needs the same persistence as firing one:
            // the tick a CONCENTRATION ends still judges stale windows.
            let upgrade = open.severity == Severity::Warning && a.severity == Severity::Page;
            open.upgrade = if upgrade { open.upgrade + 1 } else { 0 };
            if upgrade && open.upgrade < fire_after(a.kind) {
                a.severity = Severity::Warning;
            }
            let recaused = hold_cause(open, a.cause, tick);
            let changed = open.severity != a.severity || recaused;
            open.severity = a.severity;
            open.observed = a.observed;
            open.expected = a.expected;
            // A summary speaks of its cause: kept while the cause holds.
            if open.cause == a.cause {
                open.summary = a.summary;
            }
            open.evidence = a.evidence;
            open.view = a.view;
            if changed {
                out.push(Transition::Updated(open.clone()));
            }
            return;
        }
        let key = finding(&a);
        let seen = self.pending.get(&key).map_or(0, |(_, n)| *n) + 1;
        if seen < fire_after(a.kind) {
            let since = self.pending.get(&key).map(|(first, _)| first.since_tick);
            a.since_tick = since.unwrap_or(a.since_tick);
            self.pending.insert(key, (a, seen));
            return;
        }
        let first = self.pending.remove(&key);
        // A flap: it resolved recently, so reopen it (confirmed like a new
        // one: never on one tick) and hold it open longer instead of firing
        // again.
        if let Some(pos) = self.resolved.iter().position(|r| {
            r.id == id
                && r.resolved_tick
                    .is_some_and(|t| tick.saturating_sub(t) <= s.flap_window)
        }) && let Some(old) = self.resolved.remove(pos)
        {
            a.since_tick = old.since_tick;
            a.flaps = old.flaps + 1;
            out.push(Transition::Updated(a.clone()));
            self.open.insert(id, a);
            return;
        }
        if let Some((first, _)) = first {
            a.since_tick = first.since_tick;
        }
        out.push(Transition::Fired(a.clone()));
        self.open.insert(id, a);
    }

    pub(super) fn resolve_pools_not_in(
        &mut self,
        names: &HashSet<String>,
        tick: u64,
    ) -> Vec<Transition> {
        self.pending.retain(|_, (a, _)| names.contains(&a.pool));
        let gone: Vec<String> = self
            .open
            .iter()
            .filter(|(_, a)| !names.contains(&a.pool))
            .map(|(id, _)| id.clone())
            .collect();
        (gone.iter())
            .filter_map(|id| self.resolve(id, tick))
            .collect()
    }

    pub(super) fn open(&self) -> impl Iterator<Item = &Alert> {
        self.open.values()
    }

    pub(super) fn resolved(&self) -> impl Iterator<Item = &Alert> {
        self.resolved.iter()
    }
}

impl Want {
    fn into_alert(self, id: String, pool: &str, member: &str, tick: u64) -> Alert {
        Alert {
            id,
            pool: pool.to_owned(),
            member: member.to_owned(),
            kind: self.kind,
            signal: self.signal,
            cause: self.cause,
            view: self.view,
            severity: self.severity,
            observed: self.observed,
            expected: self.expected,
            since_tick: tick,
            opened_tick: tick,
            resolved_tick: None,
            summary: self.summary,
            evidence: self.evidence,
            flaps: 0,
            ok_streak: 0,
            upgrade: 0,
            recause: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(cause: Cause) -> Alert {
        Want {
            kind: AlertKind::Skew,
            signal: Some(Signal::ActiveConnections),
            cause: Some(cause),
            view: View::Server,
            severity: Severity::Page,
            observed: 0.0,
            expected: 0.0,
            summary: String::new(),
            evidence: Vec::new(),
        }
        .into_alert("a".into(), "pool", "m", 0)
    }

    /// [`hold_cause`] on an alert long past [`EVIDENCE_LAG`].
    fn hold_cause_late(a: &mut Alert, cause: Option<Cause>) -> bool {
        hold_cause(a, cause, EVIDENCE_LAG + 1)
    }

    #[test]
    fn a_young_routing_alert_takes_refusing_at_once_and_leaves_it_after_the_hold() {
        let mut a = open(Cause::Routing);
        assert!(hold_cause(&mut a, Some(Cause::Refusing), EVIDENCE_LAG));
        assert_eq!(a.cause, Some(Cause::Refusing));
        for _ in 1..CAUSE_HOLD {
            assert!(!hold_cause(&mut a, Some(Cause::Routing), 1));
        }
        assert!(hold_cause(&mut a, Some(Cause::Routing), 1));
    }

    #[test]
    fn pinned_and_routing_change_at_once() {
        let mut a = open(Cause::Pinned);
        assert!(hold_cause_late(&mut a, Some(Cause::Routing)));
        assert_eq!(a.cause, Some(Cause::Routing));
        assert!(hold_cause_late(&mut a, Some(Cause::Pinned)));
    }

    #[test]
    fn refusing_is_taken_and_left_after_the_same_cause_held() {
        let mut a = open(Cause::Routing);
        for _ in 1..CAUSE_HOLD {
            assert!(!hold_cause_late(&mut a, Some(Cause::Refusing)));
        }
        // A tick naming the alert's own cause starts the count again.
        assert!(!hold_cause_late(&mut a, Some(Cause::Routing)));
        for _ in 1..CAUSE_HOLD {
            assert!(!hold_cause_late(&mut a, Some(Cause::Refusing)));
        }
        assert!(hold_cause_late(&mut a, Some(Cause::Refusing)));
        assert_eq!(a.cause, Some(Cause::Refusing));
        // Pinned and routing taking turns are not one cause held.
        for i in 0..CAUSE_HOLD * 2 {
            let c = if i % 2 == 0 {
                Cause::Pinned
            } else {
                Cause::Routing
            };
            assert!(!hold_cause_late(&mut a, Some(c)), "tick {i}");
        }
        assert_eq!(a.cause, Some(Cause::Refusing));
    }
}

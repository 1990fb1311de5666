//! A shortfall its balancers' failed attempts explain: the cause is the
//! member (REFUSING), not the balancer's choices (routing).

use std::sync::Arc;

use super::*;
use crate::detect::alerts::CAUSE_HOLD;
use crate::detect::tests::input;

/// How member 3 of four fares from tick 20: `got` of the 25 new
/// connections a tick each member gets, `failed` attempts to it failing
/// a tick, its open connections closing five a tick and none replaced
/// while it gets none. What it does not get, the others do (clients and
/// balancers try again elsewhere).
struct Short {
    got: u64,
    failed: u64,
}

/// 60 ticks of the pool with `short` on member 3 (the LB view counts as
/// the server view, plus the failed attempts): the last verdict and every
/// alert that fired.
fn run(short: Short) -> (PoolVerdict, Vec<Alert>) {
    run_members(4, 1, short)
}

/// [`run`] with `members` members, the last `short_members` of them short.
fn run_members(members: usize, short_members: usize, short: Short) -> (PoolVerdict, Vec<Alert>) {
    let ran = run_ticks(
        60,
        (members, short_members),
        |_| short.got,
        |_, _| short.failed,
        |_| true,
    );
    let fired = ran
        .transitions
        .into_iter()
        .filter_map(|(_, t)| match t {
            Transition::Fired(a) => Some(a),
            _ => None,
        })
        .collect();
    (ran.last, fired)
}

/// What [`run_ticks`] saw.
struct Ran {
    last: PoolVerdict,
    /// Every transition, with its tick.
    transitions: Vec<(u64, Transition)>,
    /// After each tick, the causes of the last member's open alerts.
    open_causes: Vec<(u64, Vec<Option<Cause>>)>,
    /// Each tick, the failed attempts its server view was judged with.
    failed_windows: Vec<u64>,
}

/// `ticks` ticks of a pool of `members`, the last `short_members` of them
/// getting `got(tick)` new connections a tick from tick 20 and their
/// balancers' attempts to member `i` failing `failed(tick, i)` a tick, the
/// LB view fresh on the ticks `lb_fresh` says.
fn run_ticks(
    ticks: u64,
    (members, short_members): (usize, usize),
    got: impl Fn(u64) -> u64,
    failed: impl Fn(u64, usize) -> u64,
    lb_fresh: impl Fn(u64) -> bool,
) -> Ran {
    let mut detector = Detector::default();
    let mut transitions = Vec::new();
    let mut open_causes = Vec::new();
    let mut failed_windows = Vec::new();
    let mut last = None;
    for t in 0..ticks {
        let got = got(t);
        let is_short = |i: usize| t >= 20 && i >= members - short_members;
        let missed =
            (0..members).filter(|&i| is_short(i)).count() as u64 * 25u64.saturating_sub(got);
        let others = 25 + missed / (members - short_members).max(1) as u64;
        let counts: Vec<u64> = (0..members)
            .map(|i| if is_short(i) { got } else { others })
            .collect();
        let mut pool = input(t, &counts, &vec![1.0; members]);
        for (i, m) in pool.members.iter_mut().enumerate() {
            let mut server = m.server.expect("input gives a server view");
            server.active = if is_short(i) && got == 0 {
                50u64.saturating_sub((t - 20) * 5)
            } else {
                50
            };
            let failed = if is_short(i) { failed(t, i) } else { 0 };
            m.server = Some(server);
            m.lb = Some(ViewInput {
                failed,
                fresh: lb_fresh(t),
                ..server
            });
        }
        let (verdict, tick) = detector.evaluate(&pool);
        transitions.extend(tick.into_iter().map(|tr| (t, tr)));
        let member = &verdict.members[members - 1];
        failed_windows.push(member.server.as_ref().map_or(0, |v| v.failed_window));
        let open = detector.open_alerts().filter(|a| a.member == member.id);
        open_causes.push((t, open.map(|a| a.cause).collect()));
        last = Some(verdict);
    }
    Ran {
        last: last.expect("the ticks ran"),
        transitions,
        open_causes,
        failed_windows,
    }
}

/// The member's ZERO or SKEW alerts on `signal`.
fn shortfall(fired: &[Alert], member: &str, signal: Signal) -> Vec<Alert> {
    fired
        .iter()
        .filter(|a| {
            a.member == member
                && a.signal == Some(signal)
                && matches!(a.kind, AlertKind::Zero | AlertKind::Skew)
        })
        .cloned()
        .collect()
}

#[test]
fn a_member_refusing_all_its_balancers_send_pages_zero_refusing() {
    let (verdict, fired) = run(Short { got: 0, failed: 25 });
    let member = &verdict.members[3];
    assert!(matches!(member.verdict, Verdict::Zero { .. }), "{member:?}");
    let zero = shortfall(&fired, &member.id, Signal::NewConnections);
    assert!(!zero.is_empty(), "ZERO fires: {fired:#?}");
    for a in &zero {
        assert_eq!(a.cause, Some(Cause::Refusing), "{a:#?}");
        // Judged in the server view, whose own agent counts no failed
        // attempt: the LB view's count reaches it.
        assert_eq!(a.view, View::Server, "{a:#?}");
        assert!(
            a.summary.contains("connection attempts to it failed"),
            "{}",
            a.summary
        );
    }
    assert!(
        zero.iter().any(|a| a.severity == Severity::Page),
        "a backend refusing its share still pages: {zero:#?}"
    );
    let open = shortfall(&fired, &member.id, Signal::ActiveConnections);
    assert!(!open.is_empty(), "its open connections go too: {fired:#?}");
    for a in &open {
        assert_eq!(a.cause, Some(Cause::Refusing), "{a:#?}");
        assert!(a.summary.contains("it does not take them"), "{}", a.summary);
    }
}

#[test]
fn a_member_nobody_dials_pages_zero_routing() {
    let (verdict, fired) = run(Short { got: 0, failed: 0 });
    let zero = shortfall(&fired, &verdict.members[3].id, Signal::NewConnections);
    assert!(!zero.is_empty(), "ZERO fires: {fired:#?}");
    assert!(
        zero.iter().all(|a| a.cause == Some(Cause::Routing)),
        "{zero:#?}"
    );
}

#[test]
fn a_member_skewed_low_is_refusing_only_while_failures_make_up_half_its_shortfall() {
    // It takes 5 of 25; the balancers' other 20 attempts fail.
    let (verdict, fired) = run(Short { got: 5, failed: 20 });
    let skew = shortfall(&fired, &verdict.members[3].id, Signal::NewConnections);
    assert!(!skew.is_empty(), "SKEW fires: {fired:#?}");
    assert!(skew.iter().all(|a| a.kind == AlertKind::Skew), "{skew:#?}");
    assert!(
        skew.iter().all(|a| a.cause == Some(Cause::Refusing)),
        "{skew:#?}"
    );
    // A few failures (2 of the 20 it misses a tick) do not explain it.
    let (verdict, fired) = run(Short { got: 5, failed: 2 });
    let skew = shortfall(&fired, &verdict.members[3].id, Signal::NewConnections);
    assert!(!skew.is_empty(), "SKEW fires: {fired:#?}");
    assert!(
        skew.iter().all(|a| a.cause == Some(Cause::Routing)),
        "{skew:#?}"
    );
}

#[test]
fn a_pool_concentrating_on_the_members_that_still_answer_is_refusing() {
    // Four of six crash: their balancers go on trying them in vain.
    let (_, fired) = run_members(6, 4, Short { got: 0, failed: 25 });
    let page = |fired: &[Alert]| {
        fired
            .iter()
            .find(|a| a.kind == AlertKind::Concentration)
            .cloned()
    };
    let concentration = page(&fired).expect("the pool concentrates");
    assert_eq!(
        concentration.cause,
        Some(Cause::Refusing),
        "{concentration:#?}"
    );
    assert!(
        concentration.summary.contains("refuse the connections"),
        "{}",
        concentration.summary
    );
    // The incident: the balancer sends them nothing.
    let (_, fired) = run_members(6, 4, Short { got: 0, failed: 0 });
    let concentration = page(&fired).expect("the pool concentrates");
    assert_eq!(
        concentration.cause,
        Some(Cause::Routing),
        "{concentration:#?}"
    );
}

/// A gap in the balancers' reports while the member refuses (their LB
/// view stale for two ticks) leaves its failures in the window: the alert
/// keeps saying refusing, never routing for a tick.
#[test]
fn a_gap_in_the_balancers_reports_keeps_the_cause() {
    let ran = run_ticks(60, (4, 1), |_| 0, |_, _| 25, |t| !(40..42).contains(&t));
    // The gap's ticks add none; the eight before them still count.
    assert_eq!(ran.failed_windows[39..43], [250, 225, 200, 200]);
    let paged = ran.open_causes.iter().filter(|(t, _)| *t >= 30);
    for (t, causes) in paged {
        assert!(!causes.is_empty(), "tick {t}: its alerts are open");
        assert!(
            causes.iter().all(|c| *c == Some(Cause::Refusing)),
            "tick {t}: {causes:?}"
        );
    }
}

/// Failures counted late (an unanswered SYN is counted failed when
/// conntrack forgets it): the member paged ZERO routing turns refusing
/// once the failures have said so for [`CAUSE_HOLD`] ticks, by an update
/// of the open alert, never a second page. One stray failed attempt,
/// which names refusing for as long as it stays in the window, changes
/// nothing.
#[test]
fn a_cause_the_evidence_changes_is_taken_after_a_hold_by_an_update() {
    let late = 45;
    let failed = move |t: u64, _| if t >= late || t == 30 { 25 } else { 0 };
    let ran = run_ticks(90, (4, 1), |_| 0, failed, |_| true);
    let member = &ran.last.members[3].id;
    let zero = |a: &Alert| {
        &a.member == member && a.kind == AlertKind::Zero && a.signal == Some(Signal::NewConnections)
    };
    let fired: Vec<u64> = ran
        .transitions
        .iter()
        .filter(|(_, tr)| matches!(tr, Transition::Fired(a) if zero(a)))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(fired.len(), 1, "one page: {:#?}", ran.transitions);
    assert!(
        fired[0] < 30,
        "it paged before the stray attempt: {fired:?}"
    );
    let at = |t: u64| {
        ran.open_causes
            .iter()
            .find(|(tick, _)| *tick == t)
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    };
    let taken = late + u64::from(CAUSE_HOLD) - 1;
    for t in fired[0]..taken {
        assert!(
            at(t).contains(&Some(Cause::Routing)),
            "tick {t}: {:?}",
            at(t)
        );
    }
    let updated: Vec<u64> = ran
        .transitions
        .iter()
        .filter(|(_, tr)| {
            matches!(tr, Transition::Updated(a) if zero(a) && a.cause == Some(Cause::Refusing))
        })
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(updated.first(), Some(&taken), "{:#?}", ran.transitions);
    for t in taken..90 {
        assert!(
            at(t).contains(&Some(Cause::Refusing)),
            "tick {t}: {:?}",
            at(t)
        );
    }
}

/// The pool's FAILING alerts: the ticks each fired and resolved.
fn failing(ran: &Ran) -> (Vec<u64>, Vec<u64>) {
    let at = |fired: bool| {
        (ran.transitions.iter())
            .filter(|(_, tr)| tr.alert().kind == AlertKind::Failing)
            .filter(|(_, tr)| matches!(tr, Transition::Fired(_)) == fired)
            .filter(|(_, tr)| fired || matches!(tr, Transition::Resolved(_)))
            .map(|(t, _)| *t)
            .collect()
    };
    (at(true), at(false))
}

/// Every member refuses from tick 20 (a firewall rule or a network policy
/// on every backend, listeners up): no connection opens anywhere, so the
/// pool's new connections fall to none while its balancers' attempts fail
/// as fast as clients try. Not a quiet pool: one page, FAILING, its cause
/// refusing, with each member ZERO refusing grouped under it as a warning.
/// Once connections open again, it resolves.
#[test]
fn a_pool_whose_every_attempt_fails_pages_failing_once() {
    let back = 60;
    let ran = run_ticks(back, (4, 4), |_| 0, |_, _| 25, |_| true);
    assert_eq!(ran.last.verdict, Verdict::Failing, "{}", ran.last.reason);
    assert!(
        ran.last.reason.contains("every connection attempt"),
        "{}",
        ran.last.reason
    );
    let pages: Vec<_> = (ran.transitions.iter())
        .filter_map(|(t, tr)| match tr {
            Transition::Fired(a) if a.severity == Severity::Page => Some((*t, a.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(pages.len(), 1, "one page: {pages:#?}");
    let (at, page) = &pages[0];
    assert_eq!(page.kind, AlertKind::Failing, "{page:#?}");
    assert_eq!(page.cause, Some(Cause::Refusing), "{page:#?}");
    assert!(*at <= 22, "within two ticks of tick 20: {at}");
    for m in &ran.last.members {
        assert!(matches!(m.verdict, Verdict::Zero { .. }), "{m:?}");
    }
    let (_, open) = ran.open_causes.last().expect("ticks ran");
    assert!(
        !open.is_empty() && open.iter().all(|c| *c == Some(Cause::Refusing)),
        "{open:?}"
    );

    let ran = run_ticks(
        back + 30,
        (4, 4),
        |t| if t < back { 0 } else { 25 },
        |t, _| if t < back { 25 } else { 0 },
        |_| true,
    );
    let (fired, resolved) = failing(&ran);
    assert_eq!(fired.len(), 1, "{:#?}", ran.transitions);
    assert!(
        resolved.len() == 1 && resolved[0] >= back && resolved[0] <= back + 6,
        "resolved once, after clear_ticks good ticks: {resolved:?}"
    );
    assert_ne!(ran.last.verdict, Verdict::Failing);
    let after = (ran.transitions.iter()).filter(|(t, tr)| {
        *t >= back && matches!(tr, Transition::Fired(a) if a.severity == Severity::Page)
    });
    assert_eq!(
        after.count(),
        0,
        "no member pages as it ends: {:#?}",
        ran.transitions
    );
}

/// A balancer that marked every member down (HAProxy with `check`) sends
/// them nothing but its health checks, a failed one to each every other
/// tick, and answers clients itself (a 503): FAILING all the same.
#[test]
fn a_pool_whose_health_checks_all_fail_is_failing() {
    let checks = |t: u64, _| u64::from(t.is_multiple_of(2));
    let ran = run_ticks(40, (4, 4), |_| 0, checks, |_| true);
    assert_eq!(ran.last.verdict, Verdict::Failing, "{}", ran.last.reason);
    let (fired, _) = failing(&ran);
    assert!(
        fired.len() == 1 && fired[0] <= 24,
        "{fired:?}: {:#?}",
        ran.transitions
    );
    // A pool of one is judged alike.
    let ran = run_ticks(40, (1, 1), |_| 0, |_, _| 25, |_| true);
    assert_eq!(ran.last.verdict, Verdict::Failing, "{}", ran.last.reason);
}

/// Failed attempts a tick to member `i`.
type FailedAt = dyn Fn(u64, usize) -> u64;

/// A quiet pool is not a failing one: clients that stopped make no
/// attempts, and an attempt given up now and then (two, to two members,
/// three ticks apart) is not every attempt failing. Nor are failed
/// attempts that all went to one member, of four or of two, counted after
/// the clients stopped (a forwarding balancer counts an unanswered attempt
/// when conntrack forgets it, two minutes late).
#[test]
fn a_quiet_pool_with_a_stray_failed_attempt_is_not_failing() {
    let none = |_: u64, _: usize| 0;
    let stray = |t: u64, i: usize| u64::from((t, i) == (30, 0) || (t, i) == (33, 1));
    let late = |t: u64, i: usize| {
        if i == 1 && (30..36).contains(&t) {
            8
        } else {
            0
        }
    };
    let shapes: [(usize, &FailedAt); 4] = [(4, &none), (4, &stray), (4, &late), (2, &late)];
    for (members, failed) in shapes {
        let ran = run_ticks(60, (members, members), |_| 0, failed, |_| true);
        assert_eq!(
            ran.last.verdict,
            Verdict::InsufficientTraffic,
            "{}",
            ran.last.reason
        );
        assert_eq!(failing(&ran), (vec![], vec![]));
        let pages = (ran.transitions.iter())
            .filter(|(_, tr)| tr.alert().severity == Severity::Page)
            .count();
        assert_eq!(pages, 0, "{:#?}", ran.transitions);
    }
}

/// `ticks` ticks of a pool of three members, each with `server(tick)` new
/// connections in its server view; `shape(tick, member, its server view)`
/// sets the rest (its LB view, its listener, its counts by node). Every
/// tick's verdict, and the transitions with their ticks.
fn run_three(
    ticks: u64,
    server: impl Fn(u64) -> u64,
    shape: impl Fn(u64, &mut MemberInput, ViewInput),
) -> (Vec<PoolVerdict>, Vec<(u64, Transition)>) {
    let mut detector = Detector::default();
    let mut verdicts = Vec::new();
    let mut transitions = Vec::new();
    for t in 0..ticks {
        let mut pool = input(t, &[server(t); 3], &[1.0; 3]);
        for m in &mut pool.members {
            let view = m.server.expect("input gives a server view");
            shape(t, m, view);
        }
        let (verdict, tick) = detector.evaluate(&pool);
        transitions.extend(tick.into_iter().map(|tr| (t, tr)));
        verdicts.push(verdict);
    }
    (verdicts, transitions)
}

/// Two load balancer nodes split the clients. From tick 20 to 50 one of
/// them, lb-b, reaches no member: its every attempt fails while lb-a's
/// open. The members' shares stay even (lb-a sends to each), so only
/// lb-b's own attempts say it: one page, FAILING, naming lb-b, with no
/// cause the members or the routing give; no member is ZERO. Once lb-b
/// reaches them again, it resolves.
#[test]
fn a_balancer_node_cut_off_from_the_pool_pages_failing_naming_it() {
    let cut = 20..50;
    let (verdicts, transitions) = two_nodes(70, cut.clone(), 0..0, None);
    let during = &verdicts[cut.end as usize - 1];
    assert_eq!(during.verdict, Verdict::Failing, "{}", during.reason);
    assert!(
        during.reason.contains("lb-b") && during.reason.contains("cut off"),
        "{}",
        during.reason
    );
    assert_eq!(during.cut_off.len(), 1, "{:?}", during.cut_off);
    assert!(
        during.members.iter().all(|m| !m.verdict.is_zero()),
        "{:?}",
        during.members
    );
    let pages: Vec<_> = (transitions.iter())
        .filter(|(_, tr)| matches!(tr, Transition::Fired(a) if a.severity == Severity::Page))
        .collect();
    assert_eq!(pages.len(), 1, "one page: {pages:#?}");
    let (at, page) = pages[0];
    assert_eq!(page.alert().kind, AlertKind::Failing, "{page:#?}");
    assert_eq!(page.alert().cause, None, "{page:#?}");
    assert!(*at <= cut.start + 2, "within two ticks: {at}");
    let ran = Ran {
        last: verdicts.last().cloned().expect("ticks ran"),
        transitions,
        open_causes: Vec::new(),
        failed_windows: Vec::new(),
    };
    let (_, resolved) = failing(&ran);
    assert!(
        resolved.len() == 1 && resolved[0] <= cut.end + 6,
        "{resolved:?}"
    );
    assert_ne!(ran.last.verdict, Verdict::Failing, "{}", ran.last.reason);
}

/// `ticks` ticks of two load balancer nodes, lb-a and lb-b, each opening
/// 10 connections a tick to each of three members: lb-b's every attempt
/// fails over `b_cut`, lb-a's too over `all_cut` but at tick `stray`, when
/// one of its connections to the first member opens.
fn two_nodes(
    ticks: u64,
    b_cut: std::ops::Range<u64>,
    all_cut: std::ops::Range<u64>,
    stray: Option<u64>,
) -> (Vec<PoolVerdict>, Vec<(u64, Transition)>) {
    let (a, b): (Arc<str>, Arc<str>) = ("lb-a".into(), "lb-b".into());
    run_three(
        ticks,
        |t| match t {
            _ if all_cut.contains(&t) => 0,
            _ if b_cut.contains(&t) => 10,
            _ => 20,
        },
        |t, m, server| {
            let (a_fails, b_fails) = (all_cut.contains(&t), b_cut.contains(&t));
            m.lb_by_node = Vec::new();
            m.lb_failed_by_node = Vec::new();
            for (node, fails) in [(&a, a_fails), (&b, b_fails)] {
                let to = if fails {
                    &mut m.lb_failed_by_node
                } else {
                    &mut m.lb_by_node
                };
                to.push((node.clone(), 10));
            }
            let strays = u64::from(stray == Some(t) && m.id.ends_with(".1:8080"));
            if strays > 0 {
                m.lb_by_node.push((a.clone(), strays));
            }
            m.lb = Some(ViewInput {
                failed: 10 * (u64::from(a_fails) + u64::from(b_fails)),
                new_conns: server.new_conns + strays,
                ..server
            });
        },
    )
}

/// Ninety ticks of [`two_nodes`]: the transitions of lb-b's alert and of
/// the pool-wide one, with the pages.
fn escalate(
    b_cut: std::ops::Range<u64>,
    all_cut: std::ops::Range<u64>,
    stray: Option<u64>,
) -> Escalated {
    let (_, transitions) = two_nodes(90, b_cut, all_cut, stray);
    let of = |id: &str| -> Vec<(u64, Transition)> {
        (transitions.iter())
            .filter(|(_, tr)| tr.alert().id == id)
            .cloned()
            .collect()
    };
    Escalated {
        pages: (transitions.iter())
            .filter(|(_, tr)| matches!(tr, Transition::Fired(a) if a.severity == Severity::Page))
            .map(|(t, tr)| (*t, tr.alert().id.clone()))
            .collect(),
        node: of("web//FAILING/lb-b"),
        pool: of("web//FAILING"),
    }
}

struct Escalated {
    pages: Vec<(u64, String)>,
    node: Vec<(u64, Transition)>,
    pool: Vec<(u64, Transition)>,
}

impl Escalated {
    fn page_ids(&self) -> Vec<&str> {
        self.pages.iter().map(|(_, id)| id.as_str()).collect()
    }

    /// The tick an alert's transitions resolve it.
    fn resolved(trs: &[(u64, Transition)]) -> Option<u64> {
        (trs.iter())
            .find(|(_, tr)| matches!(tr, Transition::Resolved(_)))
            .map(|(t, _)| *t)
    }

    /// Whether the node's alert became a warning grouped under FAILING.
    fn node_grouped(&self) -> bool {
        self.node.iter().any(|(_, tr)| {
            matches!(tr, Transition::Updated(a)
                if a.severity == Severity::Warning
                    && a.evidence.iter().any(|(k, _)| k == "grouped_under_failing"))
        })
    }
}

/// lb-b is cut off from tick 20 (it pages, naming it), then from tick 35
/// lb-a too: every attempt fails, pool-wide, until tick 55. The node's
/// page is the same outage grown: it stays open, grouped as a warning
/// under the pool's page once that fires, and resolves with it, never
/// before; two pages in all.
#[test]
fn a_cut_off_node_that_grows_into_every_attempt_failing_stays_open_under_it() {
    // The second time, one connection of lb-a's opens at tick 45: the
    // pool's FAILING misses that tick and the node's stays with it.
    for stray in [None, Some(45)] {
        let e = escalate(20..55, 35..55, stray);
        assert_eq!(
            e.page_ids(),
            ["web//FAILING/lb-b", "web//FAILING"],
            "{:?}",
            e.pages
        );
        let (node_end, pool_end) = (Escalated::resolved(&e.node), Escalated::resolved(&e.pool));
        assert!(
            node_end.is_some() && node_end == pool_end,
            "{stray:?}: the node's resolves with the pool's: {:#?} {:#?}",
            e.node,
            e.pool
        );
        assert!(
            e.node_grouped(),
            "grouped under the pool's page: {:#?}",
            e.node
        );
    }
}

/// lb-b is cut off from tick 20 to 30 and reaches its members again; from
/// tick 32 every attempt fails. lb-b's alert, clearing when the pool
/// failed, is no part of that outage: it resolves on its own, ungrouped.
#[test]
fn a_node_that_reached_its_members_again_is_not_held_by_a_later_outage() {
    let e = escalate(20..30, 32..55, None);
    assert_eq!(
        e.page_ids(),
        ["web//FAILING/lb-b", "web//FAILING"],
        "{:?}",
        e.pages
    );
    let node_end = Escalated::resolved(&e.node);
    assert!(
        node_end.is_some_and(|t| t < 45),
        "resolved on its own: {:#?}",
        e.node
    );
    assert!(!e.node_grouped(), "not grouped: {:#?}", e.node);
}

/// Every backend's process dies while its balancers keep dialling (no
/// health checks): each member is DOWN (its agent lists no listener) and
/// the pool FAILING. One page, the pool's: the members' DOWN stay
/// warnings grouped under it past `--down-page-ticks`, where each alone
/// would page.
#[test]
fn every_backend_down_pages_failing_once_with_their_down_grouped() {
    let (verdicts, transitions) = run_three(
        120,
        |t| if t >= 20 { 0 } else { 25 },
        |t, m, server| {
            m.listening = Some(t < 20);
            m.lb = Some(ViewInput {
                failed: if t >= 20 { 25 } else { 0 },
                ..server
            });
        },
    );
    let last = verdicts.last().expect("ticks ran");
    assert_eq!(last.verdict, Verdict::Failing, "{}", last.reason);
    assert!(
        (last.members.iter()).all(|m| matches!(m.verdict, Verdict::Down { page: true })),
        "past the page time: {:?}",
        last.members
    );
    // A warning that turns page is an update of the open alert.
    let paged: Vec<&Alert> = (transitions.iter())
        .filter_map(|(_, tr)| match tr {
            Transition::Fired(a) | Transition::Updated(a) => Some(a),
            Transition::Resolved(_) => None,
        })
        .filter(|a| a.severity == Severity::Page)
        .collect();
    assert!(
        !paged.is_empty() && paged.iter().all(|a| a.kind == AlertKind::Failing),
        "only FAILING pages: {paged:#?}"
    );
    let down = (transitions.iter())
        .filter(|(_, tr)| matches!(tr, Transition::Fired(a) if a.kind == AlertKind::Down))
        .count();
    assert_eq!(
        down, 3,
        "each member's DOWN, as a warning: {transitions:#?}"
    );
}

/// A network policy on every backend drops its balancers' connections but
/// lets the kubelet's probes through from the backend's own node: the
/// server view opens one a member a tick, the LB view none. Still
/// FAILING: only its balancers' openings say they reach the members.
#[test]
fn probes_that_pass_a_policy_do_not_hide_a_failing_pool() {
    let (verdicts, _) = run_three(
        40,
        |t| if t >= 20 { 1 } else { 25 },
        |t, m, server| {
            let policy = t >= 20;
            m.lb = Some(ViewInput {
                new_conns: if policy { 0 } else { 25 },
                failed: if policy { 25 } else { 0 },
                ..server
            });
        },
    );
    let first = verdicts.iter().position(|v| v.verdict == Verdict::Failing);
    assert!(first.is_some_and(|t| t <= 21), "FAILING from {first:?}");
}

/// The member's ZERO alerts on new connections: the ticks each fired, and
/// each transition's tick and cause.
fn zero_pages(ran: &Ran) -> (Vec<u64>, Vec<(u64, Option<Cause>)>) {
    let member = &ran.last.members[3].id;
    let zero = |a: &Alert| {
        &a.member == member && a.kind == AlertKind::Zero && a.signal == Some(Signal::NewConnections)
    };
    let fired = (ran.transitions.iter())
        .filter(|(_, tr)| matches!(tr, Transition::Fired(a) if zero(a)))
        .map(|(t, _)| *t)
        .collect();
    let causes = (ran.transitions.iter())
        .filter(|(_, tr)| zero(tr.alert()))
        .map(|(t, tr)| (*t, tr.alert().cause))
        .collect();
    (fired, causes)
}

/// A member of a busy pool whose balancers' attempts are counted a tick
/// after it got nothing (unanswered a second after each SYN, reported
/// with the next interval): its ZERO pages refusing from the first page.
#[test]
fn evidence_a_tick_late_pages_refusing_from_the_first_page() {
    let failed = |t: u64, _| if t >= 21 { 25 } else { 0 };
    let ran = run_ticks(60, (4, 1), |_| 0, failed, |_| true);
    let (fired, causes) = zero_pages(&ran);
    assert_eq!(fired.len(), 1, "one page: {causes:?}");
    assert!(
        causes.iter().all(|(_, c)| *c == Some(Cause::Refusing)),
        "{causes:?}"
    );
}

/// Counted two or three ticks late (a report that missed its tick): the
/// page that opened as routing turns refusing as the attempts arrive, by
/// an update of the young alert, not after [`CAUSE_HOLD`] ticks. (Counted
/// one tick late, as above, the page already opens refusing: that test
/// passes with or without the young alert's exception; this one does
/// not.)
#[test]
fn evidence_a_few_ticks_late_turns_the_young_page_refusing_at_once() {
    for lag in [2, 3] {
        let failed = move |t: u64, _| if t >= 20 + lag { 25 } else { 0 };
        let ran = run_ticks(60, (4, 1), |_| 0, failed, |_| true);
        let (fired, causes) = zero_pages(&ran);
        assert_eq!(fired, [21], "lag {lag}: one page: {causes:?}");
        assert_eq!(
            causes,
            [
                (21, Some(Cause::Routing)),
                (20 + lag, Some(Cause::Refusing))
            ],
            "lag {lag}"
        );
    }
}

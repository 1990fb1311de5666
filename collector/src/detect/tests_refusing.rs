//! A shortfall its balancers' failed attempts explain: the cause is the
//! member (REFUSING), not the balancer's choices (routing).

use super::*;
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
    let mut detector = Detector::default();
    let mut fired = Vec::new();
    let mut last = None;
    for t in 0..60 {
        let is_short = |i: usize| t >= 20 && i >= members - short_members;
        let missed = (0..members).filter(|&i| is_short(i)).count() as u64 * (25 - short.got);
        let others = 25 + missed / (members - short_members) as u64;
        let counts: Vec<u64> = (0..members)
            .map(|i| if is_short(i) { short.got } else { others })
            .collect();
        let mut pool = input(t, &counts, &vec![1.0; members]);
        for (i, m) in pool.members.iter_mut().enumerate() {
            let mut server = m.server.expect("input gives a server view");
            server.active = if is_short(i) && short.got == 0 {
                50u64.saturating_sub((t - 20) * 5)
            } else {
                50
            };
            let failed = if is_short(i) { short.failed } else { 0 };
            m.server = Some(server);
            m.lb = Some(ViewInput { failed, ..server });
        }
        let (verdict, transitions) = detector.evaluate(&pool);
        fired.extend(transitions.into_iter().filter_map(|t| match t {
            Transition::Fired(a) => Some(a),
            _ => None,
        }));
        last = Some(verdict);
    }
    (last.expect("60 ticks ran"), fired)
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

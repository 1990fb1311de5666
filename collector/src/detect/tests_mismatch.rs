//! MISMATCH in weighted pools: the two views disagree about whether new
//! connections reach a member, and only connections one view saw while the
//! other was dark say so.

use super::*;
use crate::detect::{sim::Rng, tests::input, tests_load::paged};

/// Every transition with the tick it happened on.
type Log = Vec<(u64, Transition)>;

const MEMBERS: usize = 10;
const DARK: usize = 3;

/// How the two views see member [`DARK`] while the fault lasts.
#[derive(Clone, Copy)]
enum Fault {
    /// Nothing reaches it: both views dark.
    Outage,
    /// The balancers go on sending it connections that never arrive.
    Lost,
    /// It goes on receiving connections its balancers never sent.
    Around,
}

/// 200 ticks of a ten-member pool at `rate` new connections a tick, the
/// fault on member [`DARK`] over `fault_at`. The server view counts every
/// connection; the LB view only `lb_part` of them (the balancers that run
/// an agent), so the views cross the ZERO bound at their own pace. The LB
/// view's agent is stale over `lb_stale`.
struct Scenario {
    fault: Fault,
    fault_at: std::ops::Range<u64>,
    /// From this tick the fault is every member's.
    spread_at: u64,
    rate: f64,
    lb_part: f64,
    lb_stale: std::ops::Range<u64>,
    /// The server's agent is stale here, and its figures carry on at
    /// three new connections a tick (what a stale agent's last rate
    /// gives).
    server_stale: std::ops::Range<u64>,
    /// The LB view counts one last connection in the fault's first tick,
    /// which the server view counted in the tick before (the two agents'
    /// clocks a tick apart).
    lb_late: bool,
    /// An eleventh member, which no balancer sends to, is in the set on
    /// every other tick here (the set changes every tick).
    churn: std::ops::Range<u64>,
}

impl Scenario {
    fn new(fault: Fault, lb_part: f64) -> Self {
        Self {
            fault,
            fault_at: 60..200,
            spread_at: u64::MAX,
            rate: 100.0,
            lb_part,
            lb_stale: 0..0,
            server_stale: 0..0,
            lb_late: false,
            churn: 0..0,
        }
    }

    /// Each tick's verdict for the member, and every transition.
    fn run(&self, seed: u64) -> (Vec<Verdict>, Log) {
        let mut rng = Rng::new(seed);
        let mut detector = Detector::default();
        let weights = [1.0; MEMBERS];
        let mut verdicts = Vec::new();
        let mut log = Log::new();
        for t in 0..200 {
            let counts: Vec<u64> = (0..MEMBERS)
                .map(|_| rng.neg_binomial(self.rate / MEMBERS as f64, 1.0))
                .collect();
            let mut pool = input(t, &counts, &weights);
            for (i, m) in pool.members.iter_mut().enumerate() {
                let Some(mut server) = m.server else { continue };
                let sent = (0..server.new_conns)
                    .filter(|_| rng.f64() < self.lb_part)
                    .count() as u64;
                let mut lb = ViewInput {
                    new_conns: sent,
                    fresh: !self.lb_stale.contains(&t),
                    ..server
                };
                if (i == DARK || t >= self.spread_at) && self.fault_at.contains(&t) {
                    match self.fault {
                        Fault::Outage => {
                            server.new_conns = 0;
                            lb.new_conns = 0;
                        }
                        Fault::Lost => server.new_conns = 0,
                        Fault::Around => lb.new_conns = 0,
                    }
                }
                if i == DARK && self.lb_late && t == self.fault_at.start {
                    lb.new_conns = 1;
                }
                if i == DARK && self.server_stale.contains(&t) {
                    server.fresh = false;
                    server.new_conns = 3;
                }
                m.server = Some(server);
                m.lb = Some(lb);
            }
            if self.churn.contains(&t) && t.is_multiple_of(2) {
                let mut extra = input(t, &[0; MEMBERS + 1], &[1.0; MEMBERS + 1]).members;
                let mut extra = extra.swap_remove(MEMBERS);
                extra.lb = extra.server;
                pool.members.push(extra);
            }
            let (v, tr) = detector.evaluate(&pool);
            verdicts.push(v.members[DARK].verdict);
            log.extend(tr.into_iter().map(|x| (t, x)));
        }
        (verdicts, log)
    }
}

/// A MISMATCH of member [`DARK`].
fn dark_mismatch(a: &Alert) -> bool {
    a.kind == AlertKind::Mismatch && a.member == "10.0.0.4:8080"
}

fn mismatch_pages(log: &Log) -> Vec<u64> {
    paged(log)
        .into_iter()
        .filter(|(_, a)| a.kind == AlertKind::Mismatch)
        .map(|(t, _)| t)
        .collect()
}

#[test]
fn an_outage_seen_sooner_by_one_view_is_zero_never_a_mismatch() {
    for seed in 1..=20 {
        let (verdicts, log) = Scenario::new(Fault::Outage, 0.25).run(seed);
        let mismatched: Vec<usize> = (0..verdicts.len())
            .filter(|&t| verdicts[t] == Verdict::Mismatch)
            .collect();
        assert!(
            mismatched.is_empty(),
            "seed {seed}: both views went dark at tick 60, yet MISMATCH at ticks {mismatched:?}"
        );
        let zero = paged(&log)
            .into_iter()
            .find(|(_, a)| a.kind == AlertKind::Zero)
            .map(|(t, _)| t);
        assert!(
            zero.is_some_and(|t| (60..70).contains(&t)),
            "seed {seed}: the outage pages ZERO within ten ticks, not at {zero:?}"
        );
    }
}

#[test]
fn connections_sent_that_never_arrive_are_a_lasting_mismatch() {
    for seed in 1..=20 {
        let (verdicts, log) = Scenario::new(Fault::Lost, 0.25).run(seed);
        let pages = mismatch_pages(&log);
        assert!(
            pages.first().is_some_and(|t| (60..70).contains(t)),
            "seed {seed}: MISMATCH pages within ten ticks: {pages:?}"
        );
        let held = verdicts[70..]
            .iter()
            .filter(|v| **v == Verdict::Mismatch)
            .count();
        assert!(
            held >= 120,
            "seed {seed}: the mismatch holds ({held} of 130 ticks): {:?}",
            &verdicts[60..]
        );
    }
}

#[test]
fn connections_received_that_were_never_sent_are_a_lasting_mismatch() {
    for seed in 1..=20 {
        let (verdicts, log) = Scenario::new(Fault::Around, 1.0).run(seed);
        let pages = mismatch_pages(&log);
        assert!(
            pages.first().is_some_and(|t| (60..70).contains(t)),
            "seed {seed}: MISMATCH pages within ten ticks: {pages:?}"
        );
        assert!(
            verdicts[70..].iter().all(|v| *v == Verdict::Mismatch),
            "seed {seed}: the mismatch holds: {:?}",
            &verdicts[60..]
        );
    }
}

fn zero_pages(log: &Log) -> Vec<u64> {
    paged(log)
        .into_iter()
        .filter(|(_, a)| a.kind == AlertKind::Zero)
        .map(|(t, _)| t)
        .collect()
}

#[test]
fn connections_lost_behind_a_sparse_view_page_mismatch_not_zero() {
    // The server view crosses ZERO on its first dark tick; the LB view
    // sees a twentieth of the traffic, its last connections a tick apart.
    for seed in 1..=20 {
        let scenario = Scenario {
            rate: 300.0,
            ..Scenario::new(Fault::Lost, 0.05)
        };
        let (verdicts, log) = scenario.run(seed);
        let zero = zero_pages(&log);
        assert!(
            zero.is_empty(),
            "seed {seed}: ZERO paged at {zero:?}: {:?}",
            &verdicts[60..75]
        );
        let pages = mismatch_pages(&log);
        assert!(
            pages.first().is_some_and(|t| (60..70).contains(t)),
            "seed {seed}: MISMATCH pages within ten ticks: {pages:?} {:?}",
            &verdicts[60..75]
        );
    }
}

#[test]
fn an_outage_while_one_agent_was_stale_is_zero_never_a_mismatch() {
    for seed in 1..=20 {
        let scenario = Scenario {
            lb_stale: 58..64,
            ..Scenario::new(Fault::Outage, 0.25)
        };
        let (verdicts, log) = scenario.run(seed);
        assert!(
            mismatch_pages(&log).is_empty(),
            "seed {seed}: {:?}",
            &verdicts[56..80]
        );
        assert!(
            zero_pages(&log)
                .first()
                .is_some_and(|t| (60..75).contains(t)),
            "seed {seed}: ZERO pages: {:?}",
            &verdicts[56..80]
        );
    }
}

#[test]
fn the_end_of_a_long_outage_seen_first_by_the_denser_view_is_no_mismatch() {
    for seed in 1..=20 {
        let scenario = Scenario {
            fault_at: 20..150,
            rate: 40.0,
            ..Scenario::new(Fault::Outage, 0.1)
        };
        let (verdicts, log) = scenario.run(seed);
        let pages = mismatch_pages(&log);
        assert!(
            pages.is_empty(),
            "seed {seed}: MISMATCH paged at {pages:?}: {:?}",
            &verdicts[145..175]
        );
    }
}

#[test]
fn an_outage_behind_a_view_too_sparse_to_go_dark_is_zero_within_the_wait() {
    // The LB view counts 0.4% of the connections (0.04 a tick for the
    // member): it can never say it went dark too, so the server's ZERO
    // waits for it ten ticks at most.
    for seed in 1..=20 {
        let scenario = Scenario {
            lb_late: true,
            ..Scenario::new(Fault::Outage, 0.004)
        };
        let (verdicts, log) = scenario.run(seed);
        let zero = zero_pages(&log);
        assert!(
            zero.first().is_some_and(|t| (60..75).contains(t)),
            "seed {seed}: ZERO pages within fifteen ticks: {zero:?} {:?}",
            &verdicts[58..80]
        );
        assert!(mismatch_pages(&log).is_empty(), "seed {seed}");
    }
}

#[test]
fn a_stale_agents_carried_rate_is_no_connection_seen() {
    // The member's node is cut off at tick 60: its agent's figures go
    // stale, carried on at its last rate; the balancers take it out of
    // rotation (both views dark), the node comes back at 75 and the
    // balancers add it again at 85.
    for seed in 1..=20 {
        let scenario = Scenario {
            fault_at: 60..85,
            server_stale: 60..75,
            rate: 40.0,
            ..Scenario::new(Fault::Outage, 1.0)
        };
        let (verdicts, log) = scenario.run(seed);
        let pages = mismatch_pages(&log);
        assert!(
            pages.is_empty(),
            "seed {seed}: MISMATCH paged at {pages:?}: {:?}",
            &verdicts[58..95]
        );
    }
}

#[test]
fn a_mismatch_holds_when_the_fault_spreads_to_the_whole_pool() {
    for seed in 1..=20 {
        let scenario = Scenario {
            spread_at: 100,
            ..Scenario::new(Fault::Lost, 0.25)
        };
        let (verdicts, log) = scenario.run(seed);
        assert!(
            mismatch_pages(&log)
                .first()
                .is_some_and(|t| (60..70).contains(t)),
            "seed {seed}"
        );
        let held = verdicts[100..]
            .iter()
            .filter(|v| **v == Verdict::Mismatch)
            .count();
        assert!(
            held >= 95,
            "seed {seed}: the mismatch holds after the fault spread ({held} of 100): {:?}",
            &verdicts[95..130]
        );
    }
}

#[test]
fn a_mismatch_back_after_its_lb_agent_was_stale_pages_in_a_pool_gone_quiet() {
    // As above, and the balancers' agent misses ten reports at 140, when
    // the members' own view has counted nothing for 40 ticks and calls the
    // pool quiet: the page resolves while that view is NO_DATA, and the
    // loss, still going on when it reports again, pages again.
    for seed in 1..=10 {
        let scenario = Scenario {
            spread_at: 100,
            lb_stale: 140..150,
            ..Scenario::new(Fault::Lost, 0.25)
        };
        let (verdicts, log) = scenario.run(seed);
        let resolved = log.iter().find_map(|(t, x)| match x {
            Transition::Resolved(a) if dark_mismatch(a) => Some(*t),
            _ => None,
        });
        let reopened = log.iter().find_map(|(t, x)| match x {
            Transition::Updated(a) if dark_mismatch(a) && a.flaps == 1 => Some((*t, a.severity)),
            _ => None,
        });
        assert!(
            resolved.is_some_and(|t| (140..150).contains(&t))
                && reopened
                    .is_some_and(|(t, sev)| (150..160).contains(&t) && sev == Severity::Page),
            "seed {seed}: MISMATCH resolved at {resolved:?} (while the balancers' view was stale) and paged again at {reopened:?} (once it was back): {:?}",
            &verdicts[135..165]
        );
    }
}

#[test]
fn a_mismatch_in_a_pool_gone_quiet_holds_while_its_member_set_keeps_changing() {
    // As above; from tick 140, when the members' own view has counted
    // nothing for 40 ticks and calls the pool quiet, the set changes every
    // tick for 30 ticks. The pool settles (10 ticks), then only the member
    // that comes and goes does: the page on the member whose connections
    // are lost stays open throughout, neither resolved nor fired again.
    for seed in 1..=10 {
        let scenario = Scenario {
            spread_at: 100,
            churn: 140..170,
            ..Scenario::new(Fault::Lost, 0.25)
        };
        let (verdicts, log) = scenario.run(seed);
        let moved: Vec<(u64, &Transition)> = (log.iter())
            .filter(|(t, x)| {
                *t >= 100 && matches!(x, Transition::Resolved(a) | Transition::Fired(a) if dark_mismatch(a))
            })
            .map(|(t, x)| (*t, x))
            .collect();
        assert!(
            moved.is_empty() && verdicts[199] == Verdict::Mismatch,
            "seed {seed}: the MISMATCH page came and went: {moved:?} {:?}",
            &verdicts[135..175]
        );
    }
}

/// A pool whose load balancers' view is dark from the start (a
/// direct-server-return balancer, or clients that bypass the declared
/// one): no page, the members judged on their own view, and the pool's
/// reason says the balancer is invisible rather than idle. Once the
/// balancer's connections show, the note goes.
#[test]
fn a_dark_lb_view_is_named_and_pages_nothing() {
    let mut d = Detector::default();
    let mut rng = Rng::new(11);
    let w = [1.0; 4];
    let dark_lb = ViewInput {
        fresh: true,
        ..Default::default()
    };
    let mut all = Vec::new();
    let mut last = None;
    for t in 0..60 {
        let counts: Vec<u64> = w.iter().map(|_| rng.poisson(5.0)).collect();
        let mut inp = input(t, &counts, &w);
        for m in &mut inp.members {
            m.lb = Some(dark_lb);
        }
        let (v, tr) = d.evaluate(&inp);
        all.extend(tr);
        last = Some(v);
    }
    let v = last.expect("ticks ran");
    assert!(all.is_empty(), "nothing fires on a dark view: {all:#?}");
    assert_eq!(v.verdict, Verdict::Ok, "{}", v.reason);
    assert_eq!(v.view, View::Server);
    assert!(
        v.reason.contains("load balancers' view saw no connection"),
        "{}",
        v.reason
    );
    // The balancer's view lights up: the note goes at once.
    let counts: Vec<u64> = w.iter().map(|_| rng.poisson(5.0)).collect();
    let mut inp = input(60, &counts, &w);
    for (m, &c) in inp.members.iter_mut().zip(&counts) {
        m.lb = Some(ViewInput {
            fresh: true,
            new_conns: c,
            ..Default::default()
        });
    }
    let (v, _) = d.evaluate(&inp);
    assert!(!v.reason.contains("load balancers' view"), "{}", v.reason);
}

/// A backend that refuses or never answers what its balancers send it is
/// ZERO in both views like one they leave out; the LB view's failed
/// attempts tell the two apart, in the member's reason and the view's.
#[test]
fn a_member_its_balancers_try_in_vain_says_their_attempts_failed() {
    let run = |refused: bool| {
        let mut detector = Detector::default();
        let weights = [1.0; 4];
        let mut last = None;
        for t in 0..40 {
            let dark = t >= 20;
            let counts = [25, 25, 25, if dark { 0 } else { 25 }];
            let mut pool = input(t, &counts, &weights);
            for (i, m) in pool.members.iter_mut().enumerate() {
                let server = m.server.expect("input gives a server view");
                let failed = if i == 3 && dark && refused { 25 } else { 0 };
                m.lb = Some(ViewInput { failed, ..server });
            }
            last = Some(detector.evaluate(&pool).0);
        }
        last.expect("40 ticks ran")
    };
    let tried = run(true);
    let member = &tried.members[3];
    assert!(matches!(member.verdict, Verdict::Zero { .. }), "{member:?}");
    let says = "250 connection attempts to it failed in the last 10 ticks (refused or unanswered): its load balancers' nodes still dial it";
    assert!(member.reason.contains(says), "{}", member.reason);
    let lb = member.lb.as_ref().expect("an LB view");
    assert_eq!(lb.failed_window, 250);
    assert!(lb.reason.contains(says), "{}", lb.reason);
    assert!(
        tried.members[..3]
            .iter()
            .all(|m| !m.reason.contains("failed")),
        "the others failed nothing: {:?}",
        tried.members[..3]
            .iter()
            .map(|m| &m.reason)
            .collect::<Vec<_>>()
    );
    let left_out = run(false);
    let member = &left_out.members[3];
    assert!(matches!(member.verdict, Verdict::Zero { .. }));
    assert!(
        !member.reason.contains("attempts"),
        "a member left out had no attempts: {}",
        member.reason
    );
}

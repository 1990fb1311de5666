//! Members joining a pool: judged on their share once their balancer takes
//! them in, or after `join_grace_ticks`.

use super::*;
use crate::detect::{sim::Rng, tests::input};

/// The tick the new members join at.
const JOIN: u64 = 120;

/// A scale-up: `old` equal members at `rate` new connections a tick
/// (negative binomial, φ = 1.5), and `new` more from [`JOIN`] on that
/// take `served(t)` of their share (what they do not take goes to the
/// others).
struct ScaleUp {
    old: usize,
    new: usize,
    rate: f64,
}

/// What a run gave: its pages with their ticks, and its verdicts.
struct Run {
    pages: Vec<(u64, Alert)>,
    verdicts: Vec<PoolVerdict>,
}

impl ScaleUp {
    fn run(&self, d: &mut Detector, seed: u64, ticks: u64, served: impl Fn(u64) -> f64) -> Run {
        let mut rng = Rng::new(seed);
        let mut run = Run {
            pages: Vec::new(),
            verdicts: Vec::new(),
        };
        for t in 0..ticks {
            let (members, f) = if t < JOIN {
                (self.old, 0.0)
            } else {
                (self.old + self.new, served(t))
            };
            let weight_sum = self.old as f64 + self.new as f64 * f;
            let counts: Vec<u64> = (0..members)
                .map(|i| {
                    let share = if i < self.old { 1.0 } else { f };
                    rng.neg_binomial(self.rate * share / weight_sum, 1.5)
                })
                .collect();
            let (v, tr) = d.evaluate(&input(t, &counts, &vec![1.0; members]));
            run.pages.extend(super::tests::fired_pages(t, tr));
            run.verdicts.push(v);
        }
        run
    }
}

/// Served from `lag` ticks after joining.
fn after(lag: u64) -> impl Fn(u64) -> f64 {
    move |t| if t >= JOIN + lag { 1.0 } else { 0.0 }
}

#[test]
fn a_scale_up_the_balancer_takes_in_late_pages_nothing() {
    // kube-proxy's sync, a gRPC client's next DNS resolution, HAProxy's
    // `rise` checks: up to the grace (30 ticks) late.
    for (old, new, rate, lag) in [
        (10, 1, 500.0, 5),
        (10, 1, 500.0, 15),
        (10, 1, 100.0, 29),
        (5, 5, 100.0, 8),
        (5, 5, 1000.0, 15),
        (10, 20, 2000.0, 3),
        (10, 20, 2000.0, 20),
    ] {
        let pool = ScaleUp { old, new, rate };
        for seed in 0..20 {
            let mut d = Detector::default();
            let run = pool.run(&mut d, seed, 300, after(lag));
            assert!(
                run.pages.is_empty(),
                "{old}+{new} at {rate}/tick, {lag} ticks late, seed {seed}: {:#?}",
                run.pages
            );
            // Until taken in, the new members are SETTLING and out of the
            // split; taken in, they are judged within ten ticks (at 10
            // connections a member and tick, 70 % of three ticks' share
            // can take a few).
            let waiting = &run.verdicts[(JOIN + lag - 1) as usize];
            for m in &waiting.members[old..] {
                assert_eq!(m.verdict, Verdict::Settling, "{m:#?}");
                assert!(m.reason.contains("sends it nothing yet"), "{}", m.reason);
            }
            let judged = &run.verdicts[(JOIN + lag + 10) as usize];
            for m in &judged.members[old..] {
                let share = m.server.as_ref().expect("server view").expected_share;
                assert!((share - 1.0 / (old + new) as f64).abs() < 1e-9, "{m:#?}");
            }
        }
    }
}

#[test]
fn without_the_grace_the_same_scale_up_pages() {
    // What the grace is for: judged from the first tick, a new member the
    // balancer takes in 5 ticks late pages ZERO, and a doubled pool pages
    // CONCENTRATION.
    let no_grace = || {
        Detector::new(Settings {
            join_grace_ticks: 0,
            ..Settings::default()
        })
    };
    for (pool, kind) in [
        (
            ScaleUp {
                old: 10,
                new: 1,
                rate: 500.0,
            },
            AlertKind::Zero,
        ),
        (
            ScaleUp {
                old: 5,
                new: 5,
                rate: 1000.0,
            },
            AlertKind::Concentration,
        ),
    ] {
        let run = pool.run(&mut no_grace(), 1, 200, after(5));
        assert!(
            run.pages.iter().any(|(_, a)| a.kind == kind),
            "{kind:?}: {:#?}",
            run.pages
        );
    }
}

#[test]
fn a_member_the_balancer_never_takes_in_pages_once_the_grace_ends() {
    let grace = Settings::default().join_grace_ticks;
    let judged = JOIN + grace;
    for seed in 0..20 {
        // One new member: ZERO.
        let pool = ScaleUp {
            old: 10,
            new: 1,
            rate: 500.0,
        };
        let run = pool.run(&mut Detector::default(), seed, 200, |_| 0.0);
        let [(at, page)] = &run.pages[..] else {
            panic!("seed {seed}: one page: {:#?}", run.pages);
        };
        assert_eq!(page.kind, AlertKind::Zero, "{page:#?}");
        assert_eq!(page.member, run.verdicts[150].members[10].id);
        assert!((judged..judged + 4).contains(at), "seed {seed}: at {at}");

        // The pool doubled and none of the new half taken in: one page,
        // CONCENTRATION, however many members starve.
        let pool = ScaleUp {
            old: 5,
            new: 5,
            rate: 1000.0,
        };
        let run = pool.run(&mut Detector::default(), seed, 200, |_| 0.0);
        let [(at, page)] = &run.pages[..] else {
            panic!("seed {seed}: one page: {:#?}", run.pages);
        };
        assert_eq!(page.kind, AlertKind::Concentration, "{page:#?}");
        assert!((judged..judged + 4).contains(at), "seed {seed}: at {at}");
    }
}

#[test]
fn a_member_taken_in_at_a_tenth_of_its_share_pages_once_the_grace_ends() {
    // Taking some connections is not being taken in: a new member the
    // balancer gives a tenth of its share (a weight left at 1 of 10) is
    // judged when the grace ends, and pages SKEW.
    let judged = JOIN + Settings::default().join_grace_ticks;
    let pool = ScaleUp {
        old: 10,
        new: 1,
        rate: 500.0,
    };
    for seed in 0..20 {
        let run = pool.run(&mut Detector::default(), seed, 200, |_| 0.1);
        let [(at, page)] = &run.pages[..] else {
            panic!("seed {seed}: one page: {:#?}", run.pages);
        };
        assert_eq!(page.kind, AlertKind::Skew, "{page:#?}");
        assert!((judged..judged + 4).contains(at), "seed {seed}: at {at}");
        let waiting = &run.verdicts[(judged - 1) as usize].members[10];
        let taking: f64 = (waiting.reason)
            .split("it takes ")
            .nth(1)
            .and_then(|r| r.split('%').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{}", waiting.reason));
        assert!((1.0..=30.0).contains(&taking), "{}", waiting.reason);
    }
}

#[test]
fn a_slow_start_is_taken_in_as_its_ramp_ends() {
    // HAProxy `slowstart 20s`, Envoy's slow start: the new member's weight
    // ramps from nothing to full over 20 ticks.
    let pool = ScaleUp {
        old: 10,
        new: 1,
        rate: 500.0,
    };
    for seed in 0..20 {
        let ramp = |t: u64| ((t.saturating_sub(JOIN) + 1) as f64 / 20.0).min(1.0);
        let run = pool.run(&mut Detector::default(), seed, 300, ramp);
        assert!(run.pages.is_empty(), "seed {seed}: {:#?}", run.pages);
        // Judged before the grace ends.
        let m = &run.verdicts[(JOIN + 25) as usize].members[10];
        assert_eq!(m.verdict, Verdict::Ok, "seed {seed}: {m:#?}");
    }
}

#[test]
fn the_members_a_pool_gathers_in_its_first_ticks_do_not_join() {
    // A pool's first members, and those its agents' first reports add in
    // its first 10 ticks (the collector just started), are judged at once:
    // a member dark from the start pages ZERO within seconds. One that
    // appears later joins.
    for appears in [0, 6, 12] {
        let mut d = Detector::default();
        let mut rng = Rng::new(5);
        let mut first = None;
        for t in 0..80 {
            let members = if t < appears { 9 } else { 10 };
            let counts: Vec<u64> = (0..members)
                .map(|i| {
                    if i == 9 {
                        0
                    } else {
                        rng.neg_binomial(50.0, 1.5)
                    }
                })
                .collect();
            let (_, tr) = d.evaluate(&input(t, &counts, &vec![1.0; members]));
            let zero = tr
                .iter()
                .any(|x| matches!(x, Transition::Fired(a) if a.kind == AlertKind::Zero));
            if first.is_none() && zero {
                first = Some(t);
            }
        }
        let judged = match appears {
            0..10 => appears,
            _ => appears + Settings::default().join_grace_ticks,
        };
        assert!(
            first.is_some_and(|t| (judged..judged + 5).contains(&t)),
            "appears at {appears}: ZERO at {first:?}"
        );
    }
}

#[test]
fn a_member_half_the_balancers_take_in_first_waits_for_the_rest() {
    // Each node's kube-proxy syncs at its own moment: half the traffic's
    // balancers take the new member in 2 ticks after it joins, the rest
    // up to 20 ticks later. At half its share it is not yet taken in.
    let pool = ScaleUp {
        old: 10,
        new: 1,
        rate: 500.0,
    };
    for lag in [5, 10, 20] {
        for seed in 0..20 {
            let served = |t: u64| match t.saturating_sub(JOIN) {
                0..2 => 0.0,
                d if d < 2 + lag => 0.5,
                _ => 1.0,
            };
            let run = pool.run(&mut Detector::default(), seed, 260, served);
            assert!(
                run.pages.is_empty(),
                "lag {lag}, seed {seed}: {:#?}",
                run.pages
            );
        }
    }
}

#[test]
fn a_pool_replaced_at_once_is_judged_as_its_balancer_takes_the_new_members_in() {
    // Blue/green: {A, B, C} replaced by {D, E, F} at tick 60, after the
    // pool's founding ticks. The balancer takes D and E in at once and
    // never F. D and E are judged within ticks, measured against each
    // other; F pages ZERO when the grace ends.
    let grace = Settings::default().join_grace_ticks;
    for seed in 0..10 {
        let mut d = Detector::default();
        let mut rng = Rng::new(seed);
        let mut zero = None;
        let mut verdicts = Vec::new();
        for t in 0..120u64 {
            let mut counts: Vec<u64> = (0..3).map(|_| rng.neg_binomial(100.0, 1.5)).collect();
            if t >= 60 {
                counts[2] = 0;
            }
            let mut inp = input(t, &counts, &[1.0; 3]);
            if t >= 60 {
                for m in &mut inp.members {
                    m.id = m.id.replace("10.0.0.", "10.0.9.");
                }
            }
            let (v, tr) = d.evaluate(&inp);
            for x in tr {
                if let Transition::Fired(a) = x
                    && a.severity == Severity::Page
                {
                    assert!(zero.is_none(), "one page: {a:#?}");
                    assert_eq!(
                        (a.kind, a.member.as_str()),
                        (AlertKind::Zero, "10.0.9.3:8080")
                    );
                    zero = Some(t);
                }
            }
            verdicts.push(v);
        }
        let judged = &verdicts[64];
        assert_ne!(judged.verdict, Verdict::InsufficientTraffic, "{judged:#?}");
        for m in &judged.members[..2] {
            assert_eq!(m.verdict, Verdict::Ok, "seed {seed}: {m:#?}");
        }
        assert_eq!(judged.members[2].verdict, Verdict::Settling);
        let at = zero.unwrap_or_else(|| panic!("seed {seed}: F never paged"));
        assert!(
            (60 + grace..60 + grace + 5).contains(&at),
            "seed {seed}: {at}"
        );
    }
}

#[test]
fn a_grace_of_forever_holds_a_joining_member_out_without_overflow() {
    let mut d = Detector::new(Settings {
        join_grace_ticks: u64::MAX,
        ..Settings::default()
    });
    let mut last = None;
    for t in 0..60u64 {
        let members = if t < 20 { 2 } else { 3 };
        let mut counts = vec![30; members];
        if members == 3 {
            counts[2] = 0;
        }
        let (v, tr) = d.evaluate(&input(t, &counts, &vec![1.0; members]));
        assert!(
            tr.iter().all(|x| !matches!(x, Transition::Fired(_))),
            "{tr:#?}"
        );
        last = Some(v);
    }
    let last = last.expect("60 ticks");
    assert_eq!(last.members[2].verdict, Verdict::Settling, "{last:#?}");
}

#[test]
fn a_joiner_the_only_member_its_view_sees_is_not_taken_in_by_itself() {
    // The old members are seen by their balancers' agents only; the new
    // one has an agent of its own too. Its server view sees no other
    // member to measure it against: only the LB view can say it is taken
    // in. A slow start at 5 % of its share for 20 ticks pages nothing.
    for seed in 0..10 {
        let mut d = Detector::default();
        let mut rng = Rng::new(seed);
        for t in 0..200u64 {
            let f = match t {
                0..JOIN => 0.0,
                t if t < JOIN + 20 => 0.05,
                _ => 1.0,
            };
            let counts: Vec<u64> = (0..5)
                .map(|i| rng.neg_binomial(if i == 4 { 100.0 * f } else { 100.0 }, 1.5))
                .collect();
            let mut inp = input(t, &counts, &[1.0; 5]);
            if t < JOIN {
                inp.members.pop();
            }
            let joined = inp.members.len() == 5;
            for (i, m) in inp.members.iter_mut().enumerate() {
                m.lb = m.server;
                if !(joined && i == 4) {
                    m.server = None;
                }
            }
            let (v, tr) = d.evaluate(&inp);
            assert!(
                !tr.iter()
                    .any(|x| matches!(x, Transition::Fired(a) if a.severity == Severity::Page)),
                "seed {seed}, tick {t}: {tr:#?}"
            );
            if (JOIN..JOIN + 20).contains(&t) {
                assert_eq!(v.members[4].verdict, Verdict::Settling, "tick {t}");
            }
        }
    }
}

#[test]
fn a_long_lived_pool_that_doubles_pages_nothing_while_its_balancer_takes_the_new_half_in() {
    // 5 members holding 2,000 connections that live about a minute; 5 more
    // join, and the balancer takes them in 10 or 25 ticks later. The old
    // half holds every open connection meanwhile: no fault of theirs.
    use crate::detect::sim::{LongLived, LongLivedSpec, member_id};
    for lag in [10, 25] {
        for seed in 0..4 {
            let mut rng = Rng::new(seed);
            let mut spec = LongLivedSpec::balanced(5, 2000);
            spec.lifetime = 60.0;
            let mut pool = LongLived::new(spec, &mut rng);
            let mut d = Detector::default();
            for t in 0..JOIN + 300 {
                if t == JOIN {
                    for _ in 0..5 {
                        let i = pool.add_member(1.0);
                        pool.placement[i] = 0.0;
                    }
                }
                if t == JOIN + lag {
                    pool.placement[5..].fill(1.0);
                }
                let numbers = pool.tick(&mut rng);
                let (_, tr) = d.evaluate(&pool.input("grpc", t, &numbers));
                let paged: Vec<&Alert> = (tr.iter())
                    .filter_map(|x| match x {
                        Transition::Fired(a) | Transition::Updated(a)
                            if a.severity == Severity::Page =>
                        {
                            Some(a)
                        }
                        _ => None,
                    })
                    .collect();
                assert!(
                    paged.is_empty(),
                    "lag {lag}, seed {seed}, tick {t} ({} joined): {paged:#?}",
                    member_id(5)
                );
            }
        }
    }
}

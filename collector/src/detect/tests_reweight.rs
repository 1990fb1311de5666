//! A changed weight: judged against the weights the balancer follows
//! until its split follows the new ones, or `join_grace_ticks` pass.

use super::*;
use crate::detect::{sim::Rng, tests::input};

/// The tick the declared weights change at.
const CHANGE: u64 = 120;

/// A pool whose declared weights go `from` → `to` at [`CHANGE`], and
/// whose balancer splits by `to` from `applied` on (never when `None`);
/// `dark` (member, tick) gets nothing from then on. Returns the pages
/// with their ticks, and the verdicts.
struct Change<'a> {
    from: &'a [f64],
    to: &'a [f64],
    rate: f64,
    applied: Option<u64>,
    dark: Option<(usize, u64)>,
}

impl Change<'_> {
    fn run(&self, seed: u64, ticks: u64) -> (Vec<(u64, Alert)>, Vec<PoolVerdict>) {
        let mut d = Detector::default();
        let mut rng = Rng::new(seed);
        let (mut pages, mut verdicts) = (Vec::new(), Vec::new());
        for t in 0..ticks {
            let declared = if t < CHANGE { self.from } else { self.to };
            let split = match self.applied {
                Some(a) if t >= a => self.to,
                _ => self.from,
            };
            let total: f64 = split.iter().sum();
            let counts: Vec<u64> = split
                .iter()
                .enumerate()
                .map(|(i, w)| match self.dark {
                    Some((m, from)) if m == i && t >= from => 0,
                    _ => rng.neg_binomial(self.rate * w / total, 1.5),
                })
                .collect();
            let (v, tr) = d.evaluate(&input(t, &counts, declared));
            pages.extend(super::tests::fired_pages(t, tr));
            verdicts.push(v);
        }
        (pages, verdicts)
    }
}

#[test]
fn a_weight_change_the_balancer_follows_late_pages_nothing() {
    // The balancer's config reloaded up to 25 ticks after the pool file.
    let ten = [1.0; 10];
    let mut canary = [1.0; 10];
    canary[9] = 5.0;
    for (from, to, rate, lag) in [
        (&[9.0, 1.0][..], &[5.0, 5.0][..], 200.0, 0),
        (&[9.0, 1.0], &[5.0, 5.0], 200.0, 3),
        (&[9.0, 1.0], &[5.0, 5.0], 200.0, 10),
        (&[9.0, 1.0], &[5.0, 5.0], 40.0, 25),
        (&[9.0, 1.0], &[1.0, 9.0], 200.0, 3),
        (&[1.0, 1.0, 1.0, 1.0], &[3.0, 1.0, 1.0, 1.0], 200.0, 10),
        (&ten, &canary, 500.0, 8),
    ] {
        for seed in 0..20 {
            let change = Change {
                from,
                to,
                rate,
                applied: Some(CHANGE + lag),
                dark: None,
            };
            let (pages, v) = change.run(seed, 300);
            assert!(
                pages.is_empty(),
                "{from:?} -> {to:?} at {rate}/tick, {lag} ticks late, seed {seed}: {pages:#?}"
            );
            // Judged against the old weights until then, and the new ones
            // within a few ticks of the balancer following them.
            let note = "judged against the previous weights";
            if lag > 1 {
                let pending = &v[(CHANGE + lag - 1) as usize];
                assert!(pending.reason.contains(note), "{}", pending.reason);
                let changed = from.iter().zip(to).filter(|(a, b)| a != b).count();
                let says = match changed {
                    1 => "1 member's weight changed".to_owned(),
                    n => format!("{n} members' weights changed"),
                };
                assert!(pending.reason.contains(&says), "{}", pending.reason);
                assert_eq!(
                    pending.members[0].weight, to[0],
                    "the declared weight shows"
                );
                for (i, m) in pending.members.iter().enumerate() {
                    let judged = (from[i] != to[i]).then_some(from[i]);
                    assert_eq!(m.judged_weight, judged, "{m:#?}");
                }
            }
            let after = &v[(CHANGE + lag + 3) as usize];
            assert!(
                !after.reason.contains(note),
                "seed {seed}: {}",
                after.reason
            );
            assert!(after.members.iter().all(|m| m.judged_weight.is_none()));
            let s = after.members[0].server.as_ref().expect("server view");
            let sum: f64 = to.iter().sum();
            assert!((s.expected_share - to[0] / sum).abs() < 1e-9, "{s:#?}");
        }
    }
}

#[test]
fn a_weight_change_the_balancer_never_follows_pages_skew_once_the_grace_ends() {
    let judged = CHANGE + Settings::default().join_grace_ticks;
    for seed in 0..20 {
        let change = Change {
            from: &[9.0, 1.0],
            to: &[5.0, 5.0],
            rate: 200.0,
            applied: None,
            dark: None,
        };
        let (pages, _) = change.run(seed, 200);
        assert!(!pages.is_empty(), "seed {seed}");
        assert!(
            pages
                .iter()
                .all(|(t, a)| a.kind == AlertKind::Skew && (judged..judged + 5).contains(t)),
            "seed {seed}: {pages:#?}"
        );
    }
}

#[test]
fn a_weight_change_undone_before_the_balancer_follows_pages_nothing() {
    // The pool file went 9:1 → 5:5 and back within 5 ticks; the balancer
    // never left 9:1.
    for seed in 0..20 {
        let mut d = Detector::default();
        let mut rng = Rng::new(seed);
        for t in 0..250 {
            let declared = if (CHANGE..CHANGE + 5).contains(&t) {
                [5.0, 5.0]
            } else {
                [9.0, 1.0]
            };
            let counts = [rng.neg_binomial(180.0, 1.5), rng.neg_binomial(20.0, 1.5)];
            let (_, tr) = d.evaluate(&input(t, &counts, &declared));
            assert!(
                !tr.iter().any(|x| matches!(x, Transition::Fired(_))),
                "seed {seed}, tick {t}: {tr:#?}"
            );
        }
    }
}

#[test]
fn while_a_weight_change_pends_the_pool_is_still_judged() {
    // A member goes dark 10 ticks after the change, which the balancer has
    // not followed yet: ZERO within seconds, not after the grace.
    for seed in 0..20 {
        let change = Change {
            from: &[1.0, 1.0, 1.0, 1.0],
            to: &[3.0, 1.0, 1.0, 1.0],
            rate: 200.0,
            applied: None,
            dark: Some((2, CHANGE + 10)),
        };
        let (pages, _) = change.run(seed, CHANGE + 20);
        let zero = pages
            .iter()
            .find(|(_, a)| a.kind == AlertKind::Zero)
            .unwrap_or_else(|| panic!("seed {seed}: {pages:#?}"));
        assert!(zero.0 <= CHANGE + 14, "seed {seed}: {zero:#?}");
        assert_eq!(zero.1.member, "10.0.0.3:8080");
    }
}

/// Pages fired running `declared(t)` against a balancer splitting by
/// `split(t)` at `rate` new connections a tick.
fn pages_of(
    seed: u64,
    ticks: u64,
    rate: f64,
    declared: impl Fn(u64) -> Vec<f64>,
    split: impl Fn(u64) -> Vec<f64>,
) -> Vec<(u64, Alert)> {
    let mut d = Detector::default();
    let mut rng = Rng::new(seed);
    let mut pages = Vec::new();
    for t in 0..ticks {
        let s = split(t);
        let total: f64 = s.iter().sum();
        let counts: Vec<u64> = (s.iter())
            .map(|w| match *w > 0.0 {
                true => rng.neg_binomial(rate * w / total, 1.5),
                false => 0,
            })
            .collect();
        let (_, tr) = d.evaluate(&input(t, &counts, &declared(t)));
        pages.extend(super::tests::fired_pages(t, tr));
    }
    pages
}

#[test]
fn a_member_taken_out_while_its_change_pends_is_out() {
    // 9 → 5 read at 120 (the balancer still at 9), then 0 at 125, which
    // the balancer follows at once: it is out, not judged on its old 9.
    for seed in 0..10 {
        let pages = pages_of(
            seed,
            200,
            200.0,
            |t| match t {
                0..120 => vec![9.0, 1.0, 5.0],
                120..125 => vec![5.0, 1.0, 5.0],
                _ => vec![0.0, 1.0, 5.0],
            },
            |t| match t {
                0..125 => vec![9.0, 1.0, 5.0],
                _ => vec![0.0, 1.0, 5.0],
            },
        );
        assert!(pages.is_empty(), "seed {seed}: {pages:#?}");
    }
}

#[test]
fn each_pending_change_times_out_on_its_own() {
    // A 1 → 4 the balancer never follows, while B's weight is nudged every
    // 20 ticks (and followed at once): A's change still pages SKEW once
    // its own grace ends.
    let grace = Settings::default().join_grace_ticks;
    for seed in 0..10 {
        let b = |t: u64| {
            if t >= 140 && (t / 20) % 2 == 1 {
                1.05
            } else {
                1.0
            }
        };
        let pages = pages_of(
            seed,
            250,
            400.0,
            |t| match t {
                0..120 => vec![1.0; 4],
                _ => vec![4.0, b(t), 1.0, 1.0],
            },
            |t| vec![1.0, b(t), 1.0, 1.0],
        );
        let first = pages
            .first()
            .unwrap_or_else(|| panic!("seed {seed}: no page"));
        assert_eq!(first.1.kind, AlertKind::Skew, "{first:#?}");
        assert!(
            (CHANGE + grace..CHANGE + grace + 5).contains(&first.0),
            "seed {seed}: {first:#?}"
        );
    }
}

#[test]
fn a_member_drained_in_the_edit_that_changes_its_weight_pends_nothing() {
    // One pool file edit: member 2 drains and its weight goes 3 → 5.
    let mut d = Detector::default();
    let mut rng = Rng::new(3);
    for t in 0..80u64 {
        let weights = if t < 40 {
            [1.0, 1.0, 3.0]
        } else {
            [1.0, 1.0, 5.0]
        };
        let counts = if t < 40 {
            [40, 40, 120].map(|n| rng.neg_binomial(n as f64, 1.5))
        } else {
            [100, 100, 0].map(|n| rng.neg_binomial(n as f64, 1.5))
        };
        let mut inp = input(t, &counts, &weights);
        inp.members[2].draining = t >= 40;
        let (v, _) = d.evaluate(&inp);
        if t >= 42 {
            assert!(
                !v.reason.contains("previous weights"),
                "tick {t}: {}",
                v.reason
            );
            assert_eq!(v.members[2].judged_weight, None, "tick {t}");
        }
    }
}

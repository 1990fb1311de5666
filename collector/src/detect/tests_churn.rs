//! A member set that keeps changing (a rollout replacing Pods one after
//! another, an autoscaler at work): each change settles the pool, and the
//! findings it settles must still come out while it goes on.

use super::*;
use crate::detect::{sim::Rng, tests::input};

/// 300 ticks of ten members at ten new connections a tick each, member 0
/// getting none from tick 60, while an eleventh member comes and goes
/// every `every` ticks from tick 40 (it joins each time it comes). The
/// ticks at which member 0's ZERO paged.
fn zero_pages_under_churn(seed: u64, every: u64, dead: bool) -> (Vec<u64>, Vec<(u64, Alert)>) {
    let mut rng = Rng::new(seed);
    let mut d = Detector::default();
    let (mut zero, mut pages) = (Vec::new(), Vec::new());
    for t in 0..300 {
        let present = t < 40 || (t / every).is_multiple_of(2);
        let members = if present { 11 } else { 10 };
        let counts: Vec<u64> = (0..members)
            .map(|i| match (i, dead && t >= 60) {
                (0, true) => 0,
                _ => rng.poisson(10.0),
            })
            .collect();
        let (_, tr) = d.evaluate(&input(t, &counts, &vec![1.0; members]));
        for x in tr {
            if let Transition::Fired(a) = x
                && a.severity == Severity::Page
            {
                if a.kind == AlertKind::Zero && a.member == "10.0.0.1:8080" {
                    zero.push(t);
                }
                pages.push((t, a));
            }
        }
    }
    (zero, pages)
}

#[test]
fn a_dead_member_pages_zero_while_the_set_changes_every_tick_or_two() {
    for every in [1, 2, 3, 5] {
        for seed in 1..=5 {
            let (zero, pages) = zero_pages_under_churn(seed, every, true);
            assert!(
                zero.first().is_some_and(|&t| t < 80),
                "member set changing every {every} ticks, seed {seed}: member 0's ZERO paged at {zero:?}; pages: {pages:?}"
            );
        }
    }
}

#[test]
fn a_set_changing_every_tick_or_two_pages_nothing_by_itself() {
    for every in [1, 2, 3, 5] {
        for seed in 1..=20 {
            let (_, pages) = zero_pages_under_churn(seed, every, false);
            assert!(
                pages.is_empty(),
                "member set changing every {every} ticks, seed {seed}: {pages:?}"
            );
        }
    }
}

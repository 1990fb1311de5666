//! A member set that keeps changing (a rollout replacing Pods one after
//! another, an autoscaler at work): each change settles the pool, and the
//! findings it settles must still come out while it goes on.

use super::*;
use crate::detect::{sim::Rng, tests::input};

/// The member that may die: one of those the rollout does not replace.
const STAYS: &str = "10.0.0.1:8080";

/// One Pod of the rollout.
struct Pod {
    id: String,
    /// Its balancers send to it from this tick.
    taken_at: u64,
    /// Terminating since this tick: out of the set for the drain grace,
    /// then back as draining, then gone.
    terminating: Option<u64>,
}

/// A Kubernetes rollout, as the collector sees it: five Pods stay, the
/// other five are replaced, oldest first, one every `every` ticks from
/// tick 40.
/// A replaced Pod leaves the set at once (kube-proxy stops sending to
/// it), is back as draining once the drain grace (10 ticks) has passed,
/// and leaves for good 5 ticks later; its successor is in the set at once
/// and taken in by its balancers 1 to 3 ticks later. Ten new connections
/// a tick each; the LB view counts half of them. Member [`STAYS`] gets
/// none from tick 60 when `dead`. Every page over 300 ticks.
fn rollout(seed: u64, every: u64, dead: bool) -> Vec<(u64, Alert)> {
    let mut rng = Rng::new(seed);
    let mut d = Detector::default();
    let mut pods: Vec<Pod> = (0..10)
        .map(|i| Pod {
            id: format!("10.0.0.{}:8080", i + 1),
            taken_at: 0,
            terminating: None,
        })
        .collect();
    let mut pages = Vec::new();
    for t in 0..300u64 {
        if t >= 40 && (t - 40).is_multiple_of(every) {
            let n = (t - 40) / every;
            // The oldest of the Pods replaced, after the five that stay.
            let old = (pods.iter_mut()).filter(|p| p.terminating.is_none()).nth(5);
            if let Some(old) = old {
                old.terminating = Some(t);
            }
            pods.push(Pod {
                id: format!("10.1.{}.{}:8080", n / 250, n % 250 + 1),
                taken_at: t + 1 + rng.next_u64() % 3,
                terminating: None,
            });
        }
        pods.retain(|p| p.terminating.is_none_or(|at| t < at + 15));
        let listed: Vec<&Pod> = (pods.iter())
            .filter(|p| p.terminating.is_none_or(|at| t >= at + 10))
            .collect();
        let counts: Vec<u64> = (listed.iter())
            .map(|p| {
                let sent = t >= p.taken_at && p.terminating.is_none();
                let alive = !(dead && t >= 60 && p.id == STAYS);
                if sent && alive { rng.poisson(10.0) } else { 0 }
            })
            .collect();
        let mut inp = input(t, &counts, &vec![1.0; listed.len()]);
        for (m, p) in inp.members.iter_mut().zip(&listed) {
            m.id = p.id.clone();
            m.draining = p.terminating.is_some();
            m.lb = m.server.map(|server| ViewInput {
                new_conns: (0..server.new_conns).filter(|_| rng.f64() < 0.5).count() as u64,
                ..server
            });
        }
        let (_, tr) = d.evaluate(&inp);
        pages.extend(super::tests::fired_pages(t, tr));
    }
    pages
}

#[test]
fn a_dead_member_pages_zero_in_a_rollout_that_changes_the_set_every_tick_or_two() {
    for every in [1, 2, 3, 5] {
        for seed in 1..=5 {
            let pages = rollout(seed, every, true);
            let zero = pages
                .iter()
                .find(|(_, a)| a.member == STAYS && a.kind == AlertKind::Zero);
            assert!(
                zero.is_some_and(|&(t, _)| t < 75),
                "a Pod replaced every {every} ticks, seed {seed}: {STAYS}'s ZERO paged at {:?}; pages: {pages:?}",
                zero.map(|(t, _)| t)
            );
        }
    }
}

#[test]
fn a_rollout_that_changes_the_set_every_tick_or_two_pages_nothing_by_itself() {
    for every in [1, 2, 3, 5] {
        for seed in 1..=20 {
            let pages = rollout(seed, every, false);
            assert!(
                pages.is_empty(),
                "a Pod replaced every {every} ticks, seed {seed}: {pages:?}"
            );
        }
    }
}

//! Members joining a pool. A balancer takes a new member into its rotation
//! at its own moment: kube-proxy at its next sync (seconds on a large
//! cluster), a gRPC client when it next resolves DNS, HAProxy after `rise`
//! good checks, a slow start over its window. The collector learns of the
//! member sooner (an EndpointSlice watch, the pool file), so judging it
//! from the first tick paged ZERO on the new member (and SKEW or
//! CONCENTRATION on the old ones, which still took everything) on every
//! scale-up whose balancer took more than a few seconds.
//!
//! So a joining member is not expected to take a share, nor counted in
//! its pool's split, until its balancer has picked it up or
//! `join_grace_ticks` have passed, whichever comes first. Picked up means
//! that in one view, over its last [`PICKUP_TICKS`] ticks, it has taken at
//! least `warn_low` (0.7) of the new connections its share would have
//! brought, and at least [`PICKUP_MIN`]: a health check or a kubelet probe
//! alone is not a pick-up, a member half the balancers have taken in (each
//! node's kube-proxy syncs at its own moment) is not yet, and a slow start
//! is as its ramp passes 70 %. Its share is of the members judged
//! for one; when there are none (the whole pool replaced at once), of the
//! members joining with it. A
//! balancer that never picks the member up is still found: ZERO (or the
//! pool's CONCENTRATION) once the grace has passed. Its open connections
//! are judged from then too: a pool that doubled holds every open
//! connection on its old half meanwhile, which is no fault of theirs.

use std::collections::{HashMap, HashSet};

use super::pool::View;

/// New connections a joining member must take in a view to be picked up,
/// whatever its share: the [`super::pool`] silence bound, so a member at a
/// trickle is not picked up by a probe.
const PICKUP_MIN: f64 = 5.0;

/// The ticks over which a joining member's take is measured: enough to
/// steady a few connections a tick, few enough to follow a balancer that
/// takes it in late.
const PICKUP_TICKS: usize = 3;

/// A member joining its pool, from the tick it joined.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Join {
    /// The tick it joined.
    pub since: u64,
    /// New connections it took on each of its last ticks, per view
    /// (server, LB), at `tick % PICKUP_TICKS`.
    taken: [[u64; PICKUP_TICKS]; 2],
    /// New connections its share would have brought on those ticks.
    would: [[f64; PICKUP_TICKS]; 2],
}

impl Join {
    /// New connections taken and expected in view `v` over the last ticks.
    fn take(&self, v: usize) -> (f64, f64) {
        (
            self.taken[v].iter().sum::<u64>() as f64,
            self.would[v].iter().sum(),
        )
    }

    /// Its balancer has picked it up (at least `low` of its share), as
    /// seen in one view or the other.
    fn picked_up(&self, low: f64) -> bool {
        (0..2).any(|v| {
            let (taken, would) = self.take(v);
            taken >= PICKUP_MIN.max(would * low)
        })
    }

    /// Why it is not judged yet, at tick `now`.
    pub fn reason(&self, now: u64, grace: u64) -> String {
        let ((t0, w0), (t1, w1)) = (self.take(0), self.take(1));
        let (taken, would) = if w1 > w0 { (t1, w1) } else { (t0, w0) };
        let taking = if taken > 0.0 && would > 0.0 {
            format!("; it takes {:.0}% of its share", 100.0 * taken / would)
        } else {
            "; its balancer sends it nothing yet".to_owned()
        };
        format!(
            "joined the pool {} ticks ago: judged on its share once its balancer takes it in, or after {grace} ticks{taking}",
            now.saturating_sub(self.since),
        )
    }
}

/// The members of one pool that are joining.
#[derive(Debug, Default)]
pub(super) struct Joins {
    members: HashMap<String, Join>,
}

/// One view's tick, as a joining member's pick-up sees it.
pub(super) struct ViewTick {
    pub view: View,
    /// New connections to the members judged for a share.
    pub new_conns: f64,
    /// Those members' weights summed.
    pub weight_sum: f64,
    /// The pool's long-run new connections a tick, in this view.
    pub long_rate: f64,
}

impl Joins {
    /// Member `id` joins at `tick` (with no grace, it is judged at once).
    pub fn start(&mut self, id: &str, tick: u64, grace: u64) {
        if grace > 0 {
            self.members.insert(
                id.to_owned(),
                Join {
                    since: tick,
                    ..Join::default()
                },
            );
        }
    }

    /// Member `id`, while it joins.
    pub fn get(&self, id: &str) -> Option<&Join> {
        self.members.get(id)
    }

    /// Forgets members that left the pool.
    pub fn retain(&mut self, ids: &HashSet<&str>) {
        self.members.retain(|id, _| ids.contains(id.as_str()));
    }

    /// Adds one view's tick `now` to member `id`'s pick-up: `taken` new
    /// connections (fresh counts only), against its `weight`'s share of
    /// what the judged members took.
    pub fn note(&mut self, id: &str, weight: f64, taken: Option<u64>, tick: &ViewTick, now: u64) {
        let Some(join) = self.members.get_mut(id) else {
            return;
        };
        let v = match tick.view {
            View::Server => 0,
            View::Lb => 1,
        };
        let slot = (now % PICKUP_TICKS as u64) as usize;
        join.taken[v][slot] = taken.unwrap_or(0);
        join.would[v][slot] = match tick.weight_sum > 0.0 {
            true => tick.new_conns * weight / tick.weight_sum,
            false => 0.0,
        };
    }

    /// Ends every join: the pool opens too few new connections for its
    /// split to be judged, so there is nothing to wait for, and its
    /// members' open connections are judged at once.
    pub fn clear(&mut self) {
        self.members.clear();
    }

    /// After tick `now`: members picked up (at least `low` of their
    /// share), or joining for `grace` ticks, are judged from the next tick.
    pub fn end(&mut self, now: u64, grace: u64, low: f64) {
        self.members.retain(|_, join| {
            !join.picked_up(low) && now.saturating_add(1) < join.since.saturating_add(grace)
        });
    }
}

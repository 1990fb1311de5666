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
//! that in one view, over the ticks since it last took none, it has taken
//! at least half the new connections its share would have brought, and at
//! least [`PICKUP_MIN`]: a health check or a kubelet probe alone is not a
//! pick-up, and a slow start ends as its ramp reaches full weight. A
//! balancer that never picks the member up is still found: ZERO (or the
//! pool's CONCENTRATION) once the grace has passed.

use std::collections::{HashMap, HashSet};

use super::pool::View;

/// New connections a joining member must take in a view to be picked up,
/// whatever its share: the [`super::pool`] silence bound, so a member at a
/// trickle is not picked up by a probe.
const PICKUP_MIN: f64 = 5.0;

/// A member joining its pool, from the tick it joined.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Join {
    /// The tick it joined.
    pub since: u64,
    /// New connections it took since the last tick it took none, per
    /// view (server, LB).
    taken: [u64; 2],
    /// New connections its share would have brought over those ticks.
    would: [f64; 2],
}

impl Join {
    /// Its balancer has picked it up, as seen in one view or the other.
    fn picked_up(&self) -> bool {
        (0..2).any(|v| self.taken[v] as f64 >= PICKUP_MIN.max(self.would[v] / 2.0))
    }

    /// Why it is not judged yet, at tick `now`.
    pub fn reason(&self, now: u64, grace: u64) -> String {
        let v = usize::from(self.would[1] > self.would[0]);
        let taking = if self.would[v] > 0.0 {
            format!(
                "; it takes {:.0}% of its share",
                100.0 * self.taken[v] as f64 / self.would[v]
            )
        } else {
            "; its balancer sends it nothing yet".to_owned()
        };
        format!(
            "joined the pool {} ticks ago: judged on its share once its balancer takes it in (half its share), or after {grace} ticks{taking}",
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

    /// Adds one view's tick to member `id`'s pick-up: `taken` new
    /// connections (fresh counts only), against its `weight`'s share of
    /// what the judged members took. A tick it took none starts the count
    /// again: a balancer that takes it in late is not held to the ticks
    /// before.
    pub fn note(&mut self, id: &str, weight: f64, taken: Option<u64>, tick: &ViewTick) {
        let Some(join) = self.members.get_mut(id) else {
            return;
        };
        let v = match tick.view {
            View::Server => 0,
            View::Lb => 1,
        };
        match taken {
            Some(n) if n > 0 && tick.weight_sum > 0.0 => {
                join.taken[v] += n;
                join.would[v] += tick.new_conns * weight / tick.weight_sum;
            }
            _ => (join.taken[v], join.would[v]) = (0, 0.0),
        }
    }

    /// After tick `now`: members picked up, or joining for `grace` ticks,
    /// are judged from the next tick.
    pub fn end(&mut self, now: u64, grace: u64) {
        self.members
            .retain(|_, join| !join.picked_up() && now + 1 < join.since + grace);
    }
}

//! A member's weight changed (the pool file read again). The balancer
//! applies the new weight at its own moment: its config reloaded before the
//! pool file, or after. Judged against the new weights from the tick the
//! collector read them, a 9:1 pool moved to 5:5 paged SKEW whenever its
//! balancer was three seconds later.
//!
//! So the pool is judged against the weights its balancer still follows
//! until its split fits the new ones better, or `join_grace_ticks` pass.
//! "Fits better" is a CUSUM of each tick's log-likelihood ratio of the new
//! connections under the new shares against the old, divided by the pool's
//! dispersion, crossing [`SWITCH`]: traffic still split the old way keeps
//! it at zero, and the first tick or two of the new split cross it. A
//! balancer that never applies the change is found once the grace ends,
//! as SKEW.

use std::collections::{HashMap, HashSet};

/// Evidence (nats) that the balancer follows the new weights at which the
/// pool is judged against them: the old split is then e¹⁰ times less
/// likely.
const SWITCH: f64 = 10.0;

/// The members of one pool whose weight changed and whose balancer is not
/// yet seen to follow the change.
#[derive(Debug, Default)]
pub(super) struct Reweights {
    /// Each such member's weight the balancer still follows, and the tick
    /// its change was read (each times out on its own).
    before: HashMap<String, (f64, u64)>,
    /// Evidence that the balancer follows the new weights, since the last
    /// change.
    cusum: f64,
}

/// One member's part in a tick: id, declared weight, new connections.
pub(super) type Count<'a> = (&'a str, f64, u64);

impl Reweights {
    /// Member `id`'s weight changed from `old` to `new` (both above zero)
    /// at `tick`; with no grace, the new one stands at once.
    pub fn change(&mut self, id: &str, (old, new): (f64, f64), tick: u64, grace: u64) {
        if grace == 0 {
            return;
        }
        match self.before.get(id) {
            // Changed back before the balancer followed: nothing pends.
            Some(&(followed, _)) if followed == new => {
                self.before.remove(id);
            }
            // Changed again: the balancer still follows the first weight.
            Some(&(followed, _)) => {
                self.before.insert(id.to_owned(), (followed, tick));
                self.cusum = 0.0;
            }
            None => {
                self.before.insert(id.to_owned(), (old, tick));
                self.cusum = 0.0;
            }
        }
    }

    /// Member `id` no longer takes a share (its weight went to 0, or it
    /// drains): no change of it pends.
    pub fn forget(&mut self, id: &str) {
        self.before.remove(id);
    }

    pub fn is_empty(&self) -> bool {
        self.before.is_empty()
    }

    /// How many members' changes pend.
    pub fn len(&self) -> usize {
        self.before.len()
    }

    /// Forgets members that left the pool.
    pub fn retain(&mut self, ids: &HashSet<&str>) {
        self.before.retain(|id, _| ids.contains(id.as_str()));
    }

    /// The weight member `id` is judged against: `declared`, unless its
    /// change pends (a member declared out, weight 0, is out).
    pub fn weight(&self, id: &str, declared: f64) -> f64 {
        match self.before.get(id) {
            Some(&(followed, _)) if declared > 0.0 => followed,
            _ => declared,
        }
    }

    /// Adds tick `now`'s evidence, from one view's `counts` of the members
    /// eligible for a share and its dispersion `phi`. True when the
    /// balancer is taken to follow the declared weights from this tick on
    /// (its split fits them), or some of them (their change read `grace`
    /// ticks ago): the pool settles.
    pub fn follow(&mut self, now: u64, grace: u64, phi: f64, counts: &[Count]) -> bool {
        if self.before.is_empty() {
            return false;
        }
        self.cusum = (self.cusum + self.log_ratio(counts) / phi.max(1.0)).max(0.0);
        if self.cusum >= SWITCH {
            self.before.clear();
            self.cusum = 0.0;
            return true;
        }
        let pending = self.before.len();
        (self.before).retain(|_, &mut (_, since)| now < since.saturating_add(grace));
        self.before.len() < pending
    }

    /// The log-likelihood ratio of `counts` split by the declared weights
    /// against the weights followed before (multinomial, given the total).
    fn log_ratio(&self, counts: &[Count]) -> f64 {
        let (old_sum, new_sum) = counts.iter().fold((0.0, 0.0), |(o, n), &(id, w, _)| {
            (o + self.weight(id, w), n + w)
        });
        if old_sum <= 0.0 || new_sum <= 0.0 {
            return 0.0;
        }
        counts
            .iter()
            .filter(|&&(_, _, c)| c > 0)
            .map(|&(id, w, c)| {
                let (p_old, p_new) = (self.weight(id, w) / old_sum, w / new_sum);
                c as f64 * (p_new / p_old).ln()
            })
            .sum()
    }
}

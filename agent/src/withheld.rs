//! Retired endpoints the collector has not caught up with yet.
//!
//! The collector turns each endpoint's cumulative totals into traffic. It
//! learns that an endpoint was retired from a report that leaves it out:
//! it forgets the endpoint, and takes all of it as new traffic if it comes
//! back. But it does not get every report: during an outage the agent
//! keeps a bounded number, and sends the newest snapshot, not every one
//! it missed, once it reconnects. Were the report without the endpoint
//! lost and the endpoint back meanwhile, counted from zero, the collector
//! would take the new totals for the old ones: fewer reads as a reset,
//! its traffic not counted; more as only the difference. So the reports
//! hold a retired endpoint as the collector last knew it until the
//! collector has acknowledged what lets it go:
//!
//! 1. **frozen**: listed with the totals it retired with, until the
//!    collector acknowledges a report carrying them (what it counted
//!    during an outage may not have reached it);
//! 2. **absent**: left out, even while the kernel counts it again, until
//!    the collector acknowledges a report without it;
//! 3. **listed** as the kernel counts it, from zero, and forgotten once
//!    the collector acknowledges a report listing it.
//!
//! An endpoint retired again before that (it came back and went idle
//! again within one outage) keeps its place: what it counted since is
//! kept with the hold and reported, frozen, once the collector saw the
//! endpoint leave; a third time adds to it (to the collector each is new
//! traffic). Frozen endpoints are bounded: past the bound the oldest goes
//! straight to absent, and what the collector had not seen of it is lost,
//! and logged.
//!
//! Only the reports to the collector are held: the node's own view
//! (gRPC, `/metrics`) shows the kernel's counters as they are, where a
//! counter that restarts is what Prometheus expects.

use std::collections::BTreeMap;

use evenflow_proto::v1;
use tracing::warn;

/// An endpoint as the reports name it: address, port, direction, protocol.
type Id = (String, u32, i32, i32);

fn id(e: &v1::Endpoint) -> Id {
    (e.address.clone(), e.port, e.direction, e.protocol)
}

/// Endpoints retired at one snapshot, as that snapshot would have listed
/// them, each with the reads its totals had stood still for.
#[derive(Debug)]
pub struct Retirement {
    pub snapshot: u64,
    pub endpoints: Vec<(v1::Endpoint, u64)>,
}

#[derive(Debug)]
enum Hold {
    /// Listed with `endpoint`'s totals; the collector has them once it
    /// acknowledged snapshot `since`. `then`: a later incarnation's,
    /// retired while this one was held.
    Frozen {
        /// Boxed: an endpoint is large, and most holds are `Listed`.
        endpoint: Box<v1::Endpoint>,
        since: u64,
        then: Option<v1::Endpoint>,
    },
    /// Left out of every report from snapshot `from` on.
    Absent {
        from: u64,
        then: Option<v1::Endpoint>,
    },
    /// Listed as the kernel counts it from snapshot `from` on.
    Listed { from: u64 },
}

/// The held endpoints, by name (in the order reports list frozen ones).
#[derive(Debug)]
pub struct Withheld {
    holds: BTreeMap<Id, Hold>,
    /// At most this many frozen at once.
    max_frozen: usize,
    /// At most this many held at all: absent and listed holds end only
    /// when the collector acknowledges, so a long outage on a node that
    /// retires many different endpoints would grow them without end.
    max_holds: usize,
}

impl Withheld {
    /// Holds that keep at most `max_frozen` endpoints frozen: reports
    /// list them beside the live ones, and the collector refuses a report
    /// past its limit.
    pub fn new(max_frozen: usize) -> Self {
        Self {
            holds: BTreeMap::new(),
            max_frozen,
            max_holds: max_frozen.saturating_mul(4).max(1024),
        }
    }

    /// Holds the endpoints of `r`.
    pub fn retire(&mut self, r: Retirement) {
        for (mut endpoint, quiet_reads) in r.endpoints {
            endpoint.rates = None;
            let since = r.snapshot.saturating_sub(quiet_reads);
            let id = id(&endpoint);
            let Some(hold) = self.holds.get_mut(&id) else {
                let then = None;
                self.holds.insert(
                    id,
                    Hold::Frozen {
                        endpoint: Box::new(endpoint),
                        since,
                        then,
                    },
                );
                continue;
            };
            match hold {
                // Its totals reached the collector no earlier than the
                // first report listing them.
                Hold::Listed { from } => {
                    let since = since.max(*from);
                    let then = None;
                    *hold = Hold::Frozen {
                        endpoint: Box::new(endpoint),
                        since,
                        then,
                    };
                }
                Hold::Frozen { then, .. } | Hold::Absent { then, .. } => {
                    *then = Some(match then.take() {
                        None => endpoint,
                        Some(earlier) => added(earlier, &endpoint),
                    });
                }
            }
        }
    }

    /// Lets go of what the collector caught up with, `acked` being the
    /// newest snapshot it applied and `this` the one being reported.
    pub fn advance(&mut self, acked: u64, this: u64) {
        self.holds.retain(|_, hold| {
            *hold = match std::mem::replace(hold, Hold::Listed { from: 0 }) {
                Hold::Frozen { since, then, .. } if acked >= since => {
                    Hold::Absent { from: this, then }
                }
                Hold::Absent {
                    from,
                    then: Some(endpoint),
                } if acked >= from => Hold::Frozen {
                    endpoint: Box::new(endpoint),
                    since: this,
                    then: None,
                },
                Hold::Absent { from, then: None } if acked >= from => Hold::Listed { from: this },
                Hold::Listed { from } if acked >= from => return false,
                unchanged => unchanged,
            };
            true
        });
        self.bound(this);
        self.bound_all();
    }

    /// Keeps at most `max_holds` held: listed holds go first (the
    /// endpoint is listed either way), then the absent ones the collector
    /// waits longest for (listed again, counted from zero: the collector
    /// may take that for a counter that went back and miss it until its
    /// next report).
    fn bound_all(&mut self) {
        let Some(over) = (self.holds.len().checked_sub(self.max_holds)).filter(|&n| n > 0) else {
            return;
        };
        let mut oldest: Vec<(bool, u64, Id)> = (self.holds.iter())
            .filter_map(|(id, h)| match h {
                Hold::Listed { from } => Some((false, *from, id.clone())),
                Hold::Absent { from, .. } => Some((true, *from, id.clone())),
                Hold::Frozen { .. } => None,
            })
            .collect();
        oldest.sort_unstable();
        let mut absent = 0;
        for (was_absent, _, id) in oldest.into_iter().take(over) {
            absent += usize::from(was_absent);
            self.holds.remove(&id);
        }
        if absent > 0 {
            warn!(
                absent,
                max = self.max_holds,
                "too many retired endpoints wait for an unreachable collector: these are listed again before it saw them go"
            );
        }
    }

    /// Keeps at most `max_frozen` frozen: the ones the collector waits
    /// longest for go absent from snapshot `this` on.
    fn bound(&mut self, this: u64) {
        let frozen = |h: &Hold| matches!(h, Hold::Frozen { .. });
        let over = self.holds.values().filter(|h| frozen(h)).count();
        let Some(over) = over.checked_sub(self.max_frozen).filter(|&n| n > 0) else {
            return;
        };
        let mut oldest: Vec<(u64, Id)> = self
            .holds
            .iter()
            .filter_map(|(id, h)| match h {
                Hold::Frozen { since, .. } => Some((*since, id.clone())),
                _ => None,
            })
            .collect();
        oldest.sort_unstable();
        for (since, id) in oldest.into_iter().take(over) {
            warn!(
                endpoint = ?id,
                since,
                max = self.max_frozen,
                "too many retired endpoints wait for an unreachable collector: this one's last \
                 totals are no longer reported, and what the collector had not seen of it is lost"
            );
            if let Some(hold) = self.holds.get_mut(&id)
                && let Hold::Frozen { then, .. } = hold
            {
                let then = then.take();
                *hold = Hold::Absent { from: this, then };
            }
        }
    }

    /// How many endpoints are held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.holds.len()
    }

    /// The endpoints a report lists of `endpoints` (a snapshot's): the
    /// held ones as they are held.
    pub fn apply(&self, endpoints: &[v1::Endpoint]) -> Vec<v1::Endpoint> {
        let shown = |e: &&v1::Endpoint| {
            self.holds.is_empty()
                || matches!(self.holds.get(&id(e)), None | Some(Hold::Listed { .. }))
        };
        let frozen = self.holds.values().filter_map(|hold| match hold {
            Hold::Frozen { endpoint, .. } => Some(endpoint.as_ref()),
            _ => None,
        });
        endpoints
            .iter()
            .filter(shown)
            .chain(frozen)
            .cloned()
            .collect()
    }
}

/// `a` with `b`'s totals added: two incarnations the collector counts as
/// new traffic alike.
fn added(mut a: v1::Endpoint, b: &v1::Endpoint) -> v1::Endpoint {
    let (mut t, u) = (a.totals.unwrap_or_default(), b.totals.unwrap_or_default());
    t.conns_opened = t.conns_opened.saturating_add(u.conns_opened);
    t.conns_closed = t.conns_closed.saturating_add(u.conns_closed);
    t.bytes_rx = t.bytes_rx.saturating_add(u.bytes_rx);
    t.bytes_tx = t.bytes_tx.saturating_add(u.bytes_tx);
    t.packets_rx = t.packets_rx.saturating_add(u.packets_rx);
    t.packets_tx = t.packets_tx.saturating_add(u.packets_tx);
    t.conns_failed = t.conns_failed.saturating_add(u.conns_failed);
    t.conns_unanswered = t.conns_unanswered.saturating_add(u.conns_unanswered);
    t.conns_failed_unanswered = Some(
        (t.conns_failed_unanswered.unwrap_or(0))
            .saturating_add(u.conns_failed_unanswered.unwrap_or(0)),
    );
    a.totals = Some(t);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(port: u32, opened: u64) -> v1::Endpoint {
        v1::Endpoint {
            address: "10.0.0.1".into(),
            port,
            direction: v1::Direction::SendsTo as i32,
            totals: Some(v1::Counters {
                conns_opened: opened,
                conns_closed: opened,
                ..Default::default()
            }),
            rates: Some(v1::Rates::default()),
            ..Default::default()
        }
    }

    /// Each listed endpoint's port and connections.
    fn listed(w: &Withheld, snapshot: &[v1::Endpoint]) -> Vec<(u32, u64)> {
        let mut l: Vec<_> = w
            .apply(snapshot)
            .iter()
            .map(|e| (e.port, e.totals.map_or(0, |t| t.conns_opened)))
            .collect();
        l.sort_unstable();
        l
    }

    fn retire(w: &mut Withheld, snapshot: u64, port: u32, opened: u64, quiet_reads: u64) {
        w.retire(Retirement {
            snapshot,
            endpoints: vec![(endpoint(port, opened), quiet_reads)],
        });
    }

    #[test]
    fn holds_are_bounded_through_a_long_outage() {
        // One frozen at most, so each retirement pushes an older one to
        // absent; the collector never answers.
        let mut w = Withheld::new(1);
        for snapshot in 1..=3000u64 {
            retire(&mut w, snapshot, snapshot as u32, 1, 0);
            w.advance(0, snapshot);
        }
        assert_eq!(w.len(), 1024);
        // The newest are the ones kept.
        let kept = listed(&w, &[]);
        assert_eq!(kept, [(3000, 1)], "the newest stays frozen");
    }

    /// Port 80 retired at snapshot 10 with 5 connections, its totals
    /// standing still since snapshot 7.
    fn retired() -> Withheld {
        let mut w = Withheld::new(16);
        retire(&mut w, 10, 80, 5, 3);
        w
    }

    #[test]
    fn a_retired_endpoint_the_collector_knew_idle_leaves_the_next_report() {
        let mut w = retired();
        // Back in the kernel at once, at 1.
        let back = [endpoint(80, 1), endpoint(81, 1)];
        w.advance(9, 10);
        assert_eq!(listed(&w, &back), vec![(81, 1)], "absent from 10");
        w.advance(10, 11);
        assert_eq!(listed(&w, &back), vec![(80, 1), (81, 1)], "listed from 11");
        assert_eq!(w.len(), 1, "until 11 is acknowledged");
        w.advance(11, 12);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn totals_the_collector_may_not_have_stay_reported_until_it_acknowledges_them() {
        let mut w = retired();
        w.advance(6, 10);
        assert_eq!(
            listed(&w, &[endpoint(81, 1)]),
            vec![(80, 5), (81, 1)],
            "frozen at 5"
        );
        // It comes back: the kernel counts it from zero, the collector
        // still knows 5.
        let back = [endpoint(80, 2), endpoint(81, 1)];
        w.advance(6, 11);
        assert_eq!(listed(&w, &back), vec![(80, 5), (81, 1)], "still frozen");
        w.advance(7, 12);
        assert_eq!(listed(&w, &back), vec![(81, 1)], "absent from 12 on");
        w.advance(11, 13);
        assert_eq!(listed(&w, &back), vec![(81, 1)], "until 12 is acknowledged");
        w.advance(12, 14);
        assert_eq!(
            listed(&w, &back),
            vec![(80, 2), (81, 1)],
            "listed: from zero"
        );
        w.advance(14, 15);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn an_endpoint_retired_again_while_held_is_reported_after_it_was_seen_to_leave() {
        let mut w = retired();
        w.advance(9, 10);
        // Back at 2 during the outage, idle again, retired at 20; then
        // back once more at 1 and retired at 30.
        retire(&mut w, 20, 80, 2, 4);
        retire(&mut w, 30, 80, 1, 4);
        let back = [endpoint(80, 7)];
        w.advance(9, 31);
        assert_eq!(listed(&w, &back), vec![], "absent");
        w.advance(10, 32);
        assert_eq!(listed(&w, &back), vec![(80, 3)], "both later ones, frozen");
        w.advance(31, 33);
        assert_eq!(listed(&w, &back), vec![(80, 3)], "until 32 is acknowledged");
        w.advance(32, 34);
        assert_eq!(listed(&w, &back), vec![], "absent again");
        w.advance(34, 35);
        assert_eq!(
            listed(&w, &back),
            vec![(80, 7)],
            "and then as the kernel counts it"
        );
    }

    #[test]
    fn an_endpoint_retired_soon_after_its_release_waits_for_its_listing() {
        let mut w = retired();
        w.advance(9, 10);
        w.advance(10, 11);
        // Listed from 11 at 2, which it had stood at since snapshot 8 (while
        // held out); retired at 12.
        retire(&mut w, 12, 80, 2, 4);
        let back = [endpoint(80, 1)];
        w.advance(10, 12);
        assert_eq!(
            listed(&w, &back),
            vec![(80, 2)],
            "the collector has not seen 2"
        );
        w.advance(11, 13);
        assert_eq!(listed(&w, &back), vec![], "now it has: absent");
    }

    #[test]
    fn frozen_endpoints_are_bounded_oldest_first() {
        let mut w = Withheld::new(2);
        for (port, since) in [(80, 5), (81, 3), (82, 4)] {
            retire(&mut w, 10, port, 1, 10 - since);
        }
        // 81 came back and went idle again while held.
        retire(&mut w, 10, 81, 4, 1);
        w.advance(0, 10);
        let back = [endpoint(81, 7)];
        assert_eq!(listed(&w, &back), vec![(80, 1), (82, 1)], "81 left out");
        w.advance(10, 11);
        assert_eq!(
            listed(&w, &back),
            vec![(81, 4)],
            "80 and 82 acknowledged, so absent; 81's later incarnation frozen"
        );
    }

    #[test]
    fn a_held_endpoint_is_reported_without_rates() {
        let w = retired();
        let held = w.apply(&[]);
        assert_eq!(held.len(), 1);
        assert!(held[0].rates.is_none());
    }
}

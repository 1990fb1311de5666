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
//! 3. **released**: listed as the kernel counts it, from zero.
//!
//! Only the reports to the collector are held: the node's own view
//! (gRPC, `/metrics`) shows the kernel's counters as they are, where a
//! counter that restarts is what Prometheus expects.

use evenflow_proto::v1;

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

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
    /// Listed as it retired; its totals were unchanged since snapshot
    /// `since`.
    Frozen { endpoint: v1::Endpoint, since: u64 },
    /// Left out of every report from snapshot `from` on.
    Absent { from: u64 },
}

/// The held endpoints, by name.
#[derive(Debug, Default)]
pub struct Withheld {
    holds: HashMap<Id, Hold>,
}

impl Withheld {
    /// Holds the endpoints of `r`.
    pub fn retire(&mut self, r: Retirement) {
        for (mut endpoint, quiet_reads) in r.endpoints {
            endpoint.rates = None;
            let since = r.snapshot.saturating_sub(quiet_reads);
            self.holds
                .insert(id(&endpoint), Hold::Frozen { endpoint, since });
        }
    }

    /// Lets go of what the collector caught up with, `acked` being the
    /// newest snapshot it applied and `this` the one being reported.
    pub fn advance(&mut self, acked: u64, this: u64) {
        self.holds.retain(|_, hold| {
            if let Hold::Frozen { since, .. } = hold
                && acked >= *since
            {
                *hold = Hold::Absent { from: this };
            }
            !matches!(hold, Hold::Absent { from } if acked >= *from)
        });
    }

    /// How many endpoints are held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.holds.len()
    }

    /// The endpoints a report lists of `endpoints` (a snapshot's): the
    /// held ones as they are held.
    pub fn apply(&self, endpoints: &[v1::Endpoint]) -> Vec<v1::Endpoint> {
        let free = endpoints
            .iter()
            .filter(|e| self.holds.is_empty() || !self.holds.contains_key(&id(e)));
        let frozen = self.holds.values().filter_map(|hold| match hold {
            Hold::Frozen { endpoint, .. } => Some(endpoint),
            Hold::Absent { .. } => None,
        });
        free.chain(frozen).cloned().collect()
    }
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

    /// Port 80 retired at snapshot 10 with 5 connections, its totals
    /// standing still since snapshot 7.
    fn retired() -> Withheld {
        let mut w = Withheld::default();
        w.retire(Retirement {
            snapshot: 10,
            endpoints: vec![(endpoint(80, 5), 3)],
        });
        w
    }

    #[test]
    fn a_retired_endpoint_the_collector_knew_idle_leaves_the_next_report() {
        let mut w = retired();
        let snapshot = [endpoint(81, 1)];
        w.advance(9, 10);
        assert_eq!(listed(&w, &snapshot), vec![(81, 1)]);
        w.advance(10, 11);
        assert_eq!(
            w.len(),
            0,
            "released once the report without it is acknowledged"
        );
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
            "released: from zero"
        );
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn a_held_endpoint_is_reported_without_rates() {
        let w = retired();
        let held = w.apply(&[]);
        assert_eq!(held.len(), 1);
        assert!(held[0].rates.is_none());
    }
}

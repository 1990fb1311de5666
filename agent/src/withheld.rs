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
//! its traffic not counted; more as only the difference. So a retired
//! endpoint is held as the collector last knew it until the collector has
//! acknowledged what lets it go:
//!
//! 1. **frozen**: listed with the totals it retired with, until the
//!    collector acknowledges a report carrying them (what it counted
//!    during an outage may not have reached it);
//! 2. **absent**: left out, even while the kernel counts it again, until
//!    the collector acknowledges a report without it;
//! 3. **released**: listed as the kernel counts it, from zero.
//!
//! Without a collector every acknowledgement is already there: a retired
//! endpoint leaves the next report at once, as it always did. The node's
//! own view (gRPC, `/metrics`) shows the same snapshots.

use agent_common::EndpointKey;

use crate::table::{Entry, Table, listing_order};

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The newest snapshot sequence the collector acknowledged, when there is
/// no collector: every one.
pub const NO_COLLECTOR: u64 = u64::MAX;

enum Hold {
    /// Listed as it retired; its totals were unchanged since snapshot
    /// `since`.
    Frozen { entry: Entry, since: u64 },
    /// Left out of every snapshot from `from` on.
    Absent { from: u64 },
}

/// The held endpoints, by key.
#[derive(Default)]
pub struct Withheld {
    holds: HashMap<EndpointKey, Hold>,
}

impl Withheld {
    /// Holds the endpoints `retired` while snapshot `this` is built, each
    /// with its last entry (whose `quiet_reads` say since which snapshot
    /// its totals stood still).
    pub fn retire(&mut self, retired: Vec<(EndpointKey, Entry)>, this: u64) {
        for (key, entry) in retired {
            let since = this.saturating_sub(entry.quiet_reads);
            self.holds.insert(key, Hold::Frozen { entry, since });
        }
    }

    /// Lets go of what the collector caught up with, `acked` being the
    /// newest snapshot it acknowledged and `this` the one being built.
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

    /// The endpoints a snapshot lists, in the table's listing order: the
    /// table's, with the held ones as they are held.
    pub fn listing<'a>(&'a self, table: &'a Table) -> Vec<(&'a EndpointKey, &'a Entry)> {
        if self.holds.is_empty() {
            return table.iter().collect();
        }
        let mut listed: Vec<_> = table
            .iter()
            .filter(|(key, _)| !self.holds.contains_key(*key))
            .collect();
        let frozen = self.holds.iter().filter_map(|(key, hold)| match hold {
            Hold::Frozen { entry, .. } => Some((key, entry)),
            Hold::Absent { .. } => None,
        });
        listed.extend(frozen);
        listed.sort_unstable_by_key(|(key, _)| listing_order(key));
        listed
    }
}

#[cfg(test)]
mod tests {
    use agent_common::{Direction, EndpointCounters};

    use super::*;

    fn key(port: u16) -> EndpointKey {
        EndpointKey::tcp(
            agent_common::v4_mapped(u32::from_ne_bytes([10, 0, 0, 1])),
            port,
            Direction::SendsTo,
        )
    }

    fn opened(n: u64) -> EndpointCounters {
        EndpointCounters {
            conns_opened: n,
            conns_closed: n,
            ..Default::default()
        }
    }

    /// What a snapshot lists: each endpoint's port and connections.
    fn listed(w: &Withheld, t: &Table) -> Vec<(u16, u64)> {
        w.listing(t)
            .into_iter()
            .map(|(k, e)| (k.port, e.totals.conns_opened))
            .collect()
    }

    /// A table that read port 80 at `n` connections for `reads` reads and
    /// port 81 at one, and the entry port 80 retires with.
    fn retiring(n: u64, reads: u64) -> (Table, (EndpointKey, Entry)) {
        let mut t = Table::default();
        for _ in 0..reads {
            t.update(&[(key(80), opened(n)), (key(81), opened(1))], 1.0);
        }
        let retired = t.take(&[key(80)]).remove(0);
        (t, retired)
    }

    #[test]
    fn without_a_collector_a_retired_endpoint_leaves_at_once() {
        let (t, retired) = retiring(5, 4);
        let mut w = Withheld::default();
        w.retire(vec![retired], 10);
        w.advance(NO_COLLECTOR, 10);
        assert_eq!(w.len(), 0);
        assert_eq!(listed(&w, &t), vec![(81, 1)]);
    }

    #[test]
    fn totals_the_collector_may_not_have_stay_listed_until_it_acknowledges_them() {
        // Port 80 stood still at 5 since snapshot 7 (reads 1 to 4 of
        // snapshots 7 to 10; the first one saw the change).
        let (mut t, retired) = retiring(5, 4);
        let mut w = Withheld::default();
        w.retire(vec![retired], 10);
        w.advance(6, 10);
        assert_eq!(listed(&w, &t), vec![(80, 5), (81, 1)], "frozen at 5");
        // It comes back: the kernel counts it from zero, the collector
        // still sees 5.
        t.update(&[(key(80), opened(2)), (key(81), opened(1))], 1.0);
        w.advance(6, 11);
        assert_eq!(listed(&w, &t), vec![(80, 5), (81, 1)], "still frozen");
        w.advance(7, 12);
        assert_eq!(listed(&w, &t), vec![(81, 1)], "absent from 12 on");
        w.advance(11, 13);
        assert_eq!(listed(&w, &t), vec![(81, 1)], "until 12 is acknowledged");
        w.advance(12, 14);
        assert_eq!(
            listed(&w, &t),
            vec![(80, 2), (81, 1)],
            "released: from zero"
        );
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn an_endpoint_the_collector_knew_idle_is_absent_at_once() {
        let (t, retired) = retiring(5, 4);
        let mut w = Withheld::default();
        w.retire(vec![retired], 10);
        w.advance(9, 10);
        assert_eq!(listed(&w, &t), vec![(81, 1)]);
        w.advance(10, 11);
        assert_eq!(
            w.len(),
            0,
            "released once the report without it is acknowledged"
        );
    }
}

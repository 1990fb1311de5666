//! The agent's table of endpoints: cumulative totals as the kernel reports
//! them and per-second rates over the last interval.
//!
//! It is updated from a read of the endpoints counted since the last one
//! (see [`crate::changes`]), or from a full read of the kernel map, tens of
//! thousands of endpoints on a busy node. A full read does no hashing and
//! no sorting in the steady state: the kernel walks an unchanged map in the
//! same order every time, so the table remembers where each position of
//! the last read went and only checks that the keys still line up. Entries are kept
//! in the order snapshots list them (direction, address, port), re-sorted
//! only when an endpoint comes or goes. Each endpoint's address is written
//! out once, when it is first seen, not in every snapshot.

use agent_common::{EndpointCounters, EndpointKey};

use crate::snapshot::key_addr;

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Per-second rates of one endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub conns_opened: f64,
    pub conns_closed: f64,
    pub bytes_rx: f64,
    pub bytes_tx: f64,
    pub packets_rx: f64,
    pub packets_tx: f64,
    pub conns_failed: f64,
}

/// One endpoint's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entry {
    pub totals: EndpointCounters,
    pub rates: Rates,
    /// The endpoint's address as people write it (see [`key_addr`]).
    pub address: String,
    /// Reads in a row that found its totals unchanged.
    pub quiet_reads: u64,
}

impl Entry {
    fn new(key: &EndpointKey) -> Self {
        Self {
            address: key_addr(key).to_string(),
            ..Self::default()
        }
    }

    /// Takes the kernel's totals `now` and the rates since the last ones.
    fn advance(&mut self, now: &EndpointCounters, secs: f64) {
        let prev = self.totals;
        let rate = |n: u64, p: u64| match secs > 0.0 {
            true => n.saturating_sub(p) as f64 / secs,
            false => 0.0,
        };
        self.rates = Rates {
            conns_opened: rate(now.conns_opened, prev.conns_opened),
            conns_closed: rate(now.conns_closed, prev.conns_closed),
            bytes_rx: rate(now.bytes_rx, prev.bytes_rx),
            bytes_tx: rate(now.bytes_tx, prev.bytes_tx),
            packets_rx: rate(now.packets_rx, prev.packets_rx),
            packets_tx: rate(now.packets_tx, prev.packets_tx),
            conns_failed: rate(now.conns_failed, prev.conns_failed),
        };
        self.quiet_reads = if *now == prev {
            self.quiet_reads + 1
        } else {
            0
        };
        self.totals = *now;
    }

    /// Whether a connection to or from it is open (or was when it was last
    /// counted): one it opened has not closed.
    pub fn has_open_connections(&self) -> bool {
        self.totals.conns_opened > self.totals.conns_closed
    }
}

/// The order snapshots list endpoints in, so consecutive ones diff cleanly.
fn listing_order(key: &EndpointKey) -> (u8, [u32; 4], u16, u8) {
    (key.direction, key.addr, key.port, key.proto)
}

/// Endpoints seen since the epoch, in listing order.
#[derive(Default)]
pub struct Table {
    entries: Vec<(EndpointKey, Entry)>,
    /// For each position of the last read, the entry it updated.
    read_order: Vec<usize>,
    /// Endpoints dropped because the kernel map no longer has them and
    /// the agent did not retire them (something outside evenflow edited
    /// its pinned map); their counts are gone from the kernel too.
    pub forgotten: u64,
    /// Entries were removed since the last read: lay the next one out anew.
    relayout: bool,
}

impl Table {
    /// Replaces totals with a fresh read of the kernel map and derives rates
    /// over `secs`. A counter that went backwards (the map was recreated
    /// under us) restarts its rate from zero rather than going negative.
    /// `secs` 0 (the first read) gives no rates: the totals then are
    /// everything counted since the epoch, not an interval's.
    pub fn update(&mut self, read: &[(EndpointKey, EndpointCounters)], secs: f64) {
        if !self.lines_up(read) {
            self.rebuild(read);
        }
        for ((_, now), &at) in read.iter().zip(&self.read_order) {
            self.entries[at].1.advance(now, secs);
        }
    }

    /// Whether `read` holds the same keys in the same order as the last read.
    fn lines_up(&self, read: &[(EndpointKey, EndpointCounters)]) -> bool {
        !self.relayout
            && read.len() == self.read_order.len()
            && read
                .iter()
                .zip(&self.read_order)
                .all(|((key, _), &at)| self.entries[at].0 == *key)
    }

    /// Re-lays the table out for `read`'s keys: entries it no longer has are
    /// forgotten, new ones start from zero, and the order is sorted again.
    fn rebuild(&mut self, read: &[(EndpointKey, EndpointCounters)]) {
        let mut old: HashMap<EndpointKey, Entry> = self.entries.drain(..).collect();
        let mut laid: Vec<(EndpointKey, Entry)> = Vec::with_capacity(read.len());
        for (key, _) in read {
            let entry = old.remove(key).unwrap_or_else(|| Entry::new(key));
            laid.push((*key, entry));
        }
        self.forgotten += old.len() as u64;
        laid.sort_unstable_by_key(|(key, _)| listing_order(key));
        // A hash map's keys are unique; were one read twice, it is laid out
        // once and both positions update it.
        laid.dedup_by(|b, a| a.0 == b.0);
        let at_of: HashMap<EndpointKey, usize> = laid
            .iter()
            .enumerate()
            .map(|(at, (key, _))| (*key, at))
            .collect();
        self.read_order = read
            .iter()
            .map(|(key, _)| at_of.get(key).copied().unwrap_or_default())
            .collect();
        self.entries = laid;
        self.relayout = false;
    }

    /// Takes a read of the endpoints counted since the last read (and
    /// maybe some more): the others stand where they were, their rates
    /// zero, as a full read finding them unchanged would leave them. An
    /// endpoint the table does not have yet is added. Entries are found
    /// by their place in listing order, which keeps no index beside them.
    pub fn update_changed(&mut self, read: &[(EndpointKey, EndpointCounters)], secs: f64) {
        for (_, entry) in &mut self.entries {
            let same = entry.totals;
            entry.advance(&same, secs);
        }
        let mut new = Vec::new();
        for (key, counters) in read {
            let found = self
                .entries
                .binary_search_by_key(&listing_order(key), |(k, _)| listing_order(k));
            match found {
                // Advanced as unchanged above: its totals are still the
                // last read's, so the rates come out right.
                Ok(at) if self.entries[at].1.totals != *counters => {
                    self.entries[at].1.advance(counters, secs);
                }
                Ok(_) => {}
                Err(_) => {
                    let mut entry = Entry::new(key);
                    entry.advance(counters, secs);
                    new.push((*key, entry));
                }
            }
        }
        if new.is_empty() {
            return;
        }
        self.entries.append(&mut new);
        self.entries
            .sort_unstable_by_key(|(key, _)| listing_order(key));
        self.entries.dedup_by(|b, a| a.0 == b.0);
        self.relayout = true;
    }

    /// Takes out the endpoints `keys` (retired from the kernel map) and
    /// returns their entries: the next read lays the table out again,
    /// without counting them as forgotten.
    pub fn take(&mut self, keys: &[EndpointKey]) -> Vec<(EndpointKey, Entry)> {
        if keys.is_empty() {
            return Vec::new();
        }
        let gone: std::collections::HashSet<&EndpointKey> = keys.iter().collect();
        let (taken, kept) = self
            .entries
            .drain(..)
            .partition(|(key, _)| gone.contains(key));
        self.entries = kept;
        self.read_order.clear();
        self.relayout = true;
        taken
    }

    /// The endpoints in listing order (direction, address, port).
    pub fn iter(&self) -> impl Iterator<Item = (&EndpointKey, &Entry)> {
        self.entries.iter().map(|(k, e)| (k, e))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> EndpointKey {
        EndpointKey {
            addr: agent_common::v4_mapped(u32::from_ne_bytes([10, 0, 0, 1])),
            port,
            direction: 1,
            proto: 6,
        }
    }

    fn counters(opened: u64, bytes: u64) -> EndpointCounters {
        EndpointCounters {
            conns_opened: opened,
            bytes_rx: bytes,
            ..Default::default()
        }
    }

    #[test]
    fn rates_are_differences_over_the_interval() {
        let mut t = Table::default();
        t.update(&[(key(80), counters(10, 1000))], 1.0);
        t.update(&[(key(80), counters(30, 5000))], 2.0);
        let (_, e) = t.iter().next().expect("one entry");
        assert_eq!(e.totals.conns_opened, 30);
        assert_eq!(e.rates.conns_opened, 10.0);
        assert_eq!(e.rates.bytes_rx, 2000.0);
    }

    #[test]
    fn the_first_read_gives_totals_and_no_rates() {
        // An agent restarted over pinned maps reads totals from before it
        // started: they are no interval's traffic.
        let mut t = Table::default();
        t.update(&[(key(80), counters(5000, 9_000_000))], 0.0);
        let (_, e) = t.iter().next().expect("one entry");
        assert_eq!(e.totals.conns_opened, 5000);
        assert_eq!(e.rates, Rates::default());
        t.update(&[(key(80), counters(5010, 9_000_100))], 1.0);
        let (_, e) = t.iter().next().expect("one entry");
        assert_eq!((e.rates.conns_opened, e.rates.bytes_rx), (10.0, 100.0));
    }

    #[test]
    fn evicted_endpoints_are_forgotten_and_counted() {
        let mut t = Table::default();
        t.update(&[(key(80), counters(1, 1)), (key(81), counters(1, 1))], 1.0);
        t.update(&[(key(81), counters(2, 2))], 1.0);
        assert_eq!(t.len(), 1);
        assert_eq!(t.forgotten, 1);
    }

    #[test]
    fn removed_endpoints_stay_gone_whatever_the_next_read_holds() {
        for next in [vec![], vec![(key(81), counters(2, 2))]] {
            let mut t = Table::default();
            t.update(&[(key(80), counters(1, 1)), (key(81), counters(1, 1))], 1.0);
            t.take(&[key(80)]);
            t.update(&next, 1.0);
            assert_eq!(t.len(), next.len(), "after a read of {next:?}");
            assert_eq!(
                t.forgotten,
                1 - next.len() as u64,
                "only 81 can be forgotten"
            );
        }
    }

    #[test]
    fn a_counter_going_backwards_never_gives_a_negative_rate() {
        let mut t = Table::default();
        t.update(&[(key(80), counters(100, 100))], 1.0);
        t.update(&[(key(80), counters(5, 5))], 1.0);
        let (_, e) = t.iter().next().expect("one entry");
        assert_eq!(e.rates.conns_opened, 0.0);
    }

    #[test]
    fn endpoints_are_listed_in_order_whatever_order_the_kernel_reads_them() {
        let mut t = Table::default();
        t.update(&[(key(82), counters(1, 1)), (key(80), counters(1, 1))], 1.0);
        t.update(
            &[
                (key(81), counters(1, 1)),
                (key(82), counters(2, 2)),
                (key(80), counters(3, 3)),
            ],
            1.0,
        );
        let listed: Vec<(u16, u64)> = t
            .iter()
            .map(|(k, e)| (k.port, e.totals.conns_opened))
            .collect();
        assert_eq!(listed, vec![(80, 3), (81, 1), (82, 2)]);
        let (_, e80) = t.iter().next().expect("80");
        assert_eq!(e80.rates.conns_opened, 2.0, "80 kept its history");
    }

    #[test]
    fn a_read_in_the_same_order_updates_each_endpoint_in_place() {
        let mut t = Table::default();
        let read = |a: u64, b: u64| [(key(90), counters(a, 0)), (key(70), counters(b, 0))];
        t.update(&read(1, 10), 1.0);
        t.update(&read(4, 30), 1.0);
        t.update(&read(9, 60), 1.0);
        let rates: Vec<(u16, f64)> = t
            .iter()
            .map(|(k, e)| (k.port, e.rates.conns_opened))
            .collect();
        assert_eq!(rates, vec![(70, 30.0), (90, 5.0)]);
    }

    #[test]
    fn the_same_keys_in_another_order_still_update_the_right_endpoints() {
        let mut t = Table::default();
        t.update(&[(key(1), counters(1, 0)), (key(2), counters(100, 0))], 1.0);
        t.update(&[(key(2), counters(101, 0)), (key(1), counters(5, 0))], 1.0);
        let rates: Vec<(u16, f64)> = t
            .iter()
            .map(|(k, e)| (k.port, e.rates.conns_opened))
            .collect();
        assert_eq!(rates, vec![(1, 4.0), (2, 1.0)]);
        assert_eq!(t.forgotten, 0);
    }

    #[test]
    fn a_read_of_changed_endpoints_leaves_the_others_as_they_were() {
        let mut t = Table::default();
        t.update(
            &[(key(80), counters(1, 10)), (key(82), counters(5, 50))],
            1.0,
        );
        t.update(
            &[(key(80), counters(3, 30)), (key(82), counters(6, 60))],
            1.0,
        );
        t.update_changed(
            &[(key(82), counters(8, 80)), (key(81), counters(2, 20))],
            2.0,
        );
        let seen: Vec<(u16, u64, f64, u64)> = t
            .iter()
            .map(|(k, e)| {
                (
                    k.port,
                    e.totals.conns_opened,
                    e.rates.conns_opened,
                    e.quiet_reads,
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![(80, 3, 0.0, 1), (81, 2, 1.0, 0), (82, 8, 1.0, 0)],
            "80 unchanged and quiet, 81 new in listing order, 82 moved"
        );
        // A full read after it lines its keys up anew.
        t.update(
            &[
                (key(82), counters(9, 90)),
                (key(80), counters(4, 40)),
                (key(81), counters(2, 20)),
            ],
            1.0,
        );
        let rates: Vec<(u16, f64)> = t
            .iter()
            .map(|(k, e)| (k.port, e.rates.conns_opened))
            .collect();
        assert_eq!(rates, vec![(80, 1.0), (81, 0.0), (82, 1.0)]);
        assert_eq!(t.forgotten, 0);
    }

    #[test]
    fn a_read_of_changed_endpoints_finds_them_after_some_were_taken_out() {
        let mut t = Table::default();
        t.update(
            &[
                (key(80), counters(1, 1)),
                (key(81), counters(1, 1)),
                (key(82), counters(1, 1)),
            ],
            1.0,
        );
        t.take(&[key(80)]);
        t.update_changed(&[(key(82), counters(4, 4))], 1.0);
        let seen: Vec<(u16, u64)> = t
            .iter()
            .map(|(k, e)| (k.port, e.totals.conns_opened))
            .collect();
        assert_eq!(seen, vec![(81, 1), (82, 4)]);
    }
}

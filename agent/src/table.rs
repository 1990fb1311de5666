//! The agent's table of endpoints: cumulative totals as the kernel reports
//! them and per-second rates over the last interval.
//!
//! It is updated from a full read of the kernel map every interval, tens of
//! thousands of endpoints on a busy node: the hasher is foldhash (SipHash
//! was a tenth of the agent's CPU), and each endpoint's address is written
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
}

/// One endpoint's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entry {
    pub totals: EndpointCounters,
    pub rates: Rates,
    /// The endpoint's address as people write it (see [`key_addr`]).
    pub address: String,
}

/// Endpoints seen since the epoch, keyed as the kernel keys them.
#[derive(Default)]
pub struct Table {
    entries: HashMap<EndpointKey, Entry>,
    /// Endpoints removed because the kernel map no longer has them (LRU
    /// eviction); their counts are gone from the kernel too.
    pub forgotten: u64,
}

impl Table {
    /// Replaces totals with a fresh read of the kernel map and derives rates
    /// over `secs`. A counter that went backwards (the map was recreated
    /// under us) restarts its rate from zero rather than going negative.
    pub fn update(&mut self, read: &[(EndpointKey, EndpointCounters)], secs: f64) {
        let secs = if secs > 0.0 { secs } else { 1.0 };
        let mut kept = 0usize;
        for (key, now) in read {
            let entry = self.entries.entry(*key).or_insert_with(|| Entry {
                address: key_addr(key).to_string(),
                ..Entry::default()
            });
            let prev = entry.totals;
            let rate = |n: u64, p: u64| n.saturating_sub(p) as f64 / secs;
            entry.rates = Rates {
                conns_opened: rate(now.conns_opened, prev.conns_opened),
                conns_closed: rate(now.conns_closed, prev.conns_closed),
                bytes_rx: rate(now.bytes_rx, prev.bytes_rx),
                bytes_tx: rate(now.bytes_tx, prev.bytes_tx),
                packets_rx: rate(now.packets_rx, prev.packets_rx),
                packets_tx: rate(now.packets_tx, prev.packets_tx),
            };
            entry.totals = *now;
            kept += 1;
        }
        let known = self.entries.len();
        if known != kept {
            let live: std::collections::HashSet<&EndpointKey, foldhash::fast::RandomState> =
                read.iter().map(|(k, _)| k).collect();
            self.entries.retain(|k, _| live.contains(k));
            self.forgotten += (known - self.entries.len()) as u64;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&EndpointKey, &Entry)> {
        self.entries.iter()
    }

    #[cfg(test)]
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
    fn evicted_endpoints_are_forgotten_and_counted() {
        let mut t = Table::default();
        t.update(&[(key(80), counters(1, 1)), (key(81), counters(1, 1))], 1.0);
        t.update(&[(key(81), counters(2, 2))], 1.0);
        assert_eq!(t.len(), 1);
        assert_eq!(t.forgotten, 1);
    }

    #[test]
    fn a_counter_going_backwards_never_gives_a_negative_rate() {
        let mut t = Table::default();
        t.update(&[(key(80), counters(100, 100))], 1.0);
        t.update(&[(key(80), counters(5, 5))], 1.0);
        let (_, e) = t.iter().next().expect("one entry");
        assert_eq!(e.rates.conns_opened, 0.0);
    }
}

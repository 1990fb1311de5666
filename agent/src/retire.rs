//! Retiring idle endpoints from a filling endpoint map.
//!
//! The endpoint map is not LRU, so an endpoint's totals never restart
//! behind the collector's back. But endpoints come and never go on their
//! own: every pod address a node ever dialled or served stays, and a
//! cluster that rolls its deployments out daily gives a node new ones every
//! day. Once the map is full, new endpoints go uncounted. So when it is
//! three-quarters full, the agent removes endpoints that have carried
//! nothing for `--retire-idle-after`, with no connection open and no
//! listening socket or `--service` label behind them, the ones it dialled
//! before the ones it served and longest idle first, until it is half
//! full.
//!
//! An endpoint with failed attempts only (not one connection opened or
//! closed, not one byte) goes first and sooner: quiet for
//! [`FAILED_ONLY_IDLE`]. A port scan from the node, or a client retrying
//! a dead address list, makes one per address and port it tries; waiting
//! `--retire-idle-after` (ten minutes) for them would leave the map full
//! of them, and real endpoints uncounted, for as long.
//!
//! A retired endpoint leaves the node's view at once and the reports to
//! the collector once the collector has its last totals (see
//! [`crate::withheld`]); the collector then forgets it, and if it comes
//! back, its counters start from zero, which the collector counts as new
//! traffic. Nothing counted is lost: the removal takes the
//! counters with it (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`), and if they moved
//! since the read that found the endpoint idle (a connection opened in
//! between), they go back into the map (but see [`put_back`] and
//! docs/counting.md for what the same microseconds can still do).

use std::os::fd::{AsRawFd as _, BorrowedFd};

use agent_common::{Direction, EndpointCounters, EndpointKey};
use tracing::warn;

use crate::{cli::ServiceLabel, listeners::Listener, table::Table};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

/// How long an endpoint with failed attempts only must stay quiet before
/// it may retire from a filling map. Long enough for the collector to
/// have its last totals a few times over (it withholds a retired endpoint
/// until then anyway), short beside a scan that fills the map.
pub const FAILED_ONLY_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// When to retire and what.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Reads an endpoint must have stayed unchanged through.
    pub quiet_reads: u64,
    /// Reads an endpoint with failed attempts only must have stayed
    /// unchanged through (at most `quiet_reads`).
    pub failed_only_quiet_reads: u64,
    /// Endpoints the map holds.
    pub capacity: u64,
}

impl Policy {
    /// Endpoints idle for `idle` (or [`FAILED_ONLY_IDLE`], for those with
    /// failed attempts only) at one read every `interval`, from a map
    /// holding `capacity`.
    pub fn new(idle: std::time::Duration, interval: std::time::Duration, capacity: u64) -> Self {
        let reads = |idle: std::time::Duration| {
            (idle.as_secs_f64() / interval.as_secs_f64().max(0.001)).ceil() as u64
        };
        let quiet_reads = reads(idle);
        Self {
            quiet_reads,
            failed_only_quiet_reads: reads(FAILED_ONLY_IDLE).min(quiet_reads),
            capacity,
        }
    }

    /// The endpoints to retire from a map holding `live`, with the totals
    /// the last read found: none until the map is three-quarters full, then
    /// enough to bring it to half, of those idle long enough, with no
    /// connection open.
    ///
    /// A served endpoint with a listener on its port, or a port
    /// `--service` labels, stays: it is a pool's member, which an idle
    /// spell must leave judged ZERO, not gone (the agent sees only its own
    /// namespace's listeners, not a pod's). Endpoints with failed attempts
    /// only go first, then dialled ones, then served ones; longest
    /// idle first within each.
    pub fn candidates(
        &self,
        table: &Table,
        listeners: &[Listener],
        services: &[ServiceLabel],
        live: u64,
    ) -> Vec<(EndpointKey, EndpointCounters)> {
        if live * 4 < self.capacity * 3 {
            return Vec::new();
        }
        let served = |key: &EndpointKey| key.direction == Direction::Serves as u8;
        let member = |key: &EndpointKey| {
            served(key)
                && (crate::cli::label_of(services, crate::snapshot::key_addr(key), key.port)
                    .is_some()
                    || listeners
                        .iter()
                        .any(|l| l.port == key.port && l.proto == key.proto))
        };
        let quiet_for = |e: &EndpointCounters| match failed_only(e) {
            true => self.failed_only_quiet_reads,
            false => self.quiet_reads,
        };
        let mut idle: Vec<_> = table
            .iter()
            .filter(|(key, e)| {
                e.quiet_reads >= quiet_for(&e.totals) && !e.has_open_connections() && !member(key)
            })
            .map(|(key, e)| (e.quiet_reads, *key, e.totals))
            .collect();
        idle.sort_unstable_by_key(|&(quiet, key, totals)| {
            (
                !failed_only(&totals),
                served(&key),
                std::cmp::Reverse(quiet),
                key,
            )
        });
        let excess = live.saturating_sub(self.capacity / 2);
        idle.into_iter()
            .take(usize::try_from(excess).unwrap_or(usize::MAX))
            .map(|(_, key, totals)| (key, totals))
            .collect()
    }
}

/// What became of an endpoint the agent tried to retire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Removed with the totals it was found idle with.
    Retired,
    /// It counted something since: its counters went back into the map.
    Restored,
    /// It counted something since, and a program had already counted it
    /// anew: its counters were added to the new entry.
    Merged,
    /// Taken out, but its counters could not go back (the map filled or
    /// memory ran short in the same microseconds): what it counted since
    /// the read is lost, and said so in the log.
    Dropped,
    /// It was no longer in the map.
    Gone,
}

/// Removes `key` from the per-CPU endpoint map behind `fd` (values of
/// `ncpus` CPUs) if its counters still sum to `seen`, and puts them back
/// if they do not. An error means the kernel refused to take it out.
pub fn retire(
    fd: BorrowedFd<'_>,
    ncpus: usize,
    key: &EndpointKey,
    seen: &EndpointCounters,
) -> std::io::Result<Outcome> {
    let mut taken = vec![EndpointCounters::default(); ncpus];
    match elem(fd, BPF_MAP_LOOKUP_AND_DELETE_ELEM, key, &mut taken, 0) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Outcome::Gone),
        Err(e) => return Err(e),
    }
    let sum = EndpointCounters::sum(&taken);
    if sum == *seen {
        return Ok(Outcome::Retired);
    }
    match put_back(fd, key, &mut taken) {
        Ok(outcome) => Ok(outcome),
        Err(e) => {
            warn!(
                ?key,
                ?seen,
                now = ?sum,
                "an endpoint counted as it was retired, and its counters could not go back \
                 into EF_ENDPOINTS: {e}; what it counted since the last read is lost"
            );
            Ok(Outcome::Dropped)
        }
    }
}

/// Puts counters taken from the map back: as they were, or, when a program
/// counted the endpoint anew in between, added to what it counted. That
/// addition is a read and a write from here: a count a program adds
/// between them is lost. It takes an endpoint idle for `--retire-idle-after`
/// counted three times within microseconds of its retirement.
fn put_back(
    fd: BorrowedFd<'_>,
    key: &EndpointKey,
    taken: &mut [EndpointCounters],
) -> std::io::Result<Outcome> {
    match elem(fd, BPF_MAP_UPDATE_ELEM, key, taken, BPF_NOEXIST) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        done => return done.map(|()| Outcome::Restored),
    }
    let mut now = vec![EndpointCounters::default(); taken.len()];
    elem(fd, BPF_MAP_LOOKUP_ELEM, key, &mut now, 0)?;
    for (n, t) in now.iter_mut().zip(taken.iter()) {
        n.accumulate(t);
    }
    elem(fd, BPF_MAP_UPDATE_ELEM, key, &mut now, BPF_EXIST).map(|()| Outcome::Merged)
}

/// Reads `key`'s counters from the per-CPU endpoint map behind `fd` into
/// `values`, one per possible CPU.
pub(crate) fn lookup(
    fd: BorrowedFd<'_>,
    key: &EndpointKey,
    values: &mut [EndpointCounters],
) -> std::io::Result<()> {
    elem(fd, BPF_MAP_LOOKUP_ELEM, key, values, 0)
}

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// One `bpf(2)` element command on `key`, the per-CPU `values` read or
/// written (one per possible CPU; `EndpointCounters` is a multiple of 8
/// bytes, as the kernel lays them out).
fn elem(
    fd: BorrowedFd<'_>,
    cmd: libc::c_long,
    key: &EndpointKey,
    values: &mut [EndpointCounters],
    flags: u64,
) -> std::io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: std::ptr::from_ref(key) as u64,
        value: values.as_mut_ptr() as u64,
        flags,
        ..Default::default()
    };
    // The kernel reads the key and reads or writes one value per possible
    // CPU, which is what `values` holds.
    crate::sys::bpf(cmd, &mut attr).map(drop)
}

/// Whether an endpoint only ever had failed attempts, and none pending:
/// not one opened, closed or byte, and every attempt counted unanswered
/// failed since. One with attempts unanswered and not yet failed is not,
/// yet: they fail when given up, up to two minutes later, and a retired
/// endpoint that comes back counts its totals as new, where those
/// failures would not say they weighed already. An endpoint with bytes
/// but no open counted is not: its open was lost (the map was full when
/// it happened) and its connection may still carry traffic.
fn failed_only(e: &EndpointCounters) -> bool {
    e.conns_failed > 0
        && e.conns_failed_unanswered >= e.conns_unanswered
        && e.conns_opened == 0
        && e.conns_closed == 0
        && e.bytes_rx == 0
        && e.bytes_tx == 0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn key(port: u16, direction: Direction) -> EndpointKey {
        EndpointKey::tcp(
            agent_common::v4_mapped(u32::from_ne_bytes([10, 0, 0, 1])),
            port,
            direction,
        )
    }

    fn counters(opened: u64, closed: u64) -> EndpointCounters {
        EndpointCounters {
            conns_opened: opened,
            conns_closed: closed,
            ..Default::default()
        }
    }

    /// A table after `reads` reads: `still` keys unchanged through all of
    /// them, `busy` ones counting on every read.
    fn table(still: &[(EndpointKey, EndpointCounters)], busy: &[EndpointKey], reads: u64) -> Table {
        let mut t = Table::default();
        for r in 0..reads {
            let mut read: Vec<_> = still.to_vec();
            read.extend(busy.iter().map(|k| (*k, counters(r + 1, r + 1))));
            t.update(&read, 1.0);
        }
        t
    }

    #[test]
    fn idle_time_is_counted_in_reads() {
        use std::time::Duration;
        let reads = |idle, interval| Policy::new(idle, interval, 16).quiet_reads;
        assert_eq!(reads(Duration::from_secs(600), Duration::from_secs(1)), 600);
        assert_eq!(reads(Duration::from_secs(2), Duration::from_millis(500)), 4);
        assert_eq!(reads(Duration::from_secs(1), Duration::from_millis(300)), 4);
    }

    #[test]
    fn nothing_retires_below_three_quarters() {
        let idle = [(key(1, Direction::SendsTo), counters(1, 1))];
        let t = table(&idle, &[], 10);
        let policy = Policy {
            quiet_reads: 2,
            failed_only_quiet_reads: 2,
            capacity: 8,
        };
        assert!(policy.candidates(&t, &[], &[], 5).is_empty());
        assert_eq!(policy.candidates(&t, &[], &[], 6).len(), 1);
    }

    #[test]
    fn only_long_idle_closed_unlistened_endpoints_retire_longest_idle_first() {
        let open = (key(2, Direction::SendsTo), counters(3, 2));
        let listened = (key(8080, Direction::Serves), counters(5, 5));
        let done = (key(3, Direction::SendsTo), counters(4, 4));
        let busy = key(4, Direction::SendsTo);
        let t = table(&[open, listened, done], &[busy], 6);
        let listeners = [Listener {
            addr: "0.0.0.0".parse().expect("an address"),
            port: 8080,
            proto: agent_common::PROTO_TCP,
        }];
        let policy = Policy {
            quiet_reads: 3,
            failed_only_quiet_reads: 3,
            capacity: 4,
        };
        assert_eq!(policy.candidates(&t, &listeners, &[], 4), vec![done]);
        let policy = Policy {
            quiet_reads: 6,
            ..policy
        };
        assert!(
            policy.candidates(&t, &listeners, &[], 4).is_empty(),
            "five reads unchanged (the first read changes everything) is not six"
        );
    }

    /// An endpoint whose open was lost (the map was full then) and whose
    /// connection's bytes came later has no open counted, but it is in
    /// use: it waits as long as any other, though failed attempts to it
    /// were counted too. One with an attempt unanswered and not yet
    /// failed waits too.
    #[test]
    fn an_endpoint_with_bytes_or_a_pending_attempt_is_not_failed_only() {
        let lost_open = EndpointCounters {
            bytes_rx: 10_000,
            conns_failed: 1,
            ..Default::default()
        };
        let lost = (key(1, Direction::SendsTo), lost_open);
        let scan = EndpointCounters {
            conns_failed: 1,
            ..Default::default()
        };
        let scanned = (key(2, Direction::SendsTo), scan);
        // One attempt failed, another still unanswered: not failed-only
        // until it fails too.
        let waiting = EndpointCounters {
            conns_failed: 1,
            conns_unanswered: 2,
            conns_failed_unanswered: 1,
            ..Default::default()
        };
        let pending = (key(3, Direction::SendsTo), waiting);
        let t = table(&[lost, scanned, pending], &[], 20);
        let policy = Policy::new(
            std::time::Duration::from_secs(600),
            std::time::Duration::from_secs(1),
            2,
        );
        let retired: Vec<_> = policy
            .candidates(&t, &[], &[], 2)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(retired, vec![scanned.0]);
    }

    #[test]
    fn endpoints_that_only_failed_retire_first_and_sooner() {
        let failed = |port, attempts| {
            let totals = EndpointCounters {
                conns_failed: attempts,
                ..Default::default()
            };
            (key(port, Direction::SendsTo), totals)
        };
        let scanned = [failed(1, 1), failed(2, 3)];
        let done = (key(3, Direction::SendsTo), counters(4, 4));
        let served = (key(4, Direction::Serves), counters(2, 2));
        let refusing = key(5, Direction::SendsTo);
        let mut t = table(&[scanned[0], scanned[1], done, served], &[], 5);
        // Still failed attempts on every read: never quiet.
        for r in 0..5 {
            let mut read = vec![scanned[0], scanned[1], done, served];
            read.push(failed(5, r + 1));
            t.update(&read, 1.0);
        }
        let policy = Policy::new(
            std::time::Duration::from_secs(600),
            std::time::Duration::from_secs(1),
            6,
        );
        assert_eq!(policy.failed_only_quiet_reads, 10);
        assert!(
            policy.candidates(&t, &[], &[], 6).is_empty(),
            "nine quiet reads are not ten"
        );
        t.update(&[scanned[0], scanned[1], done, served, failed(5, 6)], 1.0);
        assert_eq!(
            policy.candidates(&t, &[], &[], 6).len(),
            2,
            "ten are: the scanned ports go"
        );
        let mut t = table(&[scanned[0], scanned[1], done, served], &[], 11);
        for r in 0..11 {
            let mut read = vec![scanned[0], scanned[1], done, served];
            read.push(failed(5, r + 1));
            t.update(&read, 1.0);
        }
        let retired = policy.candidates(&t, &[], &[], 6);
        assert_eq!(
            retired.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![scanned[0].0, scanned[1].0],
            "the scanned ports go, the endpoint still failing stays, and ten \
             minutes' wait still holds for the ones that carried connections"
        );
        assert!(!retired.iter().any(|(k, _)| *k == refusing));
        let short = Policy::new(
            std::time::Duration::from_secs(3),
            std::time::Duration::from_secs(1),
            6,
        );
        assert_eq!(
            short.failed_only_quiet_reads, 3,
            "never later than the rest"
        );
        let all: Vec<_> = short
            .candidates(&t, &[], &[], 6)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            all[..2],
            [scanned[0].0, scanned[1].0],
            "failed-only first, then dialled, then served: {all:?}"
        );
    }

    /// A per-CPU hash map shaped like `EF_ENDPOINTS`, of `capacity`
    /// entries, and the number of possible CPUs its values come in. Needs
    /// root, as the agent does.
    pub(crate) fn endpoint_map(capacity: u32) -> (std::os::fd::OwnedFd, usize) {
        const BPF_MAP_CREATE: libc::c_long = 0;
        const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
        const BPF_F_NO_PREALLOC: u32 = 1;
        let mut create = [0u32; 32];
        create[..5].copy_from_slice(&[
            BPF_MAP_TYPE_PERCPU_HASH,
            std::mem::size_of::<EndpointKey>() as u32,
            std::mem::size_of::<EndpointCounters>() as u32,
            capacity,
            BPF_F_NO_PREALLOC,
        ]);
        let map = crate::sys::bpf_fd(BPF_MAP_CREATE, &mut create)
            .expect("a per-CPU hash map (the agent's tests run as root)");
        let ncpus = aya::util::nr_cpus().expect("the possible CPUs");
        (map, ncpus)
    }

    fn per_cpu(ncpus: usize, opened: u64) -> Vec<EndpointCounters> {
        vec![counters(opened, opened); ncpus]
    }

    pub(crate) fn put(fd: BorrowedFd<'_>, key: &EndpointKey, values: &mut [EndpointCounters]) {
        elem(fd, BPF_MAP_UPDATE_ELEM, key, values, 0).expect("the endpoint goes in");
    }

    fn get(fd: BorrowedFd<'_>, key: &EndpointKey, ncpus: usize) -> Option<Vec<EndpointCounters>> {
        let mut values = vec![EndpointCounters::default(); ncpus];
        elem(fd, BPF_MAP_LOOKUP_ELEM, key, &mut values, 0)
            .ok()
            .map(|()| values)
    }

    #[test]
    fn an_endpoint_retires_only_with_the_counters_it_was_found_idle_with() {
        use std::os::fd::AsFd as _;
        let (map, ncpus) = endpoint_map(16);
        let fd = map.as_fd();
        let k = key(9000, Direction::SendsTo);
        put(fd, &k, &mut per_cpu(ncpus, 2));
        let seen = EndpointCounters::sum(&per_cpu(ncpus, 2));
        assert_eq!(retire(fd, ncpus, &k, &seen).ok(), Some(Outcome::Retired));
        assert!(get(fd, &k, ncpus).is_none(), "retired: gone from the map");
        assert_eq!(retire(fd, ncpus, &k, &seen).ok(), Some(Outcome::Gone));
        // A connection opened after the read that found it idle.
        put(fd, &k, &mut per_cpu(ncpus, 3));
        assert_eq!(retire(fd, ncpus, &k, &seen).ok(), Some(Outcome::Restored));
        assert_eq!(
            get(fd, &k, ncpus),
            Some(per_cpu(ncpus, 3)),
            "its counters went back as they were"
        );
    }

    #[test]
    fn counters_put_back_beside_a_new_entry_are_added_to_it() {
        use std::os::fd::AsFd as _;
        let (map, ncpus) = endpoint_map(16);
        let fd = map.as_fd();
        let k = key(9001, Direction::SendsTo);
        // A program counted the endpoint anew after the retirement took
        // its counters out.
        put(fd, &k, &mut per_cpu(ncpus, 1));
        assert_eq!(
            put_back(fd, &k, &mut per_cpu(ncpus, 4)).ok(),
            Some(Outcome::Merged)
        );
        assert_eq!(get(fd, &k, ncpus), Some(per_cpu(ncpus, 5)));
    }

    #[test]
    fn dialled_endpoints_go_before_served_ones_longest_idle_first() {
        let (a, b) = (key(1, Direction::SendsTo), key(2, Direction::SendsTo));
        let (served, labelled) = (key(9, Direction::Serves), key(80, Direction::Serves));
        let mut t = Table::default();
        // `b` counts until the fourth read, the others only at the first.
        for r in 0..8 {
            let until = |last: u64| counters(r.min(last) + 1, r.min(last) + 1);
            let read = [
                (a, until(0)),
                (b, until(3)),
                (served, until(0)),
                (labelled, until(0)),
            ];
            t.update(&read, 1.0);
        }
        let services = [ServiceLabel::port("web", 80)];
        let retired = |capacity, live| {
            let policy = Policy {
                quiet_reads: 2,
                failed_only_quiet_reads: 2,
                capacity,
            };
            let idle = policy.candidates(&t, &[], &services, live);
            idle.into_iter().map(|(key, _)| key).collect::<Vec<_>>()
        };
        assert_eq!(retired(4, 3), vec![a], "the longest idle first");
        assert_eq!(retired(4, 4), vec![a, b]);
        assert_eq!(
            retired(8, 8),
            vec![a, b, served],
            "dialled before served, and a labelled port's endpoint never"
        );
    }

    #[test]
    fn retires_down_to_half_the_capacity() {
        let idle: Vec<_> = (1..=8)
            .map(|p| (key(p, Direction::SendsTo), counters(1, 1)))
            .collect();
        let t = table(&idle, &[], 4);
        let policy = Policy {
            quiet_reads: 1,
            failed_only_quiet_reads: 1,
            capacity: 8,
        };
        assert_eq!(policy.candidates(&t, &[], &[], 8).len(), 4);
    }
}

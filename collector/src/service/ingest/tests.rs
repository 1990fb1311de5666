//! The ingest stage on reports: deltas, replays, resets and rejections.

use std::{
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use evenflow_proto::v1::{self, AgentReport};

use super::{
    ReportStream,
    agent::{AgentState, Applied, Delta},
    rates::AgentTick,
    registry::{IngestCounters, Registry},
    validate::{Parsed, validate},
};

fn ep(addr: &str, port: u32, dir: v1::Direction, opened: u64) -> v1::Endpoint {
    v1::Endpoint {
        address: addr.into(),
        port,
        direction: dir as i32,
        protocol: v1::Protocol::Tcp as i32,
        service: "web".into(),
        totals: Some(v1::Counters {
            conns_opened: opened,
            bytes_rx: opened * 10,
            bytes_tx: opened * 100,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn report(epoch: u64, seq: u64, opened: u64) -> AgentReport {
    AgentReport {
        node_name: "n1".into(),
        agent_epoch: epoch,
        agent_run: 7,
        sequence: seq,
        interval_seconds: 1.0,
        endpoints: vec![ep("10.0.0.1", 80, v1::Direction::Serves, opened)],
        ..Default::default()
    }
}

fn apply(s: &mut AgentState, r: &AgentReport, c: &IngestCounters) -> Applied {
    let mut p = Parsed::default();
    validate(r, &mut p).unwrap();
    s.apply(r, &p, c)
}

#[test]
fn deltas_replays_and_resets() {
    let c = IngestCounters::default();
    let mut s = AgentState::new("n1".into());
    let mut t = AgentTick::default();
    assert_eq!(
        apply(&mut s, &report(1, 1, 100), &c),
        Applied::New { reset: false }
    );
    s.take_tick(Instant::now(), 1.0, &mut t);
    assert!(t.reset);
    assert_eq!(t.endpoints[0].delta.conns, 0);
    apply(&mut s, &report(1, 2, 130), &c);
    assert_eq!(apply(&mut s, &report(1, 2, 130), &c), Applied::Replay);
    apply(&mut s, &report(1, 3, 150), &c);
    s.take_tick(Instant::now(), 1.0, &mut t);
    assert!(!t.reset);
    // Two reports (2 agent seconds) in one 1 s tick: the rate, not the
    // sum, so shares stay comparable across agents.
    assert_eq!(
        t.endpoints[0].delta,
        Delta {
            conns: 25,
            bytes_in: 250,
            bytes_out: 2500,
            failed: 0
        }
    );
    assert_eq!(t.endpoints[0].total, 50);
    assert_eq!(t.endpoints[0].rate, [25.0, 250.0, 2500.0, 0.0]);
    // No report this tick: the last rate holds (a late report is not a
    // dark member).
    s.take_tick(Instant::now(), 1.0, &mut t);
    assert_eq!(t.endpoints[0].delta.conns, 25);
    assert!(!t.reset && !t.endpoints[0].reset);
    // New epoch: counters start again, no negative delta.
    assert_eq!(
        apply(&mut s, &report(2, 4, 5), &c),
        Applied::New { reset: true }
    );
    s.take_tick(Instant::now(), 1.0, &mut t);
    assert!(t.reset);
    assert_eq!(t.endpoints[0].delta.conns, 0);
    apply(&mut s, &report(2, 5, 9), &c);
    s.take_tick(Instant::now(), 1.0, &mut t);
    assert_eq!(t.endpoints[0].delta.conns, 4);
    assert_eq!(c.replays.load(Relaxed), 1);
    assert_eq!(c.resets.load(Relaxed), 1);
}

#[test]
fn invalid_reports_are_named() {
    let mut p = Parsed::default();
    let mut r = report(1, 1, 1);
    r.node_name.clear();
    assert!(validate(&r, &mut p).unwrap_err().0.contains("--node-name"));
    let mut r = report(1, 1, 1);
    r.endpoints[0].address = "nope".into();
    assert!(
        validate(&r, &mut p)
            .unwrap_err()
            .0
            .contains("not an IP address")
    );
    let mut r = report(1, 1, 1);
    r.interval_seconds = f64::NAN;
    assert!(validate(&r, &mut p).is_err());
    let mut r = report(1, 1, 1);
    r.endpoints.push(r.endpoints[0].clone());
    assert!(validate(&r, &mut p).unwrap_err().0.contains("twice"));
}

#[test]
fn the_layout_changes_only_with_what_pools_are_built_from() {
    let counters = IngestCounters::default();
    let mut state = AgentState::new("n1".into());
    let mut tick = AgentTick::default();
    // Applies a report and takes a tick: the agent's layout number and its
    // endpoints' addresses in the tick's order.
    let mut apply_and_take = |report: &AgentReport| {
        apply(&mut state, report, &counters);
        state.take_tick(Instant::now(), 1.0, &mut tick);
        let addrs: Vec<String> = (tick.endpoints.iter())
            .map(|endpoint| endpoint.key.addr.to_string())
            .collect();
        (tick.layout, addrs)
    };
    let (first, _) = apply_and_take(&report(1, 1, 100));
    let (counted, _) = apply_and_take(&report(1, 2, 130));
    assert_eq!(counted, first, "counts alone keep the layout");
    let mut next = report(1, 3, 140);
    next.endpoints[0].service = "api".into();
    let (relabelled, _) = apply_and_take(&next);
    assert_ne!(relabelled, first);
    next.sequence = 4;
    (next.endpoints).push(ep("10.0.0.2", 80, v1::Direction::SendsTo, 1));
    let (grown, order) = apply_and_take(&next);
    assert!(grown != relabelled && order == ["10.0.0.1", "10.0.0.2"]);
    // The same endpoints in another order: the tick's follow the report's.
    next.sequence = 5;
    next.endpoints.reverse();
    let (reordered, order) = apply_and_take(&next);
    assert!(reordered != grown && order == ["10.0.0.2", "10.0.0.1"]);
}

#[test]
fn a_stream_parses_each_endpoint_once_and_still_checks_every_report() {
    let mut parsed = Parsed::default();
    let mut two = report(1, 1, 1);
    two.endpoints
        .push(ep("10.0.0.2", 80, v1::Direction::SendsTo, 1));
    validate(&two, &mut parsed).unwrap();
    let keys = parsed.endpoints.clone();
    validate(&two, &mut parsed).unwrap();
    assert_eq!(parsed.endpoints, keys);
    // Spelled as long as before, another address: parsed again.
    two.endpoints[1].address = "10.0.0.3".into();
    validate(&two, &mut parsed).unwrap();
    assert_eq!(parsed.endpoints[1].0.addr.to_string(), "10.0.0.3");
    // What changes from report to report is checked every time.
    let mut absurd = two.clone();
    if let Some(totals) = absurd.endpoints[0].totals.as_mut() {
        totals.conns_closed = 1 << 41;
    }
    let refused = validate(&absurd, &mut parsed).unwrap_err();
    assert!(refused.0.contains("absurd"));
    // A known endpoint listed twice is still refused.
    let mut twice = two.clone();
    twice.endpoints[1] = twice.endpoints[0].clone();
    let refused = validate(&twice, &mut parsed).unwrap_err();
    assert!(refused.0.contains("twice"));
    validate(&two, &mut parsed).unwrap();
    assert_eq!(parsed.endpoints.len(), 2);
}

/// An endpoint an agent retired (it leaves the reports) and that later
/// comes back counts from zero: the collector forgot it when it left, so
/// its new totals are new traffic, not a counter that went backwards.
#[test]
fn a_retired_endpoint_that_comes_back_counts_from_zero() {
    let c = IngestCounters::default();
    let mut s = AgentState::new("n1".into());
    let mut t = AgentTick::default();
    apply(&mut s, &a_and_b(1, 10, Some(5)), &c);
    apply(&mut s, &a_and_b(2, 12, Some(5)), &c);
    // Retired: the report leaves it out.
    apply(&mut s, &a_and_b(3, 13, None), &c);
    s.take_tick(Instant::now(), 1.0, &mut t);
    assert_eq!(t.endpoints.len(), 1, "the retired endpoint is forgotten");
    // Back, its counters started again from zero in the kernel.
    apply(&mut s, &a_and_b(4, 14, Some(3)), &c);
    s.take_tick(Instant::now(), 1.0, &mut t);
    let back = t
        .endpoints
        .iter()
        .find(|e| e.cumulative == 3)
        .expect("the endpoint that came back");
    assert_eq!(back.total, 3, "all of its new counts are new traffic");
    assert!(
        !back.reset,
        "a new endpoint, not a counter that went backwards"
    );
    assert_eq!(c.resets.load(Relaxed), 0);
}

/// An agent paused longer than `--agent-retention` with its stream open
/// (a VM pause, SIGSTOP) is forgotten by the registry; when it resumes on
/// the same stream its reports must reach a state the tick reads, and the
/// first of them is a baseline again (its counts in the pause are unknown).
#[test]
fn an_agent_forgotten_while_its_stream_stays_open_is_known_again() {
    let registry = Registry::default();
    let mut stream = ReportStream::new(None);
    stream.ingest(&registry, &report(1, 1, 100)).unwrap();
    stream.ingest(&registry, &report(1, 2, 130)).unwrap();
    let later = Instant::now() + Duration::from_secs(60);
    assert_eq!(registry.forget_older_than(later, 30.0).len(), 1);
    assert!(registry.all().is_empty());
    // It resumes, on the same stream.
    let ack = stream.ingest(&registry, &report(1, 3, 150)).unwrap();
    assert_eq!(ack.acked_sequence, 3);
    assert!(ack.rejected.is_empty());
    let agents = registry.all();
    assert_eq!(
        agents.len(),
        1,
        "the resumed agent is in the registry again"
    );
    let mut tick = AgentTick::default();
    let take = |tick: &mut AgentTick| {
        (agents[0].lock().unwrap()).take_tick(Instant::now(), 1.0, tick);
    };
    take(&mut tick);
    assert!(tick.reset, "its first report again: a baseline");
    assert_eq!(tick.endpoints[0].delta.conns, 0);
    assert_eq!(tick.endpoints[0].total, 0);
    // Its next report counts, in the state the tick reads.
    stream.ingest(&registry, &report(1, 4, 160)).unwrap();
    take(&mut tick);
    assert!(!tick.reset);
    assert_eq!(tick.endpoints[0].delta.conns, 10);
}

/// A non-zero interval too short to divide by is refused, naming the
/// field and the bounds; 0 (not said) and the agent's own range pass.
#[test]
fn a_tiny_interval_is_refused() {
    let mut parsed = Parsed::default();
    let mut r = report(1, 1, 1);
    r.interval_seconds = 5e-324;
    let refused = validate(&r, &mut parsed).unwrap_err();
    assert!(
        refused.0.contains("interval_seconds") && refused.0.contains("0.01"),
        "{refused}"
    );
    for fine in [0.0, 0.01, 0.1, 3600.0] {
        r.interval_seconds = fine;
        validate(&r, &mut parsed).unwrap();
    }
}

/// An infinite rate (a report covering almost no time) must not poison
/// the endpoint's carry: once its rate is finite again, its counts show.
#[test]
fn an_infinite_rate_does_not_hide_later_counts() {
    let c = IngestCounters::default();
    let mut s = AgentState::new("n1".into());
    let mut t = AgentTick::default();
    apply(&mut s, &report(1, 1, 100), &c);
    s.take_tick(Instant::now(), 1.0, &mut t);
    // Validation refuses such an interval; the state must cope anyway.
    let mut tiny = report(1, 2, 130);
    let mut parsed = Parsed::default();
    validate(&tiny, &mut parsed).unwrap();
    tiny.interval_seconds = 5e-324;
    s.apply(&tiny, &parsed, &c);
    s.take_tick(Instant::now(), 1.0, &mut t);
    apply(&mut s, &report(1, 3, 140), &c);
    s.take_tick(Instant::now(), 1.0, &mut t);
    assert_eq!(t.endpoints[0].delta.conns, 10);
    assert_eq!(t.endpoints[0].delta.bytes_in, 100);
}

/// An endpoint's protocol is TCP or UDP: another number would be a second
/// key for the same address, port and direction, counted into its member
/// twice. TCP and UDP on one port are two endpoints.
#[test]
fn an_unknown_protocol_is_refused() {
    let mut parsed = Parsed::default();
    for protocol in [0, 3, 999, -1] {
        let mut r = report(1, 1, 1);
        let mut other = r.endpoints[0].clone();
        other.protocol = protocol;
        r.endpoints.push(other);
        let refused = validate(&r, &mut parsed).unwrap_err();
        assert!(
            refused.0.contains(&format!("protocol {protocol}"))
                && refused.0.contains("PROTOCOL_TCP"),
            "{refused}"
        );
    }
    let mut r = report(1, 1, 1);
    let mut udp = r.endpoints[0].clone();
    udp.protocol = v1::Protocol::Udp as i32;
    r.endpoints.push(udp);
    validate(&r, &mut parsed).unwrap();
    assert_eq!(parsed.endpoints.len(), 2);
}

/// A taken_at whose nanos are outside a second is refused, naming the
/// field; a normalized one passes.
#[test]
fn taken_at_nanos_outside_a_second_are_refused() {
    let mut parsed = Parsed::default();
    let mut r = report(1, 1, 1);
    for nanos in [-1, 1_000_000_000, i32::MIN, i32::MAX] {
        r.taken_at = Some(prost_types::Timestamp { seconds: 1, nanos });
        let refused = validate(&r, &mut parsed).unwrap_err();
        assert!(refused.0.contains("taken_at.nanos"), "{refused}");
    }
    for nanos in [0, 999_999_999] {
        r.taken_at = Some(prost_types::Timestamp { seconds: 1, nanos });
        validate(&r, &mut parsed).unwrap();
    }
}

/// A taken_at outside a protobuf Timestamp's range (years 1 to 9999) is
/// refused, naming the field: nothing downstream (RFC 3339, the CLI) can
/// write it. Its ends pass.
#[test]
fn taken_at_outside_years_1_to_9999_is_refused() {
    let mut parsed = Parsed::default();
    let mut r = report(1, 1, 1);
    for seconds in [253_402_300_800, i64::MAX, -62_135_596_801, i64::MIN] {
        r.taken_at = Some(prost_types::Timestamp { seconds, nanos: 0 });
        let refused = validate(&r, &mut parsed).unwrap_err();
        assert!(refused.0.contains("taken_at.seconds"), "{refused}");
        assert!(refused.0.contains("9999"), "{refused}");
    }
    for seconds in [253_402_300_799, -62_135_596_800, 0] {
        r.taken_at = Some(prost_types::Timestamp {
            seconds,
            nanos: 999_999_999,
        });
        validate(&r, &mut parsed).unwrap();
    }
}

/// Two taken_at as far apart as their fields go (validation aside) do not
/// overflow: the report covers its interval, as for any unusable clock.
#[test]
fn taken_at_far_apart_does_not_overflow() {
    let at = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
    for (first, second) in [
        (at(i64::MIN, 0), at(i64::MAX, 0)),
        (at(i64::MAX, 0), at(i64::MIN, 0)),
        (at(0, i32::MIN), at(7200, i32::MAX)),
        (at(0, i32::MAX), at(0, i32::MIN)),
    ] {
        let c = IngestCounters::default();
        let mut s = AgentState::new("n1".into());
        let mut t = AgentTick::default();
        let mut parsed = Parsed::default();
        let mut next = |seq, opened, taken_at| {
            let mut r = report(1, seq, opened);
            validate(&r, &mut parsed).unwrap();
            r.taken_at = taken_at;
            s.apply(&r, &parsed, &c);
            s.take_tick(Instant::now(), 1.0, &mut t);
        };
        next(1, 100, first);
        next(2, 130, second);
        assert_eq!(t.endpoints[0].delta.conns, 30);
    }
}

/// Two reports whose timestamps are 1 ns apart (the node's clock stepped
/// back by about an interval): the growth between them is measured over
/// the interval the report states, not over a nanosecond.
#[test]
fn reports_a_clock_step_apart_are_measured_over_their_interval() {
    let c = IngestCounters::default();
    let mut s = AgentState::new("n1".into());
    let mut t = AgentTick::default();
    let at = |seq, opened, nanos| AgentReport {
        taken_at: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos,
        }),
        ..report(1, seq, opened)
    };
    apply(&mut s, &at(1, 100, 0), &c);
    s.take_tick(Instant::now(), 1.0, &mut t);
    apply(&mut s, &at(2, 101, 1), &c);
    s.take_tick(Instant::now(), 1.0, &mut t);
    assert_eq!(t.endpoints[0].rate[0], 1.0);
    assert_eq!(t.endpoints[0].delta.conns, 1);
    // A report that says no interval: a second.
    let mut r = at(3, 103, 2);
    r.interval_seconds = 0.0;
    apply(&mut s, &r, &c);
    s.take_tick(Instant::now(), 1.0, &mut t);
    assert_eq!(t.endpoints[0].rate[0], 2.0);
}

/// Labels name pools in metrics, webhooks and the API, and the agent's
/// version is kept per agent: each is bounded, by name.
#[test]
fn long_labels_and_versions_are_refused() {
    let mut parsed = Parsed::default();
    let long = "x".repeat(super::validate::MAX_LABEL_BYTES + 1);
    let mut r = report(1, 1, 1);
    r.listeners = vec![v1::Listener {
        address: "10.0.0.1".into(),
        port: 80,
        protocol: v1::Protocol::Tcp as i32,
        service: long.clone(),
    }];
    let refused = validate(&r, &mut parsed).unwrap_err();
    assert!(
        refused
            .0
            .contains("listener 10.0.0.1:80 has a service label longer than 256"),
        "{refused}"
    );
    r.listeners[0].service = "web".into();
    validate(&r, &mut parsed).unwrap();
    r.agent_version = long;
    let refused = validate(&r, &mut parsed).unwrap_err();
    assert!(
        refused.0.contains("agent_version longer than 256"),
        "{refused}"
    );
}

/// Report `seq` of an agent with a server endpoint `a` and a client one
/// `b`, each at its count (`None`: not listed).
fn a_and_b(seq: u64, a: u64, b: Option<u64>) -> AgentReport {
    let mut endpoints = vec![ep("10.0.0.1", 80, v1::Direction::Serves, a)];
    endpoints.extend(b.map(|b| ep("10.0.0.2", 9000, v1::Direction::SendsTo, b)));
    AgentReport {
        endpoints,
        ..report(1, seq, 0)
    }
}

/// `b`'s totals in a tick, once per time it is listed.
fn b_totals(t: &AgentTick) -> Vec<u64> {
    (t.endpoints.iter())
        .filter(|e| e.key.port == 9000)
        .map(|e| e.total)
        .collect()
}

/// An endpoint the agent stops listing (it retired it once the collector
/// acknowledged its last totals) before a tick took its growth: that
/// growth still reaches the next tick, then the endpoint goes.
#[test]
fn growth_of_an_endpoint_that_leaves_before_a_tick_reaches_the_tick() {
    let c = IngestCounters::default();
    let mut s = AgentState::new("n1".into());
    let mut t = AgentTick::default();
    apply(&mut s, &a_and_b(1, 10, Some(5)), &c);
    s.take_tick(Instant::now(), 1.0, &mut t);
    apply(&mut s, &a_and_b(2, 12, Some(25)), &c);
    apply(&mut s, &a_and_b(3, 13, None), &c);
    s.take_tick(Instant::now(), 1.0, &mut t);
    assert_eq!(b_totals(&t), [20], "{:#?}", t.endpoints);
    // Its counts taken, it is gone.
    let layout = t.layout;
    s.take_tick(Instant::now(), 1.0, &mut t);
    assert_eq!(t.endpoints.len(), 1);
    assert_ne!(t.layout, layout, "the pools are built again without it");
    // One that leaves with nothing untaken goes at once.
    apply(&mut s, &a_and_b(4, 14, Some(1)), &c);
    s.take_tick(Instant::now(), 1.0, &mut t);
    apply(&mut s, &a_and_b(5, 15, Some(1)), &c);
    s.take_tick(Instant::now(), 1.0, &mut t);
    apply(&mut s, &a_and_b(6, 16, None), &c);
    assert_eq!(s.endpoints.len(), 1);
}

/// An endpoint that leaves and comes back (counted again from zero)
/// before a tick: one endpoint, its untaken counts and its new ones, and
/// it stays.
#[test]
fn an_endpoint_back_before_the_tick_that_saw_it_leave_stays_with_its_counts() {
    let c = IngestCounters::default();
    let mut s = AgentState::new("n1".into());
    let mut t = AgentTick::default();
    apply(&mut s, &a_and_b(1, 10, Some(5)), &c);
    s.take_tick(Instant::now(), 1.0, &mut t);
    apply(&mut s, &a_and_b(2, 12, Some(25)), &c);
    apply(&mut s, &a_and_b(3, 13, None), &c);
    apply(&mut s, &a_and_b(4, 14, Some(3)), &c);
    s.take_tick(Instant::now(), 1.0, &mut t);
    assert_eq!(b_totals(&t), [23], "{:#?}", t.endpoints);
    apply(&mut s, &a_and_b(5, 15, Some(4)), &c);
    s.take_tick(Instant::now(), 1.0, &mut t);
    assert_eq!(b_totals(&t), [24], "{:#?}", t.endpoints);
    assert!(!t.endpoints.iter().any(|e| e.reset));
}

/// A state whose lock a panic poisoned (the tick catches its panics) is
/// still aged out like any other, not kept for ever.
#[test]
fn an_agent_whose_lock_was_poisoned_is_still_forgotten() {
    let registry = Registry::default();
    let mut stream = ReportStream::new(None);
    stream.ingest(&registry, &report(1, 1, 100)).unwrap();
    let state = registry.get_or_insert("n1").expect("room");
    let poisoned = std::thread::spawn(move || {
        let _held = state.lock().unwrap();
        panic!("a panic while the state is locked");
    });
    assert!(poisoned.join().is_err());
    let later = Instant::now() + Duration::from_secs(60);
    assert_eq!(registry.forget_older_than(later, 30.0).len(), 1);
    assert!(registry.all().is_empty());
}

/// A second stream of the same agent run takes its reports over; the old
/// one, replaying what was processed, does not take the name back, so its
/// end does not free the name while the new stream lives: another process
/// under that name is still refused.
#[test]
fn an_old_stream_replaying_does_not_take_the_name_back() {
    let registry = Registry::default();
    let mut old = ReportStream::new(None);
    old.ingest(&registry, &report(1, 1, 100)).unwrap();
    let mut new = ReportStream::new(None);
    new.ingest(&registry, &report(1, 2, 110)).unwrap();
    let ack = old.ingest(&registry, &report(1, 1, 100)).unwrap();
    assert_eq!(ack.acked_sequence, 2, "a replay");
    drop(old);
    let mut other = ReportStream::new(None);
    let second = AgentReport {
        agent_run: 8,
        ..report(1, 1, 5)
    };
    assert!(matches!(
        other.ingest(&registry, &second),
        Err(super::StreamEnd::NameTaken(_))
    ));
    // Once the live stream ends, a restarted agent is taken.
    drop(new);
    other
        .ingest(&registry, &second)
        .expect("taken once the name is free");
}

/// One agent's reports, each applied and taken by a tick of its own.
struct Ticks {
    counters: IngestCounters,
    agent: AgentState,
    tick: AgentTick,
}

impl Ticks {
    fn new() -> Self {
        Self {
            counters: IngestCounters::default(),
            agent: AgentState::new("n1".into()),
            tick: AgentTick::default(),
        }
    }

    /// Applies `r` and ticks: the first endpoint's entry in the tick.
    fn take(&mut self, r: AgentReport) -> &super::TickEndpoint {
        apply(&mut self.agent, &r, &self.counters);
        (self.agent).take_tick(Instant::now(), 1.0, &mut self.tick);
        &self.tick.endpoints[0]
    }

    /// The failed attempts `r` weighs, and the exact failed total.
    fn weigh(&mut self, r: AgentReport) -> (u64, u64) {
        let e = self.take(r);
        (e.delta.failed, e.failed_total)
    }

    /// Whether `r` is a new baseline, its deltas unknown.
    fn resets(&mut self, r: AgentReport) -> bool {
        self.take(r).reset
    }
}

/// A report from a balancer's node of before `conns_failed_unanswered`,
/// with `opened`, `failed` and `unanswered` attempts to one backend so far.
fn attempts(seq: u64, opened: u64, failed: u64, unanswered: u64) -> AgentReport {
    attempts_of(seq, opened, failed, unanswered, None)
}

/// [`attempts`] from an agent that says how many of its failed attempts
/// it had counted unanswered (`failed_unanswered`).
fn attempts_of(
    seq: u64,
    opened: u64,
    failed: u64,
    unanswered: u64,
    failed_unanswered: Option<u64>,
) -> AgentReport {
    let mut e = ep("10.0.0.9", 80, v1::Direction::SendsTo, 0);
    e.totals = Some(v1::Counters {
        conns_opened: opened,
        conns_failed: failed,
        conns_unanswered: unanswered,
        conns_failed_unanswered: failed_unanswered,
        ..Default::default()
    });
    AgentReport {
        endpoints: vec![e],
        ..report(1, seq, 0)
    }
}

/// The same outage from an agent that says which failures it had counted
/// unanswered: each attempt weighs once, when it goes unanswered, and its
/// failure never again, not even once the outage is over and nothing new
/// goes unanswered (where an agent of before weighs the outage's last
/// attempts twice). A refused attempt weighs at once, as before, and so
/// does the failure of an attempt whose unanswered count weighed nothing
/// (the node opened connections to the backend meanwhile).
#[test]
fn an_attempt_said_unanswered_weighs_once_though_its_failure_comes_after_the_outage() {
    let mut n = Ticks::new();
    n.weigh(attempts_of(1, 0, 0, 0, Some(0)));
    assert_eq!(n.weigh(attempts_of(2, 0, 0, 4, Some(0))), (4, 0));
    // Four more unanswered while the first four fail.
    assert_eq!(n.weigh(attempts_of(3, 0, 4, 8, Some(4))), (4, 4));
    // The outage is over, its clients gone: the last four fail.
    assert_eq!(n.weigh(attempts_of(4, 0, 8, 8, Some(8))), (0, 8));
    // Two refused, and one unanswered then refused by its retry.
    assert_eq!(n.weigh(attempts_of(5, 0, 11, 9, Some(9))), (3, 11));
    // Back: 50 opened, and 3 attempts unanswered, weighing nothing
    // beside them (SYNs lost and answered on a retry, as a rule)...
    assert_eq!(n.weigh(attempts_of(6, 50, 11, 12, Some(9))), (0, 11));
    // ...but they failed: nothing weighed them yet, so their failures do.
    assert_eq!(n.weigh(attempts_of(7, 50, 14, 12, Some(12))), (3, 14));
    // Failed-unanswered going backwards within the epoch is a reset.
    assert!(n.resets(attempts_of(8, 50, 14, 12, Some(2))));
}

/// An outage behind a balancer that gives attempts up later than a report,
/// counted by an agent of before `conns_failed_unanswered`: each attempt is counted unanswered at once and failed reports later, and
/// weighs once as evidence in a steady outage; a refused attempt (failed,
/// never unanswered) weighs at once; unanswered attempts in an interval
/// that opened connections to the backend are SYNs lost and answered on a
/// retry, and weigh nothing. The exact failed total counts failures alone.
#[test]
fn an_attempt_unanswered_and_later_failed_weighs_once_in_a_steady_outage() {
    let mut n = Ticks::new();
    n.weigh(attempts(1, 0, 0, 0));
    // Four attempts unanswered: evidence at once, none failed yet.
    assert_eq!(n.weigh(attempts(2, 0, 0, 4)), (4, 0));
    // Four more unanswered while the first four fail: four new ones.
    assert_eq!(n.weigh(attempts(3, 0, 4, 8)), (4, 4));
    // The last four fail, nothing new unanswered: the report's four
    // failures weigh (the same attempts as the last report's unanswered
    // ones: where an outage ends, its last attempts weigh twice).
    assert_eq!(n.weigh(attempts(4, 0, 8, 8)), (4, 8));
    // Two refused (failed at once, never unanswered).
    assert_eq!(n.weigh(attempts(5, 0, 10, 8)), (2, 10));
    // Back: 50 opened, 3 of them after their SYN went unanswered.
    assert_eq!(n.weigh(attempts(6, 50, 10, 11)), (0, 10));
    // Unanswered going backwards within the epoch is a reset, not a delta.
    assert!(n.resets(attempts(7, 50, 10, 3)));
}

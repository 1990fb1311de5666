//! DOWN: a member whose own agent stopped listing a listener on its port
//! is down, not starved by the balancer.

use super::*;
use crate::detect::{
    sim::{LongLived, LongLivedSpec, Rng, member_id},
    tests::input,
    tests_load::paged,
};

/// Three equal members at about 100 new connections per tick (Poisson);
/// member 0 gets `own(t)` of its share and its agent reports
/// `listening(t)`. Returns every transition with its tick, and the
/// verdicts of each tick.
fn three_members(
    ticks: std::ops::Range<u64>,
    d: &mut Detector,
    rng: &mut Rng,
    own: impl Fn(u64) -> f64,
    listening: impl Fn(u64) -> Option<bool>,
) -> (Vec<(u64, Transition)>, Vec<PoolVerdict>) {
    let mut log = Vec::new();
    let mut verdicts = Vec::new();
    for t in ticks {
        let share = own(t);
        // What member 0 does not get goes to the others.
        let others = 100.0 / 3.0 * (1.0 + (1.0 - share) / 2.0);
        let counts = [
            rng.poisson(100.0 / 3.0 * share),
            rng.poisson(others),
            rng.poisson(others),
        ];
        let mut inp = input(t, &counts, &[1.0; 3]);
        for m in &mut inp.members {
            m.listening = Some(true);
        }
        inp.members[0].listening = listening(t);
        let (v, tr) = d.evaluate(&inp);
        log.extend(tr.into_iter().map(|x| (t, x)));
        verdicts.push(v);
    }
    (log, verdicts)
}

fn fired(log: &[(u64, Transition)], kind: AlertKind) -> Vec<&Alert> {
    log.iter()
        .filter_map(|(_, x)| match x {
            Transition::Fired(a) if a.kind == kind => Some(a),
            _ => None,
        })
        .collect()
}

/// Member 0 down (no listener) for ticks 60..70, as its agent says one
/// tick late (tick 60 still lists the listener).
fn outage(t: u64) -> (f64, Option<bool>) {
    match t {
        60 => (0.0, Some(true)),
        61..70 => (0.0, Some(false)),
        _ => (1.0, Some(true)),
    }
}

#[test]
fn a_member_that_stops_listening_is_down_not_zero_and_judged_from_its_return() {
    let mut d = Detector::default();
    let mut rng = Rng::new(41);
    let (log, v) = three_members(0..100, &mut d, &mut rng, |t| outage(t).0, |t| outage(t).1);
    assert!(paged(&log).is_empty(), "{:#?}", paged(&log));
    assert!(fired(&log, AlertKind::Zero).is_empty(), "{log:#?}");
    // While down: DOWN, out of the shares (its peers are not SKEW_HIGH for
    // taking its connections), and a warning of its own kind.
    let during = &v[65];
    assert_eq!(during.members[0].verdict, Verdict::Down { page: false });
    assert!(during.members[0].reason.contains("no listener"));
    for m in &during.members[1..] {
        assert_eq!(m.verdict, Verdict::Ok, "{m:#?}");
        let s = m.server.as_ref().expect("server view");
        assert!((s.expected_share - 0.5).abs() < 1e-9, "{s:#?}");
    }
    let down = fired(&log, AlertKind::Down);
    assert_eq!(down.len(), 1, "{log:#?}");
    assert_eq!(down[0].member, v[65].members[0].id);
    assert_eq!(down[0].severity, Severity::Warning);
    assert_eq!((down[0].signal, down[0].cause), (None, None));
    // Back: it joins the rotation again (SETTLING), and its balancer takes
    // it in at once, so it is judged from the next tick, OK, and the DOWN
    // warning resolves.
    assert_eq!(v[70].members[0].verdict, Verdict::Settling);
    assert!(
        v[70].members[0]
            .reason
            .contains("joined the pool 0 ticks ago")
    );
    for p in &v[71..] {
        let m = &p.members[0];
        assert_eq!(m.verdict, Verdict::Ok, "tick {}: {m:#?}", p.tick);
    }
    assert!(
        log.iter()
            .any(|(_, x)| matches!(x, Transition::Resolved(a) if a.kind == AlertKind::Down))
    );
}

#[test]
fn the_ticks_it_was_down_are_not_evidence_after_its_return() {
    // Back at tick 70, it gets nothing on its first tick back: only that
    // tick's expectation counts, not the outage's (judged at once, without
    // the grace a member joining its balancer's rotation again has).
    let mut d = Detector::new(Settings {
        join_grace_ticks: 0,
        ..Settings::default()
    });
    let mut rng = Rng::new(42);
    let (_, v) = three_members(
        0..71,
        &mut d,
        &mut rng,
        |t| if (60..=70).contains(&t) { 0.0 } else { 1.0 },
        |t| Some(!(60..70).contains(&t)),
    );
    let back = v[70].members[0].server.as_ref().expect("server view");
    assert!(
        back.zero_expected > 20.0 && back.zero_expected < 50.0,
        "one tick's expectation (about 33), not eleven: {back:#?}"
    );
    assert_eq!(back.window_expected, back.zero_expected, "{back:#?}");
}

/// Member 0 gets nothing from tick 60 on while its agent reports
/// `listening` throughout: the ZERO and DOWN alerts fired by tick 70.
fn silent_from_60(seed: u64, listening: Option<bool>) -> (Vec<Alert>, Vec<Alert>) {
    let mut d = Detector::default();
    let mut rng = Rng::new(seed);
    let (log, _) = three_members(
        0..70,
        &mut d,
        &mut rng,
        |t| if t >= 60 { 0.0 } else { 1.0 },
        |_| listening,
    );
    let cloned = |kind| fired(&log, kind).into_iter().cloned().collect();
    (cloned(AlertKind::Zero), cloned(AlertKind::Down))
}

#[test]
fn a_listening_member_without_new_connections_still_pages_zero_routing() {
    let (zero, down) = silent_from_60(43, Some(true));
    assert_eq!(zero.len(), 1, "{zero:#?}");
    assert_eq!(zero[0].severity, Severity::Page);
    assert_eq!(zero[0].signal, Some(Signal::NewConnections));
    assert_eq!(zero[0].cause, Some(Cause::Routing));
    assert!(down.is_empty(), "{down:#?}");
}

#[test]
fn a_member_never_seen_listening_is_judged_on_its_share() {
    // Its agent owns the address but never lists a listener on the port
    // (the node forwards it elsewhere): that says nothing, so silence
    // there is still ZERO.
    let (zero, down) = silent_from_60(44, Some(false));
    assert_eq!(zero.len(), 1, "{zero:#?}");
    assert_eq!(zero[0].cause, Some(Cause::Routing));
    assert!(down.is_empty(), "{down:#?}");
}

#[test]
fn a_member_down_for_long_pages_down() {
    let mut d = Detector::default();
    let mut rng = Rng::new(45);
    let page_after = d.settings.down_page_ticks;
    let (log, v) = three_members(
        0..60 + page_after + 5,
        &mut d,
        &mut rng,
        |t| if t >= 60 { 0.0 } else { 1.0 },
        |t| Some(t < 60),
    );
    let pages = paged(&log);
    assert_eq!(pages.len(), 1, "{pages:#?}");
    let (at, a) = pages[0];
    assert_eq!(a.kind, AlertKind::Down);
    assert_eq!(a.since_tick, 60, "{a:#?}");
    // Down for `down_page_ticks`, and confirmed like any page.
    assert!(
        (60 + page_after..=60 + page_after + 2).contains(&at),
        "{at}"
    );
    let last = v.last().expect("verdicts");
    assert_eq!(last.members[0].verdict, Verdict::Down { page: true });
}

/// The pinned demo's story: three backends, 150 gRPC channels that never
/// reconnect on their own; backend 0 stops for three ticks and its 50
/// clients reconnect to the others, each twice (the balancer's retries),
/// counted a tick before its agent reports the listener gone. `listening`
/// says whether the agents' listener reports reach the detector. Returns
/// the pages.
fn pinned_restart(listening: bool) -> Vec<(u64, Alert)> {
    let mut rng = Rng::new(46);
    let mut spec = LongLivedSpec::balanced(3, 150);
    spec.lifetime = f64::INFINITY;
    let mut pool = LongLived::new(spec, &mut rng);
    let mut d = Detector::default();
    let mut log = Vec::new();
    for t in 0..240 {
        match t {
            120 => pool.set_down(0, true, &mut rng),
            123 => pool.set_down(0, false, &mut rng),
            _ => {}
        }
        let mut numbers = pool.tick(&mut rng);
        if t == 120 {
            for n in &mut numbers {
                n.new_conns *= 2;
            }
        }
        let mut inp = pool.input("grpc", t, &numbers);
        if t == 120 {
            inp.members[0].listening = Some(true);
        }
        if !listening {
            for m in &mut inp.members {
                m.listening = None;
            }
        }
        log.extend(d.evaluate(&inp).1.into_iter().map(|x| (t, x)));
    }
    paged(&log)
        .into_iter()
        .map(|(t, a)| (t, a.clone()))
        .collect()
}

#[test]
fn a_restart_under_pinned_channels_pages_pinned_only() {
    let pages = pinned_restart(true);
    assert_eq!(pages.len(), 1, "{pages:#?}");
    let (_, a) = &pages[0];
    assert_eq!(a.member, member_id(0));
    assert_eq!(a.kind, AlertKind::Zero);
    assert_eq!(a.signal, Some(Signal::ActiveConnections));
    assert_eq!(a.cause, Some(Cause::Pinned));
    // Without the agents' listener reports the same traffic also pages
    // ZERO for routing: the page this test rules out.
    let blind = pinned_restart(false);
    assert!(
        blind.iter().any(|(_, a)| a.kind == AlertKind::Zero
            && a.signal == Some(Signal::NewConnections)
            && a.cause == Some(Cause::Routing)),
        "{blind:#?}"
    );
}

/// Every member down at once (the total outage): the pool has no eligible
/// member and no traffic, so no share is judged, but DOWN needs neither.
#[test]
fn every_member_down_at_once_still_alerts_down() {
    let mut d = Detector::default();
    let page_after = d.settings.down_page_ticks;
    let mut log = Vec::new();
    let mut last = None;
    for t in 0..60 + page_after + 5 {
        let up = t < 60;
        let counts = if up { [33, 33, 34] } else { [0, 0, 0] };
        let mut inp = input(t, &counts, &[1.0; 3]);
        for m in &mut inp.members {
            m.listening = Some(up);
        }
        let (v, tr) = d.evaluate(&inp);
        log.extend(tr.into_iter().map(|x| (t, x)));
        last = Some(v);
    }
    let down = fired(&log, AlertKind::Down);
    assert_eq!(down.len(), 3, "{log:#?}");
    assert!(down.iter().all(|a| a.since_tick == 60), "{down:#?}");
    let pages = paged(&log);
    assert_eq!(pages.len(), 3, "{pages:#?}");
    assert!(pages.iter().all(|(_, a)| a.kind == AlertKind::Down));
    let last = last.expect("verdicts");
    assert_eq!(last.verdict, Verdict::InsufficientTraffic, "{last:#?}");
}

#[test]
fn a_member_back_before_its_balancer_sends_again_does_not_page() {
    // Listening again at tick 70, but HAProxy waits for `rise 2` checks
    // (`inter 2s`) before it sends to it again: nothing until tick 74.
    let back = |grace: u64, seed: u64| {
        let mut d = Detector::new(Settings {
            join_grace_ticks: grace,
            ..Settings::default()
        });
        let mut rng = Rng::new(seed);
        let (log, v) = three_members(
            0..120,
            &mut d,
            &mut rng,
            |t| if (60..74).contains(&t) { 0.0 } else { 1.0 },
            |t| Some(!(61..70).contains(&t)),
        );
        (fired(&log, AlertKind::Zero).len(), v)
    };
    for seed in 0..20 {
        let (zero, v) = back(Settings::default().join_grace_ticks, seed);
        assert_eq!(zero, 0, "seed {seed}");
        assert_eq!(v[72].members[0].verdict, Verdict::Settling);
        assert_eq!(v[80].members[0].verdict, Verdict::Ok, "{:#?}", v[80]);
        // Judged at once on its return, it paged.
        assert_eq!(back(0, seed).0, 1, "seed {seed}");
    }
}

#[test]
fn a_member_back_from_a_reboot_joins_though_its_agent_was_stale_between() {
    // Down at 61..69, its agent stale at 69 and 70 (the host rebooting),
    // listening again at 71; its balancer sends to it again at 74.
    for seed in 0..10 {
        let mut d = Detector::default();
        let mut rng = Rng::new(seed);
        let mut log = Vec::new();
        for t in 0..120u64 {
            let share = if (60..74).contains(&t) { 0.0 } else { 1.0 };
            let others = 100.0 / 3.0 * (1.0 + (1.0 - share) / 2.0);
            let counts = [
                rng.poisson(100.0 / 3.0 * share),
                rng.poisson(others),
                rng.poisson(others),
            ];
            let mut inp = input(t, &counts, &[1.0; 3]);
            for m in &mut inp.members {
                m.listening = Some(true);
            }
            inp.members[0].listening = match t {
                61..69 => Some(false),
                69 | 70 => None,
                _ => Some(true),
            };
            if let (69 | 70, Some(v)) = (t, inp.members[0].server.as_mut()) {
                v.fresh = false;
            }
            let (_, tr) = d.evaluate(&inp);
            log.extend(tr.into_iter().map(|x| (t, x)));
        }
        assert!(
            fired(&log, AlertKind::Zero).is_empty(),
            "seed {seed}: {log:#?}"
        );
    }
}

#[test]
fn a_member_down_stale_and_down_again_joins_once() {
    let mut d = Detector::default();
    let mut rng = Rng::new(1);
    let mut joined = Vec::new();
    for t in 0..60u64 {
        let mut counts = [0, rng.poisson(50.0), rng.poisson(50.0)];
        if !(40..50).contains(&t) {
            counts[0] = rng.poisson(50.0);
        }
        let mut inp = input(t, &counts, &[1.0; 3]);
        for m in &mut inp.members {
            m.listening = Some(true);
        }
        inp.members[0].listening = match t {
            40..45 | 46..50 => Some(false),
            45 => None,
            _ => Some(true),
        };
        let (v, _) = d.evaluate(&inp);
        if v.members[0].reason.contains("joined the pool 0 ticks ago") {
            joined.push(t);
        }
    }
    assert_eq!(joined, [50]);
}

/// Member 0's host on a tick: whether its own agent reports, how many of
/// its balancers' attempts to it open (of its share) and how many fail,
/// and whether it listens (as its agent says while it reports).
#[derive(Clone, Copy)]
struct Host {
    agent: bool,
    opens: bool,
    failed: u64,
    listens: bool,
}

impl Host {
    /// Its agent reports it listening; its balancers' attempts open.
    const UP: Host = Host {
        agent: true,
        opens: true,
        failed: 0,
        listens: true,
    };

    /// Its agent silent; its balancers' attempts fail, `failed` a tick.
    fn gone(failed: u64) -> Host {
        Host {
            agent: false,
            opens: false,
            failed,
            listens: true,
        }
    }
}

/// Three equal members at about 100 new connections a tick, seen in both
/// views (the LB view counts what the servers do, plus the failed
/// attempts), member 0's host as `host(t)` says. A stale agent's figures
/// are its last rate carried on, as the collector carries them. Returns
/// every transition with its tick, and the verdicts.
fn host_gone(
    ticks: std::ops::Range<u64>,
    seed: u64,
    settings: Settings,
    host: impl Fn(u64) -> Host,
) -> (Vec<(u64, Transition)>, Vec<PoolVerdict>) {
    let mut d = Detector::new(settings);
    let mut rng = Rng::new(seed);
    let (mut log, mut verdicts) = (Vec::new(), Vec::new());
    let mut carried = 33;
    for t in ticks {
        let h = host(t);
        let others = if h.opens { 100.0 / 3.0 } else { 50.0 };
        let counts = [
            if h.opens { rng.poisson(100.0 / 3.0) } else { 0 },
            rng.poisson(others),
            rng.poisson(others),
        ];
        let mut inp = input(t, &counts, &[1.0; 3]);
        for m in &mut inp.members {
            m.listening = Some(true);
            m.lb = m.server;
        }
        let m0 = &mut inp.members[0];
        if let Some(lb) = m0.lb.as_mut() {
            lb.failed = h.failed;
        }
        match (h.agent, m0.server.as_mut()) {
            (true, Some(v)) => {
                carried = v.new_conns;
                m0.listening = Some(h.listens);
            }
            (false, Some(v)) => {
                (v.fresh, v.new_conns) = (false, carried);
                m0.listening = None;
            }
            (_, None) => unreachable!("input gives a server view"),
        }
        let (v, tr) = d.evaluate(&inp);
        log.extend(tr.into_iter().map(|x| (t, x)));
        verdicts.push(v);
    }
    (log, verdicts)
}

/// Member 0's host dies at tick 60 and comes back at 100: its agent goes
/// with it, and its balancers' attempts to it fail, `failed(t)` a tick.
fn died_at_60(failed: impl Fn(u64) -> u64) -> impl Fn(u64) -> Host {
    move |t| match t {
        60..100 => Host::gone(failed(t)),
        _ => Host::UP,
    }
}

#[test]
fn a_host_gone_with_its_agent_is_down_as_its_balancers_fail_to_reach_it() {
    // Balancers without health checks try it with its share (33 a tick),
    // or health checks alone keep trying it (one every other tick).
    type Failed = fn(u64) -> u64;
    let shapes: [(&str, Failed); 2] = [("no health checks", |_| 33), ("health checks", |t| t % 2)];
    for (shape, failed) in shapes {
        for seed in 0..5 {
            let (log, v) = host_gone(0..140, seed, Settings::default(), died_at_60(failed));
            let down = fired(&log, AlertKind::Down);
            assert_eq!(down.len(), 1, "{shape}, seed {seed}: {log:#?}");
            let a = down[0];
            assert_eq!(a.member, v[0].members[0].id);
            assert_eq!(a.view, View::Lb, "{a:#?}");
            assert!(a.since_tick <= 62, "{shape}: {a:#?}");
            assert!(
                a.summary.contains("its own agent is silent")
                    && a.summary.contains("down or cut off")
                    && a.summary.contains("connection attempts to it failed"),
                "{}",
                a.summary
            );
            // Out of the shares: its peers take its connections, and are
            // judged against halves.
            let during = &v[80];
            assert_eq!(during.members[0].verdict, Verdict::Down { page: false });
            for m in &during.members[1..] {
                assert_eq!(m.verdict, Verdict::Ok, "{shape}: {m:#?}");
            }
            // Nothing else: no ZERO for routing, no STALE beside the DOWN.
            let other: Vec<_> = (log.iter())
                .filter_map(|(t, x)| match x {
                    Transition::Fired(a) if a.kind != AlertKind::Down => Some((t, a)),
                    _ => None,
                })
                .collect();
            assert!(other.is_empty(), "{shape}, seed {seed}: {other:#?}");
            // Back at 100: it joins and is judged OK, and the DOWN resolves.
            assert_eq!(v[100].members[0].verdict, Verdict::Settling, "{shape}");
            assert_eq!(v[130].members[0].verdict, Verdict::Ok, "{shape}");
            assert!(log.iter().any(|(t, x)| *t >= 100
                && matches!(x, Transition::Resolved(a) if a.kind == AlertKind::Down)));
        }
    }
}

#[test]
fn a_host_gone_for_long_pages_down() {
    let settings = Settings::default();
    let page_after = settings.down_page_ticks;
    let end = 62 + page_after + 5;
    let (log, v) = host_gone(0..end, 7, settings, |t| match t {
        ..60 => Host::UP,
        _ => Host::gone(33),
    });
    let pages = paged(&log);
    assert_eq!(pages.len(), 1, "{pages:#?}");
    let (at, a) = pages[0];
    assert_eq!(a.kind, AlertKind::Down);
    assert!(
        (60 + page_after..=62 + page_after + 2).contains(&at),
        "{at}"
    );
    let last = v.last().expect("verdicts");
    assert_eq!(last.members[0].verdict, Verdict::Down { page: true });
}

#[test]
fn a_silent_agent_whose_member_its_balancers_reach_or_stop_dialling_is_no_data() {
    // The agent alone died: the balancers' connections to it open, some
    // failing beside them (a backlog that overflows now and then).
    let agent_died = |t| Host {
        agent: t < 60,
        failed: u64::from(t >= 60) * 2,
        ..Host::UP
    };
    // The agent died and the balancers stopped dialling it at once: no
    // attempt says anything, and no data is not zero.
    let left_out = |t| match t {
        ..60 => Host::UP,
        _ => Host::gone(0),
    };
    // Attempts failed shortly before its agent went silent, but later
    // ones opened: it was reachable after them.
    let failed_before = |t| match t {
        ..60 => Host {
            failed: u64::from((55..58).contains(&t)) * 10,
            ..Host::UP
        },
        _ => Host::gone(0),
    };
    let shapes: [(&str, &dyn Fn(u64) -> Host); 3] = [
        ("agent died", &agent_died),
        ("left out", &left_out),
        ("failed before", &failed_before),
    ];
    for (shape, host) in shapes {
        let (log, v) = host_gone(0..100, 3, Settings::default(), host);
        assert!(fired(&log, AlertKind::Down).is_empty(), "{shape}: {log:#?}");
        assert!(paged(&log).is_empty(), "{shape}: {:#?}", paged(&log));
        assert_eq!(v[90].members[0].verdict, Verdict::NoData, "{shape}");
        assert_eq!(fired(&log, AlertKind::Stale).len(), 1, "{shape}: {log:#?}");
    }
}

/// Member 0 goes down at tick 60 and then every `period` ticks, for
/// `down` ticks each time (its agent says so a tick late, as in
/// [`outage`]); the transitions and verdicts of `ticks` ticks.
fn goes_down_again_and_again(
    ticks: u64,
    period: u64,
    down: u64,
    seed: u64,
) -> (Vec<(u64, Transition)>, Vec<PoolVerdict>) {
    let mut d = Detector::default();
    let mut rng = Rng::new(seed);
    let phase = |t: u64| (t >= 60).then(|| (t - 60) % period);
    three_members(
        0..ticks,
        &mut d,
        &mut rng,
        |t| match phase(t) {
            Some(p) if p <= down => 0.0,
            _ => 1.0,
        },
        |t| Some(!phase(t).is_some_and(|p| (1..=down).contains(&p))),
    )
}

#[test]
fn a_member_that_keeps_going_down_pages_though_no_outage_lasts() {
    // A crash loop: down 40 ticks, up 10, again and again. No one outage
    // reaches `down_page_ticks` (60), but it is down four fifths of the
    // time: by its second outage it is 60 ticks more down than up.
    let (log, v) = goes_down_again_and_again(300, 50, 40, 11);
    let pages = paged(&log);
    let (at, a) = pages.first().copied().expect("a DOWN page");
    assert_eq!(a.kind, AlertKind::Down, "{pages:#?}");
    assert!(
        pages.iter().all(|(_, a)| a.kind == AlertKind::Down),
        "{pages:#?}"
    );
    // 30 ticks more down than up after the first cycle, 30 more into the
    // second outage (ticks 111..=150), confirmed a tick later.
    assert!((140..=143).contains(&at), "{at}");
    let during = &v[145].members[0];
    assert_eq!(during.verdict, Verdict::Down { page: true }, "{during:#?}");
    assert!(
        during.reason.contains("it keeps going down"),
        "{}",
        during.reason
    );
    assert!(fired(&log, AlertKind::Zero).is_empty(), "{log:#?}");
}

#[test]
fn a_member_restarted_now_and_then_never_pages() {
    // Down 20 ticks every 50: each outage paid off before the next.
    for seed in 0..5 {
        let (log, v) = goes_down_again_and_again(400, 50, 20, seed);
        assert!(paged(&log).is_empty(), "seed {seed}: {:#?}", paged(&log));
        assert!(
            v.iter()
                .any(|p| p.members[0].verdict == Verdict::Down { page: false })
        );
    }
}

#[test]
fn a_dead_host_its_balancers_back_off_from_stays_down_until_it_answers() {
    // Its balancers try it for 5 ticks, then back off (HAProxy's
    // `downinter`, Envoy's outlier ejection) and dial it no more: their
    // last word was a failure, so it stays DOWN, one outage, until its
    // agent reports again at tick 140.
    let host = |t| match t {
        60..65 => Host::gone(33),
        65..140 => Host::gone(0),
        _ => Host::UP,
    };
    let settings = Settings::default();
    let page_after = settings.down_page_ticks;
    let (log, v) = host_gone(0..170, 5, settings, host);
    for p in &v[62..140] {
        let m = &p.members[0];
        assert!(
            matches!(m.verdict, Verdict::Down { .. }),
            "tick {}: {m:#?}",
            p.tick
        );
    }
    assert!(fired(&log, AlertKind::Stale).is_empty(), "{log:#?}");
    let resolved: Vec<u64> = (log.iter())
        .filter(|(_, x)| matches!(x, Transition::Resolved(a) if a.kind == AlertKind::Down))
        .map(|(t, _)| *t)
        .collect();
    assert!(resolved.iter().all(|&t| t >= 140), "{resolved:?}");
    assert!(!resolved.is_empty(), "resolved once it answers");
    let pages = paged(&log);
    assert_eq!(pages.len(), 1, "{pages:#?}");
    assert!(
        (60 + page_after..=62 + page_after + 2).contains(&pages[0].0),
        "{pages:#?}"
    );
}

#[test]
fn a_member_not_listening_whose_agent_then_goes_silent_is_down_in_one_outage() {
    // Not listening from tick 60 (its balancers' attempts refused), its
    // agent silent from tick 80: one outage from tick 60, not a second one
    // with a debt from the first.
    let host = |t| match t {
        60..80 => Host {
            opens: false,
            failed: 33,
            listens: false,
            ..Host::UP
        },
        80.. => Host::gone(33),
        _ => Host::UP,
    };
    let settings = Settings::default();
    let page_after = settings.down_page_ticks;
    let (log, v) = host_gone(0..60 + page_after + 10, 9, settings, host);
    let m = &v[90].members[0];
    assert!(m.reason.contains("its own agent is silent"), "{}", m.reason);
    assert!(
        m.reason.contains("(31 ticks)"),
        "since tick 60: {}",
        m.reason
    );
    assert!(!m.reason.contains("keeps going down"), "{}", m.reason);
    assert_eq!(fired(&log, AlertKind::Down).len(), 1, "{log:#?}");
    let pages = paged(&log);
    assert_eq!(pages.len(), 1, "{pages:#?}");
    assert!(
        (60 + page_after..=60 + page_after + 2).contains(&pages[0].0),
        "{pages:#?}"
    );
}

#[test]
fn a_drained_member_stopped_for_long_owes_no_down_debt() {
    // Drained and stopped for 200 ticks, then back in rotation; a restart
    // of 3 ticks 40 ticks later warns, as any restart does.
    let mut d = Detector::default();
    let mut rng = Rng::new(13);
    let mut log = Vec::new();
    for t in 0..360u64 {
        let drained = (60..260).contains(&t);
        let restarting = (300..303).contains(&t);
        let serves = !drained && !restarting;
        let others = if serves { 100.0 / 3.0 } else { 50.0 };
        let counts = [
            if serves { rng.poisson(100.0 / 3.0) } else { 0 },
            rng.poisson(others),
            rng.poisson(others),
        ];
        let mut inp = input(t, &counts, &[1.0; 3]);
        for m in &mut inp.members {
            m.listening = Some(true);
        }
        inp.members[0].listening = Some(serves);
        inp.members[0].draining = drained;
        let (_, tr) = d.evaluate(&inp);
        log.extend(tr.into_iter().map(|x| (t, x)));
    }
    assert!(paged(&log).is_empty(), "{:#?}", paged(&log));
    let down = fired(&log, AlertKind::Down);
    assert_eq!(down.len(), 1, "the restart warns: {log:#?}");
    assert!(down[0].since_tick >= 300, "{:#?}", down[0]);
}

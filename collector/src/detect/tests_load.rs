//! Load verdicts (open connections, bytes) on simulated pools of
//! long-lived connections.

use super::*;
use crate::detect::sim::{LongLived, LongLivedSpec, MemberTick, Rng, member_id};

/// Every transition with the tick it happened on.
type Log = Vec<(u64, Transition)>;

/// Runs `ticks` ticks of `pool` through `d`, calling `event` before each;
/// returns every transition and the last verdict.
fn drive(
    d: &mut Detector,
    pool: &mut LongLived,
    rng: &mut Rng,
    ticks: std::ops::Range<u64>,
    mut event: impl FnMut(u64, &mut LongLived, &mut Rng),
) -> (Log, PoolVerdict) {
    let mut all = Vec::new();
    let mut last = None;
    for t in ticks {
        event(t, pool, rng);
        let numbers = pool.tick(rng);
        let (v, tr) = d.evaluate(&pool.input("grpc", t, &numbers));
        all.extend(tr.into_iter().map(|x| (t, x)));
        last = Some(v);
    }
    (all, last.expect("at least one tick"))
}

/// Alerts that became pages (fired as pages, or upgraded to one), with
/// the tick.
pub(super) fn paged(tr: &[(u64, Transition)]) -> Vec<(u64, &Alert)> {
    tr.iter()
        .filter_map(|(t, x)| match x {
            Transition::Fired(a) | Transition::Updated(a) if a.severity == Severity::Page => {
                Some((*t, a))
            }
            _ => None,
        })
        .collect()
}

/// The first alert on `member`'s `signal` that fired, page or warning,
/// with the tick.
fn first_fired<'a>(tr: &'a Log, member: &str, signal: Signal) -> Option<(u64, &'a Alert)> {
    tr.iter().find_map(|(t, x)| match x {
        Transition::Fired(a) if a.member == member && a.signal == Some(signal) => Some((*t, a)),
        _ => None,
    })
}

fn first_page<'a>(tr: &'a Log, member: &str, signal: Signal) -> Option<(u64, &'a Alert)> {
    paged(tr)
        .into_iter()
        .find(|(_, a)| a.member == member && a.signal == Some(signal))
}

#[test]
fn a_member_nobody_reconnects_to_pages_pinned_and_names_the_holders() {
    // Five members, 200 clients that never reconnect: a sixth member joins
    // and gets none of them.
    let mut rng = Rng::new(21);
    let mut spec = LongLivedSpec::balanced(5, 200);
    spec.lifetime = f64::INFINITY;
    let mut pool = LongLived::new(spec, &mut rng);
    let mut d = Detector::default();
    let (before, v) = drive(&mut d, &mut pool, &mut rng, 0..120, |_, _, _| {});
    assert!(paged(&before).is_empty(), "{:#?}", paged(&before));
    assert_ne!(
        v.verdict,
        Verdict::InsufficientTraffic,
        "200 open connections are judged however few new ones: {}",
        v.reason
    );
    let (tr, v) = drive(&mut d, &mut pool, &mut rng, 120..200, |t, p, _| {
        if t == 120 {
            p.add_member(1.0);
        }
    });
    let new = member_id(5);
    let (at, a) = first_page(&tr, &new, Signal::ActiveConnections).expect("the new member pages");
    assert_eq!(a.kind, AlertKind::Zero, "{a:#?}");
    assert_eq!(a.cause, Some(Cause::Pinned));
    assert!(a.summary.contains("MAX_CONNECTION_AGE"), "{}", a.summary);
    assert!(
        a.summary.contains(&member_id(0)),
        "names the holders: {}",
        a.summary
    );
    assert!((120..=125).contains(&a.since_tick), "{}", a.since_tick);
    // The page came within 20 ticks of the member joining.
    assert!(at < 140, "{at}");
    let m = v.members.iter().find(|m| m.id == new).expect("member");
    let (_, active) = m.active.as_ref().expect("active verdict");
    assert!(active.page && active.verdict.is_zero(), "{active:#?}");
    // No other member pages.
    assert!(
        paged(&tr).iter().all(|(_, a)| a.member == new),
        "{:#?}",
        paged(&tr)
    );
}

#[test]
fn a_new_member_that_refills_in_time_only_warns() {
    // Connections live about a minute: the new member fills as clients
    // reconnect, well within the refill window.
    let mut rng = Rng::new(22);
    let mut spec = LongLivedSpec::balanced(5, 200);
    spec.lifetime = 60.0;
    let mut pool = LongLived::new(spec, &mut rng);
    let mut d = Detector::default();
    drive(&mut d, &mut pool, &mut rng, 0..200, |_, _, _| {});
    let (tr, _) = drive(&mut d, &mut pool, &mut rng, 200..600, |t, p, _| {
        if t == 200 {
            p.add_member(1.0);
        }
    });
    assert!(paged(&tr).is_empty(), "{:#?}", paged(&tr));
    let warned = tr.iter().any(|(_, t)| {
        matches!(t, Transition::Fired(a) if a.member == member_id(5)
            && a.signal == Some(Signal::ActiveConnections) && a.severity == Severity::Warning)
    });
    assert!(warned, "the refilling member is flagged: {tr:#?}");
}

#[test]
fn three_times_its_share_of_connections_pages_pinned_within_30_ticks() {
    let mut rng = Rng::new(23);
    let mut pool = LongLived::new(LongLivedSpec::balanced(10, 200), &mut rng);
    let mut d = Detector::default();
    // Twenty minutes of watching first: the pool's dispersion is learned.
    drive(&mut d, &mut pool, &mut rng, 0..1200, |_, _, _| {});
    let (tr, _) = drive(&mut d, &mut pool, &mut rng, 1200..1240, |t, p, _| {
        if t == 1200 {
            // Member 0 ends up holding 60 of the 200: 3x its share.
            p.set_held(0, 60);
        }
    });
    let (at, a) = first_page(&tr, &member_id(0), Signal::ActiveConnections).expect("pages");
    assert_eq!(a.kind, AlertKind::Skew);
    assert_eq!(a.cause, Some(Cause::Pinned), "{}", a.summary);
    assert!(at <= 1230, "{at}");
    // Bytes follow the connections: no separate bytes alert.
    assert!(
        !tr.iter()
            .any(|(_, t)| t.alert().signal == Some(Signal::Bytes)
                && t.alert().member == member_id(0)),
        "{tr:#?}"
    );
}

#[test]
fn heavier_clients_page_on_bytes_not_connections() {
    let mut rng = Rng::new(24);
    let mut pool = LongLived::new(LongLivedSpec::balanced(10, 200), &mut rng);
    let mut d = Detector::default();
    drive(&mut d, &mut pool, &mut rng, 0..1200, |_, _, _| {});
    let (tr, v) = drive(&mut d, &mut pool, &mut rng, 1200..1260, |t, p, _| {
        if t == 1200 {
            p.set_held(0, 20);
            p.load[0] = 3.0;
        }
    });
    let (_, a) = first_page(&tr, &member_id(0), Signal::Bytes).expect("a bytes page");
    assert_eq!(a.cause, Some(Cause::Pinned));
    assert!(a.summary.contains("bytes per connection"), "{}", a.summary);
    assert!(
        first_page(&tr, &member_id(0), Signal::ActiveConnections).is_none(),
        "connections are balanced"
    );
    let m = &v.members[0];
    let (_, b) = m.bytes.as_ref().expect("bytes verdict");
    assert!(b.own && b.page, "{b:#?}");
}

#[test]
fn skewed_placement_is_routing_under_the_new_connection_page() {
    // Short-lived connections and a balancer that prefers member 0 three
    // times: new connections and load skew together.
    let mut rng = Rng::new(25);
    let mut spec = LongLivedSpec::balanced(5, 400);
    spec.lifetime = 10.0;
    let mut pool = LongLived::new(spec, &mut rng);
    let mut d = Detector::default();
    drive(&mut d, &mut pool, &mut rng, 0..200, |_, _, _| {});
    let (tr, v) = drive(&mut d, &mut pool, &mut rng, 200..300, |t, p, _| {
        if t == 200 {
            p.placement[0] = 3.0;
        }
    });
    let (_, conns) = first_page(&tr, &member_id(0), Signal::NewConnections).expect("routing page");
    assert_eq!(conns.cause, Some(Cause::Routing));
    let (_, active) = v.members[0].active.as_ref().expect("active");
    assert_eq!(active.cause, Some(Cause::Routing), "{active:#?}");
    // The load alert of the same cause is grouped under the routing page.
    assert!(
        first_page(&tr, &member_id(0), Signal::ActiveConnections).is_none(),
        "{:#?}",
        paged(&tr)
    );
    assert!(tr.iter().any(|(_, t)| t.alert().member == member_id(0)
        && t.alert().signal == Some(Signal::ActiveConnections)));
}

#[test]
fn a_rolling_restart_that_refills_in_time_warns_at_most() {
    // Five members (so one at zero is page-level evidence), connections
    // living about a minute: each member in turn is down 10 ticks, comes
    // back empty and refills.
    let mut rng = Rng::new(26);
    let mut spec = LongLivedSpec::balanced(5, 200);
    spec.lifetime = 60.0;
    let mut pool = LongLived::new(spec, &mut rng);
    let mut d = Detector::default();
    drive(&mut d, &mut pool, &mut rng, 0..200, |_, _, _| {});
    let (tr, _) = drive(&mut d, &mut pool, &mut rng, 200..1700, |t, p, r| {
        let k = t - 200;
        let member = (k / 300) as usize;
        match k % 300 {
            0 => p.set_down(member, true, r),
            10 => p.set_down(member, false, r),
            _ => {}
        }
    });
    assert!(paged(&tr).is_empty(), "{:#?}", paged(&tr));
}

#[test]
fn new_connection_alerts_say_routing() {
    let mut d = Detector::default();
    let mut rng = Rng::new(27);
    let mut pool = LongLived::new(LongLivedSpec::balanced(4, 40), &mut rng);
    let mut tr = Vec::new();
    for t in 0..80 {
        let mut numbers = pool.tick(&mut rng);
        for (i, m) in numbers.iter_mut().enumerate() {
            m.new_conns = if t >= 40 && i == 1 {
                0
            } else {
                rng.poisson(30.0)
            };
        }
        tr.extend(d.evaluate(&pool.input("web", t, &numbers)).1);
    }
    let zero = tr
        .iter()
        .find(|t| t.alert().kind == AlertKind::Zero)
        .expect("ZERO")
        .alert();
    assert_eq!(zero.signal, Some(Signal::NewConnections));
    assert_eq!(zero.cause, Some(Cause::Routing));
    assert_eq!(zero.id, format!("web/{}/ZERO", member_id(1)));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Balanced pools of long-lived connections never page, whatever
        /// the size, turnover and how unequal the clients are.
        #[test]
        fn balanced_long_lived_pools_never_page(
            seed in any::<u64>(),
            members in 2usize..12,
            clients in 30usize..400,
            lifetime in prop::sample::select(vec![20.0, 180.0, 3600.0, f64::INFINITY]),
            sigma in 0.0f64..1.2,
        ) {
            let mut rng = crate::detect::sim::Rng::new(seed);
            let mut spec = LongLivedSpec::balanced(members, clients);
            spec.lifetime = lifetime;
            spec.rate_sigma = sigma;
            let mut pool = LongLived::new(spec, &mut rng);
            let mut d = Detector::default();
            let (tr, _) = drive(&mut d, &mut pool, &mut rng, 0..1500, |_, _, _| {});
            prop_assert!(paged(&tr).is_empty(), "{:#?}", paged(&tr));
        }

        /// A member with no open connection is never judged while its
        /// observer is stale.
        #[test]
        fn stale_members_are_not_judged_on_load(seed in any::<u64>(), members in 3usize..8) {
            let mut rng = crate::detect::sim::Rng::new(seed);
            let mut spec = LongLivedSpec::balanced(members, 200);
            spec.lifetime = f64::INFINITY;
            let mut pool = LongLived::new(spec, &mut rng);
            let mut d = Detector::default();
            for t in 0..100u64 {
                let mut numbers = pool.tick(&mut rng);
                numbers[0].active = 0;
                let mut inp = pool.input("p", t, &numbers);
                if let Some(v) = inp.members[0].server.as_mut() {
                    v.fresh = false;
                }
                let (v, _) = d.evaluate(&inp);
                let (_, a) = v.members[0].active.as_ref().expect("verdict");
                prop_assert_eq!(a.verdict, Verdict::NoData);
            }
        }
    }
}

/// The field's shape: four members, 40 keep-alive connections, 28 of them
/// on one (2.8x its share) for a minute. It is flagged within two ticks
/// and stays flagged while it holds 26 to 28: its evidence swings around
/// the warning bound as connections turn over, and neither the Chernoff
/// bound's slack nor its own deviation, learned into the pool's
/// dispersion in the ticks it fell short, may clear it (both did).
#[test]
fn forty_keepalive_connections_28_on_one_of_four_stay_flagged() {
    let mut rng = Rng::new(26);
    let mut pool = LongLived::new(LongLivedSpec::balanced(4, 40), &mut rng);
    let mut d = Detector::default();
    let (before, _) = drive(&mut d, &mut pool, &mut rng, 0..30, |_, _, _| {});
    assert!(before.is_empty(), "a balanced pool is quiet: {before:#?}");
    let (tr, v) = drive(&mut d, &mut pool, &mut rng, 30..90, |t, p, _| {
        if t == 30 {
            p.set_held(0, 28);
        }
    });
    let member = member_id(0);
    let (at, fired) = (tr.iter())
        .find_map(|(t, x)| match x {
            Transition::Fired(a)
                if a.member == member && a.signal == Some(Signal::ActiveConnections) =>
            {
                Some((*t, a))
            }
            _ => None,
        })
        .expect("flagged");
    assert!(at <= 31, "flagged at tick {at}");
    assert_eq!(
        (fired.kind, fired.cause),
        (AlertKind::Skew, Some(Cause::Pinned))
    );
    assert!(
        !tr.iter()
            .any(|(_, x)| matches!(x, Transition::Resolved(a) if a.member == member)),
        "still 2.6x-2.8x its share, never cleared: {tr:#?}"
    );
    let (_, active) = v.members[0].active.as_ref().expect("active");
    assert!(
        pool.held(0) >= 26 && active.verdict != Verdict::Ok,
        "{} held: {active:#?}",
        pool.held(0)
    );
}

/// Runs `ticks` ticks of `pool` with member `drained` draining from tick
/// `from` on (its balancer places nothing new there); returns every
/// transition.
fn drive_drain(
    d: &mut Detector,
    pool: &mut LongLived,
    rng: &mut Rng,
    ticks: std::ops::Range<u64>,
    (drained, from): (usize, u64),
    mut event: impl FnMut(u64, &mut LongLived),
) -> Log {
    let mut all = Vec::new();
    for t in ticks {
        if t == from {
            pool.placement[drained] = 0.0;
        }
        event(t, pool);
        let numbers = pool.tick(rng);
        let mut input = pool.input("grpc", t, &numbers);
        input.members[drained].draining = t >= from;
        let (_, tr) = d.evaluate(&input);
        all.extend(tr.into_iter().map(|x| (t, x)));
    }
    all
}

/// Four members and 200 gRPC clients that never reconnect, and a
/// detector whose drain deadline is 60 ticks.
fn never_reconnecting() -> (Rng, LongLived, Detector) {
    let mut rng = Rng::new(5);
    let mut spec = LongLivedSpec::balanced(4, 200);
    spec.lifetime = f64::INFINITY;
    let pool = LongLived::new(spec, &mut rng);
    let mut d = Detector::default();
    d.settings.drain_deadline_ticks = 60;
    (rng, pool, d)
}

#[test]
fn a_drained_member_whose_connections_never_close_warns_pinned_past_the_deadline() {
    // Four members, 200 gRPC clients that never reconnect; member 2 drains
    // at tick 60 and keeps its ~50 connections.
    let (mut rng, mut pool, mut d) = never_reconnecting();
    let drained = member_id(2);
    let tr = drive_drain(&mut d, &mut pool, &mut rng, 0..200, (2, 60), |_, _| {});
    assert!(
        paged(&tr).is_empty(),
        "a drain never pages: {:#?}",
        paged(&tr)
    );
    let fired: Vec<_> = tr
        .iter()
        .filter(|(_, x)| matches!(x, Transition::Fired(a) if a.member == drained))
        .collect();
    let [(at, Transition::Fired(a))] = fired.as_slice() else {
        panic!("one alert on the drained member: {fired:#?}");
    };
    assert!(
        (120..125).contains(at),
        "warns once the drain is 60 ticks old, at tick {at}"
    );
    assert_eq!(
        (a.kind, a.signal, a.cause, a.severity),
        (
            AlertKind::Skew,
            Some(Signal::ActiveConnections),
            Some(Cause::Pinned),
            Severity::Warning
        ),
        "{a:#?}"
    );
    let held = pool.held(2);
    assert!(held > 20, "the sim kept its connections: {held}");
    assert!(
        a.summary
            .contains(&format!("still holds {held} open connections")),
        "{}",
        a.summary
    );
    assert!(
        a.summary.contains("maximum age"),
        "names the fix: {}",
        a.summary
    );

    // Its clients finally move: the warning clears.
    let tr = drive_drain(&mut d, &mut pool, &mut rng, 200..230, (2, 60), |t, p| {
        if t == 200 {
            p.set_held(2, 0);
        }
    });
    assert!(
        tr.iter()
            .any(|(t, x)| matches!(x, Transition::Resolved(a) if a.member == drained && *t < 212)),
        "the warning clears once the connections are gone: {tr:#?}"
    );
}

#[test]
fn a_drains_age_goes_on_after_a_stale_observer() {
    // As above, the drained member's agent misses reports for four ticks
    // forty ticks into the drain: the warning still comes once the drain
    // is 60 ticks old (of ticks observed), not 60 ticks after the gap.
    let (mut rng, mut pool, mut d) = never_reconnecting();
    let drained = member_id(2);
    let mut warned = None;
    for t in 0..200 {
        if t == 60 {
            pool.placement[2] = 0.0;
        }
        let numbers = pool.tick(&mut rng);
        let mut input = pool.input("grpc", t, &numbers);
        input.members[2].draining = t >= 60;
        if (100..104).contains(&t) {
            let m = &mut input.members[2];
            for v in [m.server.as_mut(), m.lb.as_mut()].into_iter().flatten() {
                v.fresh = false;
            }
        }
        let (_, tr) = d.evaluate(&input);
        warned = warned.or(tr.iter().find_map(|x| match x {
            Transition::Fired(a) if a.member == drained && a.kind == AlertKind::Skew => Some(t),
            _ => None,
        }));
    }
    let at = warned.expect("the lingering connections warn");
    assert!(
        (120..130).contains(&at),
        "warns about 60 observed ticks into the drain, not 60 after the gap: tick {at}"
    );
}

#[test]
fn a_drain_that_empties_in_time_warns_nothing() {
    // Clients reconnect every 20 s on average: a drained member is empty
    // long before the default deadline (300 ticks).
    let mut rng = Rng::new(6);
    let mut spec = LongLivedSpec::balanced(4, 200);
    spec.lifetime = 20.0;
    let mut pool = LongLived::new(spec, &mut rng);
    let mut d = Detector::default();
    let drained = member_id(2);
    let tr = drive_drain(&mut d, &mut pool, &mut rng, 0..500, (2, 60), |_, _| {});
    assert_eq!(pool.held(2), 0, "the sim drained it");
    let on_drained: Vec<_> = tr
        .iter()
        .filter(|(_, x)| x.alert().member == drained)
        .collect();
    assert!(on_drained.is_empty(), "{on_drained:#?}");
    assert!(paged(&tr).is_empty(), "{:#?}", paged(&tr));
}

/// The same pool, skewed from its first connection: HAProxy at weight
/// 7:1:1:1 places 7 of every 10 new connections on the first member while
/// the clients are still connecting, over one tick or many. The ticks of
/// the ramp are too few connections to flag it, and must not teach the
/// pool that its imbalance is normal: once all 40 are open it is flagged
/// within a few ticks, and stays flagged.
#[test]
fn forty_keepalive_connections_28_on_one_of_four_from_the_start_are_flagged() {
    for ramp in [1u64, 2, 3, 4, 6, 8, 12] {
        let mut rng = Rng::new(27);
        let pool = LongLived::new(LongLivedSpec::balanced(4, 0), &mut rng);
        let mut d = Detector::default();
        // Smooth weighted round robin's order for 7:1:1:1.
        let order = [0usize, 0, 1, 0, 2, 0, 3, 0, 0, 0];
        let mut held = [0u64; 4];
        let mut log = Vec::new();
        let mut last = None;
        for t in 0..60u64 {
            let opened = (40 * (t + 1) / ramp).min(40) as usize;
            let before: u64 = held.iter().sum();
            let mut ticks = vec![MemberTick::default(); 4];
            for k in before as usize..opened {
                let m = order[k % order.len()];
                held[m] += 1;
                ticks[m].new_conns += 1;
            }
            for (m, x) in ticks.iter_mut().enumerate() {
                x.active = held[m];
                x.bytes_in = 240 * held[m];
                x.bytes_out = 8_600 * held[m];
            }
            let (v, tr) = d.evaluate(&pool.input("web", t, &ticks));
            log.extend(tr.into_iter().map(|x| (t, x)));
            last = Some(v);
        }
        let member = member_id(0);
        let fired = first_fired(&log, &member, Signal::ActiveConnections);
        let (at, a) = fired.unwrap_or_else(|| panic!("ramp over {ramp} ticks: never flagged"));
        assert!(
            at <= ramp + 3,
            "ramp over {ramp} ticks: flagged at tick {at}"
        );
        assert_eq!(a.kind, AlertKind::Skew, "ramp over {ramp} ticks: {a:#?}");
        // 28 of its 40 new connections were not balanced, even where too
        // few to judge the balancer by.
        assert!(
            !a.summary.contains("balanced"),
            "ramp over {ramp} ticks: {}",
            a.summary
        );
        let v = last.expect("ticks");
        let (_, active) = v.members[0].active.as_ref().expect("active");
        assert_eq!(
            active.verdict,
            Verdict::SkewHigh { page: false },
            "ramp over {ramp} ticks: still flagged at the end"
        );
    }
}

/// A tick whose connections jump tenfold (a burst, a reconnect storm)
/// adds one tick's worth to the bytes window's evidence, not ten ticks'
/// at the burst's count: the window's bytes per connection are a mean over
/// ten ticks of far fewer connections. Judged at the tick's own count, a
/// member a little light on bytes warned at its first busy tick as
/// strongly as after ten, and in the benchmark's daily peaks such members
/// paged falsely (5 pages in 20 balanced pool-days).
#[test]
fn a_burst_of_connections_claims_one_ticks_bytes_evidence() {
    let mut rng = Rng::new(31);
    let pool = LongLived::new(LongLivedSpec::balanced(10, 0), &mut rng);
    let mut d = Detector::default();
    let mut log_p = Vec::new();
    for t in 0..401u64 {
        let held = if t >= 400 { 100 } else { 10 };
        let ticks: Vec<MemberTick> = (0..10)
            .map(|m| {
                // Members' bytes per connection vary tick by tick
                // (log-normal, σ 0.3); member 0's run at 0.55 of theirs.
                let light = if m == 0 { 0.55 } else { 1.0 };
                let per_conn = 5_000.0 * light * (0.3 * rng.normal()).exp();
                MemberTick {
                    new_conns: 0,
                    active: held,
                    bytes_in: (per_conn * held as f64 / 20.0) as u64,
                    bytes_out: (per_conn * held as f64) as u64,
                }
            })
            .collect();
        let (v, _) = d.evaluate(&pool.input("web", t, &ticks));
        let (_, b) = v.members[0].bytes.as_ref().expect("bytes verdict");
        log_p.push(b.log_p);
    }
    let (calm, burst) = (log_p[399], log_p[400]);
    assert!(calm < 0.0, "member 0 is light on bytes: log_p {calm}");
    assert!(
        (2.0 * calm..=0.5 * calm).contains(&burst),
        "one burst tick took the evidence from {calm:.1} to {burst:.1}"
    );
}

/// A member whose clients send 3× the bytes from the pool's first tick:
/// small pools learned their bytes heterogeneity from every member, so it
/// taught the pool its own weight, and was never flagged (600 ticks, pools
/// of 2 to 6, where the same member flagged 7 ticks after the same change
/// in a pool of 4 watched first). Now its bytes warn within 150 ticks in a
/// pool of 4 and 45 in a pool of 6 (the pool learns down from the prior
/// as its connections turn over). A pool of 3, where the member holds
/// 1.8× its share of the bytes, warns or not; one of 2 (1.5×) cannot
/// tell which of its two members is off.
#[test]
fn heavier_clients_from_the_start_are_flagged_in_small_pools() {
    for (members, within) in [(4usize, 200u64), (6, 80)] {
        for seed in 0..3 {
            let mut rng = Rng::new(100 + seed);
            let mut pool = LongLived::new(LongLivedSpec::balanced(members, 40 * members), &mut rng);
            pool.load[0] = 3.0;
            let mut d = Detector::default();
            let (tr, _) = drive(&mut d, &mut pool, &mut rng, 0..600, |_, _, _| {});
            let (at, a) = first_fired(&tr, &member_id(0), Signal::Bytes)
                .unwrap_or_else(|| panic!("{members} members, seed {seed}: never flagged"));
            assert!(
                at < within,
                "{members} members, seed {seed}: flagged at {at}"
            );
            assert_eq!(a.cause, Some(Cause::Pinned), "{a:#?}");
            assert!(a.summary.contains("bytes per connection"), "{}", a.summary);
        }
    }
}

//! Least-connections pools ([`Balancing::LeastConnections`]): their split
//! of new connections is not judged, their open connections are.

use super::*;
use crate::detect::{
    sim::{LongLived, LongLivedSpec, Rng, member_id},
    tests_load::paged,
};

/// Every transition with the tick it happened on.
type Log = Vec<(u64, Transition)>;

/// Two detectors fed the same least-connections traffic: one told the
/// pool balances by least connections, one not.
struct Pair {
    hinted: Detector,
    plain: Detector,
    hinted_log: Log,
    plain_log: Log,
    /// The hinted detector's pool verdicts, every tick.
    hinted_verdicts: Vec<PoolVerdict>,
    /// The plain detector's pool verdict, every tick.
    plain_verdicts: Vec<Verdict>,
}

impl Pair {
    fn new() -> Self {
        Self {
            hinted: Detector::default(),
            plain: Detector::default(),
            hinted_log: Vec::new(),
            plain_log: Vec::new(),
            hinted_verdicts: Vec::new(),
            plain_verdicts: Vec::new(),
        }
    }

    /// Runs `ticks` ticks of `pool`, calling `event` before each.
    fn drive(
        &mut self,
        pool: &mut LongLived,
        rng: &mut Rng,
        ticks: std::ops::Range<u64>,
        mut event: impl FnMut(u64, &mut LongLived),
    ) {
        for t in ticks {
            event(t, pool);
            let numbers = pool.tick(rng);
            let mut input = pool.input("grpc", t, &numbers);
            assert_eq!(input.balancing, Balancing::LeastConnections);
            let (v, tr) = self.hinted.evaluate(&input);
            self.hinted_log.extend(tr.into_iter().map(|x| (t, x)));
            self.hinted_verdicts.push(v);
            input.balancing = Balancing::Weighted;
            let (v, tr) = self.plain.evaluate(&input);
            self.plain_log.extend(tr.into_iter().map(|x| (t, x)));
            self.plain_verdicts.push(v.verdict);
        }
    }
}

/// A least-connections pool of `members` members holding `clients`
/// long-lived connections that live `lifetime` ticks on average.
fn least_connections_pool(
    members: usize,
    clients: usize,
    lifetime: f64,
    rng: &mut Rng,
) -> LongLived {
    let mut spec = LongLivedSpec::balanced(members, clients);
    spec.lifetime = lifetime;
    spec.least_connections = true;
    LongLived::new(spec, rng)
}

#[test]
fn a_restarted_member_refilling_under_least_connections_pages_only_without_the_hint() {
    // Five members holding 500 long-lived connections each, ~20 new
    // connections a tick (they live 125 ticks).
    let mut rng = Rng::new(41);
    let mut pool = least_connections_pool(5, 2500, 125.0, &mut rng);
    let mut pair = Pair::new();
    pair.drive(&mut pool, &mut rng, 0..300, |_, _| {});
    assert!(
        paged(&pair.plain_log).is_empty(),
        "{:#?}",
        paged(&pair.plain_log)
    );
    assert!(paged(&pair.hinted_log).is_empty());
    // Member 0 restarts: its clients reconnected to the others while it
    // was down (625 each), and every new connection now goes to it until
    // it holds as many as they do.
    pair.drive(&mut pool, &mut rng, 300..600, |t, p| {
        if t == 300 {
            p.set_held(0, 0);
        }
    });
    let after = |log: &Log| -> Log { log.iter().filter(|(t, _)| *t >= 300).cloned().collect() };
    let (plain, hinted) = (after(&pair.plain_log), after(&pair.hinted_log));
    // Without the hint: the healthy members get none for the refill, and
    // the detector pages.
    // (Seen: CONCENTRATION pages at tick 302, the four healthy members
    // are ZERO from 305, grouped under it, and one pages ZERO at 329 when
    // the concentration ends while it still holds the most.)
    let plain_pages = paged(&plain);
    assert!(
        plain_pages
            .iter()
            .any(|(_, a)| a.kind == AlertKind::Concentration),
        "{plain_pages:#?}"
    );
    assert!(
        plain_pages.iter().any(|(_, a)| a.kind == AlertKind::Zero
            && a.member != member_id(0)
            && a.signal == Some(Signal::NewConnections)),
        "a healthy member pages ZERO: {plain_pages:#?}"
    );
    // With it: no page, no alert on new connections, no CONCENTRATION.
    assert!(paged(&hinted).is_empty(), "{:#?}", paged(&hinted));
    assert!(
        hinted
            .iter()
            .all(|(_, x)| x.alert().signal != Some(Signal::NewConnections)),
        "{hinted:#?}"
    );
    assert!(
        pair.hinted_verdicts
            .iter()
            .all(|v| v.verdict != Verdict::Concentration),
    );
    // Its open connections are still judged: member 0 refilled.
    let last = pair.hinted_verdicts.last().expect("verdicts");
    let m0 = &last.members[0];
    assert!(
        m0.server.as_ref().is_some_and(|v| v.active > 400),
        "{m0:#?}"
    );
    assert_eq!(m0.verdict, Verdict::Ok, "{m0:#?}");
}

#[test]
fn a_least_connections_pool_still_pages_when_the_balancer_stops_sending_to_a_member() {
    // Five members, 1,000 connections living ~30 ticks (~33 new a tick).
    let mut rng = Rng::new(42);
    let mut pool = least_connections_pool(5, 1000, 30.0, &mut rng);
    let mut pair = Pair::new();
    pair.drive(&mut pool, &mut rng, 0..300, |_, _| {});
    assert!(
        paged(&pair.hinted_log).is_empty(),
        "{:#?}",
        paged(&pair.hinted_log)
    );
    // The balancer stops sending to member 2: its connections close one by
    // one and the others take them.
    pair.drive(&mut pool, &mut rng, 300..400, |t, p| {
        if t == 300 {
            p.placement[2] = 0.0;
        }
    });
    let hinted: Log = (pair.hinted_log.iter())
        .filter(|(t, _)| *t >= 300)
        .cloned()
        .collect();
    let pages = paged(&hinted);
    let (at, a) = (pages.iter())
        .find(|(_, a)| a.member == member_id(2) && a.signal == Some(Signal::ActiveConnections))
        .unwrap_or_else(|| panic!("member 2 pages on its open connections: {hinted:#?}"));
    assert_eq!(a.cause, Some(Cause::Routing), "{}", a.summary);
    assert!(a.summary.contains("least-connections"), "{}", a.summary);
    // Its connections fall below half its share after ~21 ticks (30 ln 2),
    // then the finding must hold 10 ticks.
    assert!(*at < 345, "paged at {at}");
    // Nothing pages on new connections, and no one else pages.
    assert!(
        pages
            .iter()
            .all(|(_, a)| a.signal != Some(Signal::NewConnections)),
        "{pages:#?}"
    );
    assert!(
        pages.iter().all(|(_, a)| a.member == member_id(2)),
        "{pages:#?}"
    );
}

#[test]
fn members_refilling_one_after_the_other_under_least_connections_page_nothing() {
    // Member 0 restarts, then member 1 ten, eleven or fifteen ticks later,
    // while member 0 still holds under a fifth of its share (paging level,
    // in time to refill): the balancer rightly sends every new connection
    // to member 1 now, the emptiest, and member 0 waits until member 1
    // catches up with it, its window full of ticks it rightly got nothing.
    for gap in [10, 11, 15] {
        // Six members holding 1,000 long-lived connections each, ~10 new
        // a tick (they live 600 ticks): a restarted member refills slowly.
        let mut rng = Rng::new(43 + gap);
        let mut pool = least_connections_pool(6, 6000, 600.0, &mut rng);
        let mut pair = Pair::new();
        pair.drive(&mut pool, &mut rng, 0..300, |_, _| {});
        assert!(paged(&pair.hinted_log).is_empty());
        pair.drive(&mut pool, &mut rng, 300..700, |t, p| {
            if t == 300 {
                p.set_held(0, 0);
            }
            if t == 300 + gap {
                p.set_held(1, 0);
            }
        });
        let hinted: Log = (pair.hinted_log.iter())
            .filter(|(t, _)| *t >= 300)
            .cloned()
            .collect();
        assert!(
            paged(&hinted).is_empty(),
            "gap {gap}: {:#?}",
            paged(&hinted)
        );
    }
}

#[test]
fn a_refill_seen_by_a_load_balancer_that_carries_half_the_traffic_is_no_mismatch() {
    // The pool's load balancer agents report half of what the members
    // serve (one of its two balancers runs no agent): each view crosses
    // the ZERO bound at its own pace while member 0 refills.
    let mut rng = Rng::new(44);
    let mut pool = least_connections_pool(5, 2500, 125.0, &mut rng);
    let mut detector = Detector::default();
    let mut log = Log::new();
    for t in 0..600 {
        if t == 300 {
            pool.set_held(0, 0);
        }
        let numbers = pool.tick(&mut rng);
        let mut input = pool.input("grpc", t, &numbers);
        for m in &mut input.members {
            let Some(s) = m.server else { continue };
            m.lb = Some(ViewInput {
                new_conns: (s.new_conns + t % 2) / 2,
                bytes_in: s.bytes_in / 2,
                bytes_out: s.bytes_out / 2,
                active: s.active / 2,
                ..s
            });
        }
        let (_, tr) = detector.evaluate(&input);
        log.extend(tr.into_iter().map(|x| (t, x)));
    }
    let pages = paged(&log);
    assert!(pages.is_empty(), "{pages:#?}");
    assert!(
        log.iter()
            .all(|(_, x)| x.alert().kind != AlertKind::Mismatch),
        "{log:#?}"
    );
}

#[test]
fn a_member_its_balancers_send_to_that_never_receives_is_a_lasting_mismatch() {
    // A quiet least-connections pool (~2 new connections a tick over five
    // members): from tick 300 the load balancers keep sending member 0 its
    // connections but none arrives (a firewall, a wrong port). Its server
    // view is ZERO after ~20 expected (~50 ticks at 0.4 a tick), and the
    // mismatch pages after its confirmation ticks.
    let mut rng = Rng::new(45);
    let mut pool = least_connections_pool(5, 200, 100.0, &mut rng);
    let mut detector = Detector::default();
    let mut log = Log::new();
    for t in 0..500 {
        let numbers = pool.tick(&mut rng);
        let mut input = pool.input("grpc", t, &numbers);
        for (i, m) in input.members.iter_mut().enumerate() {
            let Some(mut s) = m.server else { continue };
            m.lb = Some(s);
            if i == 0 && t >= 300 {
                s.new_conns = 0;
                m.server = Some(s);
            }
        }
        let (_, tr) = detector.evaluate(&input);
        log.extend(tr.into_iter().map(|x| (t, x)));
    }
    let mismatch = |x: &Transition| x.alert().kind == AlertKind::Mismatch;
    let pages: Vec<_> = paged(&log)
        .into_iter()
        .filter(|(_, a)| a.kind == AlertKind::Mismatch)
        .collect();
    assert!(
        pages
            .first()
            .is_some_and(|(t, a)| *t < 400 && a.member == member_id(0)),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .filter(|(_, x)| matches!(x, Transition::Resolved(_)) && mismatch(x))
            .count()
            == 0,
        "the mismatch holds: {log:#?}"
    );
}

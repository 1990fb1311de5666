//! MISMATCH in weighted pools: the two views disagree about whether new
//! connections reach a member, and only connections one view saw while the
//! other was dark say so.

use super::*;
use crate::detect::{sim::Rng, tests::input, tests_load::paged};

/// Every transition with the tick it happened on.
type Log = Vec<(u64, Transition)>;

const MEMBERS: usize = 10;
const RATE: f64 = 100.0;
const DARK: usize = 3;

/// How the two views see member [`DARK`] from tick 60 on.
#[derive(Clone, Copy)]
enum Fault {
    /// Nothing reaches it: both views dark.
    Outage,
    /// The balancers go on sending it connections that never arrive.
    Lost,
    /// It goes on receiving connections its balancers never sent.
    Around,
}

/// 200 ticks of a ten-member pool at 100 new connections a tick. The
/// server view counts every connection; the LB view only `lb_part` of
/// them (the balancers that run an agent), so it crosses the ZERO bound
/// later than the server view. Returns each tick's verdict for the member
/// and every transition.
fn run(fault: Fault, lb_part: f64, seed: u64) -> (Vec<Verdict>, Log) {
    let mut rng = Rng::new(seed);
    let mut detector = Detector::default();
    let weights = [1.0; MEMBERS];
    let mut verdicts = Vec::new();
    let mut log = Log::new();
    for t in 0..200 {
        let counts: Vec<u64> = (0..MEMBERS)
            .map(|_| rng.neg_binomial(RATE / MEMBERS as f64, 1.0))
            .collect();
        let mut pool = input(t, &counts, &weights);
        for (i, m) in pool.members.iter_mut().enumerate() {
            let Some(mut server) = m.server else { continue };
            let sent = (0..server.new_conns)
                .filter(|_| rng.f64() < lb_part)
                .count() as u64;
            let mut lb = ViewInput {
                new_conns: sent,
                ..server
            };
            if i == DARK && t >= 60 {
                match fault {
                    Fault::Outage => {
                        server.new_conns = 0;
                        lb.new_conns = 0;
                    }
                    Fault::Lost => server.new_conns = 0,
                    Fault::Around => lb.new_conns = 0,
                }
            }
            m.server = Some(server);
            m.lb = Some(lb);
        }
        let (v, tr) = detector.evaluate(&pool);
        verdicts.push(v.members[DARK].verdict);
        log.extend(tr.into_iter().map(|x| (t, x)));
    }
    (verdicts, log)
}

fn mismatch_pages(log: &Log) -> Vec<u64> {
    paged(log)
        .into_iter()
        .filter(|(_, a)| a.kind == AlertKind::Mismatch)
        .map(|(t, _)| t)
        .collect()
}

#[test]
fn an_outage_seen_sooner_by_one_view_is_zero_never_a_mismatch() {
    for seed in 1..=20 {
        let (verdicts, log) = run(Fault::Outage, 0.25, seed);
        let mismatched: Vec<usize> = (0..verdicts.len())
            .filter(|&t| verdicts[t] == Verdict::Mismatch)
            .collect();
        assert!(
            mismatched.is_empty(),
            "seed {seed}: both views went dark at tick 60, yet MISMATCH at ticks {mismatched:?}"
        );
        let zero = paged(&log)
            .into_iter()
            .find(|(_, a)| a.kind == AlertKind::Zero)
            .map(|(t, _)| t);
        assert!(
            zero.is_some_and(|t| (60..70).contains(&t)),
            "seed {seed}: the outage pages ZERO within ten ticks, not at {zero:?}"
        );
    }
}

#[test]
fn connections_sent_that_never_arrive_are_a_lasting_mismatch() {
    for seed in 1..=20 {
        let (verdicts, log) = run(Fault::Lost, 0.25, seed);
        let pages = mismatch_pages(&log);
        assert!(
            pages.first().is_some_and(|t| (60..70).contains(t)),
            "seed {seed}: MISMATCH pages within ten ticks: {pages:?}"
        );
        let held = verdicts[70..]
            .iter()
            .filter(|v| **v == Verdict::Mismatch)
            .count();
        assert!(
            held >= 120,
            "seed {seed}: the mismatch holds ({held} of 130 ticks): {:?}",
            &verdicts[60..]
        );
    }
}

#[test]
fn connections_received_that_were_never_sent_are_a_lasting_mismatch() {
    for seed in 1..=20 {
        let (verdicts, log) = run(Fault::Around, 1.0, seed);
        let pages = mismatch_pages(&log);
        assert!(
            pages.first().is_some_and(|t| (60..70).contains(t)),
            "seed {seed}: MISMATCH pages within ten ticks: {pages:?}"
        );
        assert!(
            verdicts[70..].iter().all(|v| *v == Verdict::Mismatch),
            "seed {seed}: the mismatch holds: {:?}",
            &verdicts[60..]
        );
    }
}

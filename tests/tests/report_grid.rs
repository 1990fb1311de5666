//! The fleet keeps one clock: agents started at different moments take
//! their reports at the same instants (whole multiples of their interval
//! on the wall clock), and the collector ticks between those instants. A
//! burst of connections (every client reconnecting at once) then reaches
//! every backend's count in the same tick; with each agent on the phase of
//! its own start, one backend's share landed a tick before its peers' and
//! the detector paged ZERO and MISMATCH for a balanced pool.
//!
//! Needs root and the workspace's binaries; fails loudly without them.

use std::time::Duration;

use evenflow_tests::{
    agent::{self, COLLECTOR},
    grpclab, grpcurl,
    lab::Lab,
};

/// The lab agents' interval (`agent::INTERVAL`), and the collector's tick.
const REPORT_MS: u64 = 500;
const TICK_MS: u64 = 1000;
/// How long after its instant a report may be taken (reading the maps),
/// or a tick may run, on a loaded machine.
const SLACK_MS: u64 = 150;

/// Milliseconds into the second of an RFC 3339 timestamp as grpcurl
/// prints it (`2026-11-30T11:19:08.256623Z`).
fn millis(ts: &serde_json::Value) -> u64 {
    let s = ts
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {ts}"));
    let frac = s
        .trim_end_matches('Z')
        .rsplit_once('.')
        .map_or("", |(_, f)| f);
    format!("{frac:0<3}")[..3].parse().expect("milliseconds")
}

#[test]
fn agents_report_on_one_grid_and_the_collector_ticks_between() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "needs root (netns, eBPF)");
    let mut lab = Lab::new("grid", 2).expect("the lab builds");
    agent::start_collector(&mut lab, "10.1.0.1:9465").expect("collector");
    let url = format!("http://{COLLECTOR}");
    let label = format!("grpc={}", grpclab::PORT);
    // Started apart, at whatever moments the launches take.
    for (b, pause) in lab.backends.clone().iter().zip([170, 90]) {
        grpclab::start_server(&mut lab, b).expect("gRPC server");
        agent::start(&mut lab, b, &["--service", &label, "--collector", &url]).expect("agent");
        std::thread::sleep(Duration::from_millis(pause));
    }
    let lb = lab.lb.clone();
    agent::start(&mut lab, &lb, &["--collector", &url]).expect("lb agent");
    let mut nodes = lab.backends.clone();
    nodes.push(lb);
    agent::wait_reporting(&lab, &nodes).expect("every agent reports");
    let ns = lab.lb.ns.clone();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(700));
        let agents = grpcurl::call(&ns, COLLECTOR, "evenflow.v1.Distribution/ListAgents", "{}")
            .expect("ListAgents");
        let mut seen = 0;
        for a in agents["agents"].as_array().into_iter().flatten() {
            let phase = millis(&a["lastReportAt"]) % REPORT_MS;
            assert!(
                phase < SLACK_MS,
                "{} took its report {phase} ms past the {REPORT_MS} ms grid: {a}",
                a["nodeName"]
            );
            seen += 1;
        }
        assert_eq!(seen, nodes.len(), "{agents}");
        let pool = evenflow_tests::wait_for(Duration::from_secs(10), || {
            grpcurl::get_pool(&ns, COLLECTOR, "grpc").ok()
        })
        .expect("the collector judges the grpc pool");
        let at = millis(&pool["evaluatedAt"]);
        let quarter = TICK_MS / 4;
        assert!(
            (quarter..quarter + SLACK_MS).contains(&at),
            "the tick ran {at} ms into its second, not a quarter of it: {pool}"
        );
    }
}

//! `--embedded-collector`, for real: the agent with a collector inside, on
//! a lab node, configured through its environment as a DaemonSet would
//! configure it. The agent's `EVENFLOW_INTERVAL=300ms` is the agent's: it
//! reads its counters every 300 ms, while the collector inside it keeps its
//! own default tick of 1 s (the collector's flag of the same variable name
//! must not pick it up).

use std::time::{Duration, Instant};

use evenflow_tests::{grpcurl, lab::Lab, netns};

const GRPC: &str = "127.0.0.1:50052";
const METRICS: &str = "http://127.0.0.1:9465/metrics";

/// The embedded collector's view of the agent's last sequence number.
fn last_sequence(ns: &str, node: &str) -> Option<u64> {
    let v = grpcurl::call(ns, GRPC, "evenflow.v1.Distribution/ListAgents", "{}").ok()?;
    v["agents"]
        .as_array()?
        .iter()
        .find(|a| a["nodeName"] == node)?["lastSequence"]
        .as_str()?
        .parse()
        .ok()
}

/// The embedded collector's `evenflow_collector_ticks_total`.
fn ticks(ns: &str) -> Option<u64> {
    let text = netns::exec(ns, "curl", &["-sf", METRICS]).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("evenflow_collector_ticks_total "))?
        .trim()
        .parse()
        .ok()
}

#[test]
fn the_embedded_collector_takes_none_of_the_agents_settings() {
    evenflow_tests::require_root();
    let mut lab = Lab::new("repoemb", 1).expect("lab");
    let node = lab.backends[0].clone();
    let agent = evenflow_tests::agent::agent_bin()
        .expect("the agent binary (cargo xtask test builds it)")
        .display()
        .to_string();
    let cgroup = node.cgroup.display().to_string();
    lab.spawn(
        &node,
        "agent",
        "env",
        &[
            "EVENFLOW_INTERVAL=300ms",
            &agent,
            "--node-name",
            &node.ns,
            "--cgroup",
            &cgroup,
            "--grpc-addr",
            "127.0.0.1:50051",
            "--metrics-addr",
            "127.0.0.1:9464",
            "--embedded-collector",
            GRPC,
        ],
    )
    .expect("agent");
    let first = evenflow_tests::wait_for(Duration::from_secs(20), || {
        Some((last_sequence(&node.ns, &node.ns)?, ticks(&node.ns)?))
    });
    let Some((seq0, ticks0)) = first else {
        let _ = lab.check_alive();
        panic!(
            "the embedded collector never listed its agent; the agent's output:\n{}",
            lab.log("agent")
        );
    };
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let (seq1, ticks1) = (
        last_sequence(&node.ns, &node.ns).expect("ListAgents"),
        ticks(&node.ns).expect("/metrics"),
    );
    let secs = t0.elapsed().as_secs_f64();
    let (reads, judged) = (seq1 - seq0, ticks1 - ticks0);
    // 5 s at 300 ms: about 16 reads; at the default 1 s tick: about 5
    // ticks (a loaded machine only makes either fewer).
    assert!(
        reads >= 10,
        "the agent read {reads} times in {secs:.1} s: EVENFLOW_INTERVAL=300ms did not reach the agent"
    );
    assert!(
        (2..=7).contains(&judged),
        "the embedded collector ticked {judged} times in {secs:.1} s: its tick is not its 1 s default"
    );
}

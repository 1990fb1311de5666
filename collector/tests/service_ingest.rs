//! Ingest over real gRPC: replays, counter resets, invalid reports.

mod service_common;

use std::time::Duration;

use evenflow_proto::v1;
use service_common::*;
use tokio_stream::StreamExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_ignored_and_acked() {
    let c = start(&["--interval", "200ms"]).await;
    let mut a = Agent::connect(&c, "b1").await;
    for (seq, opened) in [(1, 10), (2, 20), (3, 30)] {
        let r = a.next(vec![serves("10.9.0.1", 80, "web", opened)], vec![]);
        let ack = a.send(r).await.expect("ack");
        assert_eq!((ack.agent_run, ack.acked_sequence), (42, seq));
    }
    // Replay sequence 2 with different totals: acknowledged, ignored.
    a.seq = 1;
    let r = a.next(vec![serves("10.9.0.1", 80, "web", 999)], vec![]);
    let ack = a.send(r).await.expect("ack for replay");
    assert_eq!(ack.acked_sequence, 3, "a replay acks what was processed");
    let mut q = query(&c).await;
    let agents = agents(&mut q).await;
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].replays_ignored, 1);
    assert_eq!(agents[0].last_sequence, 3);
    assert!(agents[0].fresh);
    // The replayed 999 never became traffic.
    let p = wait_pool(&mut q, "web", 3.0, |p| p.tick > 2).await;
    assert_eq!(
        member(&p, "10.9.0.1")
            .server_view
            .as_ref()
            .unwrap()
            .conns_total,
        20
    );
    // /metrics counts it.
    let body = http_get(c.metrics_addr, "/metrics").await;
    assert!(
        body.contains("evenflow_collector_replays_ignored_total 1"),
        "{body}"
    );
    assert!(
        body.contains("evenflow_collector_reports_total 3"),
        "{body}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_epoch_is_a_reset_no_data_never_negative() {
    let c = start(&["--interval", "200ms"]).await;
    let mut q = query(&c).await;
    let mut b1 = Agent::connect(&c, "b1").await;
    let mut b2 = Agent::connect(&c, "b2").await;
    let mut n = 0u64;
    let send_both = async |b1: &mut Agent, b2: &mut Agent, n1: u64, n2: u64| {
        let r = b1.next(vec![serves("10.9.1.1", 80, "web", n1)], vec![]);
        b1.send(r).await.expect("ack b1");
        let r = b2.next(vec![serves("10.9.1.2", 80, "web", n2)], vec![]);
        b2.send(r).await.expect("ack b2");
    };
    for _ in 0..5 {
        n += 100;
        send_both(&mut b1, &mut b2, n, n).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_pool(&mut q, "web", 3.0, |p| {
        p.members.iter().all(|m| {
            m.server_view
                .as_ref()
                .is_some_and(|v| v.new_conns_per_sec == 100.0)
        })
    })
    .await;
    let mut watch = q
        .watch_pool(v1::WatchPoolRequest { name: "web".into() })
        .await
        .expect("WatchPool")
        .into_inner();
    // b1 restarts its counters: epoch 2, totals from zero.
    b1.epoch = 2;
    n += 100;
    send_both(&mut b1, &mut b2, 7, n).await;
    let mut saw_no_data = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut m2 = 7;
    while tokio::time::Instant::now() < deadline {
        let Ok(Some(Ok(p))) = tokio::time::timeout(Duration::from_secs(1), watch.next()).await
        else {
            break;
        };
        for m in &p.members {
            let v = m.server_view.as_ref().unwrap();
            assert!(
                v.new_conns_per_sec >= 0.0 && v.bytes_in_per_sec >= 0.0,
                "{p:#?}"
            );
        }
        let v = member(&p, "10.9.1.1").server_view.clone().unwrap();
        if verdict(v.verdict) == v1::Verdict::NoData {
            saw_no_data = true;
            assert!(v.reason.contains("restarted"), "{}", v.reason);
        }
        if saw_no_data && verdict(v.verdict) != v1::Verdict::NoData {
            break;
        }
        // Keep both agents reporting.
        m2 += 50;
        n += 100;
        send_both(&mut b1, &mut b2, m2, n).await;
    }
    assert!(saw_no_data, "the reset tick must be NO_DATA");
    let p = wait_pool(&mut q, "web", 3.0, |p| {
        member(p, "10.9.1.1")
            .server_view
            .as_ref()
            .is_some_and(|v| verdict(v.verdict) != v1::Verdict::NoData)
    })
    .await;
    // After the reset the rate is the new epoch's growth per agent second.
    assert_eq!(
        member(&p, "10.9.1.1")
            .server_view
            .as_ref()
            .unwrap()
            .new_conns_per_sec,
        50.0
    );
    let agents = agents(&mut q).await;
    let a1 = agents.iter().find(|a| a.node_name == "b1").unwrap();
    assert_eq!((a1.resets, a1.agent_epoch), (1, 2));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reports_are_rejected_without_disturbing_others() {
    let c = start(&["--interval", "200ms"]).await;
    let mut good = Agent::connect(&c, "good").await;
    let r = good.next(vec![serves("10.9.2.1", 80, "web", 10)], vec![]);
    good.send(r).await.expect("ack");

    // Empty node name.
    let mut bad = Agent::connect(&c, "").await;
    let r = bad.next(vec![], vec![]);
    let e = bad.send(r).await.expect_err("rejected");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("empty node_name") && e.message().contains("--node-name"),
        "{}",
        e.message()
    );

    // A known agent sends garbage on its stream: that report alone is
    // rejected (acked with the reason, so the agent drops it instead of
    // replaying it forever), its state is kept, and the stream goes on.
    let mut b = Agent::connect(&c, "b").await;
    let r = b.next(vec![serves("10.9.2.2", 80, "web", 10)], vec![]);
    assert_eq!(b.send(r).await.expect("ack").rejected, "");
    let r = b.next(vec![serves("not-an-ip", 80, "web", 10)], vec![]);
    let ack = b.send(r).await.expect("rejected in an ack, stream open");
    assert_eq!(ack.acked_sequence, 2);
    assert!(
        ack.rejected.contains("not-an-ip") && ack.rejected.contains("not an IP address"),
        "{}",
        ack.rejected
    );
    let mut r = b.next(vec![serves("10.9.2.2", 80, "web", 10)], vec![]);
    r.cpu = Some(v1::Cpu {
        utilization: f64::NAN,
        cores: 1,
    });
    let ack = b.send(r).await.expect("NaN CPU rejected in an ack");
    assert!(ack.rejected.contains("cpu.utilization"), "{}", ack.rejected);
    // The same stream still delivers the next valid report.
    let r = b.next(vec![serves("10.9.2.2", 80, "web", 25)], vec![]);
    let ack = b.send(r).await.expect("valid report after rejected ones");
    assert_eq!((ack.acked_sequence, ack.rejected.as_str()), (4, ""));

    // The good agent's stream goes on.
    let r = good.next(vec![serves("10.9.2.1", 80, "web", 20)], vec![]);
    assert_eq!(good.send(r).await.expect("still acked").acked_sequence, 2);
    let mut q = query(&c).await;
    let agents = agents(&mut q).await;
    let names: Vec<_> = agents.iter().map(|a| a.node_name.as_str()).collect();
    assert_eq!(names, ["b", "good"]);
    let b = agents.iter().find(|a| a.node_name == "b").unwrap();
    assert_eq!(
        b.last_sequence, 4,
        "the stream outlived two rejected reports"
    );
    let body = http_get(c.metrics_addr, "/metrics").await;
    assert!(
        body.contains("evenflow_collector_invalid_reports_total 3"),
        "{body}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_under_one_node_name_are_told_apart() {
    let c = start(&["--interval", "200ms"]).await;
    let mut a = Agent::connect(&c, "same").await;
    let r = a.next(vec![serves("10.9.3.1", 80, "web", 10)], vec![]);
    a.send(r).await.expect("ack");
    let mut b = Agent::connect(&c, "same").await;
    b.run = 43;
    let r = b.next(vec![serves("10.9.3.2", 80, "web", 10)], vec![]);
    let e = b.send(r).await.expect_err("second agent refused");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("unique --node-name"),
        "{}",
        e.message()
    );
    // The first one goes on; a reconnect of the same run is welcome.
    let r = a.next(vec![serves("10.9.3.1", 80, "web", 20)], vec![]);
    a.send(r).await.expect("ack");
    let mut again = Agent::connect(&c, "same").await;
    again.seq = a.seq;
    let r = again.next(vec![serves("10.9.3.1", 80, "web", 30)], vec![]);
    again.send(r).await.expect("same run on a new stream");
    // The agent restarted (a new run) once its stream has ended: taken at
    // once, not refused as a second process until its reports age out.
    let clock = again.clock;
    drop((a, again));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut restarted = Agent::connect(&c, "same").await;
    (restarted.run, restarted.clock) = (44, clock);
    let r = restarted.next(vec![serves("10.9.3.1", 80, "web", 40)], vec![]);
    let ack = restarted
        .send(r)
        .await
        .expect("the restarted agent is taken");
    assert_eq!((ack.agent_run, ack.rejected.as_str()), (44, ""));
    c.shutdown().await;
}

/// A collector sized for two agents refuses a third new node with the
/// reason and the fix, keeps the two it follows (a reconnect of either is
/// welcome), and takes the third once one of them is forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_collector_refuses_new_agents_and_keeps_the_ones_it_follows() {
    let c = start(&[
        "--interval",
        "200ms",
        "--max-agents",
        "2",
        "--agent-retention",
        "1s",
    ])
    .await;
    let mut b1 = Agent::connect(&c, "b1").await;
    let mut b2 = Agent::connect(&c, "b2").await;
    for (b, addr) in [(&mut b1, "10.9.6.1"), (&mut b2, "10.9.6.2")] {
        let r = b.next(vec![serves(addr, 80, "web", 10)], vec![]);
        b.send(r).await.expect("room for two");
    }
    let mut b3 = Agent::connect(&c, "b3").await;
    let r = b3.next(vec![serves("10.9.6.3", 80, "web", 10)], vec![]);
    let e = b3.send(r).await.expect_err("no room for a third");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert!(
        e.message()
            .contains("follows 2 agents already (--max-agents)")
            && e.message().contains("node b3 is refused")
            && e.message().contains("raise --max-agents"),
        "{}",
        e.message()
    );
    // b1 reconnects (its stream ended, the same run): still followed.
    let seq = b1.seq;
    drop(b1);
    let mut b1 = Agent::connect(&c, "b1").await;
    b1.seq = seq;
    let r = b1.next(vec![serves("10.9.6.1", 80, "web", 20)], vec![]);
    b1.send(r).await.expect("a known agent is never refused");
    let body = http_get(c.metrics_addr, "/metrics").await;
    for line in [
        "evenflow_collector_agents_refused_total 1",
        "evenflow_collector_agents 2",
        "evenflow_collector_max_agents 2",
    ] {
        assert!(body.lines().any(|l| l == line), "{line}: {body}");
    }
    // b2 falls silent past the retention and is forgotten: b3 gets in.
    drop(b2);
    let mut q = query(&c).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = b1.next(vec![serves("10.9.6.1", 80, "web", 30)], vec![]);
        b1.send(r).await.expect("b1 goes on");
        let nodes: Vec<String> = agents(&mut q)
            .await
            .into_iter()
            .map(|a| a.node_name)
            .collect();
        if nodes == ["b1"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b2 never forgotten: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut b3 = Agent::connect(&c, "b3").await;
    let r = b3.next(vec![serves("10.9.6.3", 80, "web", 10)], vec![]);
    b3.send(r).await.expect("room again once b2 is forgotten");
    assert_eq!(agents(&mut q).await.len(), 2);
    c.shutdown().await;
}

/// An agent whose datapath could not count everything says so in its
/// reports; the collector shows it per agent (ListAgents) and on its own
/// /metrics, where dashboards that scrape only the collector see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_agent_could_not_count_reaches_the_collectors_metrics() {
    let c = start(&["--interval", "200ms"]).await;
    let mut a = Agent::connect(&c, "lb").await;
    let mut r = a.next(vec![serves("10.9.0.1", 80, "web", 10)], vec![]);
    r.datapath = Some(v1::DatapathStats {
        flow_insert_failed: 7,
        flow_insert_no_memory: 7,
        max_flows: 32,
        ..Default::default()
    });
    a.send(r).await.expect("ack");
    // A report without the accounting keeps the last one.
    let r = a.next(vec![serves("10.9.0.1", 80, "web", 11)], vec![]);
    a.send(r).await.expect("ack");
    let mut q = query(&c).await;
    let agents = agents(&mut q).await;
    let datapath = agents[0].datapath.expect("the agent's datapath accounting");
    assert_eq!(
        (datapath.flow_insert_failed, datapath.flow_insert_no_memory),
        (7, 7)
    );
    let body = http_get(c.metrics_addr, "/metrics").await;
    for line in [
        r#"evenflow_agent_uncounted_total{node="lb",kind="flow_insert_failed"} 7"#,
        r#"evenflow_agent_uncounted_total{node="lb",kind="endpoint_insert_failed"} 0"#,
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "/metrics has `{line}`:\n{body}"
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_would_decode_to_far_more_than_it_weighs_is_refused_before_decoding() {
    let c = start(&["--interval", "200ms"]).await;
    let mut a = Agent::connect(&c, "b1").await;
    let r = a.next(vec![serves("10.9.0.1", 80, "web", 10)], vec![]);
    a.send(r).await.expect("ack");
    // 300,000 empty endpoints: 600 kB on the wire, 55 MB decoded. Twenty
    // times as many would fit in a message and take gigabytes.
    let r = a.next(vec![v1::Endpoint::default(); 300_000], vec![]);
    let e = a.send(r).await.expect_err("refused");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("field 7 appears more than"), "{e:?}");
    // The collector keeps what it had, and takes the agent's next stream.
    let mut again = Agent::connect(&c, "b1").await;
    (again.seq, again.clock) = (a.seq, a.clock);
    let r = again.next(vec![serves("10.9.0.1", 80, "web", 30)], vec![]);
    assert_eq!(again.send(r).await.expect("ack").rejected, "");
    let mut q = query(&c).await;
    let p = wait_pool(&mut q, "web", 3.0, |p| {
        p.members
            .first()
            .is_some_and(|m| m.server_view.as_ref().is_some_and(|v| v.conns_total == 20))
    })
    .await;
    assert_eq!(p.members.len(), 1);
    c.shutdown().await;
}

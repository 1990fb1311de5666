//! Load over real gRPC: simulated agents report a pool whose connections
//! were all opened long ago (no new ones) and one member holding none of
//! them. The pool is judged on its open connections (never too quiet),
//! GetPool carries each member's load shares and verdicts, WatchAlerts
//! streams a ZERO page on open connections with cause `pinned`, and
//! /metrics carries the same.

mod service_common;

use std::time::Duration;

use evenflow_proto::v1;
use service_common::*;
use tokio_stream::StreamExt as _;

const MEMBERS: [&str; 3] = ["10.8.0.1", "10.8.0.2", "10.8.0.3"];
/// Open connections per member: the third holds none.
const OPEN: [u64; 3] = [75, 75, 0];

/// A served endpoint whose `opened` connections are `open` still open,
/// each having moved 10 kB in and 100 kB out per report.
fn held(addr: &str, opened: u64, open: u64, k: u64) -> v1::Endpoint {
    v1::Endpoint {
        address: addr.into(),
        port: 443,
        direction: v1::Direction::Serves as i32,
        protocol: v1::Protocol::Tcp as i32,
        service: "grpc".into(),
        totals: Some(v1::Counters {
            conns_opened: opened,
            conns_closed: opened - open,
            bytes_rx: open * 10_000 * k,
            bytes_tx: open * 100_000 * k,
            packets_rx: 0,
            packets_tx: 0,
            conns_failed: 0,
            conns_unanswered: 0,
            conns_failed_unanswered: Some(0),
        }),
        rates: None,
        active_connections: open,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_holding_none_of_the_open_connections_pages_pinned() {
    let c = start(&["--interval", "200ms"]).await;
    let mut q = query(&c).await;
    let mut alerts = q
        .watch_alerts(v1::WatchAlertsRequest {
            pool: "grpc".into(),
        })
        .await
        .expect("WatchAlerts")
        .into_inner();
    let url = url(&c);
    let driver = tokio::spawn(async move {
        let mut agents = Vec::new();
        for i in 0..MEMBERS.len() {
            agents.push(Agent::connect_url(url.clone(), &format!("b{}", i + 1)).await);
        }
        for k in 1..200u64 {
            for (i, a) in agents.iter_mut().enumerate() {
                // Every connection was opened before the collector started
                // watching: the totals never grow, the bytes do.
                let r = a.next(vec![held(MEMBERS[i], 75, OPEN[i], k)], vec![]);
                a.send(r).await.expect("ack");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut page = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline && page.is_none() {
        let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(1), alerts.next()).await else {
            continue;
        };
        let a = ev.expect("alert event").alert.expect("alert");
        if a.severity == v1::Severity::Page as i32 {
            page = Some(a);
        }
    }
    let a = page.expect("a page");
    assert_eq!(a.member, "10.8.0.3:443", "{a:#?}");
    assert_eq!(a.kind, v1::AlertKind::Zero as i32, "{a:#?}");
    assert_eq!(a.signal, v1::Signal::ActiveConnections as i32, "{a:#?}");
    assert_eq!(a.cause, v1::Cause::Pinned as i32, "{a:#?}");
    assert_eq!(a.id, "grpc/10.8.0.3:443/ZERO/active_connections");
    assert!(a.summary.contains("MAX_CONNECTION_AGE"), "{}", a.summary);
    assert!(
        a.summary.contains("10.8.0.1:443") && a.summary.contains("10.8.0.2:443"),
        "names the holders: {}",
        a.summary
    );

    let p = q
        .get_pool(v1::GetPoolRequest {
            name: "grpc".into(),
        })
        .await
        .expect("GetPool")
        .into_inner();
    assert_ne!(
        verdict(p.verdict),
        v1::Verdict::InsufficientTraffic,
        "150 open connections are judged: {p:#?}"
    );
    assert_eq!(p.server_active_connections, 150);
    let starved = member(&p, "10.8.0.3");
    let load = starved.load.as_ref().expect("a load finding");
    assert_eq!(load.signal, v1::Signal::ActiveConnections as i32);
    let share = load.share.as_ref().expect("share");
    assert_eq!(verdict(share.verdict), v1::Verdict::Zero);
    assert!(share.page);
    assert_eq!(share.cause, v1::Cause::Pinned as i32);
    let holder = member(&p, "10.8.0.1").server_view.as_ref().expect("view");
    let active = holder.active.as_ref().expect("active share");
    assert!((active.observed_share - 0.5).abs() < 1e-9, "{active:?}");
    assert!(
        (active.expected_share - 1.0 / 3.0).abs() < 1e-9,
        "{active:?}"
    );
    assert!((holder.bytes_out_share - 0.5).abs() < 1e-9, "{holder:?}");

    let body = http_get(c.metrics_addr, "/metrics").await;
    for line in [
        r#"evenflow_member_active_share{pool="grpc",member="10.8.0.1:443",view="server"} 0.5"#,
        r#"evenflow_member_load_verdict{pool="grpc",member="10.8.0.3:443",view="server",signal="active_connections",verdict="ZERO",cause="pinned",severity="page"} 1"#,
        r#"evenflow_pool_active_connections{pool="grpc",view="server"} 150"#,
        r#"evenflow_alert_open{pool="grpc",member="10.8.0.3:443",kind="ZERO",signal="active_connections",cause="pinned",view="server",severity="page"} 1"#,
    ] {
        assert!(body.contains(line), "/metrics lacks {line}:\n{body}");
    }
    driver.abort();
    c.shutdown().await;
}

//! Alerts over real gRPC: WatchAlerts reports ZERO when a member's counters
//! stop while the others grow; webhooks get Alertmanager v2 JSON and are
//! retried after a failure.

mod service_common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use evenflow_proto::v1;
use service_common::*;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};
use tokio_stream::StreamExt as _;

const MEMBERS: [&str; 4] = ["10.6.0.1", "10.6.0.2", "10.6.0.3", "10.6.0.4"];

/// Drives four backends at 100 new connections per agent second; from
/// `stop_after` reports on, the last one's counters stop growing.
async fn drive(url: String, reports: usize, stop_after: usize) {
    let mut agents = Vec::new();
    for (i, _) in MEMBERS.iter().enumerate() {
        agents.push(Agent::connect_url(url.clone(), &format!("b{}", i + 1)).await);
    }
    let mut totals = [1000u64; 4];
    for k in 0..reports {
        for (i, a) in agents.iter_mut().enumerate() {
            if !(i == 3 && k >= stop_after) {
                totals[i] += 100;
            }
            let r = a.next(vec![serves(MEMBERS[i], 80, "web", totals[i])], vec![]);
            a.send(r).await.expect("ack");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_alerts_reports_zero_when_a_member_stops() {
    let c = start(&["--interval", "200ms"]).await;
    let mut q = query(&c).await;
    let mut alerts = q
        .watch_alerts(v1::WatchAlertsRequest { pool: "web".into() })
        .await
        .expect("WatchAlerts")
        .into_inner();
    let driver = tokio::spawn(drive(url(&c), 60, 25));
    let mut zero = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    while tokio::time::Instant::now() < deadline {
        let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(1), alerts.next()).await else {
            continue;
        };
        let ev = ev.expect("alert event");
        let a = ev.alert.clone().unwrap();
        // Nothing fires before the member stops.
        assert_eq!(a.member, "10.6.0.4:80", "unexpected alert {ev:#?}");
        if ev.transition == v1::alert_event::Transition::Fired as i32
            && a.kind == v1::AlertKind::Zero as i32
        {
            zero = Some(a);
            break;
        }
    }
    let a = zero.expect("a ZERO alert for 10.6.0.4:80");
    assert_eq!(a.pool, "web");
    assert_eq!(a.view, v1::View::Server as i32);
    assert_eq!(a.severity, v1::Severity::Page as i32);
    assert_eq!(a.observed, 0.0);
    assert!(a.expected >= 20.0, "{a:#?}");
    assert!(a.since.is_some() && !a.summary.is_empty());
    // ListAlerts and GetPool agree.
    let open = q
        .list_alerts(v1::ListAlertsRequest {
            pool: "web".into(),
            include_resolved: false,
        })
        .await
        .unwrap()
        .into_inner()
        .alerts;
    assert!(open.iter().any(|x| x.id == a.id), "{open:#?}");
    let p = q
        .get_pool(v1::GetPoolRequest { name: "web".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        verdict(member(&p, "10.6.0.4").verdict),
        v1::Verdict::Zero,
        "{p:#?}"
    );
    driver.abort();
    c.shutdown().await;
}

/// A tiny HTTP receiver: answers 500 to the first POST, 200 afterwards,
/// and keeps every body.
async fn receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<(u16, String)>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            // Read headers, then Content-Length bytes.
            let (head_end, len) = loop {
                let n = s.read(&mut tmp).await.unwrap_or(0);
                if n == 0 {
                    break (0, 0);
                }
                buf.extend_from_slice(&tmp[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    break (i + 4, len);
                }
            };
            if head_end == 0 {
                continue;
            }
            while buf.len() < head_end + len {
                let n = s.read(&mut tmp).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
            let status = {
                let mut g = g.lock().unwrap();
                let status = if g.is_empty() { 500 } else { 200 };
                assert!(head.starts_with("POST /api/v2/alerts HTTP/1.1"), "{head}");
                g.push((status, body));
                status
            };
            let reason = if status == 200 {
                "OK"
            } else {
                "Internal Server Error"
            };
            let _ = s
                .write_all(format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())
                .await;
        }
    });
    (addr, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_gets_alertmanager_v2_json_and_retries() {
    let (addr, got) = receiver().await;
    let hook = format!("http://{addr}/api/v2/alerts");
    let c = start(&[
        "--interval",
        "200ms",
        "--webhook",
        &hook,
        "--external-url",
        "http://collector.example:9465",
    ])
    .await;
    let driver = tokio::spawn(drive(url(&c), 60, 20));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        {
            let g = got.lock().unwrap();
            if g.iter().any(|(s, _)| *s == 200) {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no webhook delivered: {:?}",
            got.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    driver.abort();
    let g = got.lock().unwrap().clone();
    // The first attempt failed (500) and the same batch came again.
    assert_eq!(g[0].0, 500);
    assert_eq!(g[1].0, 200);
    assert_eq!(g[0].1, g[1].1, "a retry re-sends the same batch");
    let v: serde_json::Value = serde_json::from_str(&g[1].1).expect("JSON body");
    let arr = v.as_array().expect("an array of alerts");
    let zero = arr
        .iter()
        .find(|a| a["labels"]["kind"] == "ZERO")
        .unwrap_or_else(|| panic!("no ZERO alert in {v:#}"));
    assert_eq!(zero["labels"]["alertname"], "EvenflowZero");
    assert_eq!(zero["labels"]["pool"], "web");
    assert_eq!(zero["labels"]["member"], "10.6.0.4:80");
    assert_eq!(zero["labels"]["view"], "server");
    assert_eq!(zero["labels"]["severity"], "page");
    assert!(
        zero["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("ZERO")),
        "{zero:#}"
    );
    assert!(
        zero["startsAt"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{zero:#}"
    );
    assert!(zero["endsAt"].as_str().is_some(), "{zero:#}");
    assert_eq!(
        zero["generatorURL"],
        "http://collector.example:9465/pools/web"
    );
    let body = {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(c.metrics_addr)
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(
        body.contains("evenflow_collector_webhook_failed_attempts_total 1"),
        "{body}"
    );
    assert!(body.contains(r#"evenflow_alert_open{pool="web",member="10.6.0.4:80",kind="ZERO",signal="new_connections",cause="routing",view="server",severity="page"} 1"#), "{body}");
    assert_eq!(zero["labels"]["signal"], "new_connections");
    assert_eq!(zero["labels"]["cause"], "routing");
    c.shutdown().await;
}

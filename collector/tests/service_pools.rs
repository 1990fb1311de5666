//! Pool formation and GetPool numbers over real gRPC.

mod service_common;

use std::time::Duration;

use evenflow_proto::v1;
use service_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_form_from_announced_listeners() {
    let c = start(&["--interval", "200ms"]).await;
    // b1: a listener bound to its address, no traffic yet.
    let mut b1 = Agent::connect(&c, "b1").await;
    let r = b1.next(vec![], vec![listener("10.8.0.1", 8080, "web")]);
    b1.send(r).await.unwrap();
    // b2: a wildcard listener; its address comes from its SERVES endpoints
    // (here a health check on another port), loopback is never a member.
    let mut b2 = Agent::connect(&c, "b2").await;
    let r = b2.next(
        vec![
            serves("10.8.0.2", 9000, "", 5),
            serves("127.0.0.1", 8080, "web", 5),
        ],
        vec![
            listener("0.0.0.0", 8080, "web"),
            listener("0.0.0.0", 9000, ""),
        ],
    );
    b2.send(r).await.unwrap();
    // b3: a labelled SERVES endpoint alone.
    let mut b3 = Agent::connect(&c, "b3").await;
    let r = b3.next(vec![serves("fd00::3", 8080, "web", 5)], vec![]);
    b3.send(r).await.unwrap();
    let mut q = query(&c).await;
    let p = wait_pool(&mut q, "web", 3.0, |p| p.members.len() == 3).await;
    let got: Vec<(String, u32, String, String)> = p
        .members
        .iter()
        .map(|m| {
            (
                m.address.clone(),
                m.port,
                m.node_name.clone(),
                m.source.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("10.8.0.1".into(), 8080, "b1".into(), "announced".into()),
            ("10.8.0.2".into(), 8080, "b2".into(), "announced".into()),
            ("fd00::3".into(), 8080, "b3".into(), "announced".into()),
        ]
    );
    for m in &p.members {
        assert_eq!(m.weight, 1.0);
        assert_eq!(m.state, v1::MemberState::Serving as i32);
    }
    let pools = q
        .list_pools(v1::ListPoolsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pools;
    assert_eq!(
        pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["web"]
    );
    let e = q
        .get_pool(v1::GetPoolRequest {
            name: "nope".into(),
        })
        .await
        .expect_err("unknown pool");
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("known pools: web"), "{}", e.message());
    c.shutdown().await;
}

const POOLS: &str = r#"
[[pool]]
name = "api"
lb_nodes = ["lb"]
members = [
  { address = "10.7.0.1:80", weight = 3 },
  { address = "10.7.0.2:80" },
  { address = "10.7.0.3:80", draining = true },
  { address = "10.7.0.4:80" },   # no agent ever reports it
]
"#;

/// Pool file weights and draining, a file member without an agent, and
/// GetPool's rates and shares against hand-computed values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_file_weights_draining_no_data_and_numbers() {
    let file = temp_file("pools.toml", POOLS);
    let c = start(&["--interval", "200ms", "--pools", file.to_str().unwrap()]).await;
    let mut q = query(&c).await;
    let mut b1 = Agent::connect(&c, "b1").await;
    let mut b2 = Agent::connect(&c, "b2").await;
    let mut b3 = Agent::connect(&c, "b3").await;
    let mut lb = Agent::connect(&c, "lb").await;
    // Per agent second: b1 gets 30 new connections, b2 10, b3 (draining) 0;
    // the LB sent 30 and 10 (and 0 to the others).
    let (mut n1, mut n2) = (1000u64, 500u64);
    let mut report_once = async |n1: u64, n2: u64| {
        let r = b1.next(vec![serves("10.7.0.1", 80, "api", n1)], vec![]);
        b1.send(r).await.unwrap();
        let r = b2.next(vec![serves("10.7.0.2", 80, "api", n2)], vec![]);
        b2.send(r).await.unwrap();
        let r = b3.next(vec![serves("10.7.0.3", 80, "api", 77)], vec![]);
        b3.send(r).await.unwrap();
        let r = lb.next(
            vec![
                sends_to("10.7.0.1", 80, n1 + 5),
                sends_to("10.7.0.2", 80, n2 + 5),
                sends_to("10.7.0.3", 80, 0),
            ],
            vec![],
        );
        lb.send(r).await.unwrap();
    };
    let started = tokio::time::Instant::now();
    let mut p = None;
    while started.elapsed() < Duration::from_secs(10) {
        report_once(n1, n2).await;
        n1 += 30;
        n2 += 10;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Shares are over the detector's 10-tick window: wait until it is
        // full of steady ticks.
        if started.elapsed() > Duration::from_secs(4) {
            let got = q
                .get_pool(v1::GetPoolRequest { name: "api".into() })
                .await
                .unwrap()
                .into_inner();
            let s1 = member(&got, "10.7.0.1").server_view.clone().unwrap();
            if (s1.observed_share - 0.75).abs() < 1e-9 {
                p = Some(got);
                break;
            }
        }
    }
    let p = p.expect("shares settle at 0.75 / 0.25");
    let m1 = member(&p, "10.7.0.1");
    let m2 = member(&p, "10.7.0.2");
    let m3 = member(&p, "10.7.0.3");
    let m4 = member(&p, "10.7.0.4");
    assert_eq!((m1.weight, m1.source.as_str()), (3.0, "announced+file"));
    assert_eq!(m2.weight, 1.0);
    assert_eq!(m3.state, v1::MemberState::Draining as i32);
    assert_eq!(m4.source, "file");
    // Hand-computed: 30 and 10 new connections per agent second; bytes_rx
    // is 100 per connection, bytes_tx 1000 (see service_common::endpoint).
    let s1 = m1.server_view.as_ref().unwrap();
    let s2 = m2.server_view.as_ref().unwrap();
    assert_eq!(s1.new_conns_per_sec, 30.0);
    assert_eq!(s1.bytes_in_per_sec, 3000.0);
    assert_eq!(s1.bytes_out_per_sec, 30000.0);
    assert_eq!(s2.new_conns_per_sec, 10.0);
    // Expected shares from the weights among eligible members (3:1; the
    // draining one and the one without data are not eligible).
    assert!((s1.expected_share - 0.75).abs() < 1e-12, "{s1:?}");
    assert!((s2.expected_share - 0.25).abs() < 1e-12, "{s2:?}");
    assert!((s2.observed_share - 0.25).abs() < 1e-9, "{s2:?}");
    assert_eq!(verdict(s1.verdict), v1::Verdict::Ok, "{p:#?}");
    assert_eq!(verdict(s2.verdict), v1::Verdict::Ok, "{p:#?}");
    // LB view: what the LB sent, from its SENDS_TO counters (its tx bytes
    // went into the member).
    let l1 = m1.lb_view.as_ref().unwrap();
    assert_eq!(l1.new_conns_per_sec, 30.0);
    assert_eq!(l1.bytes_in_per_sec, 30000.0);
    assert_eq!(p.lb_nodes, ["lb"]);
    assert_eq!(p.server_conns_per_sec, 40.0);
    assert_eq!(p.lb_conns_per_sec, 40.0);
    // Effective members: shares 0.75/0.25 -> 1/(0.5625+0.0625) = 1.6, as
    // the weights give.
    assert!(
        (p.effective_members - 1.6).abs() < 1e-9,
        "{}",
        p.effective_members
    );
    assert!((p.expected_effective_members - 1.6).abs() < 1e-9);
    // The draining member gets nothing: quiet.
    assert_eq!(verdict(m3.verdict), v1::Verdict::Ok, "{m3:#?}");
    // A file member whose agent never reports: NO_DATA, never ZERO.
    assert!(m4.server_view.is_none());
    assert_eq!(verdict(m4.verdict), v1::Verdict::NoData, "{m4:#?}");
    // /metrics carries the same numbers.
    let body = http_get(c.metrics_addr, "/metrics").await;
    assert!(
        body.contains(r#"evenflow_member_new_connections_per_second{pool="api",member="10.7.0.1:80",view="server"} 30"#),
        "{body}"
    );
    assert!(
        body.contains(r#"evenflow_pool_effective_members_ratio{pool="api"} 1"#),
        "{body}"
    );
    assert!(
        body.contains(r#"evenflow_agent_last_seen_age_seconds{node="b1"}"#),
        "{body}"
    );
    // The agents' own cumulative totals (what a restarted collector still
    // agrees on with the kernel): at least the first report's 1000.
    let reported = metric(
        &body,
        r#"evenflow_member_reported_connections_total{pool="api",member="10.7.0.1:80",view="server"}"#,
    );
    assert!(reported >= 1000, "{reported}");
    c.shutdown().await;
}

/// The collector started on `pools`, run until it exits (it should: the
/// file is bad).
fn collector_with_pools(pools: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_evenflow-collector"))
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--pools",
        ])
        .arg(pools)
        .output()
        .expect("run evenflow-collector")
}

#[test]
fn pool_file_errors_name_file_line_and_fix() {
    let bad = temp_file(
        "bad-pools.toml",
        "[[pool]]\nname = \"api\"\nmembers = [\n  { address = \"10.7.0.1\", weight = 2 },\n]\n",
    );
    let out = collector_with_pools(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!("{}:4:", bad.display());
    assert!(err.contains(&want), "{err}");
    assert!(
        err.contains("not ADDRESS:PORT") && err.contains("fix:"),
        "{err}"
    );

    let bad = temp_file(
        "weights.toml",
        "[[pool]]\nname = \"api\"\nmembers = [{ address = \"10.0.0.1:80\", weight = 0 }]\n",
    );
    let out = collector_with_pools(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":3:") && err.contains("draining = true"),
        "{err}"
    );

    let out = collector_with_pools(std::path::Path::new("/nonexistent/pools.toml"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/pools.toml") && err.contains("--pools"),
        "{err}"
    );
    // Said on one line, causes after the context, not as a Debug dump.
    let said: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("evenflow-collector: "))
        .collect();
    assert_eq!(said.len(), 1, "{err}");
    assert!(
        said[0].contains("/nonexistent/pools.toml") && said[0].contains("No such file"),
        "{err}"
    );
    assert!(!err.contains("Caused by"), "{err}");
}

/// A pool file naming a load balancer whose agent reports nothing sent to
/// any member while the members' own agents see traffic (a direct server
/// return balancer, or clients that no longer go through it): the pool is
/// judged on the server view, OK, and its reason says the balancer's view
/// is dark; once the balancer's connections show, the note goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dark_lb_view_is_named_in_the_pool_reason() {
    let file = temp_file(
        "pools.toml",
        "[[pool]]\nname = \"dsr\"\nlb_nodes = [\"lb\"]\nmembers = [\n  { address = \"10.9.0.1:80\" },\n  { address = \"10.9.0.2:80\" },\n]\n",
    );
    let c = start(&["--interval", "100ms", "--pools", file.to_str().unwrap()]).await;
    let mut q = query(&c).await;
    let mut b1 = Agent::connect(&c, "b1").await;
    let mut b2 = Agent::connect(&c, "b2").await;
    let mut lb = Agent::connect(&c, "lb").await;
    let mut n = 100u64;
    let mut sent = None;
    let saw = |p: &v1::Pool| p.reason.contains("load balancers' view saw no connection");
    let started = tokio::time::Instant::now();
    let mut noted = None;
    let mut last = None;
    while started.elapsed() < Duration::from_secs(30) {
        n += 10;
        let r = b1.next(vec![serves("10.9.0.1", 80, "", n)], vec![]);
        b1.send(r).await.unwrap();
        let r = b2.next(vec![serves("10.9.0.2", 80, "", n)], vec![]);
        b2.send(r).await.unwrap();
        let ends = sent.map_or(vec![], |base: u64| {
            vec![
                sends_to("10.9.0.1", 80, base + n),
                sends_to("10.9.0.2", 80, base + n),
            ]
        });
        let r = lb.next(ends, vec![]);
        lb.send(r).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Not there before the first tick.
        let Ok(p) = q.get_pool(v1::GetPoolRequest { name: "dsr".into() }).await else {
            continue;
        };
        let p = p.into_inner();
        last = Some(p.clone());
        match (&noted, saw(&p)) {
            (None, true) => {
                assert_eq!(verdict(p.verdict), v1::Verdict::Ok, "{p:#?}");
                assert_eq!(p.lb_nodes, ["lb"]);
                assert!(p.lb_view_dark, "{p:#?}");
                let body = http_get(c.metrics_addr, "/metrics").await;
                assert!(
                    body.contains(r#"evenflow_pool_lb_view_dark{pool="dsr"} 1"#),
                    "{body}"
                );
                for m in &p.members {
                    assert_eq!(verdict(m.verdict), v1::Verdict::Ok, "{m:#?}");
                }
                // The balancer's connections start to show.
                sent = Some(0);
                noted = Some(p);
            }
            (Some(_), false) => {
                assert!(!p.lb_view_dark, "{p:#?}");
                c.shutdown().await;
                return;
            }
            _ => {}
        }
    }
    panic!(
        "{}; last: {last:#?}",
        if noted.is_some() {
            "the note stayed once the balancer's view saw connections"
        } else {
            "the dark balancer's view was never named"
        }
    );
}

const REFUSING: &str = r#"
[[pool]]
name = "shop"
lb_nodes = ["lb"]
members = [
  { address = "10.9.0.1:80" },
  { address = "10.9.0.2:80" },
  { address = "10.9.0.3:80" },
]
"#;

/// A member whose balancer keeps sending to it while every attempt fails
/// (its process refuses, or never answers): ZERO, and the reason, the LB
/// view and /metrics say the balancer does send to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_refuses_what_its_balancer_sends_says_so() {
    let file = temp_file("refusing.toml", REFUSING);
    let c = start(&["--interval", "200ms", "--pools", file.to_str().unwrap()]).await;
    let mut q = query(&c).await;
    let mut backends = Vec::new();
    for node in ["b1", "b2", "b3"] {
        backends.push(Agent::connect(&c, node).await);
    }
    let mut lb = Agent::connect(&c, "lb").await;
    // Per agent second: 20 new connections to each of the first two, and
    // 20 attempts to the third, all failed.
    let started = tokio::time::Instant::now();
    let mut n = 1000u64;
    let mut zero = None;
    while started.elapsed() < Duration::from_secs(20) {
        for (i, b) in backends.iter_mut().enumerate() {
            let served = if i == 2 { 0 } else { n };
            let r = b.next(
                vec![serves(&format!("10.9.0.{}", i + 1), 80, "", served)],
                vec![],
            );
            b.send(r).await.unwrap();
        }
        let mut refused = sends_to("10.9.0.3", 80, 0);
        if let Some(t) = refused.totals.as_mut() {
            t.conns_failed = n;
        }
        let r = lb.next(
            vec![
                sends_to("10.9.0.1", 80, n),
                sends_to("10.9.0.2", 80, n),
                refused,
            ],
            vec![],
        );
        lb.send(r).await.unwrap();
        n += 20;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Not there before the collector's first tick.
        let Ok(p) = q
            .get_pool(v1::GetPoolRequest {
                name: "shop".into(),
            })
            .await
            .map(tonic::Response::into_inner)
        else {
            continue;
        };
        if verdict(member(&p, "10.9.0.3").verdict) == v1::Verdict::Zero {
            zero = Some(p);
            break;
        }
    }
    let p = zero.expect("the refusing member is judged ZERO within 20 s");
    let m3 = member(&p, "10.9.0.3");
    let says = "connection attempts to it failed in the last 10 ticks (refused or unanswered): its load balancers' nodes still dial it";
    assert!(m3.reason.contains(says), "{}", m3.reason);
    let l3 = m3.lb_view.as_ref().expect("an LB view");
    assert_eq!(l3.failed_conns_per_sec, 20.0, "{l3:?}");
    assert!(l3.failed_conns_total > 0, "{l3:?}");
    assert!(l3.reason.contains(says), "{}", l3.reason);
    let l1 = member(&p, "10.9.0.1").lb_view.clone().expect("an LB view");
    assert_eq!((l1.failed_conns_per_sec, l1.failed_conns_total), (0.0, 0));
    let body = http_get(c.metrics_addr, "/metrics").await;
    assert!(
        body.contains(r#"evenflow_member_failed_connections_per_second{pool="shop",member="10.9.0.3:80",view="lb"} 20"#),
        "{body}"
    );
    let reported = metric(
        &body,
        r#"evenflow_member_reported_failed_connections_total{pool="shop",member="10.9.0.3:80",view="lb"}"#,
    );
    assert!(
        reported >= 1000,
        "the kernel's count, from the first report: {reported}"
    );
    c.shutdown().await;
}

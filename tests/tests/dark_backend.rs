//! The incident's worst shape from the start: a load balancer that never
//! sends to one backend. That backend has served nothing, so no endpoint
//! names it; its agent's node addresses and its labelled wildcard listener
//! (nginx's `listen 8080`) must still make it a member of the pool, judged
//! ZERO, rather than a pool that silently shrank.
//!
//! Real lab: three nginx backends with an agent each (`--service
//! web=8080`), HAProxy on the lb with the third server disabled before the
//! first connection, the collector on the lb, queried with the real grpcurl.

use std::time::{Duration, Instant};

use evenflow_tests::{agent, agent::COLLECTOR, client, grpcurl, haproxy, lab::Lab};
use serde_json::Value;

fn get_pool(ns: &str) -> Option<Value> {
    grpcurl::get_pool(ns, COLLECTOR, "web").ok()
}

#[test]
fn a_backend_that_never_got_a_connection_is_zero_not_missing() {
    evenflow_tests::require_root();
    let mut lab = Lab::new("dark", 3).expect("lab");
    let lb = lab.lb.clone();
    agent::start_collector(&mut lab, "10.1.0.1:9465").expect("collector");
    agent::start_web_backends(&mut lab).expect("backends");
    agent::start(
        &mut lab,
        &lb,
        &["--collector", &format!("http://{COLLECTOR}")],
    )
    .expect("lb agent");
    let sock = haproxy::start(&mut lab, false).expect("haproxy");
    let dark = lab.backends[2].clone();
    haproxy::command(
        &sock,
        &format!("disable server {}/{}", haproxy::BACKEND, dark.role),
    )
    .expect("disable the third server before any traffic");
    let dark_id = format!("{}", dark.addr4);

    // Steady load for up to 20 s, until the collector judges the pool.
    let vip = evenflow_tests::lab::vip(false);
    let client_ns = lab.client.ns.clone();
    let lb_ns = lb.ns.clone();
    let started = Instant::now();
    let mut sent = 0;
    let mut last = None;
    let verdict = loop {
        let load = client::http_load(&client_ns, vip, 40, 4).expect("load");
        assert_eq!(load.failures, 0, "HAProxy serves every connection");
        sent += load.connections;
        if let Some(pool) = get_pool(&lb_ns) {
            let dark_member = pool["members"]
                .as_array()
                .and_then(|ms| ms.iter().find(|m| m["address"] == dark_id.as_str()))
                .cloned();
            if let Some(m) = &dark_member
                && m["verdict"] == "VERDICT_ZERO"
            {
                break pool;
            }
            last = Some(pool);
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{dark_id} never judged ZERO after {sent} connections; last pool: {last:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let members = verdict["members"].as_array().expect("members");
    let ids: Vec<&str> = members
        .iter()
        .map(|m| m["address"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        members.len(),
        3,
        "the pool has every backend, once each (no loopback, IPv6 or phantom members): {ids:?}"
    );
    let m = members
        .iter()
        .find(|m| m["address"] == dark_id.as_str())
        .expect("dark member");
    assert_eq!(m["nodeName"], dark.ns.as_str(), "{m:#}");
    // It never served a connection: no server-side count at all.
    assert!(
        m["serverView"]["connsTotal"].as_str().unwrap_or("0") == "0",
        "{m:#}"
    );
}

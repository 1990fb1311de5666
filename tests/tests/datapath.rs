//! The agent's counts against what real load balancers and servers say they
//! handled (issue: count real traffic per backend in the kernel).
//!
//! Each test builds a lab (client, load balancer, four nginx backends, one
//! agent per node), drives a known load from the test's own client, and
//! compares the agents' numbers, read with the real grpcurl, with:
//! * each backend's nginx access log (requests = connections, since every
//!   request says `Connection: close`; `$request_length` / `$bytes_sent`
//!   are the request and response as they crossed the socket: TCP payload
//!   bytes, which is what the agent counts);
//! * HAProxy's own per-server counters (`show stat`: stot, bin, bout).
//!
//! Bytes must agree within 2 %; connection counts exactly.

use std::{net::SocketAddr, time::Duration};

use evenflow_tests::{
    agent::{self, Totals},
    client, haproxy,
    lab::{BACKEND_PORT, Lab, VIP4, VIP6},
    nft, nginx,
};

const SERVES: &str = "DIRECTION_SERVES";
const SENDS_TO: &str = "DIRECTION_SENDS_TO";
const CONNECTIONS: u64 = 240;

#[derive(Clone, Copy, PartialEq)]
enum Lb {
    Haproxy,
    Dnat,
}

fn within(a: u64, b: u64, pct: f64) -> bool {
    let (a, b) = (a as f64, b as f64);
    (a - b).abs() <= b.max(1.0) * pct / 100.0
}

/// Builds a lab with `lb`, starts every agent and nginx, drives the load
/// through the VIP, and returns the lab with each backend's ground truth.
fn run(
    name: &str,
    lb: Lb,
    ipv6: bool,
) -> (
    Lab,
    Vec<std::path::PathBuf>,
    Option<std::path::PathBuf>,
    client::Load,
) {
    let mut lab = Lab::new(name, 4).expect("lab builds");
    let mut logs = Vec::new();
    for b in lab.backends.clone() {
        logs.push(nginx::start(&mut lab, &b).expect("nginx starts"));
        agent::start(&mut lab, &b, &["--service", "web=8080"]).expect("backend agent starts");
    }
    let lb_node = lab.lb.clone();
    agent::start(&mut lab, &lb_node, &[]).expect("lb agent starts");
    let stats = match lb {
        Lb::Haproxy => Some(haproxy::start(&mut lab, false).expect("haproxy starts")),
        Lb::Dnat => {
            nft::start(&lab).expect("nft DNAT rules load");
            None
        }
    };
    let vip: SocketAddr = if ipv6 {
        format!("[{VIP6}]:80")
    } else {
        format!("{VIP4}:80")
    }
    .parse()
    .expect("vip");
    // Wait until the VIP answers (HAProxy takes a moment to bind).
    let client_ns = lab.client.ns.clone();
    evenflow_tests::wait_for(Duration::from_secs(10), || {
        client::http_load(&client_ns, vip, 1, 1)
            .ok()
            .filter(|l| l.connections == 1)
    })
    .expect("the VIP answers HTTP");
    // The probe above counts too; the load below is what the test asserts
    // against ground truth that includes it.
    let load = client::http_load(&client_ns, vip, CONNECTIONS, 4).expect("client load runs");
    assert_eq!(
        load.failures, 0,
        "every client connection succeeds: {load:?}"
    );
    (lab, logs, stats, load)
}

fn backend_addr(lab: &Lab, i: usize, ipv6_backends: bool) -> String {
    let b = &lab.backends[i];
    if ipv6_backends {
        b.addr6.to_string()
    } else {
        b.addr4.to_string()
    }
}

/// Every backend's own agent saw exactly what its nginx served.
fn assert_server_view(lab: &Lab, logs: &[std::path::PathBuf], ipv6: bool) -> Vec<nginx::Served> {
    let mut served = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let b = &lab.backends[i];
        let truth = nginx::read_log(log).expect("access log");
        let addr = backend_addr(lab, i, ipv6);
        let snap = agent::settle(&b.ns, Duration::from_secs(10), |s| {
            let t = agent::totals(s, &addr, BACKEND_PORT, SERVES);
            t.opened == truth.connections && t.closed == truth.connections
        })
        .expect("backend snapshot");
        let t = agent::totals(&snap, &addr, BACKEND_PORT, SERVES);
        assert!(truth.connections > 0, "{}: nginx served nothing", b.ns);
        assert_eq!(
            (t.opened, t.closed),
            (truth.connections, truth.connections),
            "{}: agent SERVES {addr}:{BACKEND_PORT} opened/closed vs nginx connections {truth:?}; snapshot: {snap}",
            b.ns
        );
        assert!(
            within(t.bytes_rx, truth.request_bytes, 2.0)
                && within(t.bytes_tx, truth.response_bytes, 2.0),
            "{}: agent bytes rx/tx {}/{} vs nginx request/response bytes {}/{}",
            b.ns,
            t.bytes_rx,
            t.bytes_tx,
            truth.request_bytes,
            truth.response_bytes
        );
        // Labelled by --service web=8080.
        let ep = snap["endpoints"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["direction"] == SERVES))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            ep["service"], "web",
            "{}: service label; snapshot: {snap}",
            b.ns
        );
        served.push(truth);
    }
    served
}

#[test]
fn haproxy_counts_match_nginx_and_haproxy_stats() {
    evenflow_tests::require_root();
    let (lab, logs, stats, load) = run("hap4", Lb::Haproxy, false);
    let served = assert_server_view(&lab, &logs, false);
    assert_eq!(
        served.iter().map(|s| s.connections).sum::<u64>(),
        load.connections + 1,
        "backends served every client connection (plus the readiness probe)"
    );
    let sock = stats.expect("haproxy stats socket");
    let hstats = haproxy::stats(&sock).expect("show stat");
    for (i, b) in lab.backends.iter().enumerate() {
        let h = hstats[&b.role];
        let addr = b.addr4.to_string();
        let snap = agent::settle(&lab.lb.ns, Duration::from_secs(10), |s| {
            agent::totals(s, &addr, BACKEND_PORT, SENDS_TO).opened == h.stot
        })
        .expect("lb snapshot");
        let t: Totals = agent::totals(&snap, &addr, BACKEND_PORT, SENDS_TO);
        assert_eq!(
            t.opened, h.stot,
            "lb agent SENDS_TO {addr} vs HAProxy stot for {}: {snap}",
            b.role
        );
        assert_eq!(
            h.stot, served[i].connections,
            "HAProxy and nginx agree on {}",
            b.role
        );
        // Bytes: the ground truth is the backend's nginx, which logs the
        // request and response exactly as they crossed the socket (payload
        // bytes). HAProxy's bin/bout are not payload bytes: it counts
        // headers in its internal (HTX) form, without separators, about
        // 12 bytes short per request and 20 per response here; they are
        // checked to be in the same range only.
        let truth = served[i];
        assert!(
            within(t.bytes_tx, truth.request_bytes, 2.0)
                && within(t.bytes_rx, truth.response_bytes, 2.0),
            "lb agent bytes tx/rx {}/{} vs {}'s nginx request/response bytes {}/{}",
            t.bytes_tx,
            t.bytes_rx,
            b.role,
            truth.request_bytes,
            truth.response_bytes
        );
        assert!(
            within(t.bytes_tx, h.bin, 25.0) && within(t.bytes_rx, h.bout, 5.0),
            "lb agent bytes tx/rx {}/{} vs HAProxy bin/bout {}/{} for {}",
            t.bytes_tx,
            t.bytes_rx,
            h.bin,
            h.bout,
            b.role
        );
    }
    // The lb also serves the frontend: every client connection, once.
    let snap = agent::snapshot(&lab.lb.ns).expect("lb snapshot");
    let fe = agent::totals(&snap, VIP4, 80, SERVES);
    assert_eq!(
        fe.opened,
        load.connections + 1,
        "lb SERVES {VIP4}:80: {snap}"
    );

    // The real grpcurl sees the API through reflection.
    let list = agent::grpcurl(&lab.lb.ns, &["list"]).expect("grpcurl list");
    assert!(
        list.contains("evenflow.v1.Node") && list.contains("grpc.health.v1.Health"),
        "{list}"
    );
    let desc =
        agent::grpcurl(&lab.lb.ns, &["describe", "evenflow.v1.Node"]).expect("grpcurl describe");
    assert!(
        desc.contains("GetSnapshot") && desc.contains("WatchSnapshots"),
        "{desc}"
    );
}

fn assert_dnat(name: &str, ipv6: bool) {
    evenflow_tests::require_root();
    let (lab, logs, _, load) = run(name, Lb::Dnat, ipv6);
    let served = assert_server_view(&lab, &logs, ipv6);
    assert_eq!(
        served.iter().map(|s| s.connections).sum::<u64>(),
        load.connections + 1
    );
    for (i, b) in lab.backends.iter().enumerate() {
        let addr = backend_addr(&lab, i, ipv6);
        let truth = served[i];
        let snap = agent::settle(&lab.lb.ns, Duration::from_secs(10), |s| {
            let t = agent::totals(s, &addr, BACKEND_PORT, SENDS_TO);
            t.opened == truth.connections && t.closed == truth.connections
        })
        .expect("lb snapshot");
        let t = agent::totals(&snap, &addr, BACKEND_PORT, SENDS_TO);
        assert_eq!(
            (t.opened, t.closed),
            (truth.connections, truth.connections),
            "lb agent SENDS_TO {addr}:{BACKEND_PORT} (forwarded, post-DNAT) vs {}'s nginx: {snap}",
            b.role
        );
        assert!(
            within(t.bytes_tx, truth.request_bytes, 2.0)
                && within(t.bytes_rx, truth.response_bytes, 2.0),
            "lb agent bytes tx/rx {}/{} vs {}'s nginx request/response bytes {}/{}",
            t.bytes_tx,
            t.bytes_rx,
            b.role,
            truth.request_bytes,
            truth.response_bytes
        );
    }
    // A forwarded connection is never counted as served by the lb.
    let snap = agent::snapshot(&lab.lb.ns).expect("lb snapshot");
    let vip = if ipv6 { VIP6 } else { VIP4 };
    assert_eq!(
        agent::totals(&snap, vip, 80, SERVES),
        Totals::default(),
        "{snap}"
    );
}

#[test]
fn nftables_dnat_counts_match_nginx_ipv4() {
    assert_dnat("dnat4", false);
}

#[test]
fn nftables_dnat_counts_match_nginx_ipv6() {
    assert_dnat("dnat6", true);
}

//! A Kubernetes node, built as Kubernetes builds one (issue 10, "Proof"):
//! pods in network namespaces of their own behind /32-routed veths with
//! proxy-ARP, their cgroups under the node's, kube-proxy-style nftables
//! DNAT for two ClusterIPs (see `evenflow_tests::kubenode`), one real agent
//! on the node attached to the cgroup above every pod, run with no
//! `--service`, and the real collector reading the stand-in API server
//! (`evenflow_tests::kubeapi`) through its kube-rs client, with the
//! manifest's RBAC. Two Services listen on the same port 8080: `svc-a` with
//! three pods, `svc-b` with two. The client pod reaches both through their
//! ClusterIPs, so every connection is DNATed on the node.
//!
//! It checks, in turn:
//! 1. per pod, the agent's server view (SERVES pod:8080) and LB view
//!    (SENDS_TO pod:8080, the DNAT), and the collector's totals of both,
//!    against that pod's nginx access log; each pool has exactly its own
//!    pods, named;
//! 2. a rolling update of `svc-a` under steady traffic — a new pod is
//!    started, becomes ready and joins the rules; an old one terminates,
//!    leaves the rules, then the slice — raises no page;
//! 3. `evenflow status`, `evenflow top` and grpcurl's `ListPools` show the
//!    pools by their Services;
//! 4. an endpoint the DNAT rules stop sending to while its slice still says
//!    ready is ZERO within 10 s, its alert naming its pod.
//!
//! A second node (`a_pod_that_turns_not_ready_…`) has a pod fail its
//! readiness probe while the node's kubelet keeps probing it: when
//! kube-proxy drops it from its rules nothing pages; when kube-proxy's
//! rules go stale and keep sending to it, it pages DRAINING_VIOLATION
//! ("not ready, yet…") once the drain grace has passed, and clears once
//! kube-proxy syncs.
//!
//! Run as root: `cargo build --bins && cargo test -p evenflow-tests --test
//! kube_node -- --nocapture` prints every measured figure.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use evenflow_tests::{
    agent, client,
    grpcurl::{self, SENDS_TO, SERVES, Totals},
    kubeapi::{
        self, ApiServer,
        objects::{self, Pod, State},
    },
    kubenode::{self, ClusterIp},
    lab::{BACKEND_PORT, Lab, Node},
    netns,
    nginx::{self, Served},
    truth::within_pct,
};
use serde_json::Value;

const NS: &str = "default";
/// The collector's gRPC address inside the node.
const COLLECTOR: &str = "127.0.0.1:50052";
/// Connections per Service in the counting phase.
const CONNECTIONS: u64 = 150;
/// Byte tolerance, percent (as the datapath tests).
const BYTES_PCT: f64 = 2.0;

/// The lab and what runs on it.
struct Node8s {
    /// Before `lab`: it stops before the node's namespace goes.
    api: ApiServer,
    lab: Lab,
    services: Vec<ClusterIp>,
    logs: Vec<PathBuf>,
}

fn service(name: &str, ip: &str) -> ClusterIp {
    ClusterIp {
        name: name.into(),
        ip: ip.parse().expect("ip"),
        port: 80,
        target_port: BACKEND_PORT,
    }
}

/// svc-a's pods are the backends whose role starts with "a".
fn svc_of(pod: &Node) -> &'static str {
    if pod.role.starts_with('a') {
        "svc-a"
    } else {
        "svc-b"
    }
}

fn pod_name(pod: &Node) -> String {
    format!("{}-{}", svc_of(pod), pod.role)
}

impl Node8s {
    fn node(&self) -> Node {
        self.lab.lb.clone()
    }

    fn pods(&self, svc: &str) -> Vec<Node> {
        self.lab
            .backends
            .iter()
            .filter(|p| svc_of(p) == svc)
            .cloned()
            .collect()
    }

    /// Writes `svc`'s EndpointSlice: these pods, in these states.
    fn slice(&self, svc: &str, pods: &[(&Node, State)]) {
        let node = self.node().ns;
        let eps: Vec<Pod> = pods
            .iter()
            .map(|(p, state)| Pod {
                state: *state,
                zone: Some("zone-a".into()),
                ..Pod::ready(&pod_name(p), &p.addr4.to_string(), &node)
            })
            .collect();
        self.api
            .apply(&objects::endpoint_slice(
                NS,
                svc,
                "k8n",
                ("http", i32::from(BACKEND_PORT)),
                &eps,
            ))
            .expect("slice");
    }

    /// kube-proxy syncs: each Service sends to these pods.
    fn rules(&self, a: &[&Node], b: &[&Node]) {
        let ips = |ps: &[&Node]| ps.iter().map(|p| p.addr4).collect::<Vec<IpAddr>>();
        kubenode::sync(
            &self.lab,
            &[(&self.services[0], ips(a)), (&self.services[1], ips(b))],
        )
        .expect("kube-proxy sync");
    }

    fn call(&self, method: &str, body: &str) -> Option<Value> {
        grpcurl::call(
            &self.node().ns,
            COLLECTOR,
            &format!("evenflow.v1.Distribution/{method}"),
            body,
        )
        .ok()
    }

    fn pools(&self) -> Vec<Value> {
        self.call("ListPools", "{}")
            .and_then(|v| v["pools"].as_array().cloned())
            .unwrap_or_default()
    }

    fn alerts(&self) -> Vec<Value> {
        self.call("ListAlerts", r#"{"includeResolved":true}"#)
            .and_then(|v| v["alerts"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Fails with the processes' output.
    fn fail(&mut self, msg: String) -> ! {
        let procs = self.lab.processes_report();
        panic!("{msg}\nprocesses:\n{procs}")
    }
}

/// The node `name`, its pods serving, the collector and the agent running.
fn build(name: &str) -> Node8s {
    evenflow_tests::require_root();
    let mut lab =
        Lab::kubernetes_node(name, &["a1", "a2", "a3", "b1", "b2"]).expect("a Kubernetes node");
    let node = lab.lb.clone();
    let mut logs = Vec::new();
    for p in lab.backends.clone() {
        logs.push(nginx::start(&mut lab, &p).expect("nginx in the pod"));
    }
    let api = ApiServer::start(kubeapi::Options {
        addr: SocketAddr::from(([127, 0, 0, 1], 6443)),
        netns: Some(node.ns.clone()),
        rules: Some(kubeapi::collector_rules().expect("the manifest's ClusterRole")),
        ..Default::default()
    })
    .expect("stand-in API server in the node");
    let kubeconfig = lab.dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let k = Node8s {
        lab,
        api,
        services: vec![
            service("svc-a", "10.96.0.10"),
            service("svc-b", "10.96.0.11"),
        ],
        logs,
    };
    k.api
        .apply(&objects::node(&node.ns, Some("zone-a")))
        .expect("node");
    for s in &k.services {
        k.api
            .apply(&objects::service(
                NS,
                &s.name,
                &s.ip.to_string(),
                &[("http", 80, i32::from(BACKEND_PORT))],
            ))
            .expect("service");
    }
    let (a, b) = (k.pods("svc-a"), k.pods("svc-b"));
    k.slice(
        "svc-a",
        &a.iter().map(|p| (p, State::Ready)).collect::<Vec<_>>(),
    );
    k.slice(
        "svc-b",
        &b.iter().map(|p| (p, State::Ready)).collect::<Vec<_>>(),
    );
    k.rules(&a.iter().collect::<Vec<_>>(), &b.iter().collect::<Vec<_>>());
    let mut k = k;
    let bin = agent::binary("evenflow-collector", "EVENFLOW_COLLECTOR_BIN").expect("collector");
    k.lab
        .spawn(
            &node,
            "collector",
            &bin.display().to_string(),
            &[
                "--grpc-addr",
                COLLECTOR,
                "--metrics-addr",
                "127.0.0.1:9465",
                "--kubeconfig",
                &kubeconfig.display().to_string(),
                "--kube-drain-grace",
                "5s",
            ],
        )
        .expect("collector");
    // The node's agent: the cgroup above every pod, every veth, no labels.
    agent::start(
        &mut k.lab,
        &node,
        &["--collector", &format!("http://{COLLECTOR}")],
    )
    .expect("agent on the node");
    k
}

/// Phase 1: known loads through each ClusterIP; every count of every pod
/// against its nginx log, in the agent's two views and the collector's.
fn counts_match_each_pods_log(k: &mut Node8s) {
    let client_ns = k.lab.client.ns.clone();
    let mut context = String::new();
    for s in k.services.clone() {
        let load = client::http_load(&client_ns, SocketAddr::new(s.ip, s.port), CONNECTIONS, 4)
            .expect("load");
        let _ = writeln!(context, "client → {} ({}): {load:?}", s.name, s.ip);
        if load.failures > 0 || load.connections != CONNECTIONS {
            k.fail(format!(
                "the client's load through {} failed: {load:?}",
                s.ip
            ));
        }
    }
    let pods = k.lab.backends.clone();
    let served: Vec<Served> = evenflow_tests::wait_for(Duration::from_secs(5), || {
        let s: Vec<Served> = k
            .logs
            .iter()
            .map(|l| nginx::read_log(l).unwrap_or_default())
            .collect();
        (s.iter().map(|x| x.connections).sum::<u64>() == 2 * CONNECTIONS).then_some(s)
    })
    .unwrap_or_else(|| {
        k.fail("the pods' nginx logs never added up to the client's connections".into())
    });
    let node = k.node();
    let endpoints: Vec<(String, u16, &'static str)> = pods
        .iter()
        .flat_map(|p| {
            [
                (p.addr4.to_string(), BACKEND_PORT, SERVES),
                (p.addr4.to_string(), BACKEND_PORT, SENDS_TO),
            ]
        })
        .collect();
    let (snap, totals) = grpcurl::settle(
        &node.ns,
        Duration::from_secs(15),
        |s| {
            endpoints
                .iter()
                .map(|(a, p, d)| grpcurl::totals(s, a, *p, d))
                .collect::<Vec<Totals>>()
        },
        |t| {
            t.iter()
                .zip(served.iter().flat_map(|s| [s, s]))
                .all(|(t, s)| t.opened == s.connections && t.closed == s.connections)
        },
    )
    .expect("the node agent's snapshot");
    let mut failures = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let s = served[i];
        let (sv, lb) = (totals[2 * i], totals[2 * i + 1]);
        let _ = writeln!(
            context,
            "{} {}: nginx {} conns {}/{} B; SERVES {} conns {}/{} B; SENDS_TO {} conns {}/{} B",
            p.role,
            p.addr4,
            s.connections,
            s.request_bytes,
            s.response_bytes,
            sv.opened,
            sv.bytes_rx,
            sv.bytes_tx,
            lb.opened,
            lb.bytes_tx,
            lb.bytes_rx
        );
        if s.connections == 0 {
            failures.push(format!("{}: DNAT never sent it a connection", p.role));
        }
        // Server view: the pod received the request, sent the response.
        // LB view: the node sent (tx) the request and received the response.
        for (what, t, rx, tx) in [
            ("SERVES", sv, sv.bytes_rx, sv.bytes_tx),
            ("SENDS_TO", lb, lb.bytes_tx, lb.bytes_rx),
        ] {
            if (t.opened, t.closed) != (s.connections, s.connections) {
                failures.push(format!(
                    "{} {what}: opened/closed {}/{}, nginx served {}",
                    p.role, t.opened, t.closed, s.connections
                ));
            }
            if !within_pct(rx, s.request_bytes, BYTES_PCT)
                || !within_pct(tx, s.response_bytes, BYTES_PCT)
            {
                failures.push(format!(
                    "{} {what}: request/response bytes {rx}/{tx}, nginx logged {}/{}",
                    p.role, s.request_bytes, s.response_bytes
                ));
            }
        }
    }
    // The collector: each pool exactly its own pods, named, and its totals
    // in both views those of the kernel.
    let want = |svc: &str| -> Vec<(String, String)> {
        pods.iter()
            .filter(|p| svc_of(p) == svc)
            .map(|p| (p.addr4.to_string(), format!("{NS}/{}", pod_name(p))))
            .collect()
    };
    let settled = evenflow_tests::wait_for(Duration::from_secs(15), || {
        let pools = k.pools();
        let ok = pools.len() == 2
            && pools.iter().all(|p| {
                p["members"].as_array().is_some_and(|ms| {
                    ms.iter().all(|m| {
                        let i = pods
                            .iter()
                            .position(|p| m["address"] == p.addr4.to_string().as_str());
                        i.is_some_and(|i| {
                            grpcurl::number(&m["serverView"]["connsTotal"]) == served[i].connections
                                && grpcurl::number(&m["lbView"]["connsTotal"])
                                    == served[i].connections
                        })
                    })
                })
            });
        ok.then_some(pools)
    });
    let matched = settled.is_some();
    let pools = settled.unwrap_or_else(|| k.pools());
    for (name, svc) in [
        ("default/svc-a:http", "svc-a"),
        ("default/svc-b:http", "svc-b"),
    ] {
        let got: Vec<(String, String)> = pools
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["members"].as_array())
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    m["address"].as_str().unwrap_or("").to_owned(),
                    m["pod"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        if got != want(svc) {
            failures.push(format!("pool {name} has {got:?}, want {:?}", want(svc)));
        }
    }
    if !matched {
        failures.push(format!(
            "the collector's connsTotal never matched nginx's logs: {:#?}",
            pools
        ));
    }
    let _ = write!(context, "node snapshot:\n{}", grpcurl::summary(&snap));
    if !failures.is_empty() {
        k.fail(format!(
            "{} mismatch(es):\n  - {}\n{context}",
            failures.len(),
            failures.join("\n  - ")
        ));
    }
    println!("per-pod counts match nginx in both views and the collector:\n{context}");
}

/// Load a thread drives, round after round, until stopped.
struct Background {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<client::Load>,
}

impl Background {
    /// Runs `round` with `pause` between rounds, adding up what it drove.
    fn run(
        pause: Duration,
        mut round: impl FnMut() -> Option<client::Load> + Send + 'static,
    ) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut total = client::Load::default();
            while !stop2.load(Ordering::Relaxed) {
                if let Some(l) = round() {
                    total.add(&l);
                }
                std::thread::sleep(pause);
            }
            total
        });
        Background { stop, thread }
    }

    /// The client pod's steady load on both ClusterIPs: about 150
    /// connections a second per Service, steady, and light enough to leave
    /// the machine's two cores to the rest.
    fn start(k: &Node8s) -> Background {
        let ns = k.lab.client.ns.clone();
        let targets: Vec<SocketAddr> = k
            .services
            .iter()
            .map(|s| SocketAddr::new(s.ip, s.port))
            .collect();
        Background::run(Duration::from_millis(40), move || {
            let mut round = client::Load::default();
            for t in &targets {
                if let Ok(l) = client::http_load(&ns, *t, 6, 2) {
                    round.add(&l);
                }
            }
            Some(round)
        })
    }

    /// The node's kubelet probing `pod`'s port directly (no Service, no
    /// DNAT) once a second: the connections a not-ready pod still gets
    /// from its own node.
    fn kubelet(k: &Node8s, pod: &Node) -> Background {
        let ns = k.node().ns;
        let target = SocketAddr::new(pod.addr4, BACKEND_PORT);
        Background::run(Duration::from_secs(1), move || {
            client::http_load(&ns, target, 1, 1).ok()
        })
    }

    fn finish(self) -> client::Load {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("load thread")
    }
}

/// Polls for `d`, failing as soon as an alert pages.
fn no_page_for(k: &mut Node8s, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(500));
        let pages: Vec<Value> = k
            .alerts()
            .into_iter()
            .filter(|a| a["severity"] == "SEVERITY_PAGE")
            .collect();
        if !pages.is_empty() {
            k.fail(format!("the rolling update paged: {pages:#?}"));
        }
    }
}

/// Phase 2: a rolling update of svc-a while the client's traffic flows.
fn rolling_update_pages_nothing(k: &mut Node8s) {
    let load = Background::start(k);
    no_page_for(k, Duration::from_secs(4));
    let started = Instant::now();
    let (a, b) = (k.pods("svc-a"), k.pods("svc-b"));
    let b: Vec<&Node> = b.iter().collect();
    // A surge pod: its sandbox, its nginx, its endpoint (starting).
    let a4 = kubenode::add_pod(&mut k.lab, "a4").expect("surge pod");
    k.logs
        .push(nginx::start(&mut k.lab, &a4).expect("nginx in a4"));
    let mut slice: Vec<(&Node, State)> = a.iter().map(|p| (p, State::Ready)).collect();
    slice.push((&a4, State::Starting));
    k.slice("svc-a", &slice);
    no_page_for(k, Duration::from_secs(2));
    // Ready; kube-proxy syncs half a second later.
    slice[3].1 = State::Ready;
    k.slice("svc-a", &slice);
    std::thread::sleep(Duration::from_millis(500));
    k.rules(&[&a[0], &a[1], &a[2], &a4], &b);
    no_page_for(k, Duration::from_secs(4));
    // a1 terminates: its endpoint drains; kube-proxy drops it.
    slice[0].1 = State::Terminating;
    k.slice("svc-a", &slice);
    std::thread::sleep(Duration::from_millis(500));
    k.rules(&[&a[1], &a[2], &a4], &b);
    no_page_for(k, Duration::from_secs(2));
    let draining = k
        .pools()
        .iter()
        .flat_map(|p| p["members"].as_array().cloned().unwrap_or_default())
        .any(|m| m["pod"] == "default/svc-a-a1" && m["state"] == "MEMBER_STATE_DRAINING");
    no_page_for(k, Duration::from_secs(4));
    // Gone: out of the slice, its nginx stopped.
    slice.remove(0);
    k.slice("svc-a", &slice);
    k.lab.stop("nginx-a1");
    no_page_for(k, Duration::from_secs(8));
    let took = started.elapsed();
    let traffic = load.finish();
    let alerts = k.alerts();
    let members: Vec<String> = k
        .pools()
        .iter()
        .find(|p| p["name"] == "default/svc-a:http")
        .and_then(|p| p["members"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|m| m["pod"].as_str().unwrap_or("").to_owned())
        .collect();
    let a4_served = nginx::read_log(k.logs.last().expect("a4's log")).unwrap_or_default();
    println!(
        "rolling update: {:.1} s, client {} connections ({} failed), a4 served {}, alerts {} (pages 0): {}",
        took.as_secs_f64(),
        traffic.connections,
        traffic.failures,
        a4_served.connections,
        alerts.len(),
        alerts
            .iter()
            .map(|a| format!("{} {} {}", a["severity"], a["kind"], a["member"]))
            .collect::<Vec<_>>()
            .join("; ")
    );
    if traffic.failures > 0 {
        k.fail(format!("connections failed during the update: {traffic:?}"));
    }
    if !draining {
        k.fail("a1 was never shown draining while it terminated".into());
    }
    if a4_served.connections == 0 {
        k.fail("the surge pod never got a connection".into());
    }
    if members != ["default/svc-a-a2", "default/svc-a-a3", "default/svc-a-a4"] {
        k.fail(format!("after the update svc-a's pool is {members:?}"));
    }
}

/// Phase 3: people's tools name the pools by their Services.
fn tools_show_services(k: &mut Node8s) {
    let node = k.node().ns;
    let cli = agent::binary("evenflow", "EVENFLOW_CLI_BIN").expect("evenflow CLI");
    let cli = cli.display().to_string();
    let url = format!("http://{COLLECTOR}");
    let status =
        netns::exec(&node, &cli, &["status", "--collector", &url]).expect("evenflow status");
    for want in [
        "svc-a · Service default/svc-a port http (80)",
        "svc-b · Service default/svc-b port http (80)",
        "default/svc-a-a2",
        "default/svc-b-b1",
    ] {
        if !status.contains(want) {
            k.fail(format!("evenflow status lacks {want:?}:\n{status}"));
        }
    }
    // top, on a terminal (tmux), asked for the Service by name.
    let cmd = format!("ip netns exec {node} {cli} top svc-b --collector {url}");
    let screen = evenflow_tests::tmux::screen(&cmd, Duration::from_secs(3)).expect("tmux");
    let rows = screen
        .lines()
        .filter(|l| l.contains("default/svc-b-b"))
        .count();
    if !screen.contains("svc-b · Service default/svc-b port http (80)") || rows != 2 {
        k.fail(format!(
            "evenflow top svc-b shows {rows} pod rows:\n{screen}"
        ));
    }
    // grpcurl, through reflection.
    let names: Vec<String> = k
        .pools()
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p["name"].as_str().unwrap_or(""),
                p["kubernetes"]["service"].as_str().unwrap_or("")
            )
        })
        .collect();
    if names != ["default/svc-a:http svc-a", "default/svc-b:http svc-b"] {
        k.fail(format!("grpcurl ListPools: {names:?}"));
    }
    println!("evenflow status:\n{status}\nevenflow top svc-b:\n{screen}");
}

/// Phase 4: kube-proxy stops sending to a2 while its slice says ready.
fn a_pod_the_rules_leave_out_is_zero(k: &mut Node8s) {
    let load = Background::start(k);
    std::thread::sleep(Duration::from_secs(3));
    let a: Vec<Node> = k.pods("svc-a");
    let live: Vec<&Node> = a.iter().filter(|p| p.role != "a1").collect();
    let b = k.pods("svc-b");
    let dark = live
        .iter()
        .find(|p| p.role == "a2")
        .map(|p| (*p).clone())
        .expect("a2");
    let rest: Vec<&Node> = live.iter().copied().filter(|p| p.role != "a2").collect();
    k.rules(&rest, &b.iter().collect::<Vec<_>>());
    let cut = Instant::now();
    let member = format!("{}:{BACKEND_PORT}", dark.addr4);
    let mut verdict_at = None;
    let mut alert = None;
    while cut.elapsed() < Duration::from_secs(15) && alert.is_none() {
        std::thread::sleep(Duration::from_millis(200));
        if verdict_at.is_none() {
            let zero = k
                .pools()
                .iter()
                .flat_map(|p| p["members"].as_array().cloned().unwrap_or_default())
                .any(|m| {
                    m["address"] == dark.addr4.to_string().as_str()
                        && m["verdict"] == "VERDICT_ZERO"
                });
            if zero {
                verdict_at = Some(cut.elapsed());
            }
        }
        alert = k.alerts().into_iter().find(|a| {
            a["kind"] == "ALERT_KIND_ZERO"
                && a["member"] == member.as_str()
                && a["resolvedAt"].is_null()
        });
    }
    let fired = cut.elapsed();
    let traffic = load.finish();
    let Some(alert) = alert else {
        k.fail(format!(
            "no ZERO alert for {member} within 15 s (verdict at {verdict_at:?})"
        ))
    };
    println!(
        "ZERO for {member}: verdict {:.1} s, page {:.1} s after kube-proxy dropped it ({} client connections meanwhile): {}",
        verdict_at.unwrap_or(fired).as_secs_f64(),
        fired.as_secs_f64(),
        traffic.connections,
        alert["summary"]
    );
    if fired > Duration::from_secs(10) {
        k.fail(format!(
            "ZERO paged {:.1} s after the cut, more than 10 s",
            fired.as_secs_f64()
        ));
    }
    if alert["pod"] != "default/svc-a-a2" || alert["severity"] != "SEVERITY_PAGE" {
        k.fail(format!("the ZERO alert does not name its pod: {alert:#}"));
    }
}

#[test]
fn two_services_on_one_port_of_a_kubernetes_node() {
    let mut k = build("k8n");
    counts_match_each_pods_log(&mut k);
    rolling_update_pages_nothing(&mut k);
    tools_show_services(&mut k);
    a_pod_the_rules_leave_out_is_zero(&mut k);
}

impl Node8s {
    /// svc-a's member `pod` as ListPools shows it: (state, verdict, reason).
    fn member(&self, pod: &Node) -> Option<(String, String, String)> {
        let addr = pod.addr4.to_string();
        self.pools()
            .iter()
            .flat_map(|p| p["members"].as_array().cloned().unwrap_or_default())
            .find(|m| m["address"] == addr.as_str())
            .map(|m| {
                let s = |f: &str| m[f].as_str().unwrap_or("").to_owned();
                (s("state"), s("verdict"), s("reason"))
            })
    }

    /// The open (or, with `resolved`, any) DRAINING_VIOLATION for `pod`.
    fn violation(&self, pod: &Node, resolved: bool) -> Option<Value> {
        let member = format!("{}:{BACKEND_PORT}", pod.addr4);
        self.alerts().into_iter().find(|a| {
            a["kind"] == "ALERT_KIND_DRAINING_VIOLATION"
                && a["member"] == member.as_str()
                && (resolved || a["resolvedAt"].is_null())
        })
    }
}

/// The grace the node's collector gives a pod that turned not ready
/// (`--kube-drain-grace` in [`build`]).
const GRACE: Duration = Duration::from_secs(5);

#[test]
fn a_pod_that_turns_not_ready_pages_only_while_a_stale_kube_proxy_sends_to_it() {
    let mut k = build("k8r");
    let (a, b) = (k.pods("svc-a"), k.pods("svc-b"));
    let b: Vec<&Node> = b.iter().collect();
    let a3 = a[2].clone();
    let load = Background::start(&k);
    let kubelet = Background::kubelet(&k, &a3);
    // The pools settle under load: every member judged OK.
    let settled = evenflow_tests::wait_for(Duration::from_secs(30), || {
        k.member(&a3).filter(|(_, v, _)| v == "VERDICT_OK")
    });
    if settled.is_none() {
        k.fail(format!("svc-a never settled: a3 is {:?}", k.member(&a3)));
    }
    let mut slice: Vec<(&Node, State)> = a.iter().map(|p| (p, State::Ready)).collect();

    // 1. a3 fails its readiness probe; kube-proxy drops it half a second
    // later. The kubelet keeps probing it: no page, and once the grace has
    // passed it is judged (OK), shown not ready.
    slice[2].1 = State::NotReady;
    k.slice("svc-a", &slice);
    std::thread::sleep(Duration::from_millis(500));
    k.rules(&[&a[0], &a[1]], &b);
    no_page_for(&mut k, GRACE + Duration::from_secs(12));
    match k.member(&a3) {
        Some((state, verdict, _))
            if state == "MEMBER_STATE_NOT_READY" && verdict == "VERDICT_OK" => {}
        other => k.fail(format!(
            "a3, not ready and out of the rules past the grace, is {other:?}"
        )),
    }

    // 2. Ready again; kube-proxy takes it back half a second later.
    slice[2].1 = State::Ready;
    k.slice("svc-a", &slice);
    std::thread::sleep(Duration::from_millis(500));
    k.rules(&[&a[0], &a[1], &a[2]], &b);
    no_page_for(&mut k, Duration::from_secs(8));

    // 3. Not ready again, and kube-proxy's rules go stale: it keeps
    // sending a3 its share.
    slice[2].1 = State::NotReady;
    k.slice("svc-a", &slice);
    let turned = Instant::now();
    let mut page = None;
    while turned.elapsed() < GRACE + Duration::from_secs(20) && page.is_none() {
        std::thread::sleep(Duration::from_millis(250));
        page = k.violation(&a3, false);
    }
    let paged = turned.elapsed();
    let Some(page) = page else {
        k.fail(format!(
            "no DRAINING_VIOLATION for not-ready a3 that stale rules still send to within {:?}: a3 is {:?}",
            GRACE + Duration::from_secs(20),
            k.member(&a3)
        ))
    };
    let summary = page["summary"].as_str().unwrap_or("").to_owned();
    if paged < GRACE
        || page["severity"] != "SEVERITY_PAGE"
        || page["pod"] != "default/svc-a-a3"
        || !summary.contains("not ready, yet it got")
    {
        k.fail(format!(
            "a3's page came {:.1} s after it turned not ready (grace {GRACE:?}): {page:#}",
            paged.as_secs_f64()
        ));
    }
    match k.member(&a3) {
        Some((state, ..)) if state == "MEMBER_STATE_NOT_READY" => {}
        other => k.fail(format!("a3 while paging is {other:?}")),
    }

    // 4. kube-proxy syncs: the page resolves while the kubelet probes on.
    k.rules(&[&a[0], &a[1]], &b);
    let synced = Instant::now();
    let resolved = evenflow_tests::wait_for(Duration::from_secs(40), || {
        k.violation(&a3, true)
            .filter(|a| !a["resolvedAt"].is_null())
    });
    let cleared = synced.elapsed();
    let probes = kubelet.finish();
    let traffic = load.finish();
    if resolved.is_none() {
        k.fail(format!(
            "a3's DRAINING_VIOLATION never resolved after kube-proxy synced: a3 is {:?}",
            k.member(&a3)
        ));
    }
    println!(
        "not-ready a3 under {} client connections and {} kubelet probes: no page while kube-proxy dropped it; stale rules paged {:.1} s after it turned not ready (grace {GRACE:?}), resolved {:.1} s after the sync: {summary}",
        traffic.connections,
        probes.connections,
        paged.as_secs_f64(),
        cleared.as_secs_f64()
    );
    if probes.connections < 20 || probes.failures > 0 {
        k.fail(format!("the kubelet's probes: {probes:?}"));
    }
}

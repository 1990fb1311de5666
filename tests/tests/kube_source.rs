//! The collector's Kubernetes pool source (issue 10), end to end without a
//! cluster: the real `evenflow-collector` binary, its real kube-rs client
//! configured by a kubeconfig (TLS with the cluster CA, a bearer token),
//! against the stand-in API server (`evenflow_tests::kubeapi`) enforcing
//! exactly the ClusterRole of `deploy/kubernetes/collector-rbac.yaml`, and
//! simulated agents on real gRPC report streams whose traffic follows what
//! kube-proxy would do with the EndpointSlices.
//!
//! The node lab (`kube_node.rs`) proves the same with real pods, real
//! kube-proxy-style DNAT and the real agent; these tests drive what a lab
//! cannot drive quickly: watch expiry and re-lists, API server restarts,
//! RBAC refusals, zones.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use evenflow_proto::v1::{self, distribution_client::DistributionClient};
use evenflow_tests::{
    kubeapi::{
        self, ApiServer, Rule,
        objects::{self, Pod, State},
    },
    simagent::SimAgent,
};
use tonic::transport::Channel;

const NS: &str = "default";

/// The addresses the collector logging to `log` bound, from its start
/// line. It binds port 0 and says which ports it got: a port picked free
/// beforehand could meanwhile become another connection's ephemeral port
/// (the tests run side by side, each with its API server and clients).
fn bound(log: &Path) -> (SocketAddr, SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let start = text.lines().find(|l| l.contains("collector serving"));
        let field = |name: &str| {
            start?
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
        };
        if let (Some(grpc), Some(metrics)) = (field("grpc_addr="), field("metrics_addr=")) {
            return (grpc, metrics);
        }
        assert!(
            Instant::now() < deadline,
            "the collector never said where it serves:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The stand-in API server and a collector reading it.
struct Cluster {
    api: ApiServer,
    collector: Child,
    grpc: SocketAddr,
    metrics: SocketAddr,
    dir: PathBuf,
}

impl Cluster {
    /// A stand-in with the manifest's RBAC (or `rules`), and a collector
    /// started with `--kubeconfig` pointing at it.
    fn start(name: &str, rules: Option<Vec<Rule>>) -> Cluster {
        Self::start_with(name, rules, &[])
    }

    /// [`Cluster::start`] with `extra` collector flags.
    fn start_with(name: &str, rules: Option<Vec<Rule>>, extra: &[&str]) -> Cluster {
        let rules = rules
            .unwrap_or_else(|| kubeapi::collector_rules().expect("the manifest's ClusterRole"));
        let api = ApiServer::start(kubeapi::Options {
            rules: Some(rules),
            bookmark_every: Duration::from_millis(500),
            ..Default::default()
        })
        .expect("stand-in API server");
        let dir = std::env::temp_dir().join(format!("evenflow-kube-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        api.write_kubeconfig(&dir.join("kubeconfig"))
            .expect("kubeconfig");
        let bin = evenflow_tests::agent::binary("evenflow-collector", "EVENFLOW_COLLECTOR_BIN")
            .expect("collector binary");
        let log = std::fs::File::create(dir.join("collector.log")).expect("log");
        let collector = Command::new(bin)
            .args([
                "--grpc-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
                "--kubeconfig",
                &dir.join("kubeconfig").display().to_string(),
                "--kube-drain-grace",
                "3s",
            ])
            .args(extra)
            .env("EVENFLOW_LOG", "info,evenflow_collector=debug")
            // Plain `field=value`, which `bound` reads.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("collector starts");
        let (grpc, metrics) = bound(&dir.join("collector.log"));
        Cluster {
            api,
            collector,
            grpc,
            metrics,
            dir,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// List requests so far for `resource` (every resource when empty).
    fn lists(&self, resource: &str) -> usize {
        self.api
            .requests()
            .iter()
            .filter(|r| r.verb == "list" && (resource.is_empty() || r.resource == resource))
            .count()
    }

    /// The collector's /metrics.
    fn metrics(&self) -> String {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(self.metrics).expect("metrics listener");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: collector\r\n\r\n")
            .expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("response");
        out
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("collector.log")).unwrap_or_default()
    }

    async fn query(&self) -> DistributionClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match DistributionClient::connect(self.url()).await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => {
                    panic!("collector unreachable: {e}\n{}", self.log())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.collector.kill();
        let _ = self.collector.wait();
        if std::env::var_os("EVENFLOW_KEEP_LAB").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn addr(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), 8080)
}

/// Service `name` with `pods` (name suffix, IP, state), port http 80 →
/// 8080, all on `node`.
fn apply_service(api: &ApiServer, name: &str, cluster_ip: &str, pods: &[Pod]) {
    apply_service_port(api, name, cluster_ip, "http", pods);
}

/// [`apply_service`] with the port named `port`.
fn apply_service_port(api: &ApiServer, name: &str, cluster_ip: &str, port: &str, pods: &[Pod]) {
    api.apply(&objects::service(NS, name, cluster_ip, &[(port, 80, 8080)]))
        .expect("service");
    api.apply(&objects::endpoint_slice(
        NS,
        name,
        "abcde",
        (port, 8080),
        pods,
    ))
    .expect("slice");
}

fn pod(service: &str, i: u32, node: &str, state: State) -> Pod {
    Pod {
        state,
        ..Pod::ready(
            &format!("{service}-{i}"),
            &format!(
                "10.244.{}.{i}",
                match service {
                    "svc-a" => 1,
                    "db" => 3,
                    _ => 2,
                }
            ),
            node,
        )
    }
}

/// What kube-proxy on one node would do: spread each Service's new
/// connections round-robin over the endpoints its rules hold, counted on
/// the node as SENDS_TO (the DNAT) and, when the pods are local, SERVES.
struct Traffic {
    agent: SimAgent,
    routed: Vec<(String, Vec<SocketAddr>)>,
    per_report: u64,
    next: usize,
    serves: bool,
}

impl Traffic {
    async fn on(c: &Cluster, node: &str, per_report: u64, serves: bool) -> Traffic {
        Traffic {
            agent: SimAgent::connect(&c.url(), node).await.expect("agent"),
            routed: Vec::new(),
            per_report,
            next: 0,
            serves,
        }
    }

    fn route(&mut self, service: &str, pods: &[&Pod]) {
        let addrs: Vec<SocketAddr> = pods.iter().map(|p| addr(&p.ip)).collect();
        for a in addrs.iter().filter(|_| self.serves) {
            self.agent.touch(*a, v1::Direction::Serves);
        }
        match self.routed.iter_mut().find(|(s, _)| s == service) {
            Some((_, v)) => *v = addrs,
            None => self.routed.push((service.to_owned(), addrs)),
        }
    }

    /// kube-proxy follows the slice: it routes to the ready pods.
    fn route_ready(&mut self, service: &str, pods: &[Pod]) {
        let ready: Vec<&Pod> = pods.iter().filter(|p| p.state == State::Ready).collect();
        self.route(service, &ready);
    }

    /// Reports every 250 ms for `d`.
    async fn run(&mut self, d: Duration) {
        run_all(std::slice::from_mut(self), d).await;
    }

    /// One report's worth of new connections, and the report.
    async fn step(&mut self) {
        for (_, pods) in &self.routed {
            for _ in 0..self.per_report {
                if pods.is_empty() {
                    break;
                }
                let a = pods[self.next % pods.len()];
                self.next += 1;
                self.agent.add(a, v1::Direction::SendsTo, 1);
                if self.serves {
                    self.agent.add(a, v1::Direction::Serves, 1);
                }
            }
        }
        self.agent.report().await.expect("report");
    }
}

/// Several nodes' traffic, each reporting every 250 ms for `d`.
async fn run_all(nodes: &mut [Traffic], d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        for t in nodes.iter_mut() {
            t.step().await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn pools(q: &mut DistributionClient<Channel>) -> Vec<v1::Pool> {
    q.list_pools(v1::ListPoolsRequest {})
        .await
        .map(|r| r.into_inner().pools)
        .unwrap_or_default()
}

/// ListAlerts: open ones, and resolved ones too when `resolved`.
async fn list_alerts(
    q: &mut DistributionClient<Channel>,
    pool: &str,
    resolved: bool,
) -> Vec<v1::Alert> {
    q.list_alerts(v1::ListAlertsRequest {
        pool: pool.into(),
        include_resolved: resolved,
    })
    .await
    .expect("ListAlerts")
    .into_inner()
    .alerts
}

fn members(p: &v1::Pool) -> Vec<(String, String, &'static str)> {
    p.members
        .iter()
        .map(|m| {
            (
                format!("{}:{}", m.address, m.port),
                m.pod.clone(),
                match v1::MemberState::try_from(m.state) {
                    Ok(v1::MemberState::Draining) => "draining",
                    Ok(v1::MemberState::NotReady) => "not-ready",
                    _ => "serving",
                },
            )
        })
        .collect()
}

/// Polls ListPools until `ok` holds for the named pool, or panics with
/// the last state and the collector's log.
async fn wait_pool(
    c: &Cluster,
    q: &mut DistributionClient<Channel>,
    name: &str,
    secs: u64,
    ok: impl Fn(&v1::Pool) -> bool,
) -> v1::Pool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(p) = pools(q).await.into_iter().find(|p| p.name == name) {
            if ok(&p) {
                return p;
            }
            last = Some(p);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "pool {name} never got there in {secs} s; last: {:#?}\ncollector log:\n{}",
        last.as_ref().map(members),
        c.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_one_port_are_two_pools_and_follow_watches_through_410_and_restarts() {
    let c = Cluster::start("watch", None);
    c.api
        .apply(&objects::node("node-1", Some("zone-a")))
        .expect("node");
    let a: Vec<Pod> = (1..=3)
        .map(|i| pod("svc-a", i, "node-1", State::Ready))
        .collect();
    let b: Vec<Pod> = (1..=2)
        .map(|i| pod("svc-b", i, "node-1", State::Ready))
        .collect();
    // A headless Service (a StatefulSet's): its clients pick Pods by name,
    // so it is no pool.
    let db: Vec<Pod> = (1..=2)
        .map(|i| pod("db", i, "node-1", State::Ready))
        .collect();
    apply_service(&c.api, "db", "None", &db);
    apply_service(&c.api, "svc-a", "10.96.0.10", &a);
    apply_service(&c.api, "svc-b", "10.96.0.11", &b);
    let mut q = c.query().await;
    let mut t = Traffic::on(&c, "node-1", 6, true).await;
    t.route("svc-a", &a.iter().collect::<Vec<_>>());
    t.route("svc-b", &b.iter().collect::<Vec<_>>());
    // The headless Service's Pods serve on a port their agent labels: they
    // are still the Service's, so the label announces no pool of them.
    for p in &db {
        t.agent.label(addr(&p.ip), "db");
        t.agent.add(addr(&p.ip), v1::Direction::Serves, 3);
    }
    // The client's own socket towards the ClusterIP (before DNAT) is no
    // member of anything.
    t.agent.add(
        SocketAddr::from(([10, 96, 0, 10], 80)),
        v1::Direction::SendsTo,
        5,
    );
    t.run(Duration::from_secs(2)).await;

    let pa = wait_pool(&c, &mut q, "default/svc-a:http", 20, |p| {
        p.members.len() == 3
    })
    .await;
    assert_eq!(
        members(&pa),
        [
            (
                "10.244.1.1:8080".to_owned(),
                "default/svc-a-1".to_owned(),
                "serving"
            ),
            (
                "10.244.1.2:8080".to_owned(),
                "default/svc-a-2".to_owned(),
                "serving"
            ),
            (
                "10.244.1.3:8080".to_owned(),
                "default/svc-a-3".to_owned(),
                "serving"
            ),
        ]
    );
    let k = pa.kubernetes.clone().expect("a Kubernetes pool");
    assert_eq!(
        (
            k.namespace.as_str(),
            k.service.as_str(),
            k.port_name.as_str(),
            k.port
        ),
        ("default", "svc-a", "http", 80)
    );
    assert_eq!(k.cluster_ips, ["10.96.0.10"]);
    assert!(
        pa.members
            .iter()
            .all(|m| m.node_name == "node-1" && m.source == "kubernetes")
    );
    let pb = wait_pool(&c, &mut q, "default/svc-b:http", 5, |p| {
        p.members.len() == 2
    })
    .await;
    assert_eq!(pb.members[0].pod, "default/svc-b-1");
    let names: Vec<String> = pools(&mut q).await.into_iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        ["default/svc-a:http", "default/svc-b:http"],
        "no other pool (the ClusterIP is not one, nor the headless Service)"
    );

    // A new pod: not ready first (listed, not judged), then ready. Its
    // address sorts first, among the judged members.
    let mut a0 = pod("svc-a", 0, "node-1", State::Starting);
    let mut slice_a: Vec<Pod> = a.iter().cloned().chain([a0.clone()]).collect();
    apply_service(&c.api, "svc-a", "10.96.0.10", &slice_a);
    wait_pool(&c, &mut q, "default/svc-a:http", 10, |p| {
        members(p)
            .first()
            .is_some_and(|m| m.2 == "not-ready" && m.1 == "default/svc-a-0")
    })
    .await;
    t.run(Duration::from_secs(2)).await;
    // /metrics: each member's facts, and the kernels' totals of each (the
    // agent's own counts) on the right member, once a tick has them.
    let mut want = vec![
        r#"evenflow_member_info{pool="default/svc-a:http",member="10.244.1.0:8080",state="not_ready",source="kubernetes",node="node-1",pod="default/svc-a-0",zone=""} 1"#.to_owned(),
    ];
    want.extend(a.iter().chain([&a0]).map(|p| {
        format!(
            r#"evenflow_member_reported_connections_total{{pool="default/svc-a:http",member="{}:8080",view="server"}} {}"#,
            p.ip,
            t.agent.opened(addr(&p.ip), v1::Direction::Serves)
        )
    }));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut text = c.metrics();
    while want.iter().any(|w| !text.contains(w.as_str())) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        text = c.metrics();
    }
    for w in &want {
        assert!(text.contains(w.as_str()), "{w} not in:\n{text}");
    }
    a0.state = State::Ready;
    slice_a[3] = a0.clone();
    apply_service(&c.api, "svc-a", "10.96.0.10", &slice_a);
    wait_pool(&c, &mut q, "default/svc-a:http", 10, |p| {
        members(p).iter().all(|m| m.2 == "serving") && p.members.len() == 4
    })
    .await;

    // etcd compacts and the watches end with 410 Gone; a change made
    // meanwhile must arrive through the re-list.
    let lists_before = c.lists("endpointslices");
    c.api.expire_watches();
    slice_a.remove(0);
    apply_service(&c.api, "svc-a", "10.96.0.10", &slice_a);
    wait_pool(&c, &mut q, "default/svc-a:http", 30, |p| {
        p.members.len() == 3 && p.members.iter().all(|m| m.pod != "default/svc-a-1")
    })
    .await;
    let lists_after = c.lists("endpointslices");
    assert!(
        lists_after > lists_before,
        "a 410 makes the client list again ({lists_before} → {lists_after} lists)"
    );
    assert!(
        c.log().contains("410 Gone"),
        "the collector logs the expiry:\n{}",
        c.log()
    );

    // A write elsewhere moves the revision past every Node event; idle
    // Node watches learn the new revision from bookmarks.
    apply_service(&c.api, "svc-b", "10.96.0.11", &b[..1]);
    wait_pool(&c, &mut q, "default/svc-b:http", 20, |p| {
        p.members.len() == 1
    })
    .await;
    let bookmarked = c.api.revision();
    t.run(Duration::from_secs(2)).await;
    // An API server restart ends the watches without an error: the client
    // resumes from the last revision it saw, without listing again.
    let lists = c.lists("");
    c.api.drop_watches();
    apply_service(&c.api, "svc-b", "10.96.0.11", &b);
    wait_pool(&c, &mut q, "default/svc-b:http", 20, |p| {
        p.members.len() == 2
    })
    .await;
    let reqs = c.api.requests();
    assert_eq!(
        reqs.iter().filter(|r| r.verb == "list").count(),
        lists,
        "resumed, not re-listed: {reqs:#?}"
    );
    // Nodes did not change since the start, yet their watch resumed from a
    // recent revision: it learned it from bookmarks.
    let node_watch = reqs
        .iter()
        .rev()
        .find(|r| r.verb == "watch" && r.resource == "nodes")
        .expect("a node watch");
    assert!(
        node_watch.query.contains("allowWatchBookmarks=true"),
        "{node_watch:?}"
    );
    let rv: u64 = node_watch
        .query
        .split('&')
        .find_map(|kv| kv.strip_prefix("resourceVersion="))
        .and_then(|v| v.parse().ok())
        .expect("resumed from a resourceVersion");
    assert!(
        rv >= bookmarked,
        "the node watch resumed from {rv}, before the bookmark at {bookmarked}"
    );

    // Lists were paginated and every request was allowed by the manifest's
    // rules (the stand-in refuses anything else).
    assert!(
        reqs.iter()
            .filter(|r| r.verb == "list")
            .all(|r| r.query.contains("limit="))
    );
    assert!(
        reqs.iter().all(|r| r.status == 200),
        "{:#?}",
        reqs.iter().filter(|r| r.status != 200).collect::<Vec<_>>()
    );
}

/// A one-node cluster whose Service svc-a has three ready Pods that
/// kube-proxy balances, with its traffic run for `warm`.
async fn svc_a_balanced(
    name: &str,
    warm: Duration,
) -> (Cluster, Vec<Pod>, DistributionClient<Channel>, Traffic) {
    let c = Cluster::start(name, None);
    c.api.apply(&objects::node("node-1", None)).expect("node");
    let live: Vec<Pod> = (1..=3)
        .map(|i| pod("svc-a", i, "node-1", State::Ready))
        .collect();
    apply_service(&c.api, "svc-a", "10.96.0.10", &live);
    let q = c.query().await;
    let mut t = Traffic::on(&c, "node-1", 6, true).await;
    t.route("svc-a", &live.iter().collect::<Vec<_>>());
    t.run(warm).await;
    (c, live, q, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_and_a_late_kube_proxy_page_nothing_and_a_pod_left_out_is_zero_by_name() {
    let (c, mut live, mut q, mut t) = svc_a_balanced("roll", Duration::from_secs(6)).await;
    wait_pool(&c, &mut q, "default/svc-a:http", 20, |p| {
        p.verdict == v1::Verdict::Ok as i32
    })
    .await;

    // Three rounds of a rolling update (maxSurge 1, maxUnavailable 0): a new
    // pod starts, becomes ready and kube-proxy adds it; an old one starts
    // terminating, kube-proxy drops it, and after a while it is gone.
    let started = Instant::now();
    let mut saw_draining = false;
    for (new, old) in [(4, 1), (5, 2), (6, 3)] {
        let mut p = pod("svc-a", new, "node-1", State::Starting);
        live.push(p.clone());
        apply_service(&c.api, "svc-a", "10.96.0.10", &live);
        t.run(Duration::from_secs(1)).await;
        p.state = State::Ready;
        *live.last_mut().expect("new pod") = p;
        apply_service(&c.api, "svc-a", "10.96.0.10", &live);
        t.run(Duration::from_millis(500)).await;
        t.route_ready("svc-a", &live);
        t.run(Duration::from_secs(2)).await;
        let i = live
            .iter()
            .position(|p| p.name == format!("svc-a-{old}"))
            .expect("old pod");
        live[i].state = State::Terminating;
        apply_service(&c.api, "svc-a", "10.96.0.10", &live);
        // kube-proxy takes 1.5 s to sync (a busy node): the terminating
        // pod still gets new connections meanwhile, within the drain grace.
        t.run(Duration::from_millis(1500)).await;
        t.route_ready("svc-a", &live);
        t.run(Duration::from_millis(1500)).await;
        let ps = pools(&mut q).await;
        saw_draining |= ps.iter().flat_map(|p| &p.members).any(|m| {
            m.pod == format!("default/svc-a-{old}") && m.state == v1::MemberState::Draining as i32
        });
        t.run(Duration::from_secs(3)).await;
        live.remove(i);
        apply_service(&c.api, "svc-a", "10.96.0.10", &live);
        t.run(Duration::from_secs(2)).await;
    }
    t.run(Duration::from_secs(4)).await;
    let rollout = started.elapsed();
    let alerts = list_alerts(&mut q, "", true).await;
    assert!(saw_draining, "a terminating pod is shown draining");
    assert!(
        alerts.is_empty(),
        "a {:.0} s rolling update raised {} alert(s): {:#?}\ncollector log:\n{}",
        rollout.as_secs_f64(),
        alerts.len(),
        alerts,
        c.log()
    );
    let p = wait_pool(&c, &mut q, "default/svc-a:http", 5, |p| {
        p.members.len() == 3
    })
    .await;
    assert_eq!(
        p.members.iter().map(|m| m.pod.as_str()).collect::<Vec<_>>(),
        ["default/svc-a-4", "default/svc-a-5", "default/svc-a-6"]
    );
    println!(
        "rolling update of 3 pods over {:.1} s: {} alerts",
        rollout.as_secs_f64(),
        alerts.len()
    );

    // Scale up on a busy node: the new pod is ready in its slice, and
    // kube-proxy's rules take it in 6 s later. Until then it is joining
    // (SETTLING), not ZERO.
    live.push(pod("svc-a", 7, "node-1", State::Ready));
    apply_service(&c.api, "svc-a", "10.96.0.10", &live);
    t.run(Duration::from_secs(5)).await;
    let p = wait_pool(&c, &mut q, "default/svc-a:http", 5, |p| {
        p.members.iter().any(|m| m.pod == "default/svc-a-7")
    })
    .await;
    let joining = p
        .members
        .iter()
        .find(|m| m.pod == "default/svc-a-7")
        .expect("the new pod");
    assert_eq!(
        joining.verdict,
        v1::Verdict::Settling as i32,
        "{joining:#?}"
    );
    assert!(
        joining.reason.contains("joined the pool") && joining.reason.contains("nothing yet"),
        "{}",
        joining.reason
    );
    t.run(Duration::from_secs(1)).await;
    t.route_ready("svc-a", &live);
    t.run(Duration::from_secs(4)).await;
    let alerts = list_alerts(&mut q, "", true).await;
    assert!(
        alerts.is_empty(),
        "a pod kube-proxy took in 6 s late raised {} alert(s): {alerts:#?}\ncollector log:\n{}",
        alerts.len(),
        c.log()
    );
    wait_pool(&c, &mut q, "default/svc-a:http", 5, |p| {
        p.members
            .iter()
            .any(|m| m.pod == "default/svc-a-7" && m.verdict == v1::Verdict::Ok as i32)
    })
    .await;

    // The next pod's rules never come (say its node's sync is stuck): it
    // joins, and pages ZERO once the join grace (30 ticks) has passed.
    live.push(pod("svc-a", 8, "node-1", State::Ready));
    apply_service(&c.api, "svc-a", "10.96.0.10", &live);
    let added = Instant::now();
    let mut zero = None;
    while added.elapsed() < Duration::from_secs(45) && zero.is_none() {
        t.run(Duration::from_millis(500)).await;
        zero = list_alerts(&mut q, "default/svc-a:http", false)
            .await
            .into_iter()
            .find(|a| a.kind == v1::AlertKind::Zero as i32);
    }
    let zero = zero.unwrap_or_else(|| panic!("no ZERO for the pod nothing reaches\n{}", c.log()));
    let after = added.elapsed();
    println!(
        "ZERO {:.1} s after the dark pod joined: {}",
        after.as_secs_f64(),
        zero.summary
    );
    assert!(
        after > Duration::from_secs(25),
        "ZERO within the join grace: {after:?}"
    );
    assert_eq!(zero.member, "10.244.1.8:8080");
    assert_eq!(zero.pod, "default/svc-a-8");
    assert!(
        zero.summary.contains("(pod default/svc-a-8)"),
        "{}",
        zero.summary
    );
    assert_eq!(zero.severity, v1::Severity::Page as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_hints_make_one_pool_per_zone_judged_against_that_zones_nodes() {
    let c = Cluster::start("zones", None);
    for (n, z) in [
        ("node-a", "zone-a"),
        ("node-b", "zone-b"),
        ("client-b", "zone-b"),
    ] {
        c.api.apply(&objects::node(n, Some(z))).expect("node");
    }
    let mut svc = objects::service(NS, "api", "10.96.0.20", &[("http", 80, 8080)]);
    if let Some(s) = svc.spec.as_mut() {
        s.traffic_distribution = Some("PreferClose".into());
    }
    c.api.apply(&svc).expect("service");
    // One endpoint in zone a, three in zone b, each hinted for its zone.
    let hinted = |i: u32, node: &str, zone: &str| Pod {
        zone: Some(zone.into()),
        for_zones: vec![zone.into()],
        ..Pod::ready(&format!("api-{i}"), &format!("10.244.3.{i}"), node)
    };
    let eps = [
        hinted(1, "node-a", "zone-a"),
        hinted(2, "node-b", "zone-b"),
        hinted(3, "node-b", "zone-b"),
        hinted(4, "node-b", "zone-b"),
    ];
    c.api
        .apply(&objects::endpoint_slice(
            NS,
            "api",
            "x",
            ("http", 8080),
            &eps,
        ))
        .expect("slice");
    let mut q = c.query().await;
    // Each zone's clients send as much, to their own zone's endpoints only:
    // the zone-a endpoint gets three times the share of each zone-b one.
    let mut za = Traffic::on(&c, "node-a", 9, true).await;
    za.route("api", &[&eps[0]]);
    let mut zb = Traffic::on(&c, "client-b", 9, false).await;
    zb.route("api", &[&eps[1], &eps[2], &eps[3]]);
    let mut serve_b = SimAgent::connect(&c.url(), "node-b").await.expect("agent");
    let end = Instant::now() + Duration::from_secs(12);
    while Instant::now() < end {
        // node-a hosts its endpoint: its sends and serves are both on it;
        // zone b's client node sends, node-b serves.
        za.run(Duration::from_millis(1)).await;
        zb.run(Duration::from_millis(1)).await;
        for e in &eps[1..] {
            serve_b.add(addr(&e.ip), v1::Direction::Serves, 6);
        }
        serve_b.report().await.expect("report");
    }
    let ps = pools(&mut q).await;
    let names: Vec<&str> = ps.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["default/api:http@zone-a", "default/api:http@zone-b"]
    );
    let b = &ps[1];
    assert_eq!(
        b.kubernetes.as_ref().map(|k| k.zone.as_str()),
        Some("zone-b")
    );
    assert_eq!(
        b.lb_nodes,
        ["client-b"],
        "zone b's pool is judged against zone b's senders only"
    );
    assert!(b.reason.contains("topology-aware routing"), "{}", b.reason);
    for p in &ps {
        assert_eq!(
            p.verdict,
            v1::Verdict::Ok as i32,
            "{}: {} ({:#?})",
            p.name,
            p.reason,
            p.members
        );
    }
    let alerts = list_alerts(&mut q, "", true).await;
    assert!(
        alerts.is_empty(),
        "intended zone skew raised alerts: {alerts:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_permission_is_logged_with_the_fix_and_pools_come_once_granted() {
    let full = kubeapi::collector_rules().expect("rules");
    // The ClusterRole without nodes.
    let without_nodes: Vec<Rule> = full
        .iter()
        .map(|r| Rule {
            resources: r
                .resources
                .iter()
                .filter(|x| *x != "nodes")
                .cloned()
                .collect(),
            ..r.clone()
        })
        .collect();
    let c = Cluster::start("rbac", Some(without_nodes));
    apply_service(
        &c.api,
        "svc-a",
        "10.96.0.10",
        &[pod("svc-a", 1, "node-1", State::Ready)],
    );
    let mut q = c.query().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c
        .log()
        .contains("grant the collector's ServiceAccount get, list and watch on nodes")
    {
        assert!(
            Instant::now() < deadline,
            "no 403 explanation logged:\n{}",
            c.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        c.log().contains("cannot list resource \\\"nodes\\\"")
            || c.log().contains("cannot list resource \"nodes\""),
        "{}",
        c.log()
    );
    // Half a cluster is not shown as pools without endpoints.
    assert!(pools(&mut q).await.is_empty());
    let refused = c.api.requests().iter().filter(|r| r.status == 403).count();
    assert!(refused >= 1);
    c.api.set_rules(Some(full));
    wait_pool(&c, &mut q, "default/svc-a:http", 60, |p| {
        p.members.len() == 1
    })
    .await;
}

#[test]
fn an_unusable_kubeconfig_stops_the_collector_with_the_fix() {
    let bin = evenflow_tests::agent::binary("evenflow-collector", "EVENFLOW_COLLECTOR_BIN")
        .expect("collector binary");
    let run = |args: &[&str]| {
        let out = Command::new(&bin)
            .args([
                "--grpc-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .args(args)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("collector runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&["--kubeconfig", "/nonexistent/kubeconfig"]);
    assert!(!ok);
    assert!(
        err.contains("/nonexistent/kubeconfig") && err.contains("--kubeconfig"),
        "{err}"
    );
    let (ok, err) = run(&["--kubernetes"]);
    assert!(!ok);
    assert!(
        err.contains("in-cluster") && err.contains("--kubeconfig"),
        "{err}"
    );
}

/// Writes `text` as a ConfigMap volume does: into a new timestamped
/// directory, then `..data` swapped to it by a rename, and `pools.toml` a
/// symlink through `..data` (made once).
fn configmap_write(dir: &Path, version: u32, text: &str) {
    let data = dir.join(format!("..2026_12_02_{version}"));
    std::fs::create_dir_all(&data).expect("the version's directory");
    std::fs::write(data.join("pools.toml"), text).expect("the version's file");
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(data.file_name().expect("a name"), &tmp).expect("..data_tmp");
    std::fs::rename(&tmp, dir.join("..data")).expect("..data swapped");
    let link = dir.join("pools.toml");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/pools.toml", &link).expect("pools.toml");
    }
}

/// The pool file's entry for svc-a giving its first Pod `weight`.
fn weighted_first(weight: u32) -> String {
    format!(
        "[[pool]]\nname = \"default/svc-a:http\"\nmembers = [{{ address = \"10.244.1.1:8080\", weight = {weight} }}]\n"
    )
}

fn first_member(p: &v1::Pool) -> Option<(f64, &str)> {
    (p.members.iter())
        .find(|m| m.address == "10.244.1.1")
        .map(|m| (m.weight, m.source.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_file_from_a_configmap_is_read_again_when_it_changes_and_a_bad_one_keeps_the_pools()
{
    let cm = std::env::temp_dir().join(format!("evenflow-kube-cm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cm);
    std::fs::create_dir_all(&cm).expect("the ConfigMap's volume");
    configmap_write(&cm, 1, &weighted_first(2));
    let file = cm.join("pools.toml").display().to_string();
    let c = Cluster::start_with("reload", None, &["--pools", &file]);
    c.api.apply(&objects::node("node-1", None)).expect("node");
    let a: Vec<Pod> = (1..=3)
        .map(|i| pod("svc-a", i, "node-1", State::Ready))
        .collect();
    apply_service(&c.api, "svc-a", "10.96.0.10", &a);
    let mut q = c.query().await;
    let name = "default/svc-a:http";
    wait_pool(&c, &mut q, name, 20, |p| {
        first_member(p) == Some((2.0, "kubernetes+file"))
    })
    .await;

    configmap_write(&cm, 2, &weighted_first(3));
    wait_pool(&c, &mut q, name, 10, |p| {
        first_member(p) == Some((3.0, "kubernetes+file"))
    })
    .await;

    // An edit that breaks it: said with the place and the fix, counted,
    // and the pools it declared stay.
    configmap_write(
        &cm,
        3,
        "[[pool]]\nname = \"default/svc-a:http\"\nmembers = [{ address = \"10.244.1.1\" }]\n",
    );
    let failed = evenflow_tests::wait_for(Duration::from_secs(10), || {
        c.metrics()
            .lines()
            .any(|l| l == "evenflow_collector_pool_file_last_reload_successful 0")
            .then_some(())
    });
    assert!(failed.is_some(), "the failure shows:\n{}", c.metrics());
    let log = c.log();
    assert!(
        log.contains("pool file changed but cannot be used")
            && log.contains("pools.toml:3:")
            && log.contains("fix:"),
        "the log names the place and the fix:\n{log}"
    );
    let metrics = c.metrics();
    for line in [
        "evenflow_collector_pool_file_reloads_total 1",
        "evenflow_collector_pool_file_reload_failures_total 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    let p = wait_pool(&c, &mut q, name, 1, |_| true).await;
    assert_eq!(first_member(&p), Some((3.0, "kubernetes+file")));

    // Fixed by dropping the entry: the API's pool alone again.
    configmap_write(&cm, 4, "");
    wait_pool(&c, &mut q, name, 10, |p| {
        first_member(p) == Some((1.0, "kubernetes"))
    })
    .await;
    assert!(
        c.metrics()
            .lines()
            .any(|l| l == "evenflow_collector_pool_file_last_reload_successful 1")
    );
    let _ = std::fs::remove_dir_all(&cm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_watch_of_a_service_follows_its_pools_as_they_change() {
    let (c, mut live, mut q, mut t) = svc_a_balanced("watchcli", Duration::from_secs(3)).await;
    wait_pool(&c, &mut q, "default/svc-a:http", 20, |p| {
        p.members.len() == 3
    })
    .await;

    let cli = evenflow_tests::agent::binary("evenflow", "EVENFLOW_CLI_BIN").expect("evenflow CLI");
    let out = c.dir.join("watch.out");
    let mut watch = Command::new(cli)
        .args(["alerts", "--watch", "--pool", "svc-a", "--output", "json"])
        .args(["--collector", &c.url()])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("watch.out"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("alerts --watch starts");
    t.run(Duration::from_secs(1)).await;

    // The port is renamed: the Service's pool is default/svc-a:web from
    // now on, and a ready Pod that kube-proxy never takes is ZERO there.
    live.push(pod("svc-a", 4, "node-1", State::Ready));
    apply_service_port(&c.api, "svc-a", "10.96.0.10", "web", &live);
    let renamed = Instant::now();
    let mut printed = None;
    while renamed.elapsed() < Duration::from_secs(30) && printed.is_none() {
        t.run(Duration::from_millis(500)).await;
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        printed = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|a| a["pool"] == "default/svc-a:web" && a["kind"] == "ZERO");
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let zero = list_alerts(&mut q, "default/svc-a:web", false).await;
    let printed = printed.unwrap_or_else(|| {
        panic!(
            "the watch printed no ZERO of default/svc-a:web; the collector has {zero:#?}\nthe watch printed:\n{}",
            std::fs::read_to_string(&out).unwrap_or_default()
        )
    });
    assert_eq!(printed["member"], "10.244.1.4:8080", "{printed}");
}

/// svc-a's three pods on the first of `names`, clients on every node
/// (their kube-proxy routing to the ready pods), the pool judged OK.
async fn svc_a_across(
    name: &str,
    names: &[&str],
) -> (Cluster, Vec<Pod>, DistributionClient<Channel>, Vec<Traffic>) {
    let c = Cluster::start(name, None);
    for n in names {
        c.api.apply(&objects::node(n, None)).expect("node");
    }
    let live: Vec<Pod> = (1..=3)
        .map(|i| pod("svc-a", i, names[0], State::Ready))
        .collect();
    apply_service(&c.api, "svc-a", "10.96.0.10", &live);
    let mut q = c.query().await;
    let mut nodes = Vec::new();
    for &n in names {
        let mut t = Traffic::on(&c, n, 6, n == names[0]).await;
        t.route_ready("svc-a", &live);
        nodes.push(t);
    }
    run_all(&mut nodes, Duration::from_secs(6)).await;
    wait_pool(&c, &mut q, "default/svc-a:http", 20, |p| {
        p.verdict == v1::Verdict::Ok as i32
    })
    .await;
    (c, live, q, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_turns_not_ready_pages_naming_the_node_whose_kube_proxy_still_sends_to_it() {
    let (c, mut live, mut q, mut nodes) =
        svc_a_across("notready", &["node-1", "node-2", "node-3"]).await;

    // svc-a-3 fails its readiness probe. node-1's and node-2's kube-proxy
    // drop it; node-3's has stopped syncing and keeps sending to it.
    live[2].state = State::NotReady;
    apply_service(&c.api, "svc-a", "10.96.0.10", &live);
    let turned = Instant::now();
    for t in &mut nodes[..2] {
        t.route_ready("svc-a", &live);
    }
    let mut page = None;
    while turned.elapsed() < Duration::from_secs(20) && page.is_none() {
        run_all(&mut nodes, Duration::from_millis(250)).await;
        page = list_alerts(&mut q, "default/svc-a:http", false)
            .await
            .into_iter()
            .find(|a| a.kind == v1::AlertKind::DrainingViolation as i32);
    }
    let after = turned.elapsed();
    let page = page.unwrap_or_else(|| {
        panic!(
            "no DRAINING_VIOLATION for the not-ready pod node-3 still sends to\n{}",
            c.log()
        )
    });
    println!(
        "DRAINING_VIOLATION {:.1} s after the pod turned not ready: {}",
        after.as_secs_f64(),
        page.summary
    );
    assert!(
        after >= Duration::from_secs(3),
        "within the grace: {after:?}"
    );
    assert_eq!(page.member, "10.244.1.3:8080");
    assert_eq!(page.pod, "default/svc-a-3");
    assert_eq!(page.severity, v1::Severity::Page as i32);
    assert!(
        page.summary.contains("not ready, yet it got"),
        "{}",
        page.summary
    );
    assert!(
        page.summary
            .contains("in the LB view they came from node-3 (")
            && !page.summary.contains("node-1")
            && !page.summary.contains("node-2"),
        "{}",
        page.summary
    );
    let p = wait_pool(&c, &mut q, "default/svc-a:http", 5, |_| true).await;
    assert!(
        members(&p).contains(&(
            "10.244.1.3:8080".to_owned(),
            "default/svc-a-3".to_owned(),
            "not-ready"
        )),
        "{:?}",
        members(&p)
    );

    // node-3's kube-proxy syncs: the page resolves.
    nodes[2].route_ready("svc-a", &live);
    let synced = Instant::now();
    let mut resolved = false;
    while synced.elapsed() < Duration::from_secs(30) && !resolved {
        run_all(&mut nodes, Duration::from_millis(500)).await;
        resolved = !list_alerts(&mut q, "default/svc-a:http", false)
            .await
            .iter()
            .any(|a| a.kind == v1::AlertKind::DrainingViolation as i32);
    }
    assert!(resolved, "still open 30 s after node-3 synced\n{}", c.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pod_one_nodes_kube_proxy_never_takes_in_warns_naming_that_node() {
    let (c, mut live, mut q, mut nodes) =
        svc_a_across("leftout", &["node-1", "node-2", "node-3", "node-4"]).await;

    // A scale-up: svc-a-4 is ready; three nodes' kube-proxy take it in,
    // node-4's sync is stuck and never does.
    live.push(pod("svc-a", 4, "node-1", State::Ready));
    apply_service(&c.api, "svc-a", "10.96.0.10", &live);
    for t in &mut nodes[..3] {
        t.route_ready("svc-a", &live);
    }
    let added = Instant::now();
    let mut warning = None;
    while added.elapsed() < Duration::from_secs(30) && warning.is_none() {
        run_all(&mut nodes, Duration::from_millis(250)).await;
        let open = list_alerts(&mut q, "default/svc-a:http", false).await;
        assert!(
            open.iter().all(|a| a.severity != v1::Severity::Page as i32),
            "paged: {open:#?}"
        );
        warning = open.into_iter().find(|a| a.member == "10.244.1.4:8080");
    }
    let after = added.elapsed();
    let warning = warning.unwrap_or_else(|| panic!("no alert for svc-a-4\n{}", c.log()));
    println!(
        "{:.1} s after the scale-up: {}",
        after.as_secs_f64(),
        warning.summary
    );
    assert_eq!(warning.kind, v1::AlertKind::Skew as i32, "{warning:#?}");
    assert_eq!(warning.severity, v1::Severity::Warning as i32);
    assert_eq!(warning.pod, "default/svc-a-4");
    assert!(
        warning
            .summary
            .contains("load balancer node-4 sent it no new connection")
            && warning
                .summary
                .ends_with("while node-1, node-2, node-3 send to it"),
        "{}",
        warning.summary
    );

    // node-4 syncs at last: the warning resolves.
    nodes[3].route_ready("svc-a", &live);
    let synced = Instant::now();
    let mut resolved = false;
    while synced.elapsed() < Duration::from_secs(30) && !resolved {
        run_all(&mut nodes, Duration::from_millis(500)).await;
        resolved = list_alerts(&mut q, "default/svc-a:http", false)
            .await
            .is_empty();
    }
    assert!(resolved, "still open 30 s after node-4 synced\n{}", c.log());
}

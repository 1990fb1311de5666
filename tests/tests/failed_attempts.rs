//! Connection attempts that never open, counted where their SYN left
//! (`connsFailed`): the difference between a balancer that leaves a
//! backend out (no attempt) and a backend that refuses or never answers
//! what it is sent (attempts, all failed).
//!
//! Real lab: the nftables DNAT lb in front of four backends, the fourth of
//! which runs no nginx (its kernel answers every SYN with an RST) or drops
//! every SYN; the test's own client through the VIP; `curl` from inside the
//! lb's namespace and cgroup for the lb's own sockets. Ground truth: the
//! client's and curl's own tally of failed connects. Run as root.

use std::time::{Duration, Instant};

use evenflow_tests::{
    agent::{self, COLLECTOR},
    cgroup, client,
    grpcurl::{self, SENDS_TO, SERVES, Totals},
    judged,
    lab::{self, BACKEND_PORT, Lab, Node},
    netns, nft, nginx,
};

/// Connections through the VIP: a quarter go to the dark backend.
const CONNECTIONS: u64 = 80;
/// A port nothing listens on anywhere, dialled from the lb itself.
const CLOSED_PORT: u16 = 9090;
/// Connects curl makes from the lb to the dark backend's closed port.
const LOCAL_DIALS: u64 = 6;

/// How the dark backend treats SYNs to its ports.
#[derive(Clone, Copy, PartialEq)]
enum Dark {
    /// Nothing listens: its kernel answers with an RST.
    Refuses,
    /// Its firewall drops them: nobody answers.
    Drops,
    /// Its nginx runs, for the test to stop or firewall.
    Serves,
}

/// A lab whose fourth backend is dark, with an agent on every node (the
/// lb's with `lb_args`) and the DNAT rules loaded. Where the dark backend
/// drops SYNs, the lb gives an attempt up after 4 s (conntrack's SYN_SENT
/// timeout, which a sweeper counting per packet copies at its start),
/// not 120.
fn lab(name: &str, dark: Dark, lb_args: &[&str]) -> (Lab, Node) {
    evenflow_tests::require_root();
    let lab = Lab::new(name, 4).expect("the lab builds");
    if dark == Dark::Drops {
        netns::sysctl(
            &lab.lb.ns,
            "net.netfilter.nf_conntrack_tcp_timeout_syn_sent",
            "4",
        )
        .expect("conntrack's SYN_SENT timeout shortens");
    }
    with_dark_backend(lab, dark, lb_args)
}

/// [`lab`]'s nodes on `lab`, the lb's agent with `lb_args`; every agent
/// reports to a collector already running when `lb_args` name it.
fn with_dark_backend(mut lab: Lab, dark: Dark, lb_args: &[&str]) -> (Lab, Node) {
    let backends = lab.backends.clone();
    let lit = if dark == Dark::Serves { 4 } else { 3 };
    for b in &backends[..lit] {
        nginx::start(&mut lab, b).expect("nginx starts");
    }
    let dark_node = backends[3].clone();
    if dark == Dark::Drops {
        nft::load(
            &lab,
            &dark_node.ns,
            "drop-syns",
            &format!(
                "table inet evenflow_drop {{ chain input {{ type filter hook input priority 0; tcp dport {{ {BACKEND_PORT}, {CLOSED_PORT} }} drop; }} }}"
            ),
        )
        .expect("the drop rule loads");
    }
    let mut backend_args = vec!["--service", "web=8080"];
    if let Some(at) = lb_args.iter().position(|&a| a == "--collector") {
        backend_args.extend_from_slice(&lb_args[at..=at + 1]);
    }
    for b in &backends {
        agent::start(&mut lab, b, &backend_args).expect("a backend agent starts");
    }
    let lb = lab.lb.clone();
    agent::start(&mut lab, &lb, lb_args).expect("the lb agent starts");
    nft::start(&lab).expect("the nftables DNAT rules load");
    (lab, dark_node)
}

/// The client's load through the VIP; the dark backend's share fails.
fn load_through_the_vip(lab: &Lab) -> client::Load {
    let load = client::http_load(&lab.client.ns, lab::vip(false), CONNECTIONS, 4)
        .expect("the client load runs");
    assert_eq!(
        load.connections + load.failures,
        CONNECTIONS,
        "every attempt ends one way or the other: {load:?}"
    );
    assert!(
        load.failures >= CONNECTIONS / 4 - 1,
        "the dark backend's share fails: {load:?}"
    );
    load
}

/// `curl` from the lb's namespace and cgroup: `n` connects to `target`,
/// each given 3 s, so that a SYN nobody answers reaches the kernel's first
/// retransmission timeout (1 s) before curl gives up. Returns how many
/// failed to connect (refused or timed out), which must be all of them.
fn dial_from(lab: &Lab, node: &Node, target: &str, n: u64) -> u64 {
    let script = format!(
        "failed=0; for i in $(seq 1 {n}); do curl -s -o /dev/null --connect-timeout 3 http://{target}/; rc=$?; \
         if [ $rc -eq 7 ] || [ $rc -eq 28 ]; then failed=$((failed+1)); else echo \"curl exit $rc\"; fi; done; echo \"failed=$failed\""
    );
    let log = lab.dir.join(format!("dial-{}.log", node.role));
    let mut p = cgroup::spawn(
        "dial",
        &node.cgroup,
        &node.ns,
        &log,
        "bash",
        &["-c", &script],
    )
    .expect("curl starts in the lb");
    let status = evenflow_tests::wait_for(Duration::from_secs(40), || p.exited())
        .expect("curl's connects end within 40 s");
    assert!(status.success(), "the dial script ran: {}", p.output());
    let out = p.output();
    let failed = out
        .lines()
        .find_map(|l| l.strip_prefix("failed="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("the dial script tallied its connects: {out}"));
    assert_eq!(failed, n, "every connect to a dark port fails: {out}");
    failed
}

/// Waits up to `within` for the lb's counts of `(address, port)` to
/// reach `failed` failed attempts, and returns them.
fn lb_totals_once_failed(
    lab: &Lab,
    addr: &str,
    port: u16,
    failed: u64,
    within: Duration,
) -> Totals {
    let read = || {
        let snap = grpcurl::snapshot(&lab.lb.ns).ok()?;
        Some(grpcurl::totals(&snap, addr, port, SENDS_TO))
    };
    evenflow_tests::wait_for(within, || read().filter(|t| t.failed >= failed));
    // Once more after an interval: nothing may be counted twice.
    std::thread::sleep(Duration::from_secs(2));
    read().expect("the lb agent answers")
}

/// The lb's view of the lit backends: every connection the client made,
/// opened, closed and never failed.
fn check_lit_backends(lab: &Lab, load: &client::Load) {
    let snap = grpcurl::snapshot(&lab.lb.ns).expect("the lb agent answers");
    let lit: Vec<Totals> = lab.backends[..3]
        .iter()
        .map(|b| grpcurl::totals(&snap, &b.addr4.to_string(), BACKEND_PORT, SENDS_TO))
        .collect();
    let opened: u64 = lit.iter().map(|t| t.opened).sum();
    assert_eq!(
        opened,
        load.connections,
        "the lit backends opened what the client completed: {lit:?}\n{}",
        grpcurl::summary(&snap)
    );
    assert!(
        lit.iter()
            .all(|t| t.failed == 0 && t.unanswered == 0 && t.closed == t.opened),
        "no attempt to a lit backend failed: {lit:?}"
    );
}

/// The dark backend's own agent served nothing.
fn check_dark_served_nothing(dark: &Node) {
    let snap = grpcurl::snapshot(&dark.ns).expect("the dark backend's agent answers");
    let t = grpcurl::totals(&snap, &dark.addr4.to_string(), BACKEND_PORT, SERVES);
    assert_eq!(t, Totals::default(), "the dark backend accepted nothing");
}

/// Attempts the dark backend refuses, forwarded and the lb's own, counted
/// exactly. (Per packet, and half-open ones: `field.rs`'s
/// `field_failed_and_half_open_connections_leave_no_flow…`.)
#[test]
fn attempts_a_backend_refuses_count_failed() {
    attempts_count_failed("failrst", Dark::Refuses, &[]);
}

/// Attempts nobody answers: each counted unanswered a second after its
/// SYN (the lb's own at their first retransmission timeout, forwarded ones
/// by the next sweep), then failed: the lb's own when curl gives up,
/// forwarded ones once conntrack forgets them (its SYN_SENT timeout,
/// shortened here to 4 s from 120).
#[test]
fn attempts_nobody_answers_count_failed() {
    attempts_count_failed("faildrop", Dark::Drops, &[]);
}

/// The same with the lb counting its forwarded connections packet by
/// packet, as it does where it NATs without conntrack: its sweeper counts
/// a forwarded attempt unanswered a second after its SYN, and failed once
/// idle past the SYN_SENT timeout it copied from conntrack.
#[test]
fn attempts_nobody_answers_count_failed_per_packet() {
    attempts_count_failed("faildroppp", Dark::Drops, &["--forwarded-per-packet"]);
}

/// A client that gives an attempt up and dials again from the same port,
/// as clients that choose their own source ports do (a proxy given a
/// `source` port range), and as the kernel does once its ephemeral ports
/// wrap (it draws them from a table every network namespace shares, so
/// the parallel labs' loads move one another's): the
/// new SYN reaches the record conntrack still holds for the first attempt,
/// in SYN_SENT for two minutes, with a new initial sequence number. The
/// first attempt ends there, counted failed (given up by its client, after
/// it was counted unanswered), and the second is followed in its place:
/// each counted unanswered once, neither lost nor counted twice. One CI
/// run read two of a backend's attempts given up 12 s into an outage for
/// this reason.
#[test]
fn an_attempt_given_up_ends_when_its_client_dials_again_from_its_port() {
    dial_again_from_one_port("failport", &[]);
}

/// The same with the lb counting its forwarded connections packet by
/// packet: a SYN with a new initial sequence number on a tracked tuple
/// ends the connection it held.
#[test]
fn an_attempt_given_up_ends_when_its_client_dials_again_from_its_port_per_packet() {
    dial_again_from_one_port("failportpp", &["--forwarded-per-packet"]);
}

/// Every backend of a [`lab`] (the lb's agent with `lb_args`) drops SYNs;
/// the client connects through the VIP from one port twice, each giving
/// up after 5 s (the agent's sweeps, a second apart, count the attempt
/// unanswered first, with room for a late one), and the lb's counts of the
/// backend both went to are checked.
fn dial_again_from_one_port(name: &str, lb_args: &[&str]) {
    const PORT: &str = "41000";
    let (lab, _) = lab(name, Dark::Serves, lb_args);
    drop_at_every_backend(&lab);
    let vip = lab::vip(false).to_string();
    for attempt in 1..=2 {
        let status = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.client.ns,
                "curl",
                "-s",
                "-o",
                "/dev/null",
            ])
            .args(["--local-port", PORT, "--connect-timeout", "5"])
            .arg(format!("http://{vip}/"))
            .status()
            .expect("curl runs in the client's namespace");
        // 28: the connect timed out.
        assert_eq!(status.code(), Some(28), "attempt {attempt} times out");
    }
    let counted = evenflow_tests::wait_for(Duration::from_secs(10), || {
        let all = lb_counts(&lab);
        all.iter().any(|c| c.unanswered == 2).then_some(all)
    })
    .unwrap_or_else(|| {
        let all = lb_counts(&lab);
        panic!("both attempts reached one backend and were counted unanswered: {all:?}")
    });
    let reached: Vec<&Totals> = counted.iter().filter(|c| c.unanswered > 0).collect();
    assert_eq!(reached.len(), 1, "one record, one backend: {counted:?}");
    let c = reached[0];
    assert_eq!(
        (c.unanswered, c.failed, c.failed_unanswered, c.opened),
        (2, 1, 1, 0),
        "the first attempt ended failed when the second took its record, the second \
         outstanding: {counted:?}"
    );
    // Followed in conntrack, the first attempt is ended as one whose record
    // another connection took; counted per packet, by the SYN itself.
    let per_packet = lb_args.contains(&"--forwarded-per-packet");
    let snap = grpcurl::snapshot(&lab.lb.ns).expect("the lb agent answers");
    assert_eq!(
        snap["datapath"]["flowsExpired"],
        if per_packet { "0" } else { "1" },
        "{:#}",
        snap["datapath"]
    );
    let ct = netns::exec(&lab.lb.ns, "cat", &["/proc/net/nf_conntrack"]).unwrap_or_default();
    let records = ct
        .lines()
        .filter(|l| l.contains("SYN_SENT") && l.contains(&format!("sport={PORT} ")))
        .count();
    assert_eq!(records, 1, "conntrack kept one record for both: {ct}");
}

/// The client's attempts through the VIP, then `curl`'s from the lb to a
/// port of the dark backend that nothing answers on either: each counted
/// failed by the lb's agent, none opened; each counted unanswered too where
/// nobody answers, none where the backend refuses at once.
fn attempts_count_failed(name: &str, dark: Dark, lb_args: &[&str]) {
    let unanswered = |n: u64| if dark == Dark::Drops { n } else { 0 };
    let (lab, dark_node) = lab(name, dark, lb_args);
    let load = load_through_the_vip(&lab);
    let dark_addr = dark_node.addr4.to_string();
    let forwarded = lb_totals_once_failed(
        &lab,
        &dark_addr,
        BACKEND_PORT,
        load.failures,
        Duration::from_secs(30),
    );
    assert_eq!(
        (forwarded.failed, forwarded.opened, forwarded.closed),
        (load.failures, 0, 0),
        "the lb counted each forwarded attempt to the dark backend as failed, none opened: {forwarded:?}, client {load:?}"
    );
    assert_eq!(
        (forwarded.unanswered, forwarded.failed_unanswered),
        (unanswered(load.failures), unanswered(load.failures)),
        "the lb counted each forwarded attempt nobody answered unanswered once, and said so of its failure: {forwarded:?}, client {load:?}"
    );
    check_lit_backends(&lab, &load);
    check_dark_served_nothing(&dark_node);

    let target = format!("{dark_addr}:{CLOSED_PORT}");
    let dialled = dial_from(&lab, &lab.lb, &target, LOCAL_DIALS);
    let local = lb_totals_once_failed(
        &lab,
        &dark_addr,
        CLOSED_PORT,
        dialled,
        Duration::from_secs(10),
    );
    assert_eq!(
        (
            local.failed,
            local.opened,
            local.unanswered,
            local.failed_unanswered
        ),
        (dialled, 0, unanswered(dialled), unanswered(dialled)),
        "the lb's own connects count failed (and unanswered, where nobody answered, which their failures say): {local:?}"
    );
}

/// A connect whose SYN the node's own qdisc drops, first and every time
/// again (a full queue on the node: "local congestion"): counted
/// unanswered once, at its first retransmission timeout, and failed once
/// curl gives it up, which says it was counted unanswered. Such a SYN is
/// tried again every half second after its first timeout, not on the
/// doubling timeouts of one that leaves; on Linux 6.18 each try raises the
/// socket's retransmission counts (`ss -ti` reads `retrans:0/3` after
/// three), so the timeouts after the first do not read as a first, and
/// the failure reads as an attempt whose SYN was sent again. A kernel that
/// counted only the tries that leave would have each timeout read as the
/// first, and this lab would fail there.
#[test]
fn a_syn_the_node_cannot_send_again_counts_unanswered_once() {
    evenflow_tests::require_root();
    let mut lab = Lab::new("failqdisc", 1).expect("the lab builds");
    let lb = lab.lb.clone();
    agent::start(&mut lab, &lb, &[]).expect("the lb agent starts");
    // A link of the lb's own whose queue takes nothing: a pfifo of no
    // packets, and the peer's address known for good, so nothing waits
    // for neighbour discovery before the queue.
    let (out, peer) = ("efq0", "efq1");
    netns::veth(out, &lb.ns, peer, &lb.ns).expect("the veth pair is made");
    netns::addr(&lb.ns, out, "10.250.0.1/30").expect("the link has an address");
    let mac = netns::exec(&lb.ns, "cat", &[&format!("/sys/class/net/{peer}/address")])
        .expect("the peer's address reads");
    netns::exec(
        &lb.ns,
        "ip",
        &[
            "neigh",
            "replace",
            "10.250.0.2",
            "lladdr",
            mac.trim(),
            "dev",
            out,
            "nud",
            "permanent",
        ],
    )
    .expect("the neighbour is set");
    netns::exec(
        &lb.ns,
        "tc",
        &[
            "qdisc", "replace", "dev", out, "root", "pfifo", "limit", "0",
        ],
    )
    .expect("the queue that takes nothing is set");
    let dialled = dial_from(&lab, &lab.lb, &format!("10.250.0.2:{CLOSED_PORT}"), 1);
    let local = lb_totals_once_failed(
        &lab,
        "10.250.0.2",
        CLOSED_PORT,
        dialled,
        Duration::from_secs(10),
    );
    let drops = netns::exec(&lb.ns, "tc", &["-s", "qdisc", "show", "dev", out])
        .expect("the queue's counts read");
    let dropped: u64 = drops
        .split("dropped ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("tc counts drops: {drops}"));
    assert!(
        dropped >= 3,
        "the queue dropped the SYN and at least two tries again: {drops}"
    );
    assert_eq!(
        (
            local.failed,
            local.opened,
            local.unanswered,
            local.failed_unanswered
        ),
        (1, 0, 1, 1),
        "one attempt, counted unanswered once and failed once, its failure saying so: {local:?}; {drops}"
    );
}

/// A judged lab: the collector with a pool file for the backends, an
/// agent on every node streaming to it, and all four backends serving a
/// first load. The test then darkens the fourth, `dark`, its own way.
/// The lb's agent runs with `lb_args` too.
fn judged_lab(name: &str, lb_args: &[&str]) -> (Lab, Node) {
    judged_lab_giving_up(name, lb_args, None)
}

/// [`judged_lab`] with the lb giving a forwarded attempt up after
/// `syn_sent` seconds (conntrack's SYN_SENT timeout, set before the lb's
/// agent starts, whose sweeper copies it when counting per packet).
fn judged_lab_giving_up(name: &str, lb_args: &[&str], syn_sent: Option<&str>) -> (Lab, Node) {
    evenflow_tests::require_root();
    let mut lab = Lab::new(name, 4).expect("the lab builds");
    if let Some(secs) = syn_sent {
        netns::sysctl(
            &lab.lb.ns,
            "net.netfilter.nf_conntrack_tcp_timeout_syn_sent",
            secs,
        )
        .expect("conntrack's SYN_SENT timeout changes");
    }
    let pools = lab.dir.join("pools.toml");
    lab.write_pool_file(&pools, BACKEND_PORT, &[], None)
        .expect("the pool file is written");
    agent::start_collector_with(
        &mut lab,
        "10.1.0.1:9465",
        &["--pools", &pools.display().to_string()],
    )
    .expect("the collector starts");
    let url = format!("http://{COLLECTOR}");
    let mut args = vec!["--collector", &url];
    args.extend_from_slice(lb_args);
    let (lab, dark) = with_dark_backend(lab, Dark::Serves, &args);
    let mut nodes = vec![lab.lb.clone()];
    nodes.extend(lab.backends.iter().cloned());
    agent::wait_reporting(&lab, &nodes).expect("every agent reports");
    let warm = client::http_load(&lab.client.ns, lab::vip(false), 40, 4).expect("the load runs");
    assert_eq!(warm.failures, 0, "all four serve at first: {warm:?}");
    (lab, dark)
}

/// Drives load through the VIP until the collector judges `dark` with
/// its failed attempts named (ZERO or, with `down_too`, DOWN); returns
/// its member view.
fn judged_with_failures(lab: &Lab, dark: &Node, down_too: bool) -> serde_json::Value {
    let dark_id = dark.addr4.to_string();
    let started = std::time::Instant::now();
    loop {
        load_through_the_vip(lab);
        let pool = judged::pool(lab);
        let member = pool.as_ref().and_then(|p| {
            p["members"]
                .as_array()?
                .iter()
                .find(|m| m["address"] == dark_id.as_str())
                .cloned()
        });
        // Named from the first failed attempt; ZERO once the silence is
        // improbable.
        let judged =
            |verdict: &str| verdict == "VERDICT_ZERO" || down_too && verdict == "VERDICT_DOWN";
        if let Some(m) = member.filter(|m| {
            m["verdict"].as_str().is_some_and(judged)
                && m["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("connection attempts to it failed"))
        }) {
            println!("judged: {m:#}");
            let reason = m["reason"].as_str().unwrap_or_default();
            assert!(
                reason.contains("its load balancers' nodes still dial it (their rules, or their health checks), and it does not take them"),
                "{reason}"
            );
            assert!(
                grpcurl::number(&m["lbView"]["failedConnsTotal"]) > 0,
                "the LB view counts the failed attempts: {:#}",
                m["lbView"]
            );
            return m;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the dark backend is never judged with its failed attempts named; last pool: {pool:#?}"
        );
    }
}

/// The collector's ZERO and SKEW alerts on `dark`'s new connections,
/// resolved ones included.
fn shortfall_alerts(lab: &Lab, dark: &Node) -> Vec<serde_json::Value> {
    let member = format!("{}:{BACKEND_PORT}", dark.addr4);
    (judged::alerts(lab).into_iter())
        .filter(|a| {
            a["member"] == member.as_str()
                && a["signal"] == "SIGNAL_NEW_CONNECTIONS"
                && matches!(
                    a["kind"].as_str(),
                    Some("ALERT_KIND_ZERO" | "ALERT_KIND_SKEW")
                )
        })
        .collect()
}

/// Waits up to `within` for a ZERO page on `dark`, calling `drive` (the
/// load, where none runs meanwhile) before each look; returns its
/// shortfall alerts.
fn zero_page(
    lab: &Lab,
    dark: &Node,
    within: Duration,
    mut drive: impl FnMut(),
) -> Vec<serde_json::Value> {
    evenflow_tests::wait_for(within, || {
        drive();
        let alerts = shortfall_alerts(lab, dark);
        alerts
            .iter()
            .any(|a| a["kind"] == "ALERT_KIND_ZERO" && a["severity"] == "SEVERITY_PAGE")
            .then_some(alerts)
    })
    .unwrap_or_else(|| {
        panic!(
            "no ZERO page on {} within {within:?}; its alerts: {:#?}",
            dark.addr4,
            shortfall_alerts(lab, dark)
        )
    })
}

/// Every shortfall alert on `dark` blames the member: its balancers'
/// attempts failed, so none says routing.
fn check_refusing(alerts: &[serde_json::Value]) {
    for a in alerts {
        assert_eq!(a["cause"], "CAUSE_REFUSING", "{a:#}");
        assert!(
            a["summary"]
                .as_str()
                .is_some_and(|s| s.contains("connection attempts to it failed")),
            "{a:#}"
        );
    }
}

/// End to end: a backend whose nginx dies under load is judged by the
/// collector (its pool file's), and its reason names the attempts that
/// failed, which a backend the balancer leaves out (`dark_backend`) never
/// has. Its agent may see it DOWN (no listener) first: either way, no
/// alert blames the balancer's routing.
#[test]
fn a_refusing_backend_is_judged_with_its_failed_attempts() {
    let (mut lab, dark) = judged_lab("failjudge", &[]);
    lab.kill(&format!("nginx-{}", dark.role));
    judged_with_failures(&lab, &dark, true);
    check_refusing(&shortfall_alerts(&lab, &dark));
}

/// A backend whose firewall answers its balancer's SYNs with an RST while
/// its nginx still listens: its own agent sees a listener and nothing
/// arrive (ZERO in the server view, not DOWN), its balancer's attempts
/// fail, and the collector pages ZERO with cause refusing, where a
/// balancer that leaves it out (`dark_backend`) pages routing.
#[test]
fn a_backend_rejecting_its_balancers_connections_pages_zero_refusing() {
    let (lab, dark) = judged_lab("failcause", &[]);
    nft::load(
        &lab,
        &dark.ns,
        "reject-syns",
        &format!(
            "table inet evenflow_reject {{ chain input {{ type filter hook input priority 0; tcp dport {BACKEND_PORT} reject with tcp reset; }} }}"
        ),
    )
    .expect("the reject rule loads");
    judged_with_failures(&lab, &dark, false);
    let paged = zero_page(&lab, &dark, Duration::from_secs(20), || {
        load_through_the_vip(&lab);
    });
    println!("alerts: {paged:#?}");
    check_refusing(&paged);
}

/// The lb's own count of attempts to `dark`'s backend port.
fn lb_count_of(lab: &Lab, dark: &Node) -> Totals {
    let snap = grpcurl::snapshot(&lab.lb.ns).expect("the lb agent answers");
    grpcurl::totals(&snap, &dark.addr4.to_string(), BACKEND_PORT, SENDS_TO)
}

/// The lb's own counts of attempts to each backend's port, in the
/// backends' order, from one snapshot.
fn lb_counts(lab: &Lab) -> Vec<Totals> {
    let snap = grpcurl::snapshot(&lab.lb.ns).expect("the lb agent answers");
    (lab.backends.iter())
        .map(|b| grpcurl::totals(&snap, &b.addr4.to_string(), BACKEND_PORT, SENDS_TO))
        .collect()
}

/// Load through the VIP from four threads until dropped, so that a
/// connect to a backend nobody answers (3 s) holds up a quarter of it.
fn steady_load(lab: &Lab) -> client::Steady {
    client::Steady::split(lab, &[(lab::vip(false), 1); 4])
}

/// The rule that drops every packet `dark` receives on its backend port
/// (`all`: on every port but loopback's), as a firewall, or a host cut
/// off from its balancer, does.
fn drop_at(lab: &Lab, dark: &Node, all: bool) {
    let what = if all {
        "iifname != \"lo\"".to_owned()
    } else {
        format!("tcp dport {BACKEND_PORT}")
    };
    nft::load(
        lab,
        &dark.ns,
        "drop",
        &format!(
            "table inet evenflow_drop {{ chain input {{ type filter hook input priority 0; {what} drop; }} }}"
        ),
    )
    .expect("the drop rule loads");
}

/// A backend whose firewall drops its balancer's SYNs while its nginx
/// still listens, behind DNAT as kube-proxy balances, with conntrack's
/// default two minutes before it gives an attempt up: each attempt is
/// counted unanswered a second after its SYN, so the collector's ZERO
/// alerts on it name its attempts and say refusing from the first, and
/// page within seconds. Counted only once given up, the attempts named
/// nothing for two minutes, and the alerts said routing: the balancer
/// blamed for what the backend's firewall did.
#[test]
fn a_backend_dropping_its_balancers_syns_pages_zero_refusing_within_seconds() {
    let (lab, dark) = judged_lab("faildrops", &[]);
    drop_at(&lab, &dark, false);
    let dropped = Instant::now();
    let load = steady_load(&lab);
    let paged = zero_page(&lab, &dark, Duration::from_secs(40), || {});
    let after = dropped.elapsed();
    let counted = lb_count_of(&lab, &dark);
    drop(load);
    println!("paged {after:?} after the rule; the lb counted {counted:?}: {paged:#?}");
    check_refusing(&paged);
    assert!(
        counted.unanswered > counted.failed,
        "judged on attempts counted unanswered, before conntrack gave them up: {counted:?}"
    );
}

/// A network policy pushed to every backend drops the connections to
/// their port, behind DNAT as kube-proxy balances: listeners up, agents
/// reporting, and nothing opens anywhere. The lb counts each attempt
/// unanswered a second after its SYN, two minutes before conntrack gives
/// it up, so the pool pages FAILING within seconds, once, with every
/// member ZERO refusing beside it; `evenflow verify` fails naming it, and
/// the page resolves once the policy goes.
#[test]
fn a_pool_behind_dnat_whose_every_backend_drops_syns_pages_failing_within_seconds() {
    every_backend_drops("failall", &[]);
}

/// The same with the lb counting its forwarded connections packet by
/// packet.
#[test]
fn a_pool_behind_dnat_whose_every_backend_drops_syns_pages_failing_within_seconds_per_packet() {
    every_backend_drops("failallpp", &["--forwarded-per-packet"]);
}

/// Drops every SYN to the backend port on all four backends of a
/// [`judged_lab`] (the lb's agent with `lb_args`) under load, waits for
/// the pool's one FAILING page, and for it to resolve once the drops go.
fn every_backend_drops(name: &str, lb_args: &[&str]) {
    let (lab, _) = judged_lab(name, lb_args);
    let (load, page) = failing_under_a_policy(&lab);
    let summary = page["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("every connection attempt"), "{page:#}");
    assert_eq!(page["cause"], "CAUSE_REFUSING", "{page:#}");
    let counted = lb_counts(&lab);
    // The page came within 40 s, where conntrack gives an attempt up after
    // 120: each backend has more attempts counted unanswered than given
    // up. Some may be given up: a client that dials again from a port an
    // attempt of its own still holds in conntrack ends that attempt (see
    // `dial_again_from_one_port`); one CI run read two of a backend's
    // eleven so.
    let datapath = grpcurl::snapshot(&lab.lb.ns).expect("the lb agent answers")["datapath"].clone();
    let ct = netns::exec(&lab.lb.ns, "cat", &["/proc/net/nf_conntrack"]).unwrap_or_default();
    let syn_sent = ct.lines().filter(|l| l.contains("SYN_SENT")).count();
    println!(
        "the lb counted {counted:?}, with {syn_sent} records in SYN_SENT; its datapath: {datapath}"
    );
    assert!(
        counted.iter().all(|c| c.unanswered > c.failed),
        "judged on attempts counted unanswered, before conntrack gave them up: {counted:?}\n{ct}"
    );
    let p = judged::wait_pool(&lab, 10, "every member ZERO", |p| {
        (p["members"].as_array()).is_some_and(|m| m.iter().all(|m| m["verdict"] == "VERDICT_ZERO"))
    });
    assert_eq!(p["verdict"], "VERDICT_FAILING", "{p:#}");

    lift_drops(&lab);
    judged::failing_resolves(&lab, Instant::now(), "the policy went");
    let (served, failed) = load.finish_failing();
    assert!(served > 0 && failed > 0, "served {served}, failed {failed}");
}

/// The same policy, and then the outage ends as many do: the clients
/// give up and go, and the policy goes. The page resolves; the attempts
/// are given up only later, when conntrack forgets them (its SYN_SENT
/// timeout, 30 s here, two minutes by default), each said to have been
/// counted unanswered. Weighed again then, they read as a pool whose
/// every attempt fails once more, and FAILING paged a second time,
/// 17 to 21 s after the clients went, with no client left; now nothing
/// pages.
#[test]
fn an_outage_whose_clients_went_pages_nothing_when_its_attempts_are_given_up() {
    clients_go_first("failgone", &[]);
}

/// The same with the lb counting its forwarded connections packet by
/// packet, whose sweeper gives the attempts up.
#[test]
fn an_outage_whose_clients_went_pages_nothing_when_its_attempts_are_given_up_per_packet() {
    clients_go_first("failgonepp", &["--forwarded-per-packet"]);
}

/// Every backend of a [`judged_lab_giving_up`] (after 30 s) drops its
/// SYNs under load until FAILING pages; the clients go, then the drops;
/// checks that nothing pages while the lb gives the attempts up.
fn clients_go_first(name: &str, lb_args: &[&str]) {
    let (lab, _) = judged_lab_giving_up(name, lb_args, Some("30"));
    let (load, _) = failing_under_a_policy(&lab);
    let (served, failed) = load.finish_failing();
    let gone = Instant::now();
    assert!(
        served == 0 && failed > 0,
        "every attempt failed: served {served}, failed {failed}"
    );
    lift_drops(&lab);
    judged::failing_resolves(&lab, gone, "the clients went");
    let pages = || judged::alerts_of(&lab, "ALERT_KIND_FAILING", "", "SEVERITY_PAGE");
    let resolved = pages();
    // Until every attempt is given up, and then two intervals for the
    // last failures to reach the collector and a share window for them
    // to weigh, nothing pages.
    let mut given_up: Option<(Instant, Vec<Totals>)> = None;
    while given_up
        .as_ref()
        .is_none_or(|(at, _)| at.elapsed() < Duration::from_secs(12))
    {
        let open: Vec<_> = (judged::alerts(&lab).into_iter())
            .filter(|a| a["severity"] == "SEVERITY_PAGE" && a["resolvedAt"].is_null())
            .collect();
        assert!(
            open.is_empty(),
            "nothing pages once the outage is over ({:.1} s after the clients went): {open:#?}",
            gone.elapsed().as_secs_f64()
        );
        let counted = lb_counts(&lab);
        if given_up.is_none() && counted.iter().all(|c| c.failed == c.unanswered) {
            println!(
                "every attempt given up {:.1} s after the clients went: {counted:?}",
                gone.elapsed().as_secs_f64()
            );
            given_up = Some((Instant::now(), counted.clone()));
        }
        assert!(
            gone.elapsed() < Duration::from_secs(90),
            "the lb gives every attempt up within 30 s: {counted:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Not reopened and resolved again between two looks either.
    assert_eq!(pages(), resolved, "the one page, resolved once");
    let (_, counted) = given_up.expect("given up");
    assert!(
        (counted.iter()).all(|c| c.failed_unanswered == c.failed && c.failed > 0),
        "each failure said to have been counted unanswered: {counted:?}"
    );
}

/// Drops every SYN to the backend port on all of `lab`'s backends, as a
/// policy pushed to each does, under load; waits for the pool's one
/// FAILING page. Returns the load, still running, and the page.
fn failing_under_a_policy(lab: &Lab) -> (client::Steady, serde_json::Value) {
    drop_at_every_backend(lab);
    let dropped = Instant::now();
    let load = steady_load(lab);
    (
        load,
        judged::failing_pages(lab, dropped, "the policy", "web"),
    )
}

/// [`drop_at`]'s rule on every backend's port: a policy pushed to each.
fn drop_at_every_backend(lab: &Lab) {
    for b in &lab.backends {
        drop_at(lab, b, false);
    }
}

/// Removes [`drop_at`]'s rule from every backend.
fn lift_drops(lab: &Lab) {
    for b in &lab.backends {
        netns::exec(&b.ns, "nft", &["delete", "table", "inet", "evenflow_drop"])
            .expect("the policy goes");
    }
}

/// A backend host cut off from its balancer behind DNAT, its agent gone
/// with it: DOWN ("its balancers' last connection attempts to it failed")
/// within seconds, from attempts counted unanswered, where counting them
/// only when conntrack gives them up left it NO_DATA for two minutes.
#[test]
fn a_host_cut_off_behind_dnat_is_down_within_seconds() {
    cut_off("failcut", &[]);
}

/// The same with the lb counting its forwarded connections packet by
/// packet, whose sweeper gives an attempt up at conntrack's SYN_SENT
/// timeout too (two minutes by default).
#[test]
fn a_host_cut_off_behind_dnat_is_down_within_seconds_per_packet() {
    cut_off("failcutpp", &["--forwarded-per-packet"]);
}

/// Cuts the fourth backend of a [`judged_lab`] off (the lb's agent with
/// `lb_args`) and waits for it to be judged DOWN.
fn cut_off(name: &str, lb_args: &[&str]) {
    let (mut lab, dark) = judged_lab(name, lb_args);
    drop_at(&lab, &dark, true);
    agent::kill(&mut lab, &dark);
    let cut = Instant::now();
    let load = steady_load(&lab);
    let dark_id = dark.addr4.to_string();
    let down = evenflow_tests::wait_for(Duration::from_secs(40), || {
        let pool = judged::pool(&lab)?;
        (pool["members"].as_array()?.iter())
            .find(|m| {
                m["address"] == dark_id.as_str()
                    && m["verdict"] == "VERDICT_DOWN"
                    && m["reason"].as_str().is_some_and(|r| {
                        r.contains("its balancers' last connection attempts to it failed")
                    })
            })
            .cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "the cut-off host is never DOWN within 40 s; last pool: {:#?}",
            judged::pool(&lab)
        )
    });
    let after = cut.elapsed();
    let counted = lb_count_of(&lab, &dark);
    drop(load);
    println!("DOWN {after:?} after the cut; the lb counted {counted:?}: {down:#}");
    assert!(
        counted.unanswered > counted.failed,
        "judged on attempts counted unanswered, before conntrack gave them up: {counted:?}"
    );
}

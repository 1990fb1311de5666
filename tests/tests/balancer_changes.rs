//! A change the balancer applies at its own moment pages nothing; one it
//! never applies pages once the grace ends. And changes nobody made: a
//! backend's host that dies behind the balancer is DOWN, not only STALE,
//! a backend that keeps crashing pages DOWN, and a pool whose every
//! backend drops its connections pages FAILING.
//!
//! Real lab: three nginx backends with an agent each, HAProxy on the lb
//! (round robin, weights set over its runtime API) with its agent, and the
//! collector on the lb reading a pool file of the three servers. The pool
//! file is written as an operator would, a new version renamed over the
//! old; HAProxy's weights change seconds later, as a config push reaches
//! it.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use evenflow_tests::{
    agent::{self, COLLECTOR},
    client::Steady,
    grpcurl, haproxy,
    judged::{alerts, alerts_of, failing_pages, failing_resolves, pool, verify, wait_pool},
    lab::{BACKEND_PORT, Lab},
    netns, nft, nginx,
};
use serde_json::Value;

/// The collector's metrics listener, on the lb.
const METRICS: &str = "10.1.0.1:9465";

/// Writes the pool file with `weights` for b1, b2, b3 (the one at index
/// `draining`, if any, draining).
fn write_pools(lab: &Lab, path: &Path, weights: [u32; 3], draining: Option<usize>) {
    (lab.write_pool_file(path, BACKEND_PORT, &weights, draining)).expect("the pool file replaced");
}

/// The collector's `/metrics`, fetched from the lb.
fn metrics(lab: &Lab) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.lb.ns, "curl", "-sf"])
        .arg(format!("http://{METRICS}/metrics"))
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl {METRICS}/metrics failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Member `address` as the collector shows it.
fn member<'a>(p: &'a Value, address: &str) -> Option<&'a Value> {
    p["members"]
        .as_array()?
        .iter()
        .find(|m| m["address"] == address)
}

/// The lab named `name`: the collector reading the pool file (1:1:1), nginx
/// and an agent on every backend, an agent on the lb, HAProxy started by
/// `haproxy`; every agent reporting. Returns the lab, the pool file and
/// HAProxy's stats socket.
fn stand_up(
    name: &str,
    haproxy: impl FnOnce(&mut Lab) -> anyhow::Result<std::path::PathBuf>,
) -> (Lab, std::path::PathBuf, std::path::PathBuf) {
    stand_up_with(name, &[], haproxy)
}

/// [`stand_up`] with `collector_args` added to the collector's flags.
fn stand_up_with(
    name: &str,
    collector_args: &[&str],
    haproxy: impl FnOnce(&mut Lab) -> anyhow::Result<std::path::PathBuf>,
) -> (Lab, std::path::PathBuf, std::path::PathBuf) {
    let mut lab = Lab::new(name, 3).expect("lab");
    let pools = lab.dir.join("pools.toml");
    write_pools(&lab, &pools, [1, 1, 1], None);
    let file = pools.display().to_string();
    let mut args = vec!["--pools", &file];
    args.extend_from_slice(collector_args);
    agent::start_collector_with(&mut lab, METRICS, &args).expect("collector");
    let url = format!("http://{COLLECTOR}");
    for b in lab.backends.clone() {
        nginx::start(&mut lab, &b).expect("nginx");
        agent::start(&mut lab, &b, &["--collector", &url]).expect("backend agent");
    }
    let lb = lab.lb.clone();
    agent::start(&mut lab, &lb, &["--collector", &url]).expect("lb agent");
    let sock = haproxy(&mut lab).expect("haproxy");
    let mut nodes = lab.backends.clone();
    nodes.push(lb);
    agent::wait_reporting(&lab, &nodes).expect("every agent reports");
    (lab, pools, sock)
}

#[test]
fn a_weight_change_haproxy_applies_late_pages_nothing_and_one_never_applied_pages_skew() {
    evenflow_tests::require_root();
    let (lab, pools, sock) = stand_up("reweight", |lab| haproxy::start(lab, false));

    let load = Steady::start(&lab);
    wait_pool(&lab, 40, "the pool judged OK", |p| {
        p["verdict"] == "VERDICT_OK" && p["members"].as_array().is_some_and(|m| m.len() == 3)
    });

    // The operator moves b1 to 6 of 8: the pool file first, HAProxy 6 s
    // after the collector has read it.
    let b1_addr = lab.backends[0].addr4.to_string();
    let b1_weight = |p: &Value| member(p, &b1_addr).and_then(|m| m["weight"].as_f64());
    write_pools(&lab, &pools, [6, 1, 1], None);
    wait_pool(&lab, 10, "the collector reads the new weights", |p| {
        b1_weight(p) == Some(6.0)
    });
    let read = Instant::now();
    // The deploy gate cannot pass a change that is not in place yet.
    let (code, said) = verify(&lab);
    assert_eq!(code, 2, "verify while HAProxy still splits 1:1:1: {said}");
    assert!(said.contains("weight change to 6"), "{said}");
    // Dashboards see the same: the declared weight, and the one still
    // judged against.
    let series = metrics(&lab);
    let b1_id = format!("pool=\"web\",member=\"{b1_addr}:{BACKEND_PORT}\"");
    for line in [
        format!("evenflow_member_weight{{{b1_id}}} 6"),
        format!("evenflow_member_judged_weight{{{b1_id}}} 1"),
    ] {
        assert!(series.lines().any(|l| l == line), "no {line} in:\n{series}");
    }
    std::thread::sleep(Duration::from_secs(6).saturating_sub(read.elapsed()));
    let b1 = lab.backends[0].role.clone();
    haproxy::command(&sock, &format!("set weight {}/{b1} 6", haproxy::BACKEND))
        .expect("HAProxy takes b1's weight");
    let p = wait_pool(&lab, 20, "b1 judged on its new share", |p| {
        member(p, &b1_addr)
            .and_then(|m| m["serverView"]["expectedShare"].as_f64())
            .is_some_and(|s| (s - 0.75).abs() < 1e-6)
            && !p["reason"].as_str().unwrap_or("").contains("previous")
    });
    let (code, said) = verify(&lab);
    assert_eq!(code, 0, "verify once HAProxy follows: {said}");
    std::thread::sleep(Duration::from_secs(3));
    // STALE warnings from before the agents' first reports aside, and HOT:
    // the lab's nodes share one machine's CPU, so HOT there says how busy
    // the machine is (a build beside the test), not how the pool splits.
    let paged: Vec<Value> = (alerts(&lab).into_iter())
        .filter(|a| {
            !matches!(
                a["kind"].as_str(),
                Some("ALERT_KIND_STALE" | "ALERT_KIND_HOT")
            )
        })
        .collect();
    assert!(
        paged.is_empty(),
        "a weight change HAProxy took 6 s late raised alerts: {paged:#?}\npool: {p:#?}\ncollector:\n{}",
        lab.log("collector")
    );

    // The pool file goes back to 1:1:1 and HAProxy is never told: one
    // page, once the grace (30 ticks) has passed. 6:1:1 against 1:1:1 is
    // b1's SKEW and also the pool's CONCENTRATION (1.7 effective members
    // of 3), whose page then groups b1's SKEW under it: whichever the
    // evidence crosses first is the page.
    write_pools(&lab, &pools, [1, 1, 1], None);
    wait_pool(&lab, 10, "the collector reads the old weights", |p| {
        b1_weight(p) == Some(1.0)
    });
    let read = Instant::now();
    let skew = evenflow_tests::wait_for(Duration::from_secs(50), || {
        alerts(&lab).into_iter().find(|a| {
            matches!(
                a["kind"].as_str(),
                Some("ALERT_KIND_SKEW" | "ALERT_KIND_CONCENTRATION")
            ) && a["severity"] == "SEVERITY_PAGE"
        })
    })
    .unwrap_or_else(|| panic!("no SKEW or CONCENTRATION page; pool: {:#?}", pool(&lab)));
    let after = read.elapsed();
    drop(load);
    println!(
        "{} {:.1} s after the collector read a change HAProxy never applied: {}",
        skew["kind"],
        after.as_secs_f64(),
        skew["summary"]
    );
    assert!(
        after > Duration::from_secs(25),
        "a page within the grace: {after:?}"
    );
}

/// HAProxy's HTTP health checks (`check`, `option httpchk`: a request
/// every 2 s) keep reaching a drained server (weight 0): five new
/// connections every ten ticks, which alone paged DRAINING_VIOLATION
/// before. Beside about 50 client
/// connections a second they are a sliver of what the server's weight
/// would draw, and page nothing. When HAProxy is told to send to it again
/// while the pool file still drains it (a drain the balancer forgot), it
/// pages within seconds.
#[test]
fn a_drained_server_health_checks_reach_pages_nothing_until_haproxy_sends_to_it() {
    evenflow_tests::require_root();
    let (lab, pools, sock) = stand_up("drainchk", haproxy::start_checked);
    let load = Steady::start(&lab);
    wait_pool(&lab, 40, "the pool judged OK", |p| {
        p["verdict"] == "VERDICT_OK" && p["members"].as_array().is_some_and(|m| m.len() == 3)
    });

    let b3 = lab.backends[2].role.clone();
    let b3_addr = lab.backends[2].addr4.to_string();
    let b3_id = format!("{b3_addr}:{BACKEND_PORT}");
    haproxy::command(&sock, &format!("set weight {}/{b3} 0", haproxy::BACKEND))
        .expect("HAProxy drains b3");
    write_pools(&lab, &pools, [1, 1, 1], Some(2));
    let p = wait_pool(&lab, 20, "b3 shown draining", |p| {
        member(p, &b3_addr).is_some_and(|m| m["state"] == "MEMBER_STATE_DRAINING")
    });
    let received = |p: &Value| {
        member(p, &b3_addr).map_or(0, |m| grpcurl::number(&m["serverView"]["connsTotal"]))
    };
    let before = received(&p);
    std::thread::sleep(Duration::from_secs(15));
    let p = pool(&lab).expect("GetPool");
    let checks = received(&p) - before;
    assert!(
        (4..=12).contains(&checks),
        "HAProxy's checks reached the drained b3 about every 2 s: {checks} in 15 s"
    );
    let violations = |lab: &Lab| -> Vec<Value> {
        alerts(lab)
            .into_iter()
            .filter(|a| a["kind"] == "ALERT_KIND_DRAINING_VIOLATION")
            .collect()
    };
    let early = violations(&lab);
    assert!(
        early.is_empty(),
        "health checks of a drained server in a busy pool paged: {early:#?}\npool: {p:#?}"
    );

    // HAProxy sends to b3 again; the pool file still drains it.
    haproxy::command(&sock, &format!("set weight {}/{b3} 1", haproxy::BACKEND))
        .expect("HAProxy takes b3 back");
    let forgot = Instant::now();
    let paged = evenflow_tests::wait_for(Duration::from_secs(20), || {
        violations(&lab)
            .into_iter()
            .find(|a| a["member"] == b3_id.as_str() && a["severity"] == "SEVERITY_PAGE")
    })
    .unwrap_or_else(|| panic!("no DRAINING_VIOLATION page; pool: {:#?}", pool(&lab)));
    let after = forgot.elapsed();
    drop(load);
    println!(
        "DRAINING_VIOLATION {:.1} s after HAProxy sent to the drained b3 again (its checks alone, {checks} in 15 s, paged nothing): {}",
        after.as_secs_f64(),
        paged["summary"]
    );
    assert!(after < Duration::from_secs(10), "within seconds: {after:?}");
    // It names the balancer that sends: HAProxy's node, the pool's one LB.
    let lbs = p["lbNodes"].as_array().cloned().unwrap_or_default();
    let lb = lbs.first().and_then(Value::as_str).unwrap_or("(none)");
    let summary = paged["summary"].as_str().unwrap_or("");
    assert!(
        lbs.len() == 1 && summary.contains(&format!("in the LB view they came from {lb} (")),
        "the page names HAProxy's node {lb} (the pool's LB nodes: {lbs:?}): {summary}"
    );
}

/// The operator drains b3 in the pool file, and the change reaches
/// HAProxy backwards: b3 takes every connection, b1 and b2 none. The two
/// members left to share the pool open nothing, so their own rate alone
/// would call the pool quiet once its 30-tick mean fell, and the page
/// cleared while b3 kept taking everything. It pages within seconds,
/// stays open for as long as HAProxy sends everything to b3, and resolves
/// once HAProxy drains b3 as the pool file says.
#[test]
fn a_drained_server_haproxy_sends_everything_to_pages_until_it_stops() {
    evenflow_tests::require_root();
    let (lab, pools, sock) = stand_up("drainall", |lab| haproxy::start(lab, false));
    let load = Steady::start(&lab);
    wait_pool(&lab, 40, "the pool judged OK", |p| {
        p["verdict"] == "VERDICT_OK" && p["members"].as_array().is_some_and(|m| m.len() == 3)
    });
    let b3_addr = lab.backends[2].addr4.to_string();
    let b3_id = format!("{b3_addr}:{BACKEND_PORT}");
    let set_weights = |weights: [u32; 3]| {
        for (b, w) in lab.backends.iter().zip(weights) {
            let cmd = format!("set weight {}/{} {w}", haproxy::BACKEND, b.role);
            haproxy::command(&sock, &cmd).expect("HAProxy takes the weight");
        }
    };
    write_pools(&lab, &pools, [1, 1, 1], Some(2));
    wait_pool(&lab, 20, "b3 shown draining", |p| {
        member(p, &b3_addr).is_some_and(|m| m["state"] == "MEMBER_STATE_DRAINING")
    });
    set_weights([0, 0, 1]);
    let backwards = Instant::now();
    // b3's DRAINING_VIOLATION pages, the open one first.
    let violations = |lab: &Lab| -> Vec<Value> {
        let mut found: Vec<Value> = (alerts(lab).into_iter())
            .filter(|a| {
                a["kind"] == "ALERT_KIND_DRAINING_VIOLATION"
                    && a["member"] == b3_id.as_str()
                    && a["severity"] == "SEVERITY_PAGE"
            })
            .collect();
        found.sort_by_key(|a| !a["resolvedAt"].is_null());
        found
    };
    let open = |found: &[Value]| found.first().is_some_and(|a| a["resolvedAt"].is_null());
    let paged = evenflow_tests::wait_for(Duration::from_secs(20), || {
        violations(&lab).into_iter().next()
    })
    .unwrap_or_else(|| panic!("no DRAINING_VIOLATION page; pool: {:#?}", pool(&lab)));
    println!(
        "DRAINING_VIOLATION {:.1} s after HAProxy sent everything to the drained b3: {}",
        backwards.elapsed().as_secs_f64(),
        paged["summary"]
    );

    // Past the 30-tick mean that used to end it, and then some.
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(45) {
        let paging = open(&violations(&lab));
        let other: Vec<Value> = (alerts(&lab).into_iter())
            .filter(|a| {
                a["severity"] == "SEVERITY_PAGE" && a["kind"] != "ALERT_KIND_DRAINING_VIOLATION"
            })
            .collect();
        assert!(
            other.is_empty(),
            "only b3's DRAINING_VIOLATION pages: {other:#?}"
        );
        let p = pool(&lab).expect("GetPool");
        assert!(
            paging && p["verdict"] != "VERDICT_INSUFFICIENT_TRAFFIC",
            "{:.0} s into HAProxy sending everything to b3, its page is {} and the pool {}: {p:#?}",
            hold.elapsed().as_secs_f64(),
            if paging { "open" } else { "resolved" },
            p["verdict"]
        );
        std::thread::sleep(Duration::from_secs(3));
    }

    set_weights([1, 1, 0]);
    let mended = Instant::now();
    evenflow_tests::wait_for(Duration::from_secs(40), || {
        let found = violations(&lab);
        (!found.is_empty() && !open(&found)).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the page did not resolve within 40 s of HAProxy draining b3; alerts: {:#?}",
            alerts(&lab)
        )
    });
    drop(load);
    println!(
        "resolved {:.1} s after HAProxy drained b3 as the pool file says",
        mended.elapsed().as_secs_f64()
    );
}

/// Two HAProxy nodes in front of the same three servers (`--service`
/// announced): the lb takes three quarters of the clients, a second
/// balancer node (b4's namespace) the rest; every agent reporting and the
/// pool judged OK with both balancers. Returns the lab, the servers, the
/// second HAProxy's stats socket and the load.
fn two_haproxies(
    name: &str,
) -> (
    Lab,
    Vec<evenflow_tests::lab::Node>,
    std::path::PathBuf,
    Steady,
) {
    let mut lab = Lab::new(name, 4).expect("lab");
    let lb2 = lab.backends[3].clone();
    let servers: Vec<_> = lab.backends[..3].to_vec();
    agent::start_collector_with(&mut lab, METRICS, &[]).expect("collector");
    let url = format!("http://{COLLECTOR}");
    for b in &servers {
        nginx::start(&mut lab, b).expect("nginx");
        agent::start(&mut lab, b, &["--collector", &url, "--service", "web=8080"])
            .expect("backend agent");
    }
    let lb = lab.lb.clone();
    for node in [&lb, &lb2] {
        agent::start(&mut lab, node, &["--collector", &url]).expect("balancer agent");
    }
    haproxy::start_on(&mut lab, &lb.clone(), &servers).expect("HAProxy on the lb");
    let sock2 = haproxy::start_on(&mut lab, &lb2, &servers).expect("HAProxy on the second");
    let mut nodes = lab.backends.clone();
    nodes.push(lb.clone());
    agent::wait_reporting(&lab, &nodes).expect("every agent reports");
    let lb2_at = SocketAddr::new(lb2.addr4, evenflow_tests::lab::VIP_PORT);
    let load = Steady::split(&lab, &[(evenflow_tests::lab::vip(false), 3), (lb2_at, 1)]);
    let p = wait_pool(&lab, 40, "the pool judged OK with both balancers", |p| {
        p["verdict"] == "VERDICT_OK"
            && p["members"]
                .as_array()
                .is_some_and(|m| m.len() == 3 && m.iter().all(|m| m["verdict"] == "VERDICT_OK"))
            && p["lbNodes"].as_array().is_some_and(|l| l.len() == 2)
    });
    println!("load balancers: {}", p["lbNodes"]);

    (lab, servers, sock2, load)
}

/// Two HAProxy nodes in front of the same three servers: the lb takes
/// three quarters of the clients, a second balancer node (b4's namespace)
/// the rest. A configuration push reaches the second first and its
/// HAProxy stops sending to b3 (`set server be/b3 state maint`): b3 still
/// gets three quarters of its share, inside every band of the pool's
/// view, and the second balancer's clients are on two servers. evenflow
/// warns, naming that balancer's node; once it sends to b3 again the
/// warning resolves. Nothing pages.
#[test]
fn one_of_two_haproxies_that_leaves_a_server_out_warns_naming_its_node() {
    evenflow_tests::require_root();
    let (lab, servers, sock2, load) = two_haproxies("lbsplit");
    let (lb, lb2) = (lab.lb.clone(), lab.backends[3].clone());
    let b3 = format!("{}:{BACKEND_PORT}", servers[2].addr4);
    let stot = |sock: &Path| -> u64 { haproxy::stats(sock).expect("show stat").servers["b3"].stot };
    haproxy::command(
        &sock2,
        &format!("set server {}/b3 state maint", haproxy::BACKEND),
    )
    .expect("the second HAProxy leaves b3 out");
    let pushed = Instant::now();
    let left_at = stot(&sock2);
    let warning = evenflow_tests::wait_for(Duration::from_secs(30), || {
        let open = alerts(&lab);
        if let Some(page) = open.iter().find(|a| a["severity"] == "SEVERITY_PAGE") {
            panic!("one balancer of two leaving b3 out paged: {page:#}");
        }
        open.into_iter()
            .find(|a| a["member"] == b3.as_str() && a["resolvedAt"].is_null())
    })
    .unwrap_or_else(|| {
        panic!(
            "no alert for b3 within 30 s of the second HAProxy leaving it out; pool: {:#?}",
            pool(&lab)
        )
    });
    let after = pushed.elapsed();
    let summary = warning["summary"].as_str().unwrap_or("").to_owned();
    assert_eq!(
        stot(&sock2),
        left_at,
        "HAProxy's own count: the second sent b3 nothing"
    );
    assert!(
        warning["kind"] == "ALERT_KIND_SKEW"
            && warning["severity"] == "SEVERITY_WARNING"
            && summary.contains(&format!(
                "load balancer {} sent it no new connection",
                lb2.ns
            ))
            && summary.ends_with(&format!("while {} sends to it", lb.ns)),
        "{warning:#}"
    );
    let ratio = pool(&lab)
        .and_then(|p| member(&p, &servers[2].addr4.to_string()).cloned())
        .map(|m| {
            m["lbView"]["observedShare"].as_f64().unwrap_or(0.0)
                / m["lbView"]["expectedShare"].as_f64().unwrap_or(1.0)
        });

    // The push is rolled back: the second sends to b3 again.
    haproxy::command(
        &sock2,
        &format!("set server {}/b3 state ready", haproxy::BACKEND),
    )
    .expect("the second HAProxy takes b3 back");
    let back = Instant::now();
    let resolved = evenflow_tests::wait_for(Duration::from_secs(40), || {
        alerts(&lab)
            .into_iter()
            .find(|a| a["member"] == b3.as_str() && !a["resolvedAt"].is_null())
    });
    let cleared = back.elapsed();
    let sent = load.finish();
    assert!(
        resolved.is_some(),
        "the warning never resolved once the second sent to b3 again"
    );
    let pages: Vec<Value> = (alerts(&lab).into_iter())
        .filter(|a| a["severity"] == "SEVERITY_PAGE")
        .collect();
    assert!(pages.is_empty(), "{pages:#?}");
    println!(
        "{sent} client connections; the second balancer left b3 out: warned {:.1} s later (b3's share of the pool's LB view meanwhile {:.2} of its due), resolved {:.1} s after it took b3 back: {summary}",
        after.as_secs_f64(),
        ratio.unwrap_or(f64::NAN),
        cleared.as_secs_f64()
    );
}

/// [`stand_up`] with HAProxy redispatching failed connects
/// ([`haproxy::start_redispatching`]) and the collector's
/// `--down-page-ticks` at `down_page_ticks`, under client load, once the
/// pool is judged OK.
fn redispatching_under_load(name: &str, down_page_ticks: &str) -> (Lab, Steady) {
    let (lab, _pools, _sock) = stand_up_with(
        name,
        &["--down-page-ticks", down_page_ticks],
        haproxy::start_redispatching,
    );
    let load = Steady::start(&lab);
    wait_pool(&lab, 40, "the pool judged OK", |p| {
        p["verdict"] == "VERDICT_OK" && p["members"].as_array().is_some_and(|m| m.len() == 3)
    });
    (lab, load)
}

/// b3's host dies under load: its agent goes with it and its address
/// answers nothing (every packet to it dropped). HAProxy has no health
/// checks: it goes on dialling b3 for its share, gives each connect up
/// after a second and redispatches it, so no client fails. Hearing nothing
/// from b3's agent, the collector said only STALE, a warning; its
/// balancer's failed attempts are what says the host cannot be reached:
/// DOWN within seconds, a page after `--down-page-ticks` (15 here), and
/// resolved once the host is back.
#[test]
fn a_host_that_dies_behind_haproxy_is_down_and_pages_while_it_stays_down() {
    evenflow_tests::require_root();
    let (mut lab, load) = redispatching_under_load("hostgone", "15");
    let b3 = lab.backends[2].clone();
    let b3_id = format!("{}:{BACKEND_PORT}", b3.addr4);
    let rules = "table inet evenflow_dead { chain input { type filter hook input priority -300; policy drop; } }";
    nft::load(&lab, &b3.ns, "dead", rules).expect("b3 drops every packet");
    agent::kill(&mut lab, &b3);
    let died = Instant::now();
    let down = |lab: &Lab, severity: &str| {
        (alerts_of(lab, "ALERT_KIND_DOWN", &b3_id, severity).into_iter())
            .find(|a| a["resolvedAt"].is_null())
    };
    let warned = evenflow_tests::wait_for(Duration::from_secs(30), || {
        down(&lab, "SEVERITY_WARNING").or_else(|| down(&lab, "SEVERITY_PAGE"))
    })
    .unwrap_or_else(|| panic!("no DOWN for b3; alerts: {:#?}", alerts(&lab)));
    println!(
        "DOWN {:.1} s after b3's host died: {}",
        died.elapsed().as_secs_f64(),
        warned["summary"]
    );
    let summary = warned["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("its own agent is silent") && summary.contains("failed"),
        "{warned:#}"
    );
    assert_eq!(warned["view"], "VIEW_LB", "{warned:#}");
    let paged = evenflow_tests::wait_for(Duration::from_secs(40), || down(&lab, "SEVERITY_PAGE"))
        .unwrap_or_else(|| panic!("DOWN did not page; alerts: {:#?}", alerts(&lab)));
    println!(
        "paged {:.1} s after b3's host died",
        died.elapsed().as_secs_f64()
    );
    assert_eq!(paged["id"], warned["id"], "the warning became the page");
    let others: Vec<Value> = (alerts(&lab).into_iter())
        .filter(|a| a["severity"] == "SEVERITY_PAGE" && a["kind"] != "ALERT_KIND_DOWN")
        .collect();
    assert!(others.is_empty(), "only b3's DOWN pages: {others:#?}");

    netns::exec(&b3.ns, "nft", &["delete", "table", "inet", "evenflow_dead"])
        .expect("b3 answers again");
    let url = format!("http://{COLLECTOR}");
    agent::relaunch(&mut lab, &b3, &["--collector", &url], &[]).expect("b3's agent again");
    let back = Instant::now();
    evenflow_tests::wait_for(Duration::from_secs(40), || {
        (down(&lab, "SEVERITY_PAGE").is_none() && down(&lab, "SEVERITY_WARNING").is_none())
            .then_some(())
    })
    .unwrap_or_else(|| panic!("DOWN did not resolve; alerts: {:#?}", alerts(&lab)));
    println!(
        "resolved {:.1} s after b3's host came back",
        back.elapsed().as_secs_f64()
    );
    assert!(load.finish() > 0, "the clients were served throughout");
}

/// b3's nginx crash-loops behind HAProxy, which has no health checks and
/// redispatches each refused connect, so no client fails: killed, started
/// again 9 s later, killed again 3 s after that. No one outage lasts
/// `--down-page-ticks` (12 here), so each alone only warns, as a restart
/// should; but b3 is down three quarters of the time, and its down debt
/// (ticks down less ticks up) pages in its second outage.
#[test]
fn a_crash_looping_backend_pages_down_though_no_outage_lasts() {
    evenflow_tests::require_root();
    let (mut lab, load) = redispatching_under_load("crashloop", "12");
    let b3 = lab.backends[2].clone();
    let b3_id = format!("{}:{BACKEND_PORT}", b3.addr4);
    let down_pages = |lab: &Lab| alerts_of(lab, "ALERT_KIND_DOWN", &b3_id, "SEVERITY_PAGE");
    let started = Instant::now();
    let mut paged_in = None;
    for outage in 1..=3 {
        lab.kill(&format!("nginx-{}", b3.role));
        let down = Instant::now();
        while down.elapsed() < Duration::from_secs(9) && paged_in.is_none() {
            if let Some(page) = down_pages(&lab).into_iter().next() {
                println!(
                    "DOWN paged {:.1} s into outage {outage}: {}",
                    down.elapsed().as_secs_f64(),
                    page["summary"]
                );
                paged_in = Some(outage);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if paged_in.is_some() {
            break;
        }
        nginx::start(&mut lab, &b3).expect("nginx again");
        std::thread::sleep(Duration::from_secs(3));
    }
    let outage = paged_in.unwrap_or_else(|| {
        panic!(
            "no DOWN page in three outages over {:.0} s; alerts: {:#?}",
            started.elapsed().as_secs_f64(),
            alerts(&lab)
        )
    });
    assert!(outage >= 2, "one 9 s outage alone pages nothing");
    let page = down_pages(&lab).remove(0);
    let summary = page["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("it keeps going down"), "{page:#}");
    let others: Vec<Value> = (alerts(&lab).into_iter())
        .filter(|a| a["severity"] == "SEVERITY_PAGE" && a["kind"] != "ALERT_KIND_DOWN")
        .collect();
    assert!(others.is_empty(), "only b3's DOWN pages: {others:#?}");
    assert!(load.finish() > 0, "the clients were served throughout");
}

/// A network policy pushed to every backend drops the connections to
/// their port: listeners up, agents reporting. HAProxy has no health
/// checks: it dials each backend in turn, gives each connect up after a
/// second, and answers its clients 503. No connection opens anywhere, and
/// the collector said "too quiet to judge"; the balancer's failed
/// attempts say clients are trying: one page, FAILING, within seconds
/// (each member ZERO refusing beside it as a warning), `evenflow verify`
/// fails naming it, and it resolves once the policy goes.
#[test]
fn a_pool_whose_every_backend_drops_its_connections_pages_failing_once() {
    evenflow_tests::require_root();
    let (lab, load) = redispatching_under_load("failing", "30");
    let policy = format!(
        "table inet evenflow_policy {{ chain input {{ type filter hook input priority 0; tcp dport {BACKEND_PORT} drop; }} }}"
    );
    for b in &lab.backends {
        nft::load(&lab, &b.ns, "policy", &policy).expect("the policy drops connections");
    }
    let page = failing_pages(&lab, Instant::now(), "the policy", "FAILING");
    let summary = page["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("every connection attempt"), "{page:#}");
    assert_eq!(page["cause"], "CAUSE_REFUSING", "{page:#}");
    let p = wait_pool(&lab, 10, "every member ZERO", |p| {
        (p["members"].as_array()).is_some_and(|m| m.iter().all(|m| m["verdict"] == "VERDICT_ZERO"))
    });
    assert_eq!(p["verdict"], "VERDICT_FAILING", "{p:#}");

    for b in &lab.backends {
        netns::exec(
            &b.ns,
            "nft",
            &["delete", "table", "inet", "evenflow_policy"],
        )
        .expect("the policy goes");
    }
    failing_resolves(&lab, Instant::now(), "the policy went");
    let (served, failed) = load.finish_failing();
    assert!(served > 0 && failed > 0, "served {served}, failed {failed}");
}

/// Two HAProxy nodes in front of the same three servers, as above. The
/// second node loses its way to them (its own firewall drops what it
/// sends to their port: a route or a rule pushed to it alone): every
/// connect its HAProxy makes goes unanswered and its clients fail, while
/// the lb's clients are served. The members' shares stay even, so only
/// the second node's failed attempts say it: one page, FAILING, naming
/// that node; no member ZERO; `evenflow verify` fails; resolved once the
/// rule goes.
#[test]
fn a_balancer_node_cut_off_from_its_servers_pages_failing_naming_it() {
    evenflow_tests::require_root();
    let (lab, servers, _sock2, load) = two_haproxies("cutoff");
    let lb2 = lab.backends[3].clone();
    let rule = format!(
        "table inet evenflow_cut {{ chain output {{ type filter hook output priority 0; tcp dport {BACKEND_PORT} drop; }} }}"
    );
    nft::load(&lab, &lb2.ns, "cut", &rule).expect("the second node loses its servers");
    let page = failing_pages(&lab, Instant::now(), "the cut", &lb2.ns);
    let summary = page["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&format!("load balancer node {} fails every", lb2.ns))
            && summary.contains("cut off"),
        "{page:#}"
    );
    assert!(page["cause"].is_null(), "no member's cause: {page:#}");
    let p = pool(&lab).expect("the pool");
    assert_eq!(p["verdict"], "VERDICT_FAILING", "{p:#}");
    for s in &servers {
        let m = member(&p, &s.addr4.to_string()).expect("every server a member");
        assert_ne!(m["verdict"], "VERDICT_ZERO", "{m:#}");
    }

    netns::exec(&lb2.ns, "nft", &["delete", "table", "inet", "evenflow_cut"])
        .expect("the rule goes");
    failing_resolves(&lab, Instant::now(), "the rule went");
    let (served, failed) = load.finish_failing();
    assert!(served > 0 && failed > 0, "served {served}, failed {failed}");
}

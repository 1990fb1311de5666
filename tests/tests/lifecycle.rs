//! Counting that never stops: evenflow's programs stay attached through
//! pinned links when the agent is SIGKILLed, stopped or upgraded, and go
//! only when `evenflow-agent uninstall` removes them. Checked against
//! nginx's logs in a lab of network namespaces.
//!
//! Needs root (network namespaces, eBPF): run with `cargo xtask test`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use evenflow_tests::{
    agent, client,
    grpcurl::{self, SENDS_TO, SERVES},
    lab::{self, BACKEND_PORT, Lab},
    netns, nft, nginx,
    truth::{self, View, assert_served, settled},
};
use serde_json::Value;

const FLAGS: [&str; 2] = ["--service", "web=8080"];

/// Client load in the background until stopped; returns what it made.
fn background_load(lab: &Lab) -> (Arc<AtomicBool>, std::thread::JoinHandle<client::Load>) {
    let stop = Arc::new(AtomicBool::new(false));
    let ns = lab.client.ns.clone();
    let vip = lab::vip(false);
    let flag = stop.clone();
    let h = std::thread::spawn(move || {
        let mut total = client::Load::default();
        while !flag.load(Ordering::Relaxed) {
            let l = client::http_load(&ns, vip, 40, 4).expect("the load runs");
            total.add(&l);
            std::thread::sleep(Duration::from_millis(100));
        }
        total
    });
    (stop, h)
}

/// SIGKILL the lb's agent and a backend's agent for 3 s under load, then
/// start them again: not one connection or byte goes uncounted, in either
/// view, and the epoch stays.
#[test]
fn agents_killed_under_load_lose_nothing() {
    agents_killed_under_load("kill", &[]);
}

/// The same with every agent's sockets sampled by a walk
/// (`--socket-sampling walk`): the pinned programs go on counting without
/// state while the agents are gone, and the restarted agents adopt no
/// socket that sock_ops already counts.
#[test]
fn agents_killed_under_load_lose_nothing_walked() {
    agents_killed_under_load("killwk", &["--socket-sampling", "walk"]);
}

/// SIGKILLs the lb's agent and a backend's for 3 s under load, every agent
/// started with `extra`: both views equal nginx's logs.
fn agents_killed_under_load(name: &str, extra: &[&str]) {
    evenflow_tests::require_root();
    let (mut lab, logs) = dnat_lab(name, 4, extra);
    let (lb, b1) = (lab.lb.clone(), lab.backends[0].clone());
    let backend_flags = [&FLAGS[..], extra].concat();
    agent::start(&mut lab, &lb, extra).expect("the lb agent starts");
    let epoch_before = grpcurl::snapshot(&lb.ns).expect("snapshot")["agentEpoch"].clone();

    let (stop, load) = background_load(&lab);
    std::thread::sleep(Duration::from_secs(1));
    agent::kill(&mut lab, &lb);
    agent::kill(&mut lab, &b1);
    std::thread::sleep(Duration::from_secs(3));
    agent::relaunch(&mut lab, &lb, extra, &[]).expect("the lb agent starts again");
    agent::relaunch(&mut lab, &b1, &backend_flags, &[]).expect("b1's agent starts again");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let load = load.join().expect("the load thread");
    assert_eq!(load.failures, 0, "{load:?}");
    println!("client: {load:?}");

    let total: u64 = logs
        .iter()
        .map(|l| nginx::read_log(l).map(|s| s.connections).unwrap_or(0))
        .sum();
    assert_eq!(total, load.connections, "nginx logged every connection");
    for snap in both_views_match_nginx(&lab, &logs) {
        assert_eq!(snap["agentEpoch"], epoch_before, "the lb's epoch survives");
    }
}

/// A lab of `backends` nginx backends behind the lb's nftables DNAT, each
/// with its agent (the lb's left to the test); their access logs.
fn dnat_lab(name: &str, backends: usize, extra: &[&str]) -> (Lab, Vec<std::path::PathBuf>) {
    let mut lab = Lab::new(name, backends).expect("the lab builds");
    let mut logs = Vec::new();
    let flags = [&FLAGS[..], extra].concat();
    for b in lab.backends.clone() {
        logs.push(nginx::start(&mut lab, &b).expect("nginx starts"));
        agent::start(&mut lab, &b, &flags).expect("a backend agent starts");
    }
    nft::start(&lab).expect("the DNAT rules load");
    (lab, logs)
}

/// Every backend's server view (SERVES) and the lb's view of it
/// (SENDS_TO) equal what its nginx logged (`logs`, one per backend);
/// returns the lb's snapshots that showed it.
fn both_views_match_nginx(lab: &Lab, logs: &[std::path::PathBuf]) -> Vec<Value> {
    let mut snaps = Vec::new();
    for (b, log) in lab.backends.iter().zip(logs) {
        let served = nginx::read_log(log).expect("an access log");
        let addr = b.addr4.to_string();
        let (_, server) = settled(&b.ns, &addr, BACKEND_PORT, SERVES, served.connections);
        let (snap, lb_view) = settled(
            &lab.lb.ns,
            &addr,
            BACKEND_PORT,
            SENDS_TO,
            served.connections,
        );
        println!(
            "{}: nginx {served:?}\n  server {server:?}\n  lb {lb_view:?}",
            b.role
        );
        assert_served(&format!("{} SERVES", b.role), server, &served, View::Server);
        assert_served(
            &format!("lb SENDS_TO {}", b.role),
            lb_view,
            &served,
            View::Lb,
        );
        snaps.push(snap);
    }
    snaps
}

/// The lb's agent gone for longer than its journal and spill hold (a test
/// switch makes both small: 2,048 events a CPU, 64 in the spill, where
/// 1,500 connections a CPU write 4,500): TC egress drains the
/// journal itself, so not one connection or byte goes uncounted, in either
/// view, and none is lost; the agent started again under load takes over
/// from it. (Half a part must hold what the drain leaves to settle, 10 ms
/// of events: this lab makes about 37,000 a second.)
#[test]
fn an_lb_agent_gone_longer_than_its_journal_holds_loses_nothing() {
    evenflow_tests::require_root();
    const SMALL: [&str; 2] = [
        "EVENFLOW_TEST_JOURNAL_SLOTS=2048",
        "EVENFLOW_TEST_SPILL_ENTRIES=64",
    ];
    let (mut lab, logs) = dnat_lab("gone", 2, &[]);
    let lb = lab.lb.clone();
    agent::start_with_env(&mut lab, &lb, &[], &SMALL).expect("the lb agent starts");
    let vip = lab::vip(false);
    let mut load = client::http_load(&lab.client.ns, vip, 40, 4).expect("the load runs");

    agent::kill(&mut lab, &lb);
    // Past the lock the agent's last read may have held (5 s).
    std::thread::sleep(Duration::from_secs(6));
    // Three events a connection, twice what the parts hold on any number
    // of CPUs.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get() as u64);
    let gone =
        client::http_load(&lab.client.ns, vip, 1_500 * cpus.max(2), 4).expect("the load runs");
    load.add(&gone);
    // Back under load: its first drain waits out TC egress's.
    let (stop, during) = background_load(&lab);
    std::thread::sleep(Duration::from_secs(1));
    agent::relaunch(&mut lab, &lb, &[], &SMALL).expect("the lb agent starts again");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    load.add(&during.join().expect("the load thread"));
    assert_eq!(load.failures, 0, "{load:?}");

    both_views_match_nginx(&lab, &logs);
    let snap = grpcurl::snapshot(&lb.ns).expect("the lb's snapshot");
    let (lost, inline) = (
        truth::datapath_stat(&snap, "journalLost"),
        truth::datapath_stat(&snap, "journalDrainedInline"),
    );
    assert_eq!(lost, 0, "journal events lost while the agent was gone");
    assert!(
        inline >= gone.connections,
        "TC egress applied {inline} events itself for {} connections made while the agent was gone",
        gone.connections
    );
}

/// Mounts `file` over `/proc/stat` in the mount namespace of process
/// `pid` alone: the agent's CPU sample, the last step of each reading,
/// then fails as a malformed or unreadable file would.
fn cover_proc_stat(pid: u32, file: &std::path::Path) {
    let (pid, file) = (pid.to_string(), file.display().to_string());
    netns::sh(
        "nsenter",
        &["-t", &pid, "-m", "mount", "--bind", &file, "/proc/stat"],
    )
    .expect("a file mounted over the agent's /proc/stat");
}

fn uncover_proc_stat(pid: u32) {
    let pid = pid.to_string();
    netns::sh("nsenter", &["-t", &pid, "-m", "umount", "/proc/stat"])
        .expect("the agent's /proc/stat uncovered");
}

/// The sequence number of the agent's latest snapshot on `node`.
fn sequence(node: &lab::Node) -> u64 {
    grpcurl::number(&grpcurl::snapshot(&node.ns).expect("a snapshot")["sequence"])
}

/// Readings that fail skip their snapshots and nothing else: the agent
/// stays, the next snapshot after they pass carries every connection made
/// meanwhile, and only ten failed in a row end it, naming the fault.
#[test]
fn failed_readings_skip_snapshots_and_lose_nothing() {
    evenflow_tests::require_root();
    let mut lab = Lab::new("fail", 1).expect("the lab builds");
    let b = lab.backends[0].clone();
    let log = nginx::start(&mut lab, &b).expect("nginx starts");
    agent::start_in_own_mounts(&mut lab, &b, &FLAGS).expect("the agent starts");
    let pid = lab.pid("agent-").expect("the agent's pid");
    let broken = lab.dir.join("stat");
    std::fs::write(&broken, "not a stat file\n").expect("the broken file");
    let target = std::net::SocketAddr::new(b.addr4, BACKEND_PORT);
    let addr = b.addr4.to_string();

    // A few intervals (500 ms each) of failed readings, under load: fewer
    // than ten.
    cover_proc_stat(pid, &broken);
    std::thread::sleep(Duration::from_millis(600));
    let frozen = sequence(&b);
    let l = client::http_load(&lab.client.ns, target, 30, 2).expect("the load runs");
    assert_eq!(l.connections, 30);
    std::thread::sleep(Duration::from_millis(600));
    lab.check_alive()
        .expect("the agent outlives readings that fail");
    assert_eq!(sequence(&b), frozen, "no snapshot while readings fail");
    uncover_proc_stat(pid);
    let served = nginx::read_log(&log).expect("the access log");
    let (snap, t) = settled(&b.ns, &addr, BACKEND_PORT, SERVES, 30);
    assert_served("SERVES after failed readings", t, &served, View::Server);
    let failed = grpcurl::number(&snap["readingsFailed"]);
    assert!(
        (2..10).contains(&failed),
        "the snapshot counts the readings that failed: {failed}"
    );
    let out = lab.log(&format!("agent-{}", b.role));
    assert!(
        out.contains("reading the counters failed") && out.contains("reading the counters again"),
        "the agent says what failed and when it passes again:\n{out}"
    );

    // Failures that stay end the agent, naming what failed.
    cover_proc_stat(pid, &broken);
    let ended = evenflow_tests::wait_for(Duration::from_secs(15), || lab.check_alive().err());
    let ended = format!(
        "{:#}",
        ended.expect("the agent ends once readings keep failing")
    );
    assert!(
        ended.contains("10 readings of the counters failed in a row")
            && ended.contains("/proc/stat"),
        "{ended}"
    );
}

/// Program ids behind a node's pinned links (bpftool reads the pins).
fn pinned_program_ids(pin_dir: &std::path::Path) -> Vec<u64> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(pin_dir.join("links")).expect("the links directory") {
        let path = e.expect("an entry").path().display().to_string();
        let out = netns::sh("bpftool", &["-j", "link", "show", "pinned", &path])
            .expect("bpftool reads a pinned link");
        let v: Value = serde_json::from_str(&out).expect("bpftool's JSON");
        ids.push(v["prog_id"].as_u64().expect("a prog_id"));
    }
    ids
}

/// A stopped agent's programs go on counting; `uninstall` detaches them
/// and leaves no pin behind.
#[test]
fn stopped_agent_keeps_counting_until_uninstalled() {
    evenflow_tests::require_root();
    let mut lab = Lab::new("unin", 1).expect("the lab builds");
    let b = lab.backends[0].clone();
    let log = nginx::start(&mut lab, &b).expect("nginx starts");
    agent::start(&mut lab, &b, &FLAGS).expect("the agent starts");
    let target = std::net::SocketAddr::new(b.addr4, BACKEND_PORT);
    let addr = b.addr4.to_string();
    lab.stop("agent-");
    // Counted while no agent runs.
    let l = client::http_load(&lab.client.ns, target, 30, 2).expect("the load runs");
    assert_eq!(l.connections, 30);
    agent::relaunch(&mut lab, &b, &FLAGS, &[]).expect("the agent starts again");
    let served = nginx::read_log(&log).expect("the access log");
    let (_, t) = settled(&b.ns, &addr, BACKEND_PORT, SERVES, 30);
    assert_served(
        "SERVES while the agent was stopped",
        t,
        &served,
        View::Server,
    );

    lab.stop("agent-");
    let pins = b.pin_dir();
    let ids = pinned_program_ids(&pins);
    // The backend does not forward: sock_ops and TC egress, no ingress.
    let names: Vec<String> = std::fs::read_dir(pins.join("links"))
        .expect("the links directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(
        ids.len() >= 2
            && names.iter().any(|n| n.starts_with("evenflow_tc_egress@"))
            && !names.iter().any(|n| n.starts_with("evenflow_tc_ingress@")),
        "sock_ops and TC egress links are pinned, no ingress: {names:?} {ids:?}"
    );
    let bin = agent::agent_bin().expect("the agent binary");
    let out = netns::sh(
        &bin.display().to_string(),
        &["uninstall", "--node-name", &b.ns],
    )
    .expect("uninstall runs");
    println!("{out}");
    assert!(!pins.exists(), "{} is gone", pins.display());
    for id in ids {
        // Programs are freed after an RCU grace period, not at once.
        let gone = evenflow_tests::wait_for(Duration::from_secs(5), || {
            netns::sh("bpftool", &["prog", "show", "id", &id.to_string()])
                .is_err()
                .then_some(())
        });
        assert!(
            gone.is_some(),
            "program {id} is detached and freed after uninstall"
        );
    }
}

/// A second agent for a node whose agent runs (a DaemonSet pod surging in
/// before the old one has gone) waits for the first to stop, instead of
/// swapping maps and programs under it, then takes over: every connection
/// of both stretches is counted once, on the same epoch.
#[test]
fn a_second_agent_for_a_node_waits_for_the_first() {
    evenflow_tests::require_root();
    let mut lab = Lab::new("second", 1).expect("the lab builds");
    let b = lab.backends[0].clone();
    let log = nginx::start(&mut lab, &b).expect("nginx starts");
    agent::start(&mut lab, &b, &FLAGS).expect("the agent starts");
    let epoch = |lab: &Lab| -> Value {
        let snap =
            grpcurl::snapshot(&b.ns).unwrap_or_else(|e| panic!("{e:#}\n{}", lab.log("agent2-b1")));
        snap["agentEpoch"].clone()
    };
    let first_epoch = epoch(&lab);
    agent::launch_second(&mut lab, &b, &FLAGS).expect("a second agent starts");
    let waits = evenflow_tests::wait_for(Duration::from_secs(10), || {
        lab.log("agent2-b1")
            .contains("another evenflow-agent runs for this node")
            .then_some(())
    });
    assert!(
        waits.is_some(),
        "the second agent waits:\n{}",
        lab.log("agent2-b1")
    );
    let target = std::net::SocketAddr::new(b.addr4, BACKEND_PORT);
    let client = lab.client.ns.clone();
    let load = |n| {
        let l = client::http_load(&client, target, n, 2).expect("the load runs");
        assert_eq!(l.connections, n);
    };
    load(20);
    lab.check_alive().expect("both agents run");
    agent::kill(&mut lab, &b);
    load(20);
    let took_over = evenflow_tests::wait_for(Duration::from_secs(20), || {
        grpcurl::snapshot(&b.ns)
            .ok()
            .filter(|_| lab.log("agent2-b1").contains("taking over"))
    });
    assert!(
        took_over.is_some(),
        "the second agent takes over:\n{}",
        lab.log("agent2-b1")
    );
    assert_eq!(
        epoch(&lab),
        first_epoch,
        "the same counters, the same epoch"
    );
    let served = nginx::read_log(&log).expect("the access log");
    let (_, t) = settled(&b.ns, &b.addr4.to_string(), BACKEND_PORT, SERVES, 40);
    assert_served("SERVES across the hand-over", t, &served, View::Server);
}

/// An agent that needs another map layout (an upgrade) starts anyway on a
/// new epoch, swaps its programs into the pinned links and counts on.
#[test]
fn upgrade_to_another_layout_starts_a_new_epoch() {
    evenflow_tests::require_root();
    let mut lab = Lab::new("upg", 1).expect("the lab builds");
    let b = lab.backends[0].clone();
    let log = nginx::start(&mut lab, &b).expect("nginx starts");
    agent::start(&mut lab, &b, &FLAGS).expect("the agent starts");
    let target = std::net::SocketAddr::new(b.addr4, BACKEND_PORT);
    let addr = b.addr4.to_string();
    client::http_load(&lab.client.ns, target, 20, 2).expect("the first load runs");
    let (before, _) = settled(&b.ns, &addr, BACKEND_PORT, SERVES, 20);

    agent::relaunch(&mut lab, &b, &FLAGS, &["EVENFLOW_TEST_LAYOUT_BUMP=1"])
        .expect("the upgraded agent starts, never crash-loops");
    client::http_load(&lab.client.ns, target, 25, 2).expect("the second load runs");
    let (after, t) = settled(&b.ns, &addr, BACKEND_PORT, SERVES, 25);
    assert_ne!(
        before["agentEpoch"], after["agentEpoch"],
        "a new layout starts a new epoch"
    );
    let dirs: Vec<_> = pinned_files(&b)
        .into_iter()
        .filter(|(_, id)| id.is_none())
        .map(|(name, _)| name)
        .collect();
    assert_eq!(dirs, ["links"], "the old maps are gone, nothing left aside");
    let all = nginx::read_log(&log).expect("the access log");
    assert_eq!(all.connections, 45);
    assert_eq!(
        (t.opened, t.closed),
        (25, 25),
        "the new epoch counts from the swap: {t:?}"
    );
    // Restarting the upgraded agent again keeps its (new) epoch.
    agent::relaunch(&mut lab, &b, &FLAGS, &["EVENFLOW_TEST_LAYOUT_BUMP=1"])
        .expect("the upgraded agent restarts");
    let again = grpcurl::snapshot(&b.ns).expect("snapshot");
    assert_eq!(again["agentEpoch"], after["agentEpoch"]);
}

/// The program each of `node`'s pinned links runs, by pin name (bpftool).
fn linked_programs(node: &lab::Node) -> Vec<(String, u64)> {
    let dir = node.pin_dir().join("links");
    let mut out: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .expect("the links directory")
        .map(|e| e.expect("an entry").path())
        .map(|pin| {
            let shown = std::process::Command::new("bpftool")
                .args(["-j", "link", "show", "pinned"])
                .arg(&pin)
                .output()
                .expect("bpftool runs");
            let link: Value = serde_json::from_slice(&shown.stdout).expect("bpftool's JSON");
            let name = pin
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            (name, link["prog_id"].as_u64().expect("a program id"))
        })
        .collect();
    out.sort();
    out
}

/// An upgrade to a build one of whose programs the kernel refuses exits
/// with the reason and swaps nothing: every pinned link still runs the
/// program the previous agent attached, and counting goes on, exact.
#[test]
fn a_build_the_kernel_refuses_swaps_nothing() {
    refused_build("refuse", &[]);
}

/// The same for a refused build of another map layout: it moves the old
/// maps aside to load its own, and puts them back as it exits. The
/// previous build, started again, finds them with every connection its
/// programs counted meanwhile: the same epoch, nothing lost.
#[test]
fn a_refused_build_of_another_layout_leaves_the_maps_pinned() {
    refused_build("refuselay", &["EVENFLOW_TEST_LAYOUT_BUMP=1"]);
}

fn refused_build(name: &str, env: &[&str]) {
    evenflow_tests::require_root();
    let mut lab = Lab::new(name, 1).expect("the lab builds");
    let b = lab.backends[0].clone();
    let log = nginx::start(&mut lab, &b).expect("nginx starts");
    agent::start(&mut lab, &b, &FLAGS).expect("the agent starts");
    let target = std::net::SocketAddr::new(b.addr4, BACKEND_PORT);
    client::http_load(&lab.client.ns, target, 10, 2).expect("the first load runs");
    let before = linked_programs(&b);
    assert!(
        before.iter().any(|(pin, _)| pin.starts_with("sockops")),
        "{before:?}"
    );
    let pins = pinned_files(&b);
    let mut refused = vec!["EVENFLOW_TEST_REFUSE_LOAD=evenflow_slot_sampler"];
    refused.extend_from_slice(env);
    let said =
        agent::launch_failing(&mut lab, &b, &FLAGS, &refused).expect("the refused build exits");
    assert!(said.contains("refused"), "{said}");
    assert_eq!(
        linked_programs(&b),
        before,
        "every pinned link runs the programs it ran"
    );
    assert_eq!(pinned_files(&b), pins, "the same maps are pinned");
    client::http_load(&lab.client.ns, target, 15, 2).expect("the second load runs");
    agent::relaunch(&mut lab, &b, &FLAGS, &[]).expect("the previous build starts again");
    let served = nginx::read_log(&log).expect("the access log");
    assert_eq!(served.connections, 25);
    let (_, t) = settled(&b.ns, &b.addr4.to_string(), BACKEND_PORT, SERVES, 25);
    assert_served(
        "SERVES across the refused upgrade",
        t,
        &served,
        View::Server,
    );
}

/// The node's pin directory's files (its maps) and directories, each
/// pinned map with its id.
fn pinned_files(node: &lab::Node) -> Vec<(String, Option<u64>)> {
    let mut out: Vec<_> = std::fs::read_dir(node.pin_dir())
        .expect("the pin directory lists")
        .map(|e| {
            let path = e.expect("an entry").path();
            let name = path
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                return (name, None);
            }
            let shown = std::process::Command::new("bpftool")
                .args(["-j", "map", "show", "pinned"])
                .arg(&path)
                .output()
                .expect("bpftool runs");
            let map: Value = serde_json::from_slice(&shown.stdout).expect("bpftool's JSON");
            (name, map["id"].as_u64())
        })
        .collect();
    out.sort();
    out
}

/// Closes `conns` (keep-alive connections to nginx logging to `log`) and
/// checks what `ns`'s agent counted for `addr` in `dir`: each connection
/// closed, and exactly the bytes they carried since `from` (requests,
/// responses), `since` naming that moment.
fn assert_counted_since(
    ns: &str,
    log: &std::path::Path,
    addr: &str,
    dir: &str,
    conns: client::KeepAlives,
    from: (u64, u64),
    since: &str,
) {
    let (n, end) = (conns.0.len() as u64, conns.carried());
    drop(conns);
    let (_, t) = settled(ns, addr, BACKEND_PORT, dir, n);
    let served = nginx::read_log(log).expect("the access log");
    println!("at {since} {from:?}, in all {end:?}; nginx {served:?}; counted {t:?}");
    assert_eq!(served.request_bytes, end.0);
    let counted = if dir == SERVES {
        (t.bytes_rx, t.bytes_tx)
    } else {
        (t.bytes_tx, t.bytes_rx)
    };
    assert_eq!(
        counted,
        (end.0 - from.0, end.1 - from.1),
        "exactly what the connections carried from {since} on"
    );
}

/// Keep-alive connections open across an upgrade to another map layout:
/// the new epoch starts on fresh maps, and the upgraded agent adopts the
/// connections at its start, so they are open in its every report and
/// their close counts exactly what they carried from the upgrade on.
#[test]
fn an_upgrade_keeps_counting_the_connections_open_across_it() {
    upgrade_with_open_connections("upgka", &[], &[], &["EVENFLOW_TEST_LAYOUT_BUMP=1"], false);
}

/// The same across a switch to sockets sampled by a walk (`--socket-sampling
/// walk`, a layout of its own): the walk before the new programs attach
/// adopts the two connections the slot programs counted, so their close
/// counts what they carried from the switch on, not twice what the slot
/// sampler had added.
#[test]
fn a_switch_to_walked_sampling_keeps_counting_the_connections_open_across_it() {
    const WALK: [&str; 2] = ["--socket-sampling", "walk"];
    upgrade_with_open_connections("upgwk", &[], &WALK, &[], false);
}

/// Two sampled keep-alive connections open across `uninstall` and a new
/// install, both with sockets sampled by a walk: the sockets keep the
/// callbacks and the walk's mark of programs whose counters are gone, so
/// the new install adopts them before it attaches, and their close counts
/// what they carried from the new install on, not all they carried.
#[test]
fn a_reinstall_keeps_counting_the_connections_open_across_it_walked() {
    const WALK: [&str; 2] = ["--socket-sampling", "walk"];
    upgrade_with_open_connections("reinstwk", &WALK, &WALK, &[], true);
}

/// Two keep-alive connections open across a restart of the agent (first
/// started with `before` flags) with `after` flags and `env` that make it
/// start a new epoch, or across `uninstall` and a new install when
/// `uninstall`: adopted, open in every report after, their close exact
/// from the restart on.
fn upgrade_with_open_connections(
    name: &str,
    before: &[&str],
    after: &[&str],
    env: &[&str],
    uninstall: bool,
) {
    evenflow_tests::require_root();
    let mut lab = Lab::new(name, 1).expect("the lab builds");
    let b = lab.backends[0].clone();
    let log = nginx::start_keepalive(&mut lab, &b).expect("nginx starts");
    let flags = [&FLAGS[..], before].concat();
    agent::start(&mut lab, &b, &flags).expect("the agent starts");
    let target = std::net::SocketAddr::new(b.addr4, BACKEND_PORT);
    let addr = b.addr4.to_string();
    let mut conns = client::KeepAlives::open(&lab.client.ns, target, 2)
        .expect("the keep-alive connections open");
    let talked = "every keep-alive request is answered";
    conns.talk(3).expect(talked);
    let old = grpcurl::snapshot(&b.ns).expect("snapshot");
    // The last responses' delayed ACKs reach the server first.
    std::thread::sleep(Duration::from_millis(500));
    let at_upgrade = conns.carried();

    if uninstall {
        agent::kill(&mut lab, &b);
        let bin = agent::agent_bin().expect("the agent binary");
        netns::sh(
            &bin.display().to_string(),
            &["uninstall", "--node-name", &b.ns],
        )
        .expect("uninstall runs");
    }
    let flags = [&FLAGS[..], after].concat();
    agent::relaunch(&mut lab, &b, &flags, env).expect("the upgraded agent starts");
    let agent_log = lab.log("agent-b1");
    assert!(
        agent_log.contains("adopted=2"),
        "the upgraded agent adopted the two connections:\n{agent_log}"
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        conns.talk(2).expect(talked);
        std::thread::sleep(Duration::from_millis(1200));
        let s = grpcurl::snapshot(&b.ns).expect("snapshot");
        assert_ne!(s["agentEpoch"], old["agentEpoch"], "a new epoch");
        seen.push(grpcurl::totals(&s, &addr, BACKEND_PORT, SERVES));
    }
    println!("after the upgrade: {seen:?}");
    assert!(
        seen.iter().all(|t| t.opened == 2 && t.closed == 0),
        "both connections open in every report of the new epoch"
    );
    assert!(seen.windows(2).all(|w| w[1].bytes_rx > w[0].bytes_rx));
    assert_counted_since(&b.ns, &log, &addr, SERVES, conns, at_upgrade, "the upgrade");
}

/// The line of an agent's log that tells how many forwarded connections
/// it adopted at its start.
fn forwarded_adoption(log: &str) -> &str {
    log.lines()
        .rfind(|l| l.contains("forwarded connections established before evenflow"))
        .unwrap_or_else(|| panic!("the agent says what it adopted:\n{log}"))
}

/// Keep-alive connections through the load balancer, opened before its
/// agent first starts: conntrack followed them, evenflow never saw their
/// SYN. The agent adopts them from conntrack at its start, so the
/// balancer's view has them open in every report, their bytes growing,
/// and counts exactly what they carried from its start. A restart on its
/// pins adopts nothing twice.
#[test]
fn forwarded_connections_older_than_the_agent_are_adopted() {
    evenflow_tests::require_root();
    let mut lab = Lab::new("fadopt", 1).expect("the lab builds");
    let lb = lab.lb.clone();
    let b = lab.backends[0].clone();
    let log = nginx::start_keepalive(&mut lab, &b).expect("nginx starts");
    nft::start(&lab).expect("the DNAT rules load");
    let addr = b.addr4.to_string();
    let mut conns = client::KeepAlives::open(&lab.client.ns, lab::vip(false), 2)
        .expect("the keep-alive connections open");
    let talked = "every keep-alive request is answered";
    conns.talk(3).expect(talked);
    // The last responses' delayed ACKs pass the balancer first.
    std::thread::sleep(Duration::from_millis(500));
    let at_start = conns.carried();

    agent::start(&mut lab, &lb, &[]).expect("the lb agent starts");
    let agent_log = lab.log("agent-lb");
    let adoption = forwarded_adoption(&agent_log);
    assert!(
        adoption.contains("adopted=2"),
        "the agent adopted the two connections: {adoption}"
    );
    let mut seen = Vec::new();
    for i in 0..3 {
        if i == 1 {
            // A restart on the same pins: the connections are followed
            // already, and none is adopted twice.
            agent::relaunch(&mut lab, &lb, &[], &[]).expect("the lb agent restarts");
            let again = lab.log("agent-lb");
            let adoption = forwarded_adoption(&again);
            assert!(
                adoption.contains("adopted=0 followed=2"),
                "the restarted agent found both followed: {adoption}"
            );
        }
        conns.talk(2).expect(talked);
        std::thread::sleep(Duration::from_millis(1200));
        let s = grpcurl::snapshot(&lb.ns).expect("snapshot");
        seen.push(grpcurl::totals(&s, &addr, BACKEND_PORT, SENDS_TO));
    }
    println!("after the start: {seen:?}");
    assert!(
        seen.iter().all(|t| t.opened == 2 && t.closed == 0),
        "both connections open once in every report, a restart included"
    );
    assert!(
        seen.windows(2)
            .all(|w| w[1].bytes_tx > w[0].bytes_tx && w[1].bytes_rx > w[0].bytes_rx)
    );
    assert_counted_since(
        &lb.ns,
        &log,
        &addr,
        SENDS_TO,
        conns,
        at_start,
        "the agent's start",
    );
}

/// The same at scale: 6,000 keep-alive connections through the balancer
/// to two backends, more than the agent hands the adoption program at a
/// time (`CT_ADOPT_BATCH`, 4,096). Every one is adopted, and each backend's
/// LB view counts its connections and exactly what they carried from the
/// agent's start on.
#[test]
fn forwarded_adoption_at_scale_counts_every_connection() {
    evenflow_tests::require_root();
    const N: usize = 6_000;
    let mut lab = Lab::new("fadoptn", 2).expect("the lab builds");
    let mut logs = Vec::new();
    for b in lab.backends.clone() {
        logs.push(nginx::start_keepalive(&mut lab, &b).expect("nginx starts"));
    }
    nft::start(&lab).expect("the DNAT rules load");
    let mut conns = client::KeepAlives::open(&lab.client.ns, lab::vip(false), N)
        .expect("the keep-alive connections open");
    let talked = "every keep-alive request is answered";
    conns.talk(1).expect(talked);
    std::thread::sleep(Duration::from_millis(500));
    let at_start = conns.carried();
    let lb = lab.lb.clone();
    agent::start(&mut lab, &lb, &[]).expect("the lb agent starts");
    let agent_log = lab.log("agent-lb");
    // Both adoptions' lines: the forwarded one's time less the sockets' is
    // what finding the records and adopting them took.
    for line in agent_log
        .lines()
        .filter(|l| l.contains("before evenflow attached"))
    {
        println!("{line}");
    }
    let adoption = forwarded_adoption(&agent_log);
    assert!(adoption.contains("adopted=6000"), "{adoption}");
    conns.talk(2).expect(talked);
    let end = conns.carried();
    drop(conns);
    let backends: Vec<String> = lab.backends.iter().map(|b| b.addr4.to_string()).collect();
    let counted = truth::sent_to_each(&lb.ns, &backends, (N / 2) as u64);
    let served: u64 = logs
        .iter()
        .map(|l| nginx::read_log(l).expect("the access log").request_bytes)
        .sum();
    assert_eq!(served, end.0, "the clients' count is nginx's");
    assert_eq!(
        counted,
        (end.0 - at_start.0, end.1 - at_start.1),
        "exactly what the connections carried from the agent's start on"
    );
}

/// Keep-alive connections through the load balancer (over IPv6), open
/// across an upgrade of its agent to another map layout: the new epoch starts on
/// fresh maps, and the upgraded agent adopts them from conntrack, so the
/// balancer's view counts exactly what they carried from the upgrade on.
#[test]
fn an_upgrade_keeps_counting_the_forwarded_connections_open_across_it() {
    evenflow_tests::require_root();
    let mut lab = Lab::new("fupg", 1).expect("the lab builds");
    let lb = lab.lb.clone();
    let b = lab.backends[0].clone();
    let log = nginx::start_keepalive(&mut lab, &b).expect("nginx starts");
    nft::start(&lab).expect("the DNAT rules load");
    agent::start(&mut lab, &lb, &[]).expect("the lb agent starts");
    assert!(
        forwarded_adoption(&lab.log("agent-lb")).contains("adopted=0"),
        "nothing to adopt on a first start with no connections"
    );
    // Over IPv6: the first start's adoption is checked over IPv4 above.
    let addr = b.addr6.to_string();
    let mut conns = client::KeepAlives::open(&lab.client.ns, lab::vip(true), 2)
        .expect("the keep-alive connections open");
    let talked = "every keep-alive request is answered";
    conns.talk(3).expect(talked);
    let old = grpcurl::snapshot(&lb.ns).expect("snapshot");
    std::thread::sleep(Duration::from_millis(500));
    let at_upgrade = conns.carried();

    agent::relaunch(&mut lab, &lb, &[], &["EVENFLOW_TEST_LAYOUT_BUMP=1"])
        .expect("the upgraded agent starts");
    let adoption = forwarded_adoption(&lab.log("agent-lb")).to_owned();
    assert!(
        adoption.contains("adopted=2"),
        "the upgraded agent adopted the two connections: {adoption}"
    );
    conns.talk(2).expect(talked);
    let s = grpcurl::snapshot(&lb.ns).expect("snapshot");
    assert_ne!(s["agentEpoch"], old["agentEpoch"], "a new epoch");
    assert_counted_since(
        &lb.ns,
        &log,
        &addr,
        SENDS_TO,
        conns,
        at_upgrade,
        "the upgrade",
    );
}

/// The flow maps' sizes on `node`: `EF_FLOWS`, `EF_CT_FLOWS`,
/// `EF_CT_YOUNG`.
fn flow_map_sizes(node: &lab::Node) -> [u64; 3] {
    ["EF_FLOWS", "EF_CT_FLOWS", "EF_CT_YOUNG"].map(|map| {
        let info = node.pinned_map(map).expect("bpftool shows the map");
        info["max_entries"].as_u64().expect("max_entries")
    })
}

/// The kernel memory `node`'s endpoint map holds.
fn endpoint_map_bytes(node: &lab::Node) -> u64 {
    let info = node.pinned_map("EF_ENDPOINTS").expect("bpftool shows it");
    info["bytes_memlock"].as_u64().expect("bytes_memlock")
}

/// Buckets for 65,536 endpoints take 1 MiB; their counters, preallocated,
/// would take 48 bytes more each on every CPU.
const ENDPOINT_MAP_MAX_BYTES: u64 = 2 << 20;

/// An lb agent keeps forwarded connections in one of two flow maps, by
/// how it counts them (from conntrack, or packet by packet); the other
/// holds one entry, and the endpoint map only the endpoints seen. Switching
/// starts a new epoch, once, as an upgrade does, and the new way counts
/// exactly from the switch.
#[test]
fn switching_how_forwarded_connections_are_counted_starts_a_new_epoch() {
    evenflow_tests::require_root();
    let mut lab = Lab::new("fsw", 1).expect("the lab builds");
    let lb = lab.lb.clone();
    let b = lab.backends[0].clone();
    let log = nginx::start(&mut lab, &b).expect("nginx starts");
    nft::start(&lab).expect("the DNAT rules load");
    agent::start(&mut lab, &lb, &[]).expect("the lb agent starts");
    let addr = b.addr4.to_string();
    let vip = lab::vip(false);
    client::http_load(&lab.client.ns, vip, 20, 2).expect("the first load runs");
    let (before, _) = settled(&lb.ns, &addr, BACKEND_PORT, SENDS_TO, 20);
    assert_eq!(flow_map_sizes(&lb), [1, 129_024, 2_048]);
    let endpoints = endpoint_map_bytes(&lb);
    assert!(
        endpoints < ENDPOINT_MAP_MAX_BYTES,
        "EF_ENDPOINTS holds {endpoints} bytes for a few endpoints"
    );

    let per_packet = ["EVENFLOW_FORWARDED_PER_PACKET=true"];
    agent::relaunch(&mut lab, &lb, &[], &per_packet).expect("the agent starts per packet");
    client::http_load(&lab.client.ns, vip, 25, 2).expect("the second load runs");
    let (after, t) = settled(&lb.ns, &addr, BACKEND_PORT, SENDS_TO, 25);
    assert_eq!(flow_map_sizes(&lb), [262_144, 1, 1]);
    assert_ne!(
        before["agentEpoch"], after["agentEpoch"],
        "switching flow maps starts a new epoch"
    );
    assert_eq!(
        nginx::read_log(&log).expect("the access log").connections,
        45
    );
    assert_eq!(
        (t.opened, t.closed),
        (25, 25),
        "the new epoch counts from the switch: {t:?}"
    );
    agent::relaunch(&mut lab, &lb, &[], &per_packet).expect("the agent restarts");
    let again = grpcurl::snapshot(&lb.ns).expect("snapshot");
    assert_eq!(again["agentEpoch"], after["agentEpoch"]);
}

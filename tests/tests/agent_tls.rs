//! The real agent reporting to the real collector over mutual TLS, with
//! certificates the test makes (rcgen): the agent whose certificate the
//! collector's client CA signed shows up in ListAgents; one with a rogue
//! certificate never does, and the collector logs why, until its files are
//! renewed with a good one, which its next reconnect presents.

use std::{process::Command, time::Duration};

use evenflow_proto::v1;
use evenflow_tests::certs::Ca;

const NS: &str = "eftls";

fn collector_bin() -> std::path::PathBuf {
    evenflow_tests::agent::binary("evenflow-collector", "EVENFLOW_COLLECTOR_BIN")
        .expect("the collector binary (cargo xtask test builds it)")
}

fn agent_bin() -> std::path::PathBuf {
    evenflow_tests::agent::agent_bin().expect("the agent binary (cargo xtask test builds it)")
}

struct Guard(Vec<std::process::Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", NS]).status();
        let _ = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| {
                m.lines().find_map(|l| {
                    let (pre, post) = l.split_once(" - ")?;
                    (post.split_whitespace().next()? == "cgroup2").then(|| {
                        pre.split_whitespace()
                            .nth(4)
                            .map(|r| std::fs::remove_dir(format!("{r}/eftls")))
                    })?
                })
            });
        for n in ["eftls-good", "eftls-rogue"] {
            let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/evenflow/{n}"));
        }
    }
}

/// The collector's agents, read on the plaintext query listener from a
/// thread inside the test namespace.
fn list_agents() -> Option<Vec<String>> {
    let fd = std::fs::File::open(format!("/run/netns/{NS}")).ok()?;
    std::thread::spawn(move || {
        // SAFETY: setns on a fresh thread moves only that thread.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::CLONE_NEWNET) } != 0 {
            return None;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let mut q =
                v1::distribution_client::DistributionClient::connect("http://127.0.0.1:50053")
                    .await
                    .ok()?;
            let a = q
                .list_agents(v1::ListAgentsRequest {})
                .await
                .ok()?
                .into_inner()
                .agents;
            Some(a.into_iter().map(|a| a.node_name).collect())
        })
    })
    .join()
    .ok()?
}

#[test]
fn an_agent_reports_over_mutual_tls_and_a_rogue_one_is_refused() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test loads eBPF: run it as root (cargo xtask test)"
    );
    let dir = std::env::temp_dir().join(format!("evenflow-agent-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (server_ca, client_ca, rogue_ca) = (
        Ca::new("collector CA"),
        Ca::new("agents CA"),
        Ca::new("rogue CA"),
    );
    let server = server_ca.issue(&["localhost", "127.0.0.1"]);
    let good = client_ca.issue(&["eftls-good"]);
    let rogue = rogue_ca.issue(&["eftls-rogue"]);
    let w = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };
    let _ = Command::new("ip").args(["netns", "del", NS]).status();
    assert!(
        Command::new("ip")
            .args(["netns", "add", NS])
            .status()
            .expect("ip")
            .success()
    );
    assert!(
        Command::new("ip")
            .args(["-n", NS, "link", "set", "lo", "up"])
            .status()
            .expect("ip")
            .success()
    );
    let mut guard = Guard(Vec::new());
    let log = dir.join("collector.log");
    guard.0.push(
        Command::new("ip")
            .args(["netns", "exec", NS])
            .arg(collector_bin())
            .args([
                "--grpc-addr",
                "127.0.0.1:50052",
                "--metrics-addr",
                "127.0.0.1:9465",
                "--query-addr",
                "127.0.0.1:50053",
            ])
            .args([
                "--tls-cert",
                &w("server.pem", &server.0),
                "--tls-key",
                &w("server.key", &server.1),
            ])
            .args(["--tls-client-ca", &w("clients-ca.pem", &client_ca.pem())])
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("collector"),
    );
    let ca_path = w("server-ca.pem", &server_ca.pem());
    // An empty cgroup of its own: the agents need one, and must count
    // nothing else on the machine.
    let root = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(str::to_owned))?
        })
        .expect("a cgroup v2 hierarchy is mounted (cargo xtask setup)");
    let cgroup = format!("{root}/eftls");
    std::fs::create_dir_all(&cgroup).expect("cgroup");
    for (node, (cert, key), port) in [
        ("eftls-good", &good, "50061"),
        ("eftls-rogue", &rogue, "50062"),
    ] {
        guard.0.push(
            Command::new(agent_bin())
                .args([
                    "--netns",
                    &format!("/run/netns/{NS}"),
                    "--node-name",
                    node,
                    "--cgroup",
                    &cgroup,
                ])
                .args([
                    "--grpc-addr",
                    &format!("127.0.0.1:{port}"),
                    "--metrics-addr",
                    "127.0.0.1:0",
                ])
                .args([
                    "--collector",
                    "https://localhost:50052",
                    "--tls-ca",
                    &ca_path,
                ])
                .args([
                    "--tls-cert",
                    &w(&format!("{node}.pem"), cert),
                    "--tls-key",
                    &w(&format!("{node}.key"), key),
                ])
                .stderr(std::fs::File::create(dir.join(format!("{node}.log"))).expect("log"))
                .spawn()
                .expect("agent"),
        );
    }
    let mut agents = Vec::new();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(a) = list_agents() {
            agents = a;
            if agents.iter().any(|n| n == "eftls-good") {
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let logs = |n: &str| std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default();
    assert_eq!(
        agents,
        vec!["eftls-good".to_string()],
        "collector log:\n{text}\ngood agent:\n{}\nrogue agent:\n{}",
        logs("eftls-good"),
        logs("eftls-rogue")
    );
    assert!(
        text.lines()
            .any(|l| l.contains("refused a TLS connection")
                && l.to_lowercase().contains("certificate")),
        "the collector logs why the rogue agent was refused:\n{text}"
    );

    // Its certificate renewed on disk by the agents' CA, as cert-manager
    // renews a Secret volume's files (by a rename): its next reconnect
    // presents it, without a restart.
    let renewed = client_ca.issue(&["eftls-rogue"]);
    for (name, text) in [
        ("eftls-rogue.pem", &renewed.0),
        ("eftls-rogue.key", &renewed.1),
    ] {
        evenflow_tests::replace_file(&dir.join(name), text).expect("renewed");
    }
    let renewed_at = std::time::Instant::now();
    let mut joined = false;
    while !joined && renewed_at.elapsed() < Duration::from_secs(45) {
        std::thread::sleep(Duration::from_millis(500));
        joined = list_agents().is_some_and(|a| a.iter().any(|n| n == "eftls-rogue"));
    }
    assert!(
        joined,
        "the renewed agent never reported:\n{}",
        logs("eftls-rogue")
    );
    println!(
        "renewed certificate presented within {:.1} s",
        renewed_at.elapsed().as_secs_f64()
    );
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}

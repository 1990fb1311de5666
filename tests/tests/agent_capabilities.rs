//! Least privilege, tested: the agent as a non-root user holding only the
//! DaemonSet's capabilities (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON) loads,
//! attaches and counts; without CAP_BPF it refuses with a message naming it.
//!
//! What else it needs, found here: a pin directory it may write (the
//! DaemonSet mounts the host's bpffs; here the test chowns the node's
//! directory to the user), read access to the cgroup directory (the
//! default mode allows it), and, only for `--netns`, CAP_SYS_ADMIN (setns)
//! — which is why the test enters the namespace as root before dropping
//! privileges, as Kubernetes does for a pod's network namespace.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

const NOBODY: &str = "65534";

struct Cleanup {
    ns: Vec<&'static str>,
    cgroup: std::path::PathBuf,
    pins: std::path::PathBuf,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("runs");
    assert!(st.success(), "{args:?} failed");
}

fn cgroup2_root() -> std::path::PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(Into::into))?
        })
        .expect("a cgroup v2 hierarchy is mounted (cargo xtask setup)")
}

fn agent_as_nobody(caps: &str, extra: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.args([
        "--net=/run/netns/efcap-s",
        "setpriv",
        "--reuid",
        NOBODY,
        "--regid",
        NOBODY,
        "--clear-groups",
    ])
    .arg(format!("--inh-caps={caps}"))
    .arg(format!("--ambient-caps={caps}"))
    .arg("--")
    .arg(evenflow_tests::agent::agent_bin().expect("the agent binary (cargo xtask test builds it)"))
    .args(extra);
    c
}

#[test]
fn the_daemonset_capabilities_are_enough_and_cap_bpf_is_named_when_missing() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root to build its namespace and drop to nobody"
    );
    let cgroup = cgroup2_root().join("efcap-s");
    let pins = std::path::PathBuf::from("/sys/fs/bpf/evenflow/efcap-s");
    let mut clean = Cleanup {
        ns: vec!["efcap-c", "efcap-s"],
        cgroup: cgroup.clone(),
        pins: pins.clone(),
        children: Vec::new(),
    };
    for ns in ["efcap-c", "efcap-s"] {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
        sh(&["ip", "netns", "add", ns]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    let _ = Command::new("ip").args(["link", "del", "efcap0"]).status();
    sh(&[
        "ip", "link", "add", "efcap0", "type", "veth", "peer", "name", "efcap1",
    ]);
    sh(&["ip", "link", "set", "efcap0", "netns", "efcap-c"]);
    sh(&["ip", "link", "set", "efcap1", "netns", "efcap-s"]);
    sh(&[
        "ip",
        "-n",
        "efcap-c",
        "addr",
        "add",
        "10.77.0.1/24",
        "dev",
        "efcap0",
    ]);
    sh(&[
        "ip",
        "-n",
        "efcap-s",
        "addr",
        "add",
        "10.77.0.2/24",
        "dev",
        "efcap1",
    ]);
    sh(&["ip", "-n", "efcap-c", "link", "set", "efcap0", "up"]);
    sh(&["ip", "-n", "efcap-s", "link", "set", "efcap1", "up"]);
    std::fs::create_dir_all(&cgroup).expect("cgroup");
    let _ = std::fs::remove_dir_all(&pins);
    std::fs::create_dir_all(&pins).expect("pin dir (is bpffs mounted?)");
    sh(&[
        "chown",
        &format!("{NOBODY}:{NOBODY}"),
        &pins.display().to_string(),
    ]);
    // A server inside the node's cgroup.
    let server = Command::new("sh")
        .args([
            "-c",
            &format!(
                "echo $$ > {}/cgroup.procs && exec ip netns exec efcap-s python3 -m http.server 8080 --bind 10.77.0.2",
                cgroup.display()
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("http server");
    clean.children.push(server);

    // Without CAP_BPF: a clear refusal.
    let o = agent_as_nobody("+net_admin,+perfmon", &["--node-name", "efcap-s"])
        .output()
        .expect("agent runs");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("missing capabilities CAP_BPF") && err.contains("setcap"),
        "{err}"
    );

    // Sampling sockets by a walk over every namespace without
    // CAP_SYS_ADMIN: a clear refusal that names it and the way out.
    let o = agent_as_nobody(
        "+bpf,+net_admin,+perfmon",
        &[
            "--node-name",
            "efcap-s",
            "--cgroup",
            &cgroup.display().to_string(),
            "--socket-sampling",
            "walk",
        ],
    )
    .output()
    .expect("agent runs");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--socket-sampling walk")
            && err.contains("CAP_SYS_ADMIN")
            && err.contains("--socket-sampling slots"),
        "{err}"
    );

    // With exactly the DaemonSet's capabilities: loads, attaches, counts.
    let agent = agent_as_nobody(
        "+bpf,+net_admin,+perfmon",
        &[
            "--node-name",
            "efcap-s",
            "--cgroup",
            &cgroup.display().to_string(),
            "--service",
            "web=8080",
            "--grpc-addr",
            "127.0.0.1:50071",
            "--metrics-addr",
            "10.77.0.2:9481",
        ],
    )
    .stderr(Stdio::piped())
    .spawn()
    .expect("agent starts");
    clean.children.push(agent);
    let metrics = || -> Option<String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                "efcap-c",
                "curl",
                "-sf",
                "http://10.77.0.2:9481/metrics",
            ])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mut up = false;
    for _ in 0..50 {
        if metrics().is_some() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        up,
        "the agent did not come up with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON as nobody"
    );
    for _ in 0..10 {
        sh(&[
            "ip",
            "netns",
            "exec",
            "efcap-c",
            "curl",
            "-sf",
            "-o",
            "/dev/null",
            "http://10.77.0.2:8080/",
        ]);
    }
    let series = "evenflow_endpoint_connections_opened_total{node=\"efcap-s\",direction=\"serves\",address=\"10.77.0.2\",port=\"8080\",protocol=\"tcp\",service=\"web\"} 10";
    let mut last = String::new();
    for _ in 0..25 {
        last = metrics().unwrap_or_default();
        if last.contains(series) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        last.contains(series),
        "the unprivileged agent did not count 10 connections:\n{}",
        last.lines()
            .filter(|l| l.starts_with("evenflow_endpoint_conn"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // It really runs as nobody.
    let uid = Command::new("pgrep")
        .args(["-u", NOBODY, "-f", "evenflow-agent --node-name efcap-s"])
        .output()
        .expect("pgrep");
    assert!(!uid.stdout.is_empty(), "agent not running as uid {NOBODY}");
    // With these capabilities a kernel of 6.17 or later takes
    // `bpf_rdonly_cast` too: kernel memory is read by loads.
    let mut agent = clean.children.pop().expect("the agent is the last child");
    let _ = agent.kill();
    let out = agent.wait_with_output().expect("the agent's output");
    let log = String::from_utf8_lossy(&out.stderr);
    let want = if evenflow_tests::kernel_at_least(6, 17) {
        "kernel memory is read by loads"
    } else {
        "kernel memory is read through bpf_probe_read_kernel"
    };
    assert!(
        log.contains(want),
        "the agent with the DaemonSet's capabilities did not log \"{want}\":\n{log}"
    );
    drop(clean);
}

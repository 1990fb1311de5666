//! The agent's promise on a host it cannot use: exit non-zero with one line
//! that names what is missing and how to fix it. These run the real binary
//! as root (CI runs as root); they fail loudly when not root rather than
//! skip. Bad flag values, which need no root, are `agent/tests/flags.rs`.

use std::process::{Command, Output};

fn agent_bin() -> std::path::PathBuf {
    evenflow_tests::agent::agent_bin().expect("the agent binary (cargo xtask test builds it)")
}

fn agent(args: &[&str]) -> Output {
    Command::new(agent_bin())
        .args(args)
        .env_remove("EVENFLOW_COLLECTOR")
        .output()
        .expect("evenflow-agent runs")
}

fn assert_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests need root (CI runs them as root): run them with `cargo xtask test`"
    );
}

fn stderr_line(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    err.lines()
        .filter(|l| l.starts_with("evenflow-agent:"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn missing_interface_is_named_with_the_fix() {
    assert_root();
    let o = agent(&[
        "--iface",
        "nosuch0",
        "--node-name",
        "errtest-iface",
        "--grpc-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    assert!(!o.status.success());
    let line = stderr_line(&o);
    assert!(
        line.contains("--iface nosuch0") && line.contains("no such interface"),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "one line: {line}");
}

#[test]
fn a_directory_that_is_not_cgroup2_is_refused() {
    assert_root();
    let o = agent(&["--cgroup", "/tmp", "--node-name", "errtest-cg"]);
    assert!(!o.status.success());
    let line = stderr_line(&o);
    assert!(
        line.contains("not in a cgroup v2 hierarchy") && line.contains("mount -t cgroup2"),
        "{line}"
    );
}

#[test]
fn a_bpffs_that_is_not_mounted_is_refused() {
    assert_root();
    let o = agent(&["--bpffs", "/tmp", "--node-name", "errtest-bpffs"]);
    assert!(!o.status.success());
    let line = stderr_line(&o);
    assert!(
        line.contains("not a mounted bpffs") && line.contains("mount -t bpf"),
        "{line}"
    );
}

#[test]
fn without_capabilities_it_names_them() {
    assert_root();
    // Drop to nobody with no capabilities at all.
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ])
        .arg(agent_bin())
        .args(["--node-name", "errtest-caps"])
        .output()
        .expect("setpriv (util-linux) runs");
    assert!(!o.status.success());
    let line = stderr_line(&o);
    assert!(
        line.contains("CAP_BPF") && line.contains("CAP_NET_ADMIN"),
        "{line}"
    );
}

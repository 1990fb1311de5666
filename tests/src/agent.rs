//! Starting the real `evenflow-agent` on lab nodes. Reading it back is
//! [`crate::grpcurl`]'s job (re-exported here for callers such as xtask).

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};

pub use crate::grpcurl::{GRPC, SENDS_TO, SERVES, Totals, settle, snapshot, totals};
use crate::{
    lab::{Lab, Node},
    memcg::MemCg,
};

/// The agents' metrics address inside each node's namespace.
pub const METRICS: &str = "0.0.0.0:9464";

/// How often the lab's agents read their maps: short, so tests settle fast.
pub const INTERVAL: &str = "500ms";

/// Finds a workspace binary: `$<ENV>` if set, else the newest of
/// `<target>/{debug,release}/<name>` (so a fresh `cargo build --release`
/// wins over a stale debug build and vice versa).
pub fn binary(name: &str, env: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{env}={} is not a file", p.display());
        }
        return Ok(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .context("the workspace root above tests/")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join(name))
        .filter(|p| p.is_file())
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .with_context(|| {
            format!(
                "{name} is not built under {}: run `cargo build -p {name}` (or set {env})",
                target.display()
            )
        })
}

/// The agent binary (`$EVENFLOW_AGENT_BIN` or the workspace's newest build).
pub fn agent_bin() -> Result<PathBuf> {
    binary("evenflow-agent", "EVENFLOW_AGENT_BIN")
}

/// Starts an agent on `node`, inside its namespace and cgroup (the cgroup
/// its `sock_ops` program attaches to), with its pinned maps removed first
/// so counters start at zero, and waits until its gRPC API answers.
/// `extra` adds flags, e.g. `["--service", "web=8080"]`.
pub fn start(lab: &mut Lab, node: &Node, extra: &[&str]) -> Result<()> {
    remove_pins(node)?;
    launch(lab, node, extra)
}

/// [`start`], with `env` (`NAME=value` strings) set for the agent.
pub fn start_with_env(lab: &mut Lab, node: &Node, extra: &[&str], env: &[&str]) -> Result<()> {
    remove_pins(node)?;
    launch_with_env(lab, node, extra, env)
}

/// [`start`], with the agent in `memcg` as well: the maps it creates are
/// charged to that memory cgroup for as long as they live.
pub fn start_in(lab: &mut Lab, node: &Node, extra: &[&str], memcg: &MemCg) -> Result<()> {
    remove_pins(node)?;
    let procs = memcg.procs().display().to_string();
    let join = ["sh", "-c", "echo $$ > \"$0\" && exec \"$@\"", &procs];
    launch_via(lab, node, extra, &join)
}

/// [`start`], with the agent in a mount namespace of its own (private
/// propagation): a file mounted over one it reads (`/proc/stat`) is then
/// seen by the agent alone.
pub fn start_in_own_mounts(lab: &mut Lab, node: &Node, extra: &[&str]) -> Result<()> {
    remove_pins(node)?;
    launch_via(
        lab,
        node,
        extra,
        &["unshare", "--mount", "--propagation", "private"],
    )
}

fn remove_pins(node: &Node) -> Result<()> {
    let pins = node.pin_dir();
    if pins.exists() {
        std::fs::remove_dir_all(&pins).with_context(|| format!("removing {}", pins.display()))?;
    }
    Ok(())
}

/// Stops `node`'s agent (SIGTERM, as a rolling update does) and starts it
/// again with the same flags, keeping its pinned maps: the counters and the
/// epoch must survive.
pub fn restart(lab: &mut Lab, node: &Node, extra: &[&str]) -> Result<()> {
    lab.stop(&process_name(node));
    launch(lab, node, extra)
}

/// SIGKILLs `node`'s agent: its pinned programs must go on counting.
pub fn kill(lab: &mut Lab, node: &Node) {
    lab.kill(&process_name(node));
}

/// Starts `node`'s agent again on its pinned state (after [`kill`]), with
/// `env` (`NAME=value` strings) set for it.
pub fn relaunch(lab: &mut Lab, node: &Node, extra: &[&str], env: &[&str]) -> Result<()> {
    lab.stop(&process_name(node));
    launch_with_env(lab, node, extra, env)
}

fn process_name(node: &Node) -> String {
    format!("agent-{}", node.role)
}

fn launch(lab: &mut Lab, node: &Node, extra: &[&str]) -> Result<()> {
    launch_via(lab, node, extra, &[])
}

fn launch_with_env(lab: &mut Lab, node: &Node, extra: &[&str], env: &[&str]) -> Result<()> {
    let mut via = vec!["env"];
    via.extend_from_slice(env);
    launch_via(lab, node, extra, if env.is_empty() { &[] } else { &via })
}

/// Starts `node`'s agent again on its pinned state with `env` set,
/// expecting it to exit (a build the kernel refuses): waits up to 30 s for
/// it to end and returns its output.
pub fn launch_failing(lab: &mut Lab, node: &Node, extra: &[&str], env: &[&str]) -> Result<String> {
    let name = process_name(node);
    lab.stop(&name);
    let bin = agent_bin()?.display().to_string();
    let args = command_line(node, extra);
    let mut line: Vec<&str> = env.to_vec();
    line.push(&bin);
    line.extend(args.iter().map(String::as_str));
    lab.spawn(node, &name, "env", &line)?;
    let ended = crate::wait_for(Duration::from_secs(30), || lab.check_alive().err());
    let Some(ended) = ended else {
        bail!(
            "the agent on {} still runs after 30 s; its output:\n{}",
            node.ns,
            lab.log(&name)
        );
    };
    lab.stop(&name);
    Ok(format!("{ended:#}"))
}

/// Starts a second agent for `node` beside the one running, as
/// `agent2-<role>`, without waiting for it to serve.
pub fn launch_second(lab: &mut Lab, node: &Node, extra: &[&str]) -> Result<()> {
    let bin = agent_bin()?.display().to_string();
    let args = command_line(node, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.spawn(node, &format!("agent2-{}", node.role), &bin, &args)
}

/// The agent's flags for `node`, then `extra`.
fn command_line(node: &Node, extra: &[&str]) -> Vec<String> {
    let cgroup = node.cgroup.display().to_string();
    let mut args = vec![
        "--node-name",
        &node.ns,
        "--cgroup",
        &cgroup,
        "--grpc-addr",
        GRPC,
        "--metrics-addr",
        METRICS,
    ];
    if !extra.contains(&"--interval") {
        args.extend_from_slice(&["--interval", INTERVAL]);
    }
    args.extend_from_slice(extra);
    args.into_iter().map(str::to_owned).collect()
}

/// Launches the agent through the command `via` (empty: directly), which
/// ends by running the command line it is given.
fn launch_via(lab: &mut Lab, node: &Node, extra: &[&str], via: &[&str]) -> Result<()> {
    let bin = agent_bin()?.display().to_string();
    let args = command_line(node, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let name = process_name(node);
    match via.split_first() {
        None => lab.spawn(node, &name, &bin, &args)?,
        Some((cmd, rest)) => {
            let mut line = rest.to_vec();
            line.push(&bin);
            line.extend_from_slice(&args);
            lab.spawn(node, &name, cmd, &line)?;
        }
    }
    let ready = crate::wait_for(Duration::from_secs(20), || {
        crate::grpcurl::list(&node.ns)
            .ok()
            .filter(|l| l.iter().any(|s| s == "evenflow.v1.Node"))
    });
    if ready.is_none() {
        lab.check_alive()?;
        bail!(
            "the agent on {} did not serve evenflow.v1.Node on {GRPC} within 20 s; its output:\n{}",
            node.ns,
            lab.log(&name)
        );
    }
    Ok(())
}

/// The lab's collector address, on the lb (every node routes to it).
pub const COLLECTOR: &str = "10.1.0.1:50052";

/// Starts the real `evenflow-collector` on the lab's lb, ingest and query
/// API on [`COLLECTOR`], metrics on `metrics_addr`.
pub fn start_collector(lab: &mut Lab, metrics_addr: &str) -> Result<()> {
    start_collector_with(lab, metrics_addr, &[])
}

/// [`start_collector`] with `extra` flags.
pub fn start_collector_with(lab: &mut Lab, metrics_addr: &str, extra: &[&str]) -> Result<()> {
    let bin = binary("evenflow-collector", "EVENFLOW_COLLECTOR_BIN")?;
    let lb = lab.lb.clone();
    let mut args = vec!["--grpc-addr", COLLECTOR, "--metrics-addr", metrics_addr];
    args.extend_from_slice(extra);
    lab.spawn(&lb, "collector", &bin.display().to_string(), &args)
}

/// Waits (up to 30 s) until the collector at [`COLLECTOR`] lists the
/// agents of every one of `nodes` as fresh. Connections opened before an
/// agent's first report are its baseline, not news; traffic started
/// before then would show the load balancers sending what a backend never
/// received.
pub fn wait_reporting(lab: &Lab, nodes: &[Node]) -> Result<()> {
    let ns = lab.lb.ns.clone();
    let all = crate::wait_for(Duration::from_secs(30), || {
        let v = crate::grpcurl::call(&ns, COLLECTOR, "evenflow.v1.Distribution/ListAgents", "{}")
            .ok()?;
        let fresh: Vec<&str> = v["agents"]
            .as_array()?
            .iter()
            .filter(|a| a["fresh"] == true)
            .filter_map(|a| a["nodeName"].as_str())
            .collect();
        nodes
            .iter()
            .all(|n| fresh.contains(&n.ns.as_str()))
            .then_some(())
    });
    if all.is_none() {
        bail!(
            "the collector did not list every agent ({}) as reporting within 30 s",
            nodes
                .iter()
                .map(|n| n.ns.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Starts nginx and an agent labelling port 8080 `web` on every backend,
/// each agent reporting to [`COLLECTOR`]; returns nginx's access logs.
pub fn start_web_backends(lab: &mut Lab) -> Result<Vec<PathBuf>> {
    let url = format!("http://{COLLECTOR}");
    let mut logs = Vec::new();
    for b in lab.backends.clone() {
        logs.push(crate::nginx::start(lab, &b)?);
        start(lab, &b, &["--service", "web=8080", "--collector", &url])?;
    }
    Ok(logs)
}

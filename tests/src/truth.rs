//! Comparing an agent's counts with the ground truth (nginx's logs, the
//! client's own tally): connections exactly, bytes to a tolerance.

use std::time::Duration;

use serde_json::Value;

use crate::{
    grpcurl::{self, SENDS_TO, Totals},
    lab::BACKEND_PORT,
};

/// Byte tolerance against the applications' own counts, percent.
pub const BYTES_PCT: f64 = 0.1;

/// How long an endpoint may take to settle at its final counts.
pub const SETTLE: Duration = Duration::from_secs(15);

/// `seen` is within [`BYTES_PCT`] of `truth`.
pub fn within(seen: u64, truth: u64) -> bool {
    within_pct(seen, truth, BYTES_PCT)
}

/// `seen` is within `pct` percent of `truth` (of 1 when `truth` is 0).
pub fn within_pct(seen: u64, truth: u64, pct: f64) -> bool {
    (seen as f64 - truth as f64).abs() <= (truth as f64).max(1.0) * pct / 100.0
}

/// How far `seen` is from `truth`, percent (signed).
pub fn pct_off(seen: u64, truth: u64) -> f64 {
    (seen as f64 - truth as f64) / (truth as f64).max(1.0) * 100.0
}

/// Waits (at most [`SETTLE`]) until `ns`'s endpoint `addr:port` in `dir`
/// settles at `want` connections opened and as many closed; returns the
/// snapshot and the endpoint's totals either way, for the caller to assert.
pub fn settled(ns: &str, addr: &str, port: u16, dir: &str, want: u64) -> (Value, Totals) {
    grpcurl::settle(
        ns,
        SETTLE,
        |s| grpcurl::totals(s, addr, port, dir),
        |t| t.opened == want && t.closed == want,
    )
    .unwrap_or_else(|e| panic!("reading {ns}'s snapshot with grpcurl: {e:#}"))
}

/// Waits until `ns`'s LB view (`SENDS_TO`) of each backend in `addrs`
/// settles at `conns` connections opened and as many closed, asserts it,
/// and returns the request and response bytes it counted, summed over
/// them.
pub fn sent_to_each(ns: &str, addrs: &[String], conns: u64) -> (u64, u64) {
    addrs.iter().fold((0, 0), |sum, addr| {
        let t = settled(ns, addr, BACKEND_PORT, SENDS_TO, conns).1;
        println!("{ns} SENDS_TO {addr}: {t:?}");
        assert_eq!((t.opened, t.closed), (conns, conns), "{addr}");
        (sum.0 + t.bytes_tx, sum.1 + t.bytes_rx)
    })
}

/// One of the snapshot's datapath statistics (`liveFlows`, `synsRouted`…).
pub fn datapath_stat(snap: &Value, key: &str) -> u64 {
    grpcurl::number(&snap["datapath"][key])
}

/// Waits (at most `timeout`) until `ns`'s datapath statistic `key` is
/// `want`; the snapshot that showed it, or `None`.
pub fn wait_datapath(ns: &str, key: &str, want: u64, timeout: Duration) -> Option<Value> {
    crate::wait_for(timeout, || {
        grpcurl::snapshot(ns)
            .ok()
            .filter(|s| datapath_stat(s, key) == want)
    })
}

/// Asserts an endpoint's totals against the truth: `conns` opened and
/// closed, `rx`/`tx` bytes within [`BYTES_PCT`]; `what` names it.
pub fn assert_counts(what: &str, t: Totals, conns: u64, rx: u64, tx: u64) {
    assert_eq!(
        (t.opened, t.closed),
        (conns, conns),
        "{what}: opened/closed, want {conns} each: {t:?}"
    );
    assert!(
        within(t.bytes_rx, rx) && within(t.bytes_tx, tx),
        "{what}: bytes rx {} vs {rx} ({:+.3} %), tx {} vs {tx} ({:+.3} %)",
        t.bytes_rx,
        pct_off(t.bytes_rx, rx),
        t.bytes_tx,
        pct_off(t.bytes_tx, tx)
    );
}

/// Which side of a backend's connections an endpoint counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// The backend's own `SERVES` endpoint: it receives the requests.
    Server,
    /// A load balancer's or client's `SENDS_TO` the backend: it sends them.
    Lb,
}

/// Asserts an endpoint's totals against what the backend's nginx `served`,
/// seen from `view`.
pub fn assert_served(what: &str, t: Totals, served: &crate::nginx::Served, view: View) {
    let (rx, tx) = match view {
        View::Server => (served.request_bytes, served.response_bytes),
        View::Lb => (served.response_bytes, served.request_bytes),
    };
    assert_counts(what, t, served.connections, rx, tx);
}

//! What the collector a lab runs on its lb judged of the pool `web`: the
//! pool, its alerts, and `evenflow verify`'s exit, as an operator asks
//! for them (grpcurl and the CLI, from the lb's namespace).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{
    agent::{self, COLLECTOR},
    grpcurl,
    lab::Lab,
    wait_for,
};

/// The pool `web` as `GetPool` says it, if the collector answers.
pub fn pool(lab: &Lab) -> Option<Value> {
    grpcurl::get_pool(&lab.lb.ns, COLLECTOR, "web").ok()
}

/// The collector's alerts, resolved ones included.
pub fn alerts(lab: &Lab) -> Vec<Value> {
    let v = grpcurl::call(
        &lab.lb.ns,
        COLLECTOR,
        "evenflow.v1.Distribution/ListAlerts",
        r#"{"includeResolved":true}"#,
    )
    .expect("ListAlerts");
    v["alerts"].as_array().cloned().unwrap_or_default()
}

/// The collector's alerts of `kind` (`ALERT_KIND_DOWN`) at `severity`
/// (`SEVERITY_PAGE`) about `member` ("" for the pool's own), resolved ones
/// included.
pub fn alerts_of(lab: &Lab, kind: &str, member: &str, severity: &str) -> Vec<Value> {
    (alerts(lab).into_iter())
        .filter(|a| {
            // Proto3's JSON leaves an empty string out: a pool's alert has
            // no `member`.
            let of = a["member"].as_str().unwrap_or_default();
            a["kind"] == kind && of == member && a["severity"] == severity
        })
        .collect()
}

/// Waits up to `secs` for the pool to satisfy `f`.
pub fn wait_pool(lab: &Lab, secs: u64, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    wait_for(Duration::from_secs(secs), || pool(lab).filter(|p| f(p))).unwrap_or_else(|| {
        panic!(
            "{what} within {secs} s; last pool: {:#?}\ncollector:\n{}",
            pool(lab),
            lab.log("collector")
        )
    })
}

/// `evenflow verify --pool web --for 2s` from the lb: its exit code and
/// what it printed.
pub fn verify(lab: &Lab) -> (i32, String) {
    let cli = agent::binary("evenflow", "EVENFLOW_CLI_BIN").expect("evenflow CLI");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.lb.ns])
        .arg(cli)
        .args(["verify", "--pool", "web", "--for", "2s", "--collector"])
        .arg(format!("http://{COLLECTOR}"))
        .output()
        .expect("evenflow verify runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// The open FAILING page, if any.
pub fn open_failing(lab: &Lab) -> Option<Value> {
    (alerts_of(lab, "ALERT_KIND_FAILING", "", "SEVERITY_PAGE").into_iter())
        .find(|a| a["resolvedAt"].is_null())
}

/// Waits for the pool's FAILING page, said to come `after` what happened
/// at `since`; checks that it is the only page and that `evenflow verify`
/// fails, naming `named`. Returns the page.
pub fn failing_pages(lab: &Lab, since: Instant, after: &str, named: &str) -> Value {
    let page = wait_for(Duration::from_secs(40), || open_failing(lab))
        .unwrap_or_else(|| panic!("no FAILING page; pool: {:#?}", pool(lab)));
    println!(
        "FAILING paged {:.1} s after {after}: {}",
        since.elapsed().as_secs_f64(),
        page["summary"]
    );
    let (code, said) = verify(lab);
    assert_eq!(code, 1, "verify fails a failing pool: {said}");
    assert!(said.contains("FAILING") && said.contains(named), "{said}");
    let pages: Vec<Value> = (alerts(lab).into_iter())
        .filter(|a| a["severity"] == "SEVERITY_PAGE")
        .collect();
    assert_eq!(pages.len(), 1, "one page: {pages:#?}");
    page
}

/// Waits for the FAILING page to resolve once the fault is mended (`after`,
/// at `since`).
pub fn failing_resolves(lab: &Lab, since: Instant, after: &str) {
    wait_for(Duration::from_secs(40), || {
        open_failing(lab).is_none().then_some(())
    })
    .unwrap_or_else(|| panic!("FAILING did not resolve; alerts: {:#?}", alerts(lab)));
    println!(
        "resolved {:.1} s after {after}",
        since.elapsed().as_secs_f64()
    );
}

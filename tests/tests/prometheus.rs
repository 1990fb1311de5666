//! A real Prometheus scraping a real lab: the agents on every node and the
//! collector. The series evenflow promises are there with the right values
//! (per-backend connection counters equal to what nginx served, pool
//! membership, agent freshness), and `promtool check metrics` accepts both
//! expositions.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use evenflow_tests::{agent, client, haproxy, lab::Lab, netns, nginx};
use serde_json::Value;

fn query(ns: &str, q: &str) -> Option<Vec<Value>> {
    let out = netns::exec(
        ns,
        "curl",
        &[
            "-sf",
            "http://127.0.0.1:9090/api/v1/query",
            "--data-urlencode",
            &format!("query={q}"),
        ],
    )
    .ok()?;
    let v: Value = serde_json::from_str(&out).ok()?;
    v["data"]["result"].as_array().cloned()
}

fn value(r: &Value) -> f64 {
    r["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

fn promtool_accepts(ns: &str, url: &str) {
    let text = netns::exec(ns, "curl", &["-sf", url]).unwrap_or_else(|e| panic!("{url}: {e}"));
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; cargo xtask setup)");
    p.stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let o = p.wait_with_output().expect("promtool");
    assert!(
        o.status.success(),
        "promtool check metrics refused {url}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn prometheus_scrapes_agents_and_collector() {
    evenflow_tests::require_root();
    let mut lab = Lab::new("prom", 2).expect("lab");
    let lb = lab.lb.clone();
    agent::start_collector(&mut lab, "10.1.0.1:9465").expect("collector");
    let logs = agent::start_web_backends(&mut lab).expect("backends");
    agent::start(&mut lab, &lb, &["--collector", "http://10.1.0.1:50052"]).expect("lb agent");
    haproxy::start(&mut lab, false).expect("haproxy");
    let prom_dir = lab.dir.join("prometheus");
    std::fs::create_dir_all(prom_dir.join("data")).expect("dir");
    let cfg = prom_dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        [
            "global:",
            "  scrape_interval: 1s",
            "  evaluation_interval: 1s",
            "scrape_configs:",
            "  - job_name: evenflow-agent",
            "    static_configs:",
            "      - targets: ['10.2.1.2:9464', '10.2.2.2:9464', '10.1.0.1:9464']",
            "  - job_name: evenflow-collector",
            "    static_configs:",
            "      - targets: ['10.1.0.1:9465']",
            "",
        ]
        .join("\n"),
    )
    .expect("config");
    lab.spawn(
        &lb,
        "prometheus",
        "prometheus",
        &[
            &format!("--config.file={}", cfg.display()),
            &format!("--storage.tsdb.path={}", prom_dir.join("data").display()),
            "--web.listen-address=127.0.0.1:9090",
        ],
    )
    .expect("prometheus starts");
    let vip = evenflow_tests::lab::vip(false);
    let client_ns = lab.client.ns.clone();
    evenflow_tests::wait_for(Duration::from_secs(15), || {
        client::http_load(&client_ns, vip, 1, 1)
            .ok()
            .filter(|l| l.connections == 1)
    })
    .expect("VIP answers");
    let load = client::http_load(&client_ns, vip, 100, 4).expect("load");
    assert_eq!(load.failures, 0);

    // Every target up.
    let up = evenflow_tests::wait_for(Duration::from_secs(30), || {
        query(&lb.ns, "up").filter(|r| r.len() == 4 && r.iter().all(|x| value(x) == 1.0))
    });
    assert!(
        up.is_some(),
        "not every target is up: {:?}\n{}",
        query(&lb.ns, "up"),
        lab.log("prometheus")
    );

    // The per-backend SERVES counters equal what nginx served.
    let served: Vec<u64> = logs
        .iter()
        .map(|l| nginx::read_log(l).expect("log").connections)
        .collect();
    let q = "evenflow_endpoint_connections_opened_total{direction=\"serves\",service=\"web\"}";
    let got = evenflow_tests::wait_for(Duration::from_secs(20), || {
        let r = query(&lb.ns, q)?;
        let mut per: Vec<(String, f64)> = r
            .iter()
            .map(|x| {
                (
                    x["metric"]["address"].as_str().unwrap_or("").to_owned(),
                    value(x),
                )
            })
            .collect();
        per.sort_by(|a, b| a.0.cmp(&b.0));
        let want: Vec<f64> = served.iter().map(|&s| s as f64).collect();
        (per.len() == 2 && per.iter().map(|(_, v)| *v).collect::<Vec<_>>() == want).then_some(per)
    });
    assert!(
        got.is_some(),
        "Prometheus has {:?}, nginx served {served:?}",
        query(&lb.ns, q)
    );

    // The collector's series: the pool, its members, fresh agents.
    let members = evenflow_tests::wait_for(Duration::from_secs(20), || {
        query(&lb.ns, "evenflow_pool_members{pool=\"web\"}")
            .filter(|r| r.len() == 1 && value(&r[0]) == 2.0)
    });
    assert!(
        members.is_some(),
        "pool web with 2 members: {:?}",
        query(&lb.ns, "evenflow_pool_members")
    );
    let fresh = query(&lb.ns, "evenflow_agent_fresh == 1").unwrap_or_default();
    assert_eq!(fresh.len(), 3, "three fresh agents: {fresh:?}");
    // Not one report refused, the agents' first ones included.
    let invalid = query(&lb.ns, "evenflow_collector_invalid_reports_total").unwrap_or_default();
    assert!(
        invalid.len() == 1 && value(&invalid[0]) == 0.0,
        "reports refused: {invalid:?}\n{}",
        lab.log("collector")
    );
    let shares = query(
        &lb.ns,
        "evenflow_member_expected_share{pool=\"web\",view=\"server\"}",
    )
    .unwrap_or_default();
    assert!(
        shares.len() == 2 && shares.iter().all(|s| (value(s) - 0.5).abs() < 1e-9),
        "{shares:?}"
    );

    // Both expositions pass promtool's checks.
    promtool_accepts(&lb.ns, "http://10.1.0.1:9464/metrics");
    promtool_accepts(&lb.ns, "http://10.1.0.1:9465/metrics");
}

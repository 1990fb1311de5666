//! `cargo xtask demo --scenario pinned`: the imbalance people report most,
//! replayed — gRPC channels stay where they first landed.
//!
//! A lab: a client holding 150 gRPC channels (HTTP/2) and calling on each
//! continuously, HAProxy in `mode tcp` (it balances connections, round
//! robin), three backends running the lab's gRPC server (which counts its
//! own connections), one agent per node, the collector on the lb. Balanced
//! at first. Then one backend restarts: its clients reconnect to the other
//! two, and when it is back nobody reconnects to it — the balancer's
//! choices were fine, the old connections hold the load. evenflow pages
//! `pinned`. The fix, re-established channels (what a maximum connection
//! age such as gRPC's MAX_CONNECTION_AGE does over time, done here at
//! once), rebalances the pool and the alert resolves. The demo shows the
//! live shares (new connections, open connections, bytes), the alerts as
//! they come, and writes a postmortem-style timeline; it exits 0 only when
//! detection worked, and removes everything it made, also on Ctrl-C.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use evenflow_tests::{
    agent,
    grpclab::{self, Load},
    haproxy,
    lab::Lab,
};
use serde_json::Value;

use crate::{
    demo::{self, Options, Timeline, collector_url, finish, open_alerts, watch_pool},
    interrupt,
};

/// The pool's name (the agents' --service label).
const POOL: &str = "grpc";
/// Channels the clients hold.
const CHANNELS: usize = 150;
/// The pinned page must come within this of the restart.
const PAGE_WITHIN: Duration = Duration::from_secs(60);
/// How long the restarted backend stays down.
const DOWN: Duration = Duration::from_secs(3);

fn load() -> Load {
    Load {
        channels: CHANNELS,
        interval: Duration::from_millis(250),
        payload: 200,
        reply: 1000,
        ramp: Duration::ZERO,
    }
}

/// What the demo found, for its verdict and its timeline.
#[derive(Default)]
struct Findings {
    restart_at: f64,
    back_at: f64,
    page_at: Option<f64>,
    page: Option<Value>,
    fix_at: f64,
    resolved_at: Option<f64>,
    page_before_restart: Option<String>,
    other_pages: Vec<String>,
}

pub fn run(o: &Options, cli: &Path) -> Result<()> {
    eprintln!(
        "==> lab: client ({CHANNELS} gRPC channels) -> HAProxy (mode tcp) -> 3 gRPC backends; \
         one agent per node; collector on the lb node"
    );
    let mut lab = Lab::new("pdemo", 3).context("building the lab")?;
    let result = story(&mut lab, o, cli);
    drop(lab);
    let (tl, f, restarted, holders) = result?;
    if interrupt::interrupted() {
        bail!("interrupted; the lab was removed");
    }
    let problems = verdict(&f, &restarted, &holders);
    let md = markdown(&tl, &f, &restarted, &holders, &problems);
    let json = serde_json::json!({
        "restart_at": f.restart_at,
        "back_at": f.back_at,
        "page_at": f.page_at,
        "page": f.page,
        "fix_at": f.fix_at,
        "resolved_at": f.resolved_at,
        "restarted": restarted,
        "holders": holders,
        "page_before_restart": f.page_before_restart,
        "other_pages": f.other_pages,
        "problems": problems,
        "events": tl.events,
    });
    finish(o, &md, &json, &problems)
}

/// Builds the workload, runs the story; returns the timeline, what was
/// found, the restarted member and the members that held its share.
fn story(
    lab: &mut Lab,
    o: &Options,
    cli: &Path,
) -> Result<(Timeline, Findings, String, Vec<String>)> {
    let url = collector_url();
    agent::start_collector(lab, "10.1.0.1:9465")?;
    let label = format!("{POOL}={}", grpclab::PORT);
    for b in lab.backends.clone() {
        grpclab::start_server(lab, &b)?;
        agent::start(lab, &b, &["--service", &label, "--collector", &url])?;
    }
    let lb = lab.lb.clone();
    agent::start(lab, &lb, &["--collector", &url])?;
    haproxy::start_tcp(lab, grpclab::PORT)?;
    let mut nodes = lab.backends.clone();
    nodes.push(lb.clone());
    agent::wait_reporting(lab, &nodes)?;
    let client = lab.client.clone();
    let cli_s = cli.display().to_string();
    lab.spawn(
        &client,
        "alerts",
        &cli_s,
        &["alerts", "--watch", "--output", "json", "--collector", &url],
    )?;
    let vip = evenflow_tests::lab::vip(false);
    let clients = grpclab::start_clients(lab, "clients", "call", vip, &load())?;
    evenflow_tests::wait_for(Duration::from_secs(30), || {
        let c = grpclab::read_client(&clients).ok()?;
        (c.connects >= CHANNELS as u64 && c.ok >= CHANNELS as u64).then_some(())
    })
    .context("the clients did not connect through HAProxy")?;
    let ids: Vec<String> = lab
        .backends
        .iter()
        .map(|b| format!("{}:{}", b.addr4, grpclab::PORT))
        .collect();
    let (restarted, holders) = (ids[0].clone(), ids[1..].to_vec());

    let mut tl = Timeline::new();
    let mut f = Findings::default();
    let mut seen = 0;
    tl.note(format!(
        "steady traffic: {CHANNELS} gRPC channels, each calling every 250 ms, through HAProxy (mode tcp, round robin) to 3 backends"
    ));

    // Phase 1: balanced.
    watch(lab, cli, &mut tl, o.warmup, &mut seen, |_, a| {
        if a["severity"] == "page" && f.page_before_restart.is_none() {
            f.page_before_restart = Some(a["summary"].as_str().unwrap_or("").to_owned());
        }
        false
    })?;
    if interrupt::interrupted() {
        return Ok((tl, f, restarted, holders));
    }

    // Phase 2: one backend restarts; nobody comes back to it.
    let first = lab.backends[0].clone();
    grpclab::stop_server(lab, &first);
    f.restart_at = tl.note(format!(
        "RESTART {restarted}: its server stops; its clients reconnect through HAProxy to the others"
    ));
    std::thread::sleep(DOWN);
    grpclab::start_server(lab, &first)?;
    f.back_at = tl.note(format!(
        "{restarted} is back and listening; no client has a reason to reconnect"
    ));
    let deadline = PAGE_WITHIN.saturating_sub(Duration::from_secs_f64(tl.at() - f.restart_at));
    watch(lab, cli, &mut tl, deadline, &mut seen, |t, a| {
        if a["severity"] != "page" || !a["resolved_at"].is_null() {
            return false;
        }
        let pinned = a["member"] == restarted.as_str()
            && a["signal"] == "active_connections"
            && a["cause"] == "pinned";
        if pinned && f.page.is_none() {
            f.page_at = Some(t);
            f.page = Some(a.clone());
            return true;
        }
        if !pinned {
            f.other_pages
                .push(a["summary"].as_str().unwrap_or("").to_owned());
        }
        false
    })?;
    if interrupt::interrupted() {
        return Ok((tl, f, restarted, holders));
    }

    // Phase 3: the fix.
    lab.stop("clients");
    grpclab::start_clients(lab, "clients", "call", vip, &load())?;
    f.fix_at = tl.note(
        "FIX applied: every client re-established its channel (what a maximum connection age such as gRPC MAX_CONNECTION_AGE does over time); HAProxy spreads them again"
            .into(),
    );
    let end = Instant::now() + o.recovery;
    while Instant::now() < end && !interrupt::interrupted() {
        watch(
            lab,
            cli,
            &mut tl,
            Duration::from_secs(1),
            &mut seen,
            |_, _| false,
        )?;
        if open_alerts(lab, cli)? == 0 {
            f.resolved_at = Some(tl.note("RESOLVED: no open alerts".into()));
            break;
        }
    }
    Ok((tl, f, restarted, holders))
}

/// Shows the live view every second for up to `dur`, notes new alerts, and
/// stops early when `stop` says so for an alert (called with its time).
fn watch(
    lab: &Lab,
    cli: &Path,
    tl: &mut Timeline,
    dur: Duration,
    seen: &mut usize,
    mut stop: impl FnMut(f64, &Value) -> bool,
) -> Result<()> {
    watch_pool(lab, cli, tl, POOL, dur, seen, |tl, pool, alerts| {
        if let Some(p) = pool {
            print_view(tl.at(), p);
        }
        let mut done = false;
        for a in alerts {
            done |= stop(tl.at(), a);
        }
        done
    })
}

/// One line per member: its shares of new connections, open connections
/// and bytes against the expected, and its verdicts.
fn print_view(t: f64, p: &Value) {
    println!(
        "── t={t:>5.1}s  pool {}  {}  {} open connections  {:.1} new/s ──  new conns | open conns | bytes",
        p["name"].as_str().unwrap_or(""),
        p["verdict"].as_str().unwrap_or(""),
        p["server_active_connections"].as_u64().unwrap_or(0),
        p["server_conns_per_sec"].as_f64().unwrap_or(0.0),
    );
    let bar = |share: f64, exp: f64| demo::bar(share, exp, 20);
    for m in p["members"].as_array().into_iter().flatten() {
        let v = &m["server_view"];
        let exp = v["expected_share"].as_f64().unwrap_or(0.0);
        let share = |x: &Value| x.as_f64().unwrap_or(0.0);
        let (new, open, bytes) = (
            share(&v["observed_share"]),
            share(&v["active"]["observed_share"]),
            share(&v["bytes"]["observed_share"]),
        );
        let load = &m["load"];
        println!(
            "  {:<16} {} {:>5.1}% | {} {:>5.1}% {:>4} open | {} {:>5.1}%  / {:>4.1}%  {} {}",
            m["member"].as_str().unwrap_or(""),
            bar(new, exp),
            new * 100.0,
            bar(open, exp),
            open * 100.0,
            v["active_connections"].as_u64().unwrap_or(0),
            bar(bytes, exp),
            bytes * 100.0,
            exp * 100.0,
            m["verdict"].as_str().unwrap_or(""),
            if load.is_null() {
                String::new()
            } else {
                format!(
                    "load: {} {} {}",
                    load["share"]["verdict"].as_str().unwrap_or(""),
                    load["signal"].as_str().unwrap_or(""),
                    load["share"]["cause"].as_str().unwrap_or("")
                )
            }
        );
    }
}

/// What went wrong, if anything.
fn verdict(f: &Findings, restarted: &str, holders: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(p) = &f.page_before_restart {
        problems.push(format!("a page fired while the pool was balanced: {p}"));
    }
    match (&f.page, f.page_at) {
        (Some(p), Some(t)) => {
            if t - f.restart_at > PAGE_WITHIN.as_secs_f64() {
                problems.push(format!(
                    "the pinned page came {:.1}s after the restart (want <= {}s)",
                    t - f.restart_at,
                    PAGE_WITHIN.as_secs()
                ));
            }
            let summary = p["summary"].as_str().unwrap_or("");
            for h in holders {
                if !summary.contains(h.as_str()) {
                    problems.push(format!("the page does not name {h}, which holds the load"));
                }
            }
        }
        _ => problems.push(format!(
            "no pinned page for {restarted} within {}s of its restart",
            PAGE_WITHIN.as_secs()
        )),
    }
    for p in &f.other_pages {
        problems.push(format!("another page fired: {p}"));
    }
    if f.resolved_at.is_none() {
        problems.push("the alerts did not resolve after the fix".into());
    }
    problems
}

fn markdown(
    tl: &Timeline,
    f: &Findings,
    restarted: &str,
    holders: &[String],
    problems: &[String],
) -> String {
    let rel =
        |t: Option<f64>, base: f64| t.map_or("never".to_owned(), |t| format!("{:.1}s", t - base));
    let mut md = format!(
        "# Incident timeline: pool `{POOL}` (gRPC, HAProxy mode tcp, 3 backends)\n\n\
         ## Summary\n\n\
         {restarted} restarted. Its {CHANNELS}/3 clients reconnected through the load balancer to {}, \
         and when it came back nobody reconnected to it: every new connection had been placed \
         fairly, and the old connections held the load. evenflow paged `pinned` for {restarted} \
         {} after the restart, naming the members holding its share. Re-established channels \
         (what a maximum connection age does) rebalanced the pool; the alerts resolved {} after the fix.\n\n\
         ## Timeline\n\n",
        holders.join(" and "),
        rel(f.page_at, f.restart_at),
        rel(f.resolved_at, f.fix_at),
    );
    md.push_str(&tl.table());
    md.push_str("\n## Detection\n\n");
    if problems.is_empty() {
        md.push_str("Detection worked: no page while balanced, a pinned page for the restarted backend naming the ones holding its load, resolution after the fix.\n");
    } else {
        for p in problems {
            md.push_str(&format!("- PROBLEM: {p}\n"));
        }
    }
    md
}

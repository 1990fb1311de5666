//! `cargo xtask demo`: the incident evenflow exists for, replayed on this
//! machine in a few minutes.
//!
//! A lab of network namespaces: a client, a load balancer node running real
//! HAProxy (or an nftables DNAT load balancer), six backends running nginx,
//! one evenflow-agent per node streaming to a collector. Steady traffic,
//! then a bad load balancer update that routes everything to two of the six
//! backends, then the rollback. The demo shows the live per-backend view
//! (read with the real `evenflow` CLI), the alerts as they come, the time
//! from the update to the first alert, and writes a postmortem-style
//! timeline to the terminal and to a Markdown file. It exits 0 only when
//! detection worked, and removes everything it made, also on Ctrl-C.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use crate::interrupt;
use anyhow::{Context as _, Result, bail};
use evenflow_tests::{agent, client, haproxy, lab::Lab, netns, nft, nginx};
use serde_json::Value;

/// The load balancer the lab runs.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LbKind {
    /// HAProxy, round robin; the bad update disables servers.
    Haproxy,
    /// nftables DNAT (numgen); the bad update maps every connection to two
    /// backends.
    Nftables,
}

/// Which story the demo tells.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// A load balancer update routes everything to a few backends
    /// (routing).
    Incident,
    /// gRPC channels stay where they first landed: a restarted backend gets
    /// none back (pinned). Three backends, HAProxy in TCP mode; --lb,
    /// --backends, --kept and --incident do not apply.
    Pinned,
}

/// Options of the demo.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// The story.
    #[arg(long, value_enum, default_value_t = Scenario::Incident)]
    pub scenario: Scenario,
    /// The load balancer kind.
    #[arg(long, value_enum, default_value_t = LbKind::Haproxy)]
    pub lb: LbKind,
    /// Backend nodes.
    #[arg(long, default_value_t = 6)]
    pub backends: usize,
    /// Backends the bad update keeps.
    #[arg(long, default_value_t = 2)]
    pub kept: usize,
    /// Balanced traffic before the bad update.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// How long the bad update stays before the rollback.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub incident: Duration,
    /// How long to wait for resolution after the rollback.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub recovery: Duration,
    /// Where to write the Markdown timeline.
    #[arg(long, default_value = "target/evenflow-demo/timeline.md")]
    pub timeline: PathBuf,
    /// Also write the timeline as JSON (for tests).
    #[arg(long)]
    pub timeline_json: Option<PathBuf>,
    /// Skip setup and build (tests run them first).
    #[arg(long)]
    pub no_build: bool,
}

const COLLECTOR_ADDR: &str = "10.1.0.1:50052";

pub(crate) fn collector_url() -> String {
    format!("http://{COLLECTOR_ADDR}")
}

/// What happened when, for the postmortem.
pub(crate) struct Timeline {
    pub start: Instant,
    pub wall_start: SystemTime,
    pub events: Vec<(f64, String)>,
}

impl Timeline {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            wall_start: SystemTime::now(),
            events: Vec::new(),
        }
    }

    pub fn at(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// The events as a Markdown table (UTC time, seconds since the start).
    pub fn table(&self) -> String {
        let wall = |t: f64| {
            humantime::format_rfc3339_seconds(self.wall_start + Duration::from_secs_f64(t))
                .to_string()
        };
        let mut md = String::from("| time (UTC) | t | event |\n| --- | --- | --- |\n");
        for (t, e) in &self.events {
            md.push_str(&format!(
                "| {} | {:.1}s | {} |\n",
                wall(*t),
                t,
                e.replace('|', "\\|")
            ));
        }
        md
    }

    pub fn note(&mut self, what: String) -> f64 {
        let t = self.at();
        println!("\x1b[1m[{t:>6.1}s] {what}\x1b[0m");
        self.events.push((t, what));
        t
    }
}

pub fn run(o: &Options) -> Result<()> {
    crate::shell::require_root("demo", "builds network namespaces and loads eBPF programs")?;
    if o.scenario == Scenario::Incident
        && (!(3..=16).contains(&o.backends) || o.kept == 0 || o.kept >= o.backends)
    {
        bail!("--backends must be 3-16 and the update must keep between 1 and backends-1 of them");
    }
    if !o.no_build {
        crate::setup::run()?;
        crate::shell::step("cargo build (bins)", || {
            crate::shell::cargo(&["build", "--bins"])
        })?;
        // Run what was just built, not a newer-looking release build.
        let debug = crate::shell::target_dir().join("debug");
        for (var, bin) in [
            ("EVENFLOW_AGENT_BIN", "evenflow-agent"),
            ("EVENFLOW_COLLECTOR_BIN", "evenflow-collector"),
            ("EVENFLOW_CLI_BIN", "evenflow"),
            ("EVENFLOW_GRPC_LAB_BIN", "evenflow-grpc-lab"),
        ] {
            if std::env::var_os(var).is_none() {
                // SAFETY: no other thread exists yet.
                unsafe { std::env::set_var(var, debug.join(bin)) };
            }
        }
    }
    interrupt::install();
    let cli = agent::binary("evenflow", "EVENFLOW_CLI_BIN")?;
    if o.scenario == Scenario::Pinned {
        return crate::pinned_demo::run(o, &cli);
    }
    let collector = agent::binary("evenflow-collector", "EVENFLOW_COLLECTOR_BIN")?;
    eprintln!(
        "==> lab: client -> {:?} load balancer -> {} nginx backends; one agent per node; collector on the lb node",
        o.lb, o.backends
    );
    let mut lab = Lab::new("demo", o.backends).context("building the lab")?;
    let lb = lab.lb.clone();
    let coll = collector.display().to_string();
    lab.spawn(
        &lb,
        "collector",
        &coll,
        &[
            "--grpc-addr",
            COLLECTOR_ADDR,
            "--metrics-addr",
            "10.1.0.1:9465",
        ],
    )?;
    let url = collector_url();
    let mut logs = Vec::new();
    for b in lab.backends.clone() {
        logs.push(nginx::start(&mut lab, &b)?);
        agent::start(
            &mut lab,
            &b,
            &["--service", "web=8080", "--collector", &url],
        )?;
    }
    agent::start(&mut lab, &lb, &["--collector", &url])?;
    let client_node = lab.client.clone();
    let stats = match o.lb {
        LbKind::Haproxy => Some(haproxy::start(&mut lab, false)?),
        LbKind::Nftables => {
            nft::start(&lab)?;
            None
        }
    };
    let vip = evenflow_tests::lab::vip(false);
    let client_ns = client_node.ns.clone();
    evenflow_tests::wait_for(Duration::from_secs(15), || {
        client::http_load(&client_ns, vip, 1, 1)
            .ok()
            .filter(|l| l.connections == 1)
    })
    .context("the load balancer did not answer on the VIP")?;
    let cli_s = cli.display().to_string();
    lab.spawn(
        &client_node,
        "alerts",
        &cli_s,
        &["alerts", "--watch", "--output", "json", "--collector", &url],
    )?;

    // Steady traffic: about 150 new connections per second.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, ns) = (stop.clone(), client_ns.clone());
        std::thread::spawn(move || {
            let mut total = client::Load::default();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if let Ok(l) = client::http_load(&ns, vip, 30, 3) {
                    total.add(&l);
                }
                std::thread::sleep(Duration::from_millis(200).saturating_sub(t.elapsed()));
            }
            total
        })
    };
    let mut tl = Timeline::new();
    tl.note(format!(
        "steady traffic: {} backends, roundrobin, ~150 conn/s",
        o.backends
    ));
    let names: Vec<String> = lab
        .backends
        .iter()
        .map(|b| format!("{}:8080", b.addr4))
        .collect();
    let kept: BTreeSet<String> = names[..o.kept].iter().cloned().collect();
    let starved: BTreeSet<String> = names[o.kept..].iter().cloned().collect();
    let mut alerts_seen = 0usize;
    let mut page_before_update = None;

    // Phase 1: balanced.
    watch(&lab, &cli, &mut tl, o.warmup, &mut alerts_seen, |_, a| {
        if page_before_update.is_none() && a["severity"] == "page" {
            page_before_update = Some(a["summary"].as_str().unwrap_or("").to_owned());
        }
    })?;

    if interrupt::interrupted() {
        stop.store(true, Ordering::Relaxed);
        let _ = load.join();
        drop(lab);
        bail!("interrupted; the lab was removed");
    }

    // Phase 2: the bad update.
    let update_at = match (o.lb, &stats) {
        (LbKind::Haproxy, Some(sock)) => {
            for b in &lab.backends[o.kept..] {
                haproxy::command(sock, &format!("disable server be/{}", b.role))?;
            }
            tl.note(format!(
                "LB UPDATE applied: HAProxy now routes only to {} ({} servers disabled)",
                kept.iter().cloned().collect::<Vec<_>>().join(", "),
                o.backends - o.kept
            ))
        }
        _ => {
            let map: Vec<String> = lab.backends[..o.kept]
                .iter()
                .enumerate()
                .map(|(i, b)| format!("{i} : {} . 8080", b.addr4))
                .collect();
            netns::exec(
                &lab.lb.ns,
                "nft",
                &["flush chain ip evenflow_lab prerouting"],
            )?;
            netns::exec(
                &lab.lb.ns,
                "nft",
                &[&format!(
                    "add rule ip evenflow_lab prerouting ip daddr {} tcp dport 80 dnat ip to numgen inc mod {} map {{ {} }}",
                    vip.ip(),
                    o.kept,
                    map.join(", ")
                )],
            )?;
            tl.note(format!(
                "LB UPDATE applied: DNAT now maps every connection to {}",
                kept.iter().cloned().collect::<Vec<_>>().join(", ")
            ))
        }
    };
    let mut zero_members: BTreeSet<String> = BTreeSet::new();
    let mut skew_members: BTreeSet<String> = BTreeSet::new();
    watch(
        &lab,
        &cli,
        &mut tl,
        o.incident,
        &mut alerts_seen,
        |pool, _| {
            if let Some(p) = pool {
                zero_members.extend(members_with(p, "ZERO"));
                skew_members.extend(members_with(p, "SKEW_HIGH"));
            }
        },
    )?;
    // `watch` stamps times through the timeline: recover them from it.
    let find = |prefix: &str| {
        tl.events
            .iter()
            .find(|(t, e)| *t >= update_at && e.starts_with(prefix))
            .map(|(t, _)| *t)
    };
    let first_alert_at = find("ALERT FIRED");
    let all_zero_at = find("ZERO for");

    if interrupt::interrupted() {
        stop.store(true, Ordering::Relaxed);
        let _ = load.join();
        drop(lab);
        bail!("interrupted; the lab was removed");
    }

    // Phase 3: rollback.
    match (o.lb, &stats) {
        (LbKind::Haproxy, Some(sock)) => {
            for b in &lab.backends[o.kept..] {
                haproxy::command(sock, &format!("enable server be/{}", b.role))?;
            }
        }
        _ => {
            netns::exec(&lab.lb.ns, "nft", &["flush ruleset ip"])?;
            nft::start(&lab)?;
        }
    }
    let rollback_at = tl.note("ROLLBACK applied: every backend back in rotation".into());
    let mut resolved_at = None;
    let deadline = Instant::now() + o.recovery;
    while Instant::now() < deadline && !interrupt::interrupted() {
        watch(
            &lab,
            &cli,
            &mut tl,
            Duration::from_secs(1),
            &mut alerts_seen,
            |_, _| {},
        )?;
        let open = open_alerts(&lab, &cli)?;
        if open == 0 && resolved_at.is_none() {
            resolved_at = Some(tl.note("RESOLVED: no open alerts".into()));
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let sent = load
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
    if interrupt::interrupted() {
        drop(lab);
        bail!("interrupted; the lab was removed");
    }

    // The verdict on the demo itself.
    let mut problems = Vec::new();
    if let Some(p) = &page_before_update {
        problems.push(format!("a page fired while traffic was balanced: {p}"));
    }
    let ttd = first_alert_at.map(|t| t - update_at);
    match ttd {
        Some(d) if d <= 10.0 => {}
        Some(d) => problems.push(format!(
            "first alert {d:.1}s after the update (want <= 10s)"
        )),
        None => problems.push("no alert after the update".into()),
    }
    if zero_members != starved {
        problems.push(format!(
            "ZERO members {:?}, starved backends {:?}",
            zero_members, starved
        ));
    }
    if all_zero_at.is_none_or(|t| t - update_at > 10.0) {
        problems.push("the starved backends were not all ZERO within 10s of the update".into());
    }
    if skew_members != kept {
        problems.push(format!(
            "SKEW members {skew_members:?}, backends that took the load {kept:?}"
        ));
    }
    match resolved_at {
        Some(t) if t - rollback_at <= 15.0 => {}
        Some(t) => problems.push(format!(
            "resolved {:.1}s after the rollback (want <= 15s)",
            t - rollback_at
        )),
        None => problems.push("alerts did not resolve after the rollback".into()),
    }
    let md = markdown(
        &tl,
        o,
        update_at,
        first_alert_at,
        all_zero_at,
        rollback_at,
        resolved_at,
        &starved,
        &kept,
        &sent,
        &problems,
    );
    let json = serde_json::json!({
        "update_at": update_at,
        "first_alert_at": first_alert_at,
        "all_zero_at": all_zero_at,
        "rollback_at": rollback_at,
        "resolved_at": resolved_at,
        "zero_members": zero_members,
        "skew_members": skew_members,
        "starved": starved,
        "kept": kept,
        "page_before_update": page_before_update,
        "problems": problems,
        "events": tl.events,
    });
    drop(lab);
    finish(o, &md, &json, &problems)
}

/// Writes the timeline (Markdown, and JSON when asked), prints it, and
/// fails when detection did not work as it should.
pub(crate) fn finish(o: &Options, md: &str, json: &Value, problems: &[String]) -> Result<()> {
    if let Some(dir) = o.timeline.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&o.timeline, md).with_context(|| format!("writing {}", o.timeline.display()))?;
    if let Some(p) = &o.timeline_json {
        std::fs::write(p, serde_json::to_string_pretty(json)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    println!("\n{md}");
    println!("timeline written to {}", o.timeline.display());
    if !problems.is_empty() {
        bail!(
            "detection did not work as it should: {}",
            problems.join("; ")
        );
    }
    Ok(())
}

fn members_with(pool: &Value, verdict: &str) -> BTreeSet<String> {
    pool["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["verdict"] == verdict)
        .filter_map(|m| m["member"].as_str().map(str::to_owned))
        .collect()
}

pub(crate) fn status(lab: &Lab, cli: &Path) -> Result<Value> {
    let out = netns::exec(
        &lab.client.ns,
        &cli.display().to_string(),
        &[
            "status",
            "--output",
            "json",
            "--collector",
            &collector_url(),
        ],
    )?;
    serde_json::from_str(&out).context("evenflow status --output json")
}

pub(crate) fn open_alerts(lab: &Lab, cli: &Path) -> Result<usize> {
    let out = netns::exec(
        &lab.client.ns,
        &cli.display().to_string(),
        &[
            "alerts",
            "--output",
            "json",
            "--collector",
            &collector_url(),
        ],
    )?;
    let v: Value = serde_json::from_str(&out).context("evenflow alerts --output json")?;
    Ok(v.as_array().map_or(0, Vec::len))
}

/// Shows the live view every second for `dur`, notes new alerts and the
/// moment every member of a verdict is reached, and calls `f` with the pool
/// and each new alert.
fn watch(
    lab: &Lab,
    cli: &Path,
    tl: &mut Timeline,
    dur: Duration,
    seen: &mut usize,
    mut f: impl FnMut(Option<&Value>, &Value),
) -> Result<()> {
    watch_pool(lab, cli, tl, "web", dur, seen, |tl, pool, alerts| {
        if let Some(p) = pool {
            print_view(tl.at(), p);
            let zs = members_with(p, "ZERO");
            if !zs.is_empty() && !tl.events.iter().any(|(_, e)| e.starts_with("ZERO for")) {
                tl.note(format!(
                    "ZERO for {}",
                    zs.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        for a in alerts {
            f(pool, a);
        }
        if let Some(p) = pool {
            f(Some(p), &Value::Null);
        }
        false
    })
}

/// Every second for up to `dur`: reads pool `name` with `evenflow status`
/// and the alerts `evenflow alerts --watch` printed since `seen` (noted on
/// the timeline), and hands both to `each`, which says when to stop early.
pub(crate) fn watch_pool(
    lab: &Lab,
    cli: &Path,
    tl: &mut Timeline,
    name: &str,
    dur: Duration,
    seen: &mut usize,
    mut each: impl FnMut(&mut Timeline, Option<&Value>, &[Value]) -> bool,
) -> Result<()> {
    let end = Instant::now() + dur;
    while Instant::now() < end && !interrupt::interrupted() {
        std::thread::sleep(Duration::from_secs(1));
        let pool = status(lab, cli).ok().and_then(|s| {
            s["pools"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == name)
                .cloned()
        });
        let alerts = new_alerts(lab, tl, seen);
        if each(tl, pool.as_ref(), &alerts) {
            break;
        }
    }
    Ok(())
}

/// The alerts `evenflow alerts --watch` printed since `seen`, each noted on
/// the timeline.
pub(crate) fn new_alerts(lab: &Lab, tl: &mut Timeline, seen: &mut usize) -> Vec<Value> {
    let log = lab.log("alerts");
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with('{')).collect();
    let mut out = Vec::new();
    for l in lines.iter().skip(*seen) {
        let Ok(a) = serde_json::from_str::<Value>(l) else {
            continue;
        };
        let resolved = !a["resolved_at"].is_null();
        let signal = a["signal"].as_str().filter(|s| *s != "-");
        tl.note(format!(
            "ALERT {} {} {} {} ({}{}): {}",
            if resolved { "RESOLVED" } else { "FIRED" },
            a["severity"].as_str().unwrap_or(""),
            a["kind"].as_str().unwrap_or(""),
            a["member"]
                .as_str()
                .filter(|m| !m.is_empty())
                .unwrap_or("pool"),
            a["view"].as_str().unwrap_or(""),
            signal.map_or(String::new(), |s| format!(
                ", {s}, {}",
                a["cause"].as_str().unwrap_or("-")
            )),
            a["summary"].as_str().unwrap_or("")
        ));
        out.push(a);
    }
    *seen = lines.len();
    out
}

/// A member's `share` as a bar `width` cells long, `|` where its
/// expected share `exp` falls.
pub fn bar(share: f64, exp: f64, width: u32) -> String {
    let width = f64::from(width);
    (0..width as u32)
        .map(|i| {
            let c = f64::from(i) / width;
            if (c - exp).abs() < 0.5 / width {
                '|'
            } else if c < share {
                '█'
            } else {
                '·'
            }
        })
        .collect()
}

fn print_view(t: f64, p: &Value) {
    println!(
        "── t={t:>5.1}s  pool {}  {}  {:.0} conn/s  effective members {:.1}/{:.1} ──",
        p["name"].as_str().unwrap_or(""),
        p["verdict"].as_str().unwrap_or(""),
        p["server_conns_per_sec"]
            .as_f64()
            .unwrap_or(0.0)
            .max(p["lb_conns_per_sec"].as_f64().unwrap_or(0.0)),
        p["effective_members"].as_f64().unwrap_or(0.0),
        p["expected_effective_members"].as_f64().unwrap_or(0.0)
    );
    for m in p["members"].as_array().into_iter().flatten() {
        let v = if m["server_view"].is_null() {
            &m["lb_view"]
        } else {
            &m["server_view"]
        };
        let share = v["observed_share"].as_f64().unwrap_or(0.0);
        let exp = v["expected_share"].as_f64().unwrap_or(0.0);
        let bar = bar(share, exp, 30);
        println!(
            "  {:<16} {bar} {:>5.1}% / {:>4.1}%  {:>6.1} conn/s  cpu {:>3.0}%  {}",
            m["member"].as_str().unwrap_or(""),
            share * 100.0,
            exp * 100.0,
            v["new_conns_per_sec"].as_f64().unwrap_or(0.0),
            m["cpu_utilization"].as_f64().unwrap_or(0.0) * 100.0,
            m["verdict"].as_str().unwrap_or("")
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn markdown(
    tl: &Timeline,
    o: &Options,
    update_at: f64,
    first_alert_at: Option<f64>,
    all_zero_at: Option<f64>,
    rollback_at: f64,
    resolved_at: Option<f64>,
    starved: &BTreeSet<String>,
    kept: &BTreeSet<String>,
    sent: &client::Load,
    problems: &[String],
) -> String {
    let wall = |t: f64| {
        humantime::format_rfc3339_seconds(tl.wall_start + Duration::from_secs_f64(t)).to_string()
    };
    let rel =
        |t: Option<f64>, base: f64| t.map_or("never".to_owned(), |t| format!("{:+.1}s", t - base));
    let mut md = format!(
        "# Incident timeline: pool `web` ({:?} load balancer, {} backends)\n\n\
         ## Summary\n\n\
         A load balancer update routed every connection to {} of {} backends ({}). \
         evenflow raised its first alert {} after the update and flagged the starved backends ({}) as ZERO {} after it. \
         The update was rolled back at {}; the alerts resolved {} later. The client made {} connections ({} failed).\n\n\
         ## Timeline\n\n",
        o.lb,
        o.backends,
        kept.len(),
        o.backends,
        kept.iter().cloned().collect::<Vec<_>>().join(", "),
        rel(first_alert_at, update_at),
        starved.iter().cloned().collect::<Vec<_>>().join(", "),
        rel(all_zero_at, update_at),
        wall(rollback_at),
        rel(resolved_at, rollback_at),
        sent.connections,
        sent.failures,
    );
    md.push_str(&tl.table());
    md.push_str("\n## Detection\n\n");
    if problems.is_empty() {
        md.push_str("Detection worked: no page while balanced, ZERO for exactly the starved backends, SKEW for the ones that took the load, resolution after the rollback.\n");
    } else {
        for p in problems {
            md.push_str(&format!("- PROBLEM: {p}\n"));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::bar;

    #[test]
    fn a_bar_fills_the_share_and_marks_the_expected_one() {
        assert_eq!(bar(0.5, 0.25, 20), "█████|████··········");
        assert_eq!(bar(0.0, 1.0 / 6.0, 30), "·····|························");
        assert_eq!(bar(1.0, 0.0, 4), "|███");
    }
}

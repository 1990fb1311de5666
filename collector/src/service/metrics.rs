//! Prometheus text exposition on `/metrics`, and `/pools/NAME` (the
//! webhook alerts' generatorURL) as plain text.

use std::{fmt::Write as _, sync::atomic::Ordering::Relaxed, time::Instant};

use evenflow_daemon::{
    exposition::{self, escape as esc},
    http::Page,
};
use evenflow_proto::v1;

use crate::service::engine::Shared;

/// The answer to an HTTP request for `path` (served by
/// [`evenflow_daemon::http::serve`]).
pub fn page(path: &str, shared: &Shared) -> Page {
    if path == "/metrics" {
        Page::ok(exposition::CONTENT_TYPE, render(shared))
    } else if let Some(name) = path.strip_prefix("/pools/") {
        let p = shared.published.borrow().clone();
        match p.pools.get(name) {
            Some(pool) => Page::ok("text/plain; charset=utf-8", pool_text(pool)),
            None => Page::not_found(format!("no pool {name:?}\n")),
        }
    } else if path == "/" {
        Page::ok(
            "text/plain",
            "evenflow-collector: see /metrics and /pools/NAME\n".to_owned(),
        )
    } else {
        Page::not_found("not found: try /metrics\n".to_owned())
    }
}

fn verdict_name(v: i32) -> &'static str {
    v1::Verdict::try_from(v).map_or("UNSPECIFIED", |v| {
        v.as_str_name().trim_start_matches("VERDICT_")
    })
}

/// "new_connections", "active_connections", "bytes", or "" when unset.
pub(crate) fn signal_name(s: i32) -> &'static str {
    match v1::Signal::try_from(s) {
        Ok(v1::Signal::NewConnections) => "new_connections",
        Ok(v1::Signal::ActiveConnections) => "active_connections",
        Ok(v1::Signal::Bytes) => "bytes",
        _ => "",
    }
}

/// "routing", "pinned", or "" when unset.
pub(crate) fn cause_name(c: i32) -> &'static str {
    match v1::Cause::try_from(c) {
        Ok(v1::Cause::Routing) => "routing",
        Ok(v1::Cause::Pinned) => "pinned",
        _ => "",
    }
}

fn pool_text(p: &v1::Pool) -> String {
    let mut s = format!(
        "pool {} tick {} verdict {} {}\neffective members {:.2} of {:.2}; open connections {} (server) {} (lb)\n",
        p.name,
        p.tick,
        verdict_name(p.verdict),
        p.reason,
        p.effective_members,
        p.expected_effective_members,
        p.server_active_connections,
        p.lb_active_connections
    );
    for m in &p.members {
        let _ = writeln!(
            s,
            "  {}:{} weight {} {} {} {}",
            m.address,
            m.port,
            m.weight,
            verdict_name(m.verdict),
            m.source,
            m.reason
        );
        if let Some(l) = &m.load
            && let Some(share) = &l.share
        {
            let _ = writeln!(
                s,
                "    load: {} {} {} {}",
                signal_name(l.signal),
                verdict_name(share.verdict),
                cause_name(share.cause),
                share.reason
            );
        }
    }
    s
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

/// Renders every metric.
pub fn render(shared: &Shared) -> String {
    let p = shared.published.borrow().clone();
    let members: usize = p.pools.values().map(|x| x.members.len()).sum();
    let mut out = String::with_capacity(4096 + members * 2048);

    // Ingest.
    let c = &shared.registry.counters;
    for (name, text, v) in [
        (
            "evenflow_collector_reports_total",
            "Agent reports processed.",
            c.reports.load(Relaxed),
        ),
        (
            "evenflow_collector_replays_ignored_total",
            "Agent reports ignored as replays of a processed (run, sequence).",
            c.replays.load(Relaxed),
        ),
        (
            "evenflow_collector_epoch_resets_total",
            "Agent counter resets (new epochs).",
            c.resets.load(Relaxed),
        ),
        (
            "evenflow_collector_invalid_reports_total",
            "Agent reports rejected as invalid.",
            c.invalid.load(Relaxed),
        ),
        (
            "evenflow_collector_endpoints_processed_total",
            "Endpoints in processed reports.",
            c.endpoints.load(Relaxed),
        ),
        (
            "evenflow_collector_ticks_total",
            "Detection ticks run.",
            shared.stats.ticks.load(Relaxed),
        ),
        (
            "evenflow_collector_tick_overruns_total",
            "Ticks skipped because a tick took longer than the interval.",
            shared.stats.overruns.load(Relaxed),
        ),
        (
            "evenflow_collector_alert_transitions_total",
            "Alert transitions (fired, updated, resolved).",
            shared.stats.transitions.load(Relaxed),
        ),
        (
            "evenflow_collector_webhook_delivered_total",
            "Webhook batches delivered.",
            shared.webhook_stats.delivered.load(Relaxed),
        ),
        (
            "evenflow_collector_webhook_failed_attempts_total",
            "Webhook delivery attempts that failed (each retry counts).",
            shared.webhook_stats.failed_attempts.load(Relaxed),
        ),
        (
            "evenflow_collector_webhook_abandoned_total",
            "Webhook batches given up after every retry.",
            shared.webhook_stats.abandoned.load(Relaxed),
        ),
        (
            "evenflow_collector_webhook_dropped_total",
            "Webhook batches dropped because the queue was full.",
            shared.webhook_stats.dropped.load(Relaxed),
        ),
    ] {
        help(&mut out, name, "counter", text);
        let _ = writeln!(out, "{name} {v}");
    }
    help(
        &mut out,
        "evenflow_collector_tick_seconds",
        "gauge",
        "Duration of the last detection tick.",
    );
    let _ = writeln!(
        out,
        "evenflow_collector_tick_seconds {}",
        shared.stats.last_tick_micros.load(Relaxed) as f64 / 1e6
    );

    // Agents.
    let now = Instant::now();
    let secs = shared.interval.as_secs_f64();
    let mut agents: Vec<v1::AgentStatus> = shared
        .registry
        .all()
        .iter()
        .map(|h| {
            h.lock()
                .unwrap_or_else(|e| e.into_inner())
                .status(now, secs)
        })
        .collect();
    agents.sort_by(|a, b| a.node_name.cmp(&b.node_name));
    help(
        &mut out,
        "evenflow_agent_last_seen_age_seconds",
        "gauge",
        "Seconds since the agent's last report reached the collector.",
    );
    for a in &agents {
        let _ = writeln!(
            out,
            "evenflow_agent_last_seen_age_seconds{{node=\"{}\"}} {}",
            esc(&a.node_name),
            a.age_seconds
        );
    }
    help(
        &mut out,
        "evenflow_agent_fresh",
        "gauge",
        "1 while the agent reported within three intervals.",
    );
    for a in &agents {
        let _ = writeln!(
            out,
            "evenflow_agent_fresh{{node=\"{}\"}} {}",
            esc(&a.node_name),
            u8::from(a.fresh)
        );
    }

    // Pools.
    help(
        &mut out,
        "evenflow_pool_effective_members_ratio",
        "gauge",
        "Effective members (1 / sum of squared shares) over what the weights give.",
    );
    for pool in p.pools.values() {
        let r = if pool.expected_effective_members > 0.0 {
            pool.effective_members / pool.expected_effective_members
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "evenflow_pool_effective_members_ratio{{pool=\"{}\"}} {r}",
            esc(&pool.name)
        );
    }
    help(
        &mut out,
        "evenflow_pool_members",
        "gauge",
        "Members per pool.",
    );
    for pool in p.pools.values() {
        let _ = writeln!(
            out,
            "evenflow_pool_members{{pool=\"{}\"}} {}",
            esc(&pool.name),
            pool.members.len()
        );
    }

    help(
        &mut out,
        "evenflow_pool_active_connections",
        "gauge",
        "Connections open now in the pool (eligible members), per view.",
    );
    for pool in p.pools.values() {
        for (view, n) in [
            ("server", pool.server_active_connections),
            ("lb", pool.lb_active_connections),
        ] {
            let _ = writeln!(
                out,
                "evenflow_pool_active_connections{{pool=\"{}\",view=\"{view}\"}} {n}",
                esc(&pool.name)
            );
        }
    }

    // Members, per view.
    type F = fn(&v1::MemberView) -> f64;
    let per_view: [(&str, &str, F); 10] = [
        (
            "evenflow_member_new_connections_per_second",
            "New connections per second over the last tick.",
            |v| v.new_conns_per_sec,
        ),
        (
            "evenflow_member_active_connections",
            "Connections open now.",
            |v| v.active_connections as f64,
        ),
        (
            "evenflow_member_received_bytes_per_second",
            "Payload bytes per second the member received.",
            |v| v.bytes_in_per_sec,
        ),
        (
            "evenflow_member_sent_bytes_per_second",
            "Payload bytes per second the member sent.",
            |v| v.bytes_out_per_sec,
        ),
        (
            "evenflow_member_observed_share",
            "The member's share of the pool's new connections (detector window).",
            |v| v.observed_share,
        ),
        (
            "evenflow_member_expected_share",
            "The share its weight gives it among eligible members.",
            |v| v.expected_share,
        ),
        (
            "evenflow_member_active_share",
            "The member's share of the pool's open connections now.",
            |v| v.active.as_ref().map_or(0.0, |l| l.observed_share),
        ),
        (
            "evenflow_member_bytes_share",
            "The member's share of the pool's bytes, both ways (bytes window).",
            |v| v.bytes.as_ref().map_or(0.0, |l| l.observed_share),
        ),
        (
            "evenflow_member_received_bytes_share",
            "The member's share of the bytes the pool's members received (bytes window).",
            |v| v.bytes_in_share,
        ),
        (
            "evenflow_member_sent_bytes_share",
            "The member's share of the bytes the pool's members sent (bytes window).",
            |v| v.bytes_out_share,
        ),
    ];
    let mut labels = Vec::with_capacity(members);
    for pool in p.pools.values() {
        for m in &pool.members {
            let l = format!(
                "pool=\"{}\",member=\"{}\"",
                esc(&pool.name),
                esc(&member_id(m))
            );
            labels.push((l, m));
        }
    }
    for (name, text, f) in per_view {
        help(&mut out, name, "gauge", text);
        for (l, m) in &labels {
            for (view, v) in [("server", &m.server_view), ("lb", &m.lb_view)] {
                if let Some(v) = v {
                    let _ = writeln!(out, "{name}{{{l},view=\"{view}\"}} {}", f(v));
                }
            }
        }
    }
    help(
        &mut out,
        "evenflow_member_verdict",
        "gauge",
        "1 for the member's current verdict in each view (label verdict).",
    );
    for (l, m) in &labels {
        for (view, v) in [("server", &m.server_view), ("lb", &m.lb_view)] {
            if let Some(v) = v {
                let _ = writeln!(
                    out,
                    "evenflow_member_verdict{{{l},view=\"{view}\",verdict=\"{}\"}} 1",
                    verdict_name(v.verdict)
                );
            }
        }
    }
    help(
        &mut out,
        "evenflow_member_load_verdict",
        "gauge",
        "1 for the member's load verdict per view and signal (active_connections, bytes), with its cause (routing, pinned) and severity (page, warning, none).",
    );
    for (l, m) in &labels {
        for (view, v) in [("server", &m.server_view), ("lb", &m.lb_view)] {
            let Some(v) = v else { continue };
            for (signal, share) in [("active_connections", &v.active), ("bytes", &v.bytes)] {
                let Some(share) = share else { continue };
                let finding = matches!(
                    v1::Verdict::try_from(share.verdict),
                    Ok(v1::Verdict::Zero | v1::Verdict::SkewLow | v1::Verdict::SkewHigh)
                );
                let severity = match (finding, share.page) {
                    (false, _) => "none",
                    (true, true) => "page",
                    (true, false) => "warning",
                };
                let _ = writeln!(
                    out,
                    "evenflow_member_load_verdict{{{l},view=\"{view}\",signal=\"{signal}\",verdict=\"{}\",cause=\"{}\",severity=\"{severity}\"}} 1",
                    verdict_name(share.verdict),
                    cause_name(share.cause)
                );
            }
        }
    }
    help(
        &mut out,
        "evenflow_member_reported_connections_total",
        "counter",
        "New connections to the member as its observers' counters report them (each since its agent's epoch: the kernels' totals).",
    );
    for (pool, rows) in &p.reported {
        let Some(members) = p.pools.get(pool).map(|x| &x.members) else {
            continue;
        };
        for (m, (server, lb)) in members.iter().zip(rows) {
            for (view, v) in [("server", server), ("lb", lb)] {
                if let Some(v) = v {
                    let _ = writeln!(
                        out,
                        "evenflow_member_reported_connections_total{{pool=\"{}\",member=\"{}\",view=\"{view}\"}} {v}",
                        esc(pool),
                        esc(&member_id(m))
                    );
                }
            }
        }
    }
    help(
        &mut out,
        "evenflow_member_cpu_utilization",
        "gauge",
        "CPU utilisation of the member's node, 0..1.",
    );
    for (l, m) in &labels {
        let _ = writeln!(
            out,
            "evenflow_member_cpu_utilization{{{l}}} {}",
            m.cpu_utilization
        );
    }
    help(
        &mut out,
        "evenflow_member_info",
        "gauge",
        "1 per member, labelled with its state, source and node, and in Kubernetes pools its Pod and zone (join on pool and member).",
    );
    for (l, m) in &labels {
        let state = v1::MemberState::try_from(m.state).map_or("serving", |s| match s {
            v1::MemberState::Draining => "draining",
            v1::MemberState::NotReady => "not_ready",
            _ => "serving",
        });
        let _ = writeln!(
            out,
            "evenflow_member_info{{{l},state=\"{state}\",source=\"{}\",node=\"{}\",pod=\"{}\",zone=\"{}\"}} 1",
            esc(&m.source),
            esc(&m.node_name),
            esc(&m.pod),
            esc(&m.zone)
        );
    }
    help(
        &mut out,
        "evenflow_alert_open",
        "gauge",
        "1 per open alert, by pool, member, kind, signal, cause, view and severity.",
    );
    for a in &p.open {
        let kind = v1::AlertKind::try_from(a.kind).map_or("UNSPECIFIED", |k| {
            k.as_str_name().trim_start_matches("ALERT_KIND_")
        });
        let view = match v1::View::try_from(a.view) {
            Ok(v1::View::Lb) => "lb",
            _ => "server",
        };
        let sev = match v1::Severity::try_from(a.severity) {
            Ok(v1::Severity::Page) => "page",
            _ => "warning",
        };
        let signal = signal_name(a.signal);
        let _ = writeln!(
            out,
            "evenflow_alert_open{{pool=\"{}\",member=\"{}\",kind=\"{kind}\",signal=\"{signal}\",cause=\"{}\",view=\"{view}\",severity=\"{sev}\"}} 1",
            esc(&a.pool),
            esc(&a.member),
            cause_name(a.cause)
        );
    }
    out
}

/// "address:port" ("[v6]:port" for IPv6).
pub fn member_id(m: &v1::Member) -> String {
    if m.address.contains(':') {
        format!("[{}]:{}", m.address, m.port)
    } else {
        format!("{}:{}", m.address, m.port)
    }
}

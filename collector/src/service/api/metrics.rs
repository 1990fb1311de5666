//! Prometheus text exposition on `/metrics`, and `/pools/NAME` (the
//! webhook alerts' generatorURL) as plain text.

use std::{fmt::Write as _, net::SocketAddr, sync::atomic::Ordering::Relaxed};

use evenflow_daemon::{
    exposition::{self, escape as esc},
    http::Page,
};
use evenflow_proto::v1;

use crate::service::{
    api::query::agent_statuses,
    publish::{
        Published,
        names::{alert_kind_name, cause_name, severity_name, signal_name, verdict_name, view_name},
    },
    shared::Shared,
};

/// The answer to an HTTP request for `path` (served by
/// [`evenflow_daemon::http::serve`]).
pub fn page(path: &str, shared: &Shared) -> Page {
    if path == "/metrics" {
        Page::ok(exposition::CONTENT_TYPE, render(shared))
    } else if let Some(name) = path.strip_prefix("/pools/") {
        let p = shared.published.borrow().clone();
        match p.pools.get(name) {
            Some(pool) => Page::ok("text/plain; charset=utf-8", pool_text(&pool.summary)),
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
    let published = shared.published.borrow().clone();
    let member_count: usize = published
        .pools
        .values()
        .map(|x| x.summary.members.len())
        .sum();
    let mut out = String::with_capacity(4096 + member_count * 2048);
    counters(&mut out, shared);
    agents(&mut out, shared);
    pools(&mut out, &published);
    let members: Vec<(String, &v1::Member)> = (published.pools.values())
        .map(|pool| &pool.summary)
        .flat_map(|pool| {
            pool.members.iter().map(|member| {
                let labels = format!(
                    "pool=\"{}\",member=\"{}\"",
                    esc(&pool.name),
                    esc(&member_id(member))
                );
                (labels, member)
            })
        })
        .collect();
    member_views(&mut out, &members);
    member_verdicts(&mut out, &members);
    member_load_verdicts(&mut out, &members);
    reported_connections(&mut out, &published);
    member_info(&mut out, &members);
    open_alerts(&mut out, &published);
    out
}

/// Ingest, tick and webhook counters, and the tick's duration.
fn counters(out: &mut String, shared: &Shared) {
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
            "evenflow_collector_agents_refused_total",
            "Report streams of new agents refused because the collector followed --max-agents already.",
            c.refused.load(Relaxed),
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
        (
            "evenflow_collector_pool_file_reloads_total",
            "Changes to the pool file read and put in place.",
            shared.pool_file.reloads.load(Relaxed),
        ),
        (
            "evenflow_collector_pool_file_reload_failures_total",
            "Changes to the pool file that could not be used (the pools it declared before stay).",
            shared.pool_file.failures.load(Relaxed),
        ),
        (
            "evenflow_collector_tls_reloads_total",
            "Changes to the TLS certificate, key or client CA files that new handshakes use.",
            shared.tls.reloads.load(Relaxed),
        ),
        (
            "evenflow_collector_tls_reload_failures_total",
            "Changes to the TLS files that could not be used (the certificate in use stays).",
            shared.tls.failures.load(Relaxed),
        ),
    ] {
        help(out, name, "counter", text);
        let _ = writeln!(out, "{name} {v}");
    }
    help(
        out,
        "evenflow_collector_pool_file_last_reload_successful",
        "gauge",
        "Whether the last change to the pool file was put in place (1 before any change).",
    );
    let _ = writeln!(
        out,
        "evenflow_collector_pool_file_last_reload_successful {}",
        u8::from(shared.pool_file.last_ok.load(Relaxed))
    );
    for (name, text, v) in [
        (
            "evenflow_collector_agents",
            "Agents the collector follows (reported within --agent-retention).",
            shared.registry.len(),
        ),
        (
            "evenflow_collector_max_agents",
            "Agents the collector follows at most (--max-agents).",
            shared.registry.max(),
        ),
    ] {
        help(out, name, "gauge", text);
        let _ = writeln!(out, "{name} {v}");
    }
    help(
        out,
        "evenflow_collector_tick_seconds",
        "gauge",
        "Duration of the last detection tick.",
    );
    let _ = writeln!(
        out,
        "evenflow_collector_tick_seconds {}",
        shared.stats.last_tick_micros.load(Relaxed) as f64 / 1e6
    );
}

/// Each agent's age and freshness.
fn agents(out: &mut String, shared: &Shared) {
    let agents = agent_statuses(shared);
    help(
        out,
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
        out,
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
    help(
        out,
        "evenflow_agent_uncounted_total",
        "counter",
        "What the agent's datapath could not count, by kind, since its epoch (as its last report \
         said): while one grows, the views its node feeds stand on incomplete counts. The \
         agent's own /metrics splits the insert failures by cause.",
    );
    for a in &agents {
        let Some(d) = &a.datapath else { continue };
        for (kind, n) in evenflow_proto::names::uncounted(d) {
            let _ = writeln!(
                out,
                "evenflow_agent_uncounted_total{{node=\"{}\",kind=\"{kind}\"}} {n}",
                esc(&a.node_name),
            );
        }
    }
}

/// Per pool: effective members, members, open connections.
fn pools(out: &mut String, published: &Published) {
    let p = published;
    help(
        out,
        "evenflow_pool_effective_members_ratio",
        "gauge",
        "Effective members (1 / sum of squared shares) over what the weights give.",
    );
    for pool in p.pools.values().map(|pool| &pool.summary) {
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
        out,
        "evenflow_pool_lb_view_dark",
        "gauge",
        "1 while the load balancers' view sees no connection and the members see traffic (direct server return, XDP, offloaded flows, or clients bypassing the balancer).",
    );
    for pool in p.pools.values().map(|pool| &pool.summary) {
        let _ = writeln!(
            out,
            "evenflow_pool_lb_view_dark{{pool=\"{}\"}} {}",
            esc(&pool.name),
            u8::from(pool.lb_view_dark)
        );
    }
    help(out, "evenflow_pool_members", "gauge", "Members per pool.");
    for pool in p.pools.values().map(|pool| &pool.summary) {
        let _ = writeln!(
            out,
            "evenflow_pool_members{{pool=\"{}\"}} {}",
            esc(&pool.name),
            pool.members.len()
        );
    }

    help(
        out,
        "evenflow_pool_active_connections",
        "gauge",
        "Connections open now in the pool (eligible members), per view.",
    );
    for pool in p.pools.values().map(|pool| &pool.summary) {
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
}

/// Per member and view: rates, open connections and shares.
fn member_views(out: &mut String, members: &[(String, &v1::Member)]) {
    type F = fn(&v1::MemberView) -> f64;
    let per_view: [(&str, &str, F); 11] = [
        (
            "evenflow_member_new_connections_per_second",
            "New connections per second over the last tick.",
            |v| v.new_conns_per_sec,
        ),
        (
            "evenflow_member_failed_connections_per_second",
            "Connection attempts per second over the last tick that never opened (LB view: refused, unanswered or abandoned).",
            |v| v.failed_conns_per_sec,
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
    for (name, text, f) in per_view {
        help(out, name, "gauge", text);
        for (labels, member) in members {
            for (view, v) in [("server", &member.server_view), ("lb", &member.lb_view)] {
                if let Some(v) = v {
                    let _ = writeln!(out, "{name}{{{labels},view=\"{view}\"}} {}", f(v));
                }
            }
        }
    }
}

/// Per member and view: its verdict.
fn member_verdicts(out: &mut String, members: &[(String, &v1::Member)]) {
    help(
        out,
        "evenflow_member_verdict",
        "gauge",
        "1 for the member's current verdict in each view (label verdict).",
    );
    for (labels, member) in members {
        for (view, v) in [("server", &member.server_view), ("lb", &member.lb_view)] {
            if let Some(v) = v {
                let _ = writeln!(
                    out,
                    "evenflow_member_verdict{{{labels},view=\"{view}\",verdict=\"{}\"}} 1",
                    verdict_name(v.verdict)
                );
            }
        }
    }
}

/// Per member, view and load signal: its load verdict, cause and
/// severity.
fn member_load_verdicts(out: &mut String, members: &[(String, &v1::Member)]) {
    help(
        out,
        "evenflow_member_load_verdict",
        "gauge",
        "1 for the member's load verdict per view and signal (active_connections, bytes), with its cause (routing, pinned) and severity (page, warning, none).",
    );
    for (labels, member) in members {
        for (view, v) in [("server", &member.server_view), ("lb", &member.lb_view)] {
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
                    "evenflow_member_load_verdict{{{labels},view=\"{view}\",signal=\"{signal}\",verdict=\"{}\",cause=\"{}\",severity=\"{severity}\"}} 1",
                    verdict_name(share.verdict),
                    cause_name(share.cause)
                );
            }
        }
    }
}

/// Per member and view: new connections as the agents' counters report
/// them.
fn reported_connections(out: &mut String, published: &Published) {
    help(
        out,
        "evenflow_member_reported_connections_total",
        "counter",
        "New connections to the member as its observers' counters report them (each since its agent's epoch: the kernels' totals; a stale agent's last figure stays in, so a restarting agent does not read as a reset).",
    );
    let failed = "evenflow_member_reported_failed_connections_total";
    let mut failed_lines = String::new();
    for (pool, totals) in &published.reported {
        let Some(members) = published.pools.get(pool).map(|x| &x.summary.members) else {
            continue;
        };
        for member in members {
            let Some(t) = member_addr(member).and_then(|addr| totals.get(&addr)) else {
                continue;
            };
            let labels = format!(
                "pool=\"{}\",member=\"{}\"",
                esc(pool),
                esc(&member_id(member))
            );
            for (view, v) in [("server", t.server), ("lb", t.lb)] {
                if let Some(v) = v {
                    let _ = writeln!(
                        out,
                        "evenflow_member_reported_connections_total{{{labels},view=\"{view}\"}} {v}"
                    );
                }
            }
            if let Some(v) = t.lb_failed {
                let _ = writeln!(failed_lines, "{failed}{{{labels},view=\"lb\"}} {v}");
            }
        }
    }
    help(
        out,
        failed,
        "counter",
        "Connection attempts to the member that never opened (refused, unanswered or abandoned), as its load balancers' counters report them (where the SYN left: the LB view only; each since its agent's epoch).",
    );
    out.push_str(&failed_lines);
}

/// Per member: its node's CPU, its weights and what it is (state,
/// source, node, Pod, zone).
fn member_info(out: &mut String, members: &[(String, &v1::Member)]) {
    help(
        out,
        "evenflow_member_cpu_utilization",
        "gauge",
        "CPU utilisation of the member's node, 0..1.",
    );
    for (labels, member) in members {
        let _ = writeln!(
            out,
            "evenflow_member_cpu_utilization{{{labels}}} {}",
            member.cpu_utilization
        );
    }
    help(
        out,
        "evenflow_member_weight",
        "gauge",
        "The member's declared weight.",
    );
    for (labels, member) in members {
        let _ = writeln!(out, "evenflow_member_weight{{{labels}}} {}", member.weight);
    }
    help(
        out,
        "evenflow_member_judged_weight",
        "gauge",
        "The weight the member is judged against: its previous weight while the balancer has not yet followed a change, else its declared weight.",
    );
    for (labels, member) in members {
        let judged = match member.judged_weight > 0.0 {
            true => member.judged_weight,
            false => member.weight,
        };
        let _ = writeln!(out, "evenflow_member_judged_weight{{{labels}}} {judged}");
    }
    help(
        out,
        "evenflow_member_info",
        "gauge",
        "1 per member, labelled with its state, source and node, and in Kubernetes pools its Pod and zone (join on pool and member).",
    );
    for (labels, member) in members {
        let state = v1::MemberState::try_from(member.state).map_or("serving", |s| match s {
            v1::MemberState::Draining => "draining",
            v1::MemberState::NotReady => "not_ready",
            _ => "serving",
        });
        let _ = writeln!(
            out,
            "evenflow_member_info{{{labels},state=\"{state}\",source=\"{}\",node=\"{}\",pod=\"{}\",zone=\"{}\"}} 1",
            esc(&member.source),
            esc(&member.node_name),
            esc(&member.pod),
            esc(&member.zone)
        );
    }
}

/// One line per open alert.
fn open_alerts(out: &mut String, published: &Published) {
    help(
        out,
        "evenflow_alert_open",
        "gauge",
        "1 per open alert, by pool, member, kind, signal, cause, view and severity.",
    );
    for a in &published.open {
        let kind = alert_kind_name(a.kind);
        let view = view_name(a.view);
        let sev = severity_name(a.severity);
        let signal = signal_name(a.signal);
        let _ = writeln!(
            out,
            "evenflow_alert_open{{pool=\"{}\",member=\"{}\",kind=\"{kind}\",signal=\"{signal}\",cause=\"{}\",view=\"{view}\",severity=\"{sev}\"}} 1",
            esc(&a.pool),
            esc(&a.member),
            cause_name(a.cause)
        );
    }
}

/// A member's address and port, when its address is an IP address.
fn member_addr(member: &v1::Member) -> Option<SocketAddr> {
    let ip = member.address.parse().ok()?;
    Some(SocketAddr::new(ip, u16::try_from(member.port).ok()?))
}

/// "address:port" (`[v6]:port` for IPv6).
pub fn member_id(m: &v1::Member) -> String {
    if m.address.contains(':') {
        format!("[{}]:{}", m.address, m.port)
    } else {
        format!("{}:{}", m.address, m.port)
    }
}

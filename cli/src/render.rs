//! Text and JSON renderings shared by every command.

use std::fmt::Write as _;

use evenflow_proto::{names, v1};
use serde_json::{Value, json};

/// Short upper-case name of a verdict, as people say it: the API's names
/// but for NO_DATA, which a person reads as "STALE" (the alert it raises).
pub fn verdict(v: i32) -> &'static str {
    match v1::Verdict::try_from(v) {
        Ok(v1::Verdict::Ok) => "OK",
        Ok(v1::Verdict::Zero) => "ZERO",
        Ok(v1::Verdict::SkewLow) => "SKEW_LOW",
        Ok(v1::Verdict::SkewHigh) => "SKEW_HIGH",
        Ok(v1::Verdict::NoData) => "STALE",
        Ok(v1::Verdict::Hot) => "HOT",
        Ok(v1::Verdict::Mismatch) => "MISMATCH",
        Ok(v1::Verdict::DrainingViolation) => "DRAINING_VIOLATION",
        Ok(v1::Verdict::InsufficientTraffic) => "INSUFFICIENT_TRAFFIC",
        Ok(v1::Verdict::Concentration) => "CONCENTRATION",
        Ok(v1::Verdict::Settling) => "SETTLING",
        Ok(v1::Verdict::Down) => "DOWN",
        Ok(v1::Verdict::Failing) => "FAILING",
        _ => "-",
    }
}

pub fn member_state(s: i32) -> &'static str {
    match v1::MemberState::try_from(s) {
        Ok(v1::MemberState::Draining) => "draining",
        Ok(v1::MemberState::NotReady) => "not-ready",
        _ => "serving",
    }
}

/// The names below are the API's (`evenflow_proto::names`, as the
/// collector's /metrics and webhooks spell them), with "-" for a value the
/// message leaves unset.
fn or_dash(set: bool, name: &'static str) -> &'static str {
    if set && !name.is_empty() && name != "UNSPECIFIED" {
        name
    } else {
        "-"
    }
}

/// "ZERO", "DRAINING_VIOLATION", ...
pub fn alert_kind(kind: i32) -> &'static str {
    or_dash(kind != 0, names::alert_kind_name(kind))
}

/// What a verdict or alert is about: "new_connections",
/// "active_connections", "bytes".
pub fn signal(signal: i32) -> &'static str {
    or_dash(signal != 0, names::signal_name(signal))
}

/// "routing", "pinned" or "refusing".
pub fn cause(cause: i32) -> &'static str {
    or_dash(cause != 0, names::cause_name(cause))
}

/// A member's worst load finding in a few words: "ZERO! conns pinned"
/// (`!`: it pages), "LOW bytes routing", "HIGH conns pinned"; "-" when none.
pub fn load_word(m: &v1::Member) -> String {
    match m
        .load
        .as_ref()
        .and_then(|l| l.share.as_ref().map(|s| (l, s)))
    {
        Some((l, s)) => format!(
            "{}{} {} {}",
            match v1::Verdict::try_from(s.verdict) {
                Ok(v1::Verdict::SkewLow) => "LOW",
                Ok(v1::Verdict::SkewHigh) => "HIGH",
                _ => verdict(s.verdict),
            },
            if s.page { "!" } else { "" },
            match v1::Signal::try_from(l.signal) {
                Ok(v1::Signal::Bytes) => "bytes",
                _ => "conns",
            },
            cause(s.cause)
        ),
        None => "-".into(),
    }
}

/// A load share's observed fraction (0 when absent).
pub fn load_share(s: &Option<v1::LoadShare>) -> f64 {
    s.as_ref().map_or(0.0, |s| s.observed_share)
}

/// "server" or "lb".
pub fn view(view: i32) -> &'static str {
    or_dash(view != 0, names::view_name(view))
}

/// "page" or "warning".
pub fn severity(severity: i32) -> &'static str {
    or_dash(severity != 0, names::severity_name(severity))
}

/// `address:port`, bracketing IPv6.
pub fn member_name(m: &v1::Member) -> String {
    if m.address.contains(':') {
        format!("[{}]:{}", m.address, m.port)
    } else {
        format!("{}:{}", m.address, m.port)
    }
}

/// The view to show a member's numbers from: the server's own when fresh,
/// else the load balancers'.
pub fn main_view(m: &v1::Member) -> v1::MemberView {
    match (&m.server_view, &m.lb_view) {
        (Some(s), _) if s.fresh => s.clone(),
        (_, Some(l)) if l.fresh => l.clone(),
        (Some(s), _) => s.clone(),
        (_, Some(l)) => l.clone(),
        _ => v1::MemberView::default(),
    }
}

/// A time in RFC 3339 ("2026-12-01T10:00:00Z"; before 1970 as 1970), or,
/// past what it can write (year 9999), "unix time SECONDS"; "" when unset.
fn ts(t: &Option<prost_types::Timestamp>) -> String {
    let Some(t) = t else {
        return String::new();
    };
    rfc3339(t).unwrap_or_else(|| format!("unix time {}", t.seconds))
}

/// `t` in RFC 3339 to the second, if it has four-digit years.
fn rfc3339(t: &prost_types::Timestamp) -> Option<String> {
    let st = std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(
        t.seconds.max(0).unsigned_abs(),
        t.nanos.clamp(0, 999_999_999).unsigned_abs(),
    ))?;
    // Its Display fails from year 10000 on: to_string() would panic.
    let mut out = String::new();
    write!(out, "{}", humantime::format_rfc3339_seconds(st)).ok()?;
    Some(out)
}

pub fn status_text(agents: &[v1::AgentStatus], pools: &[v1::Pool]) -> String {
    let mut out = String::new();
    let fresh = agents.iter().filter(|a| a.fresh).count();
    let _ = writeln!(out, "AGENTS  {fresh}/{} fresh", agents.len());
    for a in agents {
        let _ = writeln!(
            out,
            "  {:<24} {:<6} last report {:>5.1}s ago  {:>5} endpoints{}",
            a.node_name,
            if a.fresh { "fresh" } else { "STALE" },
            a.age_seconds,
            a.endpoints,
            uncounted_text(a)
        );
    }
    let _ = writeln!(out, "\nPOOLS   {}", pools.len());
    for p in pools {
        out.push_str(&pool_text(p));
    }
    out
}

/// "  UNCOUNTED flow_insert_failed 7, ..." for an agent whose datapath
/// could not count something; empty otherwise.
fn uncounted_text(a: &v1::AgentStatus) -> String {
    let Some(d) = &a.datapath else {
        return String::new();
    };
    let lost: Vec<String> = evenflow_proto::names::uncounted(d)
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    if lost.is_empty() {
        String::new()
    } else {
        format!("  UNCOUNTED {}", lost.join(", "))
    }
}

pub fn pool_text(p: &v1::Pool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {}  {}  {:.1} conn/s  {} open  effective members {:.1} of {:.1}{}",
        crate::names::title(p),
        verdict(p.verdict),
        p.server_conns_per_sec.max(p.lb_conns_per_sec),
        p.server_active_connections.max(p.lb_active_connections),
        p.effective_members,
        p.expected_effective_members,
        if p.reason.is_empty() {
            String::new()
        } else {
            format!("  ({})", p.reason)
        }
    );
    if p.kubernetes.is_some() {
        let _ = writeln!(out, "    pool {}", p.name);
    }
    // Kubernetes members are known by their Pods.
    let pods = p.members.iter().map(|m| m.pod.len()).max().unwrap_or(0);
    let pod_col = if pods > 0 { pods.max(3) + 1 } else { 0 };
    let _ = writeln!(
        out,
        "    {:<24} {:<pod_col$}{:<9} {:>8} {:>7} {:>8} {:>8} {:>6} {:>8} {:>8} {:>5}  {:<20} {:<22} REASON",
        "MEMBER",
        if pods > 0 { "POD" } else { "" },
        "STATE",
        "CONN/S",
        "FAIL/S",
        "SHARE",
        "EXPECT",
        "OPEN",
        "OPEN%",
        "BYTES%",
        "CPU",
        "VERDICT",
        "LOAD"
    );
    for m in &p.members {
        let v = main_view(m);
        let load_reason = m
            .load
            .as_ref()
            .and_then(|l| l.share.as_ref())
            .map(|s| format!("; load: {}", s.reason))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    {:<24} {:<pod_col$}{:<9} {:>8.1} {:>7.1} {:>7.1}% {:>7.1}% {:>6} {:>7.1}% {:>7.1}% {:>4.0}%  {:<20} {:<22} {}{}",
            member_name(m),
            m.pod,
            member_state(m.state),
            v.new_conns_per_sec,
            m.lb_view.as_ref().map_or(0.0, |l| l.failed_conns_per_sec),
            v.observed_share * 100.0,
            v.expected_share * 100.0,
            v.active_connections,
            load_share(&v.active) * 100.0,
            load_share(&v.bytes) * 100.0,
            m.cpu_utilization * 100.0,
            verdict(m.verdict),
            load_word(m),
            m.reason,
            load_reason
        );
    }
    out
}

pub fn alert_text(a: &v1::Alert) -> String {
    format!(
        "{} {:<8} {:<14} pool={} member={} signal={} cause={} view={} observed={:.3} expected={:.3} since={} {}{}",
        if a.resolved_at.is_some() {
            "RESOLVED"
        } else {
            "FIRING  "
        },
        severity(a.severity),
        alert_kind(a.kind),
        a.pool,
        if a.member.is_empty() {
            "-".to_owned()
        } else if a.pod.is_empty() {
            a.member.clone()
        } else {
            format!("{}({})", a.member, a.pod)
        },
        signal(a.signal),
        cause(a.cause),
        view(a.view),
        a.observed,
        a.expected,
        ts(&a.since),
        a.summary,
        if a.resolved_at.is_some() {
            format!(" resolved={}", ts(&a.resolved_at))
        } else {
            String::new()
        }
    )
}

fn load_share_json(s: &Option<v1::LoadShare>) -> Value {
    match s {
        None => Value::Null,
        Some(s) => json!({
            "observed_share": s.observed_share,
            "expected_share": s.expected_share,
            "verdict": verdict(s.verdict),
            "page": s.page,
            "cause": cause(s.cause),
            "reason": s.reason,
        }),
    }
}

fn member_view_json(v: &Option<v1::MemberView>) -> Value {
    match v {
        None => Value::Null,
        Some(v) => json!({
            "fresh": v.fresh,
            "new_conns_per_sec": v.new_conns_per_sec,
            "active_connections": v.active_connections,
            "bytes_in_per_sec": v.bytes_in_per_sec,
            "bytes_out_per_sec": v.bytes_out_per_sec,
            "observed_share": v.observed_share,
            "expected_share": v.expected_share,
            "verdict": verdict(v.verdict),
            "reason": v.reason,
            "conns_total": v.conns_total,
            "active": load_share_json(&v.active),
            "bytes": load_share_json(&v.bytes),
            "bytes_in_share": v.bytes_in_share,
            "bytes_out_share": v.bytes_out_share,
            "failed_conns_per_sec": v.failed_conns_per_sec,
            "failed_conns_total": v.failed_conns_total,
        }),
    }
}

pub fn pool_json(p: &v1::Pool) -> Value {
    json!({
        "name": p.name,
        "verdict": verdict(p.verdict),
        "reason": p.reason,
        "effective_members": p.effective_members,
        "expected_effective_members": p.expected_effective_members,
        "server_conns_per_sec": p.server_conns_per_sec,
        "lb_conns_per_sec": p.lb_conns_per_sec,
        "server_active_connections": p.server_active_connections,
        "lb_active_connections": p.lb_active_connections,
        "lb_nodes": p.lb_nodes,
        "kubernetes": p.kubernetes.as_ref().map(|k| json!({
            "namespace": k.namespace,
            "service": k.service,
            "port_name": k.port_name,
            "port": k.port,
            "cluster_ips": k.cluster_ips,
            "zone": k.zone,
            "node": k.node,
        })),
        "tick": p.tick,
        "evaluated_at": ts(&p.evaluated_at),
        "members": p.members.iter().map(|m| json!({
            "member": member_name(m),
            "address": m.address,
            "port": m.port,
            "weight": m.weight,
            "state": member_state(m.state),
            "node": m.node_name,
            "cpu_utilization": m.cpu_utilization,
            "verdict": verdict(m.verdict),
            "reason": m.reason,
            "source": m.source,
            "pod": m.pod,
            "zone": m.zone,
            "server_view": member_view_json(&m.server_view),
            "lb_view": member_view_json(&m.lb_view),
            "load": m.load.as_ref().map_or(Value::Null, |l| json!({
                "signal": signal(l.signal),
                "view": view(l.view),
                "share": load_share_json(&l.share),
            })),
        })).collect::<Vec<_>>(),
    })
}

pub fn agent_json(a: &v1::AgentStatus) -> Value {
    json!({
        "node": a.node_name,
        "epoch": a.agent_epoch,
        "run": a.agent_run,
        "last_sequence": a.last_sequence,
        "last_report_at": ts(&a.last_report_at),
        "age_seconds": a.age_seconds,
        "fresh": a.fresh,
        "endpoints": a.endpoints,
        "resets": a.resets,
        "replays_ignored": a.replays_ignored,
        "version": a.agent_version,
        "uncounted": a.datapath.as_ref().map(|d| {
            evenflow_proto::names::uncounted(d)
                .iter()
                .map(|&(kind, n)| (kind.to_owned(), json!(n)))
                .collect::<serde_json::Map<_, _>>()
        }),
    })
}

pub fn alert_json(a: &v1::Alert) -> Value {
    json!({
        "id": a.id,
        "pool": a.pool,
        "member": a.member,
        "pod": a.pod,
        "kind": alert_kind(a.kind),
        "signal": signal(a.signal),
        "cause": cause(a.cause),
        "view": view(a.view),
        "severity": severity(a.severity),
        "observed": a.observed,
        "expected": a.expected,
        "since": ts(&a.since),
        "summary": a.summary,
        "evidence": a.evidence,
        "resolved_at": if a.resolved_at.is_some() { Value::String(ts(&a.resolved_at)) } else { Value::Null },
        "flaps": a.flaps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(addr: &str, share: f64, v: v1::Verdict) -> v1::Member {
        v1::Member {
            address: addr.into(),
            port: 8080,
            weight: 1.0,
            state: v1::MemberState::Serving as i32,
            server_view: Some(v1::MemberView {
                fresh: true,
                observed_share: share,
                expected_share: 0.5,
                verdict: v as i32,
                ..Default::default()
            }),
            verdict: v as i32,
            ..Default::default()
        }
    }

    #[test]
    fn status_names_what_an_agent_could_not_count() {
        let agent = |node: &str, flows_lost: u64| v1::AgentStatus {
            node_name: node.into(),
            fresh: true,
            datapath: Some(v1::DatapathStats {
                flow_insert_failed: flows_lost,
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = status_text(&[agent("lb", 7), agent("b1", 0)], &[]);
        let line = |node: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(node))
                .unwrap_or_default()
                .to_owned()
        };
        assert!(
            line("lb").ends_with("UNCOUNTED flow_insert_failed 7"),
            "{text}"
        );
        assert!(!line("b1").contains("UNCOUNTED"), "{text}");
        assert_eq!(
            agent_json(&agent("lb", 7))["uncounted"]["flow_insert_failed"],
            7
        );
    }

    #[test]
    fn pool_text_lists_every_member_with_its_verdict() {
        let p = v1::Pool {
            name: "web".into(),
            members: vec![
                member("10.0.0.1", 1.0, v1::Verdict::SkewHigh),
                member("fd00::2", 0.0, v1::Verdict::Zero),
            ],
            ..Default::default()
        };
        let t = pool_text(&p);
        assert!(
            t.contains("10.0.0.1:8080") && t.contains("SKEW_HIGH"),
            "{t}"
        );
        assert!(t.contains("[fd00::2]:8080") && t.contains("ZERO"), "{t}");
        let j = pool_json(&p);
        assert_eq!(j["members"][1]["verdict"], "ZERO");
        assert_eq!(j["members"][0]["server_view"]["observed_share"], 1.0);
    }

    #[test]
    fn pool_text_shows_the_attempts_that_fail() {
        let mut refusing = member("10.0.0.3", 0.0, v1::Verdict::Zero);
        refusing.lb_view = Some(v1::MemberView {
            failed_conns_per_sec: 12.5,
            failed_conns_total: 250,
            ..Default::default()
        });
        let p = v1::Pool {
            name: "web".into(),
            members: vec![member("10.0.0.1", 1.0, v1::Verdict::Ok), refusing],
            ..Default::default()
        };
        let t = pool_text(&p);
        let column = |line: &str| {
            let header = t.lines().find(|l| l.contains("FAIL/S")).unwrap_or_default();
            let at = header.find("FAIL/S").unwrap_or_default() + "FAIL/S".len();
            line.get(at.saturating_sub(7)..at)
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let row = |addr: &str| t.lines().find(|l| l.contains(addr)).unwrap_or_default();
        assert_eq!(column(row("10.0.0.3:8080")), "12.5", "{t}");
        assert_eq!(column(row("10.0.0.1:8080")), "0.0", "{t}");
        let j = pool_json(&p);
        assert_eq!(j["members"][1]["lb_view"]["failed_conns_total"], 250);
    }

    #[test]
    fn load_findings_show_signal_and_cause() {
        let mut m = member("10.0.0.3", 0.33, v1::Verdict::Ok);
        m.load = Some(v1::LoadFinding {
            signal: v1::Signal::ActiveConnections as i32,
            view: v1::View::Server as i32,
            share: Some(v1::LoadShare {
                observed_share: 0.0,
                expected_share: 0.33,
                verdict: v1::Verdict::Zero as i32,
                page: true,
                cause: v1::Cause::Pinned as i32,
                reason: "0 of 90 open connections".into(),
            }),
        });
        let p = v1::Pool {
            name: "grpc".into(),
            members: vec![m],
            ..Default::default()
        };
        let t = pool_text(&p);
        assert!(t.contains("ZERO! conns pinned"), "{t}");
        assert!(t.contains("load: 0 of 90 open connections"), "{t}");
        let j = pool_json(&p);
        assert_eq!(j["members"][0]["load"]["signal"], "active_connections");
        assert_eq!(j["members"][0]["load"]["share"]["cause"], "pinned");
        let a = v1::Alert {
            kind: v1::AlertKind::Zero as i32,
            signal: v1::Signal::ActiveConnections as i32,
            cause: v1::Cause::Pinned as i32,
            ..Default::default()
        };
        assert!(alert_text(&a).contains("signal=active_connections cause=pinned"));
        assert_eq!(alert_json(&a)["cause"], "pinned");
    }

    #[test]
    fn kubernetes_pools_show_their_service_and_pods() {
        let mut ready = member("10.244.0.2", 1.0, v1::Verdict::Ok);
        ready.pod = "default/web-7d9f-abcde".into();
        let mut not_ready = member("10.244.0.3", 0.0, v1::Verdict::Unspecified);
        not_ready.pod = "default/web-7d9f-fghij".into();
        not_ready.state = v1::MemberState::NotReady as i32;
        let p = v1::Pool {
            name: "default/web:http".into(),
            members: vec![ready, not_ready],
            kubernetes: Some(v1::KubernetesService {
                namespace: "default".into(),
                service: "web".into(),
                port_name: "http".into(),
                port: 80,
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = pool_text(&p);
        assert!(
            t.contains("web · Service default/web port http (80)"),
            "{t}"
        );
        assert!(t.contains("default/web-7d9f-abcde"), "{t}");
        assert!(t.contains("not-ready"), "{t}");
        assert_eq!(pool_json(&p)["kubernetes"]["service"], "web");
        assert_eq!(pool_json(&p)["members"][0]["pod"], "default/web-7d9f-abcde");
    }

    /// RFC 3339 has four-digit years: a time from year 10000 on (an
    /// agent's clock or a report's field gone wrong) is shown as seconds
    /// since the epoch, and nothing panics on it.
    #[test]
    fn times_past_year_9999_render_as_seconds() {
        let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
        assert_eq!(ts(&at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(ts(&at(253_402_300_799)), "9999-12-31T23:59:59Z");
        assert_eq!(ts(&at(253_402_300_800)), "unix time 253402300800");
        assert_eq!(ts(&at(i64::MAX)), format!("unix time {}", i64::MAX));
        let a = v1::Alert {
            since: at(253_402_300_800),
            resolved_at: at(i64::MAX),
            ..Default::default()
        };
        assert!(
            alert_text(&a).contains("since=unix time 253402300800"),
            "{}",
            alert_text(&a)
        );
        assert_eq!(
            alert_json(&a)["resolved_at"],
            format!("unix time {}", i64::MAX)
        );
        let agent = v1::AgentStatus {
            last_report_at: at(253_402_300_800),
            ..Default::default()
        };
        assert_eq!(
            agent_json(&agent)["last_report_at"],
            "unix time 253402300800"
        );
    }

    #[test]
    fn verdicts_are_named_as_people_say_them() {
        assert_eq!(verdict(v1::Verdict::NoData as i32), "STALE");
        assert_eq!(verdict(v1::Verdict::Down as i32), "DOWN");
    }
}

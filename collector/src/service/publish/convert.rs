//! Every conversion from the collector's own types to the API's (proto)
//! types, as `From` impls, in one place. Types that need more than one
//! value to convert (a member's view and its measured rates, an alert and
//! the times of its ticks) are small borrowing structs defined here.

use std::time::{Instant, SystemTime};

use evenflow_proto::v1;

use super::member::PublishedMember;
use crate::{
    detect,
    service::{
        declared::KubeService,
        ingest::AgentState,
        pools::{Measured, PoolTick},
    },
};

impl From<detect::Verdict> for v1::Verdict {
    fn from(verdict: detect::Verdict) -> Self {
        use detect::Verdict as D;
        match verdict {
            D::Ok => Self::Ok,
            D::Zero { .. } => Self::Zero,
            D::SkewLow { .. } => Self::SkewLow,
            D::SkewHigh { .. } => Self::SkewHigh,
            D::NoData => Self::NoData,
            D::Hot { .. } => Self::Hot,
            D::Mismatch => Self::Mismatch,
            D::DrainingViolation => Self::DrainingViolation,
            D::InsufficientTraffic => Self::InsufficientTraffic,
            D::Concentration => Self::Concentration,
            D::Settling => Self::Settling,
            D::Down { .. } => Self::Down,
            D::Failing => Self::Failing,
        }
    }
}

impl From<detect::View> for v1::View {
    fn from(view: detect::View) -> Self {
        match view {
            detect::View::Server => Self::Server,
            detect::View::Lb => Self::Lb,
        }
    }
}

impl From<detect::AlertKind> for v1::AlertKind {
    fn from(kind: detect::AlertKind) -> Self {
        use detect::AlertKind as K;
        match kind {
            K::Zero => Self::Zero,
            K::Skew => Self::Skew,
            K::Concentration => Self::Concentration,
            K::Stale => Self::Stale,
            K::Hot => Self::Hot,
            K::Mismatch => Self::Mismatch,
            K::DrainingViolation => Self::DrainingViolation,
            K::Down => Self::Down,
            K::Failing => Self::Failing,
        }
    }
}

impl From<detect::Signal> for v1::Signal {
    fn from(signal: detect::Signal) -> Self {
        match signal {
            detect::Signal::NewConnections => Self::NewConnections,
            detect::Signal::ActiveConnections => Self::ActiveConnections,
            detect::Signal::Bytes => Self::Bytes,
        }
    }
}

impl From<detect::Cause> for v1::Cause {
    fn from(cause: detect::Cause) -> Self {
        match cause {
            detect::Cause::Routing => Self::Routing,
            detect::Cause::Pinned => Self::Pinned,
            detect::Cause::Refusing => Self::Refusing,
        }
    }
}

impl From<detect::Severity> for v1::Severity {
    fn from(severity: detect::Severity) -> Self {
        match severity {
            detect::Severity::Page => Self::Page,
            detect::Severity::Warning => Self::Warning,
        }
    }
}

/// An optional signal; unset is `SIGNAL_UNSPECIFIED`.
fn signal(signal: Option<detect::Signal>) -> i32 {
    signal.map_or(v1::Signal::Unspecified, v1::Signal::from) as i32
}

/// An optional cause; unset is `CAUSE_UNSPECIFIED`.
fn cause(cause: Option<detect::Cause>) -> i32 {
    cause.map_or(v1::Cause::Unspecified, v1::Cause::from) as i32
}

impl From<&detect::LoadVerdict> for v1::LoadShare {
    fn from(load: &detect::LoadVerdict) -> Self {
        Self {
            observed_share: load.observed_share,
            expected_share: load.expected_share,
            verdict: v1::Verdict::from(load.verdict) as i32,
            page: load.page,
            cause: cause(load.cause),
            reason: load.reason.clone(),
        }
    }
}

/// The worse of a member's two load signals, when either is a finding.
fn load_finding(member: &detect::MemberVerdict) -> Option<v1::LoadFinding> {
    [
        (detect::Signal::ActiveConnections, member.active.as_ref()),
        (detect::Signal::Bytes, member.bytes.as_ref()),
    ]
    .into_iter()
    .filter_map(|(sig, found)| {
        found
            .filter(|(_, load)| load.is_finding())
            .map(|found| (sig, found))
    })
    .max_by_key(|(sig, (_, load))| {
        (
            load.page,
            load.verdict.is_zero(),
            *sig == detect::Signal::ActiveConnections,
        )
    })
    .map(|(sig, (view, load))| v1::LoadFinding {
        signal: v1::Signal::from(sig) as i32,
        view: v1::View::from(*view) as i32,
        share: Some(load.into()),
    })
}

impl From<&KubeService> for v1::KubernetesService {
    fn from(service: &KubeService) -> Self {
        Self {
            namespace: service.namespace.clone(),
            service: service.service.clone(),
            port_name: service.port_name.clone(),
            port: u32::from(service.port),
            cluster_ips: service.cluster_ips.clone(),
            zone: service.zone.clone(),
            node: service.node.clone(),
        }
    }
}

/// An alert with the wall-clock times of its ticks and, in Kubernetes
/// pools, its member's Pod.
pub struct AlertAt<'a> {
    /// The detector's alert.
    pub alert: &'a detect::Alert,
    /// When its first tick ran.
    pub since: SystemTime,
    /// When the tick that resolved it ran.
    pub resolved_at: Option<SystemTime>,
    /// The member's Pod, "namespace/name".
    pub pod: Option<&'a str>,
}

impl From<AlertAt<'_>> for v1::Alert {
    /// `pod` names the member's Pod in the summary too.
    fn from(at: AlertAt<'_>) -> Self {
        let alert = at.alert;
        let summary = match at.pod {
            Some(pod) => alert.summary.replacen(
                &format!("member {} ", alert.member),
                &format!("member {} (pod {pod}) ", alert.member),
                1,
            ),
            None => alert.summary.clone(),
        };
        Self {
            id: alert.id.clone(),
            pool: alert.pool.clone(),
            member: alert.member.clone(),
            kind: v1::AlertKind::from(alert.kind) as i32,
            signal: signal(alert.signal),
            cause: cause(alert.cause),
            view: v1::View::from(alert.view) as i32,
            severity: v1::Severity::from(alert.severity) as i32,
            observed: alert.observed,
            expected: alert.expected,
            since: Some(at.since.into()),
            summary,
            evidence: alert.evidence.iter().cloned().collect(),
            resolved_at: at.resolved_at.map(Into::into),
            flaps: alert.flaps,
            pod: at.pod.unwrap_or_default().to_owned(),
        }
    }
}

impl From<&detect::Transition> for v1::alert_event::Transition {
    fn from(transition: &detect::Transition) -> Self {
        match transition {
            detect::Transition::Fired(_) => Self::Fired,
            detect::Transition::Updated(_) => Self::Updated,
            detect::Transition::Resolved(_) => Self::Resolved,
        }
    }
}

/// A judged member's view: shares and verdict from the detector, rates and
/// totals as measured from the agents' deltas.
struct JudgedView<'a> {
    verdict: &'a detect::ViewVerdict,
    measured: &'a Measured,
}

impl From<JudgedView<'_>> for v1::MemberView {
    fn from(JudgedView { verdict, measured }: JudgedView<'_>) -> Self {
        Self {
            fresh: verdict.fresh,
            new_conns_per_sec: measured.conns_per_sec,
            active_connections: verdict.active,
            bytes_in_per_sec: measured.bytes_in_per_sec,
            bytes_out_per_sec: measured.bytes_out_per_sec,
            observed_share: verdict.observed_share,
            expected_share: verdict.expected_share,
            verdict: v1::Verdict::from(verdict.verdict) as i32,
            reason: verdict.reason.clone(),
            conns_total: measured.conns_total,
            active: Some((&verdict.active_load).into()),
            bytes: Some((&verdict.bytes_load).into()),
            bytes_in_share: verdict.bytes_in_share,
            bytes_out_share: verdict.bytes_out_share,
            failed_conns_per_sec: measured.failed_per_sec,
            failed_conns_total: measured.failed_total,
        }
    }
}

/// An unjudged member's view: what it received, no shares, no verdict,
/// the reason it is not judged.
struct UnjudgedView<'a> {
    input: &'a detect::ViewInput,
    measured: &'a Measured,
    reason: &'a str,
}

impl From<UnjudgedView<'_>> for v1::MemberView {
    fn from(
        UnjudgedView {
            input,
            measured,
            reason,
        }: UnjudgedView<'_>,
    ) -> Self {
        Self {
            fresh: input.fresh,
            new_conns_per_sec: measured.conns_per_sec,
            active_connections: input.active,
            bytes_in_per_sec: measured.bytes_in_per_sec,
            bytes_out_per_sec: measured.bytes_out_per_sec,
            reason: reason.to_owned(),
            conns_total: measured.conns_total,
            failed_conns_per_sec: measured.failed_per_sec,
            failed_conns_total: measured.failed_total,
            ..Self::default()
        }
    }
}

impl From<PublishedMember<'_>> for v1::Member {
    fn from(member: PublishedMember<'_>) -> Self {
        let meta = member.meta();
        // What every member says of itself, judged or not.
        let facts = Self {
            address: meta.addr.ip().to_string(),
            port: u32::from(meta.addr.port()),
            node_name: meta.node.to_string(),
            source: meta.source.as_str().to_owned(),
            pod: meta.pod.as_deref().unwrap_or("").to_owned(),
            zone: meta.zone.as_deref().unwrap_or("").to_owned(),
            ..Self::default()
        };
        match member {
            PublishedMember::Judged { member, verdict } => {
                let view = |view, measured| JudgedView {
                    verdict: view,
                    measured,
                };
                Self {
                    weight: verdict.weight,
                    judged_weight: verdict.judged_weight.unwrap_or(0.0),
                    state: match (verdict.draining, member.input.not_ready) {
                        (false, _) => v1::MemberState::Serving,
                        (true, false) => v1::MemberState::Draining,
                        (true, true) => v1::MemberState::NotReady,
                    } as i32,
                    server_view: (verdict.server.as_ref())
                        .map(|v| view(v, &member.meta.server).into()),
                    lb_view: (verdict.lb.as_ref()).map(|v| view(v, &member.meta.lb).into()),
                    cpu_utilization: verdict.cpu.unwrap_or(0.0),
                    verdict: v1::Verdict::from(verdict.verdict) as i32,
                    reason: verdict.reason.clone(),
                    load: load_finding(verdict),
                    ..facts
                }
            }
            PublishedMember::Unjudged(unjudged) => {
                let view = |input, measured| UnjudgedView {
                    input,
                    measured,
                    reason: &unjudged.reason,
                };
                Self {
                    weight: 1.0,
                    state: if unjudged.draining {
                        v1::MemberState::Draining
                    } else {
                        v1::MemberState::NotReady
                    } as i32,
                    server_view: (unjudged.server.as_ref())
                        .map(|v| view(v, &unjudged.meta.server).into()),
                    lb_view: (unjudged.lb.as_ref()).map(|v| view(v, &unjudged.meta.lb).into()),
                    cpu_utilization: 0.0,
                    verdict: v1::Verdict::Unspecified as i32,
                    reason: unjudged.reason.clone(),
                    load: None,
                    ..facts
                }
            }
        }
    }
}

/// A judged pool as one tick publishes it; the message leaves `lb_nodes`
/// empty (see [`super::PublishedPool`]).
pub struct PoolAt<'a> {
    /// What the pools stage assembled.
    pub pool: &'a PoolTick,
    /// The detector's verdict on it.
    pub verdict: &'a detect::PoolVerdict,
    /// When the tick took its snapshot of the agents.
    pub at: prost_types::Timestamp,
}

impl From<PoolAt<'_>> for v1::Pool {
    fn from(PoolAt { pool, verdict, at }: PoolAt<'_>) -> Self {
        let mut members: Vec<v1::Member> = PublishedMember::of(pool, verdict)
            .map(v1::Member::from)
            .collect();
        if !pool.unjudged.is_empty() {
            // Judged and unjudged members interleave by address.
            members.sort_by_key(|m| {
                (
                    m.address.parse::<std::net::IpAddr>().ok(),
                    m.port,
                    m.address.clone(),
                )
            });
        }
        let reason = match (&pool.note, verdict.reason.is_empty()) {
            (Some(note), true) => note.to_string(),
            (Some(note), false) => format!("{}; {note}", verdict.reason),
            (None, _) => verdict.reason.clone(),
        };
        Self {
            name: verdict.name.clone(),
            members,
            verdict: v1::Verdict::from(verdict.verdict) as i32,
            reason,
            effective_members: verdict.effective,
            expected_effective_members: verdict.expected_effective,
            // Sums of the measured member rates (the detector's own means
            // are over its share window).
            server_conns_per_sec: pool
                .input
                .members
                .iter()
                .map(|m| m.meta.server.conns_per_sec)
                .sum(),
            lb_conns_per_sec: pool
                .input
                .members
                .iter()
                .map(|m| m.meta.lb.conns_per_sec)
                .sum(),
            // Shared from tick to tick instead: `PublishedPool`.
            lb_nodes: Vec::new(),
            tick: verdict.tick,
            evaluated_at: Some(at),
            kubernetes: pool.kubernetes.as_deref().map(Into::into),
            server_active_connections: verdict.load_server.active,
            lb_active_connections: verdict.load_lb.active,
            lb_view_dark: verdict.lb_dark,
        }
    }
}

/// An agent's state as ListAgents shows it at `now`, with the tick length
/// `tick` (seconds) for freshness.
pub struct AgentStatusAt<'a> {
    /// The agent.
    pub state: &'a AgentState,
    /// Now.
    pub now: Instant,
    /// The detection interval, seconds.
    pub tick: f64,
}

impl From<AgentStatusAt<'_>> for v1::AgentStatus {
    fn from(AgentStatusAt { state, now, tick }: AgentStatusAt<'_>) -> Self {
        Self {
            node_name: state.node.to_string(),
            agent_epoch: state.epoch,
            agent_run: state.run,
            last_sequence: state.last_seq,
            last_report_at: state.last_taken_at,
            age_seconds: state.age(now),
            fresh: state.fresh(now, tick),
            endpoints: state.endpoint_count,
            resets: state.resets,
            replays_ignored: state.replays,
            agent_version: state.version.clone(),
            datapath: state.datapath,
        }
    }
}

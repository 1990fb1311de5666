//! The detection tick: every interval, take each agent's deltas, form the
//! pools, run the detector, and publish pools and alert transitions
//! (WatchPool / WatchAlerts subscribers, tracing, webhooks, /metrics).
//!
//! The tick runs on its own OS thread so a large fleet's tick never stalls
//! the async runtime that serves ingest and queries; it takes each agent's
//! lock only long enough to copy that agent's deltas.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime},
};

use evenflow_proto::v1;
use tokio::sync::{broadcast, watch};
use tracing::{debug, error, info, warn};

use crate::{
    detect::{self, Detector, Settings},
    parallel::Threads,
    service::{
        agents::{AgentTick, Registry},
        declared::Sources,
        pools::{self, PoolTick},
        webhook,
    },
};

/// Resolved alerts kept for ListAlerts.
const RESOLVED_KEPT: usize = 1000;
/// Tick start times remembered for alert timestamps.
const TICK_TIMES: usize = 4096;
/// Open alerts are re-sent to webhooks this often so receivers keep them
/// open (Alertmanager resolves alerts it stops hearing about).
const WEBHOOK_REFRESH: Duration = Duration::from_secs(60);

/// A member's reported cumulative new connections: (server view, LB view).
pub type ReportedTotals = (Option<u64>, Option<u64>);

/// What the last tick produced.
#[derive(Default)]
pub struct Published {
    /// Tick number (0 before the first).
    pub tick: u64,
    /// When the tick took its snapshot of the agents.
    pub evaluated_at: Option<prost_types::Timestamp>,
    /// Every pool by name.
    pub pools: BTreeMap<String, Arc<v1::Pool>>,
    /// Open alerts, newest first.
    pub open: Vec<v1::Alert>,
    /// Recently resolved alerts, newest first.
    pub resolved: Vec<v1::Alert>,
    /// Per pool, per member (same order as the Pool's members): the
    /// agents' own cumulative new-connection totals, server and LB view.
    pub reported: BTreeMap<String, Vec<ReportedTotals>>,
}

/// Counters about the tick itself.
#[derive(Default, Debug)]
pub struct TickStats {
    /// Ticks run.
    pub ticks: AtomicU64,
    /// Duration of the last tick, microseconds.
    pub last_tick_micros: AtomicU64,
    /// Longest tick, microseconds.
    pub max_tick_micros: AtomicU64,
    /// Alert transitions.
    pub transitions: AtomicU64,
    /// Ticks skipped because the previous one overran.
    pub overruns: AtomicU64,
}

/// State shared by the tick, the gRPC services and /metrics.
pub struct Shared {
    /// Every agent.
    pub registry: Registry,
    /// The latest tick's results.
    pub published: watch::Sender<Arc<Published>>,
    /// Alert transitions as they happen.
    pub alerts: broadcast::Sender<Arc<v1::AlertEvent>>,
    /// The detection interval.
    pub interval: Duration,
    /// Tick counters.
    pub stats: TickStats,
    /// Webhook counters.
    pub webhook_stats: Arc<webhook::Stats>,
}

impl Shared {
    /// Fresh shared state.
    pub fn new(interval: Duration) -> Arc<Self> {
        let (published, _) = watch::channel(Arc::new(Published::default()));
        let (alerts, _) = broadcast::channel(4096);
        Arc::new(Self {
            registry: Registry::default(),
            published,
            alerts,
            interval,
            stats: TickStats::default(),
            webhook_stats: Arc::default(),
        })
    }
}

/// Converts a detector verdict.
pub fn verdict(v: detect::Verdict) -> v1::Verdict {
    use detect::Verdict as D;
    match v {
        D::Ok => v1::Verdict::Ok,
        D::Zero { .. } => v1::Verdict::Zero,
        D::SkewLow { .. } => v1::Verdict::SkewLow,
        D::SkewHigh { .. } => v1::Verdict::SkewHigh,
        D::NoData => v1::Verdict::NoData,
        D::Hot { .. } => v1::Verdict::Hot,
        D::Mismatch => v1::Verdict::Mismatch,
        D::DrainingViolation => v1::Verdict::DrainingViolation,
        D::InsufficientTraffic => v1::Verdict::InsufficientTraffic,
        D::Concentration => v1::Verdict::Concentration,
        D::Settling => v1::Verdict::Settling,
    }
}

fn view(v: detect::View) -> v1::View {
    match v {
        detect::View::Server => v1::View::Server,
        detect::View::Lb => v1::View::Lb,
    }
}

fn kind(k: detect::AlertKind) -> v1::AlertKind {
    use detect::AlertKind as K;
    match k {
        K::Zero => v1::AlertKind::Zero,
        K::Skew => v1::AlertKind::Skew,
        K::Concentration => v1::AlertKind::Concentration,
        K::Stale => v1::AlertKind::Stale,
        K::Hot => v1::AlertKind::Hot,
        K::Mismatch => v1::AlertKind::Mismatch,
        K::DrainingViolation => v1::AlertKind::DrainingViolation,
    }
}

fn signal(s: Option<detect::Signal>) -> v1::Signal {
    match s {
        Some(detect::Signal::NewConnections) => v1::Signal::NewConnections,
        Some(detect::Signal::ActiveConnections) => v1::Signal::ActiveConnections,
        Some(detect::Signal::Bytes) => v1::Signal::Bytes,
        None => v1::Signal::Unspecified,
    }
}

fn cause(c: Option<detect::Cause>) -> v1::Cause {
    match c {
        Some(detect::Cause::Routing) => v1::Cause::Routing,
        Some(detect::Cause::Pinned) => v1::Cause::Pinned,
        None => v1::Cause::Unspecified,
    }
}

fn load_share(l: &detect::LoadVerdict) -> v1::LoadShare {
    v1::LoadShare {
        observed_share: l.observed_share,
        expected_share: l.expected_share,
        verdict: verdict(l.verdict) as i32,
        page: l.page,
        cause: cause(l.cause) as i32,
        reason: l.reason.clone(),
    }
}

/// The worse of a member's two load signals, when either is a finding.
fn load_finding(m: &detect::MemberVerdict) -> Option<v1::LoadFinding> {
    [
        (detect::Signal::ActiveConnections, m.active.as_ref()),
        (detect::Signal::Bytes, m.bytes.as_ref()),
    ]
    .into_iter()
    .filter_map(|(s, f)| f.filter(|(_, l)| l.is_finding()).map(|f| (s, f)))
    .max_by_key(|(s, (_, l))| {
        (
            l.page,
            l.verdict.is_zero(),
            *s == detect::Signal::ActiveConnections,
        )
    })
    .map(|(s, (v, l))| v1::LoadFinding {
        signal: signal(Some(s)) as i32,
        view: view(*v) as i32,
        share: Some(load_share(l)),
    })
}

fn severity(s: detect::Severity) -> v1::Severity {
    match s {
        detect::Severity::Page => v1::Severity::Page,
        detect::Severity::Warning => v1::Severity::Warning,
    }
}

/// A wall-clock time as a protobuf timestamp.
pub fn ts(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// Remembers when recent ticks ran.
struct TickClock {
    times: VecDeque<(u64, SystemTime)>,
    interval: Duration,
}

impl TickClock {
    fn at(&self, tick: u64) -> SystemTime {
        if let Some(&(first, _)) = self.times.front()
            && tick >= first
            && let Some(&(t, at)) = self.times.get((tick - first) as usize)
            && t == tick
        {
            return at;
        }
        // Older than we remember: count back from the newest tick.
        match self.times.back() {
            Some(&(last, at)) if tick <= last => at
                .checked_sub(self.interval.saturating_mul((last - tick) as u32))
                .unwrap_or(at),
            Some(&(_, at)) => at,
            None => SystemTime::now(),
        }
    }

    fn push(&mut self, tick: u64, at: SystemTime) {
        self.times.push_back((tick, at));
        while self.times.len() > TICK_TIMES {
            self.times.pop_front();
        }
    }
}

/// The API's alert; `pod` (Kubernetes pools) names the member's Pod, in
/// the summary too.
fn alert(a: &detect::Alert, clock: &TickClock, pod: Option<&str>) -> v1::Alert {
    let summary = match pod {
        Some(pod) => a.summary.replacen(
            &format!("member {} ", a.member),
            &format!("member {} (pod {pod}) ", a.member),
            1,
        ),
        None => a.summary.clone(),
    };
    v1::Alert {
        id: a.id.clone(),
        pool: a.pool.clone(),
        member: a.member.clone(),
        kind: kind(a.kind) as i32,
        signal: signal(a.signal) as i32,
        cause: cause(a.cause) as i32,
        view: view(a.view) as i32,
        severity: severity(a.severity) as i32,
        observed: a.observed,
        expected: a.expected,
        since: Some(ts(clock.at(a.since_tick))),
        summary,
        evidence: a.evidence.iter().cloned().collect(),
        resolved_at: a.resolved_tick.map(|t| ts(clock.at(t))),
        flaps: a.flaps,
        pod: pod.unwrap_or_default().to_owned(),
    }
}

/// The agents' own cumulative totals of each member of `msg`, in its
/// order (judged and unjudged members are interleaved there by address).
fn reported_totals(pt: &PoolTick, msg: &v1::Pool) -> Vec<ReportedTotals> {
    let judged = pt.input.members.iter().zip(&pt.meta).map(|(m, meta)| {
        let totals = (
            m.server.map(|_| meta.server.reported_total),
            m.lb.map(|_| meta.lb.reported_total),
        );
        (meta.addr, totals)
    });
    let unjudged = pt.unjudged.iter().map(|u| {
        let totals = (
            u.server.map(|_| u.meta.server.reported_total),
            u.lb.map(|_| u.meta.lb.reported_total),
        );
        (u.meta.addr, totals)
    });
    let by_addr: HashMap<Option<std::net::SocketAddr>, ReportedTotals> =
        judged.chain(unjudged).collect();
    msg.members
        .iter()
        .map(|m| {
            let addr =
                m.address.parse().ok().and_then(|ip| {
                    Some(std::net::SocketAddr::new(ip, u16::try_from(m.port).ok()?))
                });
            by_addr.get(&addr).copied().unwrap_or_default()
        })
        .collect()
}

/// Remembers the Pod of an alert's member (Kubernetes pools only).
fn remember_pod(pods: &mut HashMap<String, Arc<str>>, a: &detect::Alert, pt: &PoolTick) {
    if pt.kubernetes.is_none() || a.member.is_empty() || pods.contains_key(&a.id) {
        return;
    }
    let pod = pt
        .input
        .members
        .iter()
        .position(|m| m.id == a.member)
        .and_then(|i| pt.meta.get(i)?.pod.clone());
    if let Some(pod) = pod {
        pods.insert(a.id.clone(), pod);
    }
}

/// A member's view: rates and totals as measured from the agents' deltas,
/// shares and verdict from the detector.
fn member_view(v: &detect::ViewVerdict, m: &pools::Measured) -> v1::MemberView {
    v1::MemberView {
        fresh: v.fresh,
        new_conns_per_sec: m.conns_per_sec,
        active_connections: v.active,
        bytes_in_per_sec: m.bytes_in_per_sec,
        bytes_out_per_sec: m.bytes_out_per_sec,
        observed_share: v.observed_share,
        expected_share: v.expected_share,
        verdict: verdict(v.verdict) as i32,
        reason: v.reason.clone(),
        conns_total: m.conns_total,
        active: Some(load_share(&v.active_load)),
        bytes: Some(load_share(&v.bytes_load)),
        bytes_in_share: v.bytes_in_share,
        bytes_out_share: v.bytes_out_share,
    }
}

/// Builds the Pool message for one judged pool.
fn pool_message(
    pt: &mut PoolTick,
    pv: &detect::PoolVerdict,
    at: prost_types::Timestamp,
) -> v1::Pool {
    let mut members = Vec::with_capacity(pv.members.len());
    for (i, mv) in pv.members.iter().enumerate() {
        // The detector keeps input order; look up by id if it ever does not.
        let meta = match pt.meta.get(i) {
            Some(m) if pt.input.members.get(i).is_some_and(|x| x.id == mv.id) => Some(m),
            _ => pt
                .input
                .members
                .iter()
                .position(|x| x.id == mv.id)
                .and_then(|j| pt.meta.get(j)),
        };
        let (address, port) = match meta.and_then(|m| m.addr) {
            Some(a) => (a.ip().to_string(), u32::from(a.port())),
            None => (mv.id.clone(), 0),
        };
        members.push(v1::Member {
            address,
            port,
            weight: mv.weight,
            state: if mv.draining {
                v1::MemberState::Draining
            } else {
                v1::MemberState::Serving
            } as i32,
            node_name: meta.map(|m| m.node.to_string()).unwrap_or_default(),
            server_view: mv
                .server
                .as_ref()
                .map(|v| member_view(v, &meta.map(|m| m.server).unwrap_or_default())),
            lb_view: mv
                .lb
                .as_ref()
                .map(|v| member_view(v, &meta.map(|m| m.lb).unwrap_or_default())),
            cpu_utilization: mv.cpu.unwrap_or(0.0),
            verdict: verdict(mv.verdict) as i32,
            reason: mv.reason.clone(),
            source: meta
                .map(|m| m.source.as_str())
                .unwrap_or("announced")
                .to_owned(),
            load: load_finding(mv),
            pod: meta.and_then(|m| m.pod.as_deref()).unwrap_or("").to_owned(),
            zone: meta
                .and_then(|m| m.zone.as_deref())
                .unwrap_or("")
                .to_owned(),
        });
    }
    if !pt.unjudged.is_empty() {
        members.extend(pt.unjudged.iter().map(unjudged_member));
        members.sort_by_key(|m| {
            (
                m.address.parse::<std::net::IpAddr>().ok(),
                m.port,
                m.address.clone(),
            )
        });
    }
    let reason = match (&pt.note, pv.reason.is_empty()) {
        (Some(n), true) => n.to_string(),
        (Some(n), false) => format!("{}; {n}", pv.reason),
        (None, _) => pv.reason.clone(),
    };
    v1::Pool {
        name: pv.name.clone(),
        members,
        verdict: verdict(pv.verdict) as i32,
        reason,
        effective_members: pv.effective,
        expected_effective_members: pv.expected_effective,
        // Sums of the measured member rates (the detector's own means are
        // over its share window).
        server_conns_per_sec: pt.meta.iter().map(|m| m.server.conns_per_sec).sum(),
        lb_conns_per_sec: pt.meta.iter().map(|m| m.lb.conns_per_sec).sum(),
        lb_nodes: pt.lb_nodes.iter().map(|n| n.to_string()).collect(),
        tick: pv.tick,
        evaluated_at: Some(at),
        kubernetes: pt.kubernetes.as_deref().map(kube_service),
        server_active_connections: pv.load_server.active,
        lb_active_connections: pv.load_lb.active,
    }
}

/// A member the detector does not judge: its measured numbers, no shares,
/// no verdict, the reason it is not judged.
fn unjudged_member(u: &pools::Unjudged) -> v1::Member {
    let view = |v: &crate::detect::ViewInput, m: &pools::Measured| v1::MemberView {
        fresh: v.fresh,
        new_conns_per_sec: m.conns_per_sec,
        active_connections: v.active,
        bytes_in_per_sec: m.bytes_in_per_sec,
        bytes_out_per_sec: m.bytes_out_per_sec,
        reason: u.reason.clone(),
        conns_total: m.conns_total,
        ..v1::MemberView::default()
    };
    let addr = u.meta.addr;
    v1::Member {
        address: addr.map(|a| a.ip().to_string()).unwrap_or_default(),
        port: addr.map_or(0, |a| u32::from(a.port())),
        weight: 1.0,
        state: if u.draining {
            v1::MemberState::Draining
        } else {
            v1::MemberState::NotReady
        } as i32,
        node_name: u.meta.node.to_string(),
        server_view: u.server.as_ref().map(|v| view(v, &u.meta.server)),
        lb_view: u.lb.as_ref().map(|v| view(v, &u.meta.lb)),
        cpu_utilization: 0.0,
        verdict: v1::Verdict::Unspecified as i32,
        reason: u.reason.clone(),
        source: u.meta.source.as_str().to_owned(),
        pod: u.meta.pod.as_deref().unwrap_or("").to_owned(),
        zone: u.meta.zone.as_deref().unwrap_or("").to_owned(),
        load: None,
    }
}

fn kube_service(k: &crate::service::declared::KubeService) -> v1::KubernetesService {
    v1::KubernetesService {
        namespace: k.namespace.clone(),
        service: k.service.clone(),
        port_name: k.port_name.clone(),
        port: u32::from(k.port),
        cluster_ips: k.cluster_ips.clone(),
        zone: k.zone.clone(),
        node: k.node.clone(),
    }
}

/// The tick loop's own state.
pub struct Engine {
    shared: Arc<Shared>,
    detector: Detector,
    sources: Sources,
    tick: u64,
    clock: TickClock,
    webhooks: Option<webhook::Queue>,
    last_refresh: Instant,
    retention: Duration,
    /// Threads the tick's stages spread over.
    threads: Threads,
    scratch: Vec<AgentTick>,
    /// The Pod of each alert's member, by alert id, remembered when the
    /// alert fires: the Pod may be gone when the alert resolves.
    pods: HashMap<String, Arc<str>>,
}

impl Engine {
    /// A new engine.
    pub fn new(
        shared: Arc<Shared>,
        settings: Settings,
        sources: Sources,
        webhooks: Option<webhook::Queue>,
        retention: Duration,
        threads: Threads,
    ) -> Self {
        let interval = shared.interval;
        Self {
            shared,
            detector: Detector::new(settings),
            sources,
            tick: 0,
            clock: TickClock {
                times: VecDeque::new(),
                interval,
            },
            webhooks,
            last_refresh: Instant::now(),
            retention,
            threads,
            scratch: Vec::new(),
            pods: HashMap::new(),
        }
    }

    /// Runs ticks until `stop` is set.
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        let interval = self.shared.interval;
        let mut next = Instant::now() + interval;
        while !stop.load(Relaxed) {
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(50)));
                continue;
            }
            // A bug in one tick must not end detection for good: log it and
            // carry on with the next.
            if let Err(p) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.tick_once()))
            {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                error!(tick = self.tick, "detection tick panicked: {what}");
            }
            next += interval;
            let after = Instant::now();
            if after > next {
                // Overran: skip the missed ticks rather than bursting.
                let missed = ((after - next).as_secs_f64() / interval.as_secs_f64()).ceil() as u32;
                self.shared
                    .stats
                    .overruns
                    .fetch_add(u64::from(missed), Relaxed);
                next += interval * missed;
            }
        }
    }

    /// One detection tick.
    pub fn tick_once(&mut self) {
        let started = Instant::now();
        let wall = SystemTime::now();
        self.tick += 1;
        let tick = self.tick;
        self.clock.push(tick, wall);
        let at = ts(wall);
        let secs = self.shared.interval.as_secs_f64();

        // 1. Each agent's deltas, one agent lock at a time.
        let handles = self.shared.registry.all();
        self.scratch.resize_with(handles.len(), AgentTick::default);
        self.threads.map(
            &mut self.scratch,
            |out| out.endpoints.len(),
            |i, out| {
                let mut st = handles[i].lock().unwrap_or_else(|e| e.into_inner());
                st.take_tick(started, secs, out);
            },
        );
        drop(handles);
        self.scratch.sort_unstable_by(|a, b| a.node.cmp(&b.node));

        // 2. Pools.
        let declared = self.sources.at(started);
        let pool_ticks = pools::build(&self.scratch, &declared, tick, self.threads);

        // 3. Judge.
        let inputs: Vec<&detect::PoolInput> = pool_ticks.iter().map(|pt| &pt.input).collect();
        let judged = self.detector.evaluate_all(&inputs, self.threads);
        drop(inputs);
        let mut transitions = Vec::new();
        let mut names = HashSet::with_capacity(pool_ticks.len());
        let pool_count = pool_ticks.len();
        let mut pool_ticks: Vec<(PoolTick, detect::PoolVerdict)> = pool_ticks
            .into_iter()
            .zip(judged)
            .map(|(pt, (pv, tr))| {
                for t in &tr {
                    remember_pod(&mut self.pods, t.alert(), &pt);
                }
                transitions.extend(tr);
                names.insert(pt.input.name.clone());
                (pt, pv)
            })
            .collect();
        transitions.extend(self.detector.retain_pools(&names, tick));
        let messages = self.threads.map(
            &mut pool_ticks,
            |(pt, _)| pt.input.members.len(),
            |_, (pt, pv)| {
                let msg = pool_message(pt, pv, at);
                let reported = reported_totals(pt, &msg);
                (msg, reported)
            },
        );
        let mut published = BTreeMap::new();
        let mut reported = BTreeMap::new();
        for ((pt, _), (msg, totals)) in pool_ticks.into_iter().zip(messages) {
            reported.insert(pt.input.name.clone(), totals);
            published.insert(pt.input.name, Arc::new(msg));
        }

        // 4. Alerts.
        let mut open: Vec<v1::Alert> = self
            .detector
            .open_alerts()
            .map(|a| alert(a, &self.clock, self.pods.get(&a.id).map(|p| &**p)))
            .collect();
        open.sort_by(|a, b| {
            let k = |x: &v1::Alert| x.since.map(|t| (t.seconds, t.nanos)).unwrap_or_default();
            k(b).cmp(&k(a)).then_with(|| a.id.cmp(&b.id))
        });
        let resolved: Vec<v1::Alert> = self
            .detector
            .resolved_alerts()
            .take(RESOLVED_KEPT)
            .map(|a| alert(a, &self.clock, self.pods.get(&a.id).map(|p| &**p)))
            .collect();

        let kept: HashSet<&str> = open
            .iter()
            .chain(&resolved)
            .map(|a| a.id.as_str())
            .collect();
        self.pods.retain(|id, _| kept.contains(id.as_str()));
        let mut hooks = Vec::new();
        let mut events = Vec::with_capacity(transitions.len());
        for t in &transitions {
            let a = alert(
                t.alert(),
                &self.clock,
                self.pods.get(&t.alert().id).map(|p| &**p),
            );
            let (transition, name) = match t {
                detect::Transition::Fired(_) => (v1::alert_event::Transition::Fired, "fired"),
                detect::Transition::Updated(_) => (v1::alert_event::Transition::Updated, "updated"),
                detect::Transition::Resolved(_) => {
                    (v1::alert_event::Transition::Resolved, "resolved")
                }
            };
            info!(
                target: "evenflow::alert",
                transition = name,
                id = %a.id,
                pool = %a.pool,
                member = %a.member,
                kind = t.alert().kind.as_str(),
                view = ?t.alert().view,
                severity = ?t.alert().severity,
                observed = a.observed,
                expected = a.expected,
                flaps = a.flaps,
                "{}",
                a.summary
            );
            if self.webhooks.is_some() {
                hooks.push(a.clone());
            }
            events.push(v1::AlertEvent {
                transition: transition as i32,
                alert: Some(a),
                at: Some(at),
            });
        }
        self.shared
            .stats
            .transitions
            .fetch_add(transitions.len() as u64, Relaxed);
        if let Some(q) = &self.webhooks {
            if self.last_refresh.elapsed() >= WEBHOOK_REFRESH {
                self.last_refresh = Instant::now();
                // Re-send every open alert not already in this batch.
                let sent: HashSet<&str> = hooks.iter().map(|a| a.id.as_str()).collect();
                let refresh: Vec<v1::Alert> = open
                    .iter()
                    .filter(|a| !sent.contains(a.id.as_str()))
                    .cloned()
                    .collect();
                hooks.extend(refresh);
            }
            if !hooks.is_empty() {
                q.push(hooks);
            }
        }

        self.shared.published.send_replace(Arc::new(Published {
            tick,
            evaluated_at: Some(at),
            pools: published,
            open,
            resolved,
            reported,
        }));
        // Streamed only once published: a WatchAlerts subscriber that asks
        // ListAlerts or GetPool about an event finds it there.
        for ev in events {
            // No subscribers is fine.
            let _ = self.shared.alerts.send(Arc::new(ev));
        }

        // 5. Forget long-silent agents.
        let gone = self
            .shared
            .registry
            .forget_older_than(started, self.retention.as_secs_f64());
        for n in gone {
            warn!(node = %n, "forgetting agent: no report for {:?}", self.retention);
        }

        let took = started.elapsed().as_micros() as u64;
        let s = &self.shared.stats;
        s.ticks.fetch_add(1, Relaxed);
        s.last_tick_micros.store(took, Relaxed);
        s.max_tick_micros.fetch_max(took, Relaxed);
        debug!(
            tick,
            agents = self.scratch.len(),
            pools = pool_count,
            micros = took,
            "tick"
        );
    }
}

//! Publish, the tick's last stage: judged pools become the API's messages
//! ([`convert`], every conversion to proto), alert transitions are logged,
//! streamed to WatchAlerts subscribers and sent to webhooks (open alerts
//! re-sent so receivers keep them open), and the whole is published for
//! the query API and /metrics ([`Published`]).

mod clock;
pub mod convert;
mod member;
pub mod names;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant, SystemTime},
};

use evenflow_proto::v1;
pub use member::{PublishedMember, ReportedTotals};
use tracing::info;

use self::{
    clock::TickClock,
    convert::{AlertAt, PoolAt},
};
use crate::{
    detect::{self, Detector},
    parallel::Threads,
    service::{pools::PoolTick, shared::Shared, webhook},
};

/// Resolved alerts kept for ListAlerts.
const RESOLVED_KEPT: usize = 1000;
/// Open alerts are re-sent to webhooks this often so receivers keep them
/// open (Alertmanager resolves alerts it stops hearing about).
const WEBHOOK_REFRESH: Duration = Duration::from_secs(60);

/// What the last tick produced.
#[derive(Default)]
pub struct Published {
    /// Tick number (0 before the first).
    pub tick: u64,
    /// When the tick took its snapshot of the agents.
    pub evaluated_at: Option<prost_types::Timestamp>,
    /// Every pool by name.
    pub pools: BTreeMap<String, Arc<PublishedPool>>,
    /// Open alerts, newest first.
    pub open: Vec<v1::Alert>,
    /// Recently resolved alerts, newest first.
    pub resolved: Vec<v1::Alert>,
    /// Per pool, per member address: the agents' own cumulative
    /// new-connection totals, server and LB view.
    pub reported: BTreeMap<String, MemberTotals>,
}

/// One pool as a tick published it. Its load balancers' names are kept
/// apart from its message and shared from tick to tick while they stay the
/// same: a pool that every node sends to has one per node, and copying
/// thousands of names into every pool's message each tick was most of
/// what publishing cost.
#[derive(Debug)]
pub struct PublishedPool {
    /// The pool's message with `lb_nodes` left empty (they are in
    /// [`PublishedPool::lb_nodes`]); [`PublishedPool::message`] is the
    /// whole of it.
    pub summary: v1::Pool,
    /// Its load balancer nodes, sorted.
    pub lb_nodes: Arc<[String]>,
}

impl PublishedPool {
    /// The pool's message as the API serves it.
    pub fn message(&self) -> v1::Pool {
        v1::Pool {
            lb_nodes: self.lb_nodes.to_vec(),
            ..self.summary.clone()
        }
    }
}

/// Each pool's load balancer names as its last message had them: the
/// names the pools stage gave, and the same as strings.
type LbNames = HashMap<String, (Arc<[Arc<str>]>, Arc<[String]>)>;

/// A pool's members' reported totals by member address.
pub type MemberTotals = HashMap<SocketAddr, ReportedTotals>;

/// One pool as the detector judged it this tick.
pub struct JudgedPool {
    /// What the pools stage assembled.
    pub pool: PoolTick,
    /// The detector's verdict.
    pub verdict: detect::PoolVerdict,
    /// The alert transitions judging it caused.
    pub transitions: Vec<detect::Transition>,
}

/// The publish stage's own state across ticks.
pub struct Publisher {
    clock: TickClock,
    /// Threads the pool messages are built on.
    threads: Threads,
    webhooks: Option<webhook::Queue>,
    last_refresh: Instant,
    /// The Pod of each alert's member, by alert id, remembered when the
    /// alert fires: the Pod may be gone when the alert resolves.
    pods: HashMap<String, Arc<str>>,
    /// Each pool's load balancer names as last published.
    lb_names: LbNames,
}

impl Publisher {
    /// A publisher for ticks `interval` apart, sending to `webhooks`.
    pub fn new(interval: Duration, webhooks: Option<webhook::Queue>, threads: Threads) -> Self {
        Self {
            clock: TickClock::new(interval),
            threads,
            webhooks,
            last_refresh: Instant::now(),
            pods: HashMap::new(),
            lb_names: HashMap::new(),
        }
    }

    /// Records that `tick` started at `wall`.
    pub fn tick_started(&mut self, tick: u64, wall: SystemTime) {
        self.clock.push(tick, wall);
    }

    /// Publishes one tick: `pools` judged at `at`, and `gone`, the
    /// transitions of pools no longer in the fleet.
    pub fn publish(
        &mut self,
        shared: &Shared,
        tick: u64,
        at: prost_types::Timestamp,
        mut pools: Vec<JudgedPool>,
        gone: Vec<detect::Transition>,
        detector: &Detector,
    ) {
        for judged in &pools {
            self.remember_pods(judged);
        }
        let (messages, reported) = pool_messages(&mut pools, at, &mut self.lb_names, self.threads);
        let transitions: Vec<detect::Transition> = (pools.into_iter())
            .flat_map(|judged| judged.transitions)
            .chain(gone)
            .collect();
        let (open, resolved) = self.alert_lists(detector);
        let events = self.alert_events(&transitions, at);
        shared
            .stats
            .transitions
            .fetch_add(transitions.len() as u64, Relaxed);
        self.send_webhooks(&events, &open);
        shared.published.send_replace(Arc::new(Published {
            tick,
            evaluated_at: Some(at),
            pools: messages,
            open,
            resolved,
            reported,
        }));
        // Streamed only once published: a WatchAlerts subscriber that asks
        // ListAlerts or GetPool about an event finds it there.
        for event in events {
            // No subscribers is fine.
            let _ = shared.alerts.send(Arc::new(event));
        }
    }

    /// Remembers the Pod of each member an alert of a Kubernetes pool is
    /// about.
    fn remember_pods(&mut self, judged: &JudgedPool) {
        if judged.pool.kubernetes.is_none() {
            return;
        }
        for transition in &judged.transitions {
            let alert = transition.alert();
            if alert.member.is_empty() || self.pods.contains_key(&alert.id) {
                continue;
            }
            let pod = (judged.pool.input.members.iter())
                .find(|member| member.input.id == alert.member)
                .and_then(|member| member.meta.pod.clone());
            if let Some(pod) = pod {
                self.pods.insert(alert.id.clone(), pod);
            }
        }
    }

    /// An alert as the API shows it.
    fn alert(&self, alert: &detect::Alert) -> v1::Alert {
        AlertAt {
            alert,
            since: self.clock.at(alert.since_tick),
            resolved_at: alert.resolved_tick.map(|t| self.clock.at(t)),
            pod: self.pods.get(&alert.id).map(|pod| &**pod),
        }
        .into()
    }

    /// Open alerts (newest first) and recently resolved ones; forgets the
    /// Pods of alerts in neither.
    fn alert_lists(&mut self, detector: &Detector) -> (Vec<v1::Alert>, Vec<v1::Alert>) {
        let mut open: Vec<v1::Alert> = detector.open_alerts().map(|a| self.alert(a)).collect();
        open.sort_by(|a, b| {
            let since = |x: &v1::Alert| x.since.map(|t| (t.seconds, t.nanos)).unwrap_or_default();
            since(b).cmp(&since(a)).then_with(|| a.id.cmp(&b.id))
        });
        let resolved: Vec<v1::Alert> = (detector.resolved_alerts())
            .take(RESOLVED_KEPT)
            .map(|a| self.alert(a))
            .collect();
        let kept: HashSet<&str> = (open.iter().chain(&resolved))
            .map(|a| a.id.as_str())
            .collect();
        self.pods.retain(|id, _| kept.contains(id.as_str()));
        (open, resolved)
    }

    /// Each transition as an event, logged.
    fn alert_events(
        &self,
        transitions: &[detect::Transition],
        at: prost_types::Timestamp,
    ) -> Vec<v1::AlertEvent> {
        transitions
            .iter()
            .map(|transition| {
                let alert = self.alert(transition.alert());
                let name = match transition {
                    detect::Transition::Fired(_) => "fired",
                    detect::Transition::Updated(_) => "updated",
                    detect::Transition::Resolved(_) => "resolved",
                };
                info!(
                    target: "evenflow::alert",
                    transition = name,
                    id = %alert.id,
                    pool = %alert.pool,
                    member = %alert.member,
                    kind = transition.alert().kind.as_str(),
                    view = ?transition.alert().view,
                    severity = ?transition.alert().severity,
                    observed = alert.observed,
                    expected = alert.expected,
                    flaps = alert.flaps,
                    "{}",
                    alert.summary
                );
                v1::AlertEvent {
                    transition: v1::alert_event::Transition::from(transition) as i32,
                    alert: Some(alert),
                    at: Some(at),
                }
            })
            .collect()
    }

    /// This tick's transitions to the webhooks and, once a refresh period,
    /// every open alert not among them.
    fn send_webhooks(&mut self, events: &[v1::AlertEvent], open: &[v1::Alert]) {
        let Some(queue) = &self.webhooks else {
            return;
        };
        let mut hooks: Vec<v1::Alert> = events.iter().filter_map(|e| e.alert.clone()).collect();
        if self.last_refresh.elapsed() >= WEBHOOK_REFRESH {
            self.last_refresh = Instant::now();
            let sent: HashSet<&str> = hooks.iter().map(|a| a.id.as_str()).collect();
            let refresh: Vec<v1::Alert> = open
                .iter()
                .filter(|a| !sent.contains(a.id.as_str()))
                .cloned()
                .collect();
            hooks.extend(refresh);
        }
        if !hooks.is_empty() {
            queue.push(hooks);
        }
    }
}

/// Every judged pool's message and its members' reported totals, built on
/// the tick's threads. `lb_names` (each pool's load balancer names as last
/// published) is reused where a pool's are the same and then holds this
/// tick's.
fn pool_messages(
    pools: &mut [JudgedPool],
    at: prost_types::Timestamp,
    lb_names: &mut LbNames,
    threads: Threads,
) -> (
    BTreeMap<String, Arc<PublishedPool>>,
    BTreeMap<String, MemberTotals>,
) {
    let last: &LbNames = lb_names;
    let built = threads.map(
        pools,
        |judged| judged.pool.input.members.len(),
        |_, judged| {
            let summary = v1::Pool::from(PoolAt {
                pool: &judged.pool,
                verdict: &judged.verdict,
                at,
            });
            let names = &judged.pool.lb_nodes;
            let lb_nodes = match last.get(&judged.pool.input.name) {
                Some((known, strings)) if Arc::ptr_eq(known, names) || **known == **names => {
                    strings.clone()
                }
                _ => names.iter().map(|name| name.to_string()).collect(),
            };
            let reported: MemberTotals = PublishedMember::of(&judged.pool, &judged.verdict)
                .map(|member| (member.addr(), member.reported()))
                .collect();
            (PublishedPool { summary, lb_nodes }, reported)
        },
    );
    lb_names.clear();
    let mut messages = BTreeMap::new();
    let mut reported = BTreeMap::new();
    for (judged, (message, totals)) in pools.iter().zip(built) {
        let name = &judged.pool.input.name;
        lb_names.insert(
            name.clone(),
            (judged.pool.lb_nodes.clone(), message.lb_nodes.clone()),
        );
        reported.insert(name.clone(), totals);
        messages.insert(name.clone(), Arc::new(message));
    }
    (messages, reported)
}

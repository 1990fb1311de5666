//! From the catalog to declared pools, with the one rule that needs a
//! clock: the drain grace.
//!
//! An endpoint that starts terminating is still in kube-proxy's rules on
//! some nodes until they sync (about a second, longer on a busy node), so
//! it may get a few new connections that no one did wrong. For `grace`
//! after the collector first sees it draining it is listed but not judged;
//! after that it is judged as draining: expected share 0, a
//! DRAINING_VIOLATION if it still gets new connections. An endpoint that
//! was ready and turns not ready (its readiness probe fails) leaves the
//! rules the same way, and is judged the same way after the same grace: a
//! kube-proxy whose rules went stale keeps sending it new connections,
//! which the Pod said it cannot serve. A member that goes from one to the
//! other (a terminating Pod whose readiness fails as it shuts down) left
//! the rules once, and keeps its grace. One that has been neither ready
//! nor draining since the collector started watching is starting
//! (kube-proxy never routed to it) and is not judged. The clock is the collector's own (an
//! EndpointSlice says nothing of when an endpoint began terminating), so
//! a collector that restarts gives draining endpoints a fresh grace.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::service::{
    declared::{DeclaredMember, DeclaredPool, Expect, Source},
    kube::catalog::{Catalog, Condition},
};

/// What Kubernetes declares: its pools, and the endpoints of Services
/// that make none.
#[derive(Clone, Debug, Default)]
pub struct KubeDeclared {
    pub pools: BTreeMap<Arc<str>, DeclaredPool>,
    pub unpooled: Arc<[SocketAddr]>,
}

/// A member of a Service port's pool: (pool, address). The pool is the
/// whole port's, without its `@zone` or `@node` part: zone hints come and
/// go (the controller drops them all when a zone runs short of ready
/// endpoints), and a member whose pool is renamed so keeps its history.
type Key = (Arc<str>, SocketAddr);

/// `member`'s key in the pool named `pool`.
fn key(pool: &Arc<str>, member: SocketAddr) -> Key {
    let port = match pool.split_once('@') {
        Some((port, _)) => Arc::from(port),
        None => pool.clone(),
    };
    (port, member)
}

/// Kubernetes' pools as the tick reads them.
pub struct KubePools {
    catalog: watch::Receiver<Arc<Catalog>>,
    grace: Duration,
    /// Catalog version the last pools were built from.
    version: Option<u64>,
    /// When each member (pool, address) out of kube-proxy's rules left
    /// them: first seen draining, or not ready after it was ready or
    /// draining. A member that goes on from one to the other keeps its
    /// time: it left the rules once.
    out_since: HashMap<Key, Instant>,
    /// The members ready in the last catalog.
    ready: HashSet<Key>,
    /// The next moment a member's grace ends.
    next_deadline: Option<Instant>,
}

impl KubePools {
    /// Reads catalogs from `catalog`; draining members wait `grace`.
    pub fn new(catalog: watch::Receiver<Arc<Catalog>>, grace: Duration) -> Self {
        Self {
            catalog,
            grace,
            version: None,
            out_since: HashMap::new(),
            ready: HashSet::new(),
            next_deadline: None,
        }
    }

    /// The pools at `now` when they differ from the last ones returned
    /// (the catalog changed, or a grace ended); `None` when unchanged.
    /// Before the first full listing there are no Kubernetes pools.
    pub fn poll(&mut self, now: Instant) -> Option<KubeDeclared> {
        let catalog = self.catalog.borrow().clone();
        let version = catalog.synced.then_some(catalog.version);
        let changed = version != self.version;
        let grace_ended = self.next_deadline.is_some_and(|deadline| now >= deadline);
        if !changed && !grace_ended {
            return None;
        }
        self.version = version;
        if changed {
            self.track(&catalog, now);
        }
        Some(KubeDeclared {
            pools: self.declare(&catalog, now),
            unpooled: catalog.unpooled.clone(),
        })
    }

    /// Keeps when each member out of the rules now left them (see
    /// `out_since`), and which are ready; forgets the rest.
    fn track(&mut self, catalog: &Catalog, now: Instant) {
        let mut out = HashMap::new();
        let mut ready = HashSet::new();
        for pool in &catalog.pools {
            for member in &pool.members {
                let key = key(&pool.name, member.addr);
                let left = self.out_since.get(&key).copied();
                let since = match member.condition {
                    Condition::Ready => {
                        ready.insert(key);
                        continue;
                    }
                    Condition::Draining => left.unwrap_or(now),
                    // One never ready nor draining is starting: never in
                    // the rules, it has not left them.
                    Condition::NotReady => match left {
                        Some(since) => since,
                        None if self.ready.contains(&key) => now,
                        None => continue,
                    },
                };
                out.insert(key, since);
            }
        }
        self.out_since = out;
        self.ready = ready;
    }

    /// What a member out of the rules since `since` is expected to get at
    /// `now`: nothing judged within the grace (`in_grace` says why), then
    /// `after`; keeps the earliest end of a grace in `next_deadline`.
    fn after_grace(
        &mut self,
        since: Instant,
        now: Instant,
        in_grace: Expect,
        after: Expect,
    ) -> Expect {
        let end = since + self.grace;
        if now < end {
            self.next_deadline = Some(self.next_deadline.map_or(end, |deadline| deadline.min(end)));
            in_grace
        } else {
            after
        }
    }

    fn declare(&mut self, catalog: &Catalog, now: Instant) -> BTreeMap<Arc<str>, DeclaredPool> {
        self.next_deadline = None;
        let grace = humantime::format_duration(self.grace).to_string();
        let in_grace = format!(
            "began terminating less than the {grace} drain grace ago: kube-proxy may still send it new connections, so it is judged as draining only after"
        );
        let turned = format!(
            "left the rules (not ready, or terminating) less than the {grace} grace ago: kube-proxy may still send it new connections, so it is judged as out of them only after"
        );
        let starting = "not ready since the collector first saw it (starting): kube-proxy has not routed to it; not judged".to_owned();
        let mut out = BTreeMap::new();
        for pool in &catalog.pools {
            let mut members = Vec::with_capacity(pool.members.len());
            for member in &pool.members {
                let key = key(&pool.name, member.addr);
                let expect = match member.condition {
                    Condition::Ready => Expect::Share,
                    Condition::NotReady => match self.out_since.get(&key).copied() {
                        Some(since) => self.after_grace(
                            since,
                            now,
                            Expect::Unjudged {
                                draining: false,
                                reason: turned.clone(),
                            },
                            Expect::NotReady,
                        ),
                        None => Expect::Unjudged {
                            draining: false,
                            reason: starting.clone(),
                        },
                    },
                    Condition::Draining => {
                        let since = self.out_since.get(&key).copied().unwrap_or(now);
                        self.after_grace(
                            since,
                            now,
                            Expect::Unjudged {
                                draining: true,
                                reason: in_grace.clone(),
                            },
                            Expect::Draining,
                        )
                    }
                };
                members.push(DeclaredMember {
                    addr: member.addr,
                    weight: 1.0,
                    expect,
                    node: member.node.clone(),
                    pod: member.pod.clone(),
                    zone: member.zone.clone(),
                    source: Source {
                        kubernetes: true,
                        ..Source::default()
                    },
                });
            }
            out.insert(
                pool.name.clone(),
                DeclaredPool {
                    members,
                    lb_nodes: pool.lb_nodes.clone(),
                    kubernetes: Some(pool.service.clone()),
                    note: pool.note.clone(),
                    balancing: pool.balancing,
                },
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{
        declared::{KubeService, LbNodes},
        kube::catalog::{Member, ServicePool},
    };

    fn catalog(version: u64, conditions: &[Condition]) -> Arc<Catalog> {
        catalog_of(version, "default/web:http", conditions)
    }

    /// One pool named `name`, members 10.0.0.1… in these conditions.
    fn catalog_of(version: u64, name: &str, conditions: &[Condition]) -> Arc<Catalog> {
        Arc::new(Catalog {
            synced: true,
            version,
            pools: vec![ServicePool {
                name: name.into(),
                service: Arc::new(KubeService::default()),
                members: conditions
                    .iter()
                    .enumerate()
                    .map(|(i, c)| Member {
                        addr: format!("10.0.0.{}:8080", i + 1).parse().unwrap(),
                        condition: *c,
                        node: Some("n1".into()),
                        zone: None,
                        pod: Some(format!("default/web-{i}").into()),
                        for_zones: vec![],
                    })
                    .collect(),
                lb_nodes: LbNodes::Senders,
                note: None,
                balancing: Default::default(),
            }],
            unpooled: Arc::from([]),
        })
    }

    fn expects(pools: &BTreeMap<Arc<str>, DeclaredPool>) -> Vec<&'static str> {
        expects_in(pools, "default/web:http")
    }

    fn expects_in(pools: &BTreeMap<Arc<str>, DeclaredPool>, name: &str) -> Vec<&'static str> {
        pools[name]
            .members
            .iter()
            .map(|member| match &member.expect {
                Expect::Share => "share",
                Expect::Draining => "draining",
                Expect::NotReady => "out",
                Expect::Unjudged { draining: true, .. } => "grace",
                Expect::Unjudged {
                    draining: false, ..
                } => "not ready",
            })
            .collect()
    }

    #[test]
    fn draining_members_are_judged_only_after_the_grace() {
        let (tx, rx) = watch::channel(Arc::new(Catalog::default()));
        let mut kube = KubePools::new(rx, Duration::from_secs(10));
        let t0 = Instant::now();
        // Nothing before the first full listing.
        assert!(kube.poll(t0).is_none());
        tx.send_replace(catalog(1, &[Condition::Ready, Condition::Ready]));
        let pools = kube.poll(t0).expect("first pools").pools;
        assert_eq!(expects(&pools), ["share", "share"]);
        assert!(
            kube.poll(t0 + Duration::from_secs(1)).is_none(),
            "unchanged"
        );
        // The second member starts terminating; a third is not ready yet.
        tx.send_replace(catalog(
            2,
            &[Condition::Ready, Condition::Draining, Condition::NotReady],
        ));
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            expects(&kube.poll(t1).unwrap().pools),
            ["share", "grace", "not ready"]
        );
        // A catalog change within the grace keeps the first-seen time.
        tx.send_replace(catalog(
            3,
            &[Condition::Ready, Condition::Draining, Condition::Ready],
        ));
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!(
            expects(&kube.poll(t2).unwrap().pools),
            ["share", "grace", "share"]
        );
        assert!(kube.poll(t1 + Duration::from_secs(9)).is_none());
        // The grace ends: the pools change with no catalog change.
        let pools = kube
            .poll(t1 + Duration::from_secs(10))
            .expect("grace ended")
            .pools;
        assert_eq!(expects(&pools), ["share", "draining", "share"]);
        assert!(kube.poll(t1 + Duration::from_secs(11)).is_none());
    }

    #[test]
    fn a_member_that_turns_not_ready_is_judged_after_the_grace_and_a_starting_one_never() {
        let (tx, rx) = watch::channel(Arc::new(Catalog::default()));
        let mut kube = KubePools::new(rx, Duration::from_secs(10));
        let t0 = Instant::now();
        // The third member is starting: never ready yet.
        tx.send_replace(catalog(
            1,
            &[Condition::Ready, Condition::Ready, Condition::NotReady],
        ));
        let pools = kube.poll(t0).expect("first pools").pools;
        assert_eq!(expects(&pools), ["share", "share", "not ready"]);
        let Expect::Unjudged { reason, .. } = &pools["default/web:http"].members[2].expect else {
            panic!("a starting member is not judged");
        };
        assert!(reason.contains("starting"), "{reason}");
        // The second fails its readiness probe; the third becomes ready.
        tx.send_replace(catalog(
            2,
            &[Condition::Ready, Condition::NotReady, Condition::Ready],
        ));
        let t1 = t0 + Duration::from_secs(3);
        let pools = kube.poll(t1).unwrap().pools;
        assert_eq!(expects(&pools), ["share", "not ready", "share"]);
        let Expect::Unjudged { reason, .. } = &pools["default/web:http"].members[1].expect else {
            panic!("within the grace it is not judged");
        };
        assert!(reason.contains("left the rules (not ready"), "{reason}");
        // A catalog change within the grace keeps the first-seen time.
        tx.send_replace(catalog(
            3,
            &[Condition::Ready, Condition::NotReady, Condition::Ready],
        ));
        assert_eq!(
            expects(&kube.poll(t1 + Duration::from_secs(4)).unwrap().pools),
            ["share", "not ready", "share"]
        );
        assert!(kube.poll(t1 + Duration::from_secs(9)).is_none());
        let pools = kube
            .poll(t1 + Duration::from_secs(10))
            .expect("grace ended")
            .pools;
        assert_eq!(expects(&pools), ["share", "out", "share"]);
        // Ready again, and not ready again: a fresh grace.
        tx.send_replace(catalog(
            4,
            &[Condition::Ready, Condition::Ready, Condition::Ready],
        ));
        let t2 = t1 + Duration::from_secs(20);
        assert_eq!(
            expects(&kube.poll(t2).unwrap().pools),
            ["share", "share", "share"]
        );
        tx.send_replace(catalog(
            5,
            &[Condition::Ready, Condition::NotReady, Condition::Ready],
        ));
        assert_eq!(
            expects(&kube.poll(t2 + Duration::from_secs(1)).unwrap().pools),
            ["share", "not ready", "share"]
        );
        assert_eq!(
            expects(&kube.poll(t2 + Duration::from_secs(11)).unwrap().pools),
            ["share", "out", "share"]
        );
        // The first starts terminating, then stops serving (its readiness
        // fails while it shuts down): it left the rules when it began
        // draining, and is judged from that grace's end, not a new one's.
        let t3 = t2 + Duration::from_secs(30);
        tx.send_replace(catalog(
            6,
            &[Condition::Draining, Condition::NotReady, Condition::Ready],
        ));
        assert_eq!(
            expects(&kube.poll(t3).unwrap().pools),
            ["grace", "out", "share"]
        );
        tx.send_replace(catalog(
            7,
            &[Condition::NotReady, Condition::NotReady, Condition::Ready],
        ));
        assert_eq!(
            expects(&kube.poll(t3 + Duration::from_secs(6)).unwrap().pools),
            ["not ready", "out", "share"]
        );
        let pools = kube
            .poll(t3 + Duration::from_secs(10))
            .expect("the drain's grace ended")
            .pools;
        assert_eq!(expects(&pools), ["out", "out", "share"]);
    }

    #[test]
    fn a_member_keeps_its_history_when_zone_hints_come_and_go() {
        let (tx, rx) = watch::channel(Arc::new(Catalog::default()));
        let mut kube = KubePools::new(rx, Duration::from_secs(10));
        let t0 = Instant::now();
        // Zone hints: the member is ready in its zone's pool.
        tx.send_replace(catalog_of(1, "default/web:http@z3", &[Condition::Ready]));
        assert_eq!(
            expects_in(
                &kube.poll(t0).expect("first pools").pools,
                "default/web:http@z3"
            ),
            ["share"]
        );
        // It fails its readiness probe, and with too few ready endpoints
        // for the zones the controller drops every hint: one pool again.
        tx.send_replace(catalog_of(2, "default/web:http", &[Condition::NotReady]));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            expects(&kube.poll(t1).unwrap().pools),
            ["not ready"],
            "within the grace"
        );
        let pools = kube
            .poll(t1 + Duration::from_secs(10))
            .expect("the grace ended")
            .pools;
        assert_eq!(
            expects(&pools),
            ["out"],
            "it was ready before its pool was renamed: judged as out of the rules, not as starting"
        );
        // Draining under one name, then under the other: one grace.
        tx.send_replace(catalog_of(3, "default/web:http", &[Condition::Ready]));
        let t2 = t1 + Duration::from_secs(30);
        kube.poll(t2).expect("ready again");
        tx.send_replace(catalog_of(4, "default/web:http", &[Condition::Draining]));
        kube.poll(t2 + Duration::from_secs(1)).expect("draining");
        tx.send_replace(catalog_of(5, "default/web:http@z3", &[Condition::Draining]));
        let pools = kube
            .poll(t2 + Duration::from_secs(11))
            .expect("renamed")
            .pools;
        assert_eq!(expects_in(&pools, "default/web:http@z3"), ["draining"]);
    }
}

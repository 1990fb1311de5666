//! Pools declared by a source other than the agents' labels — the pool
//! file (`--pools`) and Kubernetes (`--kubernetes`) — merged into the one
//! map the pool builder reads.
//!
//! # Precedence when several sources name the same member
//! 1. **Kubernetes** decides a Service port's pool: its members (the
//!    EndpointSlices' addresses with that port), their conditions (ready,
//!    draining, not ready), nodes, zones and Pods.
//! 2. **The pool file** refines a pool *of the same name*: the members it
//!    lists take its weight and `draining` (source `kubernetes+file`), members
//!    only it lists are added (source `file`), and its `lb_nodes`, when
//!    given, replace the load balancers Kubernetes would choose. A member
//!    Kubernetes says is not ready or terminating stays so whatever the
//!    file says: the file cannot know which Pods are.
//!    A file pool under another name keeps its members even when Kubernetes
//!    has them too: they are judged in both pools, as declared. Its
//!    `balancing`, when given, replaces the Service's
//!    `evenflow.io/balancing` annotation.
//! 3. **Agent labels** (`--service NAME=PORT`) announce only endpoints no
//!    Kubernetes pool has: an address:port in a Service's EndpointSlices
//!    belongs to that Service's pool whatever label its agent gives the
//!    port (see [`crate::service::pools`]).

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::Instant,
};

use crate::{
    detect::Balancing,
    service::{
        kube::{KubeDeclared, KubePools},
        poolfile::PoolFile,
    },
};

/// Where a member comes from.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    /// Announced by an agent's labelled listener.
    pub announced: bool,
    /// Declared in the pool file.
    pub file: bool,
    /// An address of a Kubernetes Service's EndpointSlices.
    pub kubernetes: bool,
}

impl Source {
    /// "announced", "file", "announced+file", "kubernetes" or
    /// "kubernetes+file".
    pub fn as_str(self) -> &'static str {
        match (self.kubernetes, self.announced, self.file) {
            (true, _, true) => "kubernetes+file",
            (true, _, false) => "kubernetes",
            (false, true, true) => "announced+file",
            (false, false, true) => "file",
            _ => "announced",
        }
    }
}

/// What a member is expected to receive.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Expect {
    /// Its weighted share; judged.
    #[default]
    Share,
    /// No new connections; judged (a draining violation if it gets them).
    Draining,
    /// No new connections, because Kubernetes says it is not ready (it was
    /// ready, and its grace has passed); judged as [`Expect::Draining`] is.
    NotReady,
    /// Not judged at all, for the reason given: shown with its measured
    /// numbers (a Kubernetes endpoint that is not ready, or one that began
    /// terminating less than the drain grace ago).
    Unjudged {
        /// Draining (terminating) rather than not ready.
        draining: bool,
        /// Why it is not judged, for people.
        reason: String,
    },
}

/// One member as a source declares it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeclaredMember {
    /// Backend address and port.
    pub addr: SocketAddr,
    /// Relative weight, > 0.
    pub weight: f64,
    /// What it should receive.
    pub expect: Expect,
    /// The node whose agent sees its server side (Kubernetes: the
    /// endpoint's nodeName), even before it has served anything.
    pub node: Option<Arc<str>>,
    /// The Pod behind it, "namespace/name".
    pub pod: Option<Arc<str>>,
    /// Its zone.
    pub zone: Option<Arc<str>>,
    /// Which sources name it.
    pub source: Source,
}

/// Which nodes' SENDS_TO traffic is a pool's load balancer view.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum LbNodes {
    /// Every node that sends to a member.
    #[default]
    Senders,
    /// Exactly these nodes (the pool file's `lb_nodes`).
    Named(Vec<String>),
    /// The nodes among these that send to a member (a topology-aware
    /// Service's zone or node).
    SendersAmong(Arc<BTreeSet<String>>),
}

/// The Kubernetes Service port a pool stands for (the proto's
/// `KubernetesService`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeService {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub service: String,
    /// Port name ("" for a single unnamed port).
    pub port_name: String,
    /// The Service port.
    pub port: u16,
    /// Cluster IPs.
    pub cluster_ips: Vec<String>,
    /// The zone this pool is, for a Service routed by zone hints.
    pub zone: String,
    /// The node this pool is, for internalTrafficPolicy: Local.
    pub node: String,
}

/// One declared pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeclaredPool {
    /// Members, by address.
    pub members: Vec<DeclaredMember>,
    /// Its load balancer view.
    pub lb_nodes: LbNodes,
    /// Set for a Kubernetes Service port.
    pub kubernetes: Option<Arc<KubeService>>,
    /// Said with the pool's verdict (e.g. why a Service that asks for
    /// topology-aware routing is judged as one pool).
    pub note: Option<Arc<str>>,
    /// How its balancer places new connections (pool file `balancing`,
    /// annotation `evenflow.io/balancing`).
    pub balancing: Balancing,
}

/// Every declared pool, by name, and the members Kubernetes places.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Declared {
    /// Pools by name.
    pub pools: BTreeMap<Arc<str>, DeclaredPool>,
    /// Every address:port a Kubernetes Service has (its pools', and those
    /// of Services that make none): agents' labels do not announce these
    /// into their own pools.
    pub kubernetes_members: HashSet<SocketAddr>,
}

impl Declared {
    /// Merges the pool file into the Kubernetes pools by the precedence in
    /// the module docs.
    pub fn merge(kube: BTreeMap<Arc<str>, DeclaredPool>, file: &PoolFile) -> Self {
        let kubernetes_members = kube
            .values()
            .flat_map(|pool| pool.members.iter().map(|member| member.addr))
            .collect();
        let mut pools = kube;
        for (name, file_pool) in file {
            // A Service's parts (`…@zone`, `…@node`, `…@IPv6`) take the
            // whole's balancing; an entry that names nothing but that
            // makes no pool of its own beside them.
            let parts = format!("{name}@");
            let split = pools.keys().any(|pool| pool.starts_with(&parts));
            if let Some(balancing) = file_pool.balancing {
                for (_, pool) in pools
                    .iter_mut()
                    .filter(|(pool, _)| pool.starts_with(&parts))
                {
                    pool.balancing = balancing;
                }
            }
            if split && file_pool.members.is_empty() && !pools.contains_key(name.as_str()) {
                continue;
            }
            let pool = pools.entry(Arc::from(name.as_str())).or_default();
            for file_member in &file_pool.members {
                let known =
                    (pool.members.iter()).position(|member| member.addr == file_member.addr);
                let index = match known {
                    Some(index) => index,
                    None => {
                        pool.members.push(DeclaredMember {
                            addr: file_member.addr,
                            weight: 1.0,
                            expect: Expect::Share,
                            node: None,
                            pod: None,
                            zone: None,
                            source: Source::default(),
                        });
                        pool.members.len() - 1
                    }
                };
                let member = &mut pool.members[index];
                member.weight = file_member.weight;
                member.source.file = true;
                // The file refines what the API says but cannot know which
                // Pods are terminating or not ready: those stay as they are.
                if matches!(member.expect, Expect::Share) && file_member.draining {
                    member.expect = Expect::Draining;
                }
            }
            if !file_pool.lb_nodes.is_empty() {
                pool.lb_nodes = LbNodes::Named(file_pool.lb_nodes.clone());
            }
            if let Some(balancing) = file_pool.balancing {
                pool.balancing = balancing;
            }
        }
        for pool in pools.values_mut() {
            say_balancing(pool);
        }
        Self {
            pools,
            kubernetes_members,
        }
    }

    /// The pool file alone.
    pub fn from_file(file: &PoolFile) -> Self {
        Self::merge(BTreeMap::new(), file)
    }
}

/// Adds to a least-connections pool's note that its new connections are
/// not judged, so whoever reads its verdict knows why no ZERO or SKEW on
/// them can come.
fn say_balancing(pool: &mut DeclaredPool) {
    if pool.balancing.judges_new_connections() {
        return;
    }
    let said = Balancing::LEAST_CONNECTIONS_NOTE;
    pool.note = Some(match &pool.note {
        Some(note) => Arc::from(format!("{note}; {said}")),
        None => Arc::from(said),
    });
}

/// The declared sources the detection tick reads: the pool file (read
/// again when it changes) and, with `--kubernetes`, the API's latest
/// pools. The merged map is rebuilt only when one of them changes.
pub struct Sources {
    file: PoolFile,
    /// New versions of the pool file, from its reloader's thread.
    reloads: Option<std::sync::mpsc::Receiver<PoolFile>>,
    kube: Option<KubePools>,
    /// What Kubernetes declared last, merged again when the file changes.
    kube_declared: KubeDeclared,
    current: Arc<Declared>,
}

impl Sources {
    /// The pool file (and its new versions), and Kubernetes' pools when
    /// watched.
    pub fn new(
        file: PoolFile,
        reloads: Option<std::sync::mpsc::Receiver<PoolFile>>,
        kube: Option<KubePools>,
    ) -> Self {
        let current = Arc::new(Declared::from_file(&file));
        Self {
            file,
            reloads,
            kube,
            kube_declared: KubeDeclared::default(),
            current,
        }
    }

    /// The declared pools for a tick at `now`.
    pub fn at(&mut self, now: Instant) -> Arc<Declared> {
        // The latest version sent since the last tick.
        let file = (self.reloads.as_ref()).and_then(|reloads| reloads.try_iter().last());
        let kube = self.kube.as_mut().and_then(|kube| kube.poll(now));
        if file.is_none() && kube.is_none() {
            return self.current.clone();
        }
        if let Some(file) = file {
            self.file = file;
        }
        if let Some(declared) = kube {
            self.kube_declared = declared;
        }
        let mut merged = Declared::merge(self.kube_declared.pools.clone(), &self.file);
        (merged.kubernetes_members).extend(self.kube_declared.unpooled.iter().copied());
        self.current = Arc::new(merged);
        self.current.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kube_member(addr: &str, expect: Expect) -> DeclaredMember {
        DeclaredMember {
            addr: addr.parse().unwrap(),
            weight: 1.0,
            expect,
            node: Some("n1".into()),
            pod: Some("default/web-1".into()),
            zone: None,
            source: Source {
                kubernetes: true,
                ..Source::default()
            },
        }
    }

    #[test]
    fn the_file_refines_a_kubernetes_pool_of_the_same_name() {
        let mut kube = BTreeMap::new();
        kube.insert(
            Arc::from("default/web:http"),
            DeclaredPool {
                members: vec![
                    kube_member("10.0.0.1:8080", Expect::Share),
                    kube_member(
                        "10.0.0.2:8080",
                        Expect::Unjudged {
                            draining: false,
                            reason: "not ready".into(),
                        },
                    ),
                    kube_member("10.0.0.3:8080", Expect::Draining),
                ],
                ..DeclaredPool::default()
            },
        );
        let file = crate::service::poolfile::parse(
            std::path::Path::new("p.toml"),
            r#"
[[pool]]
name = "default/web:http"
lb_nodes = ["lb"]
members = [
  { address = "10.0.0.1:8080", weight = 3 },
  { address = "10.0.0.2:8080", draining = true },
  { address = "10.0.0.3:8080", weight = 2 },
  { address = "10.0.0.9:8080" },
]
[[pool]]
name = "legacy"
members = [{ address = "10.0.0.1:8080" }]
"#,
        )
        .unwrap();
        let declared = Declared::merge(kube, &file);
        let web = &declared.pools["default/web:http"];
        assert_eq!(web.members[0].weight, 3.0);
        assert_eq!(web.members[0].source.as_str(), "kubernetes+file");
        // Not ready stays not ready.
        assert!(matches!(web.members[1].expect, Expect::Unjudged { .. }));
        // A terminating Pod stays draining whatever the file says.
        assert_eq!(web.members[2].expect, Expect::Draining);
        assert_eq!(web.members[2].weight, 2.0);
        assert_eq!(web.members[3].source.as_str(), "file");
        assert_eq!(web.lb_nodes, LbNodes::Named(vec!["lb".into()]));
        // Another pool of the file keeps the Kubernetes member too.
        assert_eq!(declared.pools["legacy"].members.len(), 1);
        assert!(
            declared
                .kubernetes_members
                .contains(&"10.0.0.1:8080".parse().unwrap())
        );
        assert!(
            !declared
                .kubernetes_members
                .contains(&"10.0.0.9:8080".parse().unwrap())
        );
    }

    #[test]
    fn a_least_connections_pool_says_so_in_its_note_and_the_file_decides() {
        let mut kube = BTreeMap::new();
        for name in ["default/grpc:h2", "default/web:http"] {
            kube.insert(
                Arc::from(name),
                DeclaredPool {
                    members: vec![kube_member("10.0.0.1:8080", Expect::Share)],
                    note: Some("dual-stack".into()),
                    balancing: Balancing::LeastConnections,
                    ..DeclaredPool::default()
                },
            );
        }
        let file = crate::service::poolfile::parse(
            std::path::Path::new("p.toml"),
            r#"
[[pool]]
name = "default/web:http"
balancing = "weighted"
[[pool]]
name = "legacy"
balancing = "least-connections"
members = [{ address = "10.0.0.2:8080" }]
"#,
        )
        .unwrap();
        let declared = Declared::merge(kube, &file);
        let grpc = &declared.pools["default/grpc:h2"];
        assert_eq!(grpc.balancing, Balancing::LeastConnections);
        assert_eq!(
            grpc.note.as_deref(),
            Some(
                "dual-stack; least-connections: new connections are not judged, open connections are"
            )
        );
        // The file overrides the annotation.
        let web = &declared.pools["default/web:http"];
        assert_eq!(web.balancing, Balancing::Weighted);
        assert_eq!(web.note.as_deref(), Some("dual-stack"));
        let legacy = &declared.pools["legacy"];
        assert_eq!(legacy.balancing, Balancing::LeastConnections);
        assert_eq!(
            legacy.note.as_deref(),
            Some(Balancing::LEAST_CONNECTIONS_NOTE)
        );
    }

    #[test]
    fn a_file_balancing_reaches_a_services_parts_and_makes_no_pool_beside_them() {
        let mut kube = BTreeMap::new();
        for name in ["default/api:grpc@zone-a", "default/api:grpc@zone-b"] {
            kube.insert(
                Arc::from(name),
                DeclaredPool {
                    members: vec![kube_member("10.0.0.1:8080", Expect::Share)],
                    balancing: Balancing::LeastConnections,
                    ..DeclaredPool::default()
                },
            );
        }
        let file = crate::service::poolfile::parse(
            std::path::Path::new("p.toml"),
            "[[pool]]\nname = \"default/api:grpc\"\nbalancing = \"weighted\"\n",
        )
        .unwrap();
        let declared = Declared::merge(kube, &file);
        for part in ["default/api:grpc@zone-a", "default/api:grpc@zone-b"] {
            assert_eq!(
                declared.pools[part].balancing,
                Balancing::Weighted,
                "{part}"
            );
        }
        assert!(
            !declared.pools.contains_key("default/api:grpc"),
            "{:?}",
            declared.pools.keys().collect::<Vec<_>>()
        );
    }
}

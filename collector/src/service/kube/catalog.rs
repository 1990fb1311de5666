//! What the Kubernetes API says the pools are, computed from Services,
//! EndpointSlices and Node zones. Pure: no clocks, no I/O, so every rule
//! here is checked on objects built in the tests.
//!
//! # Rules
//! * One pool per TCP Service port, named `namespace/service:port` where
//!   `port` is the Service port's name, or its number when unnamed.
//!   ExternalName Services and UDP/SCTP ports make no pool (evenflow counts
//!   TCP).
//! * Its members are the addresses of the Service's EndpointSlices (label
//!   `kubernetes.io/service-name`; FQDN slices skipped) with the slice
//!   port of the same name: `address:port`, from each endpoint's first
//!   address (the only one the API lets consumers use). An address in two
//!   slices (a transient state while the controller rebalances) is one
//!   member, with the better condition.
//! * A dual-stack Service port is one pool per IP family: kube-proxy
//!   balances each family on its own. The Service's first family keeps
//!   the plain name, the other is `…@IPv4` or `…@IPv6`.
//! * Conditions, as kube-proxy reads them (a missing `ready` or `serving`
//!   counts as true, a missing `terminating` as false): `ready` →
//!   [`Condition::Ready`]; `serving` and `terminating` →
//!   [`Condition::Draining`]; anything else → [`Condition::NotReady`].
//!   Where none is ready (the whole pool, or under `internalTrafficPolicy:
//!   Local` a node's own endpoints) kube-proxy sends new connections to
//!   the serving terminating ones, and so they count as ready there.
//! * Topology. When every ready endpoint carries `hints.forZones` (what
//!   `trafficDistribution: PreferClose` and topology-aware routing give),
//!   kube-proxy on a node of zone Z sends only to the endpoints hinted for
//!   Z, so the skew between zones is intended: the Service becomes one pool
//!   per zone (`…@Z`), its ready members the endpoints hinted for Z, its
//!   draining and not-ready members those located in Z, and its load
//!   balancer view the sends of Z's nodes only. With
//!   `internalTrafficPolicy: Local` each node sends only to its own
//!   endpoints: one pool per node (`…@node`), judged against that node's
//!   sends (an endpoint without a `nodeName` is reachable from no node's
//!   rules, and in no pool). A Service that asks for topology routing while some ready
//!   endpoint lacks a hint is routed cluster-wide by kube-proxy, and judged
//!   as one pool with a note saying so.
//! * Balancing. The annotation `evenflow.io/balancing: least-connections`
//!   says the Service's traffic reaches its endpoints through a
//!   least-connections balancer (an ingress or mesh in front, not
//!   kube-proxy): every pool of the Service is judged on its open
//!   connections, not on its split of new connections
//!   ([`Balancing::LeastConnections`]); `sticky` says each client sticks
//!   to one endpoint, and so does a Service without the annotation under
//!   `sessionAffinity: ClientIP`, or reached from outside through every
//!   node under `externalTrafficPolicy: Local` ([`Balancing::Sticky`]: one
//!   node's own split is not judged). A value not understood leaves the
//!   pools judged as weighted, with a note naming the value.
//! * Headless Services (`clusterIP: None`) make no pool unless that
//!   annotation names their balancing. No kube-proxy rule chooses among
//!   their endpoints: clients pick them by name (a StatefulSet's `db-0`)
//!   or from DNS, so an uneven split is no fault. A headless Service whose
//!   clients do balance over its DNS answer (gRPC's `round_robin`, a mesh)
//!   is annotated to be judged, as one pool per port and family: topology
//!   and the terminating fallback are kube-proxy's, and do not apply. Its
//!   load balancer view is the clients' nodes' sends to the Pods.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Service, ServicePort, ServiceSpec},
    discovery::v1::{Endpoint, EndpointConditions, EndpointSlice},
};

use crate::{
    detect::Balancing,
    service::declared::{KubeService, LbNodes},
};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The Node label that names its zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The annotation that asks for topology-aware routing (1.27+).
pub const TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";
/// Its older name (1.23–1.26).
pub const TOPOLOGY_HINTS: &str = "service.kubernetes.io/topology-aware-hints";
/// The annotation that names how the Service's balancer places new
/// connections ([`Balancing`]).
pub const BALANCING: &str = "evenflow.io/balancing";

/// An endpoint's condition, as kube-proxy reads it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Condition {
    /// Neither ready nor draining: gets nothing.
    NotReady,
    /// Terminating but still serving: gets no new connections.
    Draining,
    /// Serves its share.
    Ready,
}

/// One member of a Service port's pool.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// Address and (target) port.
    pub addr: SocketAddr,
    /// Its condition.
    pub condition: Condition,
    /// The node it runs on.
    pub node: Option<Arc<str>>,
    /// Its zone.
    pub zone: Option<Arc<str>>,
    /// The Pod, "namespace/name".
    pub pod: Option<Arc<str>>,
    /// The zones it is hinted for.
    pub for_zones: Vec<Arc<str>>,
}

/// One pool: a Service port, or one zone's or node's part of it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePool {
    /// `namespace/service:port`, with `@zone` or `@node` for a part.
    pub name: Arc<str>,
    /// The Service port it stands for.
    pub service: Arc<KubeService>,
    /// Members, sorted by address.
    pub members: Vec<Member>,
    /// Its load balancer view.
    pub lb_nodes: LbNodes,
    /// Said with its verdict.
    pub note: Option<Arc<str>>,
    /// How its balancer places new connections.
    pub balancing: Balancing,
}

/// Everything the API says, as of one moment.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// Every watched resource was listed at least once: until then there
    /// are no Kubernetes pools (a half-listed cluster would look like
    /// Services without endpoints).
    pub synced: bool,
    /// Increments with every rebuild.
    pub version: u64,
    /// Pools, sorted by name.
    pub pools: Vec<ServicePool>,
    /// Endpoints of Services that make no pool (headless ones not
    /// annotated): still theirs, so agents' labels do not announce them.
    pub unpooled: Arc<[SocketAddr]>,
}

fn condition(conditions: Option<&EndpointConditions>) -> Condition {
    let ready = conditions.and_then(|given| given.ready).unwrap_or(true);
    let serving = conditions.and_then(|given| given.serving).unwrap_or(ready);
    let terminating = (conditions.and_then(|given| given.terminating)).unwrap_or(false);
    match (terminating, ready, serving) {
        (true, _, true) => Condition::Draining,
        (false, true, _) => Condition::Ready,
        _ => Condition::NotReady,
    }
}

/// The Service's balancing hint ([`BALANCING`]) and, for a value that is
/// not one, a note saying so: such a pool is judged as weighted, as if
/// there were no annotation, rather than not judged on a typo.
fn balancing(svc: &Service) -> (Balancing, Option<Arc<str>>) {
    let Some(value) = annotation(svc) else {
        return (sticky_or_weighted(svc), None);
    };
    match Balancing::from_name(value) {
        Some(balancing) => (balancing, None),
        None => (
            Balancing::default(),
            Some(Arc::from(format!(
                "annotation {BALANCING}: {value:?} is not understood (allowed: {}): new connections are judged against the weights",
                Balancing::ALLOWED
            ))),
        ),
    }
}

/// How kube-proxy places a Service's connections without an annotation:
/// [`Balancing::Sticky`] under `sessionAffinity: ClientIP` (each client
/// to one endpoint) or, on a Service outside clients reach through every
/// node (NodePort, LoadBalancer), `externalTrafficPolicy: Local` (each
/// node to its own endpoints); by weight otherwise.
fn sticky_or_weighted(svc: &Service) -> Balancing {
    let Some(spec) = svc.spec.as_ref() else {
        return Balancing::Weighted;
    };
    let affinity = spec.session_affinity.as_deref() == Some("ClientIP");
    let external = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    let local = spec.external_traffic_policy.as_deref() == Some("Local");
    if affinity || (external && local) {
        Balancing::Sticky
    } else {
        Balancing::Weighted
    }
}

/// The Service's `evenflow.io/balancing` annotation, if it has one.
fn annotation(svc: &Service) -> Option<&String> {
    (svc.metadata.annotations.as_ref()).and_then(|a| a.get(BALANCING))
}

/// Said with every pool of an annotated headless Service.
const HEADLESS_NOTE: &str = "headless Service, judged as its evenflow.io/balancing annotation says: its clients choose the endpoints from DNS";

fn tcp(protocol: Option<&String>) -> bool {
    protocol.is_none_or(|name| name == "TCP")
}

fn pod_of(endpoint: &Endpoint, slice_ns: &str) -> Option<Arc<str>> {
    let target = endpoint.target_ref.as_ref()?;
    if target.kind.as_deref().is_some_and(|kind| kind != "Pod") {
        return None;
    }
    let ns = target.namespace.as_deref().unwrap_or(slice_ns);
    Some(Arc::from(format!("{ns}/{}", target.name.as_deref()?)))
}

/// Interns repeated strings (node and zone names) so members share them.
#[derive(Default)]
struct Names(BTreeSet<Arc<str>>);

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.0.get(name) {
            return known.clone();
        }
        let interned: Arc<str> = Arc::from(name);
        self.0.insert(interned.clone());
        interned
    }
}

/// The members of one Service port from its slices.
fn members(port: &ServicePort, slices: &[&EndpointSlice], names: &mut Names) -> Vec<Member> {
    let want = port.name.as_deref().unwrap_or("");
    let mut by_addr: BTreeMap<SocketAddr, Member> = BTreeMap::new();
    for slice in slices {
        if slice.address_type == "FQDN" {
            continue;
        }
        let Some(target) = slice
            .ports
            .iter()
            .flatten()
            .find(|port| port.name.as_deref().unwrap_or("") == want && tcp(port.protocol.as_ref()))
            .and_then(|port| port.port)
            .and_then(|number| u16::try_from(number).ok())
            .filter(|number| *number != 0)
        else {
            continue;
        };
        let ns = slice.metadata.namespace.as_deref().unwrap_or("");
        for endpoint in &slice.endpoints {
            let condition = condition(endpoint.conditions.as_ref());
            // Only the first address: the API lets consumers use no other,
            // and kube-proxy routes to no other.
            if let Some(address) = endpoint.addresses.first() {
                let Ok(ip) = address.parse::<IpAddr>() else {
                    continue;
                };
                let addr = SocketAddr::new(ip, target);
                if (by_addr.get(&addr)).is_some_and(|known| known.condition >= condition) {
                    continue;
                }
                let for_zones = endpoint
                    .hints
                    .as_ref()
                    .and_then(|hints| hints.for_zones.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|zone| names.get(&zone.name))
                    .collect();
                by_addr.insert(
                    addr,
                    Member {
                        addr,
                        condition,
                        node: endpoint.node_name.as_deref().map(|node| names.get(node)),
                        zone: endpoint.zone.as_deref().map(|zone| names.get(zone)),
                        pod: pod_of(endpoint, ns),
                        for_zones,
                    },
                );
            }
        }
    }
    by_addr.into_values().collect()
}

/// Every pool the API describes. `node_zones` maps node names to zones
/// (the Nodes' `topology.kubernetes.io/zone`).
pub fn build<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node_zones: &BTreeMap<String, String>,
) -> Vec<ServicePool> {
    build_all(services, slices, node_zones).0
}

/// [`build`], and the endpoints of the Services that make no pool.
pub fn build_all<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node_zones: &BTreeMap<String, String>,
) -> (Vec<ServicePool>, Vec<SocketAddr>) {
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let (Some(ns), Some(svc)) = (
            slice.metadata.namespace.as_deref(),
            slice
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(SERVICE_NAME_LABEL)),
        ) else {
            continue;
        };
        by_service
            .entry((ns, svc.as_str()))
            .or_default()
            .push(slice);
    }
    let mut names = Names::default();
    let mut out = Vec::new();
    let mut unpooled = Vec::new();
    for svc in services {
        let (Some(ns), Some(name), Some(spec)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
            svc.spec.as_ref(),
        ) else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let pooled = !headless || annotation(svc).is_some();
        let slices = by_service
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let cluster_ips: Vec<String> = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => ips.clone(),
            _ => spec.cluster_ip.iter().cloned().collect(),
        }
        .into_iter()
        .filter(|ip| ip != "None" && !ip.is_empty())
        .collect();
        let (balancing, mut note) = balancing(svc);
        if headless {
            note = Some(also(note.as_ref(), HEADLESS_NOTE));
        }
        for port in spec.ports.iter().flatten() {
            if !tcp(port.protocol.as_ref()) {
                continue;
            }
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            if !pooled {
                let members = members(port, slices, &mut names);
                unpooled.extend(members.iter().map(|member| member.addr));
                continue;
            }
            let port_name = port.name.clone().unwrap_or_default();
            let label = if port_name.is_empty() {
                number.to_string()
            } else {
                port_name.clone()
            };
            let service = KubeService {
                namespace: ns.to_owned(),
                service: name.to_owned(),
                port_name,
                port: number,
                cluster_ips: cluster_ips.clone(),
                zone: String::new(),
                node: String::new(),
            };
            let whole = ServicePool {
                name: Arc::from(format!("{ns}/{name}:{label}")),
                service: Arc::new(service),
                members: members(port, slices, &mut names),
                lb_nodes: LbNodes::Senders,
                note: note.clone(),
                balancing,
            };
            for family in by_family(spec, whole, headless) {
                // Topology and the terminating fallback are kube-proxy's,
                // which a headless Service's clients do not go through.
                if headless {
                    out.push(family);
                } else {
                    split(svc, family, node_zones, &mut out);
                }
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    (out, unpooled)
}

/// A dual-stack Service port's pool as one pool per IP family: kube-proxy
/// balances each family on its own (a client of the IPv4 cluster IP only
/// ever reaches IPv4 endpoints), so members of one family are not short of
/// the other's share. The Service's first family keeps the plain name, the
/// other is `…@IPv4` or `…@IPv6`. A single-stack pool is returned whole.
/// (An annotated headless Service splits the same way: each client
/// connects over one family at a time.)
fn by_family(spec: &ServiceSpec, whole: ServicePool, headless: bool) -> Vec<ServicePool> {
    let (v4, v6): (Vec<Member>, Vec<Member>) =
        (whole.members.iter().cloned()).partition(|member| member.addr.is_ipv4());
    if v4.is_empty() || v6.is_empty() {
        return vec![whole];
    }
    let v6_first = (spec.ip_families.as_deref())
        .and_then(<[String]>::first)
        .is_some_and(|family| family == "IPv6");
    let of_family = |members: Vec<Member>, v4: bool, first: bool| {
        let family = if v4 { "IPv4" } else { "IPv6" };
        let mut service = (*whole.service).clone();
        service
            .cluster_ips
            .retain(|ip| ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4() == v4));
        ServicePool {
            name: if first {
                whole.name.clone()
            } else {
                Arc::from(format!("{}@{family}", whole.name))
            },
            service: Arc::new(service),
            members,
            lb_nodes: whole.lb_nodes.clone(),
            note: Some(also(
                whole.note.as_ref(),
                &if headless {
                    format!(
                        "dual-stack: its clients connect over one IP family at a time, so this pool is the {family} endpoints"
                    )
                } else {
                    format!(
                        "dual-stack: kube-proxy balances each IP family on its own, so this pool is the {family} endpoints"
                    )
                },
            )),
            balancing: whole.balancing,
        }
    };
    vec![
        of_family(v4, true, !v6_first),
        of_family(v6, false, v6_first),
    ]
}

/// kube-proxy's last resort (KEP-1669): when none of `members` is ready,
/// it sends new connections to those still serving while terminating, so
/// they are judged as ready rather than as draining. Whether it did so.
fn serve_terminating_if_none_ready(members: &mut [Member]) -> bool {
    if members
        .iter()
        .any(|member| member.condition == Condition::Ready)
    {
        return false;
    }
    let mut any = false;
    for member in members
        .iter_mut()
        .filter(|member| member.condition == Condition::Draining)
    {
        member.condition = Condition::Ready;
        any = true;
    }
    any
}

/// `note`, then `more`.
fn also(note: Option<&Arc<str>>, more: &str) -> Arc<str> {
    match note {
        Some(note) => Arc::from(format!("{note}; {more}")),
        None => Arc::from(more),
    }
}

const SERVING_TERMINATING: &str = "no endpoint is ready: kube-proxy sends new connections to the ones still serving while they terminate, so they are judged as ready";

/// Splits a Service port's pool by topology (module docs), or returns it
/// whole with a note when the Service asks for topology kube-proxy will
/// not apply.
fn split(
    svc: &Service,
    mut whole: ServicePool,
    node_zones: &BTreeMap<String, String>,
    out: &mut Vec<ServicePool>,
) {
    let spec = svc.spec.as_ref();
    let local = spec.and_then(|spec| spec.internal_traffic_policy.as_deref()) == Some("Local");
    // The fallback ignores topology: kube-proxy takes it only when no
    // endpoint anywhere is ready.
    if !local && serve_terminating_if_none_ready(&mut whole.members) {
        whole.note = Some(also(whole.note.as_ref(), SERVING_TERMINATING));
        out.push(whole);
        return;
    }
    let ready: Vec<&Member> = whole
        .members
        .iter()
        .filter(|member| member.condition == Condition::Ready)
        .collect();
    if local {
        let nodes: BTreeSet<&Arc<str>> = whole
            .members
            .iter()
            .filter_map(|member| member.node.as_ref())
            .collect();
        for node in nodes {
            // Each node falls back on its own endpoints alone.
            let mut own = part(
                &whole,
                node,
                |service| service.node = node.to_string(),
                |member| member.node.as_ref() == Some(node),
                [node.to_string()].into(),
                "internalTrafficPolicy: Local: each node sends only to its own endpoints, so this pool is one node's endpoints judged against that node's sends".into(),
            );
            if serve_terminating_if_none_ready(&mut own.members) {
                own.note = Some(also(own.note.as_ref(), SERVING_TERMINATING));
            }
            out.push(own);
        }
        return;
    }
    let hinted = !ready.is_empty() && ready.iter().all(|member| !member.for_zones.is_empty());
    if !hinted {
        let asked = spec
            .and_then(|spec| spec.traffic_distribution.as_deref())
            .map(|distribution| format!("trafficDistribution: {distribution}"))
            .or_else(|| {
                let annotations = svc.metadata.annotations.as_ref()?;
                (annotations.get(TOPOLOGY_MODE))
                    .or_else(|| annotations.get(TOPOLOGY_HINTS))
                    .filter(|mode| !mode.is_empty() && mode.as_str() != "Disabled")
                    .map(|mode| format!("topology mode {mode}"))
            });
        let note = asked.filter(|_| !ready.is_empty()).map(|asked| {
            also(
                whole.note.as_ref(),
                &format!(
                    "{asked}, but not every ready endpoint has a zone hint, so kube-proxy routes cluster-wide: judged as one pool"
                ),
            )
        });
        out.push(ServicePool {
            note: note.or(whole.note.clone()),
            ..whole
        });
        return;
    }
    let zones: BTreeSet<&Arc<str>> = (ready.iter())
        .flat_map(|member| member.for_zones.iter())
        .collect();
    for zone in zones {
        // The zone's nodes: from the Nodes' labels and the endpoints' own.
        let mut nodes: BTreeSet<String> = node_zones
            .iter()
            .filter(|(_, node_zone)| node_zone.as_str() == &**zone)
            .map(|(node, _)| node.clone())
            .collect();
        nodes.extend(
            whole
                .members
                .iter()
                .filter(|member| member.zone.as_ref() == Some(zone))
                .filter_map(|member| member.node.as_deref().map(str::to_owned)),
        );
        out.push(part(
            &whole,
            zone,
            |service| service.zone = zone.to_string(),
            |member| match member.condition {
                Condition::Ready => member.for_zones.contains(zone),
                _ if !member.for_zones.is_empty() => member.for_zones.contains(zone),
                _ => member.zone.as_ref().is_none_or(|own| own == zone),
            },
            nodes,
            format!(
                "topology-aware routing (zone hints): clients on {zone}'s nodes are sent to the endpoints hinted for {zone} only, so this pool is judged against {zone}'s load balancer view"
            ),
        ));
    }
}

/// The part `@at` of a Service port's pool: the members `keep` selects,
/// judged against the sends of `lb_nodes`.
fn part(
    whole: &ServicePool,
    at: &str,
    mark: impl FnOnce(&mut KubeService),
    keep: impl Fn(&Member) -> bool,
    lb_nodes: BTreeSet<String>,
    note: String,
) -> ServicePool {
    let mut service = (*whole.service).clone();
    mark(&mut service);
    ServicePool {
        name: Arc::from(format!("{}@{at}", whole.name)),
        service: Arc::new(service),
        members: (whole.members.iter())
            .filter(|member| keep(member))
            .cloned()
            .collect(),
        lb_nodes: LbNodes::SendersAmong(Arc::new(lb_nodes)),
        note: Some(also(whole.note.as_ref(), &note)),
        balancing: whole.balancing,
    }
}

#[cfg(test)]
mod tests;

//! Kubernetes objects as the tests need them, built with k8s-openapi's
//! types: a Service with its ports, its EndpointSlice as the EndpointSlice
//! controller writes it, and Nodes with their zones.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{Node, ObjectReference, Service, ServicePort, ServiceSpec},
        discovery::v1::{
            Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForZone,
        },
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

/// The label tying a slice to its Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The Node label naming its zone.
pub const ZONE: &str = "topology.kubernetes.io/zone";

/// A ClusterIP Service selecting `app=<name>`, with `ports` as
/// (name, port, target port).
pub fn service(
    namespace: &str,
    name: &str,
    cluster_ip: &str,
    ports: &[(&str, i32, i32)],
) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(cluster_ip.into()),
            cluster_ips: Some(vec![cluster_ip.into()]),
            selector: Some([("app".to_owned(), name.to_owned())].into()),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, t)| ServicePort {
                        name: (!n.is_empty()).then(|| (*n).to_owned()),
                        port: *p,
                        target_port: Some(IntOrString::Int(*t)),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            internal_traffic_policy: Some("Cluster".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Node in `zone`.
pub fn node(name: &str, zone: Option<&str>) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                [("kubernetes.io/hostname".to_owned(), name.to_owned())]
                    .into_iter()
                    .chain(zone.map(|z| (ZONE.to_owned(), z.to_owned())))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// An endpoint's lifecycle state, as the EndpointSlice controller writes
/// its conditions.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Started, readiness probe not passed: ready false, serving false.
    Starting,
    /// ready, serving.
    Ready,
    /// Running and failing its readiness probe after it was ready: the
    /// same conditions as `Starting` (ready false, serving false).
    NotReady,
    /// Deleted, still passing readiness: ready false, serving true,
    /// terminating true.
    Terminating,
    /// Deleted and failing readiness: ready false, serving false,
    /// terminating true.
    TerminatingNotServing,
}

/// One Pod's endpoint.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Pod name (its namespace is the slice's).
    pub name: String,
    /// Pod IP.
    pub ip: String,
    /// Node it runs on.
    pub node: String,
    /// Zone of that node.
    pub zone: Option<String>,
    /// Lifecycle state.
    pub state: State,
    /// `hints.forZones`.
    pub for_zones: Vec<String>,
}

impl Pod {
    /// A ready Pod without zone or hints.
    pub fn ready(name: &str, ip: &str, node: &str) -> Self {
        Self {
            name: name.into(),
            ip: ip.into(),
            node: node.into(),
            zone: None,
            state: State::Ready,
            for_zones: Vec::new(),
        }
    }

    fn endpoint(&self, namespace: &str) -> Endpoint {
        let (ready, serving, terminating) = match self.state {
            State::Starting | State::NotReady => (false, false, false),
            State::Ready => (true, true, false),
            State::Terminating => (false, true, true),
            State::TerminatingNotServing => (false, false, true),
        };
        Endpoint {
            addresses: vec![self.ip.clone()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            node_name: Some(self.node.clone()),
            zone: self.zone.clone(),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some(namespace.into()),
                name: Some(self.name.clone()),
                ..Default::default()
            }),
            hints: (!self.for_zones.is_empty()).then(|| EndpointHints {
                for_zones: Some(
                    self.for_zones
                        .iter()
                        .map(|z| ForZone { name: z.clone() })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// The IPv4 EndpointSlice `<service>-<suffix>` of a Service with one port
/// `(name, target port)` and these Pods, labelled as the controller labels
/// it.
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    suffix: &str,
    port: (&str, i32),
    pods: &[Pod],
) -> EndpointSlice {
    let labels: BTreeMap<String, String> = [
        (SERVICE_NAME.to_owned(), service.to_owned()),
        (
            "endpointslice.kubernetes.io/managed-by".to_owned(),
            "endpointslice-controller.k8s.io".to_owned(),
        ),
    ]
    .into();
    EndpointSlice {
        address_type: "IPv4".into(),
        metadata: ObjectMeta {
            name: Some(format!("{service}-{suffix}")),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            ..Default::default()
        },
        ports: Some(vec![EndpointPort {
            name: (!port.0.is_empty()).then(|| port.0.to_owned()),
            port: Some(port.1),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        endpoints: pods.iter().map(|p| p.endpoint(namespace)).collect(),
    }
}

use k8s_openapi::{
    api::{
        core::v1::{ObjectReference, ServiceSpec},
        discovery::v1::{EndpointHints, EndpointPort, ForZone},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::*;

fn service(name: &str, ports: &[(&str, i32)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| ServicePort {
                        name: (!n.is_empty()).then(|| (*n).to_owned()),
                        port: *p,
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Ep {
    ip: &'static str,
    node: &'static str,
    zone: &'static str,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
    hints: &'static [&'static str],
}

const fn ready(ip: &'static str, node: &'static str, zone: &'static str) -> Ep {
    Ep {
        ip,
        node,
        zone,
        ready: Some(true),
        serving: Some(true),
        terminating: Some(false),
        hints: &[],
    }
}

fn slice(svc: &str, name: &str, port: (&str, i32), eps: &[Ep]) -> EndpointSlice {
    EndpointSlice {
        address_type: "IPv4".into(),
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some([(SERVICE_NAME_LABEL.to_owned(), svc.to_owned())].into()),
            ..Default::default()
        },
        ports: Some(vec![EndpointPort {
            name: (!port.0.is_empty()).then(|| port.0.to_owned()),
            port: Some(port.1),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        endpoints: eps
            .iter()
            .map(|endpoint| Endpoint {
                addresses: vec![endpoint.ip.into()],
                conditions: Some(EndpointConditions {
                    ready: endpoint.ready,
                    serving: endpoint.serving,
                    terminating: endpoint.terminating,
                }),
                node_name: Some(endpoint.node.into()),
                zone: Some(endpoint.zone.into()),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some(format!(
                        "{svc}-{}",
                        endpoint.ip.rsplit('.').next().unwrap_or("x")
                    )),
                    namespace: Some("default".into()),
                    ..Default::default()
                }),
                hints: (!endpoint.hints.is_empty()).then(|| EndpointHints {
                    for_zones: Some(
                        endpoint
                            .hints
                            .iter()
                            .map(|zone| ForZone {
                                name: (*zone).into(),
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
    }
}

fn addrs(pool: &ServicePool) -> Vec<String> {
    (pool.members.iter())
        .map(|member| member.addr.to_string())
        .collect()
}

#[test]
fn two_services_on_one_port_are_two_pools() {
    let svcs = [service("a", &[("http", 80)]), service("b", &[("http", 80)])];
    let slices = [
        slice(
            "a",
            "a-1",
            ("http", 8080),
            &[
                ready("10.244.0.2", "n1", "z1"),
                ready("10.244.0.3", "n1", "z1"),
            ],
        ),
        slice(
            "b",
            "b-1",
            ("http", 8080),
            &[ready("10.244.0.4", "n1", "z1")],
        ),
    ];
    let pools = build(&svcs, &slices, &BTreeMap::new());
    let names: Vec<&str> = pools.iter().map(|pool| &*pool.name).collect();
    assert_eq!(names, ["default/a:http", "default/b:http"]);
    assert_eq!(addrs(&pools[0]), ["10.244.0.2:8080", "10.244.0.3:8080"]);
    assert_eq!(addrs(&pools[1]), ["10.244.0.4:8080"]);
    let first = &pools[0].members[0];
    assert_eq!(first.pod.as_deref(), Some("default/a-2"));
    assert_eq!(first.node.as_deref(), Some("n1"));
    assert_eq!(pools[0].service.service, "a");
    assert_eq!(pools[0].service.port, 80);
    assert_eq!(pools[0].service.cluster_ips, ["10.96.0.10"]);
    assert_eq!(pools[0].lb_nodes, LbNodes::Senders);
}

#[test]
fn conditions_read_as_kube_proxy_reads_them() {
    let svcs = [service("a", &[("", 80)])];
    let eps = [
        // Unset conditions: ready.
        Ep {
            ready: None,
            serving: None,
            terminating: None,
            ..ready("10.0.0.1", "n", "z")
        },
        Ep {
            ready: Some(false),
            serving: Some(true),
            terminating: Some(true),
            ..ready("10.0.0.2", "n", "z")
        },
        Ep {
            ready: Some(false),
            serving: Some(false),
            terminating: Some(true),
            ..ready("10.0.0.3", "n", "z")
        },
        Ep {
            ready: Some(false),
            serving: Some(false),
            terminating: Some(false),
            ..ready("10.0.0.4", "n", "z")
        },
    ];
    let pools = build(
        &svcs,
        &[slice("a", "a-1", ("", 8080), &eps)],
        &BTreeMap::new(),
    );
    // An unnamed port is named by its number.
    assert_eq!(&*pools[0].name, "default/a:80");
    let conditions: Vec<Condition> = (pools[0].members.iter())
        .map(|member| member.condition)
        .collect();
    assert_eq!(
        conditions,
        [
            Condition::Ready,
            Condition::Draining,
            Condition::NotReady,
            Condition::NotReady
        ]
    );
}

#[test]
fn each_port_takes_its_own_slice_port_and_duplicates_keep_the_better_condition() {
    let svcs = [service("a", &[("http", 80), ("admin", 9000)])];
    let mut s1 = slice("a", "a-1", ("http", 8080), &[ready("10.0.0.1", "n", "z")]);
    s1.ports.as_mut().unwrap().push(EndpointPort {
        name: Some("admin".into()),
        port: Some(9090),
        ..Default::default()
    });
    // The same address in a second slice, not ready there (rebalancing).
    let s2 = slice(
        "a",
        "a-2",
        ("http", 8080),
        &[Ep {
            ready: Some(false),
            ..ready("10.0.0.1", "n", "z")
        }],
    );
    // A slice of another Service and an FQDN slice change nothing.
    let other = slice("b", "b-1", ("http", 8080), &[ready("10.0.0.7", "n", "z")]);
    let mut fqdn = slice("a", "a-3", ("http", 8080), &[ready("10.0.0.8", "n", "z")]);
    fqdn.address_type = "FQDN".into();
    let pools = build(&svcs, &[s1, s2, other, fqdn], &BTreeMap::new());
    let names: Vec<&str> = pools.iter().map(|pool| &*pool.name).collect();
    assert_eq!(names, ["default/a:admin", "default/a:http"]);
    assert_eq!(addrs(&pools[0]), ["10.0.0.1:9090"]);
    assert_eq!(addrs(&pools[1]), ["10.0.0.1:8080"]);
    assert_eq!(pools[1].members[0].condition, Condition::Ready);
}

#[test]
fn zone_hints_split_the_service_by_zone() {
    let mut svc = service("a", &[("http", 80)]);
    svc.spec.as_mut().unwrap().traffic_distribution = Some("PreferClose".into());
    let eps = [
        Ep {
            hints: &["z1"],
            ..ready("10.0.1.1", "n1", "z1")
        },
        Ep {
            hints: &["z1"],
            ..ready("10.0.1.2", "n1", "z1")
        },
        Ep {
            hints: &["z2"],
            ..ready("10.0.2.1", "n2", "z2")
        },
        // Draining, no hint: stays in its own zone's pool.
        Ep {
            ready: Some(false),
            terminating: Some(true),
            ..ready("10.0.2.9", "n2", "z2")
        },
    ];
    let zones: BTreeMap<String, String> = [
        ("n1".to_owned(), "z1".to_owned()),
        ("n2".to_owned(), "z2".to_owned()),
        ("client-z2".to_owned(), "z2".to_owned()),
    ]
    .into();
    let pools = build(
        &[svc.clone()],
        &[slice("a", "a-1", ("http", 8080), &eps)],
        &zones,
    );
    let names: Vec<&str> = pools.iter().map(|pool| &*pool.name).collect();
    assert_eq!(names, ["default/a:http@z1", "default/a:http@z2"]);
    assert_eq!(addrs(&pools[0]), ["10.0.1.1:8080", "10.0.1.2:8080"]);
    assert_eq!(addrs(&pools[1]), ["10.0.2.1:8080", "10.0.2.9:8080"]);
    assert_eq!(pools[1].service.zone, "z2");
    assert_eq!(
        pools[1].lb_nodes,
        LbNodes::SendersAmong(Arc::new(["client-z2".to_owned(), "n2".to_owned()].into()))
    );
    assert!(pools[1].note.as_deref().unwrap().contains("z2"));

    // One ready endpoint without a hint: kube-proxy ignores the hints.
    let mut eps = eps;
    eps[1].hints = &[];
    let pools = build(&[svc], &[slice("a", "a-1", ("http", 8080), &eps)], &zones);
    assert_eq!(pools.len(), 1);
    let note = pools[0].note.as_deref().unwrap();
    assert!(
        note.contains("trafficDistribution: PreferClose") && note.contains("one pool"),
        "{note}"
    );
}

#[test]
fn internal_traffic_policy_local_splits_by_node() {
    let mut svc = service("dns", &[("dns-tcp", 53)]);
    svc.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
    let eps = [
        ready("10.0.1.1", "n1", "z"),
        ready("10.0.1.2", "n1", "z"),
        ready("10.0.2.1", "n2", "z"),
    ];
    let pools = build(
        &[svc],
        &[slice("dns", "d-1", ("dns-tcp", 53), &eps)],
        &BTreeMap::new(),
    );
    let names: Vec<&str> = pools.iter().map(|pool| &*pool.name).collect();
    assert_eq!(names, ["default/dns:dns-tcp@n1", "default/dns:dns-tcp@n2"]);
    assert_eq!(addrs(&pools[0]), ["10.0.1.1:53", "10.0.1.2:53"]);
    assert_eq!(
        pools[1].lb_nodes,
        LbNodes::SendersAmong(Arc::new(["n2".to_owned()].into()))
    );
}

#[test]
fn external_name_services_and_udp_ports_make_no_pool() {
    let mut ext = service("ext", &[("http", 80)]);
    ext.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
    let mut udp = service("dns", &[("dns", 53)]);
    udp.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].protocol = Some("UDP".into());
    assert!(build(&[ext, udp], &[], &BTreeMap::new()).is_empty());
    // A Service without endpoints is a pool without members.
    let pools = build(&[service("empty", &[("http", 80)])], &[], &BTreeMap::new());
    assert!(pools[0].members.is_empty());
}

const fn terminating(ip: &'static str, node: &'static str) -> Ep {
    Ep {
        ready: Some(false),
        serving: Some(true),
        terminating: Some(true),
        ..ready(ip, node, "z")
    }
}

const fn starting(ip: &'static str, node: &'static str) -> Ep {
    Ep {
        ready: Some(false),
        serving: Some(false),
        terminating: Some(false),
        ..ready(ip, node, "z")
    }
}

fn conditions(pool: &ServicePool) -> Vec<Condition> {
    (pool.members.iter())
        .map(|member| member.condition)
        .collect()
}

#[test]
fn a_dual_stack_service_is_one_pool_per_family() {
    let mut svc = service("web", &[("http", 80)]);
    let spec = svc.spec.as_mut().unwrap();
    spec.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
    spec.cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
    let v4 = slice(
        "web",
        "web-v4",
        ("http", 8080),
        &[ready("10.0.0.1", "n1", "z"), ready("10.0.0.2", "n2", "z")],
    );
    let mut v6 = slice(
        "web",
        "web-v6",
        ("http", 8080),
        &[ready("fd00::1", "n1", "z"), ready("fd00::2", "n2", "z")],
    );
    v6.address_type = "IPv6".into();
    let pools = build(&[svc.clone()], &[v4.clone(), v6.clone()], &BTreeMap::new());
    let names: Vec<&str> = pools.iter().map(|pool| &*pool.name).collect();
    assert_eq!(names, ["default/web:http", "default/web:http@IPv6"]);
    assert_eq!(addrs(&pools[0]), ["10.0.0.1:8080", "10.0.0.2:8080"]);
    assert_eq!(addrs(&pools[1]), ["[fd00::1]:8080", "[fd00::2]:8080"]);
    assert_eq!(pools[0].service.cluster_ips, ["10.96.0.10"]);
    assert_eq!(pools[1].service.cluster_ips, ["fd00::10"]);
    assert!(
        pools[1]
            .note
            .as_deref()
            .is_some_and(|note| note.contains("IPv6"))
    );

    // The Service's first family keeps the plain name.
    svc.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
    let pools = build(&[svc], &[v4, v6], &BTreeMap::new());
    assert_eq!(addrs(&pools[0]), ["[fd00::1]:8080", "[fd00::2]:8080"]);
    assert_eq!(&*pools[1].name, "default/web:http@IPv4");
}

#[test]
fn only_an_endpoints_first_address_is_a_member() {
    let mut s = slice("a", "a-1", ("http", 8080), &[ready("10.0.0.1", "n", "z")]);
    s.endpoints[0].addresses.push("10.0.0.9".into());
    let pools = build(&[service("a", &[("http", 80)])], &[s], &BTreeMap::new());
    assert_eq!(addrs(&pools[0]), ["10.0.0.1:8080"]);
}

#[test]
fn with_no_endpoint_ready_the_serving_terminating_ones_are_ready() {
    // A one-replica Deployment whose Pod terminates while its replacement
    // starts: kube-proxy keeps sending to the terminating one.
    let pool_of = |eps: &[Ep]| {
        let mut pools = build(
            &[service("a", &[("http", 80)])],
            &[slice("a", "a-1", ("http", 8080), eps)],
            &BTreeMap::new(),
        );
        pools.remove(0)
    };
    let pool = pool_of(&[terminating("10.0.0.1", "n1"), starting("10.0.0.2", "n2")]);
    assert_eq!(conditions(&pool), [Condition::Ready, Condition::NotReady]);
    assert!(
        (pool.note.as_deref()).is_some_and(|note| note.contains("no endpoint is ready")),
        "{:?}",
        pool.note
    );

    // Once one is ready the terminating one drains.
    let pool = pool_of(&[terminating("10.0.0.1", "n1"), ready("10.0.0.2", "n2", "z")]);
    assert_eq!(conditions(&pool), [Condition::Draining, Condition::Ready]);
    assert_eq!(pool.note, None);
}

#[test]
fn the_fallback_ignores_zone_hints() {
    let eps = [
        Ep {
            hints: &["a"],
            ..terminating("10.0.0.1", "n1")
        },
        Ep {
            hints: &["b"],
            ..terminating("10.0.0.2", "n2")
        },
    ];
    let mut svc = service("a", &[("http", 80)]);
    svc.spec.as_mut().unwrap().traffic_distribution = Some("PreferClose".into());
    let pools = build(
        &[svc],
        &[slice("a", "a-1", ("http", 8080), &eps)],
        &BTreeMap::new(),
    );
    let names: Vec<&str> = pools.iter().map(|pool| &*pool.name).collect();
    assert_eq!(names, ["default/a:http"]);
    assert_eq!(conditions(&pools[0]), [Condition::Ready, Condition::Ready]);
}

#[test]
fn under_local_policy_each_node_falls_back_on_its_own() {
    // A node-local DaemonSet rolling: n1's Pod terminates with no
    // replacement yet, n2's new Pod is ready beside its old one.
    let mut svc = service("dns", &[("dns-tcp", 53)]);
    svc.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
    let eps = [
        terminating("10.0.1.1", "n1"),
        terminating("10.0.2.1", "n2"),
        ready("10.0.2.2", "n2", "z"),
    ];
    let pools = build(
        &[svc],
        &[slice("dns", "d-1", ("dns-tcp", 53), &eps)],
        &BTreeMap::new(),
    );
    assert_eq!(conditions(&pools[0]), [Condition::Ready]);
    assert!((pools[0].note.as_deref()).is_some_and(|note| note.contains("no endpoint is ready")));
    assert_eq!(
        conditions(&pools[1]),
        [Condition::Draining, Condition::Ready]
    );
}

#[test]
fn the_balancing_annotation_marks_every_pool_of_the_service() {
    let annotated = |name: &str, value: &str| {
        let mut svc = service(name, &[("http", 80), ("grpc", 9090)]);
        svc.metadata.annotations = Some([(BALANCING.to_owned(), value.to_owned())].into());
        svc
    };
    let svcs = [
        annotated("a", "least-connections"),
        annotated("b", "leastconn"),
        service("c", &[("http", 80)]),
    ];
    let slices = [
        slice("a", "a-1", ("http", 8080), &[ready("10.0.0.1", "n1", "z1")]),
        slice("a", "a-2", ("grpc", 9090), &[ready("10.0.0.1", "n1", "z1")]),
        slice("b", "b-1", ("http", 8080), &[ready("10.0.0.2", "n1", "z1")]),
        slice("c", "c-1", ("http", 8080), &[ready("10.0.0.3", "n1", "z1")]),
    ];
    let pools = build(&svcs, &slices, &BTreeMap::new());
    let of = |name: &str| {
        (pools.iter())
            .find(|pool| &*pool.name == name)
            .unwrap_or_else(|| panic!("no pool {name}"))
    };
    for name in ["default/a:http", "default/a:grpc"] {
        assert_eq!(of(name).balancing, Balancing::LeastConnections, "{name}");
        assert_eq!(of(name).note, None, "{name}");
    }
    // A value not understood: judged as today, and the note says why.
    let b = of("default/b:http");
    assert_eq!(b.balancing, Balancing::Weighted);
    let note = b.note.as_deref().expect("a note");
    assert!(
        note.contains("evenflow.io/balancing") && note.contains("\"leastconn\" is not understood"),
        "{note}"
    );
    assert!(note.contains("\"least-connections\""), "{note}");
    assert_eq!(of("default/c:http").balancing, Balancing::Weighted);
    assert_eq!(of("default/c:http").note, None);
}

#[test]
fn session_affinity_and_a_local_external_policy_make_a_pool_sticky() {
    let with = |name: &str, edit: fn(&mut ServiceSpec)| {
        let mut svc = service(name, &[("http", 80)]);
        if let Some(spec) = svc.spec.as_mut() {
            edit(spec);
        }
        svc
    };
    let svcs = [
        with("affine", |s| s.session_affinity = Some("ClientIP".into())),
        with("local-lb", |s| {
            s.type_ = Some("LoadBalancer".into());
            s.external_traffic_policy = Some("Local".into());
        }),
        with("cluster-lb", |s| {
            s.type_ = Some("LoadBalancer".into());
            s.external_traffic_policy = Some("Cluster".into());
        }),
        // The policy is for outside clients: a ClusterIP has none.
        with("plain", |s| {
            s.external_traffic_policy = Some("Local".into())
        }),
        // An annotation decides over both.
        {
            let mut svc = with("told", |s| s.session_affinity = Some("ClientIP".into()));
            svc.metadata.annotations = Some([(BALANCING.to_owned(), "weighted".to_owned())].into());
            svc
        },
    ];
    let names = ["affine", "local-lb", "cluster-lb", "plain", "told"];
    let ips = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"];
    let slices: Vec<EndpointSlice> = (names.iter().zip(ips))
        .map(|(name, ip)| {
            slice(
                name,
                &format!("{name}-1"),
                ("http", 8080),
                &[ready(ip, "n1", "z1")],
            )
        })
        .collect();
    let pools = build(&svcs, &slices, &BTreeMap::new());
    let balancing: Vec<(&str, Balancing)> = (pools.iter())
        .map(|pool| (&*pool.name, pool.balancing))
        .collect();
    assert_eq!(
        balancing,
        [
            ("default/affine:http", Balancing::Sticky),
            ("default/cluster-lb:http", Balancing::Weighted),
            ("default/local-lb:http", Balancing::Sticky),
            ("default/plain:http", Balancing::Weighted),
            ("default/told:http", Balancing::Weighted),
        ]
    );
}

#[test]
fn a_headless_service_makes_a_pool_only_when_annotated() {
    let headless = |name: &str, balancing: Option<&str>| {
        let mut svc = service(name, &[("grpc", 9090)]);
        svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        svc.spec.as_mut().unwrap().cluster_ips = Some(vec!["None".into()]);
        svc.metadata.annotations =
            balancing.map(|value| [(BALANCING.to_owned(), value.to_owned())].into());
        svc
    };
    // A zone hint on every endpoint: kube-proxy's topology, which headless
    // clients never go through.
    let hinted = |ip: &'static str, zone: &'static str| Ep {
        hints: if zone == "z1" { &["z1"] } else { &["z2"] },
        ..ready(ip, "n1", zone)
    };
    let eps = [hinted("10.0.0.1", "z1"), hinted("10.0.0.2", "z2")];
    let svcs = [
        headless("db", None),
        headless("api", Some("weighted")),
        headless("chat", Some("least-connections")),
    ];
    let slices = [
        slice("db", "db-1", ("grpc", 9090), &eps),
        slice("api", "api-1", ("grpc", 9090), &eps),
        slice("chat", "chat-1", ("grpc", 9090), &eps),
    ];
    let zones = [("n1".to_owned(), "z1".to_owned())].into();
    let pools = build(&svcs, &slices, &zones);
    let names: Vec<&str> = pools.iter().map(|pool| &*pool.name).collect();
    assert_eq!(names, ["default/api:grpc", "default/chat:grpc"]);
    for (pool, balancing) in pools
        .iter()
        .zip([Balancing::Weighted, Balancing::LeastConnections])
    {
        assert_eq!(pool.balancing, balancing, "{}", pool.name);
        assert_eq!(addrs(pool), ["10.0.0.1:9090", "10.0.0.2:9090"]);
        assert!(pool.service.cluster_ips.is_empty());
        assert_eq!(pool.lb_nodes, LbNodes::Senders);
        let note = pool.note.as_deref().expect("a note");
        assert!(note.contains("headless Service"), "{note}");
    }
}

#[test]
fn a_headless_service_left_out_still_owns_its_endpoints() {
    let mut db = service("db", &[("pg", 5432)]);
    db.spec.as_mut().unwrap().cluster_ip = Some("None".into());
    let slices = [slice(
        "db",
        "db-1",
        ("pg", 5432),
        &[ready("10.0.0.1", "n1", "z1"), ready("10.0.0.2", "n1", "z1")],
    )];
    let (pools, unpooled) = build_all(&[db], &slices, &BTreeMap::new());
    assert!(pools.is_empty());
    let unpooled: Vec<String> = unpooled.iter().map(ToString::to_string).collect();
    assert_eq!(unpooled, ["10.0.0.1:5432", "10.0.0.2:5432"]);
}

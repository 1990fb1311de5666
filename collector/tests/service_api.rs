//! The gRPC surface: health, server reflection (v1 and v1alpha, so
//! `grpcurl -plaintext HOST:PORT list` works), and WatchPool.

mod service_common;

use std::time::Duration;

use evenflow_proto::v1;
use service_common::*;
use tokio_stream::StreamExt as _;

/// The services reflection lists on the listener at `addr`, sorted.
async fn listed(addr: std::net::SocketAddr) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(Ok(r)) = resp.next().await else {
        panic!("no reflection answer")
    };
    let Some(MessageResponse::ListServicesResponse(list)) = r.message_response else {
        panic!("unexpected reflection answer")
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

/// Each listener lists what it serves, and nothing it does not: the main
/// one Ingest and Distribution, the read-only query listener Distribution
/// alone; neither the agent's Node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_what_each_listener_serves() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let query = format!("127.0.0.1:{port}");
    let c = start(&["--query-addr", &query]).await;
    let common = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let with = |own: &[&str]| {
        let mut v: Vec<String> = common.iter().chain(own).map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(
        listed(c.grpc_addr).await,
        with(&["evenflow.v1.Distribution", "evenflow.v1.Ingest"])
    );
    assert_eq!(
        listed(query.parse().unwrap()).await,
        with(&["evenflow.v1.Distribution"])
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection() {
    let c = start(&[]).await;
    let channel = tonic::transport::Endpoint::from_shared(url(&c))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for svc in ["evenflow.v1.Ingest", "evenflow.v1.Distribution"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: svc.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{svc}"
        );
    }
    let names = listed(c.grpc_addr).await;
    for want in [
        "evenflow.v1.Ingest",
        "evenflow.v1.Distribution",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    // The real grpcurl (1.8 speaks v1alpha), when installed.
    if let Ok(out) = std::process::Command::new("grpcurl")
        .args(["-plaintext", &c.grpc_addr.to_string(), "list"])
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("evenflow.v1.Distribution"), "{text}");
        assert!(!text.contains("evenflow.v1.Node"), "{text}");
        let out = std::process::Command::new("grpcurl")
            .args([
                "-plaintext",
                &c.grpc_addr.to_string(),
                "evenflow.v1.Distribution/ListAgents",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_pool_streams_every_tick() {
    let c = start(&["--interval", "100ms"]).await;
    let mut q = query(&c).await;
    let e = q
        .watch_pool(v1::WatchPoolRequest {
            name: String::new(),
        })
        .await
        .expect_err("empty name");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let mut b = Agent::connect(&c, "b1").await;
    let r = b.next(vec![serves("10.5.0.1", 80, "web", 1)], vec![]);
    b.send(r).await.unwrap();
    let mut w = q
        .watch_pool(v1::WatchPoolRequest { name: "web".into() })
        .await
        .unwrap()
        .into_inner();
    let mut ticks = Vec::new();
    while ticks.len() < 5 {
        let p = tokio::time::timeout(Duration::from_secs(2), w.next())
            .await
            .expect("a pool per tick")
            .expect("stream open")
            .expect("pool");
        assert_eq!(p.name, "web");
        assert!(p.evaluated_at.is_some());
        ticks.push(p.tick);
    }
    assert!(ticks.windows(2).all(|w| w[1] > w[0]), "{ticks:?}");
    c.shutdown().await;
}

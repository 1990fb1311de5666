//! Shared helpers for the collector service tests: a real collector on
//! 127.0.0.1, simulated agents over real gRPC streams.
#![allow(dead_code)]

use std::time::Duration;

use clap::Parser as _;
use evenflow_collector::service::{config::Config, server};
use evenflow_proto::v1::{
    self, AgentReport, ReportAck, distribution_client::DistributionClient,
    ingest_client::IngestClient,
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};
use tonic::{Status, Streaming, transport::Channel};

pub use server::Running;

/// Starts a collector on ephemeral ports with extra flags.
pub async fn start(extra: &[&str]) -> Running {
    let mut args = vec![
        "evenflow-collector",
        "--grpc-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let config = Config::try_parse_from(args).expect("flags");
    server::start(&config).await.expect("collector starts")
}

pub fn url(c: &Running) -> String {
    format!("http://{}", c.grpc_addr)
}

pub async fn query(c: &Running) -> DistributionClient<Channel> {
    DistributionClient::connect(url(c)).await.expect("connect")
}

/// Every agent the collector knows (ListAgents).
pub async fn agents(q: &mut DistributionClient<Channel>) -> Vec<v1::AgentStatus> {
    q.list_agents(v1::ListAgentsRequest {})
        .await
        .expect("ListAgents")
        .into_inner()
        .agents
}

/// One simulated agent: a Report stream.
pub struct Agent {
    pub node: String,
    pub epoch: u64,
    pub run: u64,
    pub seq: u64,
    /// Agent clock, seconds.
    pub clock: f64,
    tx: mpsc::Sender<AgentReport>,
    acks: Streaming<ReportAck>,
}

impl Agent {
    pub async fn connect(c: &Running, node: &str) -> Agent {
        Self::connect_url(url(c), node).await
    }

    pub async fn connect_url(url: String, node: &str) -> Agent {
        let mut client = IngestClient::connect(url).await.expect("connect");
        let (tx, rx) = mpsc::channel(64);
        let acks = client
            .report(ReceiverStream::new(rx))
            .await
            .expect("open Report stream")
            .into_inner();
        Agent {
            node: node.into(),
            epoch: 1,
            run: 42,
            seq: 0,
            clock: 1_700_000_000.0,
            tx,
            acks,
        }
    }

    /// A report with the next sequence, one agent second later.
    pub fn next(
        &mut self,
        endpoints: Vec<v1::Endpoint>,
        listeners: Vec<v1::Listener>,
    ) -> AgentReport {
        self.seq += 1;
        self.clock += 1.0;
        AgentReport {
            node_name: self.node.clone(),
            agent_epoch: self.epoch,
            agent_run: self.run,
            sequence: self.seq,
            taken_at: Some(prost_types::Timestamp {
                seconds: self.clock.floor() as i64,
                nanos: ((self.clock.fract()) * 1e9) as i32,
            }),
            interval_seconds: 1.0,
            endpoints,
            listeners,
            cpu: Some(v1::Cpu {
                utilization: 0.2,
                cores: 2,
            }),
            datapath: None,
            agent_version: "test".into(),
            node_addresses: Vec::new(),
        }
    }

    /// Sends a report and waits for its ack (or the stream's error).
    pub async fn send(&mut self, r: AgentReport) -> Result<ReportAck, Status> {
        self.tx
            .send(r)
            .await
            .map_err(|_| Status::unavailable("stream closed"))?;
        match tokio::time::timeout(Duration::from_secs(5), self.acks.next()).await {
            Ok(Some(r)) => r,
            Ok(None) => Err(Status::unavailable("collector closed the stream")),
            Err(_) => Err(Status::deadline_exceeded("no ack in 5 s")),
        }
    }
}

pub fn endpoint(
    addr: &str,
    port: u32,
    dir: v1::Direction,
    service: &str,
    opened: u64,
) -> v1::Endpoint {
    v1::Endpoint {
        address: addr.into(),
        port,
        direction: dir as i32,
        protocol: v1::Protocol::Tcp as i32,
        service: service.into(),
        totals: Some(v1::Counters {
            conns_opened: opened,
            conns_closed: opened.saturating_sub(2),
            bytes_rx: opened * 100,
            bytes_tx: opened * 1000,
            packets_rx: opened * 3,
            packets_tx: opened * 3,
            conns_failed: 0,
            conns_unanswered: 0,
            conns_failed_unanswered: Some(0),
        }),
        rates: None,
        active_connections: opened.min(2),
    }
}

pub fn serves(addr: &str, port: u32, service: &str, opened: u64) -> v1::Endpoint {
    endpoint(addr, port, v1::Direction::Serves, service, opened)
}

pub fn sends_to(addr: &str, port: u32, opened: u64) -> v1::Endpoint {
    endpoint(addr, port, v1::Direction::SendsTo, "", opened)
}

pub fn listener(addr: &str, port: u32, service: &str) -> v1::Listener {
    v1::Listener {
        address: addr.into(),
        port,
        protocol: v1::Protocol::Tcp as i32,
        service: service.into(),
    }
}

/// Polls GetPool until `ok` holds (or panics after `secs`).
pub async fn wait_pool(
    q: &mut DistributionClient<Channel>,
    name: &str,
    secs: f64,
    ok: impl Fn(&v1::Pool) -> bool,
) -> v1::Pool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        if let Ok(p) = q.get_pool(v1::GetPoolRequest { name: name.into() }).await {
            let p = p.into_inner();
            if ok(&p) {
                return p;
            }
            last = Some(p);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("pool {name} never satisfied the condition; last: {last:#?}");
}

pub fn member<'a>(p: &'a v1::Pool, addr: &str) -> &'a v1::Member {
    p.members
        .iter()
        .find(|m| m.address == addr)
        .unwrap_or_else(|| panic!("no member {addr} in {p:#?}"))
}

pub fn verdict(v: i32) -> v1::Verdict {
    v1::Verdict::try_from(v).unwrap_or(v1::Verdict::Unspecified)
}

/// A unique temporary file with `text`: tests of one binary run at once,
/// and two asking for the same name each get their own.
pub fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "evenflow-service-test-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        name.replace('/', "_")
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write temp file");
    p
}

/// `GET path` over HTTP/1.1 from the collector's metrics listener: the
/// raw response.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect metrics");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of the series `series` (name and labels, as written) in a
/// `/metrics` body; panics naming it when the body has none.
pub fn metric(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {body}"))
}

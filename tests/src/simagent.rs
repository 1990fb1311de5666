//! A simulated agent for tests that need many nodes' reports without their
//! kernels: it keeps cumulative counters per endpoint, as the real agent's
//! pinned maps do, and streams them to a real collector over the real
//! `evenflow.v1.Ingest` gRPC stream, one report per call to
//! [`SimAgent::report`], taken at the wall clock like the agent's.
//!
//! The lab tests use the real agent; this is for the collector's side of
//! things no lab could drive as fast (rolling updates of many pods, zones).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use evenflow_proto::v1::{self, AgentReport, ingest_client::IngestClient};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};

/// One simulated node's agent.
pub struct SimAgent {
    node: String,
    run: u64,
    seq: u64,
    last: Option<SystemTime>,
    totals: BTreeMap<(SocketAddr, v1::Direction), v1::Counters>,
    /// `--service` labels, by endpoint.
    labels: BTreeMap<SocketAddr, String>,
    tx: mpsc::Sender<AgentReport>,
}

impl SimAgent {
    /// Opens a report stream to the collector at `url` as node `node`.
    pub async fn connect(url: &str, node: &str) -> Result<Self> {
        let mut client = IngestClient::connect(url.to_owned())
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let (tx, rx) = mpsc::channel(64);
        let mut acks = client
            .report(ReceiverStream::new(rx))
            .await
            .context("opening the Report stream")?
            .into_inner();
        // Acks are read (and dropped) so the stream's flow control never
        // stalls the collector.
        tokio::spawn(async move { while let Some(Ok(_)) = acks.next().await {} });
        Ok(Self {
            node: node.to_owned(),
            run: u64::from(std::process::id()) << 16 | u64::from(node.len() as u16),
            seq: 0,
            last: None,
            totals: BTreeMap::new(),
            labels: BTreeMap::new(),
            tx,
        })
    }

    /// Counts `conns` new connections (each 100 bytes in, 1000 out) to
    /// `addr` in direction `dir`.
    pub fn add(&mut self, addr: SocketAddr, dir: v1::Direction, conns: u64) {
        let t = self.totals.entry((addr, dir)).or_default();
        t.conns_opened += conns;
        t.conns_closed += conns;
        let (rx, tx) = match dir {
            v1::Direction::SendsTo => (1000, 100),
            _ => (100, 1000),
        };
        t.bytes_rx += conns * rx;
        t.bytes_tx += conns * tx;
        t.packets_rx += conns * 4;
        t.packets_tx += conns * 4;
    }

    /// Makes `addr` a known endpoint with no connections yet.
    pub fn touch(&mut self, addr: SocketAddr, dir: v1::Direction) {
        self.totals.entry((addr, dir)).or_default();
    }

    /// Reports `addr` with the `--service` label `service`, as an agent
    /// started with `--service service=PORT` does.
    pub fn label(&mut self, addr: SocketAddr, service: &str) {
        self.labels.insert(addr, service.to_owned());
    }

    /// New connections counted so far to `addr` in direction `dir`.
    pub fn opened(&self, addr: SocketAddr, dir: v1::Direction) -> u64 {
        self.totals.get(&(addr, dir)).map_or(0, |t| t.conns_opened)
    }

    /// Sends one report with every endpoint's cumulative totals.
    pub async fn report(&mut self) -> Result<()> {
        self.seq += 1;
        let now = SystemTime::now();
        let interval = self
            .last
            .and_then(|l| now.duration_since(l).ok())
            .unwrap_or(Duration::from_millis(500));
        self.last = Some(now);
        let endpoints = self
            .totals
            .iter()
            .map(|((addr, dir), t)| v1::Endpoint {
                address: addr.ip().to_string(),
                port: u32::from(addr.port()),
                direction: *dir as i32,
                protocol: v1::Protocol::Tcp as i32,
                service: self.labels.get(addr).cloned().unwrap_or_default(),
                totals: Some(*t),
                rates: None,
                active_connections: 0,
            })
            .collect();
        let r = AgentReport {
            node_name: self.node.clone(),
            agent_epoch: 1,
            agent_run: self.run,
            sequence: self.seq,
            taken_at: Some(prost_types::Timestamp::from(now)),
            interval_seconds: interval.as_secs_f64(),
            endpoints,
            listeners: Vec::new(),
            cpu: Some(v1::Cpu {
                utilization: 0.2,
                cores: 2,
            }),
            datapath: None,
            agent_version: "simulated".into(),
            node_addresses: Vec::new(),
        };
        self.tx
            .send(r)
            .await
            .context("the collector closed the report stream")
    }
}

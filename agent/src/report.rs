//! Streams the agent's reports to the collector (`--collector URL`).
//!
//! Reports carry cumulative counters, so the protocol only has to be
//! at-least-once: unacknowledged reports stay in a bounded buffer, the
//! connection is retried with exponential backoff and jitter, and everything
//! still unacknowledged is replayed after a reconnect. The collector ignores
//! a (run, sequence) it has seen. When the buffer overflows during a long
//! outage the oldest reports go first: the newest one alone still carries
//! every total, so the collector loses resolution, never traffic. A report
//! is numbered by its snapshot, so that an acknowledgement says which
//! snapshots the collector applied, which is what releases the retired
//! endpoints the reports hold (see `withheld`).

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use evenflow_proto::v1::{self, AgentReport, ingest_client::IngestClient};
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};
use tracing::{debug, info, warn};

use crate::withheld::{Retirement, Withheld};

/// Buffer bounds: whichever is hit first.
const MAX_BUFFERED: usize = 120;
const MAX_BUFFERED_BYTES: usize = 32 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Reports not yet acknowledged, oldest first.
#[derive(Default)]
pub struct Buffer {
    reports: VecDeque<AgentReport>,
    bytes: usize,
    /// Reports dropped because the buffer was full.
    pub dropped: u64,
}

impl Buffer {
    /// Adds a report, evicting the oldest ones past the bounds.
    pub fn push(&mut self, r: AgentReport) {
        self.bytes += r.encoded_len();
        self.reports.push_back(r);
        while self.reports.len() > 1
            && (self.reports.len() > MAX_BUFFERED || self.bytes > MAX_BUFFERED_BYTES)
        {
            if let Some(old) = self.reports.pop_front() {
                self.bytes -= old.encoded_len();
                self.dropped += 1;
            }
        }
    }

    /// Drops every report of `run` up to and including `seq`.
    pub fn ack(&mut self, run: u64, seq: u64) {
        while let Some(front) = self.reports.front() {
            if front.agent_run == run && front.sequence <= seq {
                self.bytes -= front.encoded_len();
                self.reports.pop_front();
            } else {
                break;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.reports.len()
    }

    fn iter(&self) -> impl Iterator<Item = &AgentReport> {
        self.reports.iter()
    }
}

/// Builds the report for one snapshot: totals only, rates are the
/// collector's to derive.
pub fn from_snapshot(snap: &v1::Snapshot, run: u64, sequence: u64) -> AgentReport {
    AgentReport {
        node_name: snap.node_name.clone(),
        agent_epoch: snap.agent_epoch,
        agent_run: run,
        sequence,
        taken_at: snap.taken_at,
        interval_seconds: snap.interval_seconds,
        endpoints: snap
            .endpoints
            .iter()
            .map(|e| v1::Endpoint {
                rates: None,
                ..e.clone()
            })
            .collect(),
        listeners: snap.listeners.clone(),
        cpu: snap.cpu,
        datapath: snap.datapath,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        node_addresses: snap.addresses.clone(),
    }
}

/// A random, non-zero identifier of this agent process.
pub fn new_run_id() -> u64 {
    let mut buf = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut buf);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    ((u64::from_ne_bytes(buf) ^ t) >> 11).max(1)
}

/// TLS towards the collector: the CA that signed its certificate and,
/// for mutual TLS, the agent's own identity. The files are read again at
/// every connection, so a renewed certificate (cert-manager renewing a
/// Secret volume's files) is the one the next reconnect presents; an agent
/// that kept its first one past its expiry could never reconnect. Files
/// that cannot be used then are logged, and the last good reading stands.
pub struct Tls {
    ca: Option<PathBuf>,
    cert_key: Option<(PathBuf, PathBuf)>,
    last: std::sync::Mutex<tonic::transport::ClientTlsConfig>,
}

impl Tls {
    /// Reads the PEM files, naming the flag and file of any problem.
    pub fn load(ca: Option<&Path>, cert_key: Option<(&Path, &Path)>) -> anyhow::Result<Self> {
        let config = evenflow_daemon::tls::client(ca, cert_key)?;
        Ok(Self {
            ca: ca.map(Path::to_owned),
            cert_key: cert_key.map(|(c, k)| (c.to_owned(), k.to_owned())),
            last: std::sync::Mutex::new(config),
        })
    }

    /// The files as they are now, or the last good reading.
    fn config(&self) -> tonic::transport::ClientTlsConfig {
        let cert_key = (self.cert_key.as_ref()).map(|(c, k)| (c.as_path(), k.as_path()));
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match evenflow_daemon::tls::client(self.ca.as_deref(), cert_key) {
            Ok(config) => *last = config,
            Err(e) => warn!("TLS files cannot be read now, so the last good ones are used: {e}"),
        }
        last.clone()
    }
}

async fn connect(
    url: &str,
    tls: Option<&Tls>,
) -> Result<IngestClient<tonic::transport::Channel>, String> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("bad URL: {e}"))?;
    if let Some(t) = tls {
        endpoint = endpoint
            .tls_config(t.config())
            .map_err(|e| format!("TLS configuration: {e}"))?;
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    Ok(IngestClient::new(channel))
}

/// What the stream keeps from one connection to the next.
struct Stream {
    /// This process's identifier.
    run: u64,
    /// The snapshot of the last report buffered.
    sequence: u64,
    buffer: Buffer,
    /// Retired endpoints the reports hold for the collector.
    withheld: Withheld,
    /// Endpoints the counting loop retired, in snapshot order.
    retirements: mpsc::UnboundedReceiver<Retirement>,
    /// The newest snapshot the collector acknowledged applying.
    acked: u64,
}

impl Stream {
    /// Buffers a report of the newest snapshot, numbered as it is, unless
    /// it went out already.
    fn push_latest(
        &mut self,
        snapshots: &watch::Receiver<Arc<v1::Snapshot>>,
    ) -> Option<AgentReport> {
        let snap = snapshots.borrow().clone();
        if snap.sequence <= self.sequence {
            return None;
        }
        self.sequence = snap.sequence;
        // The counting loop sends a snapshot's retirements before the
        // snapshot: drained after reading it, none is ever late (one may
        // come a snapshot early, with the totals it had then too).
        while let Ok(r) = self.retirements.try_recv() {
            self.withheld.retire(r);
        }
        self.withheld.advance(self.acked, snap.sequence);
        let mut r = from_snapshot(&snap, self.run, snap.sequence);
        r.endpoints = self.withheld.apply(&r.endpoints);
        self.buffer.push(r.clone());
        Some(r)
    }

    /// Takes in the collector's acknowledgement `a`.
    fn ack(&mut self, a: &v1::ReportAck) {
        if !a.rejected.is_empty() {
            // Dropped, not replayed: the next report's cumulative
            // counters carry its traffic.
            warn!(
                seq = a.acked_sequence,
                "collector rejected a report: {}", a.rejected
            );
        } else if a.agent_run == self.run {
            self.acked = self.acked.max(a.acked_sequence);
        }
        self.buffer.ack(a.agent_run, a.acked_sequence);
        debug!(
            seq = a.acked_sequence,
            buffered = self.buffer.len(),
            "acked"
        );
    }
}

/// Streams every new snapshot to `url` until the process exits, holding
/// the endpoints of `retirements` as [`Withheld`] says, at most
/// `max_frozen` frozen.
pub async fn run(
    url: String,
    tls: Option<Tls>,
    mut snapshots: watch::Receiver<Arc<v1::Snapshot>>,
    retirements: mpsc::UnboundedReceiver<Retirement>,
    max_frozen: usize,
) {
    let mut stream = Stream {
        run: new_run_id(),
        sequence: 0,
        buffer: Buffer::default(),
        withheld: Withheld::new(max_frozen),
        retirements,
        acked: 0,
    };
    let mut backoff = BACKOFF_MIN;
    info!(collector = %url, run = stream.run, "streaming reports");
    loop {
        match session(&url, tls.as_ref(), &mut stream, &mut snapshots).await {
            Ok(()) => return, // the agent is shutting down
            Err(e) => {
                let wait = jittered(backoff);
                warn!(
                    collector = %url,
                    buffered = stream.buffer.len(),
                    dropped = stream.buffer.dropped,
                    "collector stream: {e}; retrying in {wait:?}"
                );
                // Keep buffering while we wait.
                let deadline = tokio::time::sleep(wait);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        _ = &mut deadline => break,
                        changed = snapshots.changed() => {
                            if changed.is_err() { return; }
                            stream.push_latest(&snapshots);
                        }
                    }
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        if stream.buffer.len() == 0 {
            backoff = BACKOFF_MIN;
        }
    }
}

/// One connection: replay the buffer, then send each new report and drop
/// acknowledged ones. Returns `Ok` only when snapshots end (shutdown).
async fn session(
    url: &str,
    tls: Option<&Tls>,
    stream: &mut Stream,
    snapshots: &mut watch::Receiver<Arc<v1::Snapshot>>,
) -> Result<(), String> {
    let mut client = connect(url, tls).await?;
    let (tx, rx) = mpsc::channel::<AgentReport>(MAX_BUFFERED + 8);
    for r in stream.buffer.iter() {
        tx.try_send(r.clone())
            .map_err(|e| format!("queueing replay: {e}"))?;
    }
    let replayed = stream.buffer.len();
    let mut acks = client
        .report(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("opening the Report stream: {}", s.message()))?
        .into_inner();
    info!(replayed, "connected to collector");
    loop {
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                if let Some(r) = stream.push_latest(snapshots) {
                    tx.send(r).await.map_err(|_| "stream closed".to_owned())?;
                }
            }
            ack = acks.next() => match ack {
                Some(Ok(a)) => stream.ack(&a),
                Some(Err(s)) => return Err(format!("collector said: {} ({:?})", s.message(), s.code())),
                None => return Err("collector closed the stream".to_owned()),
            }
        }
    }
}

/// `d` scaled by a random factor in [0.5, 1.5) so a fleet does not
/// reconnect in lockstep after a collector restart.
fn jittered(d: Duration) -> Duration {
    let r = (new_run_id() % 1000) as f64 / 1000.0;
    d.mul_f64(0.5 + r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(run: u64, seq: u64) -> AgentReport {
        AgentReport {
            node_name: "n".into(),
            agent_run: run,
            sequence: seq,
            ..Default::default()
        }
    }

    #[test]
    fn acks_drop_only_acknowledged_reports() {
        let mut b = Buffer::default();
        for s in 1..=5 {
            b.push(report(7, s));
        }
        b.ack(7, 3);
        assert_eq!(b.len(), 2);
        assert_eq!(b.iter().next().map(|r| r.sequence), Some(4));
        // An ack for another run drops nothing.
        b.ack(8, 10);
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn overflow_drops_the_oldest_and_counts_them() {
        let mut b = Buffer::default();
        for s in 1..=(MAX_BUFFERED as u64 + 10) {
            b.push(report(1, s));
        }
        assert_eq!(b.len(), MAX_BUFFERED);
        assert_eq!(b.dropped, 10);
        assert_eq!(b.iter().next().map(|r| r.sequence), Some(11));
    }

    fn snap(sequence: u64, ports: &[u32]) -> Arc<v1::Snapshot> {
        let endpoint = |port| v1::Endpoint {
            address: "10.0.0.1".into(),
            port,
            direction: v1::Direction::SendsTo as i32,
            ..Default::default()
        };
        Arc::new(v1::Snapshot {
            node_name: "n".into(),
            sequence,
            endpoints: ports.iter().copied().map(endpoint).collect(),
            ..Default::default()
        })
    }

    fn stream() -> (Stream, mpsc::UnboundedSender<Retirement>) {
        let (tx, retirements) = mpsc::unbounded_channel();
        let s = Stream {
            run: 1,
            sequence: 0,
            buffer: Buffer::default(),
            withheld: Withheld::new(16),
            retirements,
            acked: 0,
        };
        (s, tx)
    }

    #[test]
    fn reports_are_numbered_by_their_snapshot_and_sent_once() {
        let (mut s, _retirements) = stream();
        let (tx, rx) = watch::channel(snap(0, &[]));
        assert!(s.push_latest(&rx).is_none(), "no snapshot yet");
        tx.send_replace(snap(5, &[]));
        assert_eq!(s.push_latest(&rx).map(|r| r.sequence), Some(5));
        assert!(s.push_latest(&rx).is_none(), "5 went out");
        // Snapshots 6 to 8 were taken while the stream waited: the newest
        // goes, with its own number.
        tx.send_replace(snap(9, &[]));
        assert_eq!(s.push_latest(&rx).map(|r| r.sequence), Some(9));
        assert_eq!(s.buffer.len(), 2);
    }

    #[test]
    fn a_retired_endpoint_leaves_the_reports_once_the_collector_applied_its_totals() {
        let (mut s, retirements) = stream();
        let ports = |r: Option<AgentReport>| -> Vec<u32> {
            r.map(|r| r.endpoints.iter().map(|e| e.port).collect())
                .unwrap_or_default()
        };
        let (tx, rx) = watch::channel(snap(1, &[80, 81]));
        assert_eq!(ports(s.push_latest(&rx)), vec![80, 81]);
        let ack = |s: &mut Stream, seq, rejected: &str| {
            s.ack(&v1::ReportAck {
                agent_run: 1,
                acked_sequence: seq,
                rejected: rejected.into(),
            })
        };
        ack(&mut s, 1, "");
        // Port 80, unchanged since snapshot 1, retires at 3; snapshot 2 was
        // never reported.
        let retired = snap(3, &[80]).endpoints[0].clone();
        retirements
            .send(Retirement {
                snapshot: 3,
                endpoints: vec![(retired, 2)],
            })
            .expect("the stream listens");
        tx.send_replace(snap(3, &[81]));
        assert_eq!(
            ports(s.push_latest(&rx)),
            vec![81],
            "the collector has its totals"
        );
        // Back in the kernel, from zero, before the collector saw it go.
        tx.send_replace(snap(4, &[80, 81]));
        assert_eq!(ports(s.push_latest(&rx)), vec![81], "held out");
        ack(&mut s, 4, "a rejection applies nothing");
        tx.send_replace(snap(5, &[80, 81]));
        assert_eq!(ports(s.push_latest(&rx)), vec![81], "still held out");
        ack(&mut s, 3, "");
        tx.send_replace(snap(6, &[80, 81]));
        assert_eq!(ports(s.push_latest(&rx)), vec![80, 81], "released");
    }

    #[test]
    fn jitter_stays_within_half_to_one_and_a_half() {
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(2));
            assert!(
                j >= Duration::from_secs(1) && j < Duration::from_secs(3),
                "{j:?}"
            );
        }
    }

    #[test]
    fn reports_carry_totals_not_rates() {
        let snap = v1::Snapshot {
            node_name: "n".into(),
            sequence: 3,
            endpoints: vec![v1::Endpoint {
                totals: Some(v1::Counters {
                    conns_opened: 9,
                    ..Default::default()
                }),
                rates: Some(v1::Rates::default()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let r = from_snapshot(&snap, 5, 1);
        assert_eq!(r.agent_run, 5);
        assert!(r.endpoints[0].rates.is_none());
        assert_eq!(r.endpoints[0].totals.map(|t| t.conns_opened), Some(9));
    }
}

//! Streams the agent's reports to the collector (`--collector URL`).
//!
//! Reports carry cumulative counters, so the protocol only has to be
//! at-least-once: unacknowledged reports stay in a bounded buffer, the
//! connection is retried with exponential backoff and jitter, and everything
//! still unacknowledged is replayed after a reconnect. The collector ignores
//! a (run, sequence) it has seen. When the buffer overflows during a long
//! outage the oldest reports go first: the newest one alone still carries
//! every total, so the collector loses resolution, never traffic. A report
//! is numbered by its snapshot, so that what the collector acknowledged
//! tells the counting loop which snapshots it applied (see `withheld`).

use std::{collections::VecDeque, sync::Arc, time::Duration};

use evenflow_proto::v1::{self, AgentReport, ingest_client::IngestClient};
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};
use tracing::{debug, info, warn};

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
/// for mutual TLS, the agent's own identity.
#[derive(Clone)]
pub struct Tls(tonic::transport::ClientTlsConfig);

impl Tls {
    /// Reads the PEM files, naming the flag and file of any problem.
    pub fn load(
        ca: Option<&std::path::Path>,
        cert_key: Option<(&std::path::Path, &std::path::Path)>,
    ) -> anyhow::Result<Self> {
        Ok(Self(evenflow_daemon::tls::client(ca, cert_key)?))
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
            .tls_config(t.0.clone())
            .map_err(|e| format!("TLS configuration: {e}"))?;
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    Ok(IngestClient::new(channel))
}

/// Streams every new snapshot to `url` until the process exits, and
/// publishes on `acked` the newest snapshot the collector applied.
pub async fn run(
    url: String,
    tls: Option<Tls>,
    mut snapshots: watch::Receiver<Arc<v1::Snapshot>>,
    acked: watch::Sender<u64>,
) {
    let run = new_run_id();
    let mut buffer = Buffer::default();
    let mut sequence = 0u64;
    let mut backoff = BACKOFF_MIN;
    info!(collector = %url, run, "streaming reports");
    loop {
        match session(
            &url,
            tls.as_ref(),
            run,
            &mut sequence,
            &mut buffer,
            &mut snapshots,
            &acked,
        )
        .await
        {
            Ok(()) => return, // the agent is shutting down
            Err(e) => {
                let wait = jittered(backoff);
                warn!(
                    collector = %url,
                    buffered = buffer.len(),
                    dropped = buffer.dropped,
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
                            push_latest(&snapshots, run, &mut sequence, &mut buffer);
                        }
                    }
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        if buffer.len() == 0 {
            backoff = BACKOFF_MIN;
        }
    }
}

/// Buffers a report of the newest snapshot, numbered as it is, unless it
/// went out already (`sequence`: the last one that did).
fn push_latest(
    snapshots: &watch::Receiver<Arc<v1::Snapshot>>,
    run: u64,
    sequence: &mut u64,
    buffer: &mut Buffer,
) -> Option<AgentReport> {
    let snap = snapshots.borrow().clone();
    if snap.sequence <= *sequence {
        return None;
    }
    *sequence = snap.sequence;
    let r = from_snapshot(&snap, run, *sequence);
    buffer.push(r.clone());
    Some(r)
}

/// One connection: replay the buffer, then send each new report and drop
/// acknowledged ones. Returns `Ok` only when snapshots end (shutdown).
async fn session(
    url: &str,
    tls: Option<&Tls>,
    run: u64,
    sequence: &mut u64,
    buffer: &mut Buffer,
    snapshots: &mut watch::Receiver<Arc<v1::Snapshot>>,
    acked: &watch::Sender<u64>,
) -> Result<(), String> {
    let mut client = connect(url, tls).await?;
    let (tx, rx) = mpsc::channel::<AgentReport>(MAX_BUFFERED + 8);
    for r in buffer.iter() {
        tx.try_send(r.clone())
            .map_err(|e| format!("queueing replay: {e}"))?;
    }
    let replayed = buffer.len();
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
                if let Some(r) = push_latest(snapshots, run, sequence, buffer) {
                    tx.send(r).await.map_err(|_| "stream closed".to_owned())?;
                }
            }
            ack = acks.next() => match ack {
                Some(Ok(a)) => {
                    if !a.rejected.is_empty() {
                        // Dropped, not replayed: the next report's
                        // cumulative counters carry its traffic.
                        warn!(seq = a.acked_sequence, "collector rejected a report: {}", a.rejected);
                    }
                    buffer.ack(a.agent_run, a.acked_sequence);
                    if a.agent_run == run && a.rejected.is_empty() {
                        acked.send_if_modified(|newest| {
                            let newer = a.acked_sequence > *newest;
                            *newest = (*newest).max(a.acked_sequence);
                            newer
                        });
                    }
                    debug!(seq = a.acked_sequence, buffered = buffer.len(), "acked");
                }
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

    #[test]
    fn reports_are_numbered_by_their_snapshot_and_sent_once() {
        let snap = |sequence| {
            Arc::new(v1::Snapshot {
                node_name: "n".into(),
                sequence,
                ..Default::default()
            })
        };
        let (tx, rx) = watch::channel(snap(0));
        let (mut sent, mut b) = (0, Buffer::default());
        assert!(
            push_latest(&rx, 1, &mut sent, &mut b).is_none(),
            "no snapshot yet"
        );
        tx.send_replace(snap(5));
        let r = push_latest(&rx, 1, &mut sent, &mut b).map(|r| r.sequence);
        assert_eq!(r, Some(5));
        assert!(
            push_latest(&rx, 1, &mut sent, &mut b).is_none(),
            "5 went out"
        );
        // Snapshots 6 to 8 were taken while the stream waited: the newest
        // goes, with its own number.
        tx.send_replace(snap(9));
        let r = push_latest(&rx, 1, &mut sent, &mut b).map(|r| r.sequence);
        assert_eq!(r, Some(9));
        assert_eq!(b.len(), 2);
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

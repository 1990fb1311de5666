//! Streams the agent's reports to the collector (`--collector URL`).
//!
//! Reports carry cumulative counters, so the protocol only has to be
//! at-least-once: unacknowledged reports stay in a bounded buffer, the
//! connection is retried with exponential backoff and jitter, and everything
//! still unacknowledged is replayed after a reconnect (but a report the
//! collector refused as a message, which would be refused again). The collector ignores
//! a (run, sequence) it has seen. When the buffer overflows during a long
//! outage the oldest reports go first: the newest one alone still carries
//! every total, so the collector loses resolution, never traffic. For the
//! same reason a collector that reads slowly is sent fewer reports, not a
//! queue of copies; one that acknowledges nothing for [`ACK_DEADLINE`]
//! (a hung process keeps its TCP connection up) is given up. A report
//! is numbered by its snapshot, so that an acknowledgement says which
//! snapshots the collector applied, which is what releases the retired
//! endpoints the reports hold (see `withheld`).

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{Arc, Weak},
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
/// Reports queued for a connection beyond the one it is sending. A
/// collector that reads slowly is sent fewer reports, each carrying every
/// total, rather than a queue of copies of the buffer.
const QUEUED: usize = 2;
/// How long a connection may go without an acknowledgement while reports
/// wait for one (or take to connect, or to open its stream) before it is
/// given up and made again: a collector that stopped reading (a hung
/// process, a stopped container, a network partition) can keep its TCP
/// connection up for as long as it likes.
const ACK_DEADLINE: Duration = Duration::from_secs(30);

/// Reports not yet acknowledged, oldest first, shared with the connection
/// sending them (which copies each only as it encodes it).
#[derive(Default)]
pub struct Buffer {
    reports: VecDeque<(Arc<AgentReport>, usize)>,
    bytes: usize,
    /// Reports dropped because the buffer was full.
    pub dropped: u64,
}

impl Buffer {
    /// Adds a report, evicting the oldest ones past the bounds.
    pub fn push(&mut self, r: Arc<AgentReport>) {
        let len = r.encoded_len();
        self.bytes += len;
        self.reports.push_back((r, len));
        while self.reports.len() > 1
            && (self.reports.len() > MAX_BUFFERED || self.bytes > MAX_BUFFERED_BYTES)
        {
            if let Some((_, len)) = self.reports.pop_front() {
                self.bytes -= len;
                self.dropped += 1;
            }
        }
    }

    /// Drops every report of `run` up to and including `seq`.
    pub fn ack(&mut self, run: u64, seq: u64) {
        while let Some((front, len)) = self.reports.front() {
            if front.agent_run == run && front.sequence <= seq {
                self.bytes -= len;
                self.reports.pop_front();
            } else {
                break;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.reports.len()
    }

    /// Takes out the report of snapshot `seq`; whether it was there.
    fn remove(&mut self, seq: u64) -> bool {
        let Some(at) = self.reports.iter().position(|(r, _)| r.sequence == seq) else {
            return false;
        };
        if let Some((_, len)) = self.reports.remove(at) {
            self.bytes -= len;
        }
        true
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<AgentReport>> {
        self.reports.iter().map(|(r, _)| r)
    }
}

/// Whether the collector can take endpoint `e`: one of no known protocol
/// or direction (which only something else writing the pinned map could
/// make) would have it refuse the whole report.
fn reportable(e: &v1::Endpoint) -> bool {
    e.protocol != v1::Protocol::Unspecified as i32
        && e.direction != v1::Direction::Unspecified as i32
}

/// Builds the report for one snapshot: totals only, rates are the
/// collector's to derive; only [`reportable`] endpoints.
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
            .filter(|e| reportable(e))
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
/// that cannot be used then (unreadable, or a key that does not match its
/// certificate) are logged once, and the last good reading stands.
pub struct Tls {
    ca: Option<PathBuf>,
    cert_key: Option<(PathBuf, PathBuf)>,
    last: std::sync::Mutex<LastGood>,
}

/// The last usable reading of the files, and why the latest was not.
struct LastGood {
    config: tonic::transport::ClientTlsConfig,
    refused: Option<String>,
}

impl Tls {
    /// Reads the PEM files, naming the flag and file of any problem.
    pub fn load(ca: Option<&Path>, cert_key: Option<(&Path, &Path)>) -> anyhow::Result<Self> {
        let config = evenflow_daemon::tls::client(ca, cert_key)?;
        Ok(Self {
            ca: ca.map(Path::to_owned),
            cert_key: cert_key.map(|(c, k)| (c.to_owned(), k.to_owned())),
            last: std::sync::Mutex::new(LastGood {
                config,
                refused: None,
            }),
        })
    }

    /// The files as they are now, or the last good reading. A refusal is
    /// logged when it first happens (and again if it changes), not at
    /// every reconnect.
    fn config(&self) -> tonic::transport::ClientTlsConfig {
        let cert_key = (self.cert_key.as_ref()).map(|(c, k)| (c.as_path(), k.as_path()));
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match evenflow_daemon::tls::client(self.ca.as_deref(), cert_key) {
            Ok(config) => {
                if last.refused.take().is_some() {
                    info!("TLS files usable again: connections use them");
                }
                last.config = config;
            }
            Err(e) => {
                let why = e.to_string();
                if last.refused.as_ref() != Some(&why) {
                    warn!("TLS files cannot be used now, so the last good ones are: {why}");
                    last.refused = Some(why);
                }
            }
        }
        last.config.clone()
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
    // Pings find a collector that stopped (a stopped process answers
    // none), and end a connection given up on, which a request body the
    // collector does not read would otherwise keep open.
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
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
    /// See [`ACK_DEADLINE`].
    ack_deadline: Duration,
}

impl Stream {
    /// Buffers a report of the newest snapshot, numbered as it is, unless
    /// it went out already.
    fn push_latest(
        &mut self,
        snapshots: &watch::Receiver<Arc<v1::Snapshot>>,
    ) -> Option<Arc<AgentReport>> {
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
        // Held ones too (one retired broken stays held).
        r.endpoints.retain(reportable);
        let r = Arc::new(r);
        self.buffer.push(r.clone());
        Some(r)
    }

    /// The collector ended the stream with `status`, `in_flight` the
    /// oldest report the connection sent that it had not acknowledged.
    /// Refusing a message it could not take (too large, not decodable, no
    /// identity), it refused that one, since it acknowledges in order: it
    /// is dropped, or every reconnect would replay it into the same
    /// refusal. The next report carries its totals.
    fn refused(&mut self, status: &tonic::Status, in_flight: Option<u64>) {
        use tonic::Code;
        // A failure of the HTTP/2 connection tonic turned into a status
        // refuses nothing: a GOAWAY with ENHANCE_YOUR_CALM (a proxy that
        // finds the keepalive pings too many) reads as ResourceExhausted.
        // Told by the message tonic gives every such status: the one it
        // makes from a hyper error carries no source to downcast.
        if status.message().starts_with("h2 protocol error") {
            return;
        }
        let message_refused = match status.code() {
            Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument => true,
            // Also what a connection reset looks like.
            Code::Internal => status.message().contains("decode"),
            _ => false,
        };
        if let Some(seq) = in_flight.filter(|_| message_refused)
            && self.buffer.remove(seq)
        {
            warn!(
                seq,
                "the collector refused this report, so it is dropped: {}",
                status.message()
            );
        }
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
            // Nothing past what was sent: holds are released by it.
            self.acked = self.acked.max(a.acked_sequence.min(self.sequence));
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
        ack_deadline: ACK_DEADLINE,
    };
    let mut backoff = BACKOFF_MIN;
    info!(collector = %url, run = stream.run, "streaming reports");
    loop {
        match session(
            &url,
            tls.as_ref(),
            &mut stream,
            &mut snapshots,
            &mut backoff,
        )
        .await
        {
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
    }
}

/// One connection: replay the buffer, then send each new report and drop
/// acknowledged ones. An acknowledgement resets `backoff`. Returns
/// `Ok` only when snapshots end (shutdown).
async fn session(
    url: &str,
    tls: Option<&Tls>,
    stream: &mut Stream,
    snapshots: &mut watch::Receiver<Arc<v1::Snapshot>>,
    backoff: &mut Duration,
) -> Result<(), String> {
    // A stopped collector's kernel still completes the TCP handshake; the
    // TLS handshake and the stream's opening then never end.
    let connecting = tokio::time::timeout(stream.ack_deadline, connect(url, tls)).await;
    let mut client = connecting
        .map_err(|_| format!("no answer from the collector in {:?}", stream.ack_deadline))??;
    // The connection holds the reports weakly: one given up on keeps none
    // of the buffer alive, and a report acknowledged or dropped meanwhile
    // is not sent.
    let (tx, rx) = mpsc::channel::<Weak<AgentReport>>(QUEUED);
    let replay: Vec<Weak<AgentReport>> = stream.buffer.iter().map(Arc::downgrade).collect();
    // What this connection sent and has not had acknowledged, in order.
    let mut in_flight: VecDeque<u64> = stream.buffer.iter().map(|r| r.sequence).collect();
    let (replayed, mut sent) = (in_flight.len(), in_flight.back().copied().unwrap_or(0));
    // The replay first, then new reports.
    let outbound = (tokio_stream::iter(replay).chain(ReceiverStream::new(rx)))
        .filter_map(|r| r.upgrade().map(|r| AgentReport::clone(&r)));
    let opened = tokio::time::timeout(stream.ack_deadline, client.report(outbound)).await;
    let mut acks = opened
        .map_err(|_| {
            format!(
                "the collector did not open the stream in {:?}",
                stream.ack_deadline
            )
        })?
        .map_err(|s| format!("opening the Report stream: {}", s.message()))?
        .into_inner();
    info!(replayed, "connected to collector");
    // Since the last acknowledgement (or the first send after one), while
    // reports up to `sent` wait for one.
    let mut waiting = (replayed > 0).then(tokio::time::Instant::now);
    loop {
        let deadline = waiting.map(|t| t + stream.ack_deadline);
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let Some(r) = stream.push_latest(snapshots) else { continue };
                let seq = r.sequence;
                match tx.try_send(Arc::downgrade(&r)) {
                    Ok(()) => {
                        sent = seq;
                        in_flight.push_back(seq);
                        waiting.get_or_insert_with(tokio::time::Instant::now);
                    }
                    // The connection is behind: this report stays in the
                    // buffer, and the next one carries its totals.
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        debug!(seq, "the collector is behind: report not queued");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        return Err("stream closed".to_owned());
                    }
                }
            }
            ack = acks.next() => match ack {
                Some(Ok(a)) => {
                    stream.ack(&a);
                    while in_flight.front().is_some_and(|&s| s <= a.acked_sequence) {
                        in_flight.pop_front();
                    }
                    *backoff = BACKOFF_MIN;
                    waiting = (a.acked_sequence < sent).then(tokio::time::Instant::now);
                }
                Some(Err(s)) => {
                    stream.refused(&s, in_flight.front().copied());
                    return Err(format!("collector said: {} ({:?})", s.message(), s.code()));
                }
                None => return Err("collector closed the stream".to_owned()),
            },
            () = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                return Err(format!(
                    "the collector acknowledged nothing for {:?}: reconnecting",
                    stream.ack_deadline
                ));
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
            b.push(Arc::new(report(7, s)));
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
            b.push(Arc::new(report(1, s)));
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
            protocol: v1::Protocol::Tcp as i32,
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
            ack_deadline: ACK_DEADLINE,
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
        let ports = |r: Option<Arc<AgentReport>>| -> Vec<u32> {
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

    /// An acknowledgement past the last report sent (a collector that
    /// counts wrong) releases only what was sent: an endpoint retired
    /// after it stays frozen until a report carrying its last totals is
    /// acknowledged.
    #[test]
    fn an_acknowledgement_of_reports_never_sent_releases_nothing_more() {
        let (mut s, retirements) = stream();
        let (tx, rx) = watch::channel(snap(1, &[80, 81]));
        assert!(s.push_latest(&rx).is_some());
        tx.send_replace(snap(2, &[80, 81]));
        assert!(s.push_latest(&rx).is_some());
        s.ack(&v1::ReportAck {
            agent_run: 1,
            acked_sequence: 1_000,
            rejected: String::new(),
        });
        assert_eq!(s.acked, 2, "clamped to the last report sent");
        assert_eq!(s.buffer.len(), 0);
        // Port 80 counted in the read that retired it (0 quiet reads): the
        // collector does not have those totals.
        let retired = snap(3, &[80]).endpoints[0].clone();
        retirements
            .send(Retirement {
                snapshot: 3,
                endpoints: vec![(retired, 0)],
            })
            .expect("the stream listens");
        tx.send_replace(snap(3, &[81]));
        let r = s.push_latest(&rx).expect("snapshot 3 goes");
        let ports: Vec<u32> = r.endpoints.iter().map(|e| e.port).collect();
        assert_eq!(ports, vec![81, 80], "80 frozen with its last totals");
    }

    type Acks = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<v1::ReportAck, tonic::Status>> + Send>,
    >;

    /// A collector on a real gRPC server: `acks` says whether it reads and
    /// acknowledges reports, or takes the stream and then neither reads
    /// nor answers (a hung process: its TCP connection stays up).
    struct Collector {
        acks: bool,
    }

    #[tonic::async_trait]
    impl v1::ingest_server::Ingest for Collector {
        type ReportStream = Acks;
        async fn report(
            &self,
            req: tonic::Request<tonic::Streaming<AgentReport>>,
        ) -> Result<tonic::Response<Acks>, tonic::Status> {
            let (mut inbound, acks) = (req.into_inner(), self.acks);
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(async move {
                if !acks {
                    let _held = (inbound, tx);
                    return std::future::pending().await;
                }
                while let Some(Ok(r)) = inbound.next().await {
                    let ack = v1::ReportAck {
                        agent_run: r.agent_run,
                        acked_sequence: r.sequence,
                        rejected: String::new(),
                    };
                    if tx.send(Ok(ack)).await.is_err() {
                        return;
                    }
                }
            });
            Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
        }
    }

    async fn serve(acks: bool) -> String {
        let l = (tokio::net::TcpListener::bind("127.0.0.1:0").await).expect("bind");
        let addr = l.local_addr().expect("addr");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(v1::ingest_server::IngestServer::new(Collector { acks }))
                .serve_with_incoming(incoming),
        );
        format!("http://{addr}")
    }

    /// Snapshots 1..=n of 2,000 endpoints (about 100 kB a report), one
    /// every 5 ms; the sender is returned when done, so snapshots go on.
    fn produce(
        tx: watch::Sender<Arc<v1::Snapshot>>,
        n: u64,
    ) -> tokio::task::JoinHandle<watch::Sender<Arc<v1::Snapshot>>> {
        let ports: Vec<u32> = (1..=2000).collect();
        tokio::spawn(async move {
            for seq in 1..=n {
                tx.send_replace(snap(seq, &ports));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tx
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_collector_that_stops_reading_is_given_up_while_snapshots_go_on() {
        let url = serve(false).await;
        let (mut s, _retirements) = stream();
        s.ack_deadline = Duration::from_secs(1);
        let (tx, mut rx) = watch::channel(snap(0, &[]));
        let producer = produce(tx, 400);
        let start = std::time::Instant::now();
        let mut backoff = BACKOFF_MAX;
        let ended = tokio::time::timeout(
            Duration::from_secs(10),
            session(&url, None, &mut s, &mut rx, &mut backoff),
        )
        .await
        .expect("the session ends by itself");
        let took = start.elapsed();
        let _tx = producer.await.expect("producer");
        let e = ended.expect_err("no acknowledgement is no success");
        assert!(e.contains("acknowledged nothing"), "{e}");
        assert!(took < Duration::from_secs(3), "given up after {took:?}");
        // Snapshots were taken all along, into the bounded buffer, while
        // the connection could take no more.
        assert!(
            s.sequence > 100,
            "stopped taking snapshots at {}",
            s.sequence
        );
        assert!(s.buffer.len() <= MAX_BUFFERED);
        assert_eq!(backoff, BACKOFF_MAX, "nothing acknowledged: no reset");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_acknowledgement_resets_the_backoff_and_empties_the_buffer() {
        let url = serve(true).await;
        let (mut s, _retirements) = stream();
        let (tx, mut rx) = watch::channel(snap(0, &[]));
        let producer = tokio::spawn(async move {
            let tx = produce(tx, 50).await.expect("producer");
            // Time for the last acknowledgements, then snapshots end.
            tokio::time::sleep(Duration::from_millis(500)).await;
            drop(tx);
        });
        let mut backoff = BACKOFF_MAX;
        let ended = tokio::time::timeout(
            Duration::from_secs(10),
            session(&url, None, &mut s, &mut rx, &mut backoff),
        )
        .await
        .expect("the session ends with the snapshots");
        producer.await.expect("producer");
        assert_eq!(ended, Ok(()));
        assert_eq!(backoff, BACKOFF_MIN);
        assert_eq!((s.sequence, s.acked, s.buffer.len()), (50, 50, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_collector_that_never_answers_is_given_up() {
        // A stopped process: its kernel accepts the connection, nothing
        // answers: not the stream's opening, nor a TLS handshake.
        let dir = std::env::temp_dir().join(format!("evenflow-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = dir.join("ca.pem");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().expect("key");
        std::fs::write(&ca, params.self_signed(&key).expect("CA").pem()).expect("write");
        let tls = Tls::load(Some(&ca), None).expect("a CA file");
        for (scheme, tls, why) in [
            ("http", None, "did not open the stream"),
            ("https", Some(&tls), "no answer from the collector"),
        ] {
            let l = (tokio::net::TcpListener::bind("127.0.0.1:0").await).expect("bind");
            let url = format!("{scheme}://{}", l.local_addr().expect("addr"));
            let held = tokio::spawn(async move {
                let mut conns = Vec::new();
                while let Ok((c, _)) = l.accept().await {
                    conns.push(c);
                }
            });
            let (mut s, _retirements) = stream();
            s.ack_deadline = Duration::from_secs(1);
            let (_tx, mut rx) = watch::channel(snap(0, &[]));
            let mut backoff = BACKOFF_MIN;
            let ended = tokio::time::timeout(
                Duration::from_secs(5),
                session(&url, tls, &mut s, &mut rx, &mut backoff),
            )
            .await
            .expect("the session ends by itself");
            held.abort();
            let e = ended.expect_err("no stream is no success");
            assert!(e.contains(why), "{scheme}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_report_the_collector_refused_is_dropped_not_replayed() {
        let (mut s, _retirements) = stream();
        let (tx, rx) = watch::channel(snap(0, &[]));
        for seq in 1..=3 {
            tx.send_replace(snap(seq, &[80]));
            s.push_latest(&rx);
        }
        s.ack(&v1::ReportAck {
            agent_run: 1,
            acked_sequence: 1,
            rejected: String::new(),
        });
        // 2 was skipped (the connection was behind); 3 was in flight.
        s.refused(&tonic::Status::unavailable("the connection broke"), Some(3));
        s.refused(&tonic::Status::internal("h2 protocol error"), Some(3));
        s.refused(
            &tonic::Status::resource_exhausted(
                "h2 protocol error: connection error received: ENHANCE_YOUR_CALM",
            ),
            Some(3),
        );
        assert_eq!(s.buffer.len(), 2, "a broken connection refused nothing");
        s.refused(
            &tonic::Status::resource_exhausted("field 7 appears more than"),
            Some(3),
        );
        let left: Vec<u64> = s.buffer.iter().map(|r| r.sequence).collect();
        assert_eq!(left, [2], "3, the one in flight, was refused");
        assert_eq!(s.buffer.dropped, 0, "not dropped for room");
    }

    #[test]
    fn refused_twice_leaves_the_buffer_alone() {
        let (mut s, _retirements) = stream();
        let (tx, rx) = watch::channel(snap(0, &[]));
        tx.send_replace(snap(1, &[80]));
        s.push_latest(&rx);
        s.refused(
            &tonic::Status::internal("failed to decode Protobuf message"),
            None,
        );
        assert_eq!(s.buffer.len(), 1, "nothing in flight: nothing refused");
        s.refused(
            &tonic::Status::internal("failed to decode Protobuf message"),
            Some(1),
        );
        assert_eq!(s.buffer.len(), 0);
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
                direction: v1::Direction::Serves as i32,
                protocol: v1::Protocol::Tcp as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        let r = from_snapshot(&snap, 5, 1);
        assert_eq!(r.agent_run, 5);
        assert!(r.endpoints[0].rates.is_none());
        assert_eq!(r.endpoints[0].totals.map(|t| t.conns_opened), Some(9));
    }

    #[test]
    fn an_endpoint_of_no_known_protocol_or_direction_is_left_out() {
        let mut s = snap(3, &[80, 81, 82]);
        let endpoints = &mut Arc::make_mut(&mut s).endpoints;
        endpoints[1].protocol = v1::Protocol::Unspecified as i32;
        endpoints[2].direction = v1::Direction::Unspecified as i32;
        let ports: Vec<u32> = from_snapshot(&s, 1, 3)
            .endpoints
            .iter()
            .map(|e| e.port)
            .collect();
        assert_eq!(ports, [80]);
        // Nor once retired and held frozen.
        let (mut stream, retirements) = stream();
        let mut broken = snap(2, &[81]).endpoints[0].clone();
        broken.protocol = v1::Protocol::Unspecified as i32;
        retirements
            .send(Retirement {
                snapshot: 2,
                endpoints: vec![(broken, 2)],
            })
            .expect("the stream listens");
        let (_tx, rx) = watch::channel(snap(2, &[80]));
        let r = stream.push_latest(&rx).expect("a report");
        let ports: Vec<u32> = r.endpoints.iter().map(|e| e.port).collect();
        assert_eq!(ports, [80]);
    }
}

//! Long-lived connections in the lab: a real gRPC backend (tonic, HTTP/2)
//! that counts its own connections, calls and bytes; gRPC clients that
//! hold their channels open and call continuously; HTTP/1.1 keep-alive
//! clients for nginx backends.
//!
//! They run as `evenflow-grpc-lab` processes inside lab nodes — their
//! sockets in the node's network namespace and cgroup, as a real service's
//! are — and write their counters to JSON files (replaced atomically every
//! 100 ms) that the tests and the pinned demo read: the counts evenflow's
//! numbers are held to.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::lab::{Lab, Node};

/// The generated service.
pub mod pb {
    tonic::include_proto!("evenflow.lab.v1");
}

/// The port the lab's gRPC backends listen on (every address).
pub const PORT: u16 = 7070;

/// How often the processes write their counters.
const STATS_EVERY: Duration = Duration::from_millis(100);

/// What a gRPC backend counted itself, at the socket: every byte its
/// connections read and wrote (HTTP/2 frames included), so TCP payload,
/// which is what evenflow's agent counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections closed.
    pub closed: u64,
    /// Calls answered.
    pub calls: u64,
    /// Bytes read from its connections.
    pub bytes_read: u64,
    /// Bytes written to its connections.
    pub bytes_written: u64,
}

impl ServerStats {
    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.accepted.saturating_sub(self.closed)
    }
}

/// What a client process counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Channels (gRPC) or connections (keep-alive) it keeps.
    pub channels: u64,
    /// TCP connections it opened (first ones and reconnections).
    pub connects: u64,
    /// Calls or requests answered.
    pub ok: u64,
    /// Calls or requests that failed.
    pub failed: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    closed: AtomicU64,
    calls: AtomicU64,
    read: AtomicU64,
    written: AtomicU64,
}

impl Counters {
    fn server(&self) -> ServerStats {
        ServerStats {
            accepted: self.accepted.load(Relaxed),
            closed: self.closed.load(Relaxed),
            calls: self.calls.load(Relaxed),
            bytes_read: self.read.load(Relaxed),
            bytes_written: self.written.load(Relaxed),
        }
    }
}

/// Writes `v` to `path` atomically (a reader never sees half a file).
fn write_json(path: &Path, v: &Value) -> Result<()> {
    crate::replace_file(path, v.to_string())
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn field(v: &Value, k: &str) -> Result<u64> {
    v[k].as_u64()
        .with_context(|| format!("no counter {k:?} in {v}"))
}

/// A backend's counters, as its process last wrote them.
pub fn read_server(path: &Path) -> Result<ServerStats> {
    let v = read_json(path)?;
    Ok(ServerStats {
        accepted: field(&v, "accepted")?,
        closed: field(&v, "closed")?,
        calls: field(&v, "calls")?,
        bytes_read: field(&v, "bytes_read")?,
        bytes_written: field(&v, "bytes_written")?,
    })
}

/// A client process's counters, as it last wrote them.
pub fn read_client(path: &Path) -> Result<ClientStats> {
    let v = read_json(path)?;
    Ok(ClientStats {
        channels: field(&v, "channels")?,
        connects: field(&v, "connects")?,
        ok: field(&v, "ok")?,
        failed: field(&v, "failed")?,
    })
}

/// A connection that counts what crosses it, and its own close.
struct Counted {
    inner: tokio::net::TcpStream,
    counters: Arc<Counters>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.counters.closed.fetch_add(1, Relaxed);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.counters.read.fetch_add(n, Relaxed);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.counters.written.fetch_add(*n as u64, Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Counted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

struct Echo {
    name: String,
    counters: Arc<Counters>,
}

#[tonic::async_trait]
impl pb::echo_server::Echo for Echo {
    async fn call(
        &self,
        req: tonic::Request<pb::CallRequest>,
    ) -> Result<tonic::Response<pb::CallReply>, tonic::Status> {
        let size = req.into_inner().reply_size.min(1 << 20) as usize;
        self.counters.calls.fetch_add(1, Relaxed);
        Ok(tonic::Response::new(pb::CallReply {
            payload: vec![b'r'; size],
            server: self.name.clone(),
        }))
    }
}

/// Runs a gRPC backend on `listen` until killed, writing its counters to
/// `stats` every 100 ms.
pub async fn serve(listen: SocketAddr, name: String, stats: PathBuf) -> Result<()> {
    let counters = Arc::new(Counters::default());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let c = counters.clone();
    tokio::spawn(async move {
        loop {
            let s = c.server();
            let v = json!({
                "accepted": s.accepted,
                "closed": s.closed,
                "open": s.open(),
                "calls": s.calls,
                "bytes_read": s.bytes_read,
                "bytes_written": s.bytes_written,
            });
            if let Err(e) = write_json(&stats, &v) {
                eprintln!("evenflow-grpc-lab: {e:#}");
            }
            tokio::time::sleep(STATS_EVERY).await;
        }
    });
    let c = counters.clone();
    let incoming = async_incoming(listener, c);
    tonic::transport::Server::builder()
        .add_service(pb::echo_server::EchoServer::new(Echo { name, counters }))
        .serve_with_incoming(incoming)
        .await
        .context("serving")
}

/// Accepted connections, counted and wrapped.
fn async_incoming(
    listener: tokio::net::TcpListener,
    counters: Arc<Counters>,
) -> impl tokio_stream::Stream<Item = std::io::Result<Counted>> {
    let accepted = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio_stream::StreamExt::map(accepted, move |r| {
        r.map(|inner| {
            counters.accepted.fetch_add(1, Relaxed);
            Counted {
                inner,
                counters: counters.clone(),
            }
        })
    })
}

/// How a client process behaves.
#[derive(Clone, Debug)]
pub struct Load {
    /// Channels (gRPC) or connections (keep-alive) held open.
    pub channels: usize,
    /// Pause between a channel's calls.
    pub interval: Duration,
    /// Request payload bytes (gRPC).
    pub payload: usize,
    /// Reply payload bytes (gRPC).
    pub reply: u32,
    /// Over how long the clients connect: the `k`-th of `n` opens its
    /// channel `k / n` of it after the start (clients that come up one
    /// after another, as a scaled-up deployment's do).
    pub ramp: Duration,
}

impl Load {
    /// When the `k`-th channel opens, after the start.
    fn start_of(&self, k: usize) -> Duration {
        let n = self.channels.max(1) as u32;
        self.ramp * u32::try_from(k).unwrap_or(u32::MAX) / n
    }
}

#[derive(Default)]
struct ClientCounters {
    connects: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

fn client_stats_loop(c: Arc<ClientCounters>, channels: usize, stats: PathBuf) {
    loop {
        let v = json!({
            "channels": channels,
            "connects": c.connects.load(Relaxed),
            "ok": c.ok.load(Relaxed),
            "failed": c.failed.load(Relaxed),
        });
        if let Err(e) = write_json(&stats, &v) {
            eprintln!("evenflow-grpc-lab: {e:#}");
        }
        std::thread::sleep(STATS_EVERY);
    }
}

/// Holds `load.channels` gRPC channels to `target` (each its own HTTP/2
/// connection, kept for as long as it works, re-established only when it
/// breaks) and calls on each continuously, until killed.
pub async fn call(target: SocketAddr, load: Load, stats: PathBuf) -> Result<()> {
    let counters = Arc::new(ClientCounters::default());
    let c = counters.clone();
    let channels = load.channels;
    std::thread::spawn(move || client_stats_loop(c, channels, stats));
    for k in 0..load.channels {
        let c = counters.clone();
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let c = c.clone();
            async move {
                let s = tokio::net::TcpStream::connect(target).await?;
                s.set_nodelay(true)?;
                c.connects.fetch_add(1, Relaxed);
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))?
            .connect_timeout(Duration::from_secs(2))
            .connect_with_connector_lazy(connector);
        let mut client = pb::echo_client::EchoClient::new(channel);
        let c = counters.clone();
        let load = load.clone();
        tokio::spawn(async move {
            tokio::time::sleep(load.start_of(k)).await;
            let payload = vec![b'q'; load.payload];
            loop {
                let req = pb::CallRequest {
                    payload: payload.clone(),
                    reply_size: load.reply,
                };
                match client.call(req).await {
                    Ok(_) => c.ok.fetch_add(1, Relaxed),
                    Err(_) => c.failed.fetch_add(1, Relaxed),
                };
                tokio::time::sleep(load.interval).await;
            }
        });
    }
    // The channels call until the process is killed.
    std::future::pending().await
}

/// Holds `load.channels` HTTP/1.1 keep-alive connections to `target` and
/// sends `GET /` on each continuously, reconnecting only when one breaks,
/// until killed.
pub fn keepalive(target: SocketAddr, load: Load, stats: PathBuf) -> Result<()> {
    let counters = Arc::new(ClientCounters::default());
    let c = counters.clone();
    let channels = load.channels;
    std::thread::spawn(move || client_stats_loop(c, channels, stats));
    let workers: Vec<_> = (0..load.channels)
        .map(|k| {
            let c = counters.clone();
            let interval = load.interval;
            let start = load.start_of(k);
            std::thread::spawn(move || {
                std::thread::sleep(start);
                let mut conn: Option<TcpStream> = None;
                loop {
                    if conn.is_none() {
                        match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                            Ok(s) => {
                                c.connects.fetch_add(1, Relaxed);
                                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                                conn = Some(s);
                            }
                            Err(_) => {
                                c.failed.fetch_add(1, Relaxed);
                                std::thread::sleep(interval);
                                continue;
                            }
                        }
                    }
                    let ok = conn.as_mut().is_some_and(|s| one_request(s).is_ok());
                    if ok {
                        c.ok.fetch_add(1, Relaxed);
                    } else {
                        c.failed.fetch_add(1, Relaxed);
                        conn = None;
                    }
                    std::thread::sleep(interval);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

/// One keep-alive request: `GET /`, the response's headers and its
/// `Content-Length` body.
fn one_request(s: &mut TcpStream) -> Result<()> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: lab\r\nUser-Agent: evenflow-grpc-lab\r\n\r\n")?;
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            bail!("connection closed");
        }
        head.push(byte[0]);
        if head.len() > 16 * 1024 {
            bail!("response headers too long");
        }
    }
    let text = String::from_utf8_lossy(&head);
    if !text.starts_with("HTTP/1.1 200") {
        bail!("unexpected response {}", text.lines().next().unwrap_or(""));
    }
    let len: usize = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .context("no Content-Length")?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(())
}

/// The `evenflow-grpc-lab` binary (`$EVENFLOW_GRPC_LAB_BIN`, else the
/// workspace's newest build).
pub fn bin() -> Result<PathBuf> {
    crate::agent::binary("evenflow-grpc-lab", "EVENFLOW_GRPC_LAB_BIN")
}

/// A fresh counters file for process `name` in the lab's directory (a
/// restarted backend counts from zero in a file of its own).
fn stats_path(lab: &Lab, name: &str) -> PathBuf {
    (1..)
        .map(|n| lab.dir.join(format!("{name}-{n}.json")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| lab.dir.join(format!("{name}.json")))
}

/// Waits until a process has written its counters file.
fn wait_stats(lab: &mut Lab, path: &Path) -> Result<()> {
    if crate::wait_for(Duration::from_secs(10), || path.exists().then_some(())).is_none() {
        lab.check_alive()?;
        bail!("{} did not appear within 10 s", path.display());
    }
    Ok(())
}

/// Starts a gRPC backend on `node` (`grpc-<role>`, every address, port
/// [`PORT`]) and waits until it listens; returns its counters file.
pub fn start_server(lab: &mut Lab, node: &Node) -> Result<PathBuf> {
    let bin = bin()?.display().to_string();
    let name = format!("grpc-{}", node.role);
    let stats = stats_path(lab, &name);
    let stats_s = stats.display().to_string();
    lab.spawn(
        node,
        &name,
        &bin,
        &[
            "serve",
            "--listen",
            &format!("[::]:{PORT}"),
            "--name",
            &node.role,
            "--stats",
            &stats_s,
        ],
    )?;
    lab.wait_listening(node, PORT, 1)?;
    wait_stats(lab, &stats)?;
    Ok(stats)
}

/// Stops `node`'s gRPC backend (SIGTERM): its connections close.
pub fn stop_server(lab: &mut Lab, node: &Node) {
    lab.stop(&format!("grpc-{}", node.role));
}

/// Starts `clients` (a client process on the lab's client node, named
/// `name`) running `mode` ("call" for gRPC, "keepalive" for HTTP/1.1) to
/// `target`; returns its counters file once written.
pub fn start_clients(
    lab: &mut Lab,
    name: &str,
    mode: &str,
    target: SocketAddr,
    load: &Load,
) -> Result<PathBuf> {
    let bin = bin()?.display().to_string();
    let stats = stats_path(lab, name);
    let client = lab.client.clone();
    let args = [
        mode.to_owned(),
        "--target".into(),
        target.to_string(),
        "--channels".into(),
        load.channels.to_string(),
        "--interval-ms".into(),
        load.interval.as_millis().to_string(),
        "--payload".into(),
        load.payload.to_string(),
        "--reply".into(),
        load.reply.to_string(),
        "--ramp-ms".into(),
        load.ramp.as_millis().to_string(),
        "--stats".into(),
        stats.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.spawn(&client, name, &bin, &args)?;
    wait_stats(lab, &stats)?;
    Ok(stats)
}

/// Established TCP connections on local port `port` in `node`, as the
/// kernel lists them (`ss`): a count neither evenflow nor the server made.
pub fn established(node: &Node, port: u16) -> Result<u64> {
    let filter = format!("sport = :{port}");
    let out = crate::netns::exec(&node.ns, "ss", &["-Htn", "state", "established", &filter])?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_files_round_trip() {
        let dir = std::env::temp_dir().join(format!("grpclab-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.json");
        write_json(
            &p,
            &json!({"accepted": 5, "closed": 2, "open": 3, "calls": 9, "bytes_read": 10, "bytes_written": 20}),
        )
        .unwrap();
        let s = read_server(&p).unwrap();
        assert_eq!(s.open(), 3);
        assert_eq!(s.bytes_written, 20);
        write_json(&p, &json!({"channels": 4})).unwrap();
        assert!(read_client(&p).is_err(), "missing counters are an error");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

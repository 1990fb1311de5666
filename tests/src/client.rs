//! The test's own HTTP client: threads that entered the client node's
//! namespace, so the test knows exactly how many connections it made and
//! how many payload bytes each carried, without trusting a load generator's
//! summary.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

/// What a load run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Connections that completed: request sent, a 200 read to EOF.
    pub connections: u64,
    /// Connections that failed at any step.
    pub failures: u64,
    /// Request bytes written (TCP payload), over completed connections.
    pub bytes_sent: u64,
    /// Response bytes read (TCP payload), over completed connections.
    pub bytes_received: u64,
    /// The first failure, to say why.
    pub first_error: Option<String>,
}

impl Load {
    /// Adds another run's numbers to this one.
    pub fn add(&mut self, other: &Load) {
        self.connections += other.connections;
        self.failures += other.failures;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

/// A load to drive.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// Connections in all, each carrying one request.
    pub connections: u64,
    /// Connections at a time (threads).
    pub workers: u64,
    /// Bytes of an `X-Pad` header added to every request (0: none); real
    /// requests carry cookies and tokens of this size.
    pub pad: usize,
    /// The path every request asks for (see [`crate::nginx::BIG_PATH`]).
    pub path: &'static str,
}

/// Makes `n` connections to `target` from inside namespace `ns`, `workers`
/// at a time, each carrying one `GET` with `Connection: close` and reading
/// the response to EOF.
pub fn http_load(ns: &str, target: SocketAddr, n: u64, workers: u64) -> Result<Load> {
    run(
        ns,
        target,
        Spec {
            connections: n,
            workers,
            pad: 0,
            path: "/",
        },
    )
}

/// Drives `spec` against `target` from inside namespace `ns`.
pub fn run(ns: &str, target: SocketAddr, spec: Spec) -> Result<Load> {
    let workers = spec.workers.clamp(1, spec.connections.max(1));
    let mut handles = Vec::new();
    for w in 0..workers {
        let count = spec.connections / workers + u64::from(w < spec.connections % workers);
        let ns = ns.to_owned();
        handles.push(std::thread::spawn(move || {
            crate::netns::run_in(&ns, move || {
                let mut load = Load::default();
                for i in 0..count {
                    match one(target, &request(spec.path, w, i, spec.pad)) {
                        Ok((s, r)) => {
                            load.connections += 1;
                            load.bytes_sent += s;
                            load.bytes_received += r;
                        }
                        Err(e) => {
                            load.failures += 1;
                            if load.first_error.is_none() {
                                load.first_error = Some(format!("{e:#}"));
                            }
                        }
                    }
                }
                load
            })
        }));
    }
    let mut total = Load::default();
    for h in handles {
        let l = h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        total.add(&l);
    }
    Ok(total)
}

/// The request a worker sends on its `i`th connection (the query string
/// makes each one distinct in logs).
pub fn request(path: &str, worker: u64, i: u64, pad: usize) -> String {
    let pad = if pad == 0 {
        String::new()
    } else {
        format!("X-Pad: {}\r\n", "p".repeat(pad))
    };
    format!(
        "GET {path}?w{worker}r{i} HTTP/1.1\r\nHost: lab\r\nUser-Agent: evenflow-test\r\n{pad}\
         Connection: close\r\n\r\n"
    )
}

/// One connection: connect, send the request, read the response to EOF.
/// Returns the payload bytes sent and received.
fn one(target: SocketAddr, req: &str) -> Result<(u64, u64)> {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3))
        .with_context(|| format!("connecting to {target}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(req.as_bytes()).context("sending the request")?;
    let mut buf = Vec::with_capacity(1 << 20);
    s.read_to_end(&mut buf).context("reading the response")?;
    ensure!(
        buf.starts_with(b"HTTP/1.1 200"),
        "unexpected response: {}",
        String::from_utf8_lossy(&buf[..buf.len().min(80)])
    );
    Ok((req.len() as u64, buf.len() as u64))
}

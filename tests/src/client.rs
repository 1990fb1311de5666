//! The test's own HTTP client: threads that entered the client node's
//! namespace, so the test knows exactly how many connections it made and
//! how many payload bytes each carried, without trusting a load generator's
//! summary.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use crate::lab::Lab;

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
    /// Longer IP headers on the client's packets.
    pub extras: IpExtras,
    /// How long a connect or a read may wait before the connection counts
    /// as failed ([`PATIENCE`] unless the path is meant to lose packets:
    /// three losses of one segment back off for 1 + 2 + 4 s).
    pub patience: Patience,
}

/// How long a connection waits before it counts as failed.
#[derive(Clone, Copy, Debug)]
pub struct Patience {
    /// For the handshake.
    pub connect: Duration,
    /// For each read of the response.
    pub read: Duration,
}

/// On a healthy path. The connect gives up at 3 s, when the SYN's second
/// retransmission would leave: tests that make a backend drop SYNs count
/// on the connect failing rather than on a retransmission that finds the
/// conntrack entry expired and is balanced anew.
pub const PATIENCE: Patience = Patience {
    connect: Duration::from_secs(3),
    read: Duration::from_secs(5),
};

/// IP header extras on every packet the client sends: real stacks send
/// these (timestamps, router alert, jumbo), and they move the transport
/// header, so the datapath's general parser must count them right.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IpExtras {
    /// Plain headers.
    #[default]
    None,
    /// IPv4 options (four NOPs: IHL 6 instead of 5).
    Ipv4Options,
    /// An IPv6 hop-by-hop extension header (PadN, 8 bytes).
    Ipv6HopByHop,
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
            extras: IpExtras::None,
            patience: PATIENCE,
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
                    match one(target, &request(spec.path, w, i, spec.pad), spec) {
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
fn one(target: SocketAddr, req: &str, spec: Spec) -> Result<(u64, u64)> {
    let mut s = match spec.extras {
        IpExtras::None => TcpStream::connect_timeout(&target, spec.patience.connect)
            .with_context(|| format!("connecting to {target}"))?,
        extras => connect_with(target, extras)?,
    };
    s.set_read_timeout(Some(spec.patience.read))?;
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

/// Connects a TCP socket whose packets carry `extras` (set before connect,
/// so the SYN carries them too).
fn connect_with(target: SocketAddr, extras: IpExtras) -> Result<TcpStream> {
    use std::os::fd::FromRawFd as _;
    let (family, level, name, value): (i32, i32, i32, &[u8]) = match extras {
        IpExtras::Ipv4Options => (
            libc::AF_INET,
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            &[1, 1, 1, 1],
        ),
        // Next header (the kernel fills it), length 0 (8 bytes), PadN of 4.
        IpExtras::Ipv6HopByHop => (
            libc::AF_INET6,
            libc::IPPROTO_IPV6,
            libc::IPV6_HOPOPTS,
            &[0, 0, 1, 4, 0, 0, 0, 0],
        ),
        IpExtras::None => unreachable!("plain connects use TcpStream::connect_timeout"),
    };
    ensure!(
        (family == libc::AF_INET) == target.is_ipv4(),
        "{extras:?} does not fit {target}"
    );
    // SAFETY: plain socket(2); the fd is owned by the TcpStream below.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: we own fd; from here the TcpStream closes it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    // SAFETY: value outlives the call; its length is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    ensure!(
        rc == 0,
        "setsockopt {extras:?}: {}",
        std::io::Error::last_os_error()
    );
    let rc = match target {
        SocketAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: a valid sockaddr_in of the size passed.
            unsafe {
                libc::connect(
                    fd,
                    (&raw const sa).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: a valid sockaddr_in6 of the size passed.
            unsafe {
                libc::connect(
                    fd,
                    (&raw const sa).cast(),
                    size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    ensure!(
        rc == 0,
        "connecting to {target} with {extras:?}: {}",
        std::io::Error::last_os_error()
    );
    Ok(stream)
}

/// One HTTP/1.1 keep-alive connection that sends requests on demand and
/// reads each response whole, tallying the payload bytes both ways.
pub struct KeepAlive {
    stream: TcpStream,
    /// Request bytes written so far.
    pub bytes_sent: u64,
    /// Response bytes read so far.
    pub bytes_received: u64,
    /// Requests answered so far.
    pub requests: u64,
}

impl KeepAlive {
    /// Connects (from the calling thread's namespace).
    pub fn connect(target: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(3))
            .with_context(|| format!("connecting to {target}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Self {
            stream,
            bytes_sent: 0,
            bytes_received: 0,
            requests: 0,
        })
    }

    /// Sends one request and reads its response (headers, then exactly
    /// `Content-Length` body bytes).
    pub fn request(&mut self) -> Result<()> {
        let req = format!(
            "GET / HTTP/1.1\r\nHost: lab\r\nUser-Agent: evenflow-tests/{}\r\n\r\n",
            self.requests
        );
        self.stream.write_all(req.as_bytes())?;
        self.bytes_sent += req.len() as u64;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            ensure!(
                self.stream.read(&mut byte)? == 1,
                "the server closed mid-response"
            );
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let len: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .context("a response without Content-Length")?;
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        self.bytes_received += (head.len() + len) as u64;
        self.requests += 1;
        Ok(())
    }
}

/// Keep-alive connections opened from a namespace, used from any thread.
pub struct KeepAlives(pub Vec<KeepAlive>);

impl KeepAlives {
    /// Opens `n` connections to `target` from namespace `ns`.
    pub fn open(ns: &str, target: SocketAddr, n: usize) -> Result<Self> {
        let conns = crate::netns::run_in(ns, move || {
            (0..n)
                .map(|_| KeepAlive::connect(target))
                .collect::<Result<Vec<_>>>()
        })??;
        Ok(Self(conns))
    }

    /// `n` requests on each connection, each answered whole.
    pub fn talk(&mut self, n: usize) -> Result<()> {
        for c in &mut self.0 {
            for _ in 0..n {
                c.request()?;
            }
        }
        Ok(())
    }

    /// Request and response bytes all the connections carried so far.
    pub fn carried(&self) -> (u64, u64) {
        self.0
            .iter()
            .fold((0, 0), |a, c| (a.0 + c.bytes_sent, a.1 + c.bytes_received))
    }
}

/// Client load through the VIP until dropped: about 50 connections a
/// second to a lab whose backends all answer (or split over several
/// balancers).
pub struct Steady {
    stop: Arc<AtomicBool>,
    /// One a target, each counting the connections served and failed.
    threads: Vec<JoinHandle<(u64, u64)>>,
}

impl Steady {
    /// One thread of rounds through the VIP.
    pub fn start(lab: &Lab) -> Steady {
        Steady::split(lab, &[(crate::lab::vip(false), 1)])
    }

    /// Rounds of 10 connections to each target, `rounds` at a time, from a
    /// thread of its own: a balancer whose connections hang holds up its
    /// own clients only.
    pub fn split(lab: &Lab, targets: &[(SocketAddr, usize)]) -> Steady {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (targets.iter())
            .map(|&(target, rounds)| {
                let ns = lab.client.ns.clone();
                let flag = stop.clone();
                std::thread::spawn(move || {
                    let (mut sent, mut failed) = (0, 0);
                    while !flag.load(Ordering::Relaxed) {
                        for _ in 0..rounds {
                            let load = http_load(&ns, target, 10, 2).expect("load");
                            sent += load.connections;
                            failed += load.failures;
                        }
                        std::thread::sleep(Duration::from_millis(150));
                    }
                    (sent, failed)
                })
            })
            .collect();
        Steady { stop, threads }
    }

    /// Stops the load; the connections it made, every one served.
    pub fn finish(self) -> u64 {
        let (sent, failed) = self.finish_failing();
        assert_eq!(failed, 0, "every connection is served");
        sent
    }

    /// Stops the load; the connections served and those that failed.
    pub fn finish_failing(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        (self.threads.drain(..)).fold((0, 0), |(sent, failed), t| {
            let (s, f) = t.join().expect("load thread");
            (sent + s, failed + f)
        })
    }
}

impl Drop for Steady {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

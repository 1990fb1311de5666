//! The test's own HTTP client: it knows exactly how many connections it
//! made and how many bytes each carried.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result};

/// What a load run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub connections: u64,
    pub failures: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// Makes `n` connections to `target` from inside namespace `ns`, `workers`
/// at a time, each carrying one `GET` with `Connection: close`, reading the
/// response to EOF.
pub fn http_load(ns: &str, target: SocketAddr, n: u64, workers: u64) -> Result<Load> {
    let mut handles = Vec::new();
    for w in 0..workers {
        let count = n / workers + u64::from(w < n % workers);
        let ns = ns.to_owned();
        handles.push(std::thread::spawn(move || {
            crate::netns::run_in(&ns, move || {
                let mut load = Load::default();
                for i in 0..count {
                    match one(target, w, i) {
                        Ok((s, r)) => {
                            load.connections += 1;
                            load.bytes_sent += s;
                            load.bytes_received += r;
                        }
                        Err(_) => load.failures += 1,
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
        total.connections += l.connections;
        total.failures += l.failures;
        total.bytes_sent += l.bytes_sent;
        total.bytes_received += l.bytes_received;
    }
    Ok(total)
}

fn one(target: SocketAddr, worker: u64, i: u64) -> Result<(u64, u64)> {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).context("connect")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let req = format!(
        "GET /w{worker}/r{i} HTTP/1.1\r\nHost: lab\r\nUser-Agent: evenflow-test\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::with_capacity(4096);
    s.read_to_end(&mut buf)?;
    anyhow::ensure!(buf.starts_with(b"HTTP/1.1 200"), "unexpected response");
    Ok((req.len() as u64, buf.len() as u64))
}

//! HAProxy as the load balancer, and its own per-server counters (the stats
//! socket's `show stat`) as ground truth.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::lab::{BACKEND_PORT, Lab};

/// Starts HAProxy on the lab's lb: HTTP mode, round robin over every
/// backend, one server connection per client connection (`option
/// httpclose`, `http-reuse never`) and no health checks (they would add
/// connections no client made). Returns the stats socket path.
pub fn start(lab: &mut Lab, ipv6_backends: bool) -> Result<PathBuf> {
    let dir = lab.dir.join("haproxy");
    std::fs::create_dir_all(&dir)?;
    let sock = dir.join("stats.sock");
    let mut servers = String::new();
    for b in &lab.backends {
        let addr = if ipv6_backends {
            format!("[{}]", b.addr6)
        } else {
            b.addr4.to_string()
        };
        servers.push_str(&format!("  server {} {addr}:{BACKEND_PORT}\n", b.role));
    }
    let cfg = format!(
        "global\n  maxconn 8192\n  stats socket {sock} mode 600 level admin\n\
         defaults\n  mode http\n  timeout connect 3s\n  timeout client 20s\n  timeout server 20s\n\
           option httpclose\n  http-reuse never\n\
         frontend fe\n  bind :::80 v4v6\n  default_backend be\n\
         backend be\n  balance roundrobin\n{servers}",
        sock = sock.display()
    );
    let cfg_path = dir.join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg)?;
    let lb = lab.lb.clone();
    let cfg_s = cfg_path.display().to_string();
    lab.spawn(&lb, "haproxy", "haproxy", &["-db", "-f", &cfg_s])?;
    Ok(sock)
}

/// One server line of `show stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStat {
    /// Total sessions (connections, with httpclose) sent to the server.
    pub stot: u64,
    /// Bytes HAProxy sent to the server (requests).
    pub bin: u64,
    /// Bytes HAProxy received from the server (responses).
    pub bout: u64,
}

/// `show stat` per server of backend `be`, keyed by server name.
pub fn stats(sock: &Path) -> Result<HashMap<String, ServerStat>> {
    let mut s =
        UnixStream::connect(sock).with_context(|| format!("connecting {}", sock.display()))?;
    s.write_all(b"show stat\n")?;
    let mut csv = String::new();
    s.read_to_string(&mut csv)?;
    parse_stat(&csv)
}

/// Parses `show stat` CSV by its header's column names.
pub fn parse_stat(csv: &str) -> Result<HashMap<String, ServerStat>> {
    let mut lines = csv.lines();
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .context("show stat output has no header")?;
    let cols: Vec<&str> = header.split(',').collect();
    let idx = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .with_context(|| format!("no {name} column"))
    };
    let (px, sv, stot, bin, bout) = (
        idx("pxname")?,
        idx("svname")?,
        idx("stot")?,
        idx("bin")?,
        idx("bout")?,
    );
    let mut out = HashMap::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        if f.len() <= bout || f[px] != "be" || f[sv] == "BACKEND" {
            continue;
        }
        let n = |i: usize| f[i].parse::<u64>().unwrap_or(0);
        out.insert(
            f[sv].to_owned(),
            ServerStat {
                stot: n(stot),
                bin: n(bin),
                bout: n(bout),
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_lines() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,\n\
                   fe,FRONTEND,,,0,1,8192,10,1000,20000,\n\
                   be,b1,0,0,0,1,,5,500,10000,\n\
                   be,BACKEND,0,0,0,1,,10,1000,20000,\n";
        let s = parse_stat(csv).expect("parses");
        assert_eq!(s.len(), 1);
        assert_eq!(
            s["b1"],
            ServerStat {
                stot: 5,
                bin: 500,
                bout: 10000
            }
        );
    }
}

//! A backend: nginx serving a fixed body on port 8080 (IPv4 and IPv6), its
//! access log the ground truth for what the backend received and sent.
//!
//! Each nginx has its own prefix, configuration, pid file and logs in the
//! lab's temporary directory, so several run side by side with no shared
//! state, and runs in the foreground (`daemon off`) so the lab owns it.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::lab::{BACKEND_PORT, Lab, Node};

/// Size of the response body at every path but [`BIG_PATH`].
pub const BODY_LEN: usize = 2000;
/// A path whose response is [`BIG_BODY_LEN`] bytes: large enough that the
/// kernel moves it in TSO/GSO super-packets of many segments each.
pub const BIG_PATH: &str = "/big";
/// Size of the body at [`BIG_PATH`].
pub const BIG_BODY_LEN: usize = 1 << 20;

/// The access log format: `$connection $request_length $bytes_sent $status`.
/// `$connection` is nginx's serial number of the connection (so distinct
/// values count connections), `$request_length` the request as received
/// (request line, headers, body) and `$bytes_sent` the response as sent
/// (status line, headers, body). Both are bytes exactly as they crossed
/// the socket, i.e. TCP payload bytes, which is what the agent counts.
pub const LOG_FORMAT: &str = "$connection $request_length $bytes_sent $status";

/// Starts nginx on `node` (in its namespace and cgroup, so the node's agent
/// sees the listener's sockets), waits until it listens, and returns the
/// path of its access log.
pub fn start(lab: &mut Lab, node: &Node) -> Result<PathBuf> {
    start_with(lab, node, "")
}

/// [`start`] with extra `listen` parameters on both listeners, e.g.
/// `deferred` (TCP_DEFER_ACCEPT: the connection is accepted only once the
/// request's first bytes arrive).
pub fn start_with(lab: &mut Lab, node: &Node, listen_opts: &str) -> Result<PathBuf> {
    launch(lab, node, listen_opts, "")
}

/// [`start`] for keep-alive clients: a connection stays open for an hour
/// and any number of requests (nginx's defaults close it after 75 s idle
/// or 1,000 requests, which would rebalance it).
pub fn start_keepalive(lab: &mut Lab, node: &Node) -> Result<PathBuf> {
    launch(
        lab,
        node,
        "",
        "keepalive_timeout 3600s; keepalive_requests 100000000;",
    )
}

fn launch(lab: &mut Lab, node: &Node, listen_opts: &str, http: &str) -> Result<PathBuf> {
    let dir = lab.dir.join(format!("nginx-{}", node.role));
    std::fs::create_dir_all(dir.join("tmp"))?;
    let body = "x".repeat(BODY_LEN);
    std::fs::write(dir.join("big"), vec![b'y'; BIG_BODY_LEN])?;
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  log_format ef '{LOG_FORMAT}';\n  access_log {d}/access.log ef;\n  {http}\n\
           client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n\
           uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
           server {{\n    listen {BACKEND_PORT} {listen_opts};\n    listen [::]:{BACKEND_PORT} ipv6only=on {listen_opts};\n\
             location / {{ default_type text/plain; return 200 '{body}'; }}\n\
             location = {BIG_PATH} {{ default_type application/octet-stream; alias {d}/big; }}\n  }}\n}}\n",
        d = dir.display()
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let conf_s = conf_path.display().to_string();
    let prefix = dir.display().to_string();
    lab.spawn(
        node,
        &format!("nginx-{}", node.role),
        "nginx",
        &["-p", &prefix, "-c", &conf_s],
    )?;
    // One socket for IPv4, one for IPv6.
    lab.wait_listening(node, BACKEND_PORT, 2)?;
    Ok(dir.join("access.log"))
}

/// What one backend's access log says it served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Log lines: requests answered.
    pub requests: u64,
    /// Distinct `$connection` values: connections that carried a request.
    pub connections: u64,
    /// Sum of `$request_length`: payload bytes the backend received.
    pub request_bytes: u64,
    /// Sum of `$bytes_sent`: payload bytes the backend sent.
    pub response_bytes: u64,
}

/// Reads an access log written in [`LOG_FORMAT`].
pub fn read_log(path: &std::path::Path) -> Result<Served> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_log(&text)
}

/// Parses access log lines; connection ids are counted once each.
pub fn parse_log(text: &str) -> Result<Served> {
    let mut s = Served::default();
    let mut conns = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<u64> = line
            .split_whitespace()
            .map(|x| x.parse::<u64>())
            .collect::<std::result::Result<_, _>>()
            .with_context(|| format!("bad access log line `{line}`"))?;
        anyhow::ensure!(f.len() == 4, "bad access log line `{line}`");
        s.requests += 1;
        conns.insert(f[0]);
        s.request_bytes += f[1];
        s.response_bytes += f[2];
    }
    s.connections = conns.len() as u64;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_and_bytes() {
        let s = parse_log("1 78 2150 200\n2 80 2150 200\n2 80 2150 200\n").expect("parses");
        assert_eq!(
            s,
            Served {
                requests: 3,
                connections: 2,
                request_bytes: 238,
                response_bytes: 6450
            }
        );
        assert!(parse_log("1 x 2 200").is_err());
    }
}

//! HAProxy as the load balancer, and its own counters (the stats socket's
//! `show stat`) as ground truth for what the lb sent to each backend.
//!
//! What `show stat` counts, measured here with HAProxy 2.6 in HTTP mode and
//! checked against nginx's logs of the same connections:
//! * a server line's `stot` is the sessions sent to that server; with
//!   `option httpclose` and `http-reuse never` that is exactly one server
//!   connection per client connection;
//! * a server line's `bin` is the request direction (bytes towards the
//!   server) and `bout` the response direction (bytes from the server);
//! * but both count HTTP messages in HAProxy's internal form (HTX), without
//!   the separators and line ends of HTTP/1: here 12 bytes less than the
//!   wire per request and 20 per response, a fixed shortfall per message;
//! * the `BACKEND` line's `h1_bytes_out` / `h1_bytes_in` (the HTTP/1 mux's
//!   counters) are the raw bytes written to / read from the servers'
//!   sockets, summed over the pool: TCP payload, exactly what the agent
//!   counts. (On the `FRONTEND` line the same columns are the client side.)

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::lab::{BACKEND_PORT, Lab, Node, VIP_PORT};

/// The backend (pool) name in the configuration.
pub const BACKEND: &str = "be";

/// Starts HAProxy on the lab's lb (in its namespace and cgroup, so the lb's
/// agent sees its sockets): HTTP mode, round robin over every backend,
/// one server connection per client connection (`option httpclose`,
/// `http-reuse never`) and no health checks (they would add connections no
/// client made). Waits until it listens; returns the stats socket's path.
pub fn start(lab: &mut Lab, ipv6_backends: bool) -> Result<PathBuf> {
    launch(lab, HTTP, ipv6_backends, BACKEND_PORT, "")
}

/// [`start`] on another `node` of the lab (a second load balancer), round
/// robin over `servers`: its files and log are named after the node's
/// role. Returns its stats socket's path.
pub fn start_on(lab: &mut Lab, node: &Node, servers: &[Node]) -> Result<PathBuf> {
    let on = On {
        node: node.clone(),
        servers: servers.to_vec(),
        name: format!("haproxy-{}", node.role),
    };
    launch_on(lab, &on, HTTP, false, BACKEND_PORT, "")
}

/// Where an HAProxy runs: its node, its servers, the name of its files.
struct On {
    node: Node,
    servers: Vec<Node>,
    name: String,
}

/// [`start`] with HTTP health checks on every server (`check` with
/// `option httpchk`: a `GET /` every 2 s, drained servers included). Not
/// plain `check`: its connect check sends the RST before the handshake's
/// last ACK, so the server never holds a connection and no agent counts
/// one.
pub fn start_checked(lab: &mut Lab) -> Result<PathBuf> {
    let defaults = format!("{HTTP}  option httpchk GET /\n");
    launch(lab, &defaults, false, BACKEND_PORT, " check")
}

/// [`start`] with a failed connect given up after a second and retried
/// once on another server (`timeout connect 1s`, `retries 1`, `option
/// redispatch 1`), as production configurations have it: a server that
/// stops answering costs its clients a second, not their request, so no
/// client sees it fail. A request whose server died with it unanswered
/// (an nginx SIGKILLed mid-request) is retried too (`retry-on
/// conn-failure empty-response`): the default retries failed connects
/// only, and such a request reached its client as a 502. Returns the stats
/// socket's path.
pub fn start_redispatching(lab: &mut Lab) -> Result<PathBuf> {
    let defaults = HTTP.replace("timeout connect 3s", "timeout connect 1s")
        + "  retries 1\n  option redispatch 1\n  retry-on conn-failure empty-response\n";
    launch(lab, &defaults, false, BACKEND_PORT, "")
}

/// The `defaults` of [`start`].
const HTTP: &str = "  mode http\n  timeout connect 3s\n  timeout client 20s\n  timeout server 20s\n\
                    \x20 option httpclose\n  http-reuse never\n";

/// HAProxy in TCP mode: it balances connections, not requests, as gRPC
/// and keep-alive clients meet it in front of many services. Round robin
/// over every backend's `backend_port`, idle timeouts of an hour (a
/// connection lives as long as its client keeps it), a failed connect
/// retried on another server (`option redispatch 1`), no health checks.
/// Returns the stats socket's path.
pub fn start_tcp(lab: &mut Lab, backend_port: u16) -> Result<PathBuf> {
    launch(
        lab,
        "  mode tcp\n  timeout connect 500ms\n  timeout client 1h\n  timeout server 1h\n\
         \x20 retries 2\n  option redispatch 1\n",
        false,
        backend_port,
        "",
    )
}

/// Writes the configuration (global, these `defaults`, the VIP frontend,
/// round robin over every backend, `server_opts` after each server's
/// address) and starts HAProxy.
fn launch(
    lab: &mut Lab,
    defaults: &str,
    ipv6_backends: bool,
    port: u16,
    server_opts: &str,
) -> Result<PathBuf> {
    let on = On {
        node: lab.lb.clone(),
        servers: lab.backends.clone(),
        name: "haproxy".into(),
    };
    launch_on(lab, &on, defaults, ipv6_backends, port, server_opts)
}

/// [`launch`] where `on` says.
fn launch_on(
    lab: &mut Lab,
    on: &On,
    defaults: &str,
    ipv6_backends: bool,
    port: u16,
    server_opts: &str,
) -> Result<PathBuf> {
    let dir = lab.dir.join(&on.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let sock = dir.join("stats.sock");
    let mut servers = String::new();
    for b in &on.servers {
        let addr = if ipv6_backends {
            format!("[{}]", b.addr6)
        } else {
            b.addr4.to_string()
        };
        servers.push_str(&format!("  server {} {addr}:{port}{server_opts}\n", b.role));
    }
    let cfg = format!(
        "global\n  maxconn 8192\n  stats socket {sock} mode 600 level admin\n\
         defaults\n{defaults}\
         frontend fe\n  bind :::{VIP_PORT} v4v6\n  default_backend {BACKEND}\n\
         backend {BACKEND}\n  balance roundrobin\n{servers}",
        sock = sock.display()
    );
    let cfg_path = dir.join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).with_context(|| format!("writing {}", cfg_path.display()))?;
    let cfg_s = cfg_path.display().to_string();
    // -db: foreground, so the lab owns the process.
    lab.spawn(&on.node, &on.name, "haproxy", &["-db", "-f", &cfg_s])?;
    lab.wait_listening(&on.node, VIP_PORT, 1)?;
    crate::wait_for(std::time::Duration::from_secs(5), || {
        sock.exists().then_some(())
    })
    .with_context(|| format!("HAProxy's stats socket {} did not appear", sock.display()))?;
    Ok(sock)
}

/// One server line of `show stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStat {
    /// Sessions sent to the server (= connections, with httpclose).
    pub stot: u64,
    /// Request bytes towards the server, in HTX form (see the module docs).
    pub bin: u64,
    /// Response bytes from the server, in HTX form.
    pub bout: u64,
    /// Sessions open with the server now (= connections, in TCP mode).
    pub scur: u64,
}

/// `show stat` for the pool [`BACKEND`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Per server, by server name (the backend node's role: "b1"…).
    pub servers: HashMap<String, ServerStat>,
    /// The pool's `BACKEND` line.
    pub pool: ServerStat,
    /// The pool's raw bytes written to servers (`h1_bytes_out`).
    pub pool_wire_to_servers: Option<u64>,
    /// The pool's raw bytes read from servers (`h1_bytes_in`).
    pub pool_wire_from_servers: Option<u64>,
}

/// Reads `show stat` over the stats socket.
pub fn stats(sock: &Path) -> Result<Stats> {
    let mut s =
        UnixStream::connect(sock).with_context(|| format!("connecting {}", sock.display()))?;
    s.write_all(b"show stat\n")
        .context("writing to the stats socket")?;
    let mut csv = String::new();
    s.read_to_string(&mut csv)
        .context("reading from the stats socket")?;
    parse_stat(&csv).with_context(|| format!("parsing `show stat`:\n{csv}"))
}

/// Parses `show stat` CSV by its header's column names (their order
/// changes between HAProxy versions).
pub fn parse_stat(csv: &str) -> Result<Stats> {
    let mut lines = csv.lines();
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .context("show stat output has no `# ` header")?;
    let cols: Vec<&str> = header.split(',').collect();
    let idx = |name: &str| cols.iter().position(|c| *c == name);
    let need = |name: &str| idx(name).with_context(|| format!("no {name} column"));
    let (px, sv, stot, bin, bout) = (
        need("pxname")?,
        need("svname")?,
        need("stot")?,
        need("bin")?,
        need("bout")?,
    );
    let (h1_in, h1_out, scur) = (idx("h1_bytes_in"), idx("h1_bytes_out"), idx("scur"));
    let mut out = Stats::default();
    let mut saw_pool = false;
    for l in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = l.split(',').collect();
        if f.get(px) != Some(&BACKEND) {
            continue;
        }
        let num = |i: usize| -> Result<u64> {
            let v = f.get(i).copied().unwrap_or("");
            v.parse()
                .with_context(|| format!("`{v}` in column {} of `{l}`", cols[i]))
        };
        let opt = |i: Option<usize>| i.and_then(|i| f.get(i)).and_then(|v| v.parse().ok());
        let stat = ServerStat {
            stot: num(stot)?,
            bin: num(bin)?,
            bout: num(bout)?,
            scur: opt(scur).unwrap_or(0),
        };
        match f.get(sv).copied() {
            Some("BACKEND") => {
                saw_pool = true;
                out.pool = stat;
                out.pool_wire_from_servers = opt(h1_in);
                out.pool_wire_to_servers = opt(h1_out);
            }
            Some(name) => {
                out.servers.insert(name.to_owned(), stat);
            }
            None => bail!("no svname in `{l}`"),
        }
    }
    if !saw_pool {
        bail!("no `{BACKEND},BACKEND` line");
    }
    Ok(out)
}

/// Sends one command to HAProxy's stats socket (admin level), such as
/// `disable server be/b3`; an answer other than silence is an error.
pub fn command(sock: &Path, cmd: &str) -> Result<()> {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .with_context(|| format!("connecting {}", sock.display()))?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if !out.trim().is_empty() {
        bail!("HAProxy answered `{}` to `{cmd}`", out.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Abridged from HAProxy 2.6's real output in the lab.
    const CSV: &str = "\
# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,h1_bytes_in,h1_bytes_out,
fe,FRONTEND,,,0,3,8192,40,2740,85000,0,3220,85800,
be,b1,0,0,0,1,,10,685,21250,,,,
be,b2,0,0,3,4,,30,2055,63750,,,,
be,BACKEND,0,0,0,1,,40,2740,85000,,85800,3220,
";

    #[test]
    fn parses_server_and_pool_lines() {
        let s = parse_stat(CSV).expect("parses");
        assert_eq!(s.servers.len(), 2);
        assert_eq!(
            s.servers["b1"],
            ServerStat {
                stot: 10,
                bin: 685,
                bout: 21250,
                scur: 0
            }
        );
        assert_eq!(s.servers["b2"].scur, 3);
        assert_eq!(s.pool.stot, 40);
        assert_eq!(s.pool_wire_from_servers, Some(85800));
        assert_eq!(s.pool_wire_to_servers, Some(3220));
    }

    #[test]
    fn rejects_output_without_header_or_pool() {
        assert!(parse_stat("be,b1,0\n").is_err());
        assert!(parse_stat("# pxname,svname,stot,bin,bout\nbe,b1,1,2,3\n").is_err());
        assert!(parse_stat("# pxname,svname,stot,bin,bout\nbe,b1,x,2,3\n").is_err());
    }
}

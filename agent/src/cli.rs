//! Command-line flags. Every flag can also be set through an `EVENFLOW_`
//! environment variable, which is how the DaemonSet configures the agent.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use clap::{Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  # Count everything on this node's interfaces, label the listener on 8080:
  evenflow-agent --service web=8080

  # Watch it from another terminal:
  grpcurl -plaintext 127.0.0.1:50051 evenflow.v1.Node/GetSnapshot
  curl -s 127.0.0.1:9464/metrics | grep evenflow_endpoint

  # One agent per network namespace (a lab node), each with its own cgroup:
  evenflow-agent --netns /run/netns/backend1 --node-name backend1 \\
      --cgroup /sys/fs/cgroup/unified/lab/backend1 --grpc-addr 127.0.0.1:50051";

/// Commands other than counting (the default).
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Detach every program and remove every pin of this node (links, maps,
    /// counters) under `<bpffs>/evenflow/<node-name>/`. Stopping the agent
    /// leaves its programs attached and counting; this is how they go
    /// (a DaemonSet's removal runs it in a preStop hook or a cleanup Job).
    Uninstall,
    /// Time the journal's drain an event on a node of `--cpus` CPU numbers
    /// (`cargo xtask bench-datapath --only drain` runs it); prints the
    /// nanoseconds. Touches no running agent's maps.
    #[command(hide = true)]
    BenchDrain {
        /// CPU numbers of the node to measure, e.g. 2,64,1024.
        #[arg(long, value_delimiter = ',', required = true)]
        cpus: Vec<u32>,
        /// Events to drain in each measurement.
        #[arg(long, default_value_t = 65_536)]
        events: u32,
    },
}

/// evenflow's node agent: counts connections and bytes per backend endpoint
/// in the kernel and serves them over gRPC and Prometheus.
#[derive(Parser, Debug, Clone)]
#[command(name = "evenflow-agent", version, after_help = EXAMPLES)]
pub struct Args {
    /// What to do instead of counting.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Interface to count packets on (repeatable; Ethernet only: the TC
    /// programs parse Ethernet frames). Default: every Ethernet interface
    /// that is up, followed as they come and go (tunnels, WireGuard and
    /// loopback are not counted by TC; their sockets still are, by
    /// sock_ops).
    #[arg(long = "iface", env = "EVENFLOW_IFACE", value_delimiter = ',')]
    pub ifaces: Vec<String>,

    /// cgroup v2 directory whose sockets are counted. Default: the root of
    /// the mounted cgroup v2 hierarchy (every socket on the node).
    #[arg(long, env = "EVENFLOW_CGROUP")]
    pub cgroup: Option<PathBuf>,

    /// Label local listeners and what they serve: NAME=PORT, e.g.
    /// web=8080, or NAME=ADDR:PORT where two services share a port on
    /// different addresses (pods of both on one node), e.g.
    /// web=10.244.0.12:8080,api=10.244.0.13:8080 (repeatable).
    #[arg(long = "service", env = "EVENFLOW_SERVICE", value_delimiter = ',')]
    pub services: Vec<ServiceLabel>,

    /// This node's name; also names the pinned map directory
    /// `<bpffs>/evenflow/<node-name>/`. Default: the host name.
    #[arg(long, global = true, env = "EVENFLOW_NODE_NAME", value_parser = parse_node_name)]
    pub node_name: Option<String>,

    /// How often the counters are read and rates computed (e.g. 1s, 500ms).
    #[arg(long, env = "EVENFLOW_INTERVAL", default_value = "1s", value_parser = evenflow_daemon::parse_interval)]
    pub interval: Duration,

    /// Address of the gRPC node API (evenflow.v1.Node, reflection, health).
    #[arg(long, env = "EVENFLOW_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the Prometheus endpoint (`/metrics`).
    #[arg(long, env = "EVENFLOW_METRICS_ADDR", default_value = "0.0.0.0:9464")]
    pub metrics_addr: SocketAddr,

    /// Stream reports to this collector (e.g. http://collector:50052).
    /// Without it the agent only serves its own node view.
    #[arg(long, env = "EVENFLOW_COLLECTOR", value_parser = evenflow_daemon::parse_collector_url)]
    pub collector: Option<String>,

    /// Run a collector inside this agent, listening on ADDR (e.g.
    /// 127.0.0.1:50052), and stream to it: one process is enough to try
    /// evenflow on one host. Its /metrics is on the same IP, port 9465; it
    /// runs with the collector's defaults (none of this agent's settings).
    /// Not in the node image's build.
    #[arg(long, env = "EVENFLOW_EMBEDDED_COLLECTOR", value_name = "ADDR", value_parser = parse_embedded_collector)]
    pub embedded_collector: Option<SocketAddr>,

    /// PEM CA bundle that signed the collector's certificate. With an
    /// https:// --collector URL, the agent verifies the collector with it.
    #[arg(long, env = "EVENFLOW_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate the agent presents to the collector (mutual
    /// TLS); needs --tls-key.
    #[arg(long, env = "EVENFLOW_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "EVENFLOW_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Print a table of endpoints to stdout every interval.
    #[arg(long, env = "EVENFLOW_PRINT")]
    pub print: bool,

    /// Enter this network namespace (a path such as /run/netns/NAME) before
    /// anything else. Unlike `ip netns exec`, this keeps the host's /sys
    /// mounts (bpffs, cgroup v2) visible.
    #[arg(long, env = "EVENFLOW_NETNS")]
    pub netns: Option<PathBuf>,

    /// Where bpffs is mounted.
    #[arg(
        global = true,
        long,
        env = "EVENFLOW_BPFFS",
        default_value = "/sys/fs/bpf"
    )]
    pub bpffs: PathBuf,

    /// Forwarded connections the datapath can track at once (its flow map
    /// holds two entries each). Connections beyond it are not counted and
    /// `flow_insert_failed` says how many. Takes effect when the pinned maps
    /// are created (first start, new epoch); snapshots report the capacity
    /// in force.
    #[arg(long, env = "EVENFLOW_MAX_FLOWS", default_value_t = agent_common::MAX_FLOWS / 2, value_parser = parse_max_flows)]
    pub max_flows: u32,

    /// Endpoints (address, port, direction) the endpoint map holds at once,
    /// on every CPU (48 bytes each). When it is three-quarters full the
    /// agent retires endpoints idle for `--retire-idle-after` (see there);
    /// past full, new endpoints are not counted and
    /// `endpoint_insert_failed` says how many. Takes effect when the pinned
    /// maps are created.
    #[arg(long, env = "EVENFLOW_MAX_ENDPOINTS", default_value_t = agent_common::MAX_ENDPOINTS, value_parser = parse_max_endpoints)]
    pub max_endpoints: u32,

    /// How long an endpoint must have carried nothing, with no connection
    /// open, before the agent may retire it from a filling endpoint map
    /// (pod addresses a rollout replaced, clients long gone). A retired
    /// endpoint leaves the reports, so the collector forgets it; if it
    /// comes back, it is counted from zero as a new one. Endpoints of a
    /// listening socket are never retired. Until the map is three-quarters
    /// full nothing is retired. One with failed attempts only (not one
    /// connection or byte: a port scan) may retire after 10 s.
    #[arg(long, env = "EVENFLOW_RETIRE_IDLE_AFTER", default_value = "10m", value_parser = parse_retire_idle_after)]
    pub retire_idle_after: Duration,

    /// Local sockets whose state can sit in slots found by the socket's
    /// address (a power of two; 64 bytes of kernel memory each). A socket
    /// that finds its slots taken gets socket storage instead: counted the
    /// same, at several times the cost per connection. Takes effect when
    /// the pinned maps are created.
    #[arg(long, env = "EVENFLOW_SOCK_SLOTS", default_value_t = agent_common::DEFAULT_SOCK_SLOTS, value_parser = parse_sock_slots)]
    pub sock_slots: u32,

    /// How the bytes of open connections reach every interval's report.
    /// `slots`: every socket takes a slot at its handshake, sampled
    /// wherever it lives, with no capability beyond the DaemonSet's.
    /// `walk`: the agent walks every network namespace's TCP sockets each
    /// interval, and a socket has no state until that walk first meets it:
    /// sock_ops costs a third less a run, the walk about 2 ms of CPU per
    /// namespace per interval, so it suits nodes of few namespaces and many
    /// connections (a balancer, a proxy host). Needs CAP_SYS_ADMIN and
    /// Linux 6.12. Changing it starts a new epoch.
    #[arg(long, env = "EVENFLOW_SOCKET_SAMPLING", value_enum, default_value_t = SocketSampling::Slots)]
    pub socket_sampling: SocketSampling,

    /// Count every forwarded connection packet by packet, and recognise
    /// translated ones by where their SYN entered the node (TC ingress),
    /// instead of from conntrack's record (which spares entering packets
    /// any program and data packets a lookup). Needed on a node that
    /// translates without conntrack (IPVS with `vs.conntrack=0`, NAT in a
    /// TC program) or whose conntrack does not track TCP windows; and for
    /// comparing the two ways.
    #[arg(long, env = "EVENFLOW_FORWARDED_PER_PACKET")]
    pub forwarded_per_packet: bool,

    /// Read kernel memory (`skb->_nfct`, conntrack's records) through
    /// `bpf_probe_read_kernel` even where the kernel lets the programs load
    /// it directly (`bpf_rdonly_cast`, Linux 6.17): what older kernels do,
    /// for comparing the two ways and testing the older one.
    #[arg(long, env = "EVENFLOW_PROBE_READS")]
    pub probe_reads: bool,

    /// Level of the eBPF programs' own diagnostics (aya-log).
    #[arg(long, env = "EVENFLOW_EBPF_LOG", value_enum, default_value_t = EbpfLog::Off)]
    pub ebpf_log: EbpfLog,

    /// Log filter for the agent itself (tracing EnvFilter syntax).
    #[arg(long, env = "EVENFLOW_LOG", default_value = "info", value_parser = evenflow_daemon::log::parse_filter)]
    pub log: String,
}

/// `--socket-sampling`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum SocketSampling {
    /// A slot for every socket from its handshake.
    Slots,
    /// A walk over every namespace's sockets each interval.
    Walk,
}

/// Kernel-side log level.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum EbpfLog {
    /// No kernel-side logging: the log calls cost one load and a branch.
    Off,
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Informational messages.
    Info,
    /// Everything, including per-flow diagnostics.
    Debug,
}

impl EbpfLog {
    /// The value of aya-log's `AYA_LOG_LEVEL` global for this level.
    pub fn aya_level(self) -> u8 {
        match self {
            Self::Off => 0,
            Self::Error => 1,
            Self::Warn => 2,
            Self::Info => 3,
            Self::Debug => 4,
        }
    }
}

/// `--service NAME=PORT` or `NAME=ADDR:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceLabel {
    /// Service name.
    pub name: String,
    /// The one local address it labels; `None`: every address.
    pub addr: Option<IpAddr>,
    /// Local port whose listener belongs to the service.
    pub port: u16,
}

impl ServiceLabel {
    /// A label for `port` on every address.
    #[cfg(test)]
    pub fn port(name: &str, port: u16) -> Self {
        Self {
            name: name.to_owned(),
            addr: None,
            port,
        }
    }
}

/// The label of what is served on `addr`:`port`: the one naming that
/// address, else the one naming the port alone.
pub fn label_of(services: &[ServiceLabel], addr: IpAddr, port: u16) -> Option<&ServiceLabel> {
    let on_port = || services.iter().filter(move |s| s.port == port);
    (on_port().find(|s| s.addr == Some(addr))).or_else(|| on_port().find(|s| s.addr.is_none()))
}

/// Labels that contradict each other, refused at start: one port (or one
/// address and port) given two names would put one service's members
/// into the other's pool, and only the first label would ever be used.
pub fn check_services(services: &[ServiceLabel]) -> anyhow::Result<()> {
    for (i, a) in services.iter().enumerate() {
        let clash = services[..i]
            .iter()
            .find(|b| b.port == a.port && b.addr == a.addr && b.name != a.name);
        let Some(b) = clash else { continue };
        let (given, place) = match a.addr {
            Some(addr) => {
                let at = SocketAddr::new(addr, a.port).to_string();
                (at.clone(), at)
            }
            None => (a.port.to_string(), format!("port {}", a.port)),
        };
        anyhow::bail!(
            "--service {b}={given} and {a}={given} give {place} two names: where two services \
             share a port on one node, label each by its address (NAME=ADDR:PORT, e.g. \
             {b}=10.244.0.12:{port},{a}=10.244.0.13:{port}), or declare their pools in a pool file",
            b = b.name,
            a = a.name,
            port = a.port,
        );
    }
    Ok(())
}

impl FromStr for ServiceLabel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, port) = s.split_once('=').ok_or_else(|| {
            format!("`{s}` is not NAME=PORT or NAME=ADDR:PORT (for example web=8080)")
        })?;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "service name `{name}` must be non-empty and use only letters, digits, '-', '_' or '.'"
            ));
        }
        // ADDR:PORT ("10.0.0.5:8080", "[fd00::5]:8080"), or a port alone.
        let (addr, port) = match port.parse::<std::net::SocketAddr>() {
            Ok(sa) => (Some(sa.ip().to_canonical()), sa.port()),
            Err(_) if port.contains(':') => {
                return Err(format!(
                    "`{port}` in `{s}` is not ADDR:PORT (for example 10.0.0.5:8080 or [fd00::5]:8080)"
                ));
            }
            Err(_) => (None, port.parse().unwrap_or(0)),
        };
        if port == 0 {
            return Err(format!("`{s}` does not name a port between 1 and 65535"));
        }
        Ok(Self {
            name: name.to_owned(),
            addr,
            port,
        })
    }
}

fn parse_node_name(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 200
        || s.starts_with('.')
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "node name `{s}` must be 1-200 characters of letters, digits, '-', '_' or '.', \
             not starting with '.' (it names a directory under bpffs)"
        ));
    }
    Ok(s.to_owned())
}

/// The flags that only make sense together with `--collector`, checked
/// before anything is loaded.
pub fn check_collector(args: &Args) -> anyhow::Result<()> {
    check_tls(args)?;
    let limit = evenflow_proto::MAX_REPORT_ENDPOINTS;
    let reports = args.collector.is_some() || args.embedded_collector.is_some();
    if reports && args.max_endpoints as usize > limit {
        anyhow::bail!(
            "--max-endpoints {} is more than the {limit} endpoints a report to the collector may carry: lower it to {limit} or less",
            args.max_endpoints
        );
    }
    Ok(())
}

/// The TLS flags need an https:// `--collector`: the connection uses TLS
/// only for https, so with http:// they would be ignored and the reports
/// sent in plain text.
fn check_tls(args: &Args) -> anyhow::Result<()> {
    if args.tls_ca.is_none() && args.tls_cert.is_none() {
        return Ok(());
    }
    match &args.collector {
        Some(url) if url.starts_with("https://") => Ok(()),
        Some(url) => anyhow::bail!(
            "--tls-ca and --tls-cert need an https:// --collector, not {url}: with http:// the reports would go in plain text (write https://...)"
        ),
        None => anyhow::bail!(
            "--tls-ca and --tls-cert need an https:// --collector (the embedded collector takes none)"
        ),
    }
}

/// Fewest and most forwarded connections `--max-flows` accepts.
pub const MAX_FLOWS_RANGE: (u32, u32) = (16, 1 << 24);

fn parse_max_flows(s: &str) -> Result<u32, String> {
    let (lo, hi) = MAX_FLOWS_RANGE;
    s.parse::<u32>()
        .ok()
        .filter(|n| (lo..=hi).contains(n))
        .ok_or_else(|| {
            format!("--max-flows `{s}` must be a number of connections from {lo} to {hi}")
        })
}

/// Fewest and most endpoints `--max-endpoints` accepts.
pub const MAX_ENDPOINTS_RANGE: (u32, u32) = (16, 1 << 22);

fn parse_max_endpoints(s: &str) -> Result<u32, String> {
    let (lo, hi) = MAX_ENDPOINTS_RANGE;
    s.parse::<u32>()
        .ok()
        .filter(|n| (lo..=hi).contains(n))
        .ok_or_else(|| {
            format!("--max-endpoints `{s}` must be a number of endpoints from {lo} to {hi}")
        })
}

fn parse_retire_idle_after(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (try 10m or 1h)"))?;
    if d < Duration::from_secs(1) {
        return Err(format!(
            "--retire-idle-after {s} must be at least 1s: an endpoint idle for less is not idle"
        ));
    }
    Ok(d)
}

/// Most slots `--sock-slots` accepts.
pub const MAX_SOCK_SLOTS: u32 = 1 << 22;

fn parse_sock_slots(s: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .ok()
        .filter(|n| n.is_power_of_two() && *n <= MAX_SOCK_SLOTS)
        .ok_or_else(|| {
            format!("--sock-slots `{s}` must be a power of two from 1 to {MAX_SOCK_SLOTS}")
        })
}

/// `--embedded-collector ADDR`, refused by a build without the collector.
fn parse_embedded_collector(s: &str) -> Result<SocketAddr, String> {
    if !cfg!(feature = "embedded-collector") {
        return Err(crate::embedded::MISSING.to_owned());
    }
    s.parse()
        .map_err(|e| format!("`{s}` is not an address such as 127.0.0.1:50052: {e}"))
}

/// The node name to use: the flag, else the host name.
pub fn node_name(args: &Args) -> anyhow::Result<String> {
    if let Some(n) = &args.node_name {
        return Ok(n.clone());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| anyhow::anyhow!("reading the host name: {e}; pass --node-name"))?;
    parse_node_name(host.trim()).map_err(|e| anyhow::anyhow!("{e}; pass --node-name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_labels_parse_and_reject() {
        assert_eq!(
            "web=8080".parse::<ServiceLabel>(),
            Ok(ServiceLabel::port("web", 8080))
        );
        let at = |s: &str| s.parse::<ServiceLabel>().map(|l| (l.addr, l.port));
        assert_eq!(
            at("web=10.0.0.5:8080"),
            Ok((Some("10.0.0.5".parse().expect("addr")), 8080))
        );
        assert_eq!(
            at("web=[fd00::5]:8080"),
            Ok((Some("fd00::5".parse().expect("addr")), 8080))
        );
        assert_eq!(
            at("web=[::ffff:10.0.0.5]:8080"),
            Ok((Some("10.0.0.5".parse().expect("addr")), 8080)),
            "an IPv4-mapped address is the IPv4 address reports name"
        );
        assert!(
            "web"
                .parse::<ServiceLabel>()
                .unwrap_err()
                .contains("NAME=PORT")
        );
        assert!("web=0".parse::<ServiceLabel>().is_err());
        assert!("web=70000".parse::<ServiceLabel>().is_err());
        assert!("web=10.0.0.5:0".parse::<ServiceLabel>().is_err());
        let e = "web=10.0.0:8080".parse::<ServiceLabel>().unwrap_err();
        assert!(e.contains("not ADDR:PORT"), "{e}");
        assert!("w b=80".parse::<ServiceLabel>().is_err());
    }

    #[test]
    fn an_address_label_wins_over_a_port_label_on_its_address() {
        let labels: Vec<ServiceLabel> = ["web=8080", "api=10.0.0.6:8080", "db=5432"]
            .iter()
            .map(|s| s.parse().expect("a label"))
            .collect();
        let name = |a: &str, port| {
            label_of(&labels, a.parse().expect("addr"), port).map(|l| l.name.as_str())
        };
        assert_eq!(name("10.0.0.6", 8080), Some("api"));
        assert_eq!(name("10.0.0.5", 8080), Some("web"));
        assert_eq!(name("10.0.0.6", 5432), Some("db"));
        assert_eq!(name("10.0.0.6", 9090), None);
    }

    #[test]
    fn two_names_for_one_port_are_refused_with_the_fix() {
        let check = |s: &[&str]| {
            let labels: Vec<ServiceLabel> = s.iter().map(|s| s.parse().expect("a label")).collect();
            check_services(&labels).map_err(|e| e.to_string())
        };
        let e = check(&["a=8080", "b=8080"]).unwrap_err();
        assert!(
            e.contains("two names") && e.contains("NAME=ADDR:PORT"),
            "{e}"
        );
        let e = check(&["a=10.0.0.5:8080", "b=10.0.0.5:8080"]).unwrap_err();
        assert!(e.contains("10.0.0.5:8080"), "{e}");
        assert!(check(&["a=10.0.0.5:8080", "b=10.0.0.6:8080"]).is_ok());
        assert!(
            check(&["a=8080", "b=10.0.0.6:8080"]).is_ok(),
            "b's address, a's the rest"
        );
        assert!(
            check(&["a=8080", "a=8080", "b=9090"]).is_ok(),
            "a repeat is no clash"
        );
    }

    #[test]
    fn max_endpoints_and_retirement_are_bounded() {
        assert_eq!(parse_max_endpoints("64"), Ok(64));
        for bad in ["0", "15", "99999999", "many"] {
            let err = parse_max_endpoints(bad).unwrap_err();
            assert!(err.contains("--max-endpoints"), "{err}");
        }
        assert_eq!(parse_retire_idle_after("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_retire_idle_after("100ms").is_err());
        assert!(parse_retire_idle_after("later").is_err());
    }

    #[test]
    fn sock_slots_are_a_power_of_two() {
        assert_eq!(parse_sock_slots("1"), Ok(1));
        assert_eq!(parse_sock_slots("16384"), Ok(16384));
        for bad in ["0", "3", "100", "8388608", "x"] {
            let err = parse_sock_slots(bad).unwrap_err();
            assert!(err.contains("--sock-slots"), "{err}");
        }
    }

    #[test]
    fn max_flows_is_bounded() {
        assert_eq!(parse_max_flows("64"), Ok(64));
        for bad in ["8", "0", "-1", "many", "99999999999"] {
            let err = parse_max_flows(bad).unwrap_err();
            assert!(err.contains("--max-flows"), "{err}");
        }
    }

    #[test]
    fn tls_flags_need_an_https_collector() {
        let args = |extra: &[&str]| {
            let mut v = vec!["evenflow-agent", "--tls-ca", "/ca.pem"];
            v.extend_from_slice(extra);
            Args::try_parse_from(v).expect("valid flags")
        };
        assert!(check_tls(&args(&["--collector", "https://c:50052"])).is_ok());
        let err = check_tls(&args(&["--collector", "http://c:50052"])).unwrap_err();
        assert!(err.to_string().contains("plain text"), "{err}");
        assert!(check_tls(&args(&[])).is_err());
        let plain = Args::try_parse_from(["evenflow-agent", "--collector", "http://c:50052"]);
        assert!(check_tls(&plain.expect("valid flags")).is_ok());
    }

    #[test]
    fn a_map_larger_than_a_report_may_carry_is_refused_with_a_collector() {
        let args = |extra: &[&str]| {
            let mut v = vec!["evenflow-agent", "--max-endpoints", "300000"];
            v.extend_from_slice(extra);
            Args::try_parse_from(v).expect("valid flags")
        };
        let err = check_collector(&args(&["--collector", "http://c:50052"])).unwrap_err();
        assert!(err.to_string().contains("lower it to 200000"), "{err}");
        assert!(check_collector(&args(&[])).is_ok(), "the node view alone");
    }

    #[test]
    fn node_names_are_path_safe() {
        assert!(parse_node_name("backend-1").is_ok());
        assert!(parse_node_name("../etc").is_err());
        assert!(parse_node_name("a/b").is_err());
        assert!(parse_node_name("").is_err());
    }

    #[test]
    fn env_vars_set_flags() {
        let args = Args::try_parse_from(["evenflow-agent", "--service", "web=8080,api=9090"])
            .expect("valid flags");
        assert_eq!(args.services.len(), 2);
        assert_eq!(args.interval, Duration::from_secs(1));
    }
}

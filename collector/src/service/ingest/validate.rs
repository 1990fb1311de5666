//! The first ingest stage: a report is checked, and its endpoints,
//! listeners and node addresses parsed, before any agent state is touched.
//! A fault names the report's node, what is wrong and how to fix it.

use std::net::IpAddr;

use evenflow_proto::v1::{self, AgentReport};

use super::agent::{Dir, EpKey};

/// Upper bound on endpoints in one report.
pub const MAX_ENDPOINTS: usize = evenflow_proto::MAX_REPORT_ENDPOINTS;
/// Upper bound on listeners in one report.
pub const MAX_LISTENERS: usize = 100_000;
/// Longest service label (an endpoint's or a listener's, which names
/// pools in metrics, webhooks and the API) and agent version, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;
/// The shortest reporting interval a report may state, seconds (the agent
/// allows 100ms).
pub const MIN_INTERVAL_SECONDS: f64 = 0.01;
/// A protobuf Timestamp's range, seconds since the epoch: from
/// 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z, what RFC 3339 can write.
pub const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// A report that cannot be used; the text says what is wrong and how to fix
/// it.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct InvalidReport(pub String);

/// A report checked and parsed, ready to apply. Reused across reports of a
/// stream to avoid allocating.
#[derive(Default)]
pub struct Parsed {
    /// Each endpoint's key and its index in the report.
    pub(super) endpoints: Vec<(EpKey, usize)>,
    /// Each listener's address and port and its index in the report.
    pub(super) listeners: Vec<(IpAddr, u16, usize)>,
    /// The node's own addresses, sorted, without duplicates.
    pub(super) addresses: Vec<IpAddr>,
    /// The endpoints of the stream's last report whose endpoints passed.
    known: Known,
}

/// The endpoints of a report that passed, as the report spelled them and
/// as parsed. An agent lists the same endpoints in the same order report
/// after report, so each is parsed (and the list checked for duplicates)
/// once, not every second.
#[derive(Default)]
struct Known {
    /// Their addresses, one after the other.
    addresses: String,
    /// Per endpoint: where its address ends in `addresses`, its port and
    /// direction as reported, and its key.
    endpoints: Vec<(usize, u32, i32, EpKey)>,
}

impl Known {
    /// The key of endpoint `index` when the known endpoint at that place
    /// is spelled the same.
    fn key(&self, index: usize, endpoint: &v1::Endpoint) -> Option<EpKey> {
        let &(end, port, direction, key) = self.endpoints.get(index)?;
        let start = index.checked_sub(1).map_or(0, |i| self.endpoints[i].0);
        (port == endpoint.port
            && direction == endpoint.direction
            && key.proto == endpoint.protocol
            && self.addresses[start..end] == *endpoint.address)
            .then_some(key)
    }

    /// Knows `endpoints` (with their keys) from now on.
    fn replace(&mut self, endpoints: &[v1::Endpoint], keys: &[(EpKey, usize)]) {
        self.addresses.clear();
        self.endpoints.clear();
        for (endpoint, &(key, _)) in endpoints.iter().zip(keys) {
            self.addresses.push_str(&endpoint.address);
            let end = self.addresses.len();
            (self.endpoints).push((end, endpoint.port, endpoint.direction, key));
        }
    }
}

fn dir_of(d: i32) -> Option<Dir> {
    match v1::Direction::try_from(d) {
        Ok(v1::Direction::Serves) => Some(Dir::Serves),
        Ok(v1::Direction::SendsTo) => Some(Dir::SendsTo),
        _ => None,
    }
}

/// Checks that a report names its agent: node name, run and sequence.
/// Without them the collector cannot tell whose report it rejects, so the
/// stream ends; any other fault rejects just that report.
pub fn validate_identity(report: &AgentReport) -> Result<(), InvalidReport> {
    let bad = |s: String| Err(InvalidReport(s));
    let node = report.node_name.as_str();
    if node.trim().is_empty() {
        return bad(
            "report has an empty node_name: start the agent with --node-name NAME (or a host name)"
                .into(),
        );
    }
    if node.len() > 253 || node.chars().any(|c| c.is_control()) {
        return bad(format!(
            "node_name {:?} is not a usable name (longer than 253 bytes or with control characters): set --node-name to the node's host name",
            node.chars().take(64).collect::<String>()
        ));
    }
    if report.agent_run == 0 {
        return bad(format!(
            "report from {node} has agent_run 0: the run id must be non-zero (random per agent start)"
        ));
    }
    if report.sequence == 0 {
        return bad(format!(
            "report from {node} has sequence 0: sequences start at 1 within a run"
        ));
    }
    Ok(())
}

/// Checks a report without touching any state.
pub fn validate(report: &AgentReport, out: &mut Parsed) -> Result<(), InvalidReport> {
    out.endpoints.clear();
    out.listeners.clear();
    out.addresses.clear();
    validate_identity(report)?;
    validate_limits(report)?;
    let node = report.node_name.as_str();
    let mut all_known = report.endpoints.len() == out.known.endpoints.len();
    for (index, endpoint) in report.endpoints.iter().enumerate() {
        let key = match out.known.key(index, endpoint) {
            Some(key) => key,
            None => {
                all_known = false;
                parse_endpoint(node, index, endpoint)?
            }
        };
        check_counts(node, key, endpoint)?;
        out.endpoints.push((key, index));
    }
    // The known endpoints had no duplicates.
    if !all_known {
        reject_duplicate_endpoints(node, &out.endpoints)?;
        out.known.replace(&report.endpoints, &out.endpoints);
    }
    for (index, listener) in report.listeners.iter().enumerate() {
        let (addr, port) = parse_listener(&report.node_name, index, listener)?;
        out.listeners.push((addr, port, index));
    }
    parse_node_addresses(report, &mut out.addresses)
}

/// The report's scalar fields and sizes within bounds.
fn validate_limits(report: &AgentReport) -> Result<(), InvalidReport> {
    let bad = |s: String| Err(InvalidReport(s));
    let node = report.node_name.as_str();
    // A tiny non-zero interval would divide a report's counts by almost
    // nothing (an infinite rate); 0 means "not said".
    let interval = report.interval_seconds;
    if !(interval.is_finite()
        && (interval == 0.0 || (MIN_INTERVAL_SECONDS..=3600.0).contains(&interval)))
    {
        return bad(format!(
            "report from {node} has interval_seconds {interval}: it must be 0 (not said) or between {MIN_INTERVAL_SECONDS} and 3600 (the agent's --interval)",
        ));
    }
    if let Some(taken_at) = &report.taken_at
        && !(0..1_000_000_000).contains(&taken_at.nanos)
    {
        return bad(format!(
            "report from {node} has taken_at.nanos {}: it must be between 0 and 999999999 (a normalized protobuf Timestamp)",
            taken_at.nanos
        ));
    }
    // Shown as the agent's last report time (RFC 3339, four-digit years).
    if let Some(taken_at) = &report.taken_at
        && !TIMESTAMP_SECONDS.contains(&taken_at.seconds)
    {
        return bad(format!(
            "report from {node} has taken_at.seconds {}: it must be a time between the years 1 and 9999 ({} to {} seconds since 1970, a protobuf Timestamp): check the node's clock",
            taken_at.seconds,
            TIMESTAMP_SECONDS.start(),
            TIMESTAMP_SECONDS.end()
        ));
    }
    if let Some(cpu) = &report.cpu
        && !(cpu.utilization.is_finite() && (0.0..=1.0001).contains(&cpu.utilization))
    {
        return bad(format!(
            "report from {node} has cpu.utilization {}: it must be a fraction between 0 and 1",
            cpu.utilization
        ));
    }
    if report.endpoints.len() > MAX_ENDPOINTS {
        return bad(format!(
            "report from {node} has {} endpoints, more than the collector's limit of {MAX_ENDPOINTS}: lower the agent's map size",
            report.endpoints.len()
        ));
    }
    if report.agent_version.len() > MAX_LABEL_BYTES {
        return bad(format!(
            "report from {node} has an agent_version longer than {MAX_LABEL_BYTES} bytes"
        ));
    }
    if report.listeners.len() > MAX_LISTENERS {
        return bad(format!(
            "report from {node} has {} listeners, more than the limit of {MAX_LISTENERS}",
            report.listeners.len()
        ));
    }
    Ok(())
}

/// Endpoint `index` of `node`'s report, its address, port and direction
/// checked, as its key.
fn parse_endpoint(
    node: &str,
    index: usize,
    endpoint: &v1::Endpoint,
) -> Result<EpKey, InvalidReport> {
    let bad = |s: String| Err(InvalidReport(s));
    let Ok(addr) = endpoint.address.parse::<IpAddr>() else {
        return bad(format!(
            "report from {node}: endpoint {index} has address {:?}, which is not an IP address (write \"10.0.0.11\" or \"fd00::11\")",
            endpoint.address.chars().take(64).collect::<String>()
        ));
    };
    let addr = canonical(addr);
    if endpoint.port == 0 || endpoint.port > 65535 {
        return bad(format!(
            "report from {node}: endpoint {addr} has port {}, outside 1..=65535",
            endpoint.port
        ));
    }
    let Some(dir) = dir_of(endpoint.direction) else {
        return bad(format!(
            "report from {node}: endpoint {addr}:{} has no direction: set SERVES or SENDS_TO",
            endpoint.port
        ));
    };
    // Only TCP and UDP are counted: any other number would make a second
    // key for one address, port and direction, and its traffic would be
    // summed into the member twice.
    if !matches!(
        v1::Protocol::try_from(endpoint.protocol),
        Ok(v1::Protocol::Tcp | v1::Protocol::Udp)
    ) {
        return bad(format!(
            "report from {node}: endpoint {addr}:{} has protocol {}, neither TCP nor UDP: set PROTOCOL_TCP (1) or PROTOCOL_UDP (2), the only protocols the collector counts",
            endpoint.port, endpoint.protocol
        ));
    }
    Ok(EpKey {
        addr,
        port: endpoint.port as u16,
        dir,
        proto: endpoint.protocol,
    })
}

/// The rest of an endpoint's checks, on what may change from report to
/// report: its totals and its label.
fn check_counts(node: &str, key: EpKey, endpoint: &v1::Endpoint) -> Result<(), InvalidReport> {
    let bad = |s: String| Err(InvalidReport(s));
    let addr = key.addr;
    if let Some(totals) = &endpoint.totals
        && (totals.conns_closed > totals.conns_opened.saturating_add(1 << 40))
    {
        return bad(format!(
            "report from {node}: endpoint {addr}:{} closed {} connections but opened only {}: absurd totals",
            endpoint.port, totals.conns_closed, totals.conns_opened
        ));
    }
    if endpoint.service.len() > MAX_LABEL_BYTES {
        return bad(format!(
            "report from {node}: endpoint {addr}:{} has a service label longer than {MAX_LABEL_BYTES} bytes",
            endpoint.port
        ));
    }
    Ok(())
}

/// Duplicate keys would make deltas ambiguous.
fn reject_duplicate_endpoints(
    node: &str,
    endpoints: &[(EpKey, usize)],
) -> Result<(), InvalidReport> {
    if endpoints.len() <= 1 {
        return Ok(());
    }
    let mut keys: Vec<EpKey> = endpoints.iter().map(|(k, _)| *k).collect();
    keys.sort_unstable_by_key(|k| (k.addr, k.port, k.dir, k.proto));
    match keys.windows(2).find(|pair| pair[0] == pair[1]) {
        Some(pair) => Err(InvalidReport(format!(
            "report from {node} lists endpoint {}:{} ({:?}) twice: each endpoint must appear once",
            pair[0].addr, pair[0].port, pair[0].dir
        ))),
        None => Ok(()),
    }
}

/// Listener `index` of `node`'s report: its address (canonical) and port.
fn parse_listener(
    node: &str,
    index: usize,
    listener: &v1::Listener,
) -> Result<(IpAddr, u16), InvalidReport> {
    let Ok(addr) = listener.address.parse::<IpAddr>() else {
        return Err(InvalidReport(format!(
            "report from {node}: listener {index} has address {:?}, which is not an IP address",
            listener.address.chars().take(64).collect::<String>()
        )));
    };
    if listener.port == 0 || listener.port > 65535 {
        return Err(InvalidReport(format!(
            "report from {node}: listener {addr} has port {}, outside 1..=65535",
            listener.port
        )));
    }
    if listener.service.len() > MAX_LABEL_BYTES {
        return Err(InvalidReport(format!(
            "report from {node}: listener {addr}:{} has a service label longer than {MAX_LABEL_BYTES} bytes",
            listener.port
        )));
    }
    Ok((canonical(addr), listener.port as u16))
}

/// The node's own addresses, canonical, sorted and without duplicates.
fn parse_node_addresses(report: &AgentReport, out: &mut Vec<IpAddr>) -> Result<(), InvalidReport> {
    let node = report.node_name.as_str();
    if report.node_addresses.len() > MAX_LISTENERS {
        return Err(InvalidReport(format!(
            "report from {node} has {} node addresses, more than the limit of {MAX_LISTENERS}",
            report.node_addresses.len()
        )));
    }
    for address in &report.node_addresses {
        let Ok(addr) = address.parse::<IpAddr>() else {
            return Err(InvalidReport(format!(
                "report from {node}: node address {:?} is not an IP address",
                address.chars().take(64).collect::<String>()
            )));
        };
        out.push(canonical(addr));
    }
    out.sort_unstable();
    out.dedup();
    Ok(())
}

/// IPv4-mapped IPv6 addresses as plain IPv4.
pub fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

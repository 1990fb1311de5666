//! Prometheus text exposition of the latest snapshot on `/metrics`.

use std::{fmt::Write as _, net::SocketAddr, sync::Arc};

use anyhow::Result;
use evenflow_daemon::{
    exposition::{self, escape as esc},
    http::Page,
};
use evenflow_proto::v1;
use tokio::sync::watch;
use tracing::info;

/// Serves `/metrics` until `shutdown` fires.
pub async fn serve(
    addr: SocketAddr,
    snapshots: watch::Receiver<Arc<v1::Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let listener = evenflow_daemon::bind("--metrics-addr", addr).await?;
    info!(%addr, "serving /metrics");
    evenflow_daemon::http::serve(
        listener,
        move |path| page(path, &snapshots.borrow()),
        async move {
            let _ = shutdown.changed().await;
        },
    )
    .await;
    Ok(())
}

/// The answer to an HTTP request for `path`.
fn page(path: &str, snap: &v1::Snapshot) -> Page {
    match path {
        "/metrics" => Page::ok(exposition::CONTENT_TYPE, render(snap)),
        "/" => Page::ok("text/plain", "evenflow-agent: see /metrics\n".to_owned()),
        _ => Page::not_found("not found: try /metrics\n".to_owned()),
    }
}

fn direction_label(d: i32) -> &'static str {
    match v1::Direction::try_from(d) {
        Ok(v1::Direction::Serves) => "serves",
        Ok(v1::Direction::SendsTo) => "sends_to",
        _ => "unspecified",
    }
}

fn protocol_label(p: i32) -> &'static str {
    match v1::Protocol::try_from(p) {
        Ok(v1::Protocol::Tcp) => "tcp",
        Ok(v1::Protocol::Udp) => "udp",
        _ => "unspecified",
    }
}

/// A counter of an endpoint's totals.
type Field = fn(&v1::Counters) -> u64;

/// The per-endpoint counters: name, help and where the value is.
const PER_ENDPOINT: [(&str, &str, Field); 9] = [
    (
        "evenflow_endpoint_connections_opened_total",
        "TCP connections established per endpoint.",
        |c| c.conns_opened,
    ),
    (
        "evenflow_endpoint_connections_closed_total",
        "TCP connections closed per endpoint.",
        |c| c.conns_closed,
    ),
    (
        "evenflow_endpoint_connections_failed_total",
        "TCP connection attempts per endpoint that never opened (refused, unanswered or abandoned).",
        |c| c.conns_failed,
    ),
    (
        "evenflow_endpoint_connections_unanswered_total",
        "TCP connection attempts per endpoint whose SYN went unanswered for a second (counted then, whatever they did later).",
        |c| c.conns_unanswered,
    ),
    (
        "evenflow_endpoint_connections_failed_unanswered_total",
        "Of the failed TCP connection attempts per endpoint, those counted unanswered first (failed minus this: refused, or given up within a second).",
        |c| c.conns_failed_unanswered.unwrap_or(0),
    ),
    (
        "evenflow_endpoint_received_bytes_total",
        "Transport payload bytes this node received on the endpoint's flows.",
        |c| c.bytes_rx,
    ),
    (
        "evenflow_endpoint_sent_bytes_total",
        "Transport payload bytes this node sent on the endpoint's flows.",
        |c| c.bytes_tx,
    ),
    (
        "evenflow_endpoint_received_packets_total",
        "Packets this node received on the endpoint's flows.",
        |c| c.packets_rx,
    ),
    (
        "evenflow_endpoint_sent_packets_total",
        "Packets this node sent on the endpoint's flows.",
        |c| c.packets_tx,
    ),
];

/// The per-endpoint gauge.
const ACTIVE: &str = "evenflow_endpoint_active_connections";

/// Renders a snapshot as Prometheus text format 0.0.4.
///
/// Prometheus scrapes every agent (the DaemonSet asks it to), and at
/// 10,000 endpoints the page is ten series of 10,000 lines, some 14 MB: the
/// lines are written piece by piece ([`sample`]) into a page sized for
/// them up front, where formatting each and growing the page as it filled
/// took a scrape's CPU and copies of the page.
pub fn render(snap: &v1::Snapshot) -> String {
    let node = esc(&snap.node_name);
    let labels: Vec<String> = (snap.endpoints.iter())
        .map(|e| endpoint_labels(&node, e))
        .collect();
    let mut out = String::with_capacity(page_size(&labels));
    for (name, help, field) in PER_ENDPOINT {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (e, l) in snap.endpoints.iter().zip(&labels) {
            sample(&mut out, name, l, e.totals.as_ref().map_or(0, field));
        }
    }
    let _ = writeln!(
        out,
        "# HELP {ACTIVE} Connections open now per endpoint.\n# TYPE {ACTIVE} gauge"
    );
    for (e, l) in snap.endpoints.iter().zip(&labels) {
        sample(&mut out, ACTIVE, l, e.active_connections);
    }
    if let Some(cpu) = &snap.cpu {
        let _ = writeln!(
            out,
            "# HELP evenflow_node_cpu_utilization Busy fraction of all cores over the last interval.\n\
             # TYPE evenflow_node_cpu_utilization gauge\n\
             evenflow_node_cpu_utilization{{node=\"{node}\"}} {}\n\
             # HELP evenflow_node_cpu_cores Cores counted in evenflow_node_cpu_utilization.\n\
             # TYPE evenflow_node_cpu_cores gauge\n\
             evenflow_node_cpu_cores{{node=\"{node}\"}} {}",
            cpu.utilization, cpu.cores
        );
    }
    if let Some(d) = &snap.datapath {
        let counters = [
            (
                "packets_unparsable",
                "Packets whose headers could not be parsed (they passed).",
                d.packets_unparsable,
            ),
            (
                "endpoint_insert_failed",
                "New endpoints the kernel could not insert: the map was full, or memory short.",
                d.endpoint_insert_failed,
            ),
            (
                "endpoint_evictions",
                "Endpoints that vanished from the endpoint map other than by retirement.",
                d.endpoint_evictions,
            ),
            (
                "endpoints_retired",
                "Endpoints retired from a filling endpoint map: idle, no connection open, no listener.",
                d.endpoints_retired,
            ),
            (
                "journal_spilled",
                "State changes of forwarded connections that found their CPU's part of the journal full (applied all the same).",
                d.journal_spilled,
            ),
            (
                "journal_lost",
                "State changes of forwarded connections lost: the journal and its spill were full.",
                d.journal_lost,
            ),
            (
                "journal_drained_inline",
                "State changes of forwarded connections TC egress applied itself (the journal past half full between reads, or no agent running).",
                d.journal_drained_inline,
            ),
            (
                "forwarded_replies_unseen",
                "Forwarded connections counted without their bytes: their backend's SYN-ACK left through a device the agent is not attached to (--iface).",
                d.forwarded_replies_unseen,
            ),
            (
                "endpoint_insert_no_memory",
                "Of endpoint_insert_failed, endpoints the kernel could not allocate counters for (memory limit).",
                d.endpoint_insert_no_memory,
            ),
            (
                "flow_insert_failed",
                "Forwarded connections not tracked: the flow map was full, or memory short.",
                d.flow_insert_failed,
            ),
            (
                "flow_insert_no_memory",
                "Of flow_insert_failed, connections whose entry the kernel could not allocate (memory limit).",
                d.flow_insert_no_memory,
            ),
            (
                "flow_missing_on_close",
                "Socket closes not counted because the socket never was (it predates evenflow, or could not be counted).",
                d.flow_missing_on_close,
            ),
            (
                "unsupported_family",
                "sock_ops callbacks for sockets neither IPv4 nor IPv6.",
                d.unsupported_family,
            ),
            (
                "syns_routed",
                "SYNs routed through untranslated (plain routing, not tracked).",
                d.syns_routed,
            ),
            (
                "syns_origin_unknown",
                "SYNs forwarded with no record of how they entered (not tracked).",
                d.syns_origin_unknown,
            ),
            (
                "flows_expired",
                "Forwarded connections ended by idling past conntrack's timeout.",
                d.flows_expired,
            ),
            (
                "sock_storage_failed",
                "Sockets that could not get socket storage (not counted).",
                d.sock_storage_failed,
            ),
            (
                "socks_in_storage",
                "Sockets kept in socket storage: with slots, because theirs were taken (raise --sock-slots); with --socket-sampling walk, every socket the walk sampled.",
                d.socks_in_storage,
            ),
        ];
        for (n, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP evenflow_datapath_{n}_total {help}\n# TYPE evenflow_datapath_{n}_total counter\n\
                 evenflow_datapath_{n}_total{{node=\"{node}\"}} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP evenflow_datapath_endpoints Endpoints in the kernel map.\n# TYPE evenflow_datapath_endpoints gauge\n\
             evenflow_datapath_endpoints{{node=\"{node}\"}} {}\n\
             # HELP evenflow_datapath_endpoints_max Capacity of the kernel endpoint map.\n# TYPE evenflow_datapath_endpoints_max gauge\n\
             evenflow_datapath_endpoints_max{{node=\"{node}\"}} {}\n\
             # HELP evenflow_datapath_flows Forwarded connections tracked now.\n# TYPE evenflow_datapath_flows gauge\n\
             evenflow_datapath_flows{{node=\"{node}\"}} {}\n\
             # HELP evenflow_datapath_flows_max Forwarded connections the flow map can track.\n# TYPE evenflow_datapath_flows_max gauge\n\
             evenflow_datapath_flows_max{{node=\"{node}\"}} {}",
            d.live_endpoints, d.max_endpoints, d.live_flows, d.max_flows
        );
    }
    let _ = writeln!(
        out,
        "# HELP evenflow_agent_info The agent's epoch (changes when counters restart) and sequence.\n\
         # TYPE evenflow_agent_info gauge\n\
         evenflow_agent_info{{node=\"{node}\",epoch=\"{}\"}} 1\n\
         # HELP evenflow_agent_snapshots_total Snapshots taken by this agent process.\n\
         # TYPE evenflow_agent_snapshots_total counter\n\
         evenflow_agent_snapshots_total{{node=\"{node}\"}} {}\n\
         # HELP evenflow_agent_readings_failed_total Readings of the counters that failed in this agent process, each skipping its snapshot.\n\
         # TYPE evenflow_agent_readings_failed_total counter\n\
         evenflow_agent_readings_failed_total{{node=\"{node}\"}} {}\n\
         # HELP evenflow_agent_readings_whole_total Readings that read every endpoint in the kernel's map; the others read only the endpoints counted since the one before.\n\
         # TYPE evenflow_agent_readings_whole_total counter\n\
         evenflow_agent_readings_whole_total{{node=\"{node}\"}} {}",
        snap.agent_epoch, snap.sequence, snap.readings_failed, snap.readings_whole
    );
    out
}

/// An endpoint's labels, `node` escaped already.
fn endpoint_labels(node: &str, e: &v1::Endpoint) -> String {
    format!(
        "node=\"{node}\",direction=\"{}\",address=\"{}\",port=\"{}\",protocol=\"{}\",service=\"{}\"",
        direction_label(e.direction),
        esc(&e.address),
        e.port,
        protocol_label(e.protocol),
        esc(&e.service)
    )
}

/// Bytes a page takes at most whose endpoints are labelled `labels`: the
/// per-endpoint series' samples, and room for the rest.
fn page_size(labels: &[String]) -> usize {
    let all: usize = labels.iter().map(String::len).sum();
    let series = |name: &str| all + labels.len() * (name.len() + SAMPLE_EXTRA);
    let names = PER_ENDPOINT.iter().map(|(name, ..)| *name).chain([ACTIVE]);
    names.map(series).sum::<usize>() + NODE_SERIES_BYTES
}

/// What a sample line holds beside its name and labels, at most: the
/// braces and the space, the longest `u64` and the newline.
const SAMPLE_EXTRA: usize = 3 + 20 + 1;

/// Room for the series' help lines and the node's own series: 14.6 KiB
/// with a node name of 253 bytes (`a_page_is_written_into_the_room_made_for_it_never_grown`
/// fails where they outgrow it).
const NODE_SERIES_BYTES: usize = 32 << 10;

/// One sample line: `name{labels} value`.
fn sample(out: &mut String, name: &str, labels: &str, value: u64) {
    out.push_str(name);
    out.push('{');
    out.push_str(labels);
    out.push_str("} ");
    out.push_str(itoa::Buffer::new().format(value));
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_endpoint_series_with_labels() {
        let snap = v1::Snapshot {
            node_name: "lb".into(),
            agent_epoch: 3,
            readings_failed: 2,
            readings_whole: 1,
            endpoints: vec![v1::Endpoint {
                address: "10.0.0.11".into(),
                port: 8080,
                direction: v1::Direction::SendsTo as i32,
                protocol: v1::Protocol::Tcp as i32,
                service: "we\"b".into(),
                totals: Some(v1::Counters {
                    conns_opened: 42,
                    bytes_tx: 1000,
                    ..Default::default()
                }),
                rates: None,
                active_connections: 2,
            }],
            ..Default::default()
        };
        let text = render(&snap);
        assert!(text.contains(
            "evenflow_endpoint_connections_opened_total{node=\"lb\",direction=\"sends_to\",address=\"10.0.0.11\",port=\"8080\",protocol=\"tcp\",service=\"we\\\"b\"} 42"
        ), "{text}");
        assert!(text.contains("evenflow_endpoint_active_connections{"));
        assert!(text.contains("evenflow_agent_info{node=\"lb\",epoch=\"3\"} 1"));
        assert!(text.contains("evenflow_agent_readings_failed_total{node=\"lb\"} 2"));
        assert!(text.contains("evenflow_agent_readings_whole_total{node=\"lb\"} 1"));
    }

    /// Endpoints whose every value is as long as a value gets, on a node
    /// that reports everything.
    fn widest(n: u16) -> v1::Snapshot {
        let all = u64::MAX;
        let totals = v1::Counters {
            conns_opened: all,
            conns_closed: all,
            conns_failed: all,
            conns_unanswered: all,
            conns_failed_unanswered: Some(all),
            bytes_rx: all,
            bytes_tx: all,
            packets_rx: all,
            packets_tx: all,
        };
        let endpoints = (0..n)
            .map(|i| v1::Endpoint {
                address: format!("fd00:ef::{i:x}"),
                port: 65_535,
                direction: v1::Direction::SendsTo as i32,
                protocol: v1::Protocol::Tcp as i32,
                service: "payments/api:https".into(),
                totals: Some(totals),
                rates: None,
                active_connections: all,
            })
            .collect();
        v1::Snapshot {
            // As long as a node's name gets (a DNS name).
            node_name: "n".repeat(253),
            agent_epoch: all,
            sequence: all,
            readings_failed: all,
            readings_whole: all,
            endpoints,
            cpu: Some(v1::Cpu::default()),
            datapath: Some(v1::DatapathStats::default()),
            ..Default::default()
        }
    }

    #[test]
    fn a_page_is_written_into_the_room_made_for_it_never_grown() {
        for n in [0, 1, 2_000] {
            let snap = widest(n);
            let node = esc(&snap.node_name);
            let labels: Vec<String> = (snap.endpoints.iter())
                .map(|e| endpoint_labels(&node, e))
                .collect();
            let text = render(&snap);
            // Grown, the page would have doubled its room at least once.
            assert_eq!(text.capacity(), page_size(&labels), "{n} endpoints");
            assert_eq!(
                text.lines()
                    .filter(|l| l.ends_with(" 18446744073709551615"))
                    .count(),
                // Each endpoint's samples, and the node's snapshots,
                // failed readings and whole readings.
                usize::from(n) * (PER_ENDPOINT.len() + 1) + 3,
                "{n} endpoints: every sample written whole"
            );
        }
    }
}

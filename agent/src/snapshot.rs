//! Turns the agent's state into `evenflow.v1.Snapshot`, the one message the
//! gRPC API, `/metrics` and `--print` all render.

use std::{
    net::{IpAddr, Ipv6Addr},
    time::SystemTime,
};

use agent_common::{Direction, EndpointKey, PROTO_TCP, PROTO_UDP, Stat};
use evenflow_proto::v1;

use crate::{
    cli::ServiceLabel,
    datapath,
    listeners::Listener,
    table::{Entry, Table},
};

/// Everything a snapshot is made of, borrowed from the agent loop.
pub struct Inputs<'a> {
    pub node_name: &'a str,
    pub epoch: u64,
    pub sequence: u64,
    pub interval_secs: f64,
    pub table: &'a Table,
    pub listeners: &'a [Listener],
    pub services: &'a [ServiceLabel],
    pub cpu_utilization: f64,
    pub cores: u32,
    pub stats: &'a datapath::Stats,
    pub capacity: datapath::Capacity,
    pub interfaces: &'a [String],
    pub cgroup: &'a str,
    /// The node's addresses (see `host::addresses`).
    pub addresses: &'a [std::net::IpAddr],
    /// Readings that failed in this agent process.
    pub readings_failed: u64,
    /// Readings of every endpoint in this agent process.
    pub readings_whole: u64,
}

/// The service `--service` labels `addr`:`port` with, or "".
pub fn service_for(services: &[ServiceLabel], addr: IpAddr, port: u16) -> &str {
    crate::cli::label_of(services, addr, port).map_or("", |s| s.name.as_str())
}

/// The address of a key as people write it: IPv4 without its mapped prefix.
pub fn key_addr(key: &EndpointKey) -> IpAddr {
    let v6 = Ipv6Addr::from(agent_common::addr_bytes(&key.addr));
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn protocol(proto: u8) -> v1::Protocol {
    match proto {
        PROTO_TCP => v1::Protocol::Tcp,
        PROTO_UDP => v1::Protocol::Udp,
        _ => v1::Protocol::Unspecified,
    }
}

/// Builds the snapshot. Endpoints come in the table's listing order
/// (direction, address, port), so consecutive snapshots diff cleanly.
pub fn build(i: &Inputs<'_>) -> v1::Snapshot {
    let endpoints = i
        .table
        .iter()
        .map(|(key, e)| endpoint(i.services, key, e))
        .collect();
    v1::Snapshot {
        node_name: i.node_name.to_owned(),
        agent_epoch: i.epoch,
        sequence: i.sequence,
        taken_at: Some(prost_types::Timestamp::from(SystemTime::now())),
        interval_seconds: i.interval_secs,
        endpoints,
        listeners: i
            .listeners
            .iter()
            .map(|l| v1::Listener {
                address: l.addr.to_string(),
                port: u32::from(l.port),
                protocol: protocol(l.proto) as i32,
                service: service_for(i.services, l.addr.to_canonical(), l.port).to_owned(),
            })
            .collect(),
        cpu: Some(v1::Cpu {
            utilization: i.cpu_utilization,
            cores: i.cores,
        }),
        datapath: Some(v1::DatapathStats {
            packets_unparsable: i.stats.packets_unparsable(),
            endpoint_insert_failed: i.stats.endpoint_insert_failed(),
            endpoint_evictions: i.stats.endpoint_evictions(),
            flow_insert_failed: i.stats.flow_insert_failed(),
            flow_missing_on_close: i.stats.flow_missing_on_close(),
            unsupported_family: i.stats.unsupported_family(),
            live_endpoints: i.stats.live_endpoints,
            max_endpoints: i.capacity.endpoints,
            max_flows: i.capacity.flows,
            endpoints_forgotten: i.table.forgotten,
            live_flows: i.stats.live_flows(),
            syns_routed: i.stats.slot(Stat::SynRouted),
            syns_origin_unknown: i.stats.slot(Stat::SynOriginUnknown),
            flows_expired: i.stats.slot(Stat::FlowExpired),
            sock_storage_failed: i.stats.slot(Stat::SockStorageFailed),
            socks_in_storage: i.stats.slot(Stat::SockInStorage),
            endpoint_insert_no_memory: i.stats.endpoint_insert_no_memory(),
            flow_insert_no_memory: i.stats.flow_insert_no_memory(),
            endpoints_retired: i.stats.slot(Stat::EndpointRetired),
            journal_spilled: i.stats.slot(Stat::JournalSpilled),
            journal_lost: i.stats.slot(Stat::JournalLost),
            journal_drained_inline: i.stats.slot(Stat::JournalDrainedInline),
            forwarded_replies_unseen: i.stats.slot(Stat::ReplyUnseen),
        }),
        interfaces: i.interfaces.to_vec(),
        cgroup: i.cgroup.to_owned(),
        addresses: i.addresses.iter().map(ToString::to_string).collect(),
        readings_failed: i.readings_failed,
        readings_whole: i.readings_whole,
    }
}

/// One endpoint as the API shows it.
pub fn endpoint(services: &[ServiceLabel], key: &EndpointKey, e: &Entry) -> v1::Endpoint {
    let direction = match Direction::from_u8(key.direction) {
        Some(Direction::Serves) => v1::Direction::Serves,
        Some(Direction::SendsTo) => v1::Direction::SendsTo,
        None => v1::Direction::Unspecified,
    };
    let service = if direction == v1::Direction::Serves {
        service_for(services, key_addr(key), key.port)
    } else {
        ""
    };
    let t = &e.totals;
    v1::Endpoint {
        address: e.address.clone(),
        port: u32::from(key.port),
        direction: direction as i32,
        protocol: protocol(key.proto) as i32,
        service: service.to_owned(),
        totals: Some(v1::Counters {
            conns_opened: t.conns_opened,
            conns_closed: t.conns_closed,
            bytes_rx: t.bytes_rx,
            bytes_tx: t.bytes_tx,
            packets_rx: t.packets_rx,
            packets_tx: t.packets_tx,
            conns_failed: t.conns_failed,
            conns_unanswered: t.conns_unanswered,
            conns_failed_unanswered: Some(t.conns_failed_unanswered),
        }),
        rates: Some(v1::Rates {
            conns_opened: e.rates.conns_opened,
            conns_closed: e.rates.conns_closed,
            bytes_rx: e.rates.bytes_rx,
            bytes_tx: e.rates.bytes_tx,
            packets_rx: e.rates.packets_rx,
            packets_tx: e.rates.packets_tx,
            conns_failed: e.rates.conns_failed,
        }),
        active_connections: t.conns_opened.saturating_sub(t.conns_closed),
    }
}

/// A copy of `snap` with only the endpoints of `service` (all when empty).
pub fn filter(snap: &v1::Snapshot, service: &str) -> v1::Snapshot {
    let mut s = snap.clone();
    if !service.is_empty() {
        s.endpoints.retain(|e| e.service == service);
        s.listeners.retain(|l| l.service == service);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::EndpointCounters;

    #[test]
    fn builds_labelled_sorted_endpoints() {
        let mut table = Table::default();
        let k = |a: [u8; 4], port, d: Direction| EndpointKey {
            addr: agent_common::v4_mapped(u32::from_ne_bytes(a)),
            port,
            direction: d as u8,
            proto: PROTO_TCP,
        };
        let c = EndpointCounters {
            conns_opened: 5,
            conns_closed: 3,
            ..Default::default()
        };
        table.update(
            &[
                (k([10, 0, 0, 9], 8080, Direction::SendsTo), c),
                (k([10, 0, 0, 1], 8080, Direction::Serves), c),
            ],
            1.0,
        );
        let services = ["web=8080".parse().expect("label")];
        let stats = datapath::Stats::default();
        let snap = build(&Inputs {
            node_name: "n1",
            epoch: 7,
            sequence: 1,
            interval_secs: 1.0,
            table: &table,
            listeners: &[],
            services: &services,
            cpu_utilization: 0.25,
            cores: 2,
            stats: &stats,
            capacity: datapath::Capacity::default(),
            interfaces: &[],
            cgroup: "/",
            addresses: &[],
            readings_failed: 0,
            readings_whole: 1,
        });
        assert_eq!(snap.endpoints.len(), 2);
        let serves = &snap.endpoints[0];
        assert_eq!(serves.direction, v1::Direction::Serves as i32);
        assert_eq!(serves.address, "10.0.0.1");
        assert_eq!(serves.service, "web");
        assert_eq!(serves.active_connections, 2);
        // Backends this node sends to are not labelled by local --service.
        assert_eq!(snap.endpoints[1].service, "");
        assert_eq!(filter(&snap, "web").endpoints.len(), 1);
    }
}

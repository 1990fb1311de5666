//! `--print`: a plain table of what the agent sees, one block per interval.

use std::fmt::Write as _;

use evenflow_proto::v1;

/// Renders the endpoints of `snap` as a fixed-width table.
pub fn table(snap: &v1::Snapshot) -> String {
    let mut out = String::new();
    let cpu = snap.cpu.as_ref().map_or(0.0, |c| c.utilization * 100.0);
    let _ = writeln!(
        out,
        "── {} · seq {} · cpu {cpu:.0}% · {} endpoints ──",
        snap.node_name,
        snap.sequence,
        snap.endpoints.len()
    );
    let _ = writeln!(
        out,
        "{:<9} {:<40} {:<10} {:>8} {:>7} {:>10} {:>8} {:>11} {:>11}",
        "DIR", "ENDPOINT", "SERVICE", "CONN/S", "ACTIVE", "OPENED", "FAILED", "RX B/S", "TX B/S"
    );
    for e in &snap.endpoints {
        let dir = match v1::Direction::try_from(e.direction) {
            Ok(v1::Direction::Serves) => "serves",
            Ok(v1::Direction::SendsTo) => "sends-to",
            _ => "?",
        };
        let ep = if e.address.contains(':') {
            format!("[{}]:{}", e.address, e.port)
        } else {
            format!("{}:{}", e.address, e.port)
        };
        let r = e.rates.unwrap_or_default();
        let t = e.totals.unwrap_or_default();
        let _ = writeln!(
            out,
            "{dir:<9} {ep:<40} {:<10} {:>8.1} {:>7} {:>10} {:>8} {:>11.0} {:>11.0}",
            if e.service.is_empty() {
                "-"
            } else {
                &e.service
            },
            r.conns_opened,
            e.active_connections,
            t.conns_opened,
            t.conns_failed,
            r.bytes_rx,
            r.bytes_tx
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_endpoint() {
        let snap = v1::Snapshot {
            node_name: "n".into(),
            endpoints: vec![
                v1::Endpoint {
                    address: "fd00::1".into(),
                    port: 80,
                    direction: v1::Direction::Serves as i32,
                    ..Default::default()
                };
                3
            ],
            ..Default::default()
        };
        let t = table(&snap);
        assert_eq!(t.lines().count(), 2 + 3);
        assert!(t.contains("[fd00::1]:80"));
    }
}

//! How enum values are spelled as labels — the collector's /metrics,
//! `/pools/NAME` and webhook alerts, and the CLI's tables and JSON: one
//! spelling each, here. Verdict and alert-kind names are the proto's own
//! value names without their prefix.

use crate::v1;

/// "ZERO", "SKEW_LOW", ..., or "UNSPECIFIED".
pub fn verdict_name(verdict: i32) -> &'static str {
    v1::Verdict::try_from(verdict).map_or("UNSPECIFIED", |v| {
        v.as_str_name().trim_start_matches("VERDICT_")
    })
}

/// "ZERO", "DRAINING_VIOLATION", ..., or "UNSPECIFIED".
pub fn alert_kind_name(kind: i32) -> &'static str {
    v1::AlertKind::try_from(kind).map_or("UNSPECIFIED", |k| {
        k.as_str_name().trim_start_matches("ALERT_KIND_")
    })
}

/// "new_connections", "active_connections", "bytes", or "" when unset.
pub fn signal_name(signal: i32) -> &'static str {
    match v1::Signal::try_from(signal) {
        Ok(v1::Signal::NewConnections) => "new_connections",
        Ok(v1::Signal::ActiveConnections) => "active_connections",
        Ok(v1::Signal::Bytes) => "bytes",
        _ => "",
    }
}

/// "routing", "pinned", "refusing", or "" when unset.
pub fn cause_name(cause: i32) -> &'static str {
    match v1::Cause::try_from(cause) {
        Ok(v1::Cause::Routing) => "routing",
        Ok(v1::Cause::Pinned) => "pinned",
        Ok(v1::Cause::Refusing) => "refusing",
        _ => "",
    }
}

/// "lb", else "server".
pub fn view_name(view: i32) -> &'static str {
    match v1::View::try_from(view) {
        Ok(v1::View::Lb) => "lb",
        _ => "server",
    }
}

/// "page", else "warning".
pub fn severity_name(severity: i32) -> &'static str {
    match v1::Severity::try_from(severity) {
        Ok(v1::Severity::Page) => "page",
        _ => "warning",
    }
}

/// What an agent's datapath could not count, by kind (the loss counters of
/// its `DatapathStats`; the no-memory splits are subsets and left out), as
/// the collector's `evenflow_agent_uncounted_total` and the CLI name them.
pub fn uncounted(d: &v1::DatapathStats) -> [(&'static str, u64); 7] {
    [
        ("packets_unparsable", d.packets_unparsable),
        ("endpoint_insert_failed", d.endpoint_insert_failed),
        ("flow_insert_failed", d.flow_insert_failed),
        ("flow_missing_on_close", d.flow_missing_on_close),
        ("sock_storage_failed", d.sock_storage_failed),
        ("syns_origin_unknown", d.syns_origin_unknown),
        ("forwarded_replies_unseen", d.forwarded_replies_unseen),
    ]
}

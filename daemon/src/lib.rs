//! The plumbing both evenflow daemons (the agent and the collector) serve
//! with, written once: listeners whose errors name their flag ([`bind`]),
//! the plain-text HTTP server behind `/metrics` ([`http`]), gRPC health
//! and reflection beside each daemon's own services ([`grpc`]), TLS from
//! PEM files ([`tls`]), read again when they change ([`watch`]), label
//! escaping for the Prometheus text format ([`exposition`]), and the
//! wall-clock grid their reports and ticks keep ([`clock`]). What each
//! daemon exports stays in that daemon.

pub mod clock;
pub mod exposition;
pub mod grpc;
pub mod http;
pub mod tls;
pub mod watch;

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// A listening address that could not be bound, naming its flag.
#[derive(Debug, thiserror::Error)]
#[error("binding {flag} {addr}: {source}; pick a free address")]
pub struct BindError {
    /// The flag that gave the address (`--grpc-addr`, ...).
    pub flag: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    pub source: std::io::Error,
}

/// Binds `addr`, given by `flag`.
pub async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { flag, addr, source })
}

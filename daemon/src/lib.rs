//! The plumbing both evenflow daemons (the agent and the collector) serve
//! with, written once: listeners whose errors name their flag ([`bind`]),
//! the plain-text HTTP server behind `/metrics` ([`http`]), gRPC health
//! and reflection beside each daemon's own services ([`grpc`]), TLS from
//! PEM files ([`tls`]), read again when they change ([`watch`]), their own
//! logs ([`log`]), label
//! escaping for the Prometheus text format ([`exposition`]), and the
//! wall-clock grid their reports and ticks keep ([`clock`]). What each
//! daemon exports stays in that daemon. The collector's URL, as the
//! agent's and the CLI's `--collector` take it ([`parse_collector_url`]),
//! is checked here too, so both refuse the same input the same way.

pub mod clock;
pub mod exposition;
pub mod grpc;
pub mod http;
pub mod log;
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

/// A collector's URL as `--collector` takes it (the agent's and the
/// CLI's): http:// or https://, a host, and what the connection will
/// parse, refused at the flag rather than at every reconnect.
pub fn parse_collector_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| {
            format!("collector URL `{s}` must start with http:// or https:// (http://{s}?)")
        })?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!(
            "collector URL `{s}` has no host (try http://127.0.0.1:50052)"
        ));
    }
    tonic::transport::Endpoint::from_shared(s.to_owned()).map_err(|e| {
        format!("collector URL `{s}` is not a URL ({e}): write it as http://HOST:PORT")
    })?;
    Ok(s.to_owned())
}

/// Binds `addr`, given by `flag`.
pub async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { flag, addr, source })
}

#[cfg(test)]
mod tests {
    use super::parse_collector_url;

    #[test]
    fn collector_urls_need_a_scheme_and_host() {
        assert!(parse_collector_url("http://10.0.0.1:50052").is_ok());
        assert!(
            parse_collector_url("10.0.0.1:50052")
                .unwrap_err()
                .contains("http://")
        );
        assert!(parse_collector_url("http://").is_err());
        for bad in ["http://col lector:50052", "http://[::1"] {
            let err = parse_collector_url(bad).unwrap_err();
            assert!(err.contains("is not a URL"), "{bad}: {err}");
        }
    }
}

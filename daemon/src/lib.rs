//! The plumbing both evenflow daemons (the agent and the collector) serve
//! with, written once: listeners whose errors name their flag ([`bind`]),
//! the plain-text HTTP server behind `/metrics` ([`http`]), gRPC health
//! and reflection beside each daemon's own services ([`grpc`]), TLS from
//! PEM files ([`tls`]), read again when they change ([`watch`]), their own
//! logs ([`log`]), label escaping for the Prometheus text format
//! ([`exposition`]), and the wall-clock grid their reports and ticks keep
//! ([`clock`]). What each daemon exports stays in that daemon. The
//! collector's URL and the reading interval, as the agent's and the CLI's
//! flags take them ([`parse_collector_url`], [`parse_interval`]), are
//! checked here too, so both refuse the same input the same way.

pub mod clock;
pub mod exposition;
pub mod grpc;
pub mod http;
pub mod log;
pub mod tls;
pub mod watch;

use std::{net::SocketAddr, time::Duration};

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

/// An interval as the agent's `--interval` and the CLI's `top --interval`
/// take it: 100ms to 1h. Shorter would read or ask without pause (a CLI
/// refresh of 0 never yields to the keyboard); longer is no live view, and
/// a deadline past what a clock holds cannot be computed.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (try 1s or 500ms)"))?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("interval {s} must be between 100ms and 1h"));
    }
    Ok(d)
}

/// Binds `addr`, given by `flag`.
pub async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { flag, addr, source })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{parse_collector_url, parse_interval};

    #[test]
    fn intervals_are_bounded() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_interval("1ms").is_err());
        assert!(parse_interval("soon").is_err());
        assert!(parse_interval("1000000years").is_err());
    }

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

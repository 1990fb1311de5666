//! `--embedded-collector ADDR`: a collector inside the agent process, so one
//! process is enough to try evenflow on one host.
//!
//! The collector's configuration is typed and filled here: the collector's
//! defaults, its gRPC listener on ADDR and its `/metrics` on the same IP,
//! port 9465. Nothing else of the agent's reaches it — not its flags, and
//! not its environment, although several `EVENFLOW_*` variables have the
//! same names in both daemons (`EVENFLOW_INTERVAL`, `EVENFLOW_GRPC_ADDR`,
//! `EVENFLOW_TLS_CERT`, ...) and mean different things: the agent's client
//! certificate is not a server certificate, its read interval is not a
//! detection tick.
//!
//! Built only with the cargo feature `embedded-collector` (on by default,
//! off in the node image: see `agent/Cargo.toml`).

use std::net::{IpAddr, SocketAddr};

/// Why `--embedded-collector` cannot be used in a build without the
/// collector, and what to do instead.
pub const MISSING: &str = "this agent is built without the embedded collector (cargo feature \
    `embedded-collector`, left out of the node image): run evenflow-collector and pass \
    --collector http://HOST:50052";

/// The URL the agent streams its reports to when the collector runs in
/// its own process: a wildcard listen address is reached on loopback.
pub fn url(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

#[cfg(feature = "embedded-collector")]
pub use with_collector::*;

#[cfg(feature = "embedded-collector")]
mod with_collector {
    use std::net::SocketAddr;

    use anyhow::{Context as _, Result};
    use evenflow_collector::service::{config::Config, server};
    use tracing::info;

    /// The port of the embedded collector's `/metrics`, beside its gRPC IP.
    pub const METRICS_PORT: u16 = 9465;

    /// The embedded collector's configuration for a gRPC listener on
    /// `addr`: the collector's defaults otherwise.
    pub fn config(addr: SocketAddr) -> Config {
        Config {
            grpc_addr: addr,
            metrics_addr: SocketAddr::new(addr.ip(), METRICS_PORT),
            ..Config::default()
        }
    }

    /// A collector running in this process.
    pub struct Collector(server::Running);

    impl Collector {
        /// Stops it.
        pub async fn shutdown(self) {
            self.0.shutdown().await;
        }
    }

    /// Starts a collector in this process, listening on `addr`.
    pub async fn start(addr: SocketAddr) -> Result<Collector> {
        let cfg = config(addr);
        let running = server::start(&cfg)
            .await
            .with_context(|| format!("starting the embedded collector on {addr}"))?;
        info!(%addr, metrics = %cfg.metrics_addr, "embedded collector running");
        Ok(Collector(running))
    }
}

#[cfg(not(feature = "embedded-collector"))]
pub use without_collector::*;

#[cfg(not(feature = "embedded-collector"))]
mod without_collector {
    use std::net::SocketAddr;

    use anyhow::Result;

    use super::MISSING;

    /// Never built: see [`MISSING`].
    pub enum Collector {}

    impl Collector {
        pub async fn shutdown(self) {
            match self {}
        }
    }

    /// Refuses: this build has no collector to start. The flag is refused
    /// when parsed (`cli`), so this is never reached from the command line.
    pub async fn start(_addr: SocketAddr) -> Result<Collector> {
        anyhow::bail!(MISSING)
    }
}

#[cfg(all(test, feature = "embedded-collector"))]
mod tests {
    use std::{process::Command, time::Duration};

    use clap::Parser as _;
    use evenflow_collector::service::config::Config;

    use super::*;

    const NAME: &str =
        "embedded::tests::the_agents_environment_never_reaches_the_embedded_collector";
    /// Set for the copy of this test that runs with the agent's settings in
    /// its environment.
    const CHILD: &str = "EVENFLOW_TEST_EMBEDDED_CHILD";

    #[test]
    fn the_agents_environment_never_reaches_the_embedded_collector() {
        if std::env::var_os(CHILD).is_none() {
            // Rerun this one test in a process of its own with the agent's
            // settings in the environment: setting them in this process
            // would race with the other tests' threads reading it.
            let out = Command::new(std::env::current_exe().expect("the test binary"))
                .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD, "1")
                .env("EVENFLOW_INTERVAL", "7s")
                .env("EVENFLOW_GRPC_ADDR", "0.0.0.0:7051")
                .env("EVENFLOW_METRICS_ADDR", "0.0.0.0:7464")
                .env("EVENFLOW_TLS_CERT", "/etc/evenflow/agent.pem")
                .env("EVENFLOW_TLS_KEY", "/etc/evenflow/agent.key")
                .output()
                .expect("the test binary runs");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{stdout}");
            assert!(
                stdout.contains("1 passed"),
                "the child ran no test: {stdout}"
            );
            return;
        }
        // The environment really carries the agent's settings: the
        // collector's own flag parsing would take them...
        let from_env = Config::try_parse_from(["evenflow-collector"]).expect("flags");
        assert_eq!(from_env.interval, Duration::from_secs(7));
        assert!(from_env.tls_cert.is_some());
        // ...but the embedded collector gets its defaults and its address.
        let addr: SocketAddr = "127.0.0.1:50052".parse().expect("addr");
        let cfg = config(addr);
        assert_eq!(
            cfg,
            Config {
                grpc_addr: addr,
                metrics_addr: "127.0.0.1:9465".parse().expect("addr"),
                ..Config::default()
            }
        );
        assert_eq!(cfg.interval, Duration::from_secs(1));
        assert_eq!((cfg.tls_cert, cfg.tls_key), (None, None));
    }

    #[test]
    fn a_wildcard_address_is_reached_on_loopback() {
        assert_eq!(
            url("0.0.0.0:50052".parse().expect("addr")),
            "http://127.0.0.1:50052"
        );
        assert_eq!(
            url("10.0.0.1:50052".parse().expect("addr")),
            "http://10.0.0.1:50052"
        );
    }
}

//! Connecting to the collector's `evenflow.v1.Distribution` API.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use evenflow_proto::v1::distribution_client::DistributionClient;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a unary call (a pool, the pools, the agents, the alerts) may
/// take: the collector answers from its last tick, so one that has not
/// answered by then is stalled, and the command says so instead of
/// waiting for ever.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The collector to ask: its URL and, for an https:// one, the TLS the
/// connection speaks.
#[derive(Clone, Debug)]
pub struct Collector {
    url: String,
    tls: Option<ClientTlsConfig>,
}

impl Collector {
    /// A plaintext collector (`http://`), for tests.
    #[cfg(test)]
    pub fn plain(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            tls: None,
        }
    }

    /// The collector at `url`: with https://, verified with the CA bundle
    /// `ca` and, where the collector requires client certificates, shown
    /// `identity` (certificate, key). The files are read and checked now,
    /// so a wrong one is named before any call. TLS files with an http://
    /// URL are refused rather than ignored: the caller believes the
    /// connection is protected.
    pub fn new(url: &str, ca: Option<&Path>, identity: Option<(&Path, &Path)>) -> Result<Self> {
        let https = url.starts_with("https://");
        if !https && (ca.is_some() || identity.is_some()) {
            bail!(
                "--tls-ca, --tls-cert and --tls-key need an https:// --collector, not {url} \
                 (write https://...)"
            );
        }
        // This build trusts no system roots: the collector's CA is named.
        if https && ca.is_none() {
            bail!(
                "an https:// --collector needs --tls-ca FILE: the PEM CA bundle that signed the \
                 collector's certificate (EVENFLOW_CLI_TLS_CA)"
            );
        }
        let tls = https
            .then(|| evenflow_daemon::tls::client(ca, identity))
            .transpose()?;
        Ok(Self {
            url: url.to_owned(),
            tls,
        })
    }

    /// The URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Connects for unary calls, each of which fails after [`CALL_TIMEOUT`],
/// with an error that says what to check.
pub async fn connect(collector: &Collector) -> Result<DistributionClient<Channel>> {
    open(collector, endpoint(collector)?.timeout(CALL_TIMEOUT)).await
}

/// Connects for a stream (WatchAlerts), which may stay quiet for as long
/// as nothing happens: no call timeout.
pub async fn connect_for_stream(collector: &Collector) -> Result<DistributionClient<Channel>> {
    open(collector, endpoint(collector)?).await
}

/// Whether a call failed for want of an answer within [`CALL_TIMEOUT`].
pub fn timed_out(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Cancelled
        && status.message() == tonic::TimeoutExpired(()).to_string()
}

/// A failed call as an error, a timeout and a broken connection said in
/// words.
pub fn call_error(status: tonic::Status) -> anyhow::Error {
    if timed_out(&status) {
        anyhow::anyhow!(
            "the collector did not answer within {}s: is it stalled or overloaded?",
            CALL_TIMEOUT.as_secs()
        )
    } else if status.code() == tonic::Code::Unknown && status.message() == "transport error" {
        // With TLS 1.3 the client's side of the handshake ends before the
        // collector has checked the client's certificate: one it refuses
        // breaks the connection at the first call, not at connecting. An
        // HTTP/1 server (the collector's /metrics) breaks it the same way,
        // and so does a TLS listener asked in plaintext when its close
        // wins the race with its TLS alert (else see the h2 case below).
        anyhow::Error::from(status).context(
            "the connection to the collector broke: it restarted; or --collector names a port \
             that is not its gRPC one (50052, not /metrics' 9465); or it requires client \
             certificates and refused this one (--tls-cert, --tls-key); or it serves TLS and \
             was asked in plaintext (write https:// and give --tls-ca)",
        )
    } else if status.code() == tonic::Code::Internal
        && status.message().starts_with("h2 protocol error")
    {
        // A TLS listener asked in plaintext answers with a TLS alert, which
        // HTTP/2 reads as a malformed frame.
        anyhow::Error::from(status).context(
            "the collector's port did not answer as a gRPC server: if it serves TLS, write \
             https:// and give --tls-ca; else check that --collector names its gRPC port \
             (50052), not its /metrics port (9465)",
        )
    } else {
        status.into()
    }
}

/// A live stream (`alerts --watch`) that failed after it started: the
/// collector went away under it, said in words.
pub fn stream_error(status: tonic::Status) -> anyhow::Error {
    anyhow::Error::from(status).context(
        "the collector ended the stream (it restarted, stopped or was replaced): run the \
         command again",
    )
}

fn endpoint(collector: &Collector) -> Result<Endpoint> {
    let url = &collector.url;
    let endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| {
            format!("collector URL `{url}` is not a valid URI (try http://127.0.0.1:50052)")
        })?
        .connect_timeout(CONNECT_TIMEOUT);
    match &collector.tls {
        Some(tls) => {
            (endpoint.tls_config(tls.clone())).with_context(|| format!("setting up TLS for {url}"))
        }
        None => Ok(endpoint),
    }
}

async fn open(collector: &Collector, endpoint: Endpoint) -> Result<DistributionClient<Channel>> {
    let url = &collector.url;
    let channel = endpoint.connect().await.with_context(|| {
        let tls = if collector.tls.is_some() {
            " Or the TLS handshake failed: does --tls-ca hold the CA that signed its \
             certificate, and, if it requires client certificates, do --tls-cert and \
             --tls-key hold one its client CA signed?"
        } else {
            ""
        };
        format!(
            "cannot reach the collector at {url}: is evenflow-collector running? \
             (set --collector or EVENFLOW_COLLECTOR){tls}"
        )
    })?;
    Ok(DistributionClient::new(channel))
}

/// A collector that accepts connections and never answers (stalled, or
/// something else on its port), for tests.
#[cfg(test)]
pub mod stalled {
    /// Listens on a free port, accepting and holding every connection;
    /// returns it as a collector to ask and the task (the listener lives as long as it).
    pub async fn collector() -> (super::Collector, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        (super::Collector::plain(&url), task)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use evenflow_proto::v1;

    use super::*;

    /// A unary call to a collector that never answers ends, with an
    /// error, instead of waiting for ever.
    #[tokio::test]
    async fn a_call_to_a_collector_that_never_answers_ends() {
        let (collector, _task) = stalled::collector().await;
        let start = Instant::now();
        let call = async {
            connect(&collector)
                .await?
                .list_pools(v1::ListPoolsRequest {})
                .await
                .map_err(call_error)
        };
        let ended = tokio::time::timeout(Duration::from_secs(15), call).await;
        assert!(
            matches!(ended, Ok(Err(_))),
            "after {:?}: {ended:?}",
            start.elapsed()
        );
        let text = format!(
            "{:#}",
            call_error(tonic::Status::cancelled("Timeout expired"))
        );
        assert!(text.contains("did not answer within 10s"), "{text}");
    }

    /// TLS flags are refused where they would be ignored (http://), and
    /// https:// is refused without the CA to verify the collector with:
    /// each error names the flag that fixes it.
    #[test]
    fn tls_flags_and_the_url_must_agree() {
        let err = |url: &str, ca: Option<&str>, id: Option<(&str, &str)>| {
            let id = id.map(|(c, k)| (Path::new(c), Path::new(k)));
            match Collector::new(url, ca.map(Path::new), id) {
                Ok(_) => panic!("{url} {ca:?} accepted"),
                Err(e) => format!("{e:#}"),
            }
        };
        let e = err("http://c:50052", Some("/ca.pem"), None);
        assert!(e.contains("need an https:// --collector"), "{e}");
        let e = err("http://c:50052", None, Some(("/c.pem", "/k.pem")));
        assert!(e.contains("need an https:// --collector"), "{e}");
        let e = err("https://c:50052", None, None);
        assert!(e.contains("needs --tls-ca FILE"), "{e}");
        let e = err("https://c:50052", Some("/nonexistent/ca.pem"), None);
        assert!(
            e.contains("/nonexistent/ca.pem"),
            "the missing file is named: {e}"
        );
        assert!(Collector::new("http://c:50052", None, None).is_ok());
    }
}

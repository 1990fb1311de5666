//! Connecting to the collector's `evenflow.v1.Distribution` API.

use std::time::Duration;

use anyhow::{Context as _, Result};
use evenflow_proto::v1::distribution_client::DistributionClient;
use tonic::transport::{Channel, Endpoint};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a unary call (a pool, the pools, the agents, the alerts) may
/// take: the collector answers from its last tick, so one that has not
/// answered by then is stalled, and the command says so instead of
/// waiting for ever.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects for unary calls, each of which fails after [`CALL_TIMEOUT`],
/// with an error that says what to check.
pub async fn connect(url: &str) -> Result<DistributionClient<Channel>> {
    open(url, endpoint(url)?.timeout(CALL_TIMEOUT)).await
}

/// Connects for a stream (WatchAlerts), which may stay quiet for as long
/// as nothing happens: no call timeout.
pub async fn connect_for_stream(url: &str) -> Result<DistributionClient<Channel>> {
    open(url, endpoint(url)?).await
}

/// Whether a call failed for want of an answer within [`CALL_TIMEOUT`].
pub fn timed_out(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Cancelled
        && status.message() == tonic::TimeoutExpired(()).to_string()
}

/// A failed call as an error, a timeout said in words.
pub fn call_error(status: tonic::Status) -> anyhow::Error {
    if timed_out(&status) {
        anyhow::anyhow!(
            "the collector did not answer within {}s: is it stalled or overloaded?",
            CALL_TIMEOUT.as_secs()
        )
    } else {
        status.into()
    }
}

fn endpoint(url: &str) -> Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_owned())
        .with_context(|| {
            format!("collector URL `{url}` is not a valid URI (try http://127.0.0.1:50052)")
        })?
        .connect_timeout(CONNECT_TIMEOUT))
}

async fn open(url: &str, endpoint: Endpoint) -> Result<DistributionClient<Channel>> {
    let channel = endpoint.connect().await.with_context(|| {
        format!(
            "cannot reach the collector at {url}: is evenflow-collector running? \
             (set --collector or EVENFLOW_COLLECTOR)"
        )
    })?;
    Ok(DistributionClient::new(channel))
}

/// A collector that accepts connections and never answers (stalled, or
/// something else on its port), for tests.
#[cfg(test)]
pub mod stalled {
    /// Listens on a free port, accepting and holding every connection;
    /// returns its URL and the task (the listener lives as long as it).
    pub async fn collector() -> (String, tokio::task::JoinHandle<()>) {
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
        (url, task)
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
        let (url, _collector) = stalled::collector().await;
        let start = Instant::now();
        let call = async {
            connect(&url)
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
}

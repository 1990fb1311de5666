//! Connecting to the collector's `evenflow.v1.Distribution` API.

use anyhow::{Context as _, Result};
use evenflow_proto::v1::distribution_client::DistributionClient;
use tonic::transport::Channel;

/// Connects, with an error that says what to check.
pub async fn connect(url: &str) -> Result<DistributionClient<Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .with_context(|| {
            format!("collector URL `{url}` is not a valid URI (try http://127.0.0.1:50052)")
        })?
        .connect_timeout(std::time::Duration::from_secs(3));
    let channel = endpoint.connect().await.with_context(|| {
        format!(
            "cannot reach the collector at {url}: is evenflow-collector running? \
             (set --collector or EVENFLOW_COLLECTOR)"
        )
    })?;
    Ok(DistributionClient::new(channel))
}

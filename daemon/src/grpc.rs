//! What every evenflow gRPC listener serves beside its own services:
//! `grpc.health.v1` and server reflection, in both protocol versions
//! (grpcurl 1.8 speaks only v1alpha), so `grpcurl -plaintext HOST:PORT
//! list` and `describe` work against agents and collectors alike.

use tonic::transport::{Server, server::Router};
use tonic_health::server::HealthReporter;

/// Reflection could not be built from the embedded descriptors.
#[derive(Debug, thiserror::Error)]
#[error("building gRPC reflection: {0}")]
pub struct ReflectionError(#[from] tonic_reflection::server::Error);

/// A router on `server` that already serves health and reflection, and
/// the reporter through which the caller marks its own services serving.
/// Reflection lists `services` (the names of those the caller adds, e.g.
/// `evenflow.v1.Node`) beside its own and health's.
pub fn health_and_reflection(
    server: &mut Server,
    services: &[&str],
) -> Result<(HealthReporter, Router), ReflectionError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = || evenflow_proto::reflection(services);
    let router = server
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    Ok((reporter, router))
}

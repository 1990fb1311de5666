//! evenflow's gRPC API, package `evenflow.v1`.
//!
//! The `.proto` files under `proto/` are the source of truth; this crate is
//! the code tonic and prost generate from them, plus the encoded descriptor
//! set servers register for reflection.

/// Package `evenflow.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("evenflow.v1");
}

/// Encoded `FileDescriptorSet` of every evenflow `.proto`, for
/// `tonic_reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("evenflow_descriptor");

/// What every listener serves beside its own services: health and
/// reflection, in both of reflection's protocol versions.
pub const COMMON_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// A reflection builder that describes every evenflow message and service
/// and `grpc.health.v1`, and lists the services a listener serves:
/// `services` (its own, e.g. `evenflow.v1.Node`) and [`COMMON_SERVICES`].
/// So `grpcurl -plaintext HOST:PORT list` on a port says what that port
/// answers, where listing every service of the descriptors would name the
/// collector's on an agent's port. Build it twice: `build_v1()` for
/// current clients, `build_v1alpha()` for grpcurl 1.8.
pub fn reflection(services: &[&str]) -> tonic_reflection::server::Builder<'static> {
    let builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    (COMMON_SERVICES.iter().chain(services)).fold(builder, |b, s| b.with_service_name(*s))
}

/// Most endpoints one `AgentReport` may carry: a collector refuses a
/// report with more, so an agent that reports keeps its endpoints (live
/// and held) within it.
pub const MAX_REPORT_ENDPOINTS: usize = 200_000;

pub mod codec;
pub mod names;

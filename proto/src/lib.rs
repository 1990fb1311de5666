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

/// A reflection builder that knows every evenflow service and
/// `grpc.health.v1`, so `grpcurl -plaintext HOST:PORT list` and `describe`
/// work against agents and collectors alike. Build it twice: `build_v1()`
/// for current clients, `build_v1alpha()` for grpcurl 1.8.
pub fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Most endpoints one `AgentReport` may carry: a collector refuses a
/// report with more, so an agent that reports keeps its endpoints (live
/// and held) within it.
pub const MAX_REPORT_ENDPOINTS: usize = 200_000;

pub mod codec;
pub mod names;

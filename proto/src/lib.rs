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

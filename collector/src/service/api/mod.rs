//! The collector's thin adapters: gRPC ([`ingest`], [`query`]) and HTTP
//! ([`metrics`]). Each trait method is one line over a handler function
//! that does the work and returns `Result`.

pub mod ingest;
pub mod metrics;
pub mod query;

//! evenflow's collector: ingests every agent's report stream, groups
//! backends into pools, judges each pool's traffic shares, and serves the
//! results (gRPC `evenflow.v1.Distribution`, alert streams, Alertmanager
//! webhooks, Prometheus `/metrics`).

pub mod detect;
pub mod fxhash;
pub mod parallel;
pub mod service;

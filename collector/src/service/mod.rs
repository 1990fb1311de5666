//! The collector service: ingest of agent report streams, pool formation,
//! the detection tick around [`crate::detect`], the query API, alerts,
//! webhooks and /metrics.
//!
//! Modules: [`agents`] (per-agent state, deltas, validation), [`poolfile`]
//! (`--pools FILE`), [`kube`] (pools from Kubernetes Services and
//! EndpointSlices), [`declared`] (the pool file and Kubernetes merged, and
//! their precedence), [`pools`] (the grouping rule), [`engine`] (the tick),
//! [`ingest`] (`evenflow.v1.Ingest`), [`query`] (`evenflow.v1.Distribution`),
//! [`metrics`] (`/metrics`), [`webhook`] (Alertmanager v2), [`config`]
//! (flags), [`server`] (starts everything).

pub mod agents;
pub mod config;
pub mod declared;
pub mod engine;
pub mod fxhash;
pub mod ingest;
pub mod kube;
pub mod metrics;
pub mod poolfile;
pub mod pools;
pub mod query;
pub mod server;
pub mod tls;
pub mod webhook;

//! The collector service, laid out by the path data takes:
//!
//! * [`ingest`]: a report is validated, applied to its agent's state and
//!   kept in the registry; `rates` hands each agent's counts to the tick.
//! * [`pools`]: the tick's agents grouped into pools, from the sources
//!   [`declared`] merges ([`poolfile`], [`kube`]) and what agents announce.
//! * [`tick`]: every interval, take → build → evaluate ([`crate::detect`])
//!   → publish.
//! * [`publish`]: judged pools and alerts as the API's messages (every
//!   conversion to proto in `publish::convert`), alert logging and
//!   streaming, [`webhook`]s (Alertmanager v2).
//! * [`api`]: thin gRPC and HTTP adapters (`evenflow.v1.Ingest`,
//!   `evenflow.v1.Distribution`, `/metrics`).
//!
//! [`shared`] is what they share, [`config`] the flags, [`server`] starts
//! everything. What the collector serves with and the agent too
//! (listeners, the `/metrics` HTTP server, health and reflection, TLS) is
//! the `evenflow-daemon` crate.

pub mod api;
pub mod config;
pub mod declared;
pub mod ingest;
pub mod kube;
pub mod poolfile;
pub mod pools;
pub mod publish;
pub mod server;
pub mod shared;
pub mod tick;
pub mod webhook;

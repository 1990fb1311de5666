//! Pools from Kubernetes (`--kubernetes`, `--kubeconfig`): one per Service
//! port, its members the Service's EndpointSlice addresses, matched to what
//! agents report by address and port, so agents need no `--service` labels.
//!
//! Modules: [`watch`] (kube-rs watchers and reflector stores, the only part
//! that talks to the API), [`catalog`] (Services, EndpointSlices and Node
//! zones to pools: the rules, pure), [`declare`] (catalog to declared pools
//! at a given time: the drain grace). The pool builder
//! ([`crate::service::pools`]) treats the result like the pool file, with the
//! precedence in [`crate::service::declared`].

pub mod catalog;
pub mod declare;
pub mod watch;

pub use declare::{KubeDeclared, KubePools};
pub use watch::{KubeError, Options, start};

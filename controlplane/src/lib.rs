//! # controlplane
//!
//! An istiod stand-in for places without Kubernetes: it reads the Kubernetes YAML a user would
//! `kubectl apply` (a watched directory), translates it exactly as istiod does for ztunnel, and
//! serves it over delta xDS together with an Istio-compatible CA on one gRPC/TLS port (15012).
//!
//! It is an app: it may use the libraries (`proto`, `hbone`, `identity`) but no other app.

pub mod ca_server;
pub mod cli;
pub mod k8s;
pub mod serve;
pub mod snapshot;
pub mod state_dir;
pub mod status;
pub mod tokens;
pub mod translate;
pub mod xds_server;

pub use snapshot::Snapshot;

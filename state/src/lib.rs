//! The node proxy's view of the mesh: workloads, services and L4 authorization policies, with
//! Istio ztunnel's semantics for lookups, load balancing and authorization.
//!
//! What this crate owns:
//!
//! - [`model`]: the internal model ([`Workload`], [`Service`], [`Policy`]) built from the
//!   `istio.workload.Address` and `istio.security.Authorization` protobufs with `TryFrom`
//!   (typed [`ConversionError`] naming the field), serializable for `/config_dump`;
//! - [`store`]: [`MeshState`], a single-writer/many-reader store with the indexes lookups need
//!   (workload by uid / network IP / pod name, service by key / VIP / CIDR VIP / hostname,
//!   endpoints derived from workloads, policies applicable to a workload), change notification
//!   and the config dump;
//! - [`authz`]: L4 authorization at the destination ([`authorize`]);
//! - [`lb`] and [`resolve`]: outbound destination selection as a pure decision
//!   ([`resolve_outbound`] → [`Decision`]) with an injected RNG;
//! - [`local`]: the `LOCAL_XDS_PATH` / `LOCAL_XDS` static configuration format.
//!
//! What it must not do: depend on an app crate (`ztunnel`, `waypoint`, ...) or on the `xds` /
//! `identity` crates. It may use only the `proto` and `hbone` project crates (`layers.toml`).
//! It performs no I/O besides reading a static config file: the xDS client feeds it, the proxy
//! reads it and acts on its decisions.

pub mod authz;
pub mod lb;
pub mod local;
pub mod model;
pub mod resolve;
pub mod store;

#[cfg(test)]
mod testutil;

pub use authz::{AuthzDecision, AuthzOutcome, ConnectionInfo, DryRunMatch, authorize};
pub use local::{LocalConfig, LocalConfigError};
pub use model::{ConversionError, Policy, Service, Workload};
pub use resolve::{Decision, DestinationInfo, GatewayTarget, resolve_outbound, resolved};
pub use store::{Endpoint, Generation, MeshState, MeshView, StateOptions};

//! # identity
//!
//! Workload certificates for the mesh: everything between a SPIFFE identity and the
//! certificate the HBONE tunnel presents.
//!
//! What it owns:
//! * [`ca`]: [`CaSigner`], the certificate authority (self-signed, persisted, or an Istio
//!   plug-in CA) that signs workload CSRs for the authenticated identity and issues the
//!   control plane's serving certificate. The control plane's gRPC CA server calls it.
//! * [`client`]: [`CaClient`], Istio's `IstioCertificateService/CreateCertificate` over
//!   gRPC+TLS, with ztunnel's request shape (fresh P-256 key, URI-SAN CSR, bearer token re-read
//!   per call, `clusterid`, impersonation in node-agent mode) and strict response checks.
//! * [`manager`]: [`CertManager`], one certificate per local identity: fetch on first need,
//!   prefetch, refresh at half life, bounded and prioritised CSR concurrency, per-identity
//!   backoff, a debug snapshot and metrics. It implements [`hbone::CertificateSource`], so the
//!   tunnel asks it for the current certificate on every handshake.
//! * [`bundle`]: [`TrustBundle`], root certificates from a file, reloaded when it changes.
//!
//! Layering: a library above the leaves `proto` (the CA's protobufs) and `hbone` (identities,
//! `WorkloadCertificate`, `CertificateSource`). It must not depend on any app (`ztunnel`,
//! `waypoint`, `controlplane`, ...) nor on `xds`; apps and `xds` depend on it.

pub mod bundle;
pub mod ca;
pub mod client;
pub mod manager;
mod pem;
pub mod source;
mod time;

pub use bundle::{BundleError, Roots, TrustBundle};
pub use ca::{CaError, CaSigner, ServingCert};
pub use client::{CaClient, CaClientConfig, CaClientError, Mode, RootCert, TokenSource};
pub use manager::{
    Backoff, CertManager, CertSnapshot, CertState, CertificateProvider, ManagerConfig, Priority,
};

#[cfg(test)]
mod tests {
    /// The control plane shares a signer across gRPC handlers; proxies share the rest.
    #[test]
    fn public_types_are_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<super::CaSigner>();
        check::<super::CaClient>();
        check::<super::CertManager>();
        check::<super::TrustBundle>();
        check::<super::CaClientError>();
        check::<super::CaError>();
    }
}

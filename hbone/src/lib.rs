//! # hbone
//!
//! HBONE is how the ambient mesh carries TCP between nodes: HTTP/2 `CONNECT` tunnels inside
//! mutual TLS on port 15008, one HTTP/2 stream per proxied TCP connection. This crate is the
//! tunnel library both the node proxy (`ztunnel`) and the waypoint use, wire-compatible with
//! Istio's ztunnel and with Envoy.
//!
//! What it owns:
//! * [`Identity`]: SPIFFE workload identities;
//! * [`tls`]: the mutual-TLS profile (TLS 1.3, AES-GCM, ALPN `h2`, no SNI) and the identity
//!   checks on both sides; [`crl`]: revocation lists checked in those handshakes;
//! * [`Server`]: accepts HBONE connections and hands each CONNECT stream to a [`Handler`];
//! * [`Pool`]: the client, pooling connections by (source, expected peers, destination,
//!   source IP); [`Pool::connect_double`] nests a tunnel inside a pooled one (double HBONE,
//!   through a network gateway);
//! * [`copy_bidirectional`]: the byte copy between a TCP socket and a tunnel;
//! * [`headers`] and [`authority`]: the CONNECT request's `:authority`, `forwarded`, `baggage`
//!   and `traceparent`, parsed defensively.
//!
//! What it must not do: fetch certificates (they arrive through [`CertificateSource`]), know
//! about workloads, policies or xDS. It depends on no other crate of the project.

pub mod authority;
pub mod cert;
pub mod client;
pub mod config;
pub mod copy;
pub mod crl;
mod double;
pub mod error;
pub mod headers;
pub mod identity;
mod keepalive;
pub mod server;
pub mod stream;
pub mod tls;

pub use authority::Authority;
pub use cert::{CertError, CertificateSource, StaticCertificate, WorkloadCertificate};
pub use client::{ConnectRequest, DefaultDialer, Dialer, Pool, PoolKey, PoolStats, Tunnel};
pub use config::{ClientSettings, H2Settings, ServerSettings};
pub use copy::{Transferred, copy_bidirectional, copy_tcp};
pub use crl::Revocations;
pub use double::InnerRequest;
pub use error::Error;
pub use identity::{Identity, IdentityError};
pub use server::{Handler, InboundRequest, Server};
pub use stream::H2Stream;
pub use tls::{PeerCertError, TlsSettings};

/// The HBONE port.
pub const HBONE_PORT: u16 = 15008;

//! Errors of the HBONE client, each naming which side and which step failed.

use std::net::SocketAddr;
use std::time::Duration;

use crate::cert::CertError;
use crate::tls::PeerCertError;

/// Why a tunnel could not be opened or broke.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no certificate for the source workload: {0}")]
    Certificate(#[from] CertError),
    #[error("TCP connect to {dst} failed: {source}")]
    Connect {
        dst: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "TCP connect to {dst} timed out after {timeout:?}; is a NetworkPolicy blocking HBONE port 15008?"
    )]
    ConnectTimeout { dst: SocketAddr, timeout: Duration },
    #[error("TLS handshake with {dst} failed: {reason}")]
    Tls { dst: SocketAddr, reason: String },
    #[error("TLS handshake with {dst} timed out after {timeout:?}")]
    TlsTimeout { dst: SocketAddr, timeout: Duration },
    #[error("TLS handshake with {dst} refused the peer: {source}")]
    PeerIdentity {
        dst: SocketAddr,
        #[source]
        source: PeerCertError,
    },
    #[error("server {dst} did not negotiate ALPN h2")]
    NoH2 { dst: SocketAddr },
    #[error("HTTP/2 handshake with {dst} failed: {source}")]
    H2Handshake {
        dst: SocketAddr,
        #[source]
        source: h2::Error,
    },
    #[error("HTTP/2 connection to {dst} is no longer usable: {source}")]
    H2Connection {
        dst: SocketAddr,
        #[source]
        source: h2::Error,
    },
    #[error("HTTP/2 stream to {authority} via {dst} failed: {source}")]
    H2Stream {
        dst: SocketAddr,
        authority: String,
        #[source]
        source: h2::Error,
    },
    #[error("CONNECT {authority} via {dst} was answered with HTTP status {status}")]
    ConnectStatus {
        dst: SocketAddr,
        authority: String,
        status: u16,
    },
    #[error("invalid CONNECT request for {authority:?}: {reason}")]
    BadRequest { authority: String, reason: String },
    /// Double HBONE: the outer tunnel to the network gateway is up, the inner one failed.
    #[error("inner tunnel to {authority} through network gateway {gateway} failed: {source}")]
    Inner {
        gateway: SocketAddr,
        authority: String,
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// The Istio response flag that classifies this failure in metrics and access logs.
    pub fn response_flag(&self) -> &'static str {
        match self {
            Error::Certificate(_) => "IDENTITY_ERROR",
            Error::ConnectTimeout { .. } => "NETWORK_POLICY",
            Error::Tls { .. } | Error::TlsTimeout { .. } | Error::PeerIdentity { .. } => {
                "TLS_FAILURE"
            }
            Error::NoH2 { .. } | Error::H2Handshake { .. } => "H2_HANDSHAKE_FAILURE",
            Error::Inner { source, .. } => source.response_flag(),
            _ => "CONNECT",
        }
    }
}

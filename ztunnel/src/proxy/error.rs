//! Why a proxied connection failed, classified in one place: the response flag (metrics and
//! access logs) and the HBONE status (inbound) both come from [`ProxyError`].

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::StatusCode;

use super::telemetry::ResponseFlag;

/// A failure of one proxied connection. Messages say what to check.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("could not read the original destination: {0}")]
    OriginalDst(#[source] io::Error),
    #[error("{dst} is one of the proxy's own ports; refusing to loop")]
    IllegalPort { dst: SocketAddr },
    #[error(
        "local workload {workload} not found in the mesh state after {waited:?}; is it known to the control plane?"
    )]
    UnknownLocalWorkload { workload: String, waited: Duration },
    #[error("connection arrived on {ip}, which is not an address of local workload {uid}")]
    NotLocal { ip: IpAddr, uid: String },
    #[error(
        "CONNECT target {authority} is not served by this workload (connection arrived on {local})"
    )]
    BadDestination { authority: String, local: IpAddr },
    #[error("CONNECT target {authority} names no known service port")]
    UnresolvedTarget { authority: String },
    #[error("service {service} has no healthy endpoint for port {port}")]
    NoHealthyUpstream { service: String, port: u16 },
    #[error("waypoint or gateway {0} could not be resolved")]
    UnknownWaypoint(String),
    #[error("upstream {hostname} is known only by hostname and did not resolve: {reason}")]
    OnDemandDns { hostname: String, reason: String },
    #[error("authorization denied: {reason}")]
    Denied { reason: String },
    #[error("connection closed after an authorization policy change: {reason}")]
    LateDenied { reason: String },
    #[error(transparent)]
    Hbone(#[from] hbone::Error),
    #[error("connect to {dst} failed: {source}")]
    UpstreamConnect {
        dst: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connect to {dst} timed out after {timeout:?}")]
    UpstreamTimeout { dst: SocketAddr, timeout: Duration },
    #[error("cannot preserve the original source {src} (ENABLE_ORIG_SRC=true): {source}")]
    Transparent {
        src: IpAddr,
        #[source]
        source: io::Error,
    },
    #[error("could not answer the HBONE request: {0}")]
    Respond(String),
    #[error("closed at the end of the drain period")]
    Drained,
    #[error("connection error: {0}")]
    Io(#[source] io::Error),
}

impl ProxyError {
    /// The Istio response flag of this failure.
    pub fn response_flag(&self) -> ResponseFlag {
        match self {
            ProxyError::Denied { .. } | ProxyError::LateDenied { .. } => ResponseFlag::Deny,
            ProxyError::Hbone(e) => ResponseFlag::from_hbone(e),
            _ => ResponseFlag::Connect,
        }
    }

    /// The HBONE response status for an inbound stream rejected with this error.
    pub fn http_status(&self) -> StatusCode {
        match self {
            ProxyError::BadDestination { .. } => StatusCode::BAD_REQUEST,
            ProxyError::Denied { .. } => StatusCode::UNAUTHORIZED,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let dst: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let cases: Vec<(ProxyError, ResponseFlag, u16)> = vec![
            (
                ProxyError::Denied { reason: "x".into() },
                ResponseFlag::Deny,
                401,
            ),
            (
                ProxyError::LateDenied { reason: "x".into() },
                ResponseFlag::Deny,
                503,
            ),
            (
                ProxyError::BadDestination {
                    authority: "1.2.3.4:80".into(),
                    local: dst.ip(),
                },
                ResponseFlag::Connect,
                400,
            ),
            (ProxyError::IllegalPort { dst }, ResponseFlag::Connect, 503),
            (
                ProxyError::UpstreamConnect {
                    dst,
                    source: io::ErrorKind::ConnectionRefused.into(),
                },
                ResponseFlag::Connect,
                503,
            ),
            (
                ProxyError::Hbone(hbone::Error::ConnectTimeout {
                    dst,
                    timeout: Duration::from_secs(10),
                }),
                ResponseFlag::NetworkPolicy,
                503,
            ),
        ];
        for (e, flag, status) in cases {
            assert_eq!(e.response_flag(), flag, "{e}");
            assert_eq!(e.http_status().as_u16(), status, "{e}");
        }
    }
}

//! Double HBONE (HBONE reference §5): reaching a workload on another network through that
//! network's east-west gateway.
//!
//! 1. The outer tunnel comes from the pool: mutual TLS with the gateway (the gateway's identity
//!    is expected), CONNECT `<service hostname>:<service port>`.
//! 2. Over that tunnel's bytes: a new TLS client handshake with the same certificate, this time
//!    expecting the final hop's identities (the service's SANs), and a new HTTP/2 connection
//!    that is never pooled (each inner connection belongs to one application connection).
//! 3. One CONNECT with the same authority (plus the caller's headers, e.g.
//!    `x-forwarded-network`). The gateway forwards the inner bytes without reading them, so the
//!    final hop authenticates our workload directly and the gateway sees only ciphertext.
//!
//! The inner HTTP/2 connection owns the outer tunnel: both end when the returned [`Tunnel`] is
//! dropped and the inner connection has shut down.

use http::{HeaderMap, Uri};

use crate::client::{ConnectRequest, Pool, Tunnel, establish, open_stream};
use crate::error::Error;
use crate::identity::Identity;

/// What differs between the outer and the inner CONNECT of double HBONE.
#[derive(Debug, Clone)]
pub struct InnerRequest {
    /// Identities the final hop may present (any one). Never empty: with no identity to
    /// verify, the inner handshake fails closed.
    pub expected: Vec<Identity>,
    /// Request headers of the inner CONNECT.
    pub headers: HeaderMap,
}

impl Pool {
    /// Opens a tunnel to `outer.authority` through the network gateway at `outer.destination`:
    /// an outer tunnel from the pool, and inside it an unpooled mutual-TLS HTTP/2 connection
    /// carrying one CONNECT. The returned tunnel's peer is the final hop, not the gateway.
    pub async fn connect_double(
        &self,
        outer: ConnectRequest,
        inner: InnerRequest,
    ) -> Result<Tunnel, Error> {
        let gateway = outer.destination;
        let authority = outer.authority.clone();
        let wrap = |source: Error| Error::Inner {
            gateway,
            authority: authority.clone(),
            source: Box::new(source),
        };
        if inner.expected.is_empty() {
            return Err(wrap(Error::Tls {
                dst: gateway,
                reason: "no identity to expect from the final hop (the service has no subject \
                         alt names); refusing to send the inner tunnel unverified"
                    .to_string(),
            }));
        }
        let uri: Uri = authority
            .parse()
            .map_err(|e: http::uri::InvalidUri| Error::BadRequest {
                authority: authority.clone(),
                reason: e.to_string(),
            })?;
        let source = outer.source.clone();
        let outer_tunnel = self.connect(outer).await?;
        tracing::debug!(%gateway, gateway_identity = %outer_tunnel.peer_identity, %authority,
            "outer tunnel to the network gateway is open");
        let cert = self.certificate(&source).await.map_err(wrap)?;
        let id = self.next_connection_id();
        let (conn, _settled) = establish(
            outer_tunnel.stream,
            gateway,
            &cert,
            &inner.expected,
            self.settings(),
            id,
        )
        .await
        .map_err(wrap)?;
        let request = ConnectRequest {
            source,
            expected: inner.expected,
            destination: gateway,
            source_ip: None,
            authority: authority.clone(),
            headers: inner.headers,
        };
        open_stream(conn, &request, &uri).await.map_err(wrap)
    }
}

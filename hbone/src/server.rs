//! The HBONE server: terminates mutual TLS and HTTP/2, and hands each CONNECT stream to a
//! caller-supplied [`Handler`] together with the verified peer identity.
//!
//! * Every handshake asks the [`CertificateSource`] for the server identity's current
//!   certificate, so rotation needs no restart. The identity itself can be replaced while
//!   serving ([`Server::set_identity`]: a workload's identity may only be known later); each
//!   connection keeps the certificate it negotiated and accepts peers in that certificate's
//!   trust domain.
//! * Each stream runs in its own task: a slow or stuck stream never stalls the others, and
//!   HTTP/2 flow control bounds what each may buffer.
//! * Requests that are not `CONNECT` get 400, as do unparseable authorities; the handler
//!   decides everything else (200, 401, 403, 503...). A request the handler drops without
//!   answering gets 503.
//! * [`Server::drain`] stops accepting, sends GOAWAY on every connection, lets in-flight
//!   streams finish until the deadline, then closes what is left.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use h2::server::SendResponse;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use parking_lot::Mutex;
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tracing::{Instrument, debug, info, warn};

use crate::authority::Authority;
use crate::cert::{BoxFuture, CertificateSource, WorkloadCertificate};
use crate::config::ServerSettings;
use crate::identity::Identity;
use crate::stream::H2Stream;
use crate::tls::{self, HandshakeFailure};

/// One CONNECT request received by the server.
pub struct InboundRequest {
    /// The client's verified SPIFFE identity (in the server's trust domain).
    pub peer_identity: Identity,
    /// TCP peer address of the HBONE connection.
    pub peer_addr: SocketAddr,
    /// Local address the HBONE connection arrived on.
    pub local_addr: SocketAddr,
    /// The CONNECT target.
    pub authority: Authority,
    /// All request headers (`forwarded`, `baggage`, `traceparent`, ...).
    pub headers: HeaderMap,
    /// The client's leaf certificate (DER), shared by all streams of the connection.
    pub peer_certificate: Arc<CertificateDer<'static>>,
    respond: Option<SendResponse<Bytes>>,
    recv: Option<h2::RecvStream>,
}

impl std::fmt::Debug for InboundRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundRequest")
            .field("peer_identity", &self.peer_identity)
            .field("peer_addr", &self.peer_addr)
            .field("authority", &self.authority)
            .finish()
    }
}

impl InboundRequest {
    /// Answers 200 (with optional extra response headers) and returns the tunnel.
    pub fn accept(mut self, headers: HeaderMap) -> Result<H2Stream, h2::Error> {
        let (mut respond, recv) = (
            self.respond.take().expect("request answered twice"),
            self.recv.take().expect("request answered twice"),
        );
        let mut response = Response::new(());
        *response.headers_mut() = headers;
        let send = respond.send_response(response, false)?;
        Ok(H2Stream::new(send, recv, None))
    }

    /// Answers with a non-200 status and ends the stream.
    pub fn reject(mut self, status: StatusCode) {
        if let Some(respond) = self.respond.take() {
            send_status(respond, status);
        }
    }
}

impl Drop for InboundRequest {
    fn drop(&mut self) {
        if let Some(respond) = self.respond.take() {
            send_status(respond, StatusCode::SERVICE_UNAVAILABLE);
        }
    }
}

fn send_status(mut respond: SendResponse<Bytes>, status: StatusCode) {
    let mut response = Response::new(());
    *response.status_mut() = status;
    if let Err(e) = respond.send_response(response, true) {
        debug!(error = %e, %status, "could not send HBONE response");
    }
}

/// Decides what to do with each CONNECT stream.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: InboundRequest) -> BoxFuture<'static, ()>;
}

impl<F, Fut> Handler for F
where
    F: Fn(InboundRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn handle(&self, request: InboundRequest) -> BoxFuture<'static, ()> {
        Box::pin(self(request))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    Draining,
    Closing,
}

/// An HBONE server for one workload identity (replaceable with [`Server::set_identity`]).
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ServerSettings,
    identity: ArcSwap<Identity>,
    certs: Arc<dyn CertificateSource>,
    handler: Arc<dyn Handler>,
    tls_cache: Mutex<Option<(Arc<WorkloadCertificate>, Arc<rustls::ServerConfig>)>>,
    phase: watch::Sender<Phase>,
    active: AtomicUsize,
    idle: Notify,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("identity", &self.identity())
            .field("active_connections", &self.active_connections())
            .finish()
    }
}

/// Counts a live connection; wakes `drain` when the last one ends.
struct ActiveGuard(Arc<Inner>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Server {
    pub fn new(
        settings: ServerSettings,
        identity: Identity,
        certs: Arc<dyn CertificateSource>,
        handler: impl Handler,
    ) -> Self {
        Server {
            inner: Arc::new(Inner {
                settings,
                identity: ArcSwap::from_pointee(identity),
                certs,
                handler: Arc::new(handler),
                tls_cache: Mutex::new(None),
                phase: watch::Sender::new(Phase::Serving),
                active: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }

    /// The identity new connections are served with.
    pub fn identity(&self) -> Identity {
        self.inner.identity.load_full().as_ref().clone()
    }

    /// Serves new connections with `identity`'s certificate, accepting clients of its trust
    /// domain; established connections keep theirs.
    pub fn set_identity(&self, identity: Identity) {
        let new = Arc::new(identity);
        let old = self.inner.identity.swap(new.clone());
        if old != new {
            info!(%old, %new, "HBONE server identity changed");
        }
    }

    /// Connections currently open.
    pub fn active_connections(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Accepts connections until [`Server::drain`] is called.
    pub async fn serve(&self, listener: TcpListener) {
        let mut phase = self.inner.phase.subscribe();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => {
                        let server = self.clone();
                        tokio::spawn(async move { server.serve_connection(tcp).await });
                    }
                    Err(e) => {
                        // Out of file descriptors and similar: back off briefly, keep serving.
                        warn!(error = %e, "HBONE accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = until_draining(&mut phase) => break,
            }
        }
    }

    /// Serves one accepted TCP connection to completion.
    pub async fn serve_connection(&self, tcp: TcpStream) {
        let peer = tcp.peer_addr().ok();
        let local = tcp.local_addr().ok();
        let (Some(peer_addr), Some(local_addr)) = (peer, local) else {
            return;
        };
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        let _guard = ActiveGuard(self.inner.clone());
        let span = tracing::debug_span!("hbone_inbound", peer = %peer_addr, local = %local_addr);
        self.connection(tcp, peer_addr, local_addr)
            .instrument(span)
            .await;
    }

    /// The TLS configuration of the current identity's certificate, and that certificate.
    async fn tls_config(
        &self,
        identity: &Identity,
    ) -> Result<(Arc<rustls::ServerConfig>, Arc<WorkloadCertificate>), String> {
        let cert = self
            .inner
            .certs
            .certificate(identity)
            .await
            .map_err(|e| e.to_string())?;
        let mut cache = self.inner.tls_cache.lock();
        if let Some((cached, config)) = cache.as_ref()
            && Arc::ptr_eq(cached, &cert)
        {
            return Ok((config.clone(), cert));
        }
        let config =
            tls::server_config(&cert, &self.inner.settings.tls).map_err(|e| e.to_string())?;
        *cache = Some((cert.clone(), config.clone()));
        Ok((config, cert))
    }

    async fn connection(&self, tcp: TcpStream, peer_addr: SocketAddr, local_addr: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        // Subscribed before the handshake, so a CRL installed during it is checked below too.
        let revocations = self.inner.settings.tls.revocations.clone();
        let mut crl_changes = revocations.as_ref().map(|r| r.subscribe());
        let identity = self.identity();
        let (config, own_cert) = match self.tls_config(&identity).await {
            Ok(c) => c,
            Err(reason) => {
                warn!(%identity, %reason,
                    "connection failed: no certificate to present; check the CA and the workload's identity");
                return;
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let timeout = self.inner.settings.tls.handshake_timeout;
        let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let reason = match tls::handshake_failure(&e) {
                    HandshakeFailure::Peer(p) => p.to_string(),
                    HandshakeFailure::Tls(t) => tls::describe_error(&t),
                    HandshakeFailure::Io => e.to_string(),
                };
                warn!(%reason, "connection failed: TLS handshake");
                return;
            }
            Err(_) => {
                warn!(?timeout, "connection failed: TLS handshake timed out");
                return;
            }
        };
        let (_, session) = tls.get_ref();
        let Some(peer_certificate) = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| Arc::new(c.clone().into_owned()))
        else {
            warn!("connection failed: peer presented no certificate");
            return;
        };
        let Some(peer_identity) =
            tls::peer_identity(session.peer_certificates(), Some(own_cert.trust_domain()))
        else {
            // The verifier already insisted on an identity in our trust domain.
            warn!("connection failed: verified peer has no SPIFFE identity");
            return;
        };
        if let Some(r) = &revocations {
            r.track(&peer_certificate, crate::crl::Side::Server);
        }
        debug!(peer_identity = %peer_identity, "HBONE connection established");
        let s = &self.inner.settings;
        let mut builder = h2::server::Builder::new();
        builder
            .initial_window_size(s.h2.stream_window)
            .initial_connection_window_size(s.h2.connection_window)
            .max_frame_size(s.h2.frame_size)
            .max_concurrent_streams(s.max_concurrent_streams)
            .max_header_list_size(s.max_header_list_size)
            .max_send_buffer_size(s.max_send_buffer);
        let mut conn = match builder.handshake::<_, Bytes>(tls).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "connection failed: HTTP/2 handshake");
                return;
            }
        };
        let ctx = StreamContext {
            peer_identity,
            peer_certificate,
            peer_addr,
            local_addr,
        };
        let keepalive = crate::keepalive::run(
            conn.ping_pong(),
            s.h2.keepalive_interval,
            s.h2.keepalive_timeout,
        );
        tokio::pin!(keepalive);
        let mut phase = self.inner.phase.subscribe();
        let mut draining = false;
        if *phase.borrow_and_update() != Phase::Serving {
            draining = true;
            conn.graceful_shutdown();
        }
        loop {
            tokio::select! {
                next = conn.accept() => match next {
                    Some(Ok((request, respond))) => self.dispatch(&ctx, request, respond),
                    Some(Err(e)) => {
                        debug!(error = %e, "HBONE connection ended with an error");
                        break;
                    }
                    None => break,
                },
                Ok(()) = phase.changed() => {
                    let now = *phase.borrow_and_update();
                    if now == Phase::Closing {
                        conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                        break;
                    }
                    if now == Phase::Draining && !draining {
                        draining = true;
                        conn.graceful_shutdown();
                    }
                }
                failure = &mut keepalive => {
                    info!(reason = %failure, "closing HBONE connection: keepalive failed");
                    conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                    break;
                }
                () = crate::crl::changed(&mut crl_changes) => {
                    if revocations.as_ref().is_some_and(|r| r.is_revoked(&ctx.peer_certificate)) {
                        warn!(peer_identity = %ctx.peer_identity, %peer_addr,
                            "closing HBONE connection and its tunnels: the peer's certificate is revoked by the updated CRL");
                        conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                        break;
                    }
                }
            }
        }
        // Let h2 flush the final frames (GOAWAY, resets) before the socket closes.
        let _ = tokio::time::timeout(
            Duration::from_millis(100),
            std::future::poll_fn(|cx| conn.poll_closed(cx)),
        )
        .await;
    }

    fn dispatch(
        &self,
        ctx: &StreamContext,
        request: Request<h2::RecvStream>,
        respond: SendResponse<Bytes>,
    ) {
        if request.method() != Method::CONNECT {
            debug!(method = %request.method(), "rejecting non-CONNECT request");
            send_status(respond, StatusCode::BAD_REQUEST);
            return;
        }
        let raw = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let authority = match Authority::parse(&raw) {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "rejecting CONNECT with invalid authority");
                send_status(respond, StatusCode::BAD_REQUEST);
                return;
            }
        };
        let (parts, recv) = request.into_parts();
        let inbound = InboundRequest {
            peer_identity: ctx.peer_identity.clone(),
            peer_addr: ctx.peer_addr,
            local_addr: ctx.local_addr,
            authority,
            headers: parts.headers,
            peer_certificate: ctx.peer_certificate.clone(),
            respond: Some(respond),
            recv: Some(recv),
        };
        let fut = self.inner.handler.handle(inbound);
        tokio::spawn(fut);
    }

    /// Stops accepting, sends GOAWAY on every connection and waits for in-flight streams to
    /// finish; after `deadline` the remaining connections are closed.
    pub async fn drain(&self, deadline: Duration) {
        self.inner.phase.send_replace(Phase::Draining);
        let wait_idle = async {
            loop {
                let notified = self.inner.idle.notified();
                if self.active_connections() == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(deadline, wait_idle).await.is_err() {
            info!(
                remaining = self.active_connections(),
                "drain deadline reached; closing remaining HBONE connections"
            );
            self.inner.phase.send_replace(Phase::Closing);
        }
    }
}

/// Resolves once the server leaves the serving phase.
async fn until_draining(phase: &mut watch::Receiver<Phase>) {
    loop {
        let serving = *phase.borrow_and_update() == Phase::Serving;
        if !serving {
            return;
        }
        if phase.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

struct StreamContext {
    peer_identity: Identity,
    peer_certificate: Arc<CertificateDer<'static>>,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
}

//! The HBONE client: a pool of mutual-TLS HTTP/2 connections, each carrying many tunnels.
//!
//! Pool rules (HBONE reference §7):
//! * key = (source identity, expected destination identities, destination address, source IP),
//!   compared in full;
//! * at most `min(max_streams_per_connection, server's SETTINGS_MAX_CONCURRENT_STREAMS)`
//!   tunnels per connection; past that a new connection is opened for the same key;
//! * one dial per key at a time: concurrent callers for a new key wait for that dial and share
//!   the resulting connection;
//! * a connection that received GOAWAY, failed keepalive or closed is never handed out again;
//! * connections idle longer than `idle_timeout` are closed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Method, Request, Uri};
use parking_lot::Mutex;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::{Instrument, debug, info, warn};

use crate::cert::{BoxFuture, CertificateSource, WorkloadCertificate};
use crate::config::ClientSettings;
use crate::error::Error;
use crate::identity::Identity;
use crate::stream::H2Stream;
use crate::tls::{self, HandshakeFailure};

/// Opens the TCP connection under a tunnel connection. The node proxy supplies one that marks
/// sockets and creates them in the right network namespace.
pub trait Dialer: Send + Sync + 'static {
    fn dial(&self, dst: SocketAddr) -> BoxFuture<'_, std::io::Result<TcpStream>>;
}

/// Plain `connect()` with `TCP_NODELAY`.
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultDialer;

impl Dialer for DefaultDialer {
    fn dial(&self, dst: SocketAddr) -> BoxFuture<'_, std::io::Result<TcpStream>> {
        Box::pin(async move {
            let tcp = TcpStream::connect(dst).await?;
            tcp.set_nodelay(true)?;
            Ok(tcp)
        })
    }
}

/// What identifies a reusable connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub source: Identity,
    pub expected: Vec<Identity>,
    pub destination: SocketAddr,
    pub source_ip: Option<IpAddr>,
}

/// One tunnel to open.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// Identity whose certificate we present.
    pub source: Identity,
    /// Identities the server may present (any one).
    pub expected: Vec<Identity>,
    /// Where to connect (normally `<ip>:15008`).
    pub destination: SocketAddr,
    /// The downstream client's IP, part of the pool key.
    pub source_ip: Option<IpAddr>,
    /// The CONNECT `:authority` (`ip:port` or `host:port`).
    pub authority: String,
    /// Extra request headers (`forwarded`, `baggage`, `traceparent`...).
    pub headers: HeaderMap,
}

impl ConnectRequest {
    fn key(&self) -> PoolKey {
        PoolKey {
            source: self.source.clone(),
            expected: self.expected.clone(),
            destination: self.destination,
            source_ip: self.source_ip,
        }
    }
}

/// An open tunnel.
#[derive(Debug)]
pub struct Tunnel {
    pub stream: H2Stream,
    /// Headers of the 200 response (e.g. the destination's `baggage`).
    pub response_headers: HeaderMap,
    /// Identity the server proved.
    pub peer_identity: Identity,
    /// The server's leaf certificate (DER), shared by all tunnels of the connection.
    pub peer_certificate: Arc<CertificateDer<'static>>,
}

/// Counters describing the pool, for tests and metrics.
#[derive(Debug, Clone, Default)]
pub struct PoolStats {
    /// Connections currently pooled (usable or still carrying streams).
    pub connections: usize,
    /// Tunnels open right now.
    pub streams: usize,
    /// Connections dialed since the pool was created.
    pub dials: u64,
}

pub(crate) struct Conn {
    sender: SendRequest<Bytes>,
    peer_identity: Identity,
    peer_certificate: Arc<CertificateDer<'static>>,
    in_flight: AtomicUsize,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS, kept current by the driver task.
    peer_max_streams: AtomicUsize,
    dead: AtomicBool,
    /// Set once the server's SETTINGS are known; until then only the dialer's stream runs.
    settled: AtomicBool,
    /// Fired by the first response on the connection: the server sends its SETTINGS before
    /// any response, so from then on its stream limit is known.
    settled_tx: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    last_used: Mutex<Instant>,
}

impl Conn {
    fn cap(&self, configured: u32) -> usize {
        if !self.settled.load(Ordering::Acquire) {
            return 1;
        }
        (configured as usize).min(self.peer_max_streams.load(Ordering::Acquire).max(1))
    }

    /// True while the HTTP/2 connection can still open streams (no GOAWAY, not closed).
    fn is_open(&self) -> bool {
        if self.dead.load(Ordering::Acquire) {
            return false;
        }
        let mut probe = self.sender.clone();
        let mut cx = Context::from_waker(Waker::noop());
        match probe.poll_ready(&mut cx) {
            Poll::Ready(Err(_)) => {
                self.dead.store(true, Ordering::Release);
                false
            }
            _ => true,
        }
    }
}

/// Releases a stream slot when the tunnel ends.
struct Slot(Arc<Conn>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        *self.0.last_used.lock() = Instant::now();
    }
}

/// A pool of HBONE connections.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ClientSettings,
    certs: Arc<dyn CertificateSource>,
    dialer: Arc<dyn Dialer>,
    conns: Mutex<HashMap<PoolKey, Vec<Arc<Conn>>>>,
    dial_locks: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
    next_id: AtomicU64,
    reaper_started: AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Pool {
    pub fn new(
        settings: ClientSettings,
        certs: Arc<dyn CertificateSource>,
        dialer: Arc<dyn Dialer>,
    ) -> Self {
        Pool {
            inner: Arc::new(Inner {
                settings,
                certs,
                dialer,
                conns: Mutex::new(HashMap::new()),
                dial_locks: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                reaper_started: AtomicBool::new(false),
            }),
        }
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.inner.settings
    }

    /// Our certificate for `source`.
    pub(crate) async fn certificate(
        &self,
        source: &Identity,
    ) -> Result<Arc<WorkloadCertificate>, Error> {
        Ok(self.inner.certs.certificate(source).await?)
    }

    /// A fresh connection number (for logs).
    pub(crate) fn next_connection_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn stats(&self) -> PoolStats {
        let conns = self.inner.conns.lock();
        let mut stats = PoolStats {
            dials: self.inner.next_id.load(Ordering::Relaxed),
            ..PoolStats::default()
        };
        for c in conns.values().flatten() {
            stats.connections += 1;
            stats.streams += c.in_flight.load(Ordering::Acquire);
        }
        stats
    }

    /// Opens a tunnel, reusing a pooled connection when one has room.
    pub async fn connect(&self, request: ConnectRequest) -> Result<Tunnel, Error> {
        self.start_reaper();
        let uri: Uri = request
            .authority
            .parse()
            .map_err(|e: http::uri::InvalidUri| Error::BadRequest {
                authority: request.authority.clone(),
                reason: e.to_string(),
            })?;
        let key = request.key();
        // A connection that turns out to be closing is discarded and the checkout retried;
        // bounded so a flapping server cannot spin us.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let conn = match self.checkout(&key) {
                Some(c) => c,
                None => self.checkout_or_dial(&key).await?,
            };
            match open_stream(conn.clone(), &request, &uri).await {
                Ok(tunnel) => return Ok(tunnel),
                Err(Error::H2Connection { .. }) if attempts < 3 => {
                    conn.dead.store(true, Ordering::Release);
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes a slot on an existing usable connection for `key`.
    fn checkout(&self, key: &PoolKey) -> Option<Arc<Conn>> {
        let cap = self.inner.settings.max_streams_per_connection;
        let mut conns = self.inner.conns.lock();
        let list = conns.get_mut(key)?;
        list.retain(|c| c.is_open() || c.in_flight.load(Ordering::Acquire) > 0);
        let found = list.iter().find(|c| {
            c.is_open()
                && c.in_flight
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < c.cap(cap)).then_some(n + 1)
                    })
                    .is_ok()
        });
        let found = found.cloned();
        if list.is_empty() {
            conns.remove(key);
        }
        found
    }

    async fn checkout_or_dial(&self, key: &PoolKey) -> Result<Arc<Conn>, Error> {
        let lock = self
            .inner
            .dial_locks
            .lock()
            .entry(key.clone())
            .or_default()
            .clone();
        let dialing = lock.lock_owned().await;
        // Someone else may have dialed while we waited.
        if let Some(c) = self.checkout(key) {
            return Ok(c);
        }
        let (conn, settled) = self.dial(key).await?;
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        self.inner
            .conns
            .lock()
            .entry(key.clone())
            .or_default()
            .push(conn.clone());
        // Our own stream goes now; other callers for this key wait (on the dial lock) until
        // the server's stream limit is known, so none of them is queued behind it in h2.
        let waiting = conn.clone();
        tokio::spawn(async move {
            let _ = settled.await;
            waiting.settled.store(true, Ordering::Release);
            drop(dialing);
        });
        Ok(conn)
    }

    async fn dial(
        &self,
        key: &PoolKey,
    ) -> Result<(Arc<Conn>, tokio::sync::oneshot::Receiver<()>), Error> {
        let s = &self.inner.settings;
        let dst = key.destination;
        let cert = self.inner.certs.certificate(&key.source).await?;
        let tcp = match tokio::time::timeout(s.connect_timeout, self.inner.dialer.dial(dst)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(source)) => return Err(Error::Connect { dst, source }),
            Err(_) => {
                return Err(Error::ConnectTimeout {
                    dst,
                    timeout: s.connect_timeout,
                });
            }
        };
        let id = self.next_connection_id();
        establish(tcp, dst, &cert, &key.expected, s, id).await
    }

    fn start_reaper(&self) {
        if self.inner.reaper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let idle = self.inner.settings.idle_timeout;
        let period = (idle / 2).clamp(Duration::from_millis(10), Duration::from_secs(30));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(inner) = weak.upgrade() else { return };
                let now = Instant::now();
                let mut conns = inner.conns.lock();
                conns.retain(|_, list| {
                    list.retain(|c| {
                        let busy = c.in_flight.load(Ordering::Acquire) > 0;
                        let fresh = now.duration_since(*c.last_used.lock()) < idle;
                        busy || (fresh && c.is_open())
                    });
                    !list.is_empty()
                });
                let mut locks = inner.dial_locks.lock();
                locks.retain(|k, l| conns.contains_key(k) || Arc::strong_count(l) > 1);
            }
        });
    }
}

/// The mutual-TLS and HTTP/2 handshakes over `io` (a TCP connection, or the outer tunnel of
/// double HBONE), then a task that drives the connection: keepalive, and teardown when the CRL
/// revokes the server's certificate. `dst` names the peer in errors.
pub(crate) async fn establish<IO>(
    io: IO,
    dst: SocketAddr,
    cert: &WorkloadCertificate,
    expected: &[Identity],
    s: &ClientSettings,
    id: u64,
) -> Result<(Arc<Conn>, tokio::sync::oneshot::Receiver<()>), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Subscribed before the handshake, so a CRL installed during it is checked below too.
    let revocations = s.tls.revocations.clone();
    let mut crl_changes = revocations.as_ref().map(|r| r.subscribe());
    let config = tls::client_config(cert, expected, &s.tls).map_err(|e| Error::Tls {
        dst,
        reason: e.to_string(),
    })?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let server_name = rustls::pki_types::ServerName::IpAddress(dst.ip().into());
    let tls =
        match tokio::time::timeout(s.tls.handshake_timeout, connector.connect(server_name, io))
            .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                return Err(match tls::handshake_failure(&e) {
                    HandshakeFailure::Peer(source) => Error::PeerIdentity { dst, source },
                    HandshakeFailure::Tls(t) => Error::Tls {
                        dst,
                        reason: tls::describe_error(&t),
                    },
                    HandshakeFailure::Io => Error::Tls {
                        dst,
                        reason: e.to_string(),
                    },
                });
            }
            Err(_) => {
                return Err(Error::TlsTimeout {
                    dst,
                    timeout: s.tls.handshake_timeout,
                });
            }
        };
    let session = tls.get_ref().1;
    if session.alpn_protocol() != Some(tls::ALPN_H2) {
        return Err(Error::NoH2 { dst });
    }
    let peer_identity =
        tls::peer_identity(session.peer_certificates(), None).ok_or_else(|| Error::Tls {
            dst,
            reason: "server presented no SPIFFE identity".to_string(),
        })?;
    let (settled_tx, settled_rx) = tokio::sync::oneshot::channel();
    let peer_certificate = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| Arc::new(c.clone().into_owned()))
        .ok_or_else(|| Error::Tls {
            dst,
            reason: "server presented no certificate".to_string(),
        })?;
    if let Some(r) = &revocations {
        r.track(&peer_certificate, crate::crl::Side::Client);
    }
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(s.h2.stream_window)
        .initial_connection_window_size(s.h2.connection_window)
        .max_frame_size(s.h2.frame_size)
        .max_header_list_size(s.max_header_list_size)
        .initial_max_send_streams(s.max_streams_per_connection as usize)
        .max_send_buffer_size(s.max_send_buffer)
        .enable_push(false);
    let (sender, mut connection) = builder
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(|source| Error::H2Handshake { dst, source })?;
    let conn = Arc::new(Conn {
        sender,
        peer_identity,
        peer_certificate,
        in_flight: AtomicUsize::new(0),
        peer_max_streams: AtomicUsize::new(s.max_streams_per_connection as usize),
        dead: AtomicBool::new(false),
        settled: AtomicBool::new(false),
        settled_tx: Mutex::new(Some(settled_tx)),
        last_used: Mutex::new(Instant::now()),
    });
    debug!(conn = id, %dst, peer = %conn.peer_identity, "HBONE connection established");
    let keepalive = crate::keepalive::run(
        connection.ping_pong(),
        s.h2.keepalive_interval,
        s.h2.keepalive_timeout,
    );
    let weak = Arc::downgrade(&conn);
    let peer_certificate = conn.peer_certificate.clone();
    let peer = conn.peer_identity.clone();
    let span = tracing::debug_span!("hbone_outbound", conn = id, %dst);
    tokio::spawn(
        async move {
            let drive = std::future::poll_fn(|cx| {
                let r = std::pin::Pin::new(&mut connection).poll(cx);
                if let Some(c) = weak.upgrade() {
                    c.peer_max_streams
                        .store(connection.max_concurrent_send_streams(), Ordering::Release);
                }
                r
            });
            tokio::pin!(drive, keepalive);
            loop {
                tokio::select! {
                    result = &mut drive => {
                        if let Err(e) = result {
                            debug!(error = %e, "HBONE connection closed with an error");
                        }
                        break;
                    }
                    failure = &mut keepalive => {
                        info!(reason = %failure, "dropping HBONE connection: keepalive failed");
                        break;
                    }
                    () = crate::crl::changed(&mut crl_changes) => {
                        if revocations.as_ref().is_some_and(|r| r.is_revoked(&peer_certificate)) {
                            warn!(%peer, "dropping HBONE connection and its tunnels: the server's certificate is revoked by the updated CRL");
                            break;
                        }
                    }
                }
            }
            if let Some(c) = weak.upgrade() {
                c.dead.store(true, Ordering::Release);
            }
        }
        .instrument(span),
    );
    Ok((conn, settled_rx))
}

pub(crate) async fn open_stream(
    conn: Arc<Conn>,
    request: &ConnectRequest,
    uri: &Uri,
) -> Result<Tunnel, Error> {
    let slot = Slot(conn.clone());
    let dst = request.destination;
    let connection_error = |source: h2::Error| classify_connection_error(dst, source);
    let sender = conn
        .sender
        .clone()
        .ready()
        .await
        .map_err(connection_error)?;
    let mut http_request = Request::new(());
    *http_request.method_mut() = Method::CONNECT;
    *http_request.uri_mut() = uri.clone();
    *http_request.headers_mut() = request.headers.clone();
    let mut sender = sender;
    let (response, send) = sender
        .send_request(http_request, false)
        .map_err(connection_error)?;
    let response = response.await;
    // Any answer (or stream error) means the server's SETTINGS were processed before it.
    if let Some(tx) = conn.settled_tx.lock().take() {
        let _ = tx.send(());
    }
    let response = response.map_err(|source| {
        if source.is_go_away() || source.is_io() {
            classify_connection_error(dst, source)
        } else {
            Error::H2Stream {
                dst,
                authority: request.authority.clone(),
                source,
            }
        }
    })?;
    let status = response.status();
    if status != http::StatusCode::OK {
        return Err(Error::ConnectStatus {
            dst,
            authority: request.authority.clone(),
            status: status.as_u16(),
        });
    }
    let (parts, recv) = response.into_parts();
    Ok(Tunnel {
        stream: H2Stream::new(send, recv, Some(Box::new(slot))),
        response_headers: parts.headers,
        peer_identity: conn.peer_identity.clone(),
        peer_certificate: conn.peer_certificate.clone(),
    })
}

/// Under TLS 1.3 a server that rejects our certificate says so only after the handshake, as an
/// alert on the first read: report that as the TLS failure it is, not as a broken connection.
fn classify_connection_error(dst: SocketAddr, source: h2::Error) -> Error {
    let alert = source
        .get_io()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|tls| match tls {
            rustls::Error::AlertReceived(alert) => Some(*alert),
            _ => None,
        });
    // h2 keeps connection-level I/O errors as text (so they can be cloned to every stream):
    // recognise rustls's alert message there too.
    let alert = alert.map(|a| format!("{a:?}")).or_else(|| {
        let text = source.get_io().map(ToString::to_string)?;
        text.strip_prefix("received fatal alert: ")
            .map(str::to_string)
    });
    match alert {
        Some(alert) => Error::Tls {
            dst,
            reason: format!(
                "server rejected our certificate (TLS alert {alert}); is our identity issued by the server's mesh CA and trust domain?"
            ),
        },
        None => Error::H2Connection { dst, source },
    }
}

//! The I/O pieces shared by the listeners: upstream connects through the [`SocketFactory`]
//! (optionally preserving the original source IP), the HBONE pool's dialer, and byte
//! counting that survives cancellation.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::error::ProxyError;
use crate::socket::{self, SocketFactory, TcpSettings};

/// `ENABLE_ORIG_SRC`: whether inbound upstream connects keep the client's IP as source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OrigSrc {
    /// Unset: try, and fall back to our own address when the kernel refuses (`EPERM`).
    #[default]
    Auto,
    /// `true`: required; a connection whose source cannot be preserved fails.
    Required,
    /// `false`: never.
    Never,
}

/// Opens upstream TCP connections for one proxy instance.
#[derive(Clone)]
pub struct Connector {
    pub sockets: Arc<dyn SocketFactory>,
    pub tcp: TcpSettings,
    pub timeout: Duration,
    pub orig_src: OrigSrc,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("tcp", &self.tcp)
            .field("timeout", &self.timeout)
            .field("orig_src", &self.orig_src)
            .finish()
    }
}

impl Connector {
    /// Plain connect (outbound upstreams, HBONE dials): marked, nodelay, keepalive.
    pub async fn connect(&self, dst: SocketAddr) -> Result<TcpStream, ProxyError> {
        let sock = self
            .sockets
            .new_tcp(dst)
            .map_err(|source| ProxyError::UpstreamConnect { dst, source })?;
        self.finish(sock, dst).await
    }

    /// Connect to a local application on behalf of `src` (inbound), binding `src:0` with
    /// `IP_TRANSPARENT` when [`OrigSrc`] allows (skipped when `src` is the destination IP or
    /// of another family).
    pub async fn connect_as(&self, dst: SocketAddr, src: IpAddr) -> Result<TcpStream, ProxyError> {
        let spoof = self.orig_src != OrigSrc::Never
            && src != dst.ip()
            && src.is_ipv4() == dst.ip().is_ipv4();
        if !spoof {
            return self.connect(dst).await;
        }
        let sock = self
            .sockets
            .new_tcp(dst)
            .map_err(|source| ProxyError::UpstreamConnect { dst, source })?;
        let prepared =
            socket::set_transparent(&sock).and_then(|()| sock.bind(SocketAddr::new(src, 0)));
        match prepared {
            Ok(()) => self.finish(sock, dst).await,
            Err(source) if self.orig_src == OrigSrc::Required => {
                Err(ProxyError::Transparent { src, source })
            }
            Err(e) => {
                tracing::debug!(%src, error = %e, "cannot preserve the source IP; using our own");
                self.connect(dst).await
            }
        }
    }

    async fn finish(
        &self,
        sock: tokio::net::TcpSocket,
        dst: SocketAddr,
    ) -> Result<TcpStream, ProxyError> {
        self.tcp
            .apply(&sock)
            .map_err(|source| ProxyError::UpstreamConnect { dst, source })?;
        match tokio::time::timeout(self.timeout, sock.connect(dst)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(source)) => Err(ProxyError::UpstreamConnect { dst, source }),
            Err(_) => Err(ProxyError::UpstreamTimeout {
                dst,
                timeout: self.timeout,
            }),
        }
    }
}

/// The HBONE pool's dialer: sockets from the instance's factory (right netns, marked).
#[derive(Debug, Clone)]
pub struct FactoryDialer(pub Connector);

impl hbone::Dialer for FactoryDialer {
    fn dial(&self, dst: SocketAddr) -> hbone::cert::BoxFuture<'_, io::Result<TcpStream>> {
        Box::pin(async move {
            let sock = self.0.sockets.new_tcp(dst)?;
            self.0.tcp.apply(&sock)?;
            // The pool applies its own connect timeout.
            sock.connect(dst).await
        })
    }
}

/// Bytes counted in both directions of a proxied connection, readable after cancellation.
#[derive(Debug, Default)]
pub struct ByteCounts {
    /// Client → server.
    pub client_to_server: AtomicU64,
    /// Server → client.
    pub server_to_client: AtomicU64,
}

impl ByteCounts {
    pub fn get(&self) -> (u64, u64) {
        (
            self.client_to_server.load(Ordering::Relaxed),
            self.server_to_client.load(Ordering::Relaxed),
        )
    }
}

/// Which counter an I/O object feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Reads from the client / writes to the server count client→server.
    Client,
    /// Reads from the server / writes to the client count server→client.
    Server,
}

/// Wraps the client-facing (or server-facing) end of a connection and counts what crosses it:
/// on the [`Side::Client`] end, reads are client→server and writes server→client; on the
/// [`Side::Server`] end the other way round. Wrap exactly one end so each byte counts once.
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    counts: Arc<ByteCounts>,
    side: Side,
}

impl<T> Counted<T> {
    pub fn new(inner: T, counts: Arc<ByteCounts>, side: Side) -> Self {
        Counted {
            inner,
            counts,
            side,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

/// Makes dropping `tcp` send a TCP reset (`SO_LINGER` 0) instead of a FIN. Captured app
/// connections start this way, so every failure (refused, denied, upstream unreachable, closed
/// by a policy change) shows up in the app as "connection reset by peer", as with Istio's
/// ztunnel, whatever the timing. [`close_gracefully`] undoes it once a connection ended well.
pub fn reset_on_drop(tcp: &TcpStream) {
    if let Err(e) = tcp.set_zero_linger() {
        tracing::debug!(error = %e, "could not set SO_LINGER 0 on a captured connection");
    }
}

/// Restores the normal close (FIN) for a connection that ended without error.
pub fn close_gracefully(tcp: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(tcp).set_linger(None) {
        tracing::debug!(error = %e, "could not clear SO_LINGER");
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.counter(true).fetch_add(n, Ordering::Relaxed);
        }
        r
    }
}

impl<T> Counted<T> {
    fn counter(&self, read: bool) -> &AtomicU64 {
        match (self.side, read) {
            (Side::Client, true) | (Side::Server, false) => &self.counts.client_to_server,
            (Side::Client, false) | (Side::Server, true) => &self.counts.server_to_client,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.counter(false).fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.counter(false).fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_reads_per_side() {
        let counts = Arc::new(ByteCounts::default());
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = Counted::new(a, counts.clone(), Side::Client);
        b.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        a.read_exact(&mut buf).await.unwrap();
        a.write_all(b"xy").await.unwrap();
        assert_eq!(counts.get(), (5, 2));
        let mut s = Counted::new(b, counts.clone(), Side::Server);
        s.write_all(b"abc").await.unwrap();
        assert_eq!(counts.get(), (8, 2));
    }
}

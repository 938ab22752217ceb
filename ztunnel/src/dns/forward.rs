//! Forwarding queries we do not answer to the upstream resolvers.
//!
//! The client's query bytes are relayed unchanged (so its ID, flags and EDNS options reach the
//! upstream) from a fresh socket of the instance's [`SocketFactory`] (in shared mode: created in
//! the pod's network namespace and marked, so the pod's redirection rules let it out). Upstreams
//! are tried in order, each over UDP with a per-try timeout; a truncated UDP answer is retried
//! over TCP on the same upstream when the client itself asked over TCP, and passed through (with
//! `TC` set) to UDP clients, which then retry over TCP themselves. The whole exchange is bounded
//! by a total deadline; when it passes or every upstream failed the caller answers `SERVFAIL`.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};

use crate::socket::SocketFactory;

/// Timeouts of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardSettings {
    /// One UDP exchange with one upstream (2 s).
    pub udp_try: Duration,
    /// The whole forward, all upstreams and the TCP retry included (5 s, Istio's TCP timeout).
    pub total: Duration,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        ForwardSettings {
            udp_try: Duration::from_secs(2),
            total: Duration::from_secs(5),
        }
    }
}

/// Why a query could not be forwarded (the client gets `SERVFAIL`).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolvers are configured; check the nameservers of /etc/resolv.conf")]
    NoUpstreams,
    #[error("no upstream resolver answered within {0:?}")]
    Timeout(Duration),
    #[error("upstream resolver {upstream} failed: {source}")]
    Upstream {
        upstream: SocketAddr,
        source: io::Error,
    },
}

const MAX_MESSAGE: usize = u16::MAX as usize;

/// Relays `query` (with header ID `id`) to the first upstream that answers; returns the
/// response bytes.
pub async fn forward(
    sockets: &dyn SocketFactory,
    upstreams: &[SocketAddr],
    settings: ForwardSettings,
    query: &[u8],
    id: u16,
    tcp_client: bool,
) -> Result<Vec<u8>, ForwardError> {
    if upstreams.is_empty() {
        return Err(ForwardError::NoUpstreams);
    }
    let deadline = Instant::now() + settings.total;
    let mut last = ForwardError::Timeout(settings.total);
    for &upstream in upstreams {
        let attempt = async {
            let resp = timeout(settings.udp_try, udp_exchange(sockets, upstream, query, id))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "UDP query timed out"))??;
            if tcp_client && truncated(&resp) {
                return tcp_exchange(sockets, upstream, query, id).await;
            }
            Ok(resp)
        };
        match timeout_at(deadline, attempt).await {
            Ok(Ok(resp)) => return Ok(resp),
            Ok(Err(source)) => {
                tracing::debug!(%upstream, error = %source, "upstream DNS query failed");
                last = ForwardError::Upstream { upstream, source };
            }
            Err(_) => return Err(ForwardError::Timeout(settings.total)),
        }
    }
    Err(last)
}

fn truncated(msg: &[u8]) -> bool {
    msg.len() > 2 && msg[2] & 0x02 != 0
}

/// Whether `msg` is a response with header ID `id`.
fn is_response_to(msg: &[u8], id: u16) -> bool {
    msg.len() >= 12 && u16::from_be_bytes([msg[0], msg[1]]) == id && msg[2] & 0x80 != 0
}

async fn udp_exchange(
    sockets: &dyn SocketFactory,
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
) -> io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = sockets.udp_bind(local)?;
    sock.connect(upstream).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let n = sock.recv(&mut buf).await?;
        if is_response_to(&buf[..n], id) {
            buf.truncate(n);
            return Ok(buf);
        }
        tracing::debug!(%upstream, "ignoring a UDP datagram that does not answer our query");
    }
}

async fn tcp_exchange(
    sockets: &dyn SocketFactory,
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
) -> io::Result<Vec<u8>> {
    let len = u16::try_from(query.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too large for TCP"))?;
    let mut stream = sockets.new_tcp(upstream)?.connect(upstream).await?;
    let mut frame = Vec::with_capacity(query.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(query);
    stream.write_all(&frame).await?;
    let len = stream.read_u16().await?;
    let mut resp = vec![0u8; usize::from(len)];
    stream.read_exact(&mut resp).await?;
    if !is_response_to(&resp, id) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "TCP answer does not match the query",
        ));
    }
    Ok(resp)
}

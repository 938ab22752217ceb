//! HTTP/2 keepalive: PING every `interval`; a PING unanswered within `timeout` ends the
//! connection. Both sides run this, so a peer that vanished without closing its socket is
//! detected instead of holding streams (and pool slots) forever.

use std::fmt;
use std::future::poll_fn;
use std::time::Duration;

use h2::{Ping, PingPong};

/// Why keepalive gave up on a connection.
#[derive(Debug)]
pub(crate) enum KeepaliveFailure {
    Timeout(Duration),
    Ping(h2::Error),
}

impl fmt::Display for KeepaliveFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepaliveFailure::Timeout(t) => write!(f, "peer did not answer a PING within {t:?}"),
            KeepaliveFailure::Ping(e) => write!(f, "PING failed: {e}"),
        }
    }
}

/// Runs until keepalive fails; never completes while the peer keeps answering (or when
/// keepalive is disabled by a zero interval).
pub(crate) async fn run(
    ping_pong: Option<PingPong>,
    interval: Duration,
    timeout: Duration,
) -> KeepaliveFailure {
    let Some(mut ping_pong) = ping_pong.filter(|_| !interval.is_zero()) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = ping_pong.send_ping(Ping::opaque()) {
            return KeepaliveFailure::Ping(e);
        }
        match tokio::time::timeout(timeout, poll_fn(|cx| ping_pong.poll_pong(cx))).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return KeepaliveFailure::Ping(e),
            Err(_) => return KeepaliveFailure::Timeout(timeout),
        }
    }
}

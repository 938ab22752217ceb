//! In-memory byte sources and sinks, cheap enough not to show up next to the transports.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// Buffer size of the plain TCP/TLS copy loops: the size `hbone::copy_bidirectional` settles
/// on for bulk transfers (256 KiB - 64).
pub const COPY_BUF: usize = 256 * 1024 - 64;

/// A block of pseudo-random bytes, made once and replayed by every [`Source`].
pub fn pattern() -> Arc<[u8]> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut data = vec![0u8; 1024 * 1024];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    data.into()
}

/// Yields `len` bytes by replaying a preallocated pattern (one memcpy per read, like a read
/// from a socket), then EOF.
pub struct Source {
    data: Arc<[u8]>,
    offset: usize,
    remaining: u64,
}

impl Source {
    pub fn new(data: Arc<[u8]>, len: u64) -> Self {
        Source {
            data,
            offset: 0,
            remaining: len,
        }
    }
}

impl AsyncRead for Source {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let available = this.data.len() - this.offset;
        let n = (this.remaining.min(buf.remaining() as u64) as usize).min(available);
        buf.put_slice(&this.data[this.offset..this.offset + n]);
        this.offset = (this.offset + n) % this.data.len();
        this.remaining -= n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Counts and discards what is written; on shutdown (the tunnel's EOF) hands the total to
/// the paired [`AckReader`].
pub struct CountingSink {
    total: u64,
    done: Option<oneshot::Sender<u64>>,
}

/// Pending until its [`CountingSink`] has seen EOF, then yields the total (8 bytes, big
/// endian) and EOF: the server's acknowledgement.
pub struct AckReader {
    total: oneshot::Receiver<u64>,
    ack: Option<[u8; 8]>,
    sent: usize,
}

/// A sink and the reader that acknowledges what it received.
pub fn ack_pair() -> (AckReader, CountingSink) {
    let (tx, rx) = oneshot::channel();
    (
        AckReader {
            total: rx,
            ack: None,
            sent: 0,
        },
        CountingSink {
            total: 0,
            done: Some(tx),
        },
    )
}

impl AsyncWrite for CountingSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.total += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(done) = this.done.take() {
            let _ = done.send(this.total);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for AckReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let ack = match this.ack {
            Some(ack) => ack,
            None => match Pin::new(&mut this.total).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(total)) => *this.ack.insert(total.to_be_bytes()),
                // The sink went away without EOF: the copy failed; end quietly.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
            },
        };
        let n = (ack.len() - this.sent).min(buf.remaining());
        buf.put_slice(&ack[this.sent..this.sent + n]);
        this.sent += n;
        Poll::Ready(Ok(()))
    }
}

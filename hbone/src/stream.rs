//! One tunnel: an HTTP/2 stream carrying one TCP connection's bytes in both directions.
//!
//! Mapping to TCP semantics (HBONE reference §4):
//! * our write side shut down ⇒ empty DATA frame with END_STREAM;
//! * END_STREAM received ⇒ EOF on read;
//! * RST_STREAM `NO_ERROR` / `CANCEL` received ⇒ EOF; any other reset ⇒ I/O error.
//!
//! Flow-control capacity is released only as the reader consumes bytes, so a slow consumer
//! back-pressures the sender through the HTTP/2 window instead of buffering without bound.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest chunk handed to h2 in one `send_data` call.
pub(crate) const MAX_WRITE_CHUNK: usize = 256 * 1024;

/// Something dropped when the stream ends (pool accounting).
pub(crate) type StreamGuard = Box<dyn Send + Sync>;

/// A bidirectional byte stream over one HTTP/2 stream.
pub struct H2Stream {
    pub(crate) send: SendStream<Bytes>,
    pub(crate) recv: RecvStream,
    /// Bytes received but not yet handed to the reader.
    pending: Bytes,
    read_eof: bool,
    write_closed: bool,
    _guard: Option<StreamGuard>,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.send.stream_id().as_u32())
            .field("read_eof", &self.read_eof)
            .field("write_closed", &self.write_closed)
            .finish()
    }
}

impl H2Stream {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        guard: Option<StreamGuard>,
    ) -> Self {
        H2Stream {
            send,
            recv,
            pending: Bytes::new(),
            read_eof: false,
            write_closed: false,
            _guard: guard,
        }
    }

    /// The two halves of the stream plus any bytes already received, for the copy loop that
    /// drives each direction itself.
    pub(crate) fn into_parts(self) -> (SendStream<Bytes>, RecvStream, Bytes, Option<StreamGuard>) {
        (self.send, self.recv, self.pending, self._guard)
    }

    /// Resets the stream with `CANCEL` (an abortive close of the tunnel).
    pub fn abort(&mut self) {
        self.send.send_reset(h2::Reason::CANCEL);
    }

    /// Polls until the stream may send at least one byte; returns how many bytes it may send.
    pub(crate) fn poll_send_capacity(
        send: &mut SendStream<Bytes>,
        cx: &mut Context<'_>,
        want: usize,
    ) -> Poll<io::Result<usize>> {
        let have = send.capacity();
        if have > 0 {
            return Poll::Ready(Ok(have));
        }
        send.reserve_capacity(want.clamp(1, MAX_WRITE_CHUNK));
        loop {
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => return Poll::Ready(Ok(n)),
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "tunnel stream closed by peer",
                    )));
                }
            }
        }
    }
}

/// Whether a stream error is just the peer ending the stream (treated as EOF).
pub(crate) fn is_graceful_reset(e: &h2::Error) -> bool {
    matches!(
        e.reason(),
        Some(h2::Reason::NO_ERROR) | Some(h2::Reason::CANCEL)
    ) && e.is_reset()
}

pub(crate) fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"));
    }
    let kind = match e.reason() {
        Some(h2::Reason::STREAM_CLOSED) => io::ErrorKind::BrokenPipe,
        Some(h2::Reason::NO_ERROR) | Some(h2::Reason::CANCEL) => io::ErrorKind::ConnectionReset,
        _ => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, e)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                // Give the window back as the bytes are consumed.
                let _ = this.recv.flow_control().release_capacity(n);
                return Poll::Ready(Ok(()));
            }
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    if data.is_empty() {
                        continue;
                    }
                    this.pending = data;
                }
                Some(Err(e)) if is_graceful_reset(&e) => this.read_eof = true,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => this.read_eof = true,
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        if this.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        let cap = ready!(H2Stream::poll_send_capacity(&mut this.send, cx, buf.len()))?;
        let n = cap.min(buf.len()).min(MAX_WRITE_CHUNK);
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 writes buffered frames as the connection task runs; nothing to flush here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.write_closed {
            this.write_closed = true;
            if let Err(e) = this.send.send_data(Bytes::new(), true) {
                // Already reset by the peer: nothing left to close.
                if !e.is_reset() {
                    return Poll::Ready(Err(h2_to_io(e)));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

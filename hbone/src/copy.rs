//! Copying bytes between a TCP connection and a tunnel.
//!
//! * TCP → tunnel: bytes are read into a buffer that is frozen and handed to HTTP/2 without a
//!   further copy, never more than the stream's granted send capacity at a time.
//! * tunnel → TCP: each DATA frame is written out, then its flow-control window is released,
//!   so memory per tunnel is bounded by the HTTP/2 windows.
//! * Read buffers start at 1 KiB and grow only for bulk transfers (16 KiB after 128 KiB,
//!   256 KiB after 10 MiB), so idle or chatty connections stay small. A bulk upload recycles up
//!   to three buffers once h2 has sent their bytes (a fresh 256 KiB allocation per read cost
//!   the encrypting proxy ~12% of its CPU in page faults); waiting for the app keeps one.
//! * Half-close is preserved: EOF from TCP ends the stream (END_STREAM); END_STREAM from the
//!   peer shuts down the TCP write side. The copy ends when both directions have.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::stream::{H2Stream, h2_to_io, is_graceful_reset};

const SMALL: usize = 1024;
const MEDIUM: usize = 16 * 1024 - 64;
const LARGE: usize = 256 * 1024 - 64;
const MEDIUM_AFTER: u64 = 128 * 1024;
const LARGE_AFTER: u64 = 10 * 1024 * 1024;

/// Bytes moved by [`copy_bidirectional`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    /// From the local side (the TCP reader) into the tunnel.
    pub to_tunnel: u64,
    /// From the tunnel out to the local side (the TCP writer).
    pub from_tunnel: u64,
}

/// Read buffer size for the amount copied so far.
fn buffer_size(copied: u64) -> usize {
    if copied >= LARGE_AFTER {
        LARGE
    } else if copied >= MEDIUM_AFTER {
        MEDIUM
    } else {
        SMALL
    }
}

/// Copies between a local byte stream (given as read and write halves) and a tunnel until both
/// directions are done. An error in either direction ends both.
pub async fn copy_bidirectional<R, W>(
    reader: R,
    writer: W,
    stream: H2Stream,
) -> io::Result<Transferred>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (send, recv, pending, _guard) = stream.into_parts();
    let upload = to_tunnel(reader, send);
    let download = from_tunnel(recv, pending, writer);
    let (to_tunnel, from_tunnel) = tokio::try_join!(upload, download)?;
    Ok(Transferred {
        to_tunnel,
        from_tunnel,
    })
}

/// Convenience for a whole `TcpStream`.
pub async fn copy_tcp(
    tcp: &mut tokio::net::TcpStream,
    stream: H2Stream,
) -> io::Result<Transferred> {
    let (r, w) = tcp.split();
    copy_bidirectional(r, w, stream).await
}

/// Read buffers of one upload, recycled once HTTP/2 has written out (and dropped) the bytes read
/// into them. A bulk upload keeps reusing the same few allocations instead of allocating (and
/// page-faulting in) a fresh buffer for every read; an upload waiting for its app keeps one.
struct ReadBuffers {
    pool: Vec<BytesMut>,
}

/// Chunks in flight at once: h2 queues at most `max_send_buffer` (400 KiB by default), so two
/// large chunks can be queued while a third is read into.
const POOL: usize = 3;

impl ReadBuffers {
    fn new() -> Self {
        ReadBuffers {
            pool: Vec::with_capacity(POOL),
        }
    }

    /// A buffer with room for `want` more bytes, taken out of the pool.
    fn take(&mut self, want: usize) -> BytesMut {
        if let Some(i) = self.pool.iter_mut().position(|b| b.try_reclaim(want)) {
            return self.pool.swap_remove(i);
        }
        if self.pool.len() >= POOL {
            // All still queued in h2: let go of one (its memory goes once h2 has sent it).
            self.pool.swap_remove(0);
        }
        BytesMut::with_capacity(want)
    }

    fn give_back(&mut self, buf: BytesMut) {
        self.pool.push(buf);
    }

    /// Waiting for the app: keep nothing but the buffer being read into.
    fn idle(&mut self) {
        self.pool.clear();
    }
}

async fn to_tunnel<R: AsyncRead + Unpin>(
    mut reader: R,
    mut send: SendStream<Bytes>,
) -> io::Result<u64> {
    let mut copied = 0u64;
    let mut buffers = ReadBuffers::new();
    loop {
        let mut buf = buffers.take(buffer_size(copied));
        let mut waited = false;
        let read = poll_fn(|cx| {
            let poll = tokio_util::io::poll_read_buf(Pin::new(&mut reader), cx, &mut buf);
            if poll.is_pending() && !waited {
                waited = true;
                buffers.idle();
            }
            poll
        })
        .await;
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                send.send_reset(h2::Reason::CANCEL);
                return Err(e);
            }
        };
        if n == 0 {
            // Half-close: tell the peer we are done sending. A peer that already reset the
            // stream has nothing left to tell.
            if let Err(e) = send.send_data(Bytes::new(), true)
                && !e.is_reset()
            {
                return Err(h2_to_io(e));
            }
            return Ok(copied);
        }
        copied += n as u64;
        let mut chunk = buf.split().freeze();
        buffers.give_back(buf);
        while !chunk.is_empty() {
            let cap =
                poll_fn(|cx| H2Stream::poll_send_capacity(&mut send, cx, chunk.len())).await?;
            let part = chunk.split_to(cap.min(chunk.len()));
            send.send_data(part, false).map_err(h2_to_io)?;
        }
    }
}

async fn from_tunnel<W: AsyncWrite + Unpin>(
    mut recv: RecvStream,
    pending: Bytes,
    mut writer: W,
) -> io::Result<u64> {
    let mut copied = 0u64;
    if !pending.is_empty() {
        writer.write_all(&pending).await?;
        copied += pending.len() as u64;
        let _ = recv.flow_control().release_capacity(pending.len());
    }
    loop {
        match recv.data().await {
            Some(Ok(data)) => {
                if data.is_empty() {
                    continue;
                }
                writer.write_all(&data).await?;
                copied += data.len() as u64;
                let _ = recv.flow_control().release_capacity(data.len());
            }
            Some(Err(e)) if is_graceful_reset(&e) => break,
            Some(Err(e)) => return Err(h2_to_io(e)),
            None => break,
        }
    }
    writer.flush().await?;
    // Half-close towards the local side. A socket whose peer is already gone is fine.
    match writer.shutdown().await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
        Err(e) => return Err(e),
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_grow_only_for_bulk() {
        assert_eq!(buffer_size(0), SMALL);
        assert_eq!(buffer_size(MEDIUM_AFTER - 1), SMALL);
        assert_eq!(buffer_size(MEDIUM_AFTER), MEDIUM);
        assert_eq!(buffer_size(LARGE_AFTER), LARGE);
    }

    /// Reads `n` bytes into a buffer from the pool and "sends" them (the returned chunk is
    /// what h2 would hold until written).
    fn read_and_send(pool: &mut ReadBuffers, n: usize) -> (Bytes, *const u8) {
        let mut buf = pool.take(n);
        let start = buf.as_ptr();
        buf.extend_from_slice(&vec![7u8; n]);
        let chunk = buf.split().freeze();
        pool.give_back(buf);
        (chunk, start)
    }

    #[test]
    fn read_buffers_are_reused_once_h2_has_sent_them() {
        let mut pool = ReadBuffers::new();
        let (first, first_at) = read_and_send(&mut pool, LARGE);
        // Still queued in h2: the next read needs another buffer.
        let (second, second_at) = read_and_send(&mut pool, LARGE);
        assert_ne!(first_at, second_at);
        // Sent and dropped by h2: its memory is read into again, no new allocation.
        drop(first);
        let (_third, third_at) = read_and_send(&mut pool, LARGE);
        assert_eq!(third_at, first_at);
        drop(second);
    }

    #[test]
    fn the_pool_stays_bounded_when_h2_holds_everything() {
        let mut pool = ReadBuffers::new();
        let held: Vec<Bytes> = (0..10).map(|_| read_and_send(&mut pool, LARGE).0).collect();
        assert!(pool.pool.len() <= POOL);
        assert_eq!(held.len(), 10);
        pool.idle();
        assert!(
            pool.pool.is_empty(),
            "an upload waiting for its app keeps no spare buffers"
        );
    }
}

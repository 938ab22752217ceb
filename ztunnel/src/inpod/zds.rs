//! The ZDS client: ztunnel's side of the node agent ⇄ ztunnel protocol.
//!
//! Transport: a Unix `SOCK_SEQPACKET` socket (`INPOD_UDS`), one protobuf message per datagram.
//! ztunnel connects (retrying 10 ms doubling to 15 s), sends `ZdsHello{version: V1}`, then
//! answers every `WorkloadRequest` with exactly one `WorkloadResponse{ack}`. Requests are read
//! into a [`RECV_BUFFER_SIZE`]-byte buffer with `MSG_CMSG_CLOEXEC`; a truncated datagram
//! (`MSG_TRUNC`) or truncated ancillary data (`MSG_CTRUNC`) is an error. An `add` must carry
//! exactly one `SCM_RIGHTS` fd (the pod's network namespace); no other message may carry one.
//!
//! Error handling follows the reference rule table ([`ZdsError::is_fatal`]):
//!
//! | error | reaction |
//! |---|---|
//! | `add` without `workload_info`, `keep` after `snapshot_sent`, second `snapshot_sent` | NACK, then the client stops ([`ZdsEvent::Fatal`]): the manager shuts down |
//! | `add` without fd, non-`add` with fd, more than one fd, undecodable or oversized datagram | NACK, drop the connection, reconnect ([`ZdsEvent::Disconnected`]) |
//! | I/O error or EOF | drop the connection, reconnect |
//!
//! A failed hello (or a session that ends before handling any request) waits an "announce"
//! backoff (5 ms ×2, jitter 0.2, up to 15 s) before reconnecting.
//!
//! The client does not act on requests: it forwards each valid one to the manager as a
//! [`ZdsEvent::Request`] and sends the manager's answer as the ack.
//!
//! # Unsafe
//!
//! Allowed for two things: taking ownership of the fds the kernel installed for a received
//! `SCM_RIGHTS` message (nix hands them out as raw fds), and registering the socket with tokio's
//! reactor (`AsyncFd::register`, whose contract is that the fd stays open while registered).

#![allow(unsafe_code)]

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, send};
use prost::Message;
use proto::istio::workload::zds::{
    Ack, Version, WorkloadRequest, WorkloadResponse, ZdsHello, workload_request::Payload,
    workload_response,
};
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::manager::PodInfo;
use super::netns::NetnsHandle;

/// Size of the receive buffer: a larger datagram is rejected (`MSG_TRUNC`), as in Istio.
pub const RECV_BUFFER_SIZE: usize = 1024;

/// Ancillary space for this many fds. Linux never passes more than `SCM_MAX_FD` (253) fds in
/// one message, so with this much space the kernel never has to discard fds it cannot fit:
/// every fd a peer sends is received, owned and closed when rejected (a buffer for one fd would
/// leak the fds installed before `MSG_CTRUNC`). Messages with more than one fd are still errors.
const CMSG_MAX_FDS: usize = 253;

/// Connection and backoff settings of the client.
#[derive(Clone, Debug)]
pub struct ZdsConfig {
    /// The agent's socket (`INPOD_UDS`, default `/var/run/ztunnel/ztunnel.sock`).
    pub uds_path: PathBuf,
    /// First connect retry delay (10 ms); doubles on each failure.
    pub connect_initial_delay: Duration,
    /// Cap of the connect retry delay (15 s).
    pub connect_max_delay: Duration,
    /// First announce (hello / failed session) backoff delay (5 ms); doubles, jitter 0.2.
    pub announce_initial_delay: Duration,
    /// Cap of the announce backoff (15 s).
    pub announce_max_delay: Duration,
}

/// Default `INPOD_UDS`.
pub const DEFAULT_UDS_PATH: &str = "/var/run/ztunnel/ztunnel.sock";

impl ZdsConfig {
    /// Istio's timings for the socket at `uds_path`.
    pub fn new(uds_path: impl Into<PathBuf>) -> Self {
        ZdsConfig {
            uds_path: uds_path.into(),
            connect_initial_delay: Duration::from_millis(10),
            connect_max_delay: Duration::from_secs(15),
            announce_initial_delay: Duration::from_millis(5),
            announce_max_delay: Duration::from_secs(15),
        }
    }
}

impl Default for ZdsConfig {
    fn default() -> Self {
        Self::new(DEFAULT_UDS_PATH)
    }
}

/// A validated request from the node agent.
#[derive(Debug)]
pub enum ZdsRequest {
    /// Serve a pod; `netns` is the namespace fd that came with the message.
    Add {
        /// Who the pod is.
        pod: PodInfo,
        /// The pod's network namespace.
        netns: NetnsHandle,
    },
    /// Snapshot only: the agent knows the pod but holds no netns for it; keep serving it.
    Keep {
        /// Pod UID.
        uid: String,
    },
    /// Stop serving a pod.
    Del {
        /// Pod UID.
        uid: String,
    },
    /// The snapshot is complete.
    SnapshotSent,
}

impl ZdsRequest {
    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ZdsRequest::Add { .. } => "add",
            ZdsRequest::Keep { .. } => "keep",
            ZdsRequest::Del { .. } => "del",
            ZdsRequest::SnapshotSent => "snapshot_sent",
        }
    }
}

/// What the client reports to the manager.
#[derive(Debug)]
pub enum ZdsEvent {
    /// A request to act on; the answer becomes the ack (`Err` ⇒ NACK with that text).
    Request {
        /// The request.
        request: ZdsRequest,
        /// Where to send the outcome. Exactly one answer per request.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// The connection was lost; the client is reconnecting.
    Disconnected,
    /// A fatal protocol violation: the client has stopped.
    Fatal(ZdsError),
}

/// ZDS failures. Messages tell an operator what the peer did wrong.
#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    /// Socket error.
    #[error("ZDS socket error: {0}")]
    Io(#[from] io::Error),
    /// Orderly close by the agent.
    #[error("the node agent closed the ZDS connection")]
    Closed,
    /// Datagram larger than the receive buffer.
    #[error("ZDS datagram larger than {RECV_BUFFER_SIZE} bytes (MSG_TRUNC)")]
    Truncated,
    /// Ancillary data did not fit.
    #[error("ZDS ancillary data truncated (MSG_CTRUNC)")]
    ControlTruncated,
    /// Not a `WorkloadRequest`.
    #[error("undecodable WorkloadRequest: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A `WorkloadRequest` with no (or an unknown) payload.
    #[error("WorkloadRequest without a known payload")]
    EmptyRequest,
    /// `add` without its namespace fd.
    #[error("add for pod {uid} carries no network namespace fd")]
    AddWithoutFd {
        /// Pod UID.
        uid: String,
    },
    /// `add` with several fds.
    #[error("add for pod {uid} carries {count} fds; exactly one is expected")]
    TooManyFds {
        /// Pod UID.
        uid: String,
        /// Number of fds received.
        count: usize,
    },
    /// A non-`add` message with fds.
    #[error("{kind} message carries {count} fd(s); only add may carry one")]
    UnexpectedFd {
        /// Message kind.
        kind: &'static str,
        /// Number of fds received.
        count: usize,
    },
    /// The fd could not be inspected.
    #[error("network namespace fd for pod {uid} is unusable: {source}")]
    BadNetns {
        /// Pod UID.
        uid: String,
        /// Why.
        source: io::Error,
    },
    /// Fatal: `add` without `workload_info`.
    #[error("protocol violation: add for pod {uid} without workload_info")]
    AddWithoutWorkloadInfo {
        /// Pod UID.
        uid: String,
    },
    /// Fatal: `keep` after the snapshot.
    #[error("protocol violation: keep for pod {uid} after snapshot_sent")]
    KeepAfterSnapshot {
        /// Pod UID.
        uid: String,
    },
    /// Fatal: a second `snapshot_sent` on one connection.
    #[error("protocol violation: second snapshot_sent on one connection")]
    DuplicateSnapshotSent,
}

impl ZdsError {
    /// Fatal errors stop the client and the manager.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ZdsError::AddWithoutWorkloadInfo { .. }
                | ZdsError::KeepAfterSnapshot { .. }
                | ZdsError::DuplicateSnapshotSent
        )
    }

    /// Whether the agent is owed a NACK (everything but a lost connection).
    fn needs_nack(&self) -> bool {
        !matches!(self, ZdsError::Io(_) | ZdsError::Closed)
    }
}

/// One received datagram.
#[derive(Debug)]
pub struct Datagram {
    /// The payload (at most [`RECV_BUFFER_SIZE`] bytes).
    pub bytes: Vec<u8>,
    /// The fds that came with it (already owned: dropped ⇒ closed).
    pub fds: Vec<OwnedFd>,
}

/// Turns a datagram into a request, applying the fd rules and the per-connection snapshot rules.
pub fn parse_request(dgram: Datagram, snapshot_sent: bool) -> Result<ZdsRequest, ZdsError> {
    let Datagram { bytes, mut fds } = dgram;
    let req = WorkloadRequest::decode(bytes.as_slice())?;
    let payload = req.payload.ok_or(ZdsError::EmptyRequest)?;
    let no_fds = |kind: &'static str, fds: &[OwnedFd]| {
        if fds.is_empty() {
            Ok(())
        } else {
            Err(ZdsError::UnexpectedFd {
                kind,
                count: fds.len(),
            })
        }
    };
    match payload {
        Payload::Add(add) => {
            let uid = add.uid;
            match fds.len() {
                0 => return Err(ZdsError::AddWithoutFd { uid }),
                1 => {}
                count => return Err(ZdsError::TooManyFds { uid, count }),
            }
            let Some(info) = add.workload_info else {
                return Err(ZdsError::AddWithoutWorkloadInfo { uid });
            };
            let fd = fds.pop().expect("exactly one fd");
            let netns = NetnsHandle::from_fd(fd).map_err(|source| ZdsError::BadNetns {
                uid: uid.clone(),
                source,
            })?;
            Ok(ZdsRequest::Add {
                pod: PodInfo {
                    uid,
                    name: info.name,
                    namespace: info.namespace,
                    service_account: info.service_account,
                },
                netns,
            })
        }
        Payload::Keep(keep) => {
            no_fds("keep", &fds)?;
            if snapshot_sent {
                return Err(ZdsError::KeepAfterSnapshot { uid: keep.uid });
            }
            Ok(ZdsRequest::Keep { uid: keep.uid })
        }
        Payload::Del(del) => {
            no_fds("del", &fds)?;
            Ok(ZdsRequest::Del { uid: del.uid })
        }
        Payload::SnapshotSent(_) => {
            no_fds("snapshot_sent", &fds)?;
            if snapshot_sent {
                return Err(ZdsError::DuplicateSnapshotSent);
            }
            Ok(ZdsRequest::SnapshotSent)
        }
    }
}

/// An established ZDS connection (nonblocking `SOCK_SEQPACKET` under tokio's reactor).
#[derive(Debug)]
pub struct ZdsConnection {
    fd: AsyncFd<OwnedFd>,
}

impl ZdsConnection {
    /// Connects to the agent's socket. Must run inside a tokio runtime.
    pub fn connect(path: &Path) -> io::Result<Self> {
        let sock = Socket::new(Domain::UNIX, Type::SEQPACKET.nonblocking().cloexec(), None)?;
        // Connecting a Unix socket completes (or fails) immediately, also when nonblocking.
        sock.connect(&SockAddr::unix(path)?)?;
        Self::from_socket(sock)
    }

    /// Wraps an already connected `SOCK_SEQPACKET` socket (tests use socket pairs).
    pub fn from_socket(sock: Socket) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        let fd = OwnedFd::from(sock);
        // SAFETY: `fd` is an open fd owned by the `OwnedFd` we move into the `AsyncFd`; nothing
        // else can close it while registered, and `OwnedFd::as_raw_fd` always returns the same
        // descriptor.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(ZdsConnection { fd })
    }

    /// Sends one datagram.
    pub async fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let n = self
            .fd
            .async_io(Interest::WRITABLE, |fd| {
                send(fd.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)
            })
            .await?;
        if n != bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short ZDS send: {n} of {} bytes", bytes.len()),
            ));
        }
        Ok(())
    }

    /// Sends `ZdsHello{version: V1}`.
    pub async fn send_hello(&self) -> io::Result<()> {
        let hello = ZdsHello {
            version: Version::V1 as i32,
        };
        self.send(&hello.encode_to_vec()).await
    }

    /// Sends `WorkloadResponse{ack{error}}`; `None` is an ACK.
    pub async fn send_ack(&self, error: Option<&str>) -> io::Result<()> {
        let resp = WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(Ack {
                error: error.unwrap_or_default().to_owned(),
            })),
        };
        self.send(&resp.encode_to_vec()).await
    }

    /// Receives one datagram, with its fds.
    pub async fn recv(&self) -> Result<Datagram, ZdsError> {
        let raw = self
            .fd
            .async_io(Interest::READABLE, |fd| recv_once(fd.as_raw_fd()))
            .await?;
        if raw.bytes == 0 && !raw.truncated {
            // SEQPACKET: a zero-length read is the peer's orderly shutdown.
            return Err(ZdsError::Closed);
        }
        if raw.truncated {
            return Err(ZdsError::Truncated);
        }
        if raw.ctruncated {
            return Err(ZdsError::ControlTruncated);
        }
        let mut buf = raw.buf;
        buf.truncate(raw.bytes);
        Ok(Datagram {
            bytes: buf,
            fds: raw.fds,
        })
    }
}

struct RawRecv {
    buf: Vec<u8>,
    bytes: usize,
    truncated: bool,
    ctruncated: bool,
    fds: Vec<OwnedFd>,
}

fn recv_once(fd: RawFd) -> io::Result<RawRecv> {
    let mut buf = vec![0u8; RECV_BUFFER_SIZE];
    let mut cmsg = nix::cmsg_space!([RawFd; CMSG_MAX_FDS]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    let ctruncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    // With MSG_CTRUNC nix refuses to walk the control messages; with room for SCM_MAX_FD fds
    // that only happens for unexpected control messages, never for discarded fds.
    if let Ok(cmsgs) = msg.cmsgs() {
        for cmsg in cmsgs {
            match cmsg {
                ControlMessageOwned::ScmRights(raw_fds) => {
                    for raw in raw_fds {
                        // SAFETY: the kernel installed `raw` in our fd table for this
                        // SCM_RIGHTS message; nothing else refers to it, so we become its
                        // only owner (it is closed when dropped, also on rejection).
                        fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                    }
                }
                other => debug!(?other, "ignoring unexpected ZDS control message"),
            }
        }
    }
    let bytes = msg.bytes;
    let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
    Ok(RawRecv {
        buf,
        bytes,
        truncated,
        ctruncated,
        fds,
    })
}

/// Exponential backoff with optional jitter.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
    current: Option<Duration>,
}

impl Backoff {
    /// Starts at `initial`, doubles up to `max`; each delay is scaled by a random factor in
    /// `[1 - jitter, 1 + jitter]`.
    pub fn new(initial: Duration, max: Duration, jitter: f64) -> Self {
        Backoff {
            initial,
            max,
            jitter,
            current: None,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let base = match self.current {
            None => self.initial,
            Some(cur) => (cur * 2).min(self.max),
        };
        self.current = Some(base);
        if self.jitter > 0.0 {
            base.mul_f64(rand::random_range(
                (1.0 - self.jitter)..=(1.0 + self.jitter),
            ))
        } else {
            base
        }
    }

    /// Back to the initial delay.
    pub fn reset(&mut self) {
        self.current = None;
    }
}

/// How a session ended.
enum SessionEnd {
    /// The manager dropped its receiver: stop quietly.
    ManagerGone,
    /// The connection failed; reconnect (or stop, if fatal).
    Error(ZdsError),
}

/// The reconnecting client.
#[derive(Debug)]
pub struct ZdsClient {
    cfg: ZdsConfig,
}

impl ZdsClient {
    /// A client for `cfg`.
    pub fn new(cfg: ZdsConfig) -> Self {
        ZdsClient { cfg }
    }

    /// Connects, retrying 10 ms doubling up to 15 s, forever.
    async fn connect_with_retry(&self) -> ZdsConnection {
        let mut backoff = Backoff::new(
            self.cfg.connect_initial_delay,
            self.cfg.connect_max_delay,
            0.0,
        );
        let mut attempts = 0u64;
        loop {
            match ZdsConnection::connect(&self.cfg.uds_path) {
                Ok(conn) => return conn,
                Err(e) => {
                    attempts += 1;
                    let delay = backoff.next_delay();
                    // Do not flood the log while the agent is down.
                    if attempts == 1 || attempts.is_power_of_two() {
                        warn!(path = %self.cfg.uds_path.display(), error = %e, attempts, ?delay, "cannot connect to the node agent's ZDS socket, retrying");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Runs until a fatal protocol error (reported as [`ZdsEvent::Fatal`]) or until `events`'
    /// receiver is dropped.
    pub async fn run(self, events: mpsc::Sender<ZdsEvent>) {
        let mut announce = Backoff::new(
            self.cfg.announce_initial_delay,
            self.cfg.announce_max_delay,
            0.2,
        );
        loop {
            let conn = self.connect_with_retry().await;
            if let Err(e) = conn.send_hello().await {
                let delay = announce.next_delay();
                warn!(error = %e, ?delay, "sending ZdsHello failed, reconnecting");
                tokio::time::sleep(delay).await;
                continue;
            }
            info!(path = %self.cfg.uds_path.display(), "connected to the node agent (ZDS)");
            let (handled, end) = serve(&conn, &events).await;
            drop(conn);
            match end {
                SessionEnd::ManagerGone => return,
                SessionEnd::Error(e) if e.is_fatal() => {
                    warn!(error = %e, "fatal ZDS protocol error, stopping the workload manager");
                    let _ = events.send(ZdsEvent::Fatal(e)).await;
                    return;
                }
                SessionEnd::Error(e) => {
                    if events.send(ZdsEvent::Disconnected).await.is_err() {
                        return;
                    }
                    if handled {
                        announce.reset();
                    }
                    let delay = announce.next_delay();
                    match e {
                        ZdsError::Closed => info!(?delay, "ZDS connection closed, reconnecting"),
                        e => warn!(error = %e, ?delay, "ZDS connection dropped, reconnecting"),
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Serves one connection; returns whether any request was handled, and how it ended.
async fn serve(conn: &ZdsConnection, events: &mpsc::Sender<ZdsEvent>) -> (bool, SessionEnd) {
    let mut snapshot_sent = false;
    let mut handled = false;
    loop {
        let request = match conn
            .recv()
            .await
            .and_then(|d| parse_request(d, snapshot_sent))
        {
            Ok(r) => r,
            Err(e) => {
                if e.needs_nack() {
                    // Best effort: the connection is dropped right after.
                    let _ = conn.send_ack(Some(&e.to_string())).await;
                }
                return (handled, SessionEnd::Error(e));
            }
        };
        let kind = request.kind();
        if matches!(request, ZdsRequest::SnapshotSent) {
            snapshot_sent = true;
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let event = ZdsEvent::Request {
            request,
            reply: reply_tx,
        };
        if events.send(event).await.is_err() {
            return (handled, SessionEnd::ManagerGone);
        }
        let Ok(outcome) = reply_rx.await else {
            return (handled, SessionEnd::ManagerGone);
        };
        if let Err(reason) = &outcome {
            debug!(kind, %reason, "NACKing ZDS request");
        }
        if let Err(e) = conn.send_ack(outcome.err().as_deref()).await {
            return (handled, SessionEnd::Error(e.into()));
        }
        handled = true;
    }
}

#[cfg(test)]
mod tests;

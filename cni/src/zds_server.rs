//! The ZDS server: the node agent's side of the agent ⇄ ztunnel protocol.
//!
//! Transport: a Unix `SOCK_SEQPACKET` listener (a stale socket file is removed first), at most
//! [`MAX_ACCEPTS_PER_SEC`] accepted connections per second, one protobuf message per datagram,
//! [`RECV_BUFFER_SIZE`]-byte receive buffers (`MSG_TRUNC`/`MSG_CTRUNC` ⇒ the connection is
//! dropped; fds a client sends are discarded by the kernel because no ancillary buffer is
//! offered).
//!
//! Per connection: read `ZdsHello` (5 s deadline, version must be `V1`); replay the snapshot
//! from the agent's cache — `add{uid, workload_info}` + the netns fd (`SCM_RIGHTS`) for pods
//! whose netns the agent holds, `keep{uid}` for the others — each answered by one ack; then
//! `snapshot_sent`. Afterwards the connection serves steady-state requests one at a time:
//! [`ZdsServer::add`] goes to the **newest** connection only, [`ZdsServer::del`] to **all**.
//! Every request waits for exactly one `WorkloadResponse{ack}` ([`ACK_TIMEOUT`]); a non-empty
//! `ack.error` is a NACK, returned to the caller (the agent retries). While idle the
//! connection watches the socket: EOF ⇒ closed, any unsolicited datagram ⇒ protocol error,
//! closed. Several ztunnels may be connected at once (rolling update).
//!
//! # Unsafe
//!
//! Only for registering sockets with tokio's reactor (`AsyncFd::register`, whose contract is
//! that the fd stays open while registered: the `Socket` is owned by the `AsyncFd`).

#![allow(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, MsgFlags, recvmsg, sendmsg};
use parking_lot::Mutex;
use prost::Message;
use proto::istio::workload::zds::{
    AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, Version, WorkloadInfo, WorkloadRequest,
    WorkloadResponse, ZdsHello, workload_request::Payload, workload_response,
};
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

/// Receive buffer size (a larger datagram is an error).
pub const RECV_BUFFER_SIZE: usize = 1024;
/// Deadline for the hello and for each ack.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Accept rate limit.
pub const MAX_ACCEPTS_PER_SEC: u32 = 5;

/// ZDS failures seen by the agent.
#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    /// No ztunnel is connected (retry later).
    #[error("no ztunnel is connected to the ZDS socket")]
    NotConnected,
    /// ztunnel answered with a non-empty error.
    #[error("ztunnel rejected the request: {0}")]
    Nack(String),
    /// No ack within the deadline.
    #[error("ztunnel did not acknowledge within {0:?}")]
    Timeout(Duration),
    /// The connection broke.
    #[error("ZDS connection lost: {0}")]
    Io(#[from] io::Error),
    /// The peer sent something that is not a valid message here.
    #[error("ZDS protocol error from ztunnel: {0}")]
    Protocol(String),
}

/// One pod of the agent's cache, as replayed to a new connection.
#[derive(Debug)]
pub struct SnapshotEntry {
    /// Pod UID.
    pub uid: String,
    /// Who the pod is.
    pub info: WorkloadInfo,
    /// The pod's netns, when the agent holds it (⇒ `add`); `None` ⇒ `keep`.
    pub netns: Option<OwnedFd>,
}

/// Produces the snapshot for a new connection.
pub type SnapshotFn = Arc<dyn Fn() -> Vec<SnapshotEntry> + Send + Sync>;

struct Command {
    req: WorkloadRequest,
    fd: Option<OwnedFd>,
    reply: oneshot::Sender<Result<(), ZdsError>>,
}

struct ConnHandle {
    id: u64,
    tx: mpsc::Sender<Command>,
}

struct Inner {
    conns: Mutex<Vec<ConnHandle>>,
    snapshot: SnapshotFn,
    next_id: AtomicU64,
    connected: watch::Sender<usize>,
}

/// The listening server; cheap to clone.
#[derive(Clone)]
pub struct ZdsServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ZdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZdsServer")
            .field("connected", &self.connected())
            .finish()
    }
}

/// The bound listener, returned by [`ZdsServer::bind`]; run it with [`ZdsListener::run`].
#[derive(Debug)]
pub struct ZdsListener {
    sock: AsyncFd<Socket>,
    path: PathBuf,
}

impl ZdsServer {
    /// Removes a stale socket at `path`, binds and listens. Must run inside a tokio runtime.
    pub fn bind(path: &Path, snapshot: SnapshotFn) -> io::Result<(ZdsServer, ZdsListener)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let sock = Socket::new(Domain::UNIX, Type::SEQPACKET.nonblocking().cloexec(), None)?;
        sock.bind(&SockAddr::unix(path)?)?;
        sock.listen(128)?;
        let (connected, _) = watch::channel(0);
        let server = ZdsServer {
            inner: Arc::new(Inner {
                conns: Mutex::new(Vec::new()),
                snapshot,
                next_id: AtomicU64::new(1),
                connected,
            }),
        };
        let listener = ZdsListener {
            sock: register(sock)?,
            path: path.to_owned(),
        };
        Ok((server, listener))
    }

    /// Number of connected ztunnels (hello received).
    pub fn connected(&self) -> usize {
        *self.inner.connected.borrow()
    }

    /// Watches the number of connected ztunnels.
    pub fn watch_connected(&self) -> watch::Receiver<usize> {
        self.inner.connected.subscribe()
    }

    /// Sends `add` (+ a duplicate of `netns`) to the newest connection and waits for its ack.
    pub async fn add(
        &self,
        uid: &str,
        info: WorkloadInfo,
        netns: &impl AsFd,
    ) -> Result<(), ZdsError> {
        let tx = {
            let conns = self.inner.conns.lock();
            conns.iter().max_by_key(|c| c.id).map(|c| c.tx.clone())
        };
        let tx = tx.ok_or(ZdsError::NotConnected)?;
        let fd = netns.as_fd().try_clone_to_owned()?;
        let req = WorkloadRequest {
            payload: Some(Payload::Add(AddWorkload {
                uid: uid.to_owned(),
                workload_info: Some(info),
            })),
        };
        send_command(&tx, req, Some(fd)).await
    }

    /// Sends `del{uid}` to every connection; the first failure is returned (all are tried).
    /// With no connection this is a no-op: the next snapshot will not name the pod.
    pub async fn del(&self, uid: &str) -> Result<(), ZdsError> {
        let txs: Vec<_> = self
            .inner
            .conns
            .lock()
            .iter()
            .map(|c| c.tx.clone())
            .collect();
        let req = WorkloadRequest {
            payload: Some(Payload::Del(DelWorkload {
                uid: uid.to_owned(),
            })),
        };
        let results = futures_util::future::join_all(
            txs.iter().map(|tx| send_command(tx, req.clone(), None)),
        )
        .await;
        results.into_iter().collect()
    }
}

/// Registers `sock` with tokio's reactor.
fn register(sock: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: the socket is moved into the `AsyncFd` and stays open (owned by it) for as long
    // as it is registered; `Socket::as_raw_fd` always returns the same descriptor.
    unsafe { AsyncFd::register(sock) }.map_err(io::Error::from)
}

async fn send_command(
    tx: &mpsc::Sender<Command>,
    req: WorkloadRequest,
    fd: Option<OwnedFd>,
) -> Result<(), ZdsError> {
    let (reply, rx) = oneshot::channel();
    tx.send(Command { req, fd, reply })
        .await
        .map_err(|_| ZdsError::NotConnected)?;
    rx.await.unwrap_or(Err(ZdsError::NotConnected))
}

impl ZdsListener {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts connections forever (at most [`MAX_ACCEPTS_PER_SEC`] per second).
    pub async fn run(self, server: ZdsServer) {
        let pause = Duration::from_secs(1) / MAX_ACCEPTS_PER_SEC;
        loop {
            let accepted = self.sock.async_io(Interest::READABLE, |s| s.accept()).await;
            match accepted {
                Ok((conn, _)) => {
                    let server = server.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(server, conn).await {
                            warn!(error = %e, "ZDS connection ended");
                        }
                    });
                }
                Err(e) => warn!(error = %e, "ZDS accept failed"),
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// One connected peer.
struct Conn {
    fd: AsyncFd<Socket>,
}

/// What one receive produced.
enum Recv {
    Msg(Vec<u8>),
    Eof,
}

impl Conn {
    async fn send(&self, msg: &WorkloadRequest, fd: Option<&OwnedFd>) -> io::Result<()> {
        let bytes = msg.encode_to_vec();
        let n = self
            .fd
            .async_io(Interest::WRITABLE, |s| {
                let iov = [IoSlice::new(&bytes)];
                let fds;
                let cmsgs: Vec<ControlMessage> = match fd {
                    Some(f) => {
                        fds = [f.as_raw_fd()];
                        vec![ControlMessage::ScmRights(&fds)]
                    }
                    None => vec![],
                };
                sendmsg::<()>(s.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            })
            .await?;
        if n != bytes.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short ZDS send"));
        }
        Ok(())
    }

    async fn recv(&self) -> Result<Recv, ZdsError> {
        let (n, trunc, ctrunc, buf) = self
            .fd
            .async_io(Interest::READABLE, |s| {
                let mut buf = vec![0u8; RECV_BUFFER_SIZE];
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, None, MsgFlags::MSG_CMSG_CLOEXEC)
                    .map_err(io::Error::from)?;
                let (n, f) = (msg.bytes, msg.flags);
                Ok((
                    n,
                    f.contains(MsgFlags::MSG_TRUNC),
                    f.contains(MsgFlags::MSG_CTRUNC),
                    buf,
                ))
            })
            .await?;
        if trunc {
            return Err(ZdsError::Protocol(format!(
                "datagram larger than {RECV_BUFFER_SIZE} bytes"
            )));
        }
        if ctrunc {
            return Err(ZdsError::Protocol(
                "ztunnel sent ancillary data (fds); none is expected".into(),
            ));
        }
        if n == 0 {
            return Ok(Recv::Eof);
        }
        let mut buf = buf;
        buf.truncate(n);
        Ok(Recv::Msg(buf))
    }

    async fn recv_timeout(&self) -> Result<Vec<u8>, ZdsError> {
        match tokio::time::timeout(ACK_TIMEOUT, self.recv()).await {
            Err(_) => Err(ZdsError::Timeout(ACK_TIMEOUT)),
            Ok(Ok(Recv::Eof)) => Err(ZdsError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(Ok(Recv::Msg(m))) => Ok(m),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Sends one request and waits for its ack. Connection-level failures are `Err(Err)`;
    /// a NACK is `Ok(Err(Nack))`.
    async fn request(
        &self,
        req: &WorkloadRequest,
        fd: Option<&OwnedFd>,
    ) -> Result<Result<(), ZdsError>, ZdsError> {
        self.send(req, fd).await?;
        let bytes = self.recv_timeout().await?;
        let resp = WorkloadResponse::decode(bytes.as_slice())
            .map_err(|e| ZdsError::Protocol(format!("undecodable WorkloadResponse: {e}")))?;
        match resp.payload {
            Some(workload_response::Payload::Ack(ack)) if ack.error.is_empty() => Ok(Ok(())),
            Some(workload_response::Payload::Ack(ack)) => Ok(Err(ZdsError::Nack(ack.error))),
            None => Err(ZdsError::Protocol("WorkloadResponse without ack".into())),
        }
    }
}

fn kind(req: &WorkloadRequest) -> &'static str {
    match req.payload {
        Some(Payload::Add(_)) => "add",
        Some(Payload::Del(_)) => "del",
        Some(Payload::Keep(_)) => "keep",
        Some(Payload::SnapshotSent(_)) => "snapshot_sent",
        None => "empty",
    }
}

struct Registration {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut conns = self.inner.conns.lock();
        conns.retain(|c| c.id != self.id);
        let n = conns.len();
        drop(conns);
        self.inner.connected.send_replace(n);
        info!(
            conn = self.id,
            remaining = n,
            "ztunnel disconnected from ZDS"
        );
    }
}

async fn serve(server: ZdsServer, sock: Socket) -> Result<(), ZdsError> {
    sock.set_nonblocking(true)?;
    let conn = Conn {
        fd: register(sock)?,
    };
    let hello = conn.recv_timeout().await?;
    let hello = ZdsHello::decode(hello.as_slice())
        .map_err(|e| ZdsError::Protocol(format!("undecodable ZdsHello: {e}")))?;
    if hello.version != Version::V1 as i32 {
        return Err(ZdsError::Protocol(format!(
            "unsupported ZDS version {}",
            hello.version
        )));
    }
    let inner = server.inner.clone();
    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    // Register before the snapshot is taken: a pod added meanwhile is either in the snapshot,
    // or queued for this connection (both, at worst: a duplicate add is a no-op in ztunnel).
    let (tx, mut rx) = mpsc::channel::<Command>(64);
    let _reg = {
        let mut conns = inner.conns.lock();
        conns.push(ConnHandle { id, tx });
        let n = conns.len();
        drop(conns);
        inner.connected.send_replace(n);
        Registration {
            inner: inner.clone(),
            id,
        }
    };
    info!(conn = id, "ztunnel connected to ZDS; sending snapshot");
    let entries = (inner.snapshot)();
    let count = entries.len();
    for e in entries {
        let (req, fd) = match e.netns {
            Some(fd) => (
                WorkloadRequest {
                    payload: Some(Payload::Add(AddWorkload {
                        uid: e.uid.clone(),
                        workload_info: Some(e.info),
                    })),
                },
                Some(fd),
            ),
            None => (
                WorkloadRequest {
                    payload: Some(Payload::Keep(KeepWorkload { uid: e.uid.clone() })),
                },
                None,
            ),
        };
        if let Err(nack) = conn.request(&req, fd.as_ref()).await? {
            warn!(conn = id, uid = %e.uid, error = %nack, "ztunnel NACKed a snapshot entry");
        }
    }
    let sent = WorkloadRequest {
        payload: Some(Payload::SnapshotSent(SnapshotSent {})),
    };
    if let Err(nack) = conn.request(&sent, None).await? {
        warn!(conn = id, error = %nack, "ztunnel NACKed snapshot_sent");
    }
    info!(conn = id, pods = count, "ZDS snapshot sent");
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return Ok(()) };
                let k = kind(&cmd.req);
                match conn.request(&cmd.req, cmd.fd.as_ref()).await {
                    Ok(outcome) => {
                        debug!(conn = id, kind = k, ok = outcome.is_ok(), "ZDS request answered");
                        let _ = cmd.reply.send(outcome);
                    }
                    Err(e) => {
                        let _ = cmd.reply.send(Err(ZdsError::Protocol(format!("{k}: {e}"))));
                        return Err(e);
                    }
                }
            }
            got = conn.recv() => {
                // Liveness: nothing is expected while idle.
                return match got? {
                    Recv::Eof => {
                        info!(conn = id, "ztunnel closed the ZDS connection");
                        Ok(())
                    }
                    Recv::Msg(_) => Err(ZdsError::Protocol("unsolicited message while idle".into())),
                };
            }
        }
    }
}

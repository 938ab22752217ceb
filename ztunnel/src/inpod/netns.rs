//! Network-namespace handles, running code inside a pod's namespace, and the in-pod
//! [`SocketFactory`].
//!
//! # Threads
//!
//! `setns(CLONE_NEWNET)` switches the namespace of the *calling thread* only, and every socket
//! created afterwards on that thread lives in the new namespace. Tokio worker threads must never
//! be left in a pod's namespace, so [`run_in_netns`] never switches the caller: it hands the
//! closure to a small pool of dedicated OS threads ("netns workers", at most
//! [`MAX_NETNS_WORKERS`]). For each job a worker
//!
//! 1. `setns` into the pod's namespace (failure: the job gets the error, the worker is unchanged),
//! 2. runs the closure (a panic is caught and re-raised on the caller's thread),
//! 3. **always** `setns` back to the process's own namespace.
//!
//! If step 3 fails the worker is no longer trustworthy: it hands the closure's result back, logs
//! the error, spawns its replacement and **exits** (any later call also tops the pool up). A
//! worker therefore never runs a job in a namespace it did not choose. Each worker also enters
//! the process namespace (that of the main thread, `/proc/self/ns/net`) when it starts, so it
//! does not matter which thread spawned it.
//!
//! The pool (rather than a fresh thread per call) keeps per-connection socket creation cheap:
//! in shared mode every outbound connection of a pod needs a socket created in that pod's
//! namespace. Callers block while the job runs; a job is a handful of syscalls.
//!
//! # Unsafe
//!
//! This module is allowed `unsafe` for two `ioctl`s nix has no safe wrapper for:
//! `NS_GET_NSTYPE` (is this fd a network namespace?) and `SIOCGSKNS` (which namespace does this
//! socket belong to?). Every block carries a `SAFETY:` comment.

#![allow(unsafe_code)]

use std::fmt;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use nix::sched::{CloneFlags, setns};
use parking_lot::Mutex;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tracing::{debug, error, warn};

use crate::socket::SocketFactory;

/// Upper bound on the number of netns worker threads.
pub const MAX_NETNS_WORKERS: usize = 4;

/// Backlog of in-pod listeners (Istio's value).
pub const LISTEN_BACKLOG: i32 = 128;

/// Identity of a namespace: the `(st_dev, st_ino)` of its nsfs inode. Two fds name the same
/// namespace exactly when their identities are equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct NetnsId {
    /// Device of the nsfs mount.
    pub dev: u64,
    /// Inode number (what `ls -l /proc/<pid>/ns/net` shows as `net:[<inode>]`).
    pub inode: u64,
}

impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}]", self.inode)
    }
}

impl NetnsId {
    fn of(fd: BorrowedFd<'_>) -> io::Result<Self> {
        let st = nix::sys::stat::fstat(fd).map_err(io::Error::from)?;
        Ok(NetnsId {
            dev: st.st_dev,
            inode: st.st_ino,
        })
    }
}

/// An open handle on a network namespace. Cheap to clone (the fd is shared); the namespace stays
/// alive as long as any clone does.
#[derive(Clone)]
pub struct NetnsHandle {
    fd: Arc<OwnedFd>,
    id: NetnsId,
}

impl fmt::Debug for NetnsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetnsHandle")
            .field("fd", &self.fd.as_raw_fd())
            .field("id", &self.id)
            .finish()
    }
}

impl NetnsHandle {
    /// Opens a namespace by path (`/proc/<pid>/ns/net`, `/var/run/netns/<name>`, ...).
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("opening network namespace {}: {e}", path.display()),
            )
        })?;
        Self::from_fd(OwnedFd::from(file))
    }

    /// The network namespace of the calling thread.
    pub fn current() -> io::Result<Self> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// The network namespace of the process (its main thread).
    pub fn process() -> io::Result<Self> {
        Self::open("/proc/self/ns/net")
    }

    /// Wraps an fd received from the node agent. The `NS_GET_NSTYPE` check only logs on
    /// mismatch, as Istio does (an fd that is not a network namespace fails later, at `setns`).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        match ns_type(fd.as_fd()) {
            Ok(t) if t == CloneFlags::CLONE_NEWNET.bits() => {}
            Ok(t) => warn!(
                fd = fd.as_raw_fd(),
                nstype = t,
                "namespace fd is not a network namespace"
            ),
            Err(e) => {
                warn!(fd = fd.as_raw_fd(), error = %e, "NS_GET_NSTYPE failed on namespace fd")
            }
        }
        let id = NetnsId::of(fd.as_fd())?;
        Ok(NetnsHandle {
            fd: Arc::new(fd),
            id,
        })
    }

    /// The namespace's identity.
    pub fn id(&self) -> NetnsId {
        self.id
    }

    /// The namespace's inode number.
    pub fn inode(&self) -> u64 {
        self.id.inode
    }
}

impl AsFd for NetnsHandle {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl PartialEq for NetnsHandle {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for NetnsHandle {}

/// The raw ioctls (private: the macros generate `pub unsafe fn`s).
mod ioctl {
    // ioctl numbers from <linux/nsfs.h> and <linux/sockios.h>.
    const NSIO: u8 = 0xb7;
    const NS_GET_NSTYPE_NR: u8 = 0x3;
    const SIOCGSKNS: nix::sys::ioctl::ioctl_num_type = 0x894C;

    nix::ioctl_none!(ns_get_nstype, NSIO, NS_GET_NSTYPE_NR);
    nix::ioctl_none_bad!(siocgskns, SIOCGSKNS);
}

fn ns_type(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads kernel state of the fd; the fd is
    // borrowed, so it is open for the duration of the call.
    let t = unsafe { ioctl::ns_get_nstype(fd.as_raw_fd()) }.map_err(io::Error::from)?;
    Ok(t)
}

/// The network namespace a socket belongs to (`SIOCGSKNS`). Used by tests and diagnostics to
/// prove where a socket was created.
pub fn socket_netns(sock: BorrowedFd<'_>) -> io::Result<NetnsHandle> {
    // SAFETY: SIOCGSKNS takes no argument; on success it returns a new fd that nobody else
    // owns (it was just installed in our fd table), so taking ownership below is sound.
    let raw = unsafe { ioctl::siocgskns(sock.as_raw_fd()) }.map_err(io::Error::from)?;
    // SAFETY: see above: `raw` is a freshly created, open fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    NetnsHandle::from_fd(fd)
}

// ---------------------------------------------------------------------------------------------
// Worker pool
// ---------------------------------------------------------------------------------------------

/// What a worker does after a job.
enum After {
    Continue,
    /// The worker could not return to its home namespace: it must exit.
    Exit,
}

type Job = Box<dyn FnOnce(&NetnsHandle) -> After + Send>;

struct Pool {
    tx: mpsc::Sender<Job>,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    /// Number of live workers; guarded so that two callers do not both spawn.
    live: Arc<Mutex<usize>>,
    target: usize,
}

thread_local! {
    static IS_NETNS_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        let target = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, MAX_NETNS_WORKERS);
        Pool {
            tx,
            rx: Arc::new(Mutex::new(rx)),
            live: Arc::new(Mutex::new(0)),
            target,
        }
    })
}

impl Pool {
    /// Tops the pool up to `target` live workers (replacing any that retired).
    fn ensure_workers(&self) -> io::Result<()> {
        let mut live = self.live.lock();
        while *live < self.target {
            self.spawn_worker()?;
            *live += 1;
        }
        Ok(())
    }

    fn spawn_worker(&self) -> io::Result<()> {
        let home = NetnsHandle::process()?;
        let rx = self.rx.clone();
        let live = self.live.clone();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<io::Result<()>>(1);
        std::thread::Builder::new()
            .name("netns-worker".into())
            .spawn(move || {
                IS_NETNS_WORKER.with(|w| w.set(true));
                // Start from the process namespace, whichever thread spawned us.
                let entered = match NetnsHandle::current() {
                    Ok(cur) if cur.id() == home.id() => Ok(()),
                    _ => setns(&home, CloneFlags::CLONE_NEWNET).map_err(|e| {
                        io::Error::new(
                            io::Error::from(e).kind(),
                            format!("netns worker cannot enter the process network namespace: {e}"),
                        )
                    }),
                };
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    return;
                }
                loop {
                    let job = {
                        let rx = rx.lock();
                        match rx.recv() {
                            Ok(job) => job,
                            Err(_) => break,
                        }
                    };
                    if let After::Exit = job(&home) {
                        // Retire, and start a replacement so queued jobs are still served. The
                        // replacement enters the process namespace itself on startup.
                        *live.lock() -= 1;
                        if let Err(e) = pool().ensure_workers() {
                            error!(error = %e, "cannot replace a retired netns worker");
                        }
                        return;
                    }
                }
                *live.lock() -= 1;
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("netns worker died during startup"))?
    }
}

/// Runs `f` with the calling thread's view switched to `netns`: on a netns worker thread (see
/// the module docs), blocking the caller until it is done. Sockets created by `f` stay in
/// `netns` after it returns; they can be used from any thread.
///
/// Errors: entering the namespace failed (`EPERM` without `CAP_SYS_ADMIN`, `EINVAL` if the fd
/// is not a network namespace), or `f`'s own error. Must not be called from within `f`.
pub fn run_in_netns<T, F>(netns: &NetnsHandle, f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    if IS_NETNS_WORKER.with(|w| w.get()) {
        return Err(io::Error::other(
            "run_in_netns called from a netns worker (nested use would deadlock)",
        ));
    }
    let pool = pool();
    pool.ensure_workers()?;
    let target = netns.clone();
    let (res_tx, res_rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move |home: &NetnsHandle| {
        if let Err(e) = setns(&target, CloneFlags::CLONE_NEWNET) {
            let err = io::Error::new(
                io::Error::from(e).kind(),
                format!("entering network namespace {}: {e}", target.id()),
            );
            let _ = res_tx.send(Ok(Err(err)));
            return After::Continue;
        }
        let result = catch_unwind(AssertUnwindSafe(f));
        let back = setns(home, CloneFlags::CLONE_NEWNET);
        let _ = res_tx.send(result);
        match back {
            Ok(()) => After::Continue,
            Err(e) => {
                error!(error = %e, netns = %target.id(), "cannot return to the process network namespace; retiring this netns worker");
                After::Exit
            }
        }
    });
    pool.tx
        .send(job)
        .map_err(|_| io::Error::other("netns worker pool is gone"))?;
    match res_rx.recv() {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => resume_unwind(panic),
        Err(_) => Err(io::Error::other("netns worker exited without a result")),
    }
}

// ---------------------------------------------------------------------------------------------
// Startup check
// ---------------------------------------------------------------------------------------------

/// Why shared (in-pod) mode cannot work on this host.
#[derive(Debug, thiserror::Error)]
pub enum StartupCheckError {
    /// `setns` is not permitted.
    #[error(
        "cannot enter network namespaces (setns failed: {0}); in-pod mode needs CAP_SYS_ADMIN \
         (the ztunnel chart adds SYS_ADMIN to the container's capabilities)"
    )]
    Setns(#[source] io::Error),
    /// `SO_MARK` is not permitted.
    #[error(
        "cannot set SO_MARK on sockets ({0}); in-pod mode needs CAP_NET_ADMIN (the ztunnel chart \
         adds NET_ADMIN to the container's capabilities)"
    )]
    SoMark(#[source] io::Error),
}

/// Verifies that this process can do what shared mode needs: enter a network namespace
/// (`setns`, CAP_SYS_ADMIN; checked by re-entering our own) and mark sockets (`SO_MARK`,
/// CAP_NET_ADMIN). Run once at startup; fail the process on error.
pub fn startup_check(mark: u32) -> Result<(), StartupCheckError> {
    let own = NetnsHandle::process().map_err(StartupCheckError::Setns)?;
    run_in_netns(&own, || Ok(())).map_err(StartupCheckError::Setns)?;
    let sock = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), None)
        .map_err(StartupCheckError::SoMark)?;
    sock.set_mark(mark).map_err(StartupCheckError::SoMark)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// In-pod socket factory
// ---------------------------------------------------------------------------------------------

/// Creates a pod proxy's sockets inside the pod's network namespace.
///
/// Every socket carries `SO_MARK = mark` (when set) so that the pod's redirection rules let
/// ztunnel's own traffic through; listeners (TCP and the DNS UDP socket) get `SO_REUSEPORT`
/// when `reuse_port` is set, so that a new ztunnel can bind during a rolling upgrade.
/// Sockets are created on a netns worker and converted to tokio types on the caller's thread,
/// which must therefore be inside a tokio runtime.
#[derive(Clone, Debug)]
pub struct InPodSocketFactory {
    /// The pod's network namespace.
    pub netns: NetnsHandle,
    /// `SO_MARK` for every socket (`PACKET_MARK`, 1337 by default in shared mode).
    pub mark: Option<u32>,
    /// `SO_REUSEPORT` on listeners (`INPOD_PORT_REUSE`).
    pub reuse_port: bool,
}

fn domain_of(addr: &SocketAddr) -> Domain {
    match addr {
        SocketAddr::V4(_) => Domain::IPV4,
        SocketAddr::V6(_) => Domain::IPV6,
    }
}

impl InPodSocketFactory {
    /// A factory for the pod behind `netns`.
    pub fn new(netns: NetnsHandle, mark: Option<u32>, reuse_port: bool) -> Self {
        InPodSocketFactory {
            netns,
            mark,
            reuse_port,
        }
    }

    fn base_socket(mark: Option<u32>, domain: Domain, ty: Type) -> io::Result<Socket> {
        let sock = Socket::new(domain, ty.nonblocking().cloexec(), None)?;
        if let Some(mark) = mark {
            sock.set_mark(mark)
                .map_err(|e| io::Error::new(e.kind(), format!("setting SO_MARK {mark}: {e}")))?;
        }
        Ok(sock)
    }

    /// Like [`SocketFactory::tcp_listener`], also telling whether `IP_TRANSPARENT` was set
    /// (always `false` when not asked).
    pub fn tcp_listener_with_transparency(
        &self,
        addr: SocketAddr,
        transparent: bool,
    ) -> io::Result<(TcpListener, bool)> {
        let (mark, reuse_port) = (self.mark, self.reuse_port);
        let (sock, got_transparent) = run_in_netns(&self.netns, move || {
            let sock = Self::base_socket(mark, domain_of(&addr), Type::STREAM)?;
            sock.set_reuse_address(true)?;
            if reuse_port {
                sock.set_reuse_port(true)?;
            }
            if addr.is_ipv6() && addr.ip().is_unspecified() {
                // `[::]` listeners serve IPv4 too, whatever the host's bindv6only says.
                sock.set_only_v6(false)?;
            }
            let got_transparent = transparent
                && {
                    let r = match addr {
                        SocketAddr::V4(_) => sock.set_ip_transparent_v4(true),
                        SocketAddr::V6(_) => sock.set_ip_transparent_v6(true),
                    };
                    match r {
                        Ok(()) => true,
                        Err(e) => {
                            debug!(%addr, error = %e, "IP_TRANSPARENT not available on in-pod listener");
                            false
                        }
                    }
                };
            sock.bind(&addr.into())
                .map_err(|e| io::Error::new(e.kind(), format!("binding {addr} in pod: {e}")))?;
            sock.listen(LISTEN_BACKLOG)?;
            Ok((sock, got_transparent))
        })?;
        let listener = TcpListener::from_std(std::net::TcpListener::from(sock))?;
        Ok((listener, got_transparent))
    }
}

impl SocketFactory for InPodSocketFactory {
    fn new_tcp(&self, dst: SocketAddr) -> io::Result<TcpSocket> {
        let mark = self.mark;
        let sock = run_in_netns(&self.netns, move || {
            Self::base_socket(mark, domain_of(&dst), Type::STREAM)
        })?;
        Ok(TcpSocket::from_std_stream(std::net::TcpStream::from(sock)))
    }

    fn tcp_listener(&self, addr: SocketAddr, transparent: bool) -> io::Result<TcpListener> {
        self.tcp_listener_with_transparency(addr, transparent)
            .map(|(l, _)| l)
    }

    fn udp_bind(&self, addr: SocketAddr) -> io::Result<UdpSocket> {
        let (mark, reuse_port) = (self.mark, self.reuse_port);
        let sock = run_in_netns(&self.netns, move || {
            let sock = Self::base_socket(mark, domain_of(&addr), Type::DGRAM)?;
            if reuse_port {
                sock.set_reuse_port(true)?;
            }
            sock.bind(&addr.into())
                .map_err(|e| io::Error::new(e.kind(), format!("binding {addr} in pod: {e}")))?;
            Ok(sock)
        })?;
        UdpSocket::from_std(std::net::UdpSocket::from(sock))
    }
}

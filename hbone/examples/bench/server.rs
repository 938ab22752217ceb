//! The server side: one OS thread with its own single-threaded tokio runtime (so it behaves
//! like a separate process), serving all three transports.
//!
//! * plain TCP and plain TLS: one listener per mode (sink, echo, accept), so the client never
//!   sends a mode byte on the measured path;
//! * HBONE: one `hbone::Server`; the CONNECT authority picks the mode (`sink.bench:1`,
//!   `echo.bench:1`, `accept.bench:1`). The sink goes through `hbone::copy_bidirectional`,
//!   the library's real data path; echo and accept use the same loop as TCP and TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use hbone::{Identity, InboundRequest, ServerSettings, StaticCertificate};
use http::{HeaderMap, StatusCode};
use mesh_testing::{Leaf, TestCa};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};

use crate::cpu::ThreadClock;
use crate::streams::{COPY_BUF, ack_pair};

pub const SERVER_ID: &str = "spiffe://cluster.local/ns/bench/sa/server";
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/bench/sa/client";

/// One throwaway CA, two ECDSA P-256 workload certificates.
pub struct Certs {
    pub server: Leaf,
    pub client: Leaf,
}

impl Certs {
    pub fn new() -> Self {
        let ca = TestCa::new("bench-root");
        Certs {
            server: ca.issue(SERVER_ID),
            client: ca.issue(CLIENT_ID),
        }
    }
}

pub fn identity(s: &str) -> Identity {
    Identity::parse(s).expect("valid SPIFFE id")
}

/// What a server does with a connection (or, for HBONE, a CONNECT stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read to EOF, then send the byte count (8 bytes, big endian) and close.
    Sink,
    /// Send back what arrives until EOF.
    Echo,
    /// Complete the handshake, report it (see [`start`]), then wait for the client to close
    /// (so the client closes first and keeps the TIME_WAIT state, as a real client does).
    Accept,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Sink, Mode::Echo, Mode::Accept];

    /// The CONNECT authority selecting this mode on the HBONE server.
    pub fn authority(self) -> &'static str {
        match self {
            Mode::Sink => "sink.bench:1",
            Mode::Echo => "echo.bench:1",
            Mode::Accept => "accept.bench:1",
        }
    }
}

/// Listener addresses, one per mode.
#[derive(Debug, Clone, Copy)]
pub struct ModeAddrs {
    pub sink: SocketAddr,
    pub echo: SocketAddr,
    pub accept: SocketAddr,
}

impl ModeAddrs {
    pub fn get(&self, mode: Mode) -> SocketAddr {
        match mode {
            Mode::Sink => self.sink,
            Mode::Echo => self.echo,
            Mode::Accept => self.accept,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub tcp: ModeAddrs,
    pub tls: ModeAddrs,
    pub hbone: SocketAddr,
}

/// The running server thread.
pub struct ServerThread {
    pub addrs: Addrs,
    /// CPU accounting of the server thread.
    pub clock: Option<ThreadClock>,
    /// HBONE connections the server holds open (to check that clients really close).
    pub hbone: hbone::Server,
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl ServerThread {
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Starts the server thread and waits until every listener is bound.
///
/// In [`Mode::Accept`], each connection (HBONE: each CONNECT) adds a permit to `handshakes`
/// once the server side of the setup is complete; the client takes one per connection, so a
/// setup counts only when both ends are done with it and the server cannot fall behind
/// unseen (a plain TCP client can otherwise outrun `accept()` until the listen queue
/// overflows and SYNs are dropped).
pub fn start(
    certs: &Certs,
    handshakes: Arc<Semaphore>,
    settings: ServerSettings,
) -> anyhow::Result<ServerThread> {
    let tls = tokio_rustls::TlsAcceptor::from(crate::tls::server_config(&certs.server)?);
    let cert = StaticCertificate::new(certs.server.workload_cert());
    let done = handshakes.clone();
    let server = hbone::Server::new(settings, identity(SERVER_ID), cert, move |req| {
        hbone_handler(req, done.clone())
    });
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let hbone = server.clone();
    let thread = std::thread::Builder::new()
        .name("bench-server".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            rt.block_on(async move {
                match listen(tls, server, handshakes).await {
                    Ok(addrs) => {
                        let _ = ready_tx.send(Ok((addrs, ThreadClock::current())));
                        let _ = stop_rx.await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        })?;
    let (addrs, clock) = ready_rx.recv()??;
    Ok(ServerThread {
        addrs,
        clock,
        hbone,
        stop: stop_tx,
        thread,
    })
}

async fn bind() -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Binds every listener and spawns its accept loop on the current (server) runtime.
async fn listen(
    tls: tokio_rustls::TlsAcceptor,
    server: hbone::Server,
    handshakes: Arc<Semaphore>,
) -> anyhow::Result<Addrs> {
    let mut tcp_addrs = Vec::new();
    let mut tls_addrs = Vec::new();
    for mode in Mode::ALL {
        let (listener, addr) = bind().await?;
        tokio::spawn(tcp_server(listener, mode, handshakes.clone()));
        tcp_addrs.push(addr);
        let (listener, addr) = bind().await?;
        tokio::spawn(tls_server(listener, tls.clone(), mode, handshakes.clone()));
        tls_addrs.push(addr);
    }
    let (listener, hbone) = bind().await?;
    tokio::spawn(async move { server.serve(listener).await });
    let by_mode = |a: &[SocketAddr]| ModeAddrs {
        sink: a[0],
        echo: a[1],
        accept: a[2],
    };
    Ok(Addrs {
        tcp: by_mode(&tcp_addrs),
        tls: by_mode(&tls_addrs),
        hbone,
    })
}

async fn tcp_server(listener: TcpListener, mode: Mode, handshakes: Arc<Semaphore>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        if mode == Mode::Accept {
            handshakes.add_permits(1);
        }
        tokio::spawn(async move {
            let _ = serve_stream(tcp, mode).await;
        });
    }
}

async fn tls_server(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    mode: Mode,
    handshakes: Arc<Semaphore>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handshakes = handshakes.clone();
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(tcp).await {
                if mode == Mode::Accept {
                    handshakes.add_permits(1);
                }
                let _ = serve_stream(tls, mode).await;
            }
        });
    }
}

/// The plain TCP / TLS server loop for one connection.
async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    mode: Mode,
) -> std::io::Result<()> {
    match mode {
        Mode::Sink => {
            let mut buf = vec![0u8; COPY_BUF];
            let mut total = 0u64;
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            s.write_all(&total.to_be_bytes()).await?;
            s.shutdown().await?;
        }
        Mode::Echo => {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n]).await?;
                s.flush().await?;
            }
            s.shutdown().await?;
        }
        Mode::Accept => {
            let mut buf = [0u8; 1024];
            while s.read(&mut buf).await? > 0 {}
        }
    }
    Ok(())
}

/// The HBONE handler. The sink uses `hbone::copy_bidirectional`, the library's bulk data
/// path; echo and accept run the plain servers' loop on the `H2Stream` itself, so the
/// latency comparison measures the tunnels and not an extra in-process hop.
async fn hbone_handler(req: InboundRequest, handshakes: Arc<Semaphore>) {
    let mode = match req.authority.host_name() {
        Some("sink.bench") => Mode::Sink,
        Some("echo.bench") => Mode::Echo,
        Some("accept.bench") => Mode::Accept,
        _ => {
            req.reject(StatusCode::BAD_REQUEST);
            return;
        }
    };
    let Ok(stream) = req.accept(HeaderMap::new()) else {
        return;
    };
    match mode {
        Mode::Sink => {
            // Tunnel → counting sink; at EOF the sink hands its total to the reader, which
            // sends it back up the tunnel and ends it.
            let (ack, sink) = ack_pair();
            let _ = hbone::copy_bidirectional(ack, sink, stream).await;
        }
        // The same loops as the plain TCP and TLS servers, on the tunnel stream.
        Mode::Echo => {
            let _ = serve_stream(stream, mode).await;
        }
        Mode::Accept => {
            handshakes.add_permits(1);
            let _ = serve_stream(stream, mode).await;
        }
    }
}

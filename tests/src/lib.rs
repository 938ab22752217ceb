//! Support code for the interop and end-to-end tests in `tests/tests/`.
//!
//! * [`envoy::Envoy`]: a real Envoy child process (bootstrap in a temp dir, readiness through
//!   admin, listener ports discovered, log printed when the test fails, killed on drop);
//! * [`config`]: Envoy configuration fragments for HBONE origination and termination;
//! * [`HboneServer`]: our `hbone::Server` with a handler that records every CONNECT it gets
//!   and forwards `ip:port` authorities to that TCP address;
//! * [`LogCapture`]: what our libraries log (e.g. why our server refused a handshake);
//! * [`TempDir`], deterministic payloads and byte-stream checks;
//! * [`lab`]: the end-to-end harness over a [`meshlab`] lab (the whole mesh in network
//!   namespaces).

pub mod config;
pub mod envoy;
pub mod lab;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hbone::{Authority, Identity, InboundRequest, Server, ServerSettings, StaticCertificate};
use http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub use envoy::{Envoy, EnvoyOptions};

/// Every wait in these tests is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Awaits `fut`, failing the test after [`TIMEOUT`].
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: timed out after {TIMEOUT:?}"),
    }
}

/// A directory under the system temp dir, removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A fresh, empty directory named after `prefix`, the process and a counter.
    pub fn new(prefix: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("mesh-tests-{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory; returns the file's path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Captures the log lines our libraries emit (`tracing`, level `info` and up) in this test
/// process, so a test can check *why* something was refused.
///
/// nextest runs each test in its own process; under `cargo test` the tests of one binary
/// share the capture, so match on something unique to the test.
#[derive(Debug, Clone)]
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl LogCapture {
    /// Installs the capturing subscriber (once per process) and returns a handle to it.
    pub fn install() -> LogCapture {
        static CAPTURE: OnceLock<LogCapture> = OnceLock::new();
        CAPTURE
            .get_or_init(|| {
                let capture = LogCapture {
                    buffer: Arc::default(),
                };
                let writer = capture.clone();
                let installed = tracing_subscriber::fmt()
                    .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
                    .with_ansi(false)
                    .with_writer(move || writer.clone())
                    .try_init();
                if let Err(e) = installed {
                    panic!("another tracing subscriber is installed: {e}");
                }
                capture
            })
            .clone()
    }

    /// Everything captured so far.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().expect("log lock")).into_owned()
    }

    /// Waits until a captured line contains every one of `needles`; returns that line.
    pub async fn wait_for(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let text = self.contents();
            if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line containing {needles:?} within {TIMEOUT:?}; captured:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Parses a SPIFFE id (panics on a malformed literal).
pub fn id(s: &str) -> Identity {
    Identity::parse(s).unwrap_or_else(|e| panic!("bad identity {s}: {e}"))
}

/// `len` deterministic pseudo-random bytes; different seeds give different streams.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// SHA-256 as hex, for comparing large buffers with readable failures.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Asserts two byte buffers are equal without printing megabytes.
#[track_caller]
pub fn assert_same_bytes(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes (sha256 {}), want {} bytes (sha256 {}); first difference at {:?}",
            got.len(),
            sha256_hex(got),
            want.len(),
            sha256_hex(want),
            first_diff
        );
    }
}

/// Sends `data` through an echoing stream while reading the echo, half-closes the write side
/// once everything is sent, and reads until EOF. Returns what came back.
///
/// Writing and reading run concurrently, so flow control can never deadlock the exchange;
/// the EOF at the end proves the half-close travelled to the echo server and back.
pub async fn echo_exchange<S>(stream: S, data: &[u8]) -> std::io::Result<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async {
        for chunk in data.chunks(64 * 1024) {
            w.write_all(chunk).await?;
        }
        w.shutdown().await?;
        std::io::Result::Ok(())
    };
    let read = async {
        let mut got = Vec::with_capacity(data.len());
        r.read_to_end(&mut got).await?;
        std::io::Result::Ok(got)
    };
    let (written, got) = tokio::join!(write, read);
    written?;
    got
}

/// A one-connection TCP server that tests the half-close in the direction opposite to the
/// echo: it sends `banner`, shuts down its write side at once, then reads until the client
/// half-closes and reports what it received (so data sent *after* the server's FIN must still
/// arrive).
pub async fn banner_server(banner: &'static [u8]) -> (SocketAddr, oneshot::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind banner");
    let addr = listener.local_addr().expect("banner addr");
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        if tcp.write_all(banner).await.is_err() || tcp.shutdown().await.is_err() {
            return;
        }
        let mut got = Vec::new();
        let _ = tcp.read_to_end(&mut got).await;
        let _ = tx.send(got);
    });
    (addr, rx)
}

/// What our server saw of one CONNECT request.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub peer_identity: Identity,
    pub peer_addr: SocketAddr,
    pub authority: Authority,
    pub headers: HeaderMap,
}

/// Our HBONE server on `127.0.0.1:0`, recording every CONNECT. `ip:port` authorities are
/// connected to and the tunnel copied to that TCP socket (503 when the connect fails); host
/// names get 400.
#[derive(Debug)]
pub struct HboneServer {
    pub addr: SocketAddr,
    pub server: Server,
    calls: Arc<Mutex<Vec<Recorded>>>,
}

impl HboneServer {
    pub async fn start(leaf: &mesh_testing::Leaf) -> HboneServer {
        let cert = leaf.workload_cert();
        let identity = cert.identity().clone();
        let calls: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let recorded = calls.clone();
        let server = Server::new(
            ServerSettings::default(),
            identity,
            StaticCertificate::new(cert),
            move |req: InboundRequest| {
                let recorded = recorded.clone();
                async move {
                    recorded.lock().expect("calls lock").push(Recorded {
                        peer_identity: req.peer_identity.clone(),
                        peer_addr: req.peer_addr,
                        authority: req.authority.clone(),
                        headers: req.headers.clone(),
                    });
                    forward(req).await;
                }
            },
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind hbone");
        let addr = listener.local_addr().expect("hbone addr");
        let s = server.clone();
        tokio::spawn(async move { s.serve(listener).await });
        HboneServer {
            addr,
            server,
            calls,
        }
    }

    /// Every CONNECT handled so far, in arrival order.
    pub fn calls(&self) -> Vec<Recorded> {
        self.calls.lock().expect("calls lock").clone()
    }
}

async fn forward(req: InboundRequest) {
    let Some(target) = req.authority.socket_addr() else {
        req.reject(StatusCode::BAD_REQUEST);
        return;
    };
    let Ok(mut tcp) = TcpStream::connect(target).await else {
        req.reject(StatusCode::SERVICE_UNAVAILABLE);
        return;
    };
    let Ok(stream) = req.accept(HeaderMap::new()) else {
        return;
    };
    let _ = hbone::copy_tcp(&mut tcp, stream).await;
}

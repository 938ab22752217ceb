//! Shared helpers of the netns tests: named network namespaces, a tokio runtime on a thread
//! inside one (a "node"), the capture rules and echo application of a node, a telemetry sink
//! that records every event, a scripted node agent ([`zds`]) and a gRPC CA ([`ca`]).
#![allow(dead_code)]

pub mod ca;
pub mod zds;

use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use nix::sched::CloneFlags;
use parking_lot::Mutex;
use state::MeshState;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use ztunnel::proxy::{
    ConnectionContext, DefaultTelemetry, Direction, EarlyFailure, Outcome, Proxy, ProxyHandle,
    ProxyInputs, ProxySettings, TelemetrySink, WorkloadInfo,
};
use ztunnel::socket::{HostSocketFactory, SocketFactory};

/// The mark of the proxy's own sockets (the capture rules skip it).
pub const MARK: u32 = 1337;
/// Where the echo application listens.
pub const APP_PORT: u16 = 8080;
/// How long a test waits for a connection step.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {cmd} (install iproute2/iptables, run as root): {e}")
    });
    assert!(
        out.status.success(),
        "`{cmd} {}` failed (these tests need root, iproute2 and iptables): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run("ip", &["netns", "add", name]);
        Netns { name: name.into() }
    }

    /// Runs a whitespace-separated command inside the namespace.
    pub fn exec(&self, cmd: &str) -> String {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend(cmd.split_whitespace());
        run("ip", &all)
    }

    /// `ip -n <ns> <cmd>`.
    pub fn ip(&self, cmd: &str) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend(cmd.split_whitespace());
        run("ip", &all)
    }
}

impl Netns {
    /// The namespace's file (what `setns` opens).
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs `f` on a new thread inside the namespace.
    pub fn thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns (needs root)");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A current-thread tokio runtime on a thread inside a namespace.
pub struct Node {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    pub fn new(ns: &Netns) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = ns.thread(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            tx.send(rt.handle().clone()).expect("send handle");
            rt.block_on(async {
                let _ = stopped.await;
            });
        });
        let handle = rx.recv().expect("node runtime started");
        Node {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Runs `f` inside the node's namespace.
    pub async fn run<F>(&self, f: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(f).await.expect("node task panicked")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Captures the node's outbound TCP to the proxy's 15001, except the proxy's own (marked)
/// sockets and loopback.
pub fn capture_outbound(ns: &Netns) {
    for rule in [
        format!("-t nat -A OUTPUT -p tcp -m mark --mark {MARK} -j RETURN"),
        "-t nat -A OUTPUT -p tcp -o lo -j RETURN".into(),
        "-t nat -A OUTPUT -p tcp -j REDIRECT --to-ports 15001".into(),
    ] {
        ns.exec(&format!("iptables -w {rule}"));
    }
}

/// The inputs of a dedicated-mode proxy for workload `<sa>-0` in namespace `mesh`, creating
/// marked sockets in its node's namespace.
pub fn proxy_inputs(
    state: &Arc<MeshState>,
    certs: Arc<dyn hbone::CertificateSource>,
    sa: &str,
    sink: &Arc<Recorder>,
    settings: ProxySettings,
) -> ProxyInputs {
    ProxyInputs {
        state: state.clone(),
        certs,
        sockets: Arc::new(HostSocketFactory { mark: Some(MARK) }),
        workload: WorkloadInfo {
            name: format!("{sa}-0"),
            namespace: "mesh".into(),
            service_account: sa.into(),
            trust_domain: "cluster.local".into(),
        },
        settings,
        telemetry: sink.clone(),
    }
}

impl Node {
    /// Starts the echo application on `0.0.0.0:APP_PORT` in the node.
    pub async fn start_echo_app(&self) {
        self.run(async move {
            let l = tokio::net::TcpListener::bind(("0.0.0.0", APP_PORT))
                .await
                .expect("bind app");
            tokio::spawn(echo_app(l));
        })
        .await;
    }

    /// Connects from the node to `dst` with a socket marked `mark` (`None`: as the
    /// application, captured), failing after `timeout`.
    pub async fn connect(
        &self,
        dst: SocketAddr,
        mark: Option<u32>,
        timeout: Duration,
    ) -> std::io::Result<TcpStream> {
        self.run(async move {
            let socket = HostSocketFactory { mark }.new_tcp(dst)?;
            tokio::time::timeout(timeout, socket.connect(dst))
                .await
                .map_err(|_| std::io::ErrorKind::TimedOut)?
        })
        .await
    }

    /// Starts a proxy in this node.
    pub async fn start_proxy(&self, inputs: ProxyInputs) -> ProxyHandle {
        self.run(async move { Proxy::start(inputs).expect("proxy starts") })
            .await
    }

    /// Drains a proxy running in this node.
    pub async fn drain(&self, proxy: ProxyHandle, deadline: Duration) {
        self.run(async move { proxy.drain(deadline).await }).await;
    }
}

/// Writes `peer=<ip>\n`, then echoes until EOF.
pub async fn echo_app(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut tcp, peer)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let ip = ztunnel::socket::canonical(peer).ip();
            if tcp
                .write_all(format!("peer={ip}\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            let mut buf = [0u8; 4096];
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 || tcp.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = tcp.shutdown().await;
        });
    }
}

/// Reads the greeting line, sends `msg`, expects it back, half-closes, expects EOF.
/// Returns the peer IP the application saw.
pub async fn exchange(tcp: TcpStream, msg: &str) -> String {
    tokio::time::timeout(WAIT, async move {
        let mut tcp = BufReader::new(tcp);
        let mut line = String::new();
        tcp.read_line(&mut line).await.expect("greeting");
        let peer = line
            .trim()
            .strip_prefix("peer=")
            .unwrap_or_else(|| panic!("unexpected greeting {line:?}"))
            .to_string();
        tcp.get_mut()
            .write_all(msg.as_bytes())
            .await
            .expect("write");
        let mut back = vec![0u8; msg.len()];
        tcp.read_exact(&mut back).await.expect("echo");
        assert_eq!(back, msg.as_bytes());
        tcp.get_mut().shutdown().await.expect("half-close");
        let mut rest = Vec::new();
        tcp.read_to_end(&mut rest).await.expect("EOF");
        assert!(rest.is_empty());
        peer
    })
    .await
    .expect("exchange timed out")
}

/// Expects the connection to end without delivering any application byte.
/// A refused connection: either the reset arrived before the connect completed (refused or
/// reset), or the connection is closed without any data (ztunnel resets refused connections at
/// once, so which one a client sees depends on timing).
pub async fn expect_closed_without_data(connected: std::io::Result<TcpStream>) {
    let tcp = match connected {
        Ok(tcp) => tcp,
        Err(e) => {
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                ),
                "connect failed other than by a reset: {e}"
            );
            return;
        }
    };
    tokio::time::timeout(WAIT, async move {
        let mut tcp = tcp;
        let _ = tcp.write_all(b"hello").await;
        let mut buf = Vec::new();
        match tcp.read_to_end(&mut buf).await {
            Ok(_) => assert!(
                buf.is_empty(),
                "got data: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
                "{e}"
            ),
        }
    })
    .await
    .expect("connection was not closed");
}

#[derive(Debug, Clone)]
pub enum Event {
    Opened(ConnectionContext),
    Closed(ConnectionContext, Outcome),
    Failed(EarlyFailure),
}

/// Records every telemetry event (and still emits the default metrics and access logs).
#[derive(Default)]
pub struct Recorder {
    pub events: Mutex<Vec<Event>>,
}

impl TelemetrySink for Recorder {
    fn opened(&self, ctx: &ConnectionContext) {
        DefaultTelemetry.opened(ctx);
        self.events.lock().push(Event::Opened(ctx.clone()));
    }
    fn closed(&self, ctx: &ConnectionContext, outcome: &Outcome) {
        DefaultTelemetry.closed(ctx, outcome);
        self.events
            .lock()
            .push(Event::Closed(ctx.clone(), outcome.clone()));
    }
    fn failed(&self, failure: &EarlyFailure) {
        DefaultTelemetry.failed(failure);
        self.events.lock().push(Event::Failed(failure.clone()));
    }
}

impl Recorder {
    /// Waits for the `n`-th (1-based) event that `pick` selects.
    async fn nth<T>(&self, n: usize, what: &str, pick: impl Fn(&Event) -> Option<T>) -> T {
        for _ in 0..200 {
            if let Some(found) = self.events.lock().iter().filter_map(&pick).nth(n - 1) {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no {what} event #{n}; events: {:#?}", self.events.lock());
    }

    /// Waits for the `n`-th (1-based) closed event.
    pub async fn closed(&self, n: usize) -> (ConnectionContext, Outcome) {
        self.nth(n, "closed", |e| match e {
            Event::Closed(c, o) => Some((c.clone(), o.clone())),
            _ => None,
        })
        .await
    }

    /// Waits for the `n`-th (1-based) early failure.
    pub async fn failed(&self, n: usize) -> EarlyFailure {
        self.nth(n, "failed", |e| match e {
            Event::Failed(f) => Some(f.clone()),
            _ => None,
        })
        .await
    }

    pub fn count_opened(&self, direction: Direction) -> usize {
        self.events
            .lock()
            .iter()
            .filter(|e| matches!(e, Event::Opened(c) if c.direction == direction))
            .count()
    }
}

//! Shared (in-pod) mode against a scripted node agent and real network namespaces.
//!
//! The agent side ([`support::zds`]) is written from the protocol reference: a Unix
//! `SOCK_SEQPACKET` listener in a temp dir that reads ztunnel's hello and sends
//! `WorkloadRequest`s carrying real netns fds (`ip netns add ztest-<random>`). A fake
//! [`PodProxyFactory`] creates a real listener through the [`InPodSocketFactory`] it is handed,
//! so each test also proves where sockets end up. (`netns_pod_proxies.rs` runs the real pod
//! proxies behind the same agent.)
//!
//! Tests that create namespaces are named `netns_*` (nextest runs those one at a time). They
//! need root and iproute2 and fail loudly without them.

mod support;

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use socket2::SockRef;
use support::zds::{
    Agent, AgentConn, TempDir, add_msg, add_msg_with, del_msg, keep_msg, snapshot_msg,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use ztunnel::inpod::netns::socket_netns;
use ztunnel::inpod::{
    InPodSocketFactory, ManagerConfig, ManagerError, NetnsHandle, NetnsId, PodInfo,
    PodProxyFactory, PodProxyHandle, ProxyPhase, WorkloadProxyManager, WorkloadStateView, ZdsError,
    run_in_netns, startup_check,
};
use ztunnel::socket::SocketFactory;

const TIMEOUT: Duration = Duration::from_secs(10);
const MARK: u32 = 1337;

// ------------------------------------------------------------------------------------------
// Fixtures
// ------------------------------------------------------------------------------------------

fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (these tests need iproute2 and root)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed (these tests must run as root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace with `lo` up and a unique address on it; deleted on drop.
struct TestNetns {
    name: String,
    addr: IpAddr,
}

impl TestNetns {
    fn new() -> Self {
        let r: u32 = rand::random();
        let name = format!("ztest-{r:08x}");
        let addr = IpAddr::V4(Ipv4Addr::new(10, 250, (r >> 8) as u8, (r as u8).max(1)));
        run(&["ip", "netns", "add", &name]);
        let ns = TestNetns { name, addr };
        run(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        run(&[
            "ip",
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{addr}/32"),
            "dev",
            "lo",
        ]);
        ns
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    fn handle(&self) -> NetnsHandle {
        NetnsHandle::open(self.path()).expect("open test netns")
    }

    /// A fresh fd on the namespace, as the agent would send.
    fn fd(&self) -> OwnedFd {
        OwnedFd::from(File::open(self.path()).expect("open test netns"))
    }

    fn tcp_listeners(&self) -> String {
        run(&["ip", "netns", "exec", &self.name, "ss", "-ltnH"])
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

impl AgentConn {
    /// Adds pod `pod-<uid>` (namespace `default`, service account `sa`) in `ns`.
    fn add(&self, uid: &str, ns: &TestNetns) -> String {
        let fd = ns.fd();
        self.request(&add_msg(uid), &[fd.as_raw_fd()])
    }
}

/// What the fake factory saw.
#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Started {
        uid: String,
        netns: NetnsId,
        mark: u32,
    },
    Failed {
        uid: String,
    },
    Drained {
        uid: String,
        grace: Duration,
    },
}

/// Starts "proxies" that are one real listener on `0.0.0.0:15001`, created through the
/// `InPodSocketFactory` it is given.
struct FakeFactory {
    /// Remaining injected start failures per uid.
    failures: Mutex<HashMap<String, usize>>,
    tx: mpsc::UnboundedSender<Ev>,
}

const PROXY_ADDR: &str = "0.0.0.0:15001";

impl PodProxyFactory for FakeFactory {
    fn start(
        &self,
        pod: PodInfo,
        sockets: Arc<InPodSocketFactory>,
    ) -> BoxFuture<'static, Result<PodProxyHandle, String>> {
        let fail = match self.failures.lock().get_mut(&pod.uid) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        };
        let tx = self.tx.clone();
        if fail {
            let _ = tx.send(Ev::Failed {
                uid: pod.uid.clone(),
            });
            return async move { Err(format!("injected failure for {}", pod.uid)) }.boxed();
        }
        let result = (|| {
            let listener = sockets
                .tcp_listener(PROXY_ADDR.parse().unwrap(), false)
                .map_err(|e| e.to_string())?;
            let netns = socket_netns(listener.as_fd()).map_err(|e| e.to_string())?;
            let mark = SockRef::from(&listener).mark().map_err(|e| e.to_string())?;
            let _ = tx.send(Ev::Started {
                uid: pod.uid.clone(),
                netns: netns.id(),
                mark,
            });
            let uid = pod.uid.clone();
            Ok(PodProxyHandle::new(move |grace| {
                async move {
                    drop(listener);
                    let _ = tx.send(Ev::Drained { uid, grace });
                }
                .boxed()
            }))
        })();
        async move { result }.boxed()
    }
}

/// A manager running against a scripted agent.
struct Harness {
    agent: Option<Agent>,
    _dir: TempDir,
    ready: watch::Receiver<bool>,
    view: WorkloadStateView,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ManagerError>>,
    events: mpsc::UnboundedReceiver<Ev>,
    factory: Arc<FakeFactory>,
}

impl Harness {
    fn new() -> Self {
        let dir = TempDir::new();
        let path = dir.0.join("ztunnel.sock");
        let agent = Agent::bind(&path);
        let (tx, events) = mpsc::unbounded_channel();
        let factory = Arc::new(FakeFactory {
            failures: Mutex::new(HashMap::new()),
            tx,
        });
        let mut cfg = ManagerConfig::new(&path);
        cfg.packet_mark = Some(MARK);
        cfg.pending_retry_interval = Duration::from_millis(200);
        cfg.shutdown_drain_timeout = Duration::from_secs(1);
        let manager = WorkloadProxyManager::new(cfg, factory.clone());
        let ready = manager.readiness();
        let view = manager.state_view();
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(manager.run(async move {
            let _ = shutdown_rx.await;
        }));
        Harness {
            agent: Some(agent),
            _dir: dir,
            ready,
            view,
            shutdown: Some(shutdown),
            task,
            events,
            factory,
        }
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent running")
    }

    fn fail(&self, uid: &str, times: usize) {
        self.factory.failures.lock().insert(uid.into(), times);
    }

    async fn next_event(&mut self) -> Ev {
        tokio::time::timeout(TIMEOUT, self.events.recv())
            .await
            .expect("no factory event in time")
            .expect("factory gone")
    }

    /// Starts and drains happen before the ack / are spawned by it: after an ack, anything the
    /// request caused synchronously is already queued.
    fn no_pending_event(&mut self) {
        if let Ok(ev) = self.events.try_recv() {
            panic!("unexpected factory event {ev:?}");
        }
    }

    async fn wait_ready(&mut self, want: bool) {
        tokio::time::timeout(TIMEOUT, self.ready.wait_for(|r| *r == want))
            .await
            .unwrap_or_else(|_| panic!("readiness did not become {want}"))
            .expect("manager gone");
    }

    fn phase(&self, uid: &str) -> Option<ProxyPhase> {
        self.view.state().get(uid).map(|s| s.state)
    }

    async fn finish(mut self) -> Result<(), ManagerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(TIMEOUT, &mut self.task)
            .await
            .expect("manager did not stop in time")
            .expect("manager panicked")
    }
}

fn started_in(ev: &Ev, uid: &str, ns: &TestNetns) {
    match ev {
        Ev::Started {
            uid: u,
            netns,
            mark,
        } => {
            assert_eq!(u, uid);
            assert_eq!(
                *netns,
                ns.handle().id(),
                "listener must live in the pod netns"
            );
            assert_eq!(*mark, MARK, "SO_MARK on the in-pod listener");
        }
        other => panic!("expected start of {uid}, got {other:?}"),
    }
}

/// Proof from outside the process: the listener is visible in the pod netns, and a client
/// inside the pod netns can connect.
fn assert_listening_in(ns: &TestNetns) {
    assert!(
        ns.tcp_listeners().contains(":15001"),
        "no :15001 listener in {}: {}",
        ns.name,
        ns.tcp_listeners()
    );
    run_in_netns(&ns.handle(), || {
        std::net::TcpStream::connect_timeout(&"127.0.0.1:15001".parse().unwrap(), TIMEOUT)
    })
    .expect("connect to the in-pod listener from inside the pod");
}

// ------------------------------------------------------------------------------------------
// Protocol and manager tests
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_snapshot_add_keep_then_ready() {
    let ns = TestNetns::new();
    let mut h = Harness::new();
    let conn = h.agent().accept();
    assert!(!*h.ready.borrow(), "not ready before the snapshot");

    assert_eq!(conn.add("p1", &ns), "");
    let ev = h.next_event().await;
    started_in(&ev, "p1", &ns);
    assert_listening_in(&ns);
    assert_ne!(
        NetnsHandle::process().unwrap().id(),
        ns.handle().id(),
        "sanity: distinct namespaces"
    );

    assert_eq!(conn.request(&keep_msg("p2"), &[]), "");
    assert!(!*h.ready.borrow());
    assert_eq!(conn.request(&snapshot_msg(), &[]), "");
    assert!(
        *h.ready.borrow(),
        "ready right after snapshot_sent is acked"
    );

    let state = h.view.state();
    assert_eq!(state["p1"].state, ProxyPhase::Up);
    assert_eq!(state["p1"].info.name, "pod-p1");
    let json = serde_json::to_value(&state).unwrap();
    assert_eq!(json["p1"]["state"], "Up");
    assert_eq!(json["p1"]["info"]["serviceAccount"], "sa");

    drop(conn);
    h.wait_ready(false).await;
    h.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_duplicate_add_is_noop_and_new_netns_replaces() {
    let (a, b) = (TestNetns::new(), TestNetns::new());
    let mut h = Harness::new();
    let conn = h.agent().accept();
    assert_eq!(conn.add("p1", &a), "");
    started_in(&h.next_event().await, "p1", &a);

    // Same pod, same namespace (a fresh fd on it): no-op.
    assert_eq!(conn.add("p1", &a), "");
    h.no_pending_event();

    // Same pod, new namespace (sandbox recreated): old drained at once, new started.
    assert_eq!(conn.add("p1", &b), "");
    let mut evs = [h.next_event().await, h.next_event().await];
    evs.sort_by_key(|e| matches!(e, Ev::Started { .. }));
    assert_eq!(
        evs[0],
        Ev::Drained {
            uid: "p1".into(),
            grace: Duration::ZERO
        }
    );
    started_in(&evs[1], "p1", &b);
    assert_listening_in(&b);
    assert!(!a.tcp_listeners().contains(":15001"), "old listener closed");
    h.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_reconnect_after_agent_restart_reconciles_snapshot() {
    let (a, b) = (TestNetns::new(), TestNetns::new());
    let mut h = Harness::new();
    let conn = h.agent().accept();
    assert_eq!(conn.add("p1", &a), "");
    assert_eq!(conn.add("p2", &b), "");
    assert_eq!(conn.request(&snapshot_msg(), &[]), "");
    for _ in 0..2 {
        assert!(matches!(h.next_event().await, Ev::Started { .. }));
    }
    assert!(*h.ready.borrow());

    // The agent restarts: its socket goes away, then comes back at the same path.
    drop(conn);
    let path = h.agent.take().unwrap().stop();
    h.wait_ready(false).await;
    h.agent = Some(Agent::bind(&path));
    let conn = h.agent().accept();

    // New snapshot: p1 still there (same netns: no-op), p2 gone, p3 kept without netns.
    assert_eq!(conn.add("p1", &a), "");
    assert_eq!(conn.request(&keep_msg("p3"), &[]), "");
    h.no_pending_event();
    assert!(
        !*h.ready.borrow(),
        "not ready until the new snapshot is complete"
    );
    assert_eq!(conn.request(&snapshot_msg(), &[]), "");
    assert_eq!(
        h.next_event().await,
        Ev::Drained {
            uid: "p2".into(),
            grace: Duration::ZERO
        }
    );
    assert!(*h.ready.borrow());
    assert_eq!(h.phase("p1"), Some(ProxyPhase::Up));
    assert_ne!(h.phase("p2"), Some(ProxyPhase::Up));
    assert_listening_in(&a);
    h.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_start_failure_nacks_then_retries_until_up() {
    let ns = TestNetns::new();
    let mut h = Harness::new();
    h.fail("p1", 2);
    let conn = h.agent().accept();
    let nack = conn.add("p1", &ns);
    assert!(
        nack.contains("injected failure for p1"),
        "NACK carries the reason: {nack:?}"
    );
    assert_eq!(h.next_event().await, Ev::Failed { uid: "p1".into() });
    assert_eq!(conn.request(&snapshot_msg(), &[]), "");
    assert!(!*h.ready.borrow(), "pending pod blocks readiness");
    let st = h.view.state();
    assert_eq!(st["p1"].state, ProxyPhase::Pending);
    assert!(
        st["p1"]
            .pending_reason
            .as_deref()
            .unwrap()
            .contains("injected")
    );

    // Retried on the (test-sized) interval: one more failure, then up.
    assert_eq!(h.next_event().await, Ev::Failed { uid: "p1".into() });
    started_in(&h.next_event().await, "p1", &ns);
    h.wait_ready(true).await;
    assert_eq!(h.phase("p1"), Some(ProxyPhase::Up));
    assert_listening_in(&ns);
    h.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_del_drains_and_clears_pending() {
    let (a, b, c) = (TestNetns::new(), TestNetns::new(), TestNetns::new());
    let mut h = Harness::new();
    h.fail("p2", usize::MAX);
    let conn = h.agent().accept();

    // Del before snapshot: removed from the snapshot set, proxy drained now.
    assert_eq!(conn.add("p3", &c), "");
    started_in(&h.next_event().await, "p3", &c);
    assert_eq!(conn.request(&del_msg("p3"), &[]), "");
    assert_eq!(
        h.next_event().await,
        Ev::Drained {
            uid: "p3".into(),
            grace: Duration::ZERO
        }
    );

    assert_eq!(conn.add("p1", &a), "");
    started_in(&h.next_event().await, "p1", &a);
    assert_ne!(conn.add("p2", &b), "");
    assert_eq!(h.next_event().await, Ev::Failed { uid: "p2".into() });
    assert_eq!(conn.request(&snapshot_msg(), &[]), "");
    h.no_pending_event();
    assert!(!*h.ready.borrow());

    // Del of a pending pod: no more retries, readiness unblocked.
    assert_eq!(conn.request(&del_msg("p2"), &[]), "");
    assert!(*h.ready.borrow());
    assert_eq!(h.phase("p2"), None);

    // Steady-state del.
    assert_eq!(conn.request(&del_msg("p1"), &[]), "");
    assert_eq!(
        h.next_event().await,
        Ev::Drained {
            uid: "p1".into(),
            grace: Duration::ZERO
        }
    );
    assert!(!a.tcp_listeners().contains(":15001"));
    // Unknown uid: still an ACK.
    assert_eq!(conn.request(&del_msg("nope"), &[]), "");
    h.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_shutdown_drains_every_proxy_gracefully() {
    let (a, b) = (TestNetns::new(), TestNetns::new());
    let mut h = Harness::new();
    let conn = h.agent().accept();
    assert_eq!(conn.add("p1", &a), "");
    assert_eq!(conn.add("p2", &b), "");
    assert_eq!(conn.request(&snapshot_msg(), &[]), "");
    for _ in 0..2 {
        assert!(matches!(h.next_event().await, Ev::Started { .. }));
    }
    let mut ready = h.ready.clone();
    let mut events = std::mem::replace(&mut h.events, mpsc::unbounded_channel().1);
    h.finish().await.unwrap();
    assert!(!*ready.borrow_and_update());
    let mut drained = Vec::new();
    while let Ok(ev) = events.try_recv() {
        drained.push(ev);
    }
    drained.sort_by_key(|e| format!("{e:?}"));
    let grace = Duration::from_secs(1);
    assert_eq!(
        drained,
        vec![
            Ev::Drained {
                uid: "p1".into(),
                grace
            },
            Ev::Drained {
                uid: "p2".into(),
                grace
            },
        ]
    );
    drop(conn);
}

/// Non-fatal protocol errors: NACK, the connection is dropped, ztunnel reconnects and still
/// works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_bad_messages_nack_and_reconnect() {
    let ns = TestNetns::new();
    let mut h = Harness::new();
    let own_ns = File::open("/proc/self/ns/net").unwrap();
    let fd = ns.fd();
    let cases: Vec<(&str, Vec<u8>, Vec<RawFd>, &str)> = vec![
        ("garbage", vec![0xff, 0xff, 0xff], vec![], "undecodable"),
        ("oversized", vec![0u8; 2000], vec![], "MSG_TRUNC"),
        (
            "add without fd",
            add_msg("p1"),
            vec![],
            "no network namespace fd",
        ),
        (
            "add with two fds",
            add_msg("p1"),
            vec![fd.as_raw_fd(), own_ns.as_raw_fd()],
            "exactly one",
        ),
        (
            "del with fd",
            del_msg("p1"),
            vec![fd.as_raw_fd()],
            "only add",
        ),
        (
            "keep with fd",
            keep_msg("p1"),
            vec![fd.as_raw_fd()],
            "only add",
        ),
        (
            "snapshot with fd",
            snapshot_msg(),
            vec![fd.as_raw_fd()],
            "only add",
        ),
    ];
    for (name, bytes, fds, want) in cases {
        let conn = h.agent().accept();
        let nack = conn.request(&bytes, &fds);
        assert!(
            nack.contains(want),
            "{name}: NACK {nack:?} should mention {want:?}"
        );
        conn.expect_closed();
        assert!(!h.task.is_finished(), "{name}: manager must survive");
    }
    // Still serving after all that.
    let conn = h.agent().accept();
    assert_eq!(conn.add("p1", &ns), "");
    started_in(&h.next_event().await, "p1", &ns);
    assert_eq!(conn.request(&snapshot_msg(), &[]), "");
    assert!(*h.ready.borrow());
    h.finish().await.unwrap();
}

/// Fatal protocol errors: NACK, then the manager stops and drains its proxies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_fatal_protocol_errors_stop_the_manager() {
    let ns = TestNetns::new();
    type Script = fn(&AgentConn, &TestNetns);
    type Check = fn(&ZdsError) -> bool;
    let cases: Vec<(&str, Script, Check)> = vec![
        (
            "add without workload_info",
            |c, ns| {
                let fd = ns.fd();
                assert!(
                    !c.request(&add_msg_with("p9", false), &[fd.as_raw_fd()])
                        .is_empty()
                );
            },
            |e| matches!(e, ZdsError::AddWithoutWorkloadInfo { .. }),
        ),
        (
            "keep after snapshot",
            |c, _| {
                assert_eq!(c.request(&snapshot_msg(), &[]), "");
                assert!(!c.request(&keep_msg("p9"), &[]).is_empty());
            },
            |e| matches!(e, ZdsError::KeepAfterSnapshot { .. }),
        ),
        (
            "second snapshot_sent",
            |c, _| {
                assert_eq!(c.request(&snapshot_msg(), &[]), "");
                assert!(!c.request(&snapshot_msg(), &[]).is_empty());
            },
            |e| matches!(e, ZdsError::DuplicateSnapshotSent),
        ),
    ];
    for (name, script, check) in cases {
        let mut h = Harness::new();
        let conn = h.agent().accept();
        assert_eq!(conn.add("p1", &ns), "");
        started_in(&h.next_event().await, "p1", &ns);
        script(&conn, &ns);
        let res = tokio::time::timeout(TIMEOUT, &mut h.task)
            .await
            .unwrap_or_else(|_| panic!("{name}: manager did not stop"))
            .unwrap();
        match res {
            Err(ManagerError::Protocol(e)) => assert!(check(&e), "{name}: wrong error {e}"),
            other => panic!("{name}: expected a fatal protocol error, got {other:?}"),
        }
        assert!(!*h.ready.borrow(), "{name}");
        assert!(
            matches!(h.next_event().await, Ev::Drained { uid, .. } if uid == "p1"),
            "{name}: proxies drained when the manager stops"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Namespace plumbing
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_socket_factory_creates_marked_sockets_in_the_pod() {
    let ns = TestNetns::new();
    let pod = ns.handle();
    let host = NetnsHandle::process().unwrap();
    assert_ne!(pod.id(), host.id());
    let f = InPodSocketFactory::new(pod.clone(), Some(MARK), true);

    let (listener, transparent) = f
        .tcp_listener_with_transparency(SocketAddr::new(ns.addr, 0), true)
        .unwrap();
    assert!(transparent, "root can set IP_TRANSPARENT");
    let laddr = listener.local_addr().unwrap();
    let sref = SockRef::from(&listener);
    assert_eq!(socket_netns(listener.as_fd()).unwrap().id(), pod.id());
    assert_eq!(sref.mark().unwrap(), MARK);
    assert!(sref.reuse_port().unwrap());
    assert!(sref.ip_transparent_v4().unwrap());
    let needle = laddr.to_string();
    assert!(
        ns.tcp_listeners().contains(&needle),
        "{needle} listed in the pod"
    );
    assert!(
        !run(&["ss", "-ltnH"]).contains(&needle),
        "{needle} must not be listed in the host netns"
    );

    let udp = f.udp_bind(SocketAddr::new(ns.addr, 0)).unwrap();
    assert_eq!(socket_netns(udp.as_fd()).unwrap().id(), pod.id());
    assert_eq!(SockRef::from(&udp).mark().unwrap(), MARK);

    // An outbound socket connects inside the pod: the address only exists there.
    let sock = f.new_tcp(laddr).unwrap();
    assert_eq!(socket_netns(sock.as_fd()).unwrap().id(), pod.id());
    assert_eq!(SockRef::from(&sock).mark().unwrap(), MARK);
    let (client, accepted) = tokio::join!(sock.connect(laddr), listener.accept());
    client.expect("connect inside the pod");
    accepted.expect("accept inside the pod");

    // No mark / no reuse when not configured.
    let plain = InPodSocketFactory::new(pod.clone(), None, false);
    let l2 = plain
        .tcp_listener(SocketAddr::new(ns.addr, 0), false)
        .unwrap();
    assert_eq!(SockRef::from(&l2).mark().unwrap(), 0);
    assert!(!SockRef::from(&l2).reuse_port().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_run_in_netns_switches_back_and_survives_errors() {
    let ns = TestNetns::new();
    let pod = ns.handle();
    let host = NetnsHandle::process().unwrap();
    let inside = run_in_netns(&pod, || NetnsHandle::current().map(|h| h.id())).unwrap();
    assert_eq!(inside, pod.id());
    assert_eq!(
        NetnsHandle::current().unwrap().id(),
        host.id(),
        "the caller's thread never moves"
    );
    // Workers return home after every job.
    for _ in 0..8 {
        let id = run_in_netns(&host, || NetnsHandle::current().map(|h| h.id())).unwrap();
        assert_eq!(id, host.id());
    }

    // Not a network namespace: setns fails, the worker is unaffected.
    let uts = NetnsHandle::open("/proc/self/ns/uts").unwrap();
    assert!(run_in_netns(&uts, || Ok(())).is_err());
    // A panic in the closure reaches the caller; the worker still switches back.
    let p = pod.clone();
    let panicked = std::panic::catch_unwind(move || {
        run_in_netns(&p, || -> std::io::Result<()> { panic!("boom") })
    });
    assert!(panicked.is_err());
    for _ in 0..8 {
        let id = run_in_netns(&host, || NetnsHandle::current().map(|h| h.id())).unwrap();
        assert_eq!(id, host.id());
    }
    // The closure's own error comes back as is.
    let err = run_in_netns(&pod, || -> std::io::Result<()> {
        Err(std::io::Error::other("mine"))
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "mine");
}

#[test]
fn netns_startup_check_passes_as_root() {
    startup_check(MARK).expect("running as root: setns and SO_MARK must be allowed");
}

#[test]
fn netns_handle_identity_matches_proc() {
    let ns = TestNetns::new();
    let a = ns.handle();
    let b = NetnsHandle::from_fd(ns.fd()).unwrap();
    assert_eq!(a, b, "two fds on one namespace are the same namespace");
    assert_ne!(a.id(), NetnsHandle::process().unwrap().id());
    let link = std::fs::read_link("/proc/self/ns/net").unwrap();
    let host = NetnsHandle::process().unwrap();
    assert_eq!(link.to_string_lossy(), host.id().to_string());
}

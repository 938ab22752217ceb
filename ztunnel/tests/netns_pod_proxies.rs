//! Shared (in-pod) mode with the real pod proxies (`ztunnel::app::data::PodProxies`) behind the
//! real workload proxy manager, driven by the scripted node agent (`support::zds`), each pod a
//! network namespace, certificates from the real `CaClient` and `CertManager` against a gRPC CA
//! (`support::ca`) that records every CSR:
//!
//! * a pod's certificate lives exactly as long as some pod on the node presents its identity;
//! * a pod presents the identity of its `Workload` (the control plane's trust domain, with no
//!   `TRUST_DOMAIN` set), also when the `Workload` arrives after the pod, and pod-to-pod HBONE
//!   works in that trust domain while peers of another trust domain are refused.
//!
//! Needs root, iproute2 and iptables; fails (never skips) when they are missing.

mod support;

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use hbone::{Identity, StaticCertificate};
use identity::CertManager;
use state::MeshState;
use support::ca::TestIstiod;
use support::zds::{Agent, AgentConn, TempDir, del_msg, pod_add_msg, snapshot_msg};
use support::{APP_PORT, MARK, Netns, Node, WAIT, capture_outbound, exchange};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use ztunnel::app::data::PodProxies;
use ztunnel::inpod::{
    InPodSocketFactory, ManagerConfig, ManagerError, NetnsHandle, ProxyPhase, WorkloadProxyManager,
    WorkloadStateView,
};
use ztunnel::proxy::io::{Connector, FactoryDialer};
use ztunnel::proxy::{OrigSrc, ProxySettings};

/// Certificate lifetime asked of the CA: short, so refreshes (CSRs) come every second or two.
const TTL: Duration = Duration::from_secs(3);

fn workload(name: &str, sa: &str, trust_domain: &str, ip: &str) -> String {
    format!(
        r#"
- uid: Kubernetes//Pod/mesh/{name}
  name: {name}
  namespace: mesh
  serviceAccount: {sa}
  trustDomain: {trust_domain}
  workloadIps: ["{ip}"]
  protocol: HBONE
  workloadName: {sa}
  canonicalName: {sa}
  clusterId: Kubernetes
  services: {{}}
"#
    )
}

fn mesh(workloads: &[String]) -> String {
    format!("workloads:{}", workloads.concat())
}

fn id(trust_domain: &str, sa: &str) -> Identity {
    Identity::new(trust_domain, "mesh", sa)
}

/// A node proxy in shared mode: CA, certificate manager, mesh state, pod proxies, manager,
/// and the agent's connection to it.
struct Ztunnel {
    istiod: TestIstiod,
    certs: CertManager,
    state: Arc<MeshState>,
    view: WorkloadStateView,
    conn: AgentConn,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ManagerError>>,
    _agent: Agent,
    _dir: TempDir,
}

impl Ztunnel {
    async fn start(mesh_yaml: &str) -> Ztunnel {
        Self::start_with(mesh_yaml, |pods| pods).await
    }

    /// As [`Ztunnel::start`], with the pod proxies adjusted by `pods`.
    async fn start_with(mesh_yaml: &str, pods: impl FnOnce(PodProxies) -> PodProxies) -> Ztunnel {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("info,ztunnel=debug,identity=debug")
            .try_init();
        let istiod = TestIstiod::start().await;
        let certs = CertManager::new(Arc::new(istiod.client(TTL)));
        let state = Arc::new(MeshState::default());
        state::local::load(&state, mesh_yaml).expect("mesh config");
        let settings = ProxySettings {
            ipv6: false,
            orig_src: OrigSrc::Never,
            termination_deadline: Duration::from_secs(1),
            ..ProxySettings::default()
        };
        // No TRUST_DOMAIN: its default stands in until a pod's Workload is known.
        let pods = pods(PodProxies::new(
            state.clone(),
            certs.clone(),
            settings,
            "cluster.local",
        ));
        let dir = TempDir::new();
        let path = dir.0.join("ztunnel.sock");
        let agent = Agent::bind(&path);
        let mut cfg = ManagerConfig::new(&path);
        cfg.packet_mark = Some(MARK);
        cfg.shutdown_drain_timeout = Duration::from_secs(1);
        let manager = WorkloadProxyManager::new(cfg, Arc::new(pods));
        let view = manager.state_view();
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(manager.run(async move {
            let _ = stop.await;
        }));
        let conn = agent.accept();
        Ztunnel {
            istiod,
            certs,
            state,
            view,
            conn,
            shutdown: Some(shutdown),
            task,
            _agent: agent,
            _dir: dir,
        }
    }

    /// The agent adds pod `mesh/<name>` running as `sa` in `ns`; expects an ACK.
    fn add(&self, name: &str, sa: &str, ns: &Netns) {
        assert_eq!(self.try_add(name, sa, ns), "", "add {name}");
    }

    /// The agent adds pod `mesh/<name>`; returns the ack's error ("" = ACK).
    fn try_add(&self, name: &str, sa: &str, ns: &Netns) -> String {
        let fd = File::open(ns.path()).expect("open pod netns");
        self.conn.request(
            &pod_add_msg(&format!("uid-{name}"), name, "mesh", sa),
            &[fd.as_raw_fd()],
        )
    }

    /// The agent deletes the pod; expects an ACK, then waits until its proxy has drained.
    async fn del(&self, name: &str) {
        let uid = format!("uid-{name}");
        assert_eq!(self.conn.request(&del_msg(&uid), &[]), "", "del {name}");
        let view = self.view.clone();
        until(&format!("{name}'s proxy drained"), || {
            !view.state().contains_key(&uid)
        })
        .await;
    }

    fn snapshot_sent(&self) {
        assert_eq!(self.conn.request(&snapshot_msg(), &[]), "");
    }

    fn identities(&self) -> Vec<Identity> {
        self.certs.identities()
    }

    /// Waits until exactly `want` identities are managed, each holding a certificate.
    async fn until_certificates(&self, want: &[&Identity]) {
        let mut want: Vec<Identity> = want.iter().map(|i| (*i).clone()).collect();
        want.sort();
        let certs = self.certs.clone();
        until(&format!("certificates of exactly {want:?}"), || {
            certs.identities() == want && want.iter().all(|i| certs.current(i).is_some())
        })
        .await;
    }

    async fn stop(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("manager stops")
            .expect("manager task")
            .expect("manager ran without error");
        assert!(
            self.certs.identities().is_empty(),
            "every pod drained: no certificate left, got {:?}",
            self.certs.identities()
        );
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pod_netns(name: &str) -> Netns {
    let ns = Netns::new(name);
    ns.ip("link set lo up");
    ns
}

/// Pods A and B share a service account, C has its own. Deleting C drops its certificate
/// and no CSR for it reaches the CA any more; deleting A keeps the shared one (B still runs
/// and it keeps being refreshed); deleting B drops it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_pod_certificates_are_dropped_with_their_last_pod() {
    let yaml = mesh(&[
        workload("a-0", "shared", "cluster.local", "10.79.0.1"),
        workload("b-0", "shared", "cluster.local", "10.79.0.2"),
        workload("c-0", "other", "cluster.local", "10.79.0.3"),
    ]);
    let zt = Ztunnel::start(&yaml).await;
    let (a, b, c) = (
        pod_netns("ztpp-cert-a"),
        pod_netns("ztpp-cert-b"),
        pod_netns("ztpp-cert-c"),
    );
    let (shared, other) = (id("cluster.local", "shared"), id("cluster.local", "other"));
    zt.add("a-0", "shared", &a);
    zt.add("b-0", "shared", &b);
    zt.add("c-0", "other", &c);
    zt.snapshot_sent();
    zt.until_certificates(&[&shared, &other]).await;

    zt.del("c-0").await;
    assert_eq!(zt.identities(), vec![shared.clone()]);
    let (other_csrs, shared_csrs) = (zt.istiod.csrs(&other), zt.istiod.csrs(&shared));
    // Several refresh periods: the shared identity is refreshed, the dropped one is not.
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    assert_eq!(zt.istiod.csrs(&other), other_csrs, "no CSR after c-0 left");
    assert!(
        zt.istiod.csrs(&shared) > shared_csrs,
        "the shared certificate is still refreshed"
    );

    zt.del("a-0").await;
    assert_eq!(zt.identities(), vec![shared.clone()], "b-0 still uses it");
    assert!(zt.certs.current(&shared).is_some());
    let shared_csrs = zt.istiod.csrs(&shared);
    tokio::time::sleep(TTL).await;
    assert!(zt.istiod.csrs(&shared) > shared_csrs, "still refreshed");
    assert!(zt.certs.current(&shared).is_some());

    zt.del("b-0").await;
    assert!(zt.identities().is_empty(), "{:?}", zt.identities());
    let shared_csrs = zt.istiod.csrs(&shared);
    tokio::time::sleep(TTL).await;
    assert_eq!(
        zt.istiod.csrs(&shared),
        shared_csrs,
        "no CSR after b-0 left"
    );
    assert_eq!(zt.istiod.csrs(&other), other_csrs);
    zt.stop().await;
}

/// An HBONE client dialling from inside `ns` (marked, so not captured) with `cert`.
fn pool_in(ns: &Netns, cert: hbone::WorkloadCertificate) -> hbone::Pool {
    let handle = NetnsHandle::open(ns.path()).expect("open netns");
    let connector = Connector {
        sockets: Arc::new(InPodSocketFactory::new(handle, Some(MARK), false)),
        tcp: Default::default(),
        timeout: WAIT,
        orig_src: OrigSrc::Never,
    };
    hbone::Pool::new(
        hbone::ClientSettings::default(),
        StaticCertificate::new(cert),
        Arc::new(FactoryDialer(connector)),
    )
}

/// A mesh whose trust domain is `example.org`, no `TRUST_DOMAIN` set. The client pod's
/// `Workload` is known when it starts; the server pod's arrives later, so it first presents the
/// stand-in identity, then moves to `example.org` (the stand-in's certificate is dropped). Pod
/// to pod traffic then goes through HBONE with `example.org` certificates on both ends, and a
/// peer from `cluster.local` is refused by the server pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_pod_to_pod_hbone_uses_the_workloads_trust_domain() {
    let (c_ip, s_ip) = ("10.79.1.1", "10.79.1.2");
    let client_wl = workload("client-0", "client", "example.org", c_ip);
    let server_wl = workload("server-0", "server", "example.org", s_ip);
    let zt = Ztunnel::start(&mesh(std::slice::from_ref(&client_wl))).await;

    let client_ns = pod_netns("ztpp-td-c");
    let server_ns = pod_netns("ztpp-td-s");
    client_ns.ip(&format!(
        "link add eth0 type veth peer name eth0 netns {}",
        server_ns.name
    ));
    for (ns, ip) in [(&client_ns, c_ip), (&server_ns, s_ip)] {
        ns.ip(&format!("addr add {ip}/24 dev eth0"));
        ns.ip("link set eth0 up");
        ns.ip("route add default dev eth0");
    }
    capture_outbound(&client_ns);
    let server = Node::new(&server_ns);
    server.start_echo_app().await;
    let client = Node::new(&client_ns);

    let client_id = id("example.org", "client");
    let (server_org, server_stand_in) =
        (id("example.org", "server"), id("cluster.local", "server"));
    zt.add("client-0", "client", &client_ns);
    zt.add("server-0", "server", &server_ns);
    zt.snapshot_sent();
    zt.until_certificates(&[&client_id, &server_stand_in]).await;

    // The server's Workload arrives: its identity moves to the control plane's trust domain.
    state::local::load(&zt.state, &mesh(&[server_wl])).expect("server workload");
    zt.until_certificates(&[&client_id, &server_org]).await;

    // Pod to pod through the capture: client pod → its proxy → HBONE → server pod's proxy.
    let app: SocketAddr = format!("{s_ip}:{APP_PORT}").parse().unwrap();
    let tcp = client.connect(app, None, WAIT).await.expect("connect");
    assert_eq!(exchange(tcp, "hello example.org").await, s_ip);

    // What the server pod presents, and whom it accepts.
    let org_client = zt
        .istiod
        .client(Duration::from_secs(600))
        .fetch(&client_id)
        .await
        .expect("example.org client certificate");
    let local_client = zt
        .istiod
        .client(Duration::from_secs(600))
        .fetch(&id("cluster.local", "client"))
        .await
        .expect("cluster.local client certificate");
    let hbone_addr: SocketAddr = format!("{s_ip}:15008").parse().unwrap();
    let request = |source: &Identity| hbone::ConnectRequest {
        source: source.clone(),
        expected: vec![server_org.clone()],
        destination: hbone_addr,
        source_ip: None,
        authority: app.to_string(),
        headers: Default::default(),
    };
    let mut tunnel = pool_in(&client_ns, org_client)
        .connect(request(&client_id))
        .await
        .expect("example.org peer accepted");
    assert_eq!(
        tunnel.peer_identity.to_string(),
        "spiffe://example.org/ns/mesh/sa/server"
    );
    let mut greeting = vec![0u8; 32];
    let n = tokio::time::timeout(WAIT, tunnel.stream.read(&mut greeting))
        .await
        .expect("greeting in time")
        .expect("greeting");
    assert!(greeting[..n].starts_with(b"peer="), "{:?}", &greeting[..n]);
    let _ = tunnel.stream.shutdown().await;
    drop(tunnel);
    let refused = pool_in(&client_ns, local_client)
        .connect(request(&id("cluster.local", "client")))
        .await
        .map(|t| t.peer_identity);
    match refused {
        Err(hbone::Error::Tls { reason, .. })
            if reason.contains("server rejected our certificate") => {}
        other => panic!("a cluster.local peer must be refused by the server pod, got {other:?}"),
    }

    zt.del("server-0").await;
    zt.del("client-0").await;
    drop(client);
    drop(server);
    zt.stop().await;
}

/// With DNS capture on, a pod whose DNS proxy cannot bind its port is refused (the agent gets
/// an error naming the cause and retries, the pod stays out of the proxy's state and its
/// identity is released) instead of running with its DNS redirected to nothing; once the port
/// is free the same add succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_pod_whose_dns_proxy_cannot_start_is_refused() {
    let yaml = mesh(&[workload("d-0", "dns", "cluster.local", "10.79.0.9")]);
    let dns_addr: SocketAddr = "127.0.0.1:15053".parse().unwrap();
    let zt = Ztunnel::start_with(&yaml, |pods| {
        pods.with_dns_capture(vec![dns_addr], Vec::new())
    })
    .await;
    let ns = pod_netns("ztpp-dns");
    // Something else already holds the pod's 15053/udp.
    let squatter = ns
        .thread(move || std::net::UdpSocket::bind(dns_addr))
        .join()
        .unwrap()
        .expect("bind 15053 in the pod");
    let err = zt.try_add("d-0", "dns", &ns);
    assert!(err.contains("DNS proxy"), "{err}");
    assert!(err.contains("15053"), "{err}");
    let state = zt.view.state();
    let pod = &state["uid-d-0"];
    assert_eq!(pod.state, ProxyPhase::Pending, "{state:?}");
    assert!(
        pod.pending_reason
            .as_deref()
            .unwrap_or_default()
            .contains("15053"),
        "{state:?}"
    );
    until("the refused pod's identity is released", || {
        zt.identities().is_empty()
    })
    .await;

    // The manager retries the pending pod; with the port free it comes up.
    drop(squatter);
    zt.snapshot_sent();
    let view = zt.view.clone();
    until("the pod proxy is up once 15053 is free", || {
        view.state()
            .get("uid-d-0")
            .is_some_and(|p| p.state == ProxyPhase::Up)
    })
    .await;
    zt.until_certificates(&[&id("cluster.local", "dns")]).await;
    zt.del("d-0").await;
    zt.stop().await;
}

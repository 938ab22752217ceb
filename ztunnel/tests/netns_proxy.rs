//! End-to-end tests of the data path between two "nodes" (network namespaces joined by a veth
//! pair), each running a dedicated-mode proxy instance on a tokio runtime whose thread entered
//! the node's namespace, so `HostSocketFactory` creates every socket there.
//!
//! Client node: the application's outbound TCP is redirected to 15001 (`iptables -t nat
//! OUTPUT`, excluding mark 1337 — the proxy's own sockets — and loopback). Server node: inbound
//! TCP except 15008 is redirected to 15006; an echo application on 8080 first writes the peer
//! IP it sees; a policy route sends the application's replies back to the proxy's transparent
//! sockets so the original source IP can be preserved. `iptables -t mangle` counters on the
//! server's veth show what crossed the wire.
//!
//! Needs root, iproute2 and iptables; fails (never skips) when they are missing.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hbone::{Identity, StaticCertificate};
use mesh_testing::TestCa;
use state::MeshState;
use support::{
    APP_PORT, MARK, Netns, Node, Recorder, WAIT, capture_outbound, exchange,
    expect_closed_without_data, proxy_inputs,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use ztunnel::proxy::io::{Connector, FactoryDialer};
use ztunnel::proxy::{
    Direction, OrigSrc, ProxyHandle, ProxySettings, ResponseFlag, SecurityPolicy, telemetry,
};
use ztunnel::socket::HostSocketFactory;

fn mesh_yaml(net: u8) -> String {
    format!(
        r#"
workloads:
- uid: Kubernetes//Pod/mesh/client-0
  name: client-0
  namespace: mesh
  serviceAccount: client
  trustDomain: cluster.local
  workloadIps: ["10.77.{net}.1"]
  protocol: HBONE
  workloadName: client
  canonicalName: client
  canonicalRevision: v1
  clusterId: Kubernetes
  services: {{}}
- uid: Kubernetes//Pod/mesh/server-0
  name: server-0
  namespace: mesh
  serviceAccount: server
  trustDomain: cluster.local
  workloadIps: ["10.77.{net}.2"]
  protocol: HBONE
  workloadName: server
  canonicalName: server
  canonicalRevision: v2
  clusterId: Kubernetes
  services:
    "mesh/echo.mesh.svc.cluster.local": {{80: {APP_PORT}}}
services:
- name: echo
  namespace: mesh
  hostname: echo.mesh.svc.cluster.local
  vips: ["/10.96.{net}.5"]
  ports: {{80: {APP_PORT}}}
"#
    )
}

const DENY_ALL: &str = r#"
policies:
- name: gate
  namespace: mesh
  scope: Namespace
  action: Allow
  dryRun: false
  rules: []
"#;

const ALLOW_CLIENT: &str = r#"
policies:
- name: gate
  namespace: mesh
  scope: Namespace
  action: Allow
  dryRun: false
  rules:
  - - - principals: [!Exact cluster.local/ns/mesh/sa/client]
"#;

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "mesh", sa)
}

/// Two nodes, their proxies, the server application and the shared mesh state.
struct Lab {
    net: u8,
    state: Arc<MeshState>,
    client_cert: Arc<StaticCertificate>,
    client_sink: Arc<Recorder>,
    server_sink: Arc<Recorder>,
    client_proxy: Option<ProxyHandle>,
    server_proxy: Option<ProxyHandle>,
    // Dropped after the proxies (fields drop in order): runtimes, then namespaces.
    client: Node,
    server: Node,
    server_ns: Netns,
    _client_ns: Netns,
}

impl Lab {
    async fn new(tag: &str, net: u8) -> Lab {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("info,access=debug,ztunnel=debug")
            .try_init();
        let client_ns = Netns::new(&format!("ztp-{tag}-c"));
        let server_ns = Netns::new(&format!("ztp-{tag}-s"));
        let (c_ip, s_ip) = (format!("10.77.{net}.1"), format!("10.77.{net}.2"));
        let s_name = &server_ns.name;
        client_ns.ip(&format!(
            "link add eth0 type veth peer name eth0 netns {s_name}"
        ));
        for (ns, ip) in [(&client_ns, &c_ip), (&server_ns, &s_ip)] {
            ns.ip(&format!("addr add {ip}/24 dev eth0"));
            ns.ip("link set eth0 up");
            ns.ip("link set lo up");
            ns.ip("route add default dev eth0");
        }
        capture_outbound(&client_ns);
        // Server node: plaintext inbound to 15006, HBONE untouched; wire counters.
        server_ns.exec(
            "iptables -w -t nat -A PREROUTING -i eth0 -p tcp ! --dport 15008 -j REDIRECT --to-ports 15006",
        );
        for port in [15008, APP_PORT, 80] {
            server_ns.exec(&format!(
                "iptables -w -t mangle -A PREROUTING -i eth0 -p tcp --dport {port}"
            ));
        }
        // TCP replies to a preserved (non-local) client source go back to the proxy's
        // transparent socket (Istio's CNI does this with marks); the proxy's own ports route
        // normally.
        server_ns.ip("rule add pref 100 ipproto tcp sport 15000-15100 lookup main");
        server_ns.ip(&format!(
            "rule add pref 101 from {s_ip} to {c_ip} ipproto tcp lookup 100"
        ));
        server_ns.ip("route add local 0.0.0.0/0 dev lo table 100");

        let state = Arc::new(MeshState::default());
        state::local::load(&state, &mesh_yaml(net)).expect("mesh config");
        let ca = TestCa::new("netns-test");
        let client = Node::new(&client_ns);
        let server = Node::new(&server_ns);
        server.start_echo_app().await;
        let client_sink = Arc::new(Recorder::default());
        let server_sink = Arc::new(Recorder::default());
        let cert = |sa: &str| {
            StaticCertificate::new(
                ca.issue(&format!("spiffe://cluster.local/ns/mesh/sa/{sa}"))
                    .workload_cert(),
            )
        };
        let client_cert = cert("client");
        let settings = || ProxySettings {
            orig_src: OrigSrc::Auto,
            termination_deadline: Duration::from_secs(1),
            ports: ztunnel::proxy::Ports {
                socks5: Some(0),
                ..Default::default()
            },
            ..ProxySettings::default()
        };
        let (ci, si) = (
            proxy_inputs(
                &state,
                client_cert.clone(),
                "client",
                &client_sink,
                settings(),
            ),
            proxy_inputs(&state, cert("server"), "server", &server_sink, settings()),
        );
        let client_proxy = client.start_proxy(ci).await;
        let server_proxy = server.start_proxy(si).await;
        Lab {
            net,
            state,
            client_cert,
            client_sink,
            server_sink,
            client_proxy: Some(client_proxy),
            server_proxy: Some(server_proxy),
            client,
            server,
            server_ns,
            _client_ns: client_ns,
        }
    }

    fn addr(&self, host: u8, port: u16) -> SocketAddr {
        format!("10.77.{}.{host}:{port}", self.net).parse().unwrap()
    }

    fn vip(&self) -> SocketAddr {
        format!("10.96.{}.5:80", self.net).parse().unwrap()
    }

    /// Packets that arrived on the server's veth for a destination port (before NAT).
    fn wire_packets(&self, port: u16) -> u64 {
        let out = self
            .server_ns
            .exec("iptables -w -t mangle -L PREROUTING -v -n -x");
        let needle = format!("dpt:{port}");
        out.lines()
            .find(|l| l.split_whitespace().any(|w| w == needle))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter for port {port} in:\n{out}"))
    }

    /// Connects from the client node as the application (captured) or bypassing capture.
    async fn connect(&self, dst: SocketAddr, captured: bool) -> std::io::Result<TcpStream> {
        self.client
            .connect(dst, (!captured).then_some(MARK), WAIT)
            .await
    }

    async fn shutdown(mut self) {
        if let Some(p) = self.client_proxy.take() {
            self.client.drain(p, Duration::from_millis(200)).await;
        }
        if let Some(p) = self.server_proxy.take() {
            self.server.drain(p, Duration::from_millis(200)).await;
        }
    }
}

fn label<'a>(labels: &'a [(&'static str, String)], k: &str) -> &'a str {
    &labels.iter().find(|(n, _)| *n == k).unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_outbound_via_hbone_end_to_end() {
    let lab = Lab::new("e2e", 71).await;
    let client_ip = lab.addr(1, 0).ip().to_string();

    // 1. Through the service VIP.
    let tcp = lab.connect(lab.vip(), true).await.expect("connect VIP");
    let seen = exchange(tcp, "hello via vip").await;
    assert_eq!(seen, client_ip, "server app sees the original client IP");

    let (ctx, out) = lab.client_sink.closed(1).await;
    assert_eq!(ctx.direction, Direction::Outbound);
    assert_eq!(out.flag, ResponseFlag::None, "{out:?}");
    assert_eq!(out.error, None);
    assert_eq!(ctx.security, SecurityPolicy::MutualTls);
    assert_eq!(ctx.source_identity, Some(id("client")));
    assert_eq!(ctx.destination_identity, Some(id("server")));
    assert_eq!(ctx.dst_addr, lab.addr(2, 15008));
    assert_eq!(ctx.hbone_target, Some(lab.addr(2, APP_PORT).to_string()));
    let greeting = format!("peer={client_ip}\n").len() as u64;
    assert_eq!(out.client_to_server, 13);
    assert_eq!(out.server_to_client, greeting + 13);
    let labels = telemetry::traffic_labels(&ctx, out.flag);
    assert_eq!(label(&labels, "reporter"), "source");
    assert_eq!(
        label(&labels, "source_principal"),
        "spiffe://cluster.local/ns/mesh/sa/client"
    );
    assert_eq!(
        label(&labels, "destination_principal"),
        "spiffe://cluster.local/ns/mesh/sa/server"
    );
    assert_eq!(
        label(&labels, "destination_service"),
        "echo.mesh.svc.cluster.local"
    );
    assert_eq!(label(&labels, "destination_workload"), "server");
    assert_eq!(label(&labels, "connection_security_policy"), "mutual_tls");

    let (ctx, out) = lab.server_sink.closed(1).await;
    assert_eq!(ctx.direction, Direction::Inbound);
    assert_eq!(out.flag, ResponseFlag::None, "{out:?}");
    assert_eq!(ctx.source_identity, Some(id("client")));
    assert_eq!(ctx.source.as_ref().unwrap().name, "client-0");
    assert_eq!(ctx.dst_addr, lab.addr(2, 15008));
    assert_eq!(out.client_to_server, 13);
    assert_eq!(out.server_to_client, greeting + 13);
    let labels = telemetry::traffic_labels(&ctx, out.flag);
    assert_eq!(label(&labels, "reporter"), "destination");
    assert_eq!(
        label(&labels, "source_principal"),
        "spiffe://cluster.local/ns/mesh/sa/client"
    );
    assert_eq!(label(&labels, "source_workload"), "client");
    assert_eq!(
        label(&labels, "destination_service"),
        "echo.mesh.svc.cluster.local"
    );

    // 2. Directly to the pod IP: also tunnelled.
    let tcp = lab
        .connect(lab.addr(2, APP_PORT), true)
        .await
        .expect("connect pod");
    assert_eq!(exchange(tcp, "hello via pod ip").await, client_ip);
    let (_, out) = lab.client_sink.closed(2).await;
    assert_eq!(out.flag, ResponseFlag::None);

    // Only HBONE crossed the wire.
    assert!(lab.wire_packets(15008) > 0, "HBONE packets on the wire");
    assert_eq!(
        lab.wire_packets(APP_PORT),
        0,
        "no plaintext app traffic on the wire"
    );
    assert_eq!(
        lab.wire_packets(80),
        0,
        "no plaintext service traffic on the wire"
    );
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_authorization_deny_all_then_allow_by_principal() {
    let lab = Lab::new("authz", 72).await;
    state::local::load(&lab.state, DENY_ALL).expect("policy");

    expect_closed_without_data(lab.connect(lab.vip(), true).await).await;
    let (ctx, out) = lab.server_sink.closed(1).await;
    assert_eq!(out.flag, ResponseFlag::Deny, "{out:?}");
    assert_eq!(ctx.source_identity, Some(id("client")));
    assert_eq!(
        label(&telemetry::traffic_labels(&ctx, out.flag), "response_flags"),
        "DENY"
    );
    let (_, out) = lab.client_sink.closed(1).await;
    assert_eq!(
        out.flag,
        ResponseFlag::Connect,
        "client sees a 401: {out:?}"
    );
    assert!(out.error.as_deref().unwrap().contains("401"), "{out:?}");

    state::local::load(&lab.state, ALLOW_CLIENT).expect("policy");
    let tcp = lab.connect(lab.vip(), true).await.expect("connect");
    assert_eq!(
        exchange(tcp, "allowed").await,
        lab.addr(1, 0).ip().to_string()
    );
    let (_, out) = lab.server_sink.closed(2).await;
    assert_eq!(out.flag, ResponseFlag::None, "{out:?}");
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_policy_change_closes_live_connection() {
    let lab = Lab::new("late", 73).await;
    let tcp = lab.connect(lab.vip(), true).await.expect("connect");
    let mut tcp = BufReader::new(tcp);
    let mut line = String::new();
    tokio::time::timeout(WAIT, tcp.read_line(&mut line))
        .await
        .expect("greeting in time")
        .expect("greeting");
    assert!(line.starts_with("peer="), "{line:?}");
    tcp.get_mut().write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tcp.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");

    // Still allowed: a policy that admits the client changes nothing.
    state::local::load(&lab.state, ALLOW_CLIENT).expect("policy");
    tcp.get_mut().write_all(b"pong").await.unwrap();
    tcp.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"pong");

    // Now denied: the live connection is closed by the destination proxy.
    state::local::load(&lab.state, DENY_ALL).expect("policy");
    let mut rest = Vec::new();
    let r = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("connection closed after the policy change");
    assert!(r.is_err() || rest.is_empty(), "{r:?} {rest:?}");
    let (ctx, out) = lab.server_sink.closed(1).await;
    assert_eq!(out.flag, ResponseFlag::Deny, "{out:?}");
    assert!(
        out.error.as_deref().unwrap().contains("policy change"),
        "{out:?}"
    );
    assert_eq!(ctx.source_identity, Some(id("client")));
    assert_eq!(out.client_to_server, 8, "bytes counted up to the close");
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_plaintext_inbound_and_hbone_port() {
    let lab = Lab::new("plain", 74).await;

    // Not captured on the client: plaintext arrives at the server's 15006.
    let tcp = lab
        .connect(lab.addr(2, APP_PORT), false)
        .await
        .expect("connect");
    assert_eq!(
        exchange(tcp, "plain").await,
        lab.addr(1, 0).ip().to_string()
    );
    let (ctx, out) = lab.server_sink.closed(1).await;
    assert_eq!(out.flag, ResponseFlag::None, "{out:?}");
    assert_eq!(ctx.security, SecurityPolicy::Unknown);
    assert_eq!(ctx.source_identity, None);
    assert_eq!(
        ctx.source.as_ref().unwrap().name,
        "client-0",
        "source by IP"
    );
    let labels = telemetry::traffic_labels(&ctx, out.flag);
    assert_eq!(label(&labels, "connection_security_policy"), "unknown");
    assert_eq!(label(&labels, "source_principal"), "unknown");
    assert!(lab.wire_packets(APP_PORT) > 0);

    // A principal allow-list denies plaintext (no identity).
    state::local::load(&lab.state, ALLOW_CLIENT).expect("policy");
    expect_closed_without_data(lab.connect(lab.addr(2, APP_PORT), false).await).await;
    let (_, out) = lab.server_sink.closed(2).await;
    assert_eq!(out.flag, ResponseFlag::Deny, "{out:?}");

    // Plaintext to 15008: the TLS server never answers with application data.
    let mut tcp = lab
        .connect(lab.addr(2, 15008), false)
        .await
        .expect("connect 15008");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf))
        .await
        .expect("15008 closes a plaintext connection");
    assert!(
        !buf.starts_with(b"HTTP"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(buf.len() < 64, "at most a TLS alert: {buf:?}");

    // Captured connection to the server's 15008: tunnelled with target port 15008 ⇒ 503.
    expect_closed_without_data(lab.connect(lab.addr(2, 15008), true).await).await;
    let (_, out) = lab.client_sink.closed(1).await;
    assert!(out.error.as_deref().unwrap().contains("503"), "{out:?}");
    let f = lab.server_sink.failed(1).await;
    assert!(f.error.contains("own ports"), "{f:?}");
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_loopback_proxy_ports_are_refused() {
    let lab = Lab::new("loop", 75).await;
    for port in [15001, 15006] {
        let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        expect_closed_without_data(lab.connect(dst, true).await).await;
    }
    let f = lab.client_sink.failed(1).await;
    assert_eq!(f.direction, Direction::Outbound);
    assert!(f.error.contains("own ports"), "{f:?}");
    let f = lab.client_sink.failed(2).await;
    assert_eq!(f.direction, Direction::Inbound);
    assert!(f.error.contains("own ports"), "{f:?}");

    // 15008 on loopback: a TLS listener, no proxying of plaintext.
    let mut tcp = lab
        .connect("127.0.0.1:15008".parse().unwrap(), true)
        .await
        .expect("connect");
    tcp.write_all(b"hello\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf))
        .await
        .expect("closed");
    assert!(buf.len() < 64, "at most a TLS alert: {buf:?}");
    for d in [Direction::Outbound, Direction::Inbound] {
        assert_eq!(lab.client_sink.count_opened(d), 0, "nothing was proxied");
    }
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_drain_closes_connections_at_deadline() {
    let mut lab = Lab::new("drain", 76).await;
    let tcp = lab.connect(lab.vip(), true).await.expect("connect");
    let mut tcp = BufReader::new(tcp);
    let mut line = String::new();
    tokio::time::timeout(WAIT, tcp.read_line(&mut line))
        .await
        .expect("greeting in time")
        .expect("greeting");
    let proxy = lab.client_proxy.take().unwrap();
    assert_eq!(proxy.live_connections(), 1);
    lab.client
        .run(async move { proxy.drain(Duration::from_millis(300)).await })
        .await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("closed at the drain deadline");
    let (_, out) = lab.client_sink.closed(1).await;
    assert!(out.error.as_deref().unwrap().contains("drain"), "{out:?}");
    // The outbound listener is gone: the redirected connect is refused.
    assert!(lab.connect(lab.vip(), true).await.is_err());
    lab.shutdown().await;
}

/// Half-closes a tunnel and reads the application's greeting until its EOF.
async fn close_gracefully(tunnel: hbone::Tunnel) {
    let mut stream = tunnel.stream;
    stream.shutdown().await.expect("END_STREAM");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .expect("tunnel ends")
        .expect("clean end");
    assert!(buf.starts_with(b"peer="), "{buf:?}");
}

/// Speaks HBONE directly to the server's 15008 (as the client workload) and checks the status
/// of each inbound check, in Istio's order, and the response baggage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_hbone_inbound_statuses() {
    let lab = Lab::new("status", 77).await;
    let state = lab.state.clone();
    let client_cert = lab.client_cert.clone();
    let server = lab.addr(2, 15008);
    let net = lab.net;
    let statuses = lab
        .client
        .run(async move {
            let pool = hbone_client(client_cert);
            let open = |authority: String| {
                let pool = pool.clone();
                async move {
                    let req = hbone::ConnectRequest {
                        source: id("client"),
                        expected: vec![id("server")],
                        destination: server,
                        source_ip: None,
                        authority,
                        headers: Default::default(),
                    };
                    match pool.connect(req).await {
                        Ok(t) => Ok(t),
                        Err(hbone::Error::ConnectStatus { status, .. }) => Err(status),
                        Err(e) => panic!("unexpected HBONE error: {e}"),
                    }
                }
            };
            let mut statuses = Vec::new();
            let tunnel = open(format!("10.77.{net}.2:{APP_PORT}"))
                .await
                .expect("200");
            let baggage = tunnel.response_headers["baggage"]
                .to_str()
                .unwrap()
                .to_string();
            close_gracefully(tunnel).await;
            for authority in [
                format!("10.77.{net}.9:{APP_PORT}"),
                format!("10.77.{net}.2:15006"),
                "echo.mesh.svc.cluster.local:80".to_string(),
                "nope.mesh.svc.cluster.local:80".to_string(),
                format!("10.77.{net}.2:9999"),
            ] {
                let status = match open(authority.clone()).await {
                    Ok(tunnel) => {
                        close_gracefully(tunnel).await;
                        200
                    }
                    Err(status) => status,
                };
                statuses.push((authority, status));
            }
            state::local::load(&state, DENY_ALL).expect("policy");
            let denied = open(format!("10.77.{net}.2:{APP_PORT}")).await.map(|_| 200);
            statuses.push(("denied".into(), denied.unwrap_or_else(|s| s)));
            (baggage, statuses)
        })
        .await;
    let (baggage, statuses) = statuses;
    assert_eq!(
        baggage,
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=mesh,k8s.deployment.name=server,service.name=server,service.version=v2"
    );
    let codes: Vec<u16> = statuses.iter().map(|(_, s)| *s).collect();
    assert_eq!(codes, [400, 503, 200, 503, 503, 401], "{statuses:?}");
    // The refused upstream connect is counted with flag CONNECT; the denial with DENY.
    let mut flags = Vec::new();
    for n in 1..=4 {
        flags.push(lab.server_sink.closed(n).await.1.flag);
    }
    assert_eq!(
        flags,
        [
            ResponseFlag::None,
            ResponseFlag::None,
            ResponseFlag::Connect,
            ResponseFlag::Deny
        ]
    );
    lab.shutdown().await;
}

/// An HBONE client pool as the client node's ztunnel would dial (marked sockets).
fn hbone_client(cert: Arc<StaticCertificate>) -> hbone::Pool {
    let connector = Connector {
        sockets: Arc::new(HostSocketFactory { mark: Some(MARK) }),
        tcp: Default::default(),
        timeout: WAIT,
        orig_src: OrigSrc::Never,
    };
    hbone::Pool::new(
        hbone::ClientSettings::default(),
        cert,
        Arc::new(FactoryDialer(connector)),
    )
}

/// A destination with a PROXY application tunnel (a waypoint's "sandwich" binding) gets the
/// connection on its loopback port with a PROXY v2 header naming the client, then the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_app_tunnel_gets_a_proxy_v2_header() {
    let lab = Lab::new("apptun", 78).await;
    let net = lab.net;
    let tunnelled = mesh_yaml(net).replace(
        "  canonicalRevision: v2\n",
        "  canonicalRevision: v2\n  applicationTunnel: {protocol: PROXY, port: 15088}\n",
    );
    state::local::load(&lab.state, &tunnelled).expect("app tunnel config");
    // The app: on the pod's loopback only; reports what the header said, then echoes.
    lab.server
        .run(async move {
            let l = tokio::net::TcpListener::bind(("127.0.0.1", 15088))
                .await
                .expect("bind the tunnel port");
            tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                let mut head = [0u8; 16];
                s.read_exact(&mut head).await.unwrap();
                let len = u16::from_be_bytes([head[14], head[15]]) as usize;
                let mut rest = vec![0u8; len];
                s.read_exact(&mut rest).await.unwrap();
                let src = std::net::Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
                let dst = std::net::Ipv4Addr::new(rest[4], rest[5], rest[6], rest[7]);
                let dport = u16::from_be_bytes([rest[10], rest[11]]);
                let tlv = String::from_utf8_lossy(&rest[15..]).into_owned();
                let mut payload = [0u8; 4];
                s.read_exact(&mut payload).await.unwrap();
                let report = format!(
                    "sig={} cmd={:#x} fam={:#x} src={src} dst={dst}:{dport} tlv={:#x}:{tlv} payload={}\n",
                    &head[..12] == b"\r\n\r\n\0\r\nQUIT\n",
                    head[12],
                    head[13],
                    rest[12],
                    String::from_utf8_lossy(&payload)
                );
                s.write_all(report.as_bytes()).await.unwrap();
                let _ = s.shutdown().await;
            });
        })
        .await;
    let client_cert = lab.client_cert.clone();
    let server = lab.addr(2, 15008);
    let report = lab
        .client
        .run(async move {
            let pool = hbone_client(client_cert);
            let req = hbone::ConnectRequest {
                source: id("client"),
                expected: vec![id("server")],
                destination: server,
                source_ip: None,
                authority: format!("10.77.{net}.2:{APP_PORT}"),
                headers: Default::default(),
            };
            let mut tunnel = pool.connect(req).await.expect("200 from the tunnel");
            tunnel.stream.write_all(b"ping").await.unwrap();
            let mut report = String::new();
            tunnel.stream.read_to_string(&mut report).await.unwrap();
            report
        })
        .await;
    assert_eq!(
        report,
        format!(
            "sig=true cmd=0x21 fam=0x11 src=10.77.{net}.1 dst=10.77.{net}.2:{APP_PORT} tlv=0xd0:spiffe://cluster.local/ns/mesh/sa/client payload=ping\n"
        )
    );
    lab.shutdown().await;
}

/// SOCKS5 (`UNSTABLE_ENABLE_SOCKS5`): a CONNECT on the pod's loopback listener is carried like
/// a captured connection: over HBONE with the client's identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_socks5_connect_goes_through_hbone() {
    let lab = Lab::new("socks", 79).await;
    let socks = lab
        .client_proxy
        .as_ref()
        .and_then(|p| p.socks5_addr())
        .expect("the SOCKS5 listener");
    assert!(socks.ip().is_loopback(), "{socks}");
    let target = lab.addr(2, APP_PORT);
    let client_ip = lab.addr(1, 0).ip().to_string();
    let seen = lab
        .client
        .run(async move {
            let mut tcp = TcpStream::connect(socks).await.expect("connect SOCKS5");
            let std::net::IpAddr::V4(ip) = target.ip() else {
                unreachable!()
            };
            let mut req = vec![5, 1, 0, 5, 1, 0, 1];
            req.extend_from_slice(&ip.octets());
            req.extend_from_slice(&target.port().to_be_bytes());
            tcp.write_all(&req).await.unwrap();
            let mut answer = [0u8; 12];
            tcp.read_exact(&mut answer).await.unwrap();
            assert_eq!(answer[..2], [5, 0], "no authentication");
            assert_eq!(answer[2..4], [5, 0], "CONNECT succeeded");
            exchange(tcp, "hello via socks").await
        })
        .await;
    assert_eq!(seen, client_ip, "the server app sees the client's address");
    let (ctx, out) = lab.client_sink.closed(1).await;
    assert_eq!(out.flag, ResponseFlag::None, "{out:?}");
    assert_eq!(ctx.security, SecurityPolicy::MutualTls);
    assert_eq!(ctx.destination_identity, Some(id("server")));
    let (ctx, _) = lab.server_sink.closed(1).await;
    assert_eq!(ctx.source_identity, Some(id("client")));
    lab.shutdown().await;
}

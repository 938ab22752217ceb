//! Double HBONE across two networks, with a real Envoy as the east-west gateway.
//!
//! Three network namespaces:
//! * client node, network `net1` (10.78.1.1): the application's outbound TCP is redirected to
//!   our proxy's 15001;
//! * gateway node (10.78.1.2 towards net1, 10.78.2.2 towards net2), with IP forwarding off, so
//!   nothing crosses between the networks except through the gateway. Envoy terminates HBONE on
//!   10.78.1.2:15008 the way istiod programs an east-west gateway: mutual TLS with the
//!   gateway's identity, each CONNECT authority (`<service hostname>:<port>`) routed to that
//!   service's endpoint on port 15008, the CONNECT payload forwarded as opaque TCP;
//! * server node, network `net2` (10.78.2.1): our proxy's 15008 and the application.
//!
//! The client proxy knows the server only as istiod describes a remote network: a
//! split-horizon workload (no address, `network_gateway` = the gateway) behind the service, and
//! the service's SANs. The server proxy must see the client's own identity (the inner mutual
//! TLS is end to end), and the gateway must see the client's identity on the outer tunnel.
//!
//! Needs root, iproute2, iptables and `$ENVOY_BIN`; fails (never skips) when they are missing.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hbone::{Identity, StaticCertificate};
use mesh_testing::TestCa;
use mesh_tests::config::{
    CertFiles, SanMatch, bootstrap, connect_terminate_listener, hbone_downstream_tls,
    json_access_log, socket_address, static_cluster,
};
use mesh_tests::{Envoy, TempDir};
use serde_json::json;
use state::MeshState;
use support::{
    APP_PORT, MARK, Netns, Node, Recorder, WAIT, capture_outbound, exchange,
    expect_closed_without_data, proxy_inputs,
};
use ztunnel::proxy::{
    Direction, OrigSrc, ProxyHandle, ProxySettings, ResponseFlag, SecurityPolicy,
};
const CLIENT_IP: &str = "10.78.1.1";
const GATEWAY_IP: &str = "10.78.1.2";
const GATEWAY_NET2_IP: &str = "10.78.2.2";
const SERVER_IP: &str = "10.78.2.1";
/// The service's VIP as the client's network knows it.
const VIP: &str = "10.96.1.5:80";
const AUTHORITY: &str = "echo.mesh.svc.cluster.local:80";
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway";

/// What istiod sends the client's network: the local client, the gateway, and the remote
/// endpoints of the global service `echo` coalesced into one split-horizon workload.
fn client_view(service_san: &str) -> String {
    format!(
        r#"
workloads:
- uid: Kubernetes//Pod/mesh/client-0
  name: client-0
  namespace: mesh
  serviceAccount: client
  network: net1
  workloadIps: ["{CLIENT_IP}"]
  protocol: HBONE
  workloadName: client
  canonicalName: client
  canonicalRevision: v1
  clusterId: cluster1
  services: {{}}
- uid: cluster1/SplitHorizonWorkload/istio-system/istio-eastwestgateway/{GATEWAY_IP}/mesh/echo.mesh.svc.cluster.local
  name: echo-net2
  namespace: mesh
  serviceAccount: server
  network: net2
  workloadIps: []
  protocol: HBONE
  networkGateway: {{destination: "net2/{GATEWAY_IP}", hboneMtlsPort: 15008}}
  capacity: 1
  clusterId: cluster2
  services:
    "mesh/echo.mesh.svc.cluster.local": {{80: {APP_PORT}}}
- uid: NetworkGateway/net2/{GATEWAY_IP}/15008
  name: istio-eastwestgateway
  namespace: istio-system
  serviceAccount: istio-eastwestgateway
  network: net2
  workloadIps: ["{GATEWAY_IP}"]
  protocol: HBONE
  services: {{}}
services:
- name: echo
  namespace: mesh
  hostname: echo.mesh.svc.cluster.local
  vips: ["net1/10.96.1.5"]
  ports: {{80: {APP_PORT}}}
  subjectAltNames: ["{service_san}"]
"#
    )
}

/// What the server's network knows: its own workload behind `echo`.
fn server_view() -> String {
    format!(
        r#"
workloads:
- uid: cluster2//Pod/mesh/server-0
  name: server-0
  namespace: mesh
  serviceAccount: server
  network: net2
  workloadIps: ["{SERVER_IP}"]
  protocol: HBONE
  workloadName: server
  canonicalName: server
  clusterId: cluster2
  services:
    "mesh/echo.mesh.svc.cluster.local": {{80: {APP_PORT}}}
services:
- name: echo
  namespace: mesh
  hostname: echo.mesh.svc.cluster.local
  vips: ["net2/10.96.2.5"]
  ports: {{80: {APP_PORT}}}
"#
    )
}

fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/mesh/sa/{sa}")
}

struct Multinet {
    client_state: Arc<MeshState>,
    client_sink: Arc<Recorder>,
    server_sink: Arc<Recorder>,
    envoy: Envoy,
    client_proxy: Option<ProxyHandle>,
    server_proxy: Option<ProxyHandle>,
    // Dropped after the proxies: runtimes, then namespaces.
    client: Node,
    server: Node,
    _gateway: Node,
    _ns: Vec<Netns>,
}

impl Multinet {
    /// `tag` keeps the namespace names of tests running at the same time apart.
    async fn new(tag: &str) -> Multinet {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("info,access=debug,ztunnel=debug,hbone=debug")
            .try_init();
        let c = Netns::new(&format!("ztd-{tag}-c"));
        let g = Netns::new(&format!("ztd-{tag}-g"));
        let s = Netns::new(&format!("ztd-{tag}-s"));
        c.ip(&format!(
            "link add eth0 type veth peer name eth0 netns {}",
            g.name
        ));
        s.ip(&format!(
            "link add eth0 type veth peer name eth1 netns {}",
            g.name
        ));
        for (ns, dev, cidr) in [
            (&c, "eth0", format!("{CLIENT_IP}/24")),
            (&g, "eth0", format!("{GATEWAY_IP}/24")),
            (&g, "eth1", format!("{GATEWAY_NET2_IP}/24")),
            (&s, "eth0", format!("{SERVER_IP}/24")),
        ] {
            ns.ip(&format!("addr add {cidr} dev {dev}"));
            ns.ip(&format!("link set {dev} up"));
            ns.ip("link set lo up");
        }
        c.ip("route add default dev eth0");
        s.ip("route add default dev eth0");
        // The two networks meet only in the gateway, which does not route between them.
        g.exec("sysctl -qw net.ipv4.ip_forward=0");
        capture_outbound(&c);

        let ca = TestCa::new("multinet-root");
        let client_state = Arc::new(MeshState::default());
        state::local::load(&client_state, &client_view(&spiffe("server"))).expect("client view");
        let server_state = Arc::new(MeshState::default());
        state::local::load(&server_state, &server_view()).expect("server view");
        let client = Node::new(&c);
        let gateway = Node::new(&g);
        let server = Node::new(&s);
        server.start_echo_app().await;

        // The east-west gateway.
        let dir = TempDir::new("ew-gateway");
        let certs = CertFiles::write(&dir, "gateway", &ca.issue(GATEWAY_ID));
        let tls = hbone_downstream_tls(
            &certs,
            &SanMatch::Prefix(vec!["spiffe://cluster.local/".into()]),
        );
        let log = json_access_log(
            dir.path().join("gateway.access.log"),
            json!({
                "authority": "%REQ(:AUTHORITY)%",
                "method": "%REQ(:METHOD)%",
                "code": "%RESPONSE_CODE%",
                "downstream_peer_uri_san": "%DOWNSTREAM_PEER_URI_SAN%",
                "x_forwarded_network": "%REQ(X-FORWARDED-NETWORK)%",
                "upstream_host": "%UPSTREAM_HOST%",
            }),
        );
        let mut listener =
            connect_terminate_listener("ew", tls, &[(AUTHORITY, "echo-net2")], Some(log));
        listener["address"] = socket_address(format!("{GATEWAY_IP}:15008").parse().unwrap());
        let cluster = static_cluster("echo-net2", format!("{SERVER_IP}:15008").parse().unwrap());
        let config = bootstrap(vec![listener], vec![cluster]);
        let envoy = gateway
            .run(async move { Envoy::start("ew-gateway", dir, config).await })
            .await
            .expect("start the east-west gateway (Envoy)");

        let client_sink = Arc::new(Recorder::default());
        let server_sink = Arc::new(Recorder::default());
        let inputs = |state: &Arc<MeshState>, sa: &str, network: &str, sink: &Arc<Recorder>| {
            let certs = StaticCertificate::new(ca.issue(&spiffe(sa)).workload_cert());
            let settings = ProxySettings {
                network: network.into(),
                orig_src: OrigSrc::Never,
                termination_deadline: Duration::from_secs(1),
                ..ProxySettings::default()
            };
            proxy_inputs(state, certs, sa, sink, settings)
        };
        let ci = inputs(&client_state, "client", "net1", &client_sink);
        let si = inputs(&server_state, "server", "net2", &server_sink);
        let client_proxy = client.start_proxy(ci).await;
        let server_proxy = server.start_proxy(si).await;
        Multinet {
            client_state,
            client_sink,
            server_sink,
            envoy,
            client_proxy: Some(client_proxy),
            server_proxy: Some(server_proxy),
            client,
            server,
            _gateway: gateway,
            _ns: vec![c, g, s],
        }
    }

    /// Connects from the client application (captured by the redirect).
    async fn connect_app(&self, dst: &str) -> std::io::Result<tokio::net::TcpStream> {
        self.client.connect(dst.parse().unwrap(), None, WAIT).await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_network_service_is_reached_through_the_east_west_gateway() {
    let lab = Multinet::new("ok").await;

    // Without the gateway there is no path: the server's address is unreachable from net1
    // (bypassing capture with the proxy's mark).
    let direct: SocketAddr = format!("{SERVER_IP}:{APP_PORT}").parse().unwrap();
    let unreachable = lab
        .client
        .connect(direct, Some(MARK), Duration::from_secs(2))
        .await;
    assert!(
        unreachable.is_err(),
        "net1 must not reach net2 directly, or this test proves nothing"
    );

    let seen = exchange(lab.connect_app(VIP).await.unwrap(), "across networks").await;
    // The application sees its own node's proxy (no source spoofing across networks here).
    assert_eq!(seen, SERVER_IP);

    // Client side: reported against the gateway, for the service the app addressed.
    let (ctx, outcome) = lab.client_sink.closed(1).await;
    assert_eq!(ctx.direction, Direction::Outbound);
    assert_eq!(outcome.flag, ResponseFlag::None, "{outcome:?}");
    assert_eq!(ctx.security, SecurityPolicy::MutualTls);
    assert_eq!(ctx.dst_addr, format!("{GATEWAY_IP}:15008").parse().unwrap());
    assert_eq!(ctx.hbone_target.as_deref(), Some(AUTHORITY));
    assert_eq!(
        ctx.destination_identity,
        Some(Identity::parse(GATEWAY_ID).unwrap())
    );
    assert_eq!(
        ctx.destination_service.as_ref().unwrap().hostname,
        "echo.mesh.svc.cluster.local"
    );
    assert_eq!(outcome.client_to_server, b"across networks".len() as u64);

    // Server side: the inner mutual TLS ended here, so the client's own identity was proved
    // to this proxy; the TCP peer is the gateway, and the source workload is not looked up by
    // that address (x-forwarded-network says net1), but taken from the baggage.
    let (ctx, outcome) = lab.server_sink.closed(1).await;
    assert_eq!(ctx.direction, Direction::Inbound);
    assert_eq!(outcome.flag, ResponseFlag::None, "{outcome:?}");
    assert_eq!(
        ctx.source_identity,
        Some(Identity::parse(&spiffe("client")).unwrap())
    );
    assert_eq!(ctx.src_addr.ip().to_string(), GATEWAY_NET2_IP);
    assert_eq!(ctx.hbone_target.as_deref(), Some(AUTHORITY));
    let source = ctx.source.expect("source from baggage");
    assert_eq!(source.workload_name, "client");
    assert_eq!(source.cluster_id, "cluster1");

    // The gateway: one CONNECT for the service, from the client's identity, answered 200 and
    // sent to the server's HBONE port. The inner CONNECT (with x-forwarded-network) was
    // inside the encrypted payload, so the gateway never saw it.
    let log = lab.envoy.access_log("gateway.access.log", 1).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["authority"], AUTHORITY);
    assert_eq!(log[0]["method"], "CONNECT");
    assert_eq!(log[0]["code"], 200);
    assert_eq!(log[0]["downstream_peer_uri_san"], spiffe("client"));
    assert_eq!(log[0]["upstream_host"], format!("{SERVER_IP}:15008"));
    assert!(log[0]["x_forwarded_network"].is_null(), "{log:?}");
    lab.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_hop_outside_the_service_sans_is_refused() {
    let lab = Multinet::new("san").await;
    // The service is said to run as `billing`; the server proves `server`.
    state::local::load(&lab.client_state, &client_view(&spiffe("billing"))).unwrap();
    expect_closed_without_data(lab.connect_app(VIP).await).await;
    let (ctx, outcome) = lab.client_sink.closed(1).await;
    assert_eq!(outcome.flag, ResponseFlag::TlsFailure, "{outcome:?}");
    let error = outcome.error.unwrap_or_default();
    assert!(
        error.contains("through network gateway") && error.contains(&spiffe("billing")),
        "the error names the gateway hop and the identity expected: {error}"
    );
    assert_eq!(ctx.hbone_target.as_deref(), Some(AUTHORITY));
    assert_eq!(lab.server_sink.count_opened(Direction::Inbound), 0);
    lab.shutdown().await;
}

//! HBONE interop with a real Envoy (1.40), in both roles:
//!
//! * Envoy **originates** (istiod's waypoint `connect_originate`: `tcp_proxy` with
//!   `tunneling_config` over an HTTP/2 mTLS cluster) → our [`hbone::Server`] → TCP echo;
//! * our [`hbone::Pool`] → Envoy **terminates** CONNECT (istiod's `connect_terminate`: HTTP/2
//!   HCM with `allow_connect`, `connect_matcher` route with `connect_config`) → TCP echo.
//!
//! The positive tests check the bytes in both directions, the half-close, and the identities
//! each side proved to the other (ours from the tunnel or the handler, Envoy's from its access
//! log); the negative ones that a peer with the wrong identity, CA or trust domain is refused
//! before any data flows.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use hbone::headers::{Baggage, Forwarded, RequestMeta, TraceParent, apply_request_headers};
use hbone::{
    ClientSettings, ConnectRequest, DefaultDialer, Error, PeerCertError, Pool, StaticCertificate,
};
use http::HeaderMap;
use mesh_testing::TestCa;
use mesh_tests::config::{
    CertFiles, SanMatch, bootstrap, connect_originate_listener, connect_terminate_listener,
    hbone_cluster, hbone_downstream_tls, hbone_upstream_tls, json_access_log, static_cluster,
};
use mesh_tests::{
    Envoy, HboneServer, LogCapture, TempDir, assert_same_bytes, banner_server, bounded,
    echo_exchange, id, payload,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Envoy's own identity (a waypoint's service account).
const ENVOY_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/waypoint";
/// Our HBONE server's identity.
const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/cart";
/// Our HBONE client's identity.
const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/ui";
const TRUST_DOMAIN_PREFIX: &str = "spiffe://cluster.local/";

const MIB: usize = 1024 * 1024;

/// Baggage Envoy adds to its CONNECTs (what a waypoint would say about itself).
const ENVOY_BAGGAGE: &str = "k8s.cluster.name=Kubernetes,k8s.namespace.name=istio-system,k8s.deployment.name=waypoint,service.name=waypoint,service.version=v1";

/// Fields of the `tcp_proxy` access log of the originating listeners.
fn originate_log_fields() -> Value {
    json!({
        "downstream_remote": "%DOWNSTREAM_REMOTE_ADDRESS%",
        "upstream_host": "%UPSTREAM_HOST%",
        "upstream_peer_uri_san": "%UPSTREAM_PEER_URI_SAN%",
        "upstream_tls_version": "%UPSTREAM_TLS_VERSION%",
        "upstream_failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
        "bytes_received": "%BYTES_RECEIVED%",
        "bytes_sent": "%BYTES_SENT%",
        "response_flags": "%RESPONSE_FLAGS%",
    })
}

/// Fields of the HCM access log of the terminating listener.
fn terminate_log_fields() -> Value {
    json!({
        "method": "%REQ(:METHOD)%",
        "authority": "%REQ(:AUTHORITY)%",
        "path": "%REQ(:PATH)%",
        "protocol": "%PROTOCOL%",
        "code": "%RESPONSE_CODE%",
        "flags": "%RESPONSE_FLAGS%",
        "downstream_peer_uri_san": "%DOWNSTREAM_PEER_URI_SAN%",
        "downstream_tls_version": "%DOWNSTREAM_TLS_VERSION%",
        "sni": "%REQUESTED_SERVER_NAME%",
        "forwarded": "%REQ(FORWARDED)%",
        "baggage": "%REQ(BAGGAGE)%",
        "traceparent": "%REQ(TRACEPARENT)%",
        "bytes_received": "%BYTES_RECEIVED%",
        "bytes_sent": "%BYTES_SENT%",
        "upstream_host": "%UPSTREAM_HOST%",
    })
}

// ------------------------------------------------------------------------------------------
// Envoy as the HBONE client

/// Envoy originating HBONE to our server: one listener per CONNECT target, all through one
/// HBONE cluster (so they share Envoy's HTTP/2 connection pool).
struct Originate {
    envoy: Envoy,
    server: HboneServer,
}

impl Originate {
    /// `targets`: (listener name, CONNECT hostname). `envoy_certs`: what Envoy presents and
    /// trusts; Envoy expects our server to be exactly `SERVER_ID`.
    async fn start(
        server: HboneServer,
        dir: TempDir,
        envoy_certs: CertFiles,
        targets: &[(&str, String)],
    ) -> Originate {
        let tls = hbone_upstream_tls(&envoy_certs, &SanMatch::Exact(vec![SERVER_ID.into()]));
        let listeners = targets
            .iter()
            .map(|(name, hostname)| {
                let log = json_access_log(
                    dir.path().join(format!("{name}.access.log")),
                    originate_log_fields(),
                );
                connect_originate_listener(
                    name,
                    "hbone",
                    hostname,
                    &[
                        ("forwarded", "for=\"%DOWNSTREAM_REMOTE_ADDRESS%\""),
                        ("baggage", ENVOY_BAGGAGE),
                    ],
                    Some(log),
                )
            })
            .collect();
        let config = bootstrap(listeners, vec![hbone_cluster("hbone", server.addr, tls)]);
        let envoy = Envoy::start("originate", dir, config)
            .await
            .expect("start envoy");
        Originate { envoy, server }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_client_tunnels_to_our_server() {
    let ca = TestCa::new("mesh-root");
    let server = HboneServer::start(&ca.issue(SERVER_ID)).await;
    let echo = mesh_testing::echo_server().await;
    let (banner, banner_got) = banner_server(b"hello from the destination").await;
    let dir = TempDir::new("envoy-originate");
    let certs = CertFiles::write(&dir, "envoy", &ca.issue(ENVOY_ID));
    let o = Originate::start(
        server,
        dir,
        certs,
        &[
            ("to-echo", echo.to_string()),
            ("to-banner", banner.to_string()),
        ],
    )
    .await;

    // 1 MiB each way through Envoy and our server, then our FIN → EOF back.
    let tcp = TcpStream::connect(o.envoy.listener("to-echo"))
        .await
        .unwrap();
    let client_addr = tcp.local_addr().unwrap();
    let data = payload(1, MIB);
    let got = bounded("1 MiB echo via envoy", echo_exchange(tcp, &data))
        .await
        .expect("echo exchange");
    assert_same_bytes("echo through envoy → hbone server", &got, &data);

    // Half-close, client first: a small message after which we shut down our write side;
    // the echo (sent by the destination after our FIN arrived) still reaches us, then EOF.
    let mut tcp = TcpStream::connect(o.envoy.listener("to-echo"))
        .await
        .unwrap();
    tcp.write_all(b"ping after which I close").await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut back = Vec::new();
    bounded("read echo after half-close", tcp.read_to_end(&mut back))
        .await
        .unwrap();
    assert_eq!(back, b"ping after which I close");

    // Half-close, destination first: the destination sends a banner and shuts down its write
    // side; we read it to EOF, then still send, and the destination receives it.
    let mut tcp = TcpStream::connect(o.envoy.listener("to-banner"))
        .await
        .unwrap();
    let mut banner_read = Vec::new();
    bounded("read banner to EOF", tcp.read_to_end(&mut banner_read))
        .await
        .unwrap();
    assert_eq!(banner_read, b"hello from the destination");
    tcp.write_all(b"sent after the destination's FIN")
        .await
        .unwrap();
    tcp.shutdown().await.unwrap();
    let received = bounded("destination receives after its FIN", banner_got)
        .await
        .expect("banner server finished");
    assert_eq!(received, b"sent after the destination's FIN");

    // What our server saw: Envoy's identity, the configured authority, Envoy's headers.
    let calls = o.server.calls();
    assert_eq!(calls.len(), 3, "{calls:#?}");
    for call in &calls {
        assert_eq!(call.peer_identity, id(ENVOY_ID));
        assert_eq!(
            call.peer_addr, calls[0].peer_addr,
            "all tunnels share one H2 connection"
        );
    }
    assert_eq!(calls[0].authority.socket_addr(), Some(echo));
    assert_eq!(calls[0].authority.to_string(), echo.to_string());
    assert_eq!(calls[2].authority.socket_addr(), Some(banner));
    let meta = RequestMeta::from_headers(&calls[0].headers);
    assert_eq!(
        meta.forwarded.as_ref().and_then(|f| f.for_addr),
        Some(client_addr),
        "forwarded for= names the TCP client of Envoy: {:?}",
        calls[0].headers
    );
    let baggage = meta.baggage.expect("baggage parsed");
    assert_eq!(baggage.cluster_id.as_deref(), Some("Kubernetes"));
    assert_eq!(baggage.namespace.as_deref(), Some("istio-system"));
    assert_eq!(baggage.workload_name.as_deref(), Some("waypoint"));
    assert_eq!(baggage.service_name.as_deref(), Some("waypoint"));
    assert_eq!(baggage.service_version.as_deref(), Some("v1"));
    eprintln!("CONNECT headers from envoy: {:?}", calls[0].headers);

    // What Envoy saw: our server's identity over TLS 1.3, and the byte counts.
    let log = o.envoy.access_log("to-echo.access.log", 2).await;
    let bulk = log
        .iter()
        .find(|e| e["downstream_remote"] == client_addr.to_string())
        .unwrap_or_else(|| panic!("no access log entry for {client_addr}: {log:#?}"));
    assert_eq!(bulk["upstream_peer_uri_san"], SERVER_ID, "{bulk}");
    assert_eq!(bulk["upstream_tls_version"], "TLSv1.3", "{bulk}");
    assert_eq!(bulk["upstream_host"], o.server.addr.to_string(), "{bulk}");
    assert_eq!(bulk["bytes_received"], MIB, "{bulk}");
    assert_eq!(bulk["bytes_sent"], MIB, "{bulk}");
    assert_eq!(
        o.envoy.stat("cluster.hbone.upstream_cx_total").await,
        1,
        "one HBONE connection for all tunnels"
    );
    assert_eq!(o.envoy.stat("cluster.hbone.upstream_rq_total").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_client_multiplexes_many_tunnels() {
    const TUNNELS: u64 = 50;
    const LEN: usize = 64 * 1024;
    let ca = TestCa::new("mesh-root");
    let server = HboneServer::start(&ca.issue(SERVER_ID)).await;
    let echo = mesh_testing::echo_server().await;
    let dir = TempDir::new("envoy-originate-many");
    let certs = CertFiles::write(&dir, "envoy", &ca.issue(ENVOY_ID));
    let o = Originate::start(server, dir, certs, &[("to-echo", echo.to_string())]).await;
    let listener = o.envoy.listener("to-echo");

    let tasks: Vec<_> = (0..TUNNELS)
        .map(|i| {
            tokio::spawn(async move {
                let tcp = TcpStream::connect(listener).await.unwrap();
                let data = payload(100 + i, LEN);
                let got = echo_exchange(tcp, &data).await.unwrap();
                assert_same_bytes(&format!("tunnel {i}"), &got, &data);
            })
        })
        .collect();
    bounded("50 concurrent tunnels", async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;

    let calls = o.server.calls();
    assert_eq!(calls.len(), TUNNELS as usize);
    assert!(calls.iter().all(|c| c.peer_identity == id(ENVOY_ID)));
    let connections: BTreeSet<SocketAddr> = calls.iter().map(|c| c.peer_addr).collect();
    eprintln!(
        "envoy carried {TUNNELS} concurrent tunnels on {} HTTP/2 connection(s)",
        connections.len()
    );
    assert!(
        connections.len() < TUNNELS as usize / 2,
        "envoy should multiplex tunnels on shared HTTP/2 connections, used {}",
        connections.len()
    );
    let envoy_connections = o.envoy.stat("cluster.hbone.upstream_cx_total").await;
    assert!(
        (connections.len() as u64..TUNNELS / 2).contains(&envoy_connections),
        "envoy opened {envoy_connections} HBONE connections, our server served tunnels on {}",
        connections.len()
    );
    assert_eq!(
        o.envoy.stat("cluster.hbone.upstream_rq_total").await,
        TUNNELS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_refuses_envoy_with_foreign_certificate() {
    let logs = LogCapture::install();
    let ca = TestCa::new("mesh-root");
    let foreign_ca = TestCa::new("foreign-root");
    let server = HboneServer::start(&ca.issue(SERVER_ID)).await;
    let echo = mesh_testing::echo_server().await;
    let dir = TempDir::new("envoy-originate-foreign");
    // Envoy trusts our root (so it accepts our server) but presents a certificate that our
    // server must refuse: one from another CA, one from our CA in another trust domain. A
    // third cluster presents a good certificate, to show the setup is otherwise sound.
    const FOREIGN_TD_ID: &str = "spiffe://evil.local/ns/istio-system/sa/waypoint";
    let mesh_roots = dir.write("mesh-roots.crt", ca.root_pem());
    let foreign_ca_certs = CertFiles {
        roots: mesh_roots.clone(),
        ..CertFiles::write(&dir, "foreign-ca", &foreign_ca.issue(ENVOY_ID))
    };
    let foreign_td_certs = CertFiles::write(&dir, "foreign-td", &ca.issue(FOREIGN_TD_ID));
    let good_certs = CertFiles::write(&dir, "good", &ca.issue(ENVOY_ID));
    let san = SanMatch::Exact(vec![SERVER_ID.into()]);
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    for (name, certs) in [
        ("foreign-ca", &foreign_ca_certs),
        ("foreign-td", &foreign_td_certs),
        ("good", &good_certs),
    ] {
        let log = json_access_log(
            dir.path().join(format!("{name}.access.log")),
            originate_log_fields(),
        );
        listeners.push(connect_originate_listener(
            name,
            name,
            &echo.to_string(),
            &[],
            Some(log),
        ));
        clusters.push(hbone_cluster(
            name,
            server.addr,
            hbone_upstream_tls(certs, &san),
        ));
    }
    let envoy = Envoy::start("originate-foreign", dir, bootstrap(listeners, clusters))
        .await
        .expect("start envoy");

    for (name, why) in [
        ("foreign-ca", vec!["unknown issuer"]),
        (
            "foreign-td",
            vec!["expected trust domain cluster.local", FOREIGN_TD_ID],
        ),
    ] {
        let mut tcp = TcpStream::connect(envoy.listener(name)).await.unwrap();
        // Envoy may accept our bytes before it learns the tunnel failed; none come back.
        let _ = tcp.write_all(b"must never arrive").await;
        let mut got = Vec::new();
        let read = bounded("envoy closes the refused client", tcp.read_to_end(&mut got)).await;
        assert!(
            got.is_empty(),
            "{name}: no data may come back, got {:?} ({read:?})",
            String::from_utf8_lossy(&got)
        );
        let log = envoy.access_log(&format!("{name}.access.log"), 1).await;
        assert_eq!(log[0]["bytes_sent"], 0, "{name}: {}", log[0]);
        assert!(
            log[0]["response_flags"]
                .as_str()
                .is_some_and(|f| f.split(',').any(|f| f == "UF")),
            "{name}: envoy reports an upstream connection failure: {}",
            log[0]
        );
        // Our server says why, in its own words.
        let needles = [
            &["WARN", "connection failed: TLS handshake"],
            why.as_slice(),
        ]
        .concat();
        let line = logs.wait_for(&needles).await;
        eprintln!("{name}: our server logged: {line}");
    }
    let calls = server.calls();
    assert!(
        calls.is_empty(),
        "our handler must never run for a refused peer: {calls:#?}"
    );

    // The same Envoy and server with a proper certificate: the tunnel works.
    let tcp = TcpStream::connect(envoy.listener("good")).await.unwrap();
    let got = bounded("echo via the good cluster", echo_exchange(tcp, b"control"))
        .await
        .unwrap();
    assert_eq!(got, b"control");
    let calls = server.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].peer_identity, id(ENVOY_ID));
}

// ------------------------------------------------------------------------------------------
// Envoy as the HBONE server

/// Envoy terminating HBONE: CONNECT to `echo` goes to the echo server, CONNECT to `banner` to
/// the banner server; any other authority gets 404.
struct Terminate {
    envoy: Envoy,
    ca: TestCa,
    addr: SocketAddr,
}

impl Terminate {
    async fn start(ca: TestCa, routes: &[(SocketAddr, &str)]) -> Terminate {
        let dir = TempDir::new("envoy-terminate");
        let certs = CertFiles::write(&dir, "envoy", &ca.issue(ENVOY_ID));
        let tls = hbone_downstream_tls(&certs, &SanMatch::Prefix(vec![TRUST_DOMAIN_PREFIX.into()]));
        let authorities: Vec<(String, &str)> =
            routes.iter().map(|(a, c)| (a.to_string(), *c)).collect();
        let route_refs: Vec<(&str, &str)> =
            authorities.iter().map(|(a, c)| (a.as_str(), *c)).collect();
        let log = json_access_log(
            dir.path().join("terminate.access.log"),
            terminate_log_fields(),
        );
        let listener = connect_terminate_listener("terminate", tls, &route_refs, Some(log));
        let clusters = routes
            .iter()
            .map(|(addr, cluster)| static_cluster(cluster, *addr))
            .collect();
        let envoy = Envoy::start("terminate", dir, bootstrap(vec![listener], clusters))
            .await
            .expect("start envoy");
        let addr = envoy.listener("terminate");
        Terminate { envoy, ca, addr }
    }

    fn pool(&self, identity: &str) -> Pool {
        pool_with(&self.ca.issue(identity))
    }

    fn request(&self, authority: impl Into<String>) -> ConnectRequest {
        ConnectRequest {
            source: id(CLIENT_ID),
            expected: vec![id(ENVOY_ID)],
            destination: self.addr,
            source_ip: None,
            authority: authority.into(),
            headers: HeaderMap::new(),
        }
    }
}

fn pool_with(leaf: &mesh_testing::Leaf) -> Pool {
    Pool::new(
        ClientSettings::default(),
        StaticCertificate::new(leaf.workload_cert()),
        Arc::new(DefaultDialer),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_pool_tunnels_through_envoy_server() {
    let echo = mesh_testing::echo_server().await;
    let (banner, banner_got) = banner_server(b"hello from the destination").await;
    let t = Terminate::start(
        TestCa::new("mesh-root"),
        &[(echo, "echo"), (banner, "banner")],
    )
    .await;
    let pool = t.pool(CLIENT_ID);

    // The HBONE headers a ztunnel sends; Envoy must pass them through untouched.
    let forwarded =
        Forwarded::new("10.1.2.3:53412".parse().unwrap()).with_host("cart.shop.svc.cluster.local");
    let baggage = Baggage {
        cluster_id: Some("Kubernetes".into()),
        namespace: Some("shop".into()),
        workload_name: Some("ui".into()),
        service_name: Some("ui".into()),
        service_version: Some("v2".into()),
        ..Baggage::default()
    };
    let traceparent = TraceParent::random();
    let mut request = t.request(echo.to_string());
    apply_request_headers(
        &mut request.headers,
        Some(&forwarded),
        Some(&baggage),
        Some(&traceparent),
    );
    let sent_headers = request.headers.clone();

    // 1 MiB each way, then our FIN → EOF back.
    let tunnel = bounded("CONNECT via envoy", pool.connect(request))
        .await
        .expect("tunnel through envoy");
    assert_eq!(tunnel.peer_identity, id(ENVOY_ID));
    eprintln!(
        "envoy's CONNECT response headers: {:?}",
        tunnel.response_headers
    );
    let data = payload(2, MIB);
    let got = bounded("1 MiB echo via envoy", echo_exchange(tunnel.stream, &data))
        .await
        .expect("echo exchange");
    assert_same_bytes("echo through our pool → envoy", &got, &data);

    // Half-close, client first.
    let tunnel = bounded("second CONNECT", pool.connect(t.request(echo.to_string())))
        .await
        .unwrap();
    let mut stream = tunnel.stream;
    stream.write_all(b"ping after which I close").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    bounded("read echo after half-close", stream.read_to_end(&mut back))
        .await
        .unwrap();
    assert_eq!(back, b"ping after which I close");
    drop(stream);

    // Destination closes first. Envoy 1.40 terminating CONNECT does not keep the tunnel
    // half-open: on the destination's FIN it sends the remaining data with END_STREAM, then
    // RST_STREAM(NO_ERROR), and closes the upstream socket. So we read the banner to EOF, and
    // anything we send afterwards never reaches the destination (our write may fail with
    // "broken pipe" or be dropped, depending on when the reset is processed).
    let tunnel = bounded(
        "CONNECT to banner",
        pool.connect(t.request(banner.to_string())),
    )
    .await
    .unwrap();
    let mut stream = tunnel.stream;
    let mut banner_read = Vec::new();
    bounded("read banner to EOF", stream.read_to_end(&mut banner_read))
        .await
        .unwrap();
    assert_eq!(banner_read, b"hello from the destination");
    let late_write = stream.write_all(b"sent after the destination's FIN").await;
    let received = bounded("destination sees the tunnel close", banner_got)
        .await
        .expect("banner server finished");
    assert_eq!(
        received, b"",
        "envoy closes the upstream after the destination's FIN (late write: {late_write:?})"
    );
    drop(stream);

    // An authority Envoy has no route for: that stream fails with 404, the connection stays.
    let err = bounded(
        "CONNECT to unknown authority",
        pool.connect(t.request("127.0.0.1:9")),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::ConnectStatus { status: 404, .. }),
        "unexpected error: {err}"
    );
    assert_eq!(pool.stats().dials, 1, "all tunnels on one connection");

    // What Envoy saw: our identity (no SNI, TLS 1.3), plain CONNECT to the authority, our
    // headers unchanged.
    let log = t.envoy.access_log("terminate.access.log", 4).await;
    let first = log
        .iter()
        .find(|e| e["traceparent"] == sent_headers["traceparent"].to_str().unwrap())
        .unwrap_or_else(|| panic!("no log entry for the first tunnel: {log:#?}"));
    assert_eq!(first["downstream_peer_uri_san"], CLIENT_ID, "{first}");
    assert_eq!(first["downstream_tls_version"], "TLSv1.3", "{first}");
    assert!(first["sni"].is_null(), "we send no SNI: {first}");
    assert_eq!(first["method"], "CONNECT", "{first}");
    assert_eq!(first["authority"], echo.to_string(), "{first}");
    assert!(
        first["path"].is_null(),
        "plain CONNECT has no :path: {first}"
    );
    assert_eq!(first["protocol"], "HTTP/2", "{first}");
    assert_eq!(first["code"], 200, "{first}");
    assert_eq!(first["bytes_received"], MIB, "{first}");
    assert_eq!(first["bytes_sent"], MIB, "{first}");
    assert_eq!(first["upstream_host"], echo.to_string(), "{first}");
    for (field, header) in [
        ("forwarded", "forwarded"),
        ("baggage", "baggage"),
        ("traceparent", "traceparent"),
    ] {
        assert_eq!(
            first[field],
            sent_headers[header].to_str().unwrap(),
            "{field}: {first}"
        );
    }
    let refused = log
        .iter()
        .find(|e| e["authority"] == "127.0.0.1:9")
        .unwrap_or_else(|| panic!("no log entry for the 404: {log:#?}"));
    assert_eq!(refused["code"], 404, "{refused}");
    assert_eq!(t.envoy.stat("http.terminate.downstream_cx_total").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_pool_multiplexes_many_tunnels_to_envoy() {
    const TUNNELS: u64 = 50;
    const LEN: usize = 64 * 1024;
    let echo = mesh_testing::echo_server().await;
    let t = Terminate::start(TestCa::new("mesh-root"), &[(echo, "echo")]).await;
    let pool = t.pool(CLIENT_ID);
    let tasks: Vec<_> = (0..TUNNELS)
        .map(|i| {
            let pool = pool.clone();
            let request = t.request(echo.to_string());
            tokio::spawn(async move {
                let tunnel = pool.connect(request).await.expect("tunnel");
                assert_eq!(tunnel.peer_identity, id(ENVOY_ID));
                let data = payload(200 + i, LEN);
                let got = echo_exchange(tunnel.stream, &data).await.unwrap();
                assert_same_bytes(&format!("tunnel {i}"), &got, &data);
            })
        })
        .collect();
    bounded("50 concurrent tunnels", async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    assert_eq!(pool.stats().dials, 1, "{:?}", pool.stats());
    assert_eq!(t.envoy.stat("http.terminate.downstream_cx_total").await, 1);
    assert_eq!(
        t.envoy.stat("http.terminate.downstream_rq_total").await,
        TUNNELS
    );
    let log = t
        .envoy
        .access_log("terminate.access.log", TUNNELS as usize)
        .await;
    assert!(
        log.iter()
            .all(|e| e["code"] == 200 && e["downstream_peer_uri_san"] == CLIENT_ID),
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_pool_refuses_envoy_with_unexpected_identity() {
    let echo = mesh_testing::echo_server().await;
    let t = Terminate::start(TestCa::new("mesh-root"), &[(echo, "echo")]).await;
    let pool = t.pool(CLIENT_ID);
    let wanted = id("spiffe://cluster.local/ns/shop/sa/payments");
    let mut request = t.request(echo.to_string());
    request.expected = vec![wanted.clone()];
    let err = bounded("CONNECT expecting another identity", pool.connect(request))
        .await
        .unwrap_err();
    match &err {
        Error::PeerIdentity {
            source:
                PeerCertError::IdentityMismatch {
                    expected,
                    presented,
                },
            dst,
        } => {
            assert_eq!(expected, &vec![wanted]);
            assert_eq!(presented, &vec![id(ENVOY_ID)]);
            assert_eq!(*dst, t.addr);
        }
        other => panic!("expected an identity mismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("sa/payments") && msg.contains(ENVOY_ID),
        "{msg}"
    );
    assert_eq!(err.response_flag(), "TLS_FAILURE");
    assert_eq!(t.envoy.stat("http.terminate.downstream_rq_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_server_refuses_our_foreign_certificates() {
    let echo = mesh_testing::echo_server().await;
    let t = Terminate::start(TestCa::new("mesh-root"), &[(echo, "echo")]).await;
    let listener_stat = |stat: &str| format!("listener.terminate.ssl.{stat}");

    // A certificate from another CA (trusting our root, so Envoy's side is accepted).
    let foreign_ca = TestCa::new("foreign-root");
    let leaf = mesh_testing::Leaf {
        roots_pem: t.ca.root_pem().to_string(),
        ..foreign_ca.issue(CLIENT_ID)
    };
    let err = bounded(
        "CONNECT with a foreign CA",
        pool_with(&leaf).connect(t.request(echo.to_string())),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::Tls { reason, .. } if reason.contains("UnknownCA")),
        "foreign CA: {err:?}"
    );
    assert!(
        t.envoy.stat(&listener_stat("fail_verify_error")).await >= 1,
        "envoy counts a chain verification failure"
    );

    // A certificate from our CA, but in another trust domain: Envoy's SAN prefix refuses it.
    let leaf = t.ca.issue("spiffe://evil.local/ns/shop/sa/ui");
    let mut request = t.request(echo.to_string());
    request.source = id("spiffe://evil.local/ns/shop/sa/ui");
    let err = bounded(
        "CONNECT from a foreign trust domain",
        pool_with(&leaf).connect(request),
    )
    .await
    .unwrap_err();
    eprintln!("foreign trust domain: {err}");
    assert!(
        matches!(&err, Error::Tls { reason, .. } if reason.contains("rejected our certificate")),
        "foreign trust domain: {err:?}"
    );
    assert!(
        t.envoy.stat(&listener_stat("fail_verify_san")).await >= 1,
        "envoy counts a SAN verification failure"
    );
    assert_eq!(t.envoy.stat("http.terminate.downstream_rq_total").await, 0);
}

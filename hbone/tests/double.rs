//! Double HBONE: a tunnel nested in a pooled tunnel to a network gateway that forwards the
//! inner bytes, unread, to the final hop.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use hbone::{
    ConnectRequest, DefaultDialer, Error, InboundRequest, InnerRequest, Pool, Server,
    ServerSettings, StaticCertificate,
};
use http::{HeaderMap, HeaderValue, StatusCode};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const GATEWAY_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway";

/// What the gateway and the final hop saw.
#[derive(Default)]
struct Seen {
    /// (client identity, authority) of each outer CONNECT at the gateway.
    gateway: Vec<(String, String)>,
    /// First byte of each inner stream as the gateway forwarded it.
    first_bytes: Vec<u8>,
    /// (client identity, authority, x-forwarded-network) of each inner CONNECT.
    final_hop: Vec<(String, String, Option<String>)>,
}

struct Mesh {
    pool: Pool,
    gateway: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

async fn serve(server: Server) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { server.serve(listener).await });
    addr
}

/// A final hop (routing like the other tests' server, recording what it saw) behind a gateway
/// that forwards every CONNECT to it as raw TCP.
async fn mesh() -> Mesh {
    let ca = mesh_testing::TestCa::new("root");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let final_hop = Server::new(
        ServerSettings::default(),
        id(SERVER_ID),
        StaticCertificate::new(ca.issue(SERVER_ID).workload_cert()),
        move |req: InboundRequest| {
            let network = req
                .headers
                .get("x-forwarded-network")
                .map(|v| v.to_str().unwrap().to_string());
            s.lock().final_hop.push((
                req.peer_identity.to_string(),
                req.authority.to_string(),
                network,
            ));
            route(req)
        },
    );
    let final_addr = serve(final_hop).await;
    let s = seen.clone();
    let gateway = Server::new(
        ServerSettings::default(),
        id(GATEWAY_ID),
        StaticCertificate::new(ca.issue(GATEWAY_ID).workload_cert()),
        move |req: InboundRequest| {
            let s = s.clone();
            async move {
                s.lock()
                    .gateway
                    .push((req.peer_identity.to_string(), req.authority.to_string()));
                let Ok(mut upstream) = TcpStream::connect(final_addr).await else {
                    req.reject(StatusCode::SERVICE_UNAVAILABLE);
                    return;
                };
                let mut stream = req.accept(HeaderMap::new()).unwrap();
                let mut first = [0u8; 1];
                if stream.read_exact(&mut first).await.is_err() {
                    return;
                }
                s.lock().first_bytes.push(first[0]);
                upstream.write_all(&first).await.unwrap();
                let _ = hbone::copy_tcp(&mut upstream, stream).await;
            }
        },
    );
    let gateway_addr = serve(gateway).await;
    let client = StaticCertificate::new(ca.issue(CLIENT_ID).workload_cert());
    Mesh {
        pool: Pool::new(Default::default(), client, Arc::new(DefaultDialer)),
        gateway: gateway_addr,
        seen,
    }
}

impl Mesh {
    fn outer(&self, authority: &str) -> ConnectRequest {
        ConnectRequest {
            source: id(CLIENT_ID),
            expected: vec![id(GATEWAY_ID)],
            destination: self.gateway,
            source_ip: None,
            authority: authority.into(),
            headers: HeaderMap::new(),
        }
    }
}

fn inner(expected: &[&str]) -> InnerRequest {
    let mut headers = HeaderMap::new();
    headers.insert("x-forwarded-network", HeaderValue::from_static("net1"));
    InnerRequest {
        expected: expected.iter().map(|e| id(e)).collect(),
        headers,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_reach_the_final_hop_which_authenticates_the_client_itself() {
    let mesh = mesh().await;
    let tunnel = mesh
        .pool
        .connect_double(mesh.outer("sink.test:1"), inner(&[SERVER_ID]))
        .await
        .unwrap();
    assert_eq!(tunnel.peer_identity, id(SERVER_ID), "peer is the final hop");
    let (mut app, mut proxy) = socket_pair().await;
    let copy = tokio::spawn(async move { hbone::copy_tcp(&mut proxy, tunnel.stream).await });
    let sent = write_pattern(&mut app, 8 * 1024 * 1024).await;
    app.shutdown().await.unwrap();
    let mut digest = [0u8; 32];
    app.read_exact(&mut digest).await.unwrap();
    assert_eq!(
        digest, sent,
        "the final hop hashed different bytes than were sent"
    );
    copy.await.unwrap().unwrap();

    let seen = mesh.seen.lock();
    assert_eq!(
        seen.gateway,
        vec![(CLIENT_ID.to_string(), "sink.test:1".to_string())]
    );
    // The gateway forwarded a TLS record (a handshake: 0x16), never plaintext.
    assert_eq!(seen.first_bytes, vec![0x16]);
    assert_eq!(
        seen.final_hop,
        vec![(
            CLIENT_ID.to_string(),
            "sink.test:1".to_string(),
            Some("net1".to_string())
        )]
    );
}

#[tokio::test]
async fn outer_connections_are_pooled_inner_ones_are_not() {
    let mesh = mesh().await;
    let echo = mesh_testing::echo_server().await;
    let authority = echo.to_string();
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        let mut t = mesh
            .pool
            .connect_double(mesh.outer(&authority), inner(&[SERVER_ID]))
            .await
            .unwrap();
        t.stream.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        t.stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        tunnels.push(t);
    }
    let stats = mesh.pool.stats();
    assert_eq!(
        stats.connections, 1,
        "one pooled outer connection: {stats:?}"
    );
    assert_eq!(stats.streams, 3, "three outer tunnels on it: {stats:?}");
    // 1 outer dial + 3 inner connections.
    assert_eq!(stats.dials, 4, "{stats:?}");
    assert_eq!(mesh.seen.lock().final_hop.len(), 3);
    drop(tunnels);
    for _ in 0..100 {
        if mesh.pool.stats().streams == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!(
        "outer tunnels not released after the inner ones ended: {:?}",
        mesh.pool.stats()
    );
}

#[tokio::test]
async fn a_final_hop_with_an_unexpected_identity_is_refused() {
    let mesh = mesh().await;
    let err = mesh
        .pool
        .connect_double(
            mesh.outer("sink.test:1"),
            inner(&["spiffe://cluster.local/ns/shop/sa/other"]),
        )
        .await
        .unwrap_err();
    match &err {
        Error::Inner { source, .. } => {
            assert!(
                matches!(**source, Error::PeerIdentity { .. }),
                "expected an identity refusal, got {source:?}"
            );
        }
        other => panic!("expected an inner-tunnel failure, got {other:?}"),
    }
    assert_eq!(err.response_flag(), "TLS_FAILURE");
    assert!(err.to_string().contains("through network gateway"), "{err}");
    assert!(mesh.seen.lock().final_hop.is_empty());
}

#[tokio::test]
async fn no_expected_identity_fails_closed_before_any_inner_byte() {
    let mesh = mesh().await;
    let err = mesh
        .pool
        .connect_double(mesh.outer("sink.test:1"), inner(&[]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no identity to expect"), "{err}");
    assert!(mesh.seen.lock().gateway.is_empty(), "nothing was sent");
}

#[tokio::test]
async fn a_gateway_with_the_wrong_identity_is_refused() {
    let mesh = mesh().await;
    let mut outer = mesh.outer("sink.test:1");
    outer.expected = vec![id(SERVER_ID)];
    let err = mesh
        .pool
        .connect_double(outer, inner(&[SERVER_ID]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::PeerIdentity { .. }),
        "the outer handshake must check the gateway's identity: {err:?}"
    );
}

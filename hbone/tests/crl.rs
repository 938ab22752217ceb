//! Certificate revocation (CRL_PATH): revoked peers are refused in the handshake on both sides,
//! and a CRL installed later closes the live connections of the peers it lists.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use hbone::crl::{Revocations, Side, parse_pem};
use hbone::{
    ClientSettings, DefaultDialer, Error, Pool, Server, ServerSettings, StaticCertificate,
};
use mesh_testing::{Leaf, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn revocations(ca: &TestCa, revoked: &[&Leaf]) -> Revocations {
    Revocations::new(parse_pem(ca.crl(revoked).as_bytes()).expect("the test CRL parses"))
}

async fn server(leaf: &Leaf, revocations: Option<Revocations>) -> std::net::SocketAddr {
    let mut settings = ServerSettings::default();
    settings.tls.revocations = revocations;
    let cert = StaticCertificate::new(leaf.workload_cert());
    let server = Server::new(settings, id(SERVER_ID), cert, route);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { server.serve(listener).await });
    addr
}

fn pool(leaf: &Leaf, revocations: Option<Revocations>) -> Pool {
    let mut settings = ClientSettings::default();
    settings.tls.revocations = revocations;
    Pool::new(
        settings,
        StaticCertificate::new(leaf.workload_cert()),
        Arc::new(DefaultDialer),
    )
}

fn request(addr: std::net::SocketAddr, target: std::net::SocketAddr) -> hbone::ConnectRequest {
    hbone::ConnectRequest {
        source: id(CLIENT_ID),
        expected: vec![id(SERVER_ID)],
        destination: addr,
        source_ip: None,
        authority: target.to_string(),
        headers: http::HeaderMap::new(),
    }
}

async fn echo_once(pool: &Pool, addr: std::net::SocketAddr) -> Result<hbone::Tunnel, Error> {
    let echo = mesh_testing::echo_server().await;
    let mut tunnel = pool.connect(request(addr, echo)).await?;
    tunnel.stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tunnel.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    Ok(tunnel)
}

/// The tunnel reaches EOF or an error within 5 s (what was already echoed may arrive first).
async fn assert_ends(tunnel: &mut hbone::Tunnel, what: &str) {
    let _ = tunnel.stream.write_all(b"more").await;
    let mut buf = [0u8; 64];
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tunnel.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "{what} is still open 5 s after the CRL update"
    );
}

#[tokio::test]
async fn server_refuses_a_revoked_client_and_accepts_the_others() {
    let ca = TestCa::new("root");
    let revoked = ca.issue(CLIENT_ID);
    let good = ca.issue(CLIENT_ID);
    let crls = revocations(&ca, &[&revoked]);
    let addr = server(&ca.issue(SERVER_ID), Some(crls.clone())).await;

    let result = echo_once(&pool(&revoked, None), addr).await;
    match result {
        Err(Error::Tls { reason, .. }) => {
            assert!(
                reason.contains("server rejected our certificate"),
                "{reason}"
            );
        }
        other => panic!("a revoked client certificate must be refused, got {other:?}"),
    }
    assert_eq!(crls.rejections(Side::Server), 1);

    // Same identity, another (unlisted) certificate: accepted.
    echo_once(&pool(&good, None), addr).await.unwrap();
    assert_eq!(crls.rejections(Side::Server), 1);
    // Its certificate can be matched by later updates: the connection is tracked.
    assert_eq!(crls.untracked(Side::Server), 0);
}

#[tokio::test]
async fn client_refuses_a_revoked_server_naming_the_cause() {
    let ca = TestCa::new("root");
    let server_leaf = ca.issue(SERVER_ID);
    let addr = server(&server_leaf, None).await;
    let crls = revocations(&ca, &[&server_leaf]);

    let err = echo_once(&pool(&ca.issue(CLIENT_ID), Some(crls.clone())), addr)
        .await
        .unwrap_err();
    match &err {
        Error::Tls { reason, .. } => assert!(reason.contains("revoked"), "{reason}"),
        other => panic!("expected a TLS refusal naming the revocation, got {other:?}"),
    }
    assert_eq!(crls.rejections(Side::Client), 1);
}

#[tokio::test]
async fn a_crl_of_another_ca_does_not_refuse_anyone() {
    // Unknown revocation status is allowed: a CRL from another issuer says nothing here.
    let ca = TestCa::new("root");
    let other = TestCa::new("other-root");
    let listed_elsewhere = other.crl(&[]);
    let crls = Revocations::new(parse_pem(listed_elsewhere.as_bytes()).unwrap());
    let addr = server(&ca.issue(SERVER_ID), Some(crls.clone())).await;
    echo_once(&pool(&ca.issue(CLIENT_ID), Some(crls.clone())), addr)
        .await
        .unwrap();
    assert_eq!(crls.rejections(Side::Server), 0);
}

#[tokio::test]
async fn a_new_crl_closes_live_tunnels_of_the_revoked_client_only() {
    let ca = TestCa::new("root");
    let doomed = ca.issue(CLIENT_ID);
    let kept = ca.issue(CLIENT_ID);
    let crls = revocations(&ca, &[]);
    let addr = server(&ca.issue(SERVER_ID), Some(crls.clone())).await;
    let mut doomed_tunnel = echo_once(&pool(&doomed, None), addr).await.unwrap();
    let mut kept_tunnel = echo_once(&pool(&kept, None), addr).await.unwrap();

    crls.replace(parse_pem(ca.crl(&[&doomed]).as_bytes()).unwrap());

    // The revoked client's tunnel ends (reset or EOF) promptly.
    assert_ends(&mut doomed_tunnel, "the revoked client's tunnel").await;
    let mut buf = [0u8; 4];
    // The other client's tunnel carries on.
    kept_tunnel.stream.write_all(b"pong").await.unwrap();
    kept_tunnel.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
    // And the revoked certificate cannot come back.
    assert!(echo_once(&pool(&doomed, None), addr).await.is_err());
}

#[tokio::test]
async fn a_new_crl_drops_pooled_connections_to_a_revoked_server() {
    let ca = TestCa::new("root");
    let server_leaf = ca.issue(SERVER_ID);
    let addr = server(&server_leaf, None).await;
    let crls = revocations(&ca, &[]);
    let client = pool(&ca.issue(CLIENT_ID), Some(crls.clone()));
    let mut tunnel = echo_once(&client, addr).await.unwrap();

    crls.replace(parse_pem(ca.crl(&[&server_leaf]).as_bytes()).unwrap());

    assert_ends(&mut tunnel, "the tunnel to the revoked server").await;
    // A new connection is refused in the handshake, not served from the pool.
    let err = echo_once(&client, addr).await.unwrap_err();
    assert!(
        matches!(&err, Error::Tls { reason, .. } if reason.contains("revoked")),
        "{err:?}"
    );
}

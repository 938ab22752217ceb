//! Mutual-TLS behaviour of HBONE: who is accepted and who is refused, and why.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use common::*;
use hbone::{
    ClientSettings, DefaultDialer, Error, InboundRequest, PeerCertError, Pool, Server,
    ServerSettings, StaticCertificate, TlsSettings,
};
use http::HeaderMap;
use mesh_testing::{LeafOptions, TestCa};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo_roundtrip(env: &Env, pool: &Pool) -> Result<hbone::Tunnel, Error> {
    let echo = mesh_testing::echo_server().await;
    let req = env.request(echo.to_string());
    let mut tunnel = pool.connect(req).await?;
    tunnel.stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tunnel.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    Ok(tunnel)
}

/// A pool presenting `leaf` as the client certificate.
fn pool_with(leaf: &mesh_testing::Leaf, settings: ClientSettings) -> Pool {
    let cert = StaticCertificate::new(leaf.workload_cert());
    Pool::new(settings, cert, Arc::new(DefaultDialer))
}

/// A server whose handler records who called, answering 200 and echoing.
async fn recording_server(
    ca: &TestCa,
    settings: ServerSettings,
) -> (std::net::SocketAddr, Arc<calls::Calls>) {
    let calls = Arc::new(calls::Calls::default());
    let cert = StaticCertificate::new(ca.issue(SERVER_ID).workload_cert());
    let recorded = calls.clone();
    let server = Server::new(settings, id(SERVER_ID), cert, move |req: InboundRequest| {
        let recorded = recorded.clone();
        async move {
            recorded.record(req.peer_identity.to_string());
            route(req).await;
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { server.serve(listener).await });
    (addr, calls)
}

mod calls {
    use std::sync::Mutex;
    #[derive(Default)]
    pub struct Calls(Mutex<Vec<String>>);
    impl Calls {
        pub fn record(&self, who: String) {
            self.0.lock().unwrap().push(who);
        }
        pub fn all(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }
}

fn request_to(addr: std::net::SocketAddr, authority: String) -> hbone::ConnectRequest {
    hbone::ConnectRequest {
        source: id(CLIENT_ID),
        expected: vec![id(SERVER_ID)],
        destination: addr,
        source_ip: None,
        authority,
        headers: HeaderMap::new(),
    }
}

/// The server (not the client) refused our certificate: the client reports the server's alert.
fn assert_server_refused(result: Result<hbone::Tunnel, Error>, what: &str) {
    match result {
        Err(Error::Tls { reason, .. }) if reason.contains("server rejected our certificate") => {}
        other => panic!("{what}: expected the server to reject our certificate, got {other:?}"),
    }
}

#[tokio::test]
async fn handshake_succeeds_with_matching_identities() {
    let ca = TestCa::new("root");
    let (addr, calls) = recording_server(&ca, ServerSettings::default()).await;
    let pool = pool_with(&ca.issue(CLIENT_ID), ClientSettings::default());
    let echo = mesh_testing::echo_server().await;
    let mut tunnel = pool
        .connect(request_to(addr, echo.to_string()))
        .await
        .unwrap();
    assert_eq!(tunnel.peer_identity, id(SERVER_ID));
    tunnel.stream.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    tunnel.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    assert_eq!(calls.all(), vec![CLIENT_ID.to_string()]);
}

#[tokio::test]
async fn intermediate_ca_chains_are_accepted() {
    let root = TestCa::new("root");
    let inter = root.intermediate("intermediate");
    let (addr, calls) = recording_server(&inter, ServerSettings::default()).await;
    let pool = pool_with(&inter.issue(CLIENT_ID), ClientSettings::default());
    let echo = mesh_testing::echo_server().await;
    pool.connect(request_to(addr, echo.to_string()))
        .await
        .unwrap();
    assert_eq!(calls.all().len(), 1);
}

#[tokio::test]
async fn client_refuses_unexpected_server_identity_naming_both() {
    let env = Env::start().await;
    let mut req = env.request("127.0.0.1:1");
    let wanted = id("spiffe://cluster.local/ns/shop/sa/payments");
    req.expected = vec![wanted.clone()];
    let err = env.pool.connect(req).await.unwrap_err();
    match &err {
        Error::PeerIdentity {
            source:
                PeerCertError::IdentityMismatch {
                    expected,
                    presented,
                },
            ..
        } => {
            assert_eq!(expected, &vec![wanted]);
            assert_eq!(presented, &vec![id(SERVER_ID)]);
        }
        other => panic!("expected identity mismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("sa/payments") && msg.contains("sa/cart"),
        "{msg}"
    );
    assert_eq!(err.response_flag(), "TLS_FAILURE");
}

#[tokio::test]
async fn any_of_several_expected_identities_is_accepted() {
    let env = Env::start().await;
    let echo = mesh_testing::echo_server().await;
    let mut req = env.request(echo.to_string());
    req.expected = vec![
        id("spiffe://cluster.local/ns/shop/sa/waypoint"),
        id(SERVER_ID),
    ];
    env.pool.connect(req).await.unwrap();
}

#[tokio::test]
async fn server_refuses_client_from_foreign_trust_domain() {
    let ca = TestCa::new("root");
    let (addr, calls) = recording_server(&ca, ServerSettings::default()).await;
    // Same CA, so the chain is fine: only the trust domain is wrong.
    let foreign = "spiffe://evil.example/ns/shop/sa/ui";
    let leaf = ca.issue(foreign);
    let cert = StaticCertificate::new(leaf.workload_cert());
    let pool = Pool::new(ClientSettings::default(), cert, Arc::new(DefaultDialer));
    let mut req = request_to(addr, "127.0.0.1:1".to_string());
    req.source = id(foreign);
    assert_server_refused(pool.connect(req).await, "foreign trust domain");
    assert!(calls.all().is_empty(), "handler must not run");
}

/// Certificates of several identities (a node proxy's certificate manager in miniature).
struct Certificates(Vec<Arc<hbone::WorkloadCertificate>>);

impl hbone::CertificateSource for Certificates {
    fn certificate<'a>(
        &'a self,
        identity: &'a hbone::Identity,
    ) -> hbone::cert::BoxFuture<'a, Result<Arc<hbone::WorkloadCertificate>, hbone::CertError>> {
        let found = self.0.iter().find(|c| c.identity() == identity).cloned();
        Box::pin(async move {
            found.ok_or_else(|| hbone::CertError::Unavailable {
                identity: identity.clone(),
                reason: "not held".into(),
            })
        })
    }
}

/// A server whose identity changes (the workload's trust domain became known) presents the new
/// certificate to new connections and accepts only clients of the new trust domain; the
/// established connection keeps its session.
#[tokio::test]
async fn server_identity_change_moves_certificate_and_trust_domain() {
    const SERVER_ORG: &str = "spiffe://example.org/ns/shop/sa/cart";
    const CLIENT_ORG: &str = "spiffe://example.org/ns/shop/sa/ui";
    let ca = TestCa::new("root");
    let certs = Arc::new(Certificates(
        [SERVER_ID, SERVER_ORG]
            .iter()
            .map(|s| Arc::new(ca.issue(s).workload_cert()))
            .collect(),
    ));
    let calls = Arc::new(calls::Calls::default());
    let recorded = calls.clone();
    let server = Server::new(
        ServerSettings::default(),
        id(SERVER_ID),
        certs,
        move |req: InboundRequest| {
            let recorded = recorded.clone();
            async move {
                recorded.record(req.peer_identity.to_string());
                route(req).await;
            }
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = server.clone();
    tokio::spawn(async move { serving.serve(listener).await });
    let echo = mesh_testing::echo_server().await;
    let request = |source: &str, expected: &str| {
        let mut req = request_to(addr, echo.to_string());
        req.source = id(source);
        req.expected = vec![id(expected)];
        req
    };

    let local = pool_with(&ca.issue(CLIENT_ID), ClientSettings::default());
    let tunnel = local.connect(request(CLIENT_ID, SERVER_ID)).await.unwrap();
    assert_eq!(tunnel.peer_identity, id(SERVER_ID));
    drop(tunnel);

    server.set_identity(id(SERVER_ORG));
    assert_eq!(server.identity(), id(SERVER_ORG));
    // A new connection from the old trust domain: refused by the server.
    let fresh_local = pool_with(&ca.issue(CLIENT_ID), ClientSettings::default());
    assert_server_refused(
        fresh_local.connect(request(CLIENT_ID, SERVER_ORG)).await,
        "client of the previous trust domain",
    );
    // A client of the new trust domain gets the new certificate.
    let org = pool_with(&ca.issue(CLIENT_ORG), ClientSettings::default());
    let tunnel = org.connect(request(CLIENT_ORG, SERVER_ORG)).await.unwrap();
    assert_eq!(tunnel.peer_identity, id(SERVER_ORG));
    drop(tunnel);
    // The connection established before the change still carries new streams.
    let tunnel = local.connect(request(CLIENT_ID, SERVER_ID)).await.unwrap();
    assert_eq!(tunnel.peer_identity, id(SERVER_ID));
    assert_eq!(local.stats().dials, 1, "the pooled connection was reused");
    assert_eq!(calls.all(), vec![CLIENT_ID, CLIENT_ORG, CLIENT_ID]);
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused() {
    let now = SystemTime::now();
    let day = Duration::from_secs(86400);
    for (label, not_before, not_after) in [
        ("expired", now - 3 * day, now - day),
        ("not yet valid", now + day, now + 3 * day),
    ] {
        // Server side presents the bad certificate: the client refuses it.
        let ca = TestCa::new("root");
        let bad_server = ca.issue_with(&LeafOptions {
            not_before,
            not_after,
            ..LeafOptions::workload(SERVER_ID)
        });
        let server_cert = StaticCertificate::new(bad_server.workload_cert());
        let server = Server::new(ServerSettings::default(), id(SERVER_ID), server_cert, route);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { server.serve(listener).await });
        let pool = pool_with(&ca.issue(CLIENT_ID), ClientSettings::default());
        let err = pool
            .connect(request_to(addr, "127.0.0.1:1".into()))
            .await
            .unwrap_err();
        let msg = err.to_string().to_lowercase();
        assert!(matches!(err, Error::Tls { .. }), "{label}: {err:?}");
        let want = if label == "expired" {
            "expired"
        } else {
            "not valid yet"
        };
        assert!(msg.contains(want), "{label}: {msg}");

        // Client side presents it: the server refuses, the handler never runs.
        let (addr, calls) = recording_server(&ca, ServerSettings::default()).await;
        let bad_client = ca.issue_with(&LeafOptions {
            not_before,
            not_after,
            ..LeafOptions::workload(CLIENT_ID)
        });
        let pool = pool_with(&bad_client, ClientSettings::default());
        assert_server_refused(
            pool.connect(request_to(addr, "127.0.0.1:1".into())).await,
            label,
        );
        assert!(calls.all().is_empty(), "{label}");
    }
}

#[tokio::test]
async fn certificates_from_another_ca_are_refused_both_ways() {
    let ca = TestCa::new("root");
    let other = TestCa::new("someone-else");

    // Client cert from another CA: server refuses.
    let (addr, calls) = recording_server(&ca, ServerSettings::default()).await;
    // The client trusts the mesh root, but its own certificate comes from another CA.
    let forged = other.issue(CLIENT_ID);
    let forged =
        hbone::WorkloadCertificate::from_pem(&forged.chain_pem, &forged.key_pem, ca.root_pem())
            .unwrap();
    let pool = Pool::new(
        ClientSettings::default(),
        StaticCertificate::new(forged),
        Arc::new(DefaultDialer),
    );
    assert_server_refused(
        pool.connect(request_to(addr, "127.0.0.1:1".into())).await,
        "client certificate from another CA",
    );
    assert!(calls.all().is_empty());

    // Server cert from another CA: client refuses with an unknown-issuer error.
    let pool = pool_with(&ca.issue(CLIENT_ID), ClientSettings::default());
    let (addr, _) = recording_server(&other, ServerSettings::default()).await;
    let err = pool
        .connect(request_to(addr, "127.0.0.1:1".into()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown issuer"), "{err}");
}

#[tokio::test]
async fn client_certificate_without_client_auth_usage_is_refused() {
    let ca = TestCa::new("root");
    let (addr, calls) = recording_server(&ca, ServerSettings::default()).await;
    let leaf = ca.issue_with(&LeafOptions {
        client_auth: false,
        ..LeafOptions::workload(CLIENT_ID)
    });
    let pool = pool_with(&leaf, ClientSettings::default());
    assert_server_refused(
        pool.connect(request_to(addr, "127.0.0.1:1".into())).await,
        "no clientAuth usage",
    );
    assert!(calls.all().is_empty());
}

/// A raw rustls client that trusts anything, for probing the server with non-HBONE clients.
#[derive(Debug)]
struct TrustAnything;

impl rustls::client::danger::ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn raw_client(
    versions: &[&'static rustls::SupportedProtocolVersion],
    client_cert: Option<&mesh_testing::Leaf>,
) -> tokio_rustls::TlsConnector {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(TrustAnything));
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some(leaf) => {
            use rustls::pki_types::pem::PemObject;
            let chain = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key =
                rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Handshake, then try to use the connection; returns whether an HTTP/2 exchange worked.
async fn raw_exchange(connector: tokio_rustls::TlsConnector, addr: std::net::SocketAddr) -> bool {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let Ok(tls) = connector.connect(name, tcp).await else {
        return false;
    };
    let Ok((mut send, conn)) = h2::client::handshake(tls).await else {
        return false;
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .method("CONNECT")
        .uri("status.test:204")
        .body(())
        .unwrap();
    let Ok((resp, _)) = send.send_request(req, false) else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), resp).await,
        Ok(Ok(r)) if r.status() == 204
    )
}

#[tokio::test]
async fn missing_client_certificate_is_refused() {
    let ca = TestCa::new("root");
    let (addr, calls) = recording_server(&ca, ServerSettings::default()).await;
    let no_cert = raw_client(&[&rustls::version::TLS13], None);
    assert!(!raw_exchange(no_cert, addr).await);
    assert!(calls.all().is_empty());
    // Control: the same raw client with a certificate gets through.
    let leaf = ca.issue(CLIENT_ID);
    let with_cert = raw_client(&[&rustls::version::TLS13], Some(&leaf));
    assert!(raw_exchange(with_cert, addr).await);
}

#[tokio::test]
async fn tls12_is_refused_unless_enabled() {
    let ca = TestCa::new("root");
    let leaf = ca.issue(CLIENT_ID);
    let (addr, _) = recording_server(&ca, ServerSettings::default()).await;
    let tls12 = raw_client(&[&rustls::version::TLS12], Some(&leaf));
    assert!(!raw_exchange(tls12, addr).await, "TLS 1.2 must be refused");

    let settings = ServerSettings {
        tls: TlsSettings {
            allow_tls12: true,
            ..TlsSettings::default()
        },
        ..ServerSettings::default()
    };
    let (addr, _) = recording_server(&ca, settings).await;
    let tls12 = raw_client(&[&rustls::version::TLS12], Some(&leaf));
    assert!(
        raw_exchange(tls12, addr).await,
        "TLS 1.2 allowed when enabled"
    );
}

#[tokio::test]
async fn plaintext_to_hbone_port_is_refused() {
    let env = Env::start().await;
    let mut tcp = TcpStream::connect(env.addr).await.unwrap();
    tcp.write_all(b"CONNECT 10.0.0.1:80 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    // The server closes (it may send a TLS alert record first); never an HTTP answer.
    assert!(read.is_ok(), "server must close the connection");
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/"));
}

#[tokio::test]
async fn handler_status_is_returned_to_the_client() {
    let env = Env::start().await;
    for status in [401u16, 403, 503] {
        let err = env
            .pool
            .connect(env.request(format!("status.test:{status}")))
            .await
            .unwrap_err();
        match err {
            Error::ConnectStatus { status: got, .. } => assert_eq!(got, status),
            other => panic!("expected status {status}, got {other:?}"),
        }
    }
    // The connection survives rejected streams.
    assert_eq!(env.pool.stats().dials, 1);
    echo_roundtrip(&env, &env.pool).await.unwrap();
    assert_eq!(env.pool.stats().dials, 1);
}

#[tokio::test]
async fn dropped_request_gets_503_and_bad_requests_get_400() {
    let ca = TestCa::new("root");
    let cert = StaticCertificate::new(ca.issue(SERVER_ID).workload_cert());
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let server = Server::new(
        ServerSettings::default(),
        id(SERVER_ID),
        cert,
        move |_req: InboundRequest| {
            h.fetch_add(1, Ordering::SeqCst);
            async {}
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { server.serve(listener).await });
    let pool = pool_with(&ca.issue(CLIENT_ID), ClientSettings::default());
    let err = pool
        .connect(request_to(addr, "10.1.1.1:80".into()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ConnectStatus { status: 503, .. }));
    assert_eq!(handled.load(Ordering::SeqCst), 1);

    // Raw HTTP/2: a GET and a CONNECT without a port never reach the handler.
    let leaf = ca.issue(CLIENT_ID);
    let connector = raw_client(&[&rustls::version::TLS13], Some(&leaf));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    for (method, uri) in [("GET", "https://10.1.1.1/"), ("CONNECT", "example.com")] {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 400, "{method} {uri}");
    }
    assert_eq!(handled.load(Ordering::SeqCst), 1);
}

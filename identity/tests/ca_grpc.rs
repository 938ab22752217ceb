//! The CA client and manager against a real gRPC CA: a tonic `IstioCertificateService` over
//! TLS on loopback that authenticates a bearer token and signs with `CaSigner`, like istiod.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hbone::{
    CertError, ClientSettings, ConnectRequest, DefaultDialer, Identity, InboundRequest, Pool,
    Server, ServerSettings,
};
use identity::ca::{CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE};
use identity::{
    CaClient, CaClientConfig, CaClientError, CaSigner, CertManager, Mode, RootCert, TokenSource,
    TrustBundle,
};
use parking_lot::Mutex;
use proto::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::{ServerTlsConfig, server::TcpIncoming};

const ZTUNNEL: &str = "spiffe://cluster.local/ns/istio-system/sa/ztunnel";
const CART: &str = "spiffe://cluster.local/ns/shop/sa/cart";
const UI: &str = "spiffe://cluster.local/ns/shop/sa/ui";
const ISTIOD_DNS: &str = "istiod.istio-system.svc";

fn id(s: &str) -> Identity {
    Identity::parse(s).unwrap()
}

/// What the fake istiod answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Sign,
    /// Signs, but for another identity than asked.
    WrongIdentity,
    Garbage,
    Empty,
    /// A valid certificate for the right identity, but for a key the CA made up.
    ForeignKey,
}

/// What the fake istiod saw in one request.
#[derive(Debug, Clone)]
struct Seen {
    token: Option<String>,
    cluster: Option<String>,
    extra: Option<String>,
    impersonated: Option<String>,
    validity: i64,
}

struct FakeIstiod {
    signer: CaSigner,
    /// The identity bound to the caller's token.
    caller: Identity,
    token: Mutex<String>,
    answer: Mutex<Answer>,
    seen: Mutex<Vec<Seen>>,
}

struct Svc(Arc<FakeIstiod>);

#[tonic::async_trait]
impl IstioCertificateService for Svc {
    async fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        let ca = &self.0;
        let header = |k: &str| {
            request
                .metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let token =
            header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(String::from));
        let req = request.get_ref();
        let impersonated = req.metadata.as_ref().and_then(|m| {
            m.fields
                .get("ImpersonatedIdentity")
                .and_then(|v| match &v.kind {
                    Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
        });
        ca.seen.lock().push(Seen {
            token: token.clone(),
            cluster: header("clusterid"),
            extra: header("x-extra"),
            impersonated: impersonated.clone(),
            validity: req.validity_duration,
        });
        if token.as_deref() != Some(ca.token.lock().as_str()) {
            return Err(tonic::Status::unauthenticated(
                "request authenticate failure",
            ));
        }
        let subject = match &impersonated {
            Some(s) => {
                Identity::parse(s).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
            }
            None => ca.caller.clone(),
        };
        let ttl = Duration::from_secs(req.validity_duration.max(1) as u64);
        let answer = *ca.answer.lock();
        let chain = match answer {
            Answer::Sign => ca.signer.sign_csr(&req.csr, &subject, ttl),
            Answer::WrongIdentity => ca.signer.sign_csr(&req.csr, &id(UI), ttl),
            Answer::Garbage => Ok(vec!["this is not PEM".into(), "neither is this".into()]),
            Answer::Empty => Ok(Vec::new()),
            Answer::ForeignKey => {
                let key = rcgen::KeyPair::generate().unwrap();
                let params = rcgen::CertificateParams::default();
                let csr = params.serialize_request(&key).unwrap().pem().unwrap();
                ca.signer.sign_csr(&csr, &subject, ttl)
            }
        }
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        Ok(tonic::Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}

/// A running fake istiod.
struct Istiod {
    state: Arc<FakeIstiod>,
    addr: SocketAddr,
    root_pem: String,
}

impl Istiod {
    async fn start(signer: CaSigner) -> Istiod {
        let serving = signer
            .issue_serving_cert(
                &[ISTIOD_DNS.to_string()],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                Duration::from_secs(3600),
            )
            .unwrap();
        let root_pem = signer.root_pem();
        let state = Arc::new(FakeIstiod {
            signer,
            caller: id(ZTUNNEL),
            token: Mutex::new("token-1".into()),
            answer: Mutex::new(Answer::Sign),
            seen: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            serving.chain_pem,
            serving.key_pem,
        ));
        let svc = IstioCertificateServiceServer::new(Svc(state.clone()));
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .tls_config(tls)
                .unwrap()
                // A single service, so no router (tonic's `router` feature is off).
                .serve_with_incoming(svc, TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        Istiod {
            state,
            addr,
            root_pem,
        }
    }

    fn config(&self) -> CaClientConfig {
        let mut c = CaClientConfig::new(
            format!("https://{}", self.addr),
            RootCert::Pem(self.root_pem.clone()),
        );
        c.token = TokenSource::Literal("token-1".into());
        c.cluster_id = "cluster-a".into();
        c
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().clone()
    }

    fn answer(&self, a: Answer) {
        *self.state.answer.lock() = a;
    }
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "identity-it-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An Istio plug-in CA directory: root → intermediate (the signing CA).
fn plugged_ca(dir: &Path) -> CaSigner {
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut root_params = rcgen::CertificateParams::default();
    root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::new(root_params, root_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "intermediate");
    let inter = params.signed_by(&key, &root_issuer).unwrap();
    std::fs::write(dir.join(CA_CERT_FILE), inter.pem()).unwrap();
    std::fs::write(dir.join(CA_KEY_FILE), key.serialize_pem()).unwrap();
    std::fs::write(dir.join(ROOT_CERT_FILE), root.pem()).unwrap();
    std::fs::write(
        dir.join(CERT_CHAIN_FILE),
        format!("{}{}", inter.pem(), root.pem()),
    )
    .unwrap();
    CaSigner::from_plugged(dir).unwrap()
}

async fn echo_through(pool: &Pool, source: &Identity, server: (Identity, SocketAddr)) -> Vec<u8> {
    let echo = mesh_testing::echo_server().await;
    let tunnel = pool
        .connect(ConnectRequest {
            source: source.clone(),
            expected: vec![server.0.clone()],
            destination: server.1,
            source_ip: None,
            authority: echo.to_string(),
            headers: http::HeaderMap::new(),
        })
        .await
        .unwrap();
    assert_eq!(tunnel.peer_identity, server.0);
    let mut stream = tunnel.stream;
    stream.write_all(b"hello through hbone").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    got
}

#[tokio::test]
async fn issued_certificates_carry_the_identity_and_complete_an_hbone_tunnel() {
    let dir = tempdir("plugged");
    let signer = plugged_ca(&dir);
    let intermediate = std::fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap();
    let istiod = Istiod::start(signer).await;
    let mut config = istiod.config();
    config.mode = Mode::Shared {
        own_identity: Some(id(ZTUNNEL)),
    };
    config.validity = Duration::from_secs(7200);
    let client = CaClient::new(config).unwrap();

    // The raw client: leaf for the requested identity, chained through the intermediate.
    let cert = client.fetch(&id(CART)).await.unwrap();
    assert_eq!(cert.identity(), &id(CART));
    assert_eq!(cert.chain().len(), 2, "leaf + intermediate");
    let inter_der = CertificateDer::from_pem_slice(intermediate.as_bytes()).unwrap();
    assert_eq!(cert.chain()[1], inter_der);
    assert_eq!(cert.roots().len(), 1);
    let life = cert.not_after().duration_since(SystemTime::now()).unwrap();
    assert!(life > Duration::from_secs(7100) && life <= Duration::from_secs(7200));
    let seen = istiod.seen();
    assert_eq!(seen[0].validity, 7200);
    assert_eq!(seen[0].cluster.as_deref(), Some("cluster-a"));

    // The manager feeds hbone: a server and a client with two identities it fetched.
    let manager = Arc::new(CertManager::new(Arc::new(client)));
    let server = Server::new(
        ServerSettings::default(),
        id(CART),
        manager.clone(),
        |req: InboundRequest| async move {
            let target = req.authority.socket_addr().unwrap();
            let mut tcp = TcpStream::connect(target).await.unwrap();
            let stream = req.accept(http::HeaderMap::new()).unwrap();
            let _ = hbone::copy_tcp(&mut tcp, stream).await;
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = server.clone();
    tokio::spawn(async move { s.serve(listener).await });
    let pool = Pool::new(
        ClientSettings::default(),
        manager.clone(),
        Arc::new(DefaultDialer),
    );
    let got = echo_through(&pool, &id(UI), (id(CART), addr)).await;
    assert_eq!(got, b"hello through hbone");
    let ids = manager.identities();
    assert_eq!(ids, vec![id(CART), id(UI)]);
    assert!(
        manager
            .snapshot()
            .iter()
            .all(|s| s.cert_chain.len() == 2 && s.root_certs.len() == 1),
        "leaf and intermediate, then the root, in the snapshot"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_token_file_is_read_on_every_call() {
    let istiod = Istiod::start(CaSigner::generate("cluster.local").unwrap()).await;
    let dir = tempdir("token");
    let token_path = dir.join("istio-token");
    std::fs::write(&token_path, "token-1\n").unwrap();
    let mut config = istiod.config();
    config.token = TokenSource::File(token_path.clone());
    let client = CaClient::new(config).unwrap();
    let me = id(ZTUNNEL);

    client.fetch(&me).await.unwrap();
    // The token rotates on disk and at the CA.
    std::fs::write(&token_path, "token-2").unwrap();
    *istiod.state.token.lock() = "token-2".into();
    client.fetch(&me).await.unwrap();
    // The file changes to a token the CA does not accept: the CA's verdict comes back.
    std::fs::write(&token_path, "token-3").unwrap();
    let err = client.fetch(&me).await.unwrap_err();
    assert!(
        matches!(&err, CaClientError::Status { code: tonic::Code::Unauthenticated, message }
            if message.contains("authenticate")),
        "{err}"
    );
    let tokens: Vec<_> = istiod.seen().into_iter().map(|s| s.token).collect();
    assert_eq!(
        tokens,
        vec![
            Some("token-1".to_string()),
            Some("token-2".to_string()),
            Some("token-3".to_string())
        ]
    );

    std::fs::remove_file(&token_path).unwrap();
    let err = client.fetch(&me).await.unwrap_err();
    assert!(
        matches!(err, CaClientError::TokenUnreadable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("istio-token"), "{err}");
    assert_eq!(istiod.seen().len(), 3, "no request without a token");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn impersonation_is_requested_exactly_when_the_identity_is_not_ours() {
    let istiod = Istiod::start(CaSigner::generate("cluster.local").unwrap()).await;
    // Shared mode, through a channel the caller built (the with_channel constructor).
    let mut config = istiod.config();
    config.mode = Mode::Shared {
        own_identity: Some(id(ZTUNNEL)),
    };
    config.headers = BTreeMap::from([("X-Extra".to_string(), "yes".to_string())]);
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            istiod.root_pem.clone(),
        ))
        .domain_name(ISTIOD_DNS);
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", istiod.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    let shared = CaClient::with_channel(channel, config).unwrap();
    assert_eq!(
        shared.fetch(&id(ZTUNNEL)).await.unwrap().identity(),
        &id(ZTUNNEL)
    );
    assert_eq!(shared.fetch(&id(CART)).await.unwrap().identity(), &id(CART));

    let dedicated = CaClient::new(istiod.config()).unwrap();
    dedicated.fetch(&id(ZTUNNEL)).await.unwrap();
    // Dedicated mode never impersonates: the CA signs the token's identity, which the client
    // then refuses because it asked for another.
    let err = dedicated.fetch(&id(CART)).await.unwrap_err();
    assert!(
        matches!(err, CaClientError::IdentityMismatch { .. }),
        "{err}"
    );

    let seen = istiod.seen();
    let impersonated: Vec<_> = seen.iter().map(|s| s.impersonated.clone()).collect();
    assert_eq!(impersonated, vec![None, Some(CART.to_string()), None, None]);
    let extra: Vec<_> = seen.iter().map(|s| s.extra.clone()).collect();
    assert_eq!(
        extra,
        vec![Some("yes".to_string()), Some("yes".to_string()), None, None]
    );
    assert!(
        seen.iter()
            .all(|s| s.cluster.as_deref() == Some("cluster-a"))
    );
}

#[tokio::test]
async fn bad_answers_from_the_ca_are_rejected_with_the_reason() {
    let istiod = Istiod::start(CaSigner::generate("cluster.local").unwrap()).await;
    let mut config = istiod.config();
    config.mode = Mode::Shared { own_identity: None };
    let client = CaClient::new(config).unwrap();
    let cart = id(CART);

    istiod.answer(Answer::WrongIdentity);
    let err = client.fetch(&cart).await.unwrap_err();
    assert!(
        matches!(err, CaClientError::IdentityMismatch { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains(CART) && msg.contains(UI), "names both: {msg}");

    istiod.answer(Answer::Garbage);
    let err = client.fetch(&cart).await.unwrap_err();
    assert!(matches!(err, CaClientError::BadResponse(_)), "{err}");
    assert!(err.to_string().contains("no PEM CERTIFICATE"), "{err}");

    istiod.answer(Answer::Empty);
    let err = client.fetch(&cart).await.unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");

    istiod.answer(Answer::ForeignKey);
    let err = client.fetch(&cart).await.unwrap_err();
    assert!(
        matches!(err, CaClientError::Certificate(CertError::KeyMismatch)),
        "{err}"
    );

    // A configured trust bundle that does not hold the CA's root.
    istiod.answer(Answer::Sign);
    let mut config = istiod.config();
    config.mode = Mode::Shared { own_identity: None };
    let other = CaSigner::generate("other").unwrap();
    config.trust_bundle = Some(TrustBundle::from_pem(&other.root_pem()).unwrap());
    let strict = CaClient::new(config.clone()).unwrap();
    let err = strict.fetch(&cart).await.unwrap_err();
    assert!(matches!(err, CaClientError::ChainInvalid(_)), "{err}");
    assert!(err.to_string().contains("trust bundle"), "{err}");
    // ... and one that does.
    config.trust_bundle =
        Some(TrustBundle::from_pem(&format!("{}{}", other.root_pem(), istiod.root_pem)).unwrap());
    let ok = CaClient::new(config).unwrap().fetch(&cart).await.unwrap();
    assert_eq!(ok.identity(), &cart);
}

#[tokio::test]
async fn transport_failures_name_the_cause() {
    let istiod = Istiod::start(CaSigner::generate("cluster.local").unwrap()).await;
    let me = id(ZTUNNEL);

    // The default server name is the address's host (127.0.0.1, an IP SAN): works.
    CaClient::new(istiod.config())
        .unwrap()
        .fetch(&me)
        .await
        .unwrap();
    // ALT_CA_HOSTNAME matching the DNS SAN: works.
    let mut config = istiod.config();
    config.server_name = Some(ISTIOD_DNS.into());
    CaClient::new(config).unwrap().fetch(&me).await.unwrap();

    // A server name the certificate does not carry.
    let mut config = istiod.config();
    config.server_name = Some("wrong.example".into());
    let err = CaClient::new(config).unwrap().fetch(&me).await.unwrap_err();
    assert!(matches!(err, CaClientError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("wrong.example"), "{err}");

    // A root that did not sign the server certificate.
    let mut config = istiod.config();
    config.root_cert = RootCert::Pem(CaSigner::generate("other").unwrap().root_pem());
    let err = CaClient::new(config).unwrap().fetch(&me).await.unwrap_err();
    assert!(matches!(err, CaClientError::Tls { .. }), "{err:?}");

    // Nobody listening.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut config = istiod.config();
    config.address = format!("127.0.0.1:{port}");
    let err = CaClient::new(config).unwrap().fetch(&me).await.unwrap_err();
    assert!(matches!(err, CaClientError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");

    // A root file is followed: missing, then the wrong root, then the right one, all seen by
    // the same client (as when the root ConfigMap is mounted late or rotated).
    let RootCert::Pem(right_root) = istiod.config().root_cert else {
        panic!("the fake istiod's config has an inline root");
    };
    let dir = tempdir("root-file");
    let root_file = dir.join("root-cert.pem");
    let mut config = istiod.config();
    config.root_cert = RootCert::File(root_file.clone());
    let client = CaClient::new(config).unwrap();
    let err = client.fetch(&me).await.unwrap_err();
    assert!(matches!(err, CaClientError::InvalidRoot { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&*root_file.to_string_lossy()),
        "{err}"
    );
    std::fs::write(&root_file, CaSigner::generate("other").unwrap().root_pem()).unwrap();
    let err = client.fetch(&me).await.unwrap_err();
    assert!(matches!(err, CaClientError::Tls { .. }), "{err:?}");
    std::fs::write(&root_file, &right_root).unwrap();
    client.fetch(&me).await.unwrap();
    // A file that turns bad keeps the last good root.
    std::fs::write(&root_file, "not a certificate").unwrap();
    client.fetch(&me).await.unwrap();
    std::fs::remove_file(&root_file).unwrap();
    client.fetch(&me).await.unwrap();
}

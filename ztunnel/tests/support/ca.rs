//! A CA answering as istiod does for ztunnel: `IstioCertificateService` over gRPC+TLS on
//! loopback, signing each CSR with the `identity` crate's `CaSigner` for the requested
//! (`ImpersonatedIdentity`) identity and recording it. Bearer-token authentication is not
//! checked here (`identity/tests/ca_grpc.rs` covers it). Tests talk to it with the real
//! `CaClient` through a `CertManager`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hbone::Identity;
use identity::{CaClient, CaClientConfig, CaSigner, Mode, RootCert, TokenSource};
use parking_lot::Mutex;
use proto::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity as TlsIdentity, ServerTlsConfig};

const ISTIOD_DNS: &str = "istiod.istio-system.svc";
/// The node proxy's own identity (`TRUST_DOMAIN` unset).
pub const ZTUNNEL_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/ztunnel";

struct Svc {
    signer: CaSigner,
    csrs: Arc<Mutex<Vec<Identity>>>,
}

#[tonic::async_trait]
impl IstioCertificateService for Svc {
    async fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        let req = request.get_ref();
        let impersonated = req
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("ImpersonatedIdentity"))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .ok_or_else(|| tonic::Status::unauthenticated("no ImpersonatedIdentity"))?;
        let identity = Identity::parse(&impersonated)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        self.csrs.lock().push(identity.clone());
        let ttl = Duration::from_secs(req.validity_duration.max(1) as u64);
        let chain = self
            .signer
            .sign_csr(&req.csr, &identity, ttl)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        Ok(tonic::Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}

/// A running CA.
pub struct TestIstiod {
    addr: SocketAddr,
    root_pem: String,
    csrs: Arc<Mutex<Vec<Identity>>>,
}

impl TestIstiod {
    /// Starts serving on `127.0.0.1` (on the current runtime).
    pub async fn start() -> TestIstiod {
        let signer = CaSigner::generate("cluster.local").expect("CA");
        let serving = signer
            .issue_serving_cert(
                &[ISTIOD_DNS.to_string()],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                Duration::from_secs(3600),
            )
            .expect("serving certificate");
        let root_pem = signer.root_pem();
        let csrs = Arc::new(Mutex::new(Vec::new()));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind CA");
        let addr = listener.local_addr().expect("CA address");
        let tls = ServerTlsConfig::new()
            .identity(TlsIdentity::from_pem(serving.chain_pem, serving.key_pem));
        let svc = IstioCertificateServiceServer::new(Svc {
            signer,
            csrs: csrs.clone(),
        });
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .tls_config(tls)
                .expect("CA TLS")
                // A single service, so no router (tonic's `router` feature is off).
                .serve_with_incoming(svc, TcpIncoming::from(listener))
                .await
                .expect("CA serves");
        });
        TestIstiod {
            addr,
            root_pem,
            csrs,
        }
    }

    /// ztunnel's CA client in shared mode, asking for certificates valid for `validity`.
    pub fn client(&self, validity: Duration) -> CaClient {
        let mut config = CaClientConfig::new(
            format!("https://{}", self.addr),
            RootCert::Pem(self.root_pem.clone()),
        );
        config.server_name = Some(ISTIOD_DNS.into());
        config.token = TokenSource::Literal("ztunnel-token".into());
        config.validity = validity;
        config.mode = Mode::Shared {
            own_identity: Some(Identity::parse(ZTUNNEL_ID).expect("identity")),
        };
        CaClient::new(config).expect("CA client")
    }

    /// CSRs received for `identity` so far.
    pub fn csrs(&self, identity: &Identity) -> usize {
        self.csrs.lock().iter().filter(|i| *i == identity).count()
    }
}

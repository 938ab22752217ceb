//! The Istio CA service (`istio.v1.auth.IstioCertificateService/CreateCertificate`), as istiod
//! answers it.
//!
//! * The caller is authenticated from its `authorization: Bearer` token
//!   ([`TokenAuthenticator`]); failures are `Unauthenticated`.
//! * The certificate's identity is the caller's own (`spiffe://<td>/ns/<ns>/sa/<sa>`); SANs in
//!   the CSR are ignored.
//! * With metadata `ImpersonatedIdentity` (node-agent mode, ztunnel) the requested identity is
//!   used instead, only if the caller's `ns/sa` is a trusted node agent (`--trusted-node-agent`,
//!   default `istio-system/ztunnel`), the identity is in our trust domain, and — when the
//!   caller's token names its node and pod placement is known — some pod running as the
//!   requested `ns/sa` is on that node. Otherwise `Unauthenticated`, naming the reason.
//!   Pod placement comes from a [`PodLocator`]; [`SnapshotPods`] reads it from the workloads
//!   of the current snapshot (`Workload.node`). When no workload carries a node (no placement
//!   information at all) the node check is skipped — a deliberate relaxation compared with
//!   istiod, which always knows where pods run. istiod's extra check that the caller's pod
//!   exists with the token's pod UID is not done either.
//! * TTL: `validity_duration` seconds; ≤ 0 ⇒ the default (24 h); capped at the maximum
//!   (`--max-cert-ttl`, default 90 days, like istiod's `MAX_WORKLOAD_CERT_TTL`).
//! * The response is the chain leaf first, root last, each PEM ending in a newline.
//!
//! Signing goes through the [`CertificateSigner`] trait, implemented for the `identity` crate's
//! `CaSigner`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hbone::Identity;
use prost_types::value::Kind;
use proto::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use serde::Serialize;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::Snapshot;
use crate::tokens::{CallerIdentity, TokenAuthenticator};

/// Metadata key of node-agent (impersonation) requests.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";
/// Metadata key selecting a named signer (not supported here).
pub const CERT_SIGNER: &str = "CertSigner";
/// Default certificate lifetime (istiod's `DEFAULT_WORKLOAD_CERT_TTL`).
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default cap on certificate lifetimes (istiod's `MAX_WORKLOAD_CERT_TTL`).
pub const DEFAULT_MAX_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// Node agent trusted by default (what Istio's chart sets in `CA_TRUSTED_NODE_ACCOUNTS`).
pub const DEFAULT_TRUSTED_NODE_AGENT: &str = "istio-system/ztunnel";

/// Why a CSR could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The CSR itself is unusable (answered `InvalidArgument`).
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
    /// The CA failed (answered `Internal`).
    #[error("the CA could not sign: {0}")]
    Internal(String),
}

/// Signs workload certificates.
pub trait CertificateSigner: Send + Sync {
    /// Signs `csr_pem` for `identity`, valid for `ttl`; returns PEMs leaf first, root last.
    fn sign(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<Vec<String>, SignError>;
}

impl CertificateSigner for identity::CaSigner {
    fn sign(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<Vec<String>, SignError> {
        use identity::CaError;
        self.sign_csr(csr_pem, identity, ttl).map_err(|e| match e {
            CaError::BadCsr(_) | CaError::CsrSignature | CaError::InvalidRequest(_) => {
                SignError::Csr(e.to_string())
            }
            other => SignError::Internal(other.to_string()),
        })
    }
}

/// Where pods run, for the impersonation node check.
pub trait PodLocator: Send + Sync {
    /// The `(namespace, service account)` of the pods on `node`; `None` when placement is not
    /// known at all (the check is then skipped).
    fn identities_on_node(&self, node: &str) -> Option<BTreeSet<(String, String)>>;
}

impl<F> PodLocator for F
where
    F: Fn(&str) -> Option<BTreeSet<(String, String)>> + Send + Sync,
{
    fn identities_on_node(&self, node: &str) -> Option<BTreeSet<(String, String)>> {
        self(node)
    }
}

/// Pod placement from the Pod objects behind the current snapshot (`pod_placement`), or, when
/// the snapshot carries none, from its workloads' `node`.
#[derive(Debug, Clone)]
pub struct SnapshotPods(pub watch::Receiver<Arc<Snapshot>>);

impl PodLocator for SnapshotPods {
    fn identities_on_node(&self, node: &str) -> Option<BTreeSet<(String, String)>> {
        let snapshot = self.0.borrow().clone();
        if !snapshot.pod_placement.is_empty() {
            return Some(
                snapshot
                    .pod_placement
                    .get(node)
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        let mut known = false;
        let mut out = BTreeSet::new();
        for address in snapshot.addresses.values() {
            let Some(proto::istio::workload::address::Type::Workload(w)) = &address.r#type else {
                continue;
            };
            if w.node.is_empty() {
                continue;
            }
            known = true;
            if w.node == node {
                let sa = if w.service_account.is_empty() {
                    hbone::identity::DEFAULT_SERVICE_ACCOUNT
                } else {
                    &w.service_account
                };
                out.insert((w.namespace.clone(), sa.to_string()));
            }
        }
        known.then_some(out)
    }
}

/// CA policy.
#[derive(Debug, Clone, Serialize)]
pub struct CaConfig {
    pub trust_domain: String,
    /// `ns/sa` of callers allowed to impersonate (node agents).
    pub trusted_node_agents: Vec<String>,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            trust_domain: hbone::identity::DEFAULT_TRUST_DOMAIN.to_string(),
            trusted_node_agents: vec![DEFAULT_TRUSTED_NODE_AGENT.to_string()],
            default_ttl: DEFAULT_CERT_TTL,
            max_ttl: DEFAULT_MAX_CERT_TTL,
        }
    }
}

/// The CA service. Cheap to clone.
#[derive(Clone)]
pub struct CaServer {
    config: Arc<CaConfig>,
    signer: Arc<dyn CertificateSigner>,
    auth: Arc<dyn TokenAuthenticator>,
    pods: Arc<dyn PodLocator>,
}

impl std::fmt::Debug for CaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaServer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl CaServer {
    pub fn new(
        config: CaConfig,
        signer: Arc<dyn CertificateSigner>,
        auth: Arc<dyn TokenAuthenticator>,
        pods: Arc<dyn PodLocator>,
    ) -> Self {
        CaServer {
            config: Arc::new(config),
            signer,
            auth,
            pods,
        }
    }

    /// The tonic service to add to a server.
    pub fn into_service(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self)
    }

    /// The lifetime to issue for a requested `validity_duration` (seconds).
    pub fn ttl_for(&self, requested_secs: i64) -> Duration {
        match u64::try_from(requested_secs) {
            Ok(secs) if secs > 0 => Duration::from_secs(secs).min(self.config.max_ttl),
            _ => self.config.default_ttl,
        }
    }

    /// The identity the certificate is for: the caller's, or an allowed impersonation.
    pub fn identity_for(
        &self,
        caller: &CallerIdentity,
        impersonated: Option<&str>,
    ) -> Result<Identity, Status> {
        let td = &self.config.trust_domain;
        let Some(requested) = impersonated else {
            return Ok(Identity::new(
                td,
                &caller.namespace,
                &caller.service_account,
            ));
        };
        let refused = |why: String| {
            Status::unauthenticated(format!("impersonation of {requested} refused: {why}"))
        };
        if !self.config.trusted_node_agents.contains(&caller.ns_sa()) {
            return Err(refused(format!(
                "caller {} is not a trusted node agent (trusted: {})",
                caller.ns_sa(),
                self.config.trusted_node_agents.join(", ")
            )));
        }
        let id = Identity::parse(requested).map_err(|e| {
            Status::invalid_argument(format!("metadata {IMPERSONATED_IDENTITY}: {e}"))
        })?;
        if id.trust_domain() != td {
            return Err(refused(format!(
                "trust domain {:?} is not this control plane's {td:?}",
                id.trust_domain()
            )));
        }
        if let Some(node) = &caller.node
            && let Some(on_node) = self.pods.identities_on_node(node)
        {
            let wanted = (id.namespace().to_string(), id.service_account().to_string());
            if !on_node.contains(&wanted) {
                return Err(refused(format!(
                    "no pod running as {}/{} is scheduled on node {node:?}, the caller's node",
                    wanted.0, wanted.1
                )));
            }
        }
        Ok(id)
    }
}

fn metadata_string<'a>(
    req: &'a IstioCertificateRequest,
    key: &str,
) -> Result<Option<&'a str>, Status> {
    let Some(value) = req.metadata.as_ref().and_then(|m| m.fields.get(key)) else {
        return Ok(None);
    };
    match &value.kind {
        Some(Kind::StringValue(s)) if s.is_empty() => Ok(None),
        Some(Kind::StringValue(s)) => Ok(Some(s)),
        Some(Kind::NullValue(_)) | None => Ok(None),
        Some(_) => Err(Status::invalid_argument(format!(
            "metadata {key} must be a string"
        ))),
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaServer {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let caller = crate::xds_server::authenticate(self.auth.as_ref(), &request, "CA")?;
        let req = request.into_inner();
        if req.csr.trim().is_empty() {
            return Err(Status::invalid_argument("the request carries no CSR"));
        }
        if metadata_string(&req, CERT_SIGNER)?.is_some() {
            return Err(Status::invalid_argument(format!(
                "metadata {CERT_SIGNER}: named signers are not supported by this control plane"
            )));
        }
        let impersonated = metadata_string(&req, IMPERSONATED_IDENTITY)?;
        let identity = match self.identity_for(&caller, impersonated) {
            Ok(id) => id,
            Err(status) => {
                tracing::warn!(caller = %caller.ns_sa(), reason = %status.message(), "certificate refused");
                return Err(status);
            }
        };
        // The certificate is issued for the authenticated (or impersonated) identity only; a
        // CSR asking for another SPIFFE identity is refused so the client learns why.
        if let Some(asked) = csr_uri_sans(&req.csr)
            .into_iter()
            .find(|uri| *uri != identity.to_string())
        {
            tracing::warn!(caller = %caller.ns_sa(), %asked, %identity, "certificate refused: CSR identity mismatch");
            return Err(Status::invalid_argument(format!(
                "the CSR asks for {asked} but caller {} may only obtain {identity}",
                caller.ns_sa()
            )));
        }
        let ttl = self.ttl_for(req.validity_duration);
        let signer = self.signer.clone();
        let csr = req.csr;
        let id = identity.clone();
        let chain = tokio::task::spawn_blocking(move || signer.sign(&csr, &id, ttl))
            .await
            .map_err(|e| Status::internal(format!("signing task failed: {e}")))?
            .map_err(|e| match e {
                SignError::Csr(_) => Status::invalid_argument(e.to_string()),
                SignError::Internal(_) => Status::internal(e.to_string()),
            })?;
        tracing::info!(
            caller = %caller.ns_sa(),
            %identity,
            ttl_secs = ttl.as_secs(),
            "issued a workload certificate"
        );
        let cert_chain = chain
            .into_iter()
            .map(|mut pem| {
                if !pem.ends_with('\n') {
                    pem.push('\n');
                }
                pem
            })
            .collect();
        Ok(Response::new(IstioCertificateResponse { cert_chain }))
    }
}

/// URI SANs a PEM CSR asks for (none when it cannot be parsed: the signer reports that).
fn csr_uri_sans(csr_pem: &str) -> Vec<String> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()) else {
        return Vec::new();
    };
    let Ok((_, csr)) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
    else {
        return Vec::new();
    };
    let mut uris = Vec::new();
    if let Some(extensions) = csr.requested_extensions() {
        for ext in extensions {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        uris.push((*uri).to_string());
                    }
                }
            }
        }
    }
    uris
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::AuthError;

    struct NoSigner;
    impl CertificateSigner for NoSigner {
        fn sign(&self, _: &str, _: &Identity, _: Duration) -> Result<Vec<String>, SignError> {
            Err(SignError::Internal("unused".into()))
        }
    }
    struct NoAuth;
    impl TokenAuthenticator for NoAuth {
        fn authenticate(&self, _: &str) -> Result<CallerIdentity, AuthError> {
            Err(AuthError::Missing)
        }
    }

    fn server(pods: Option<Vec<(&'static str, &'static str, &'static str)>>) -> CaServer {
        let locator = move |node: &str| {
            pods.as_ref().map(|p| {
                p.iter()
                    .filter(|(n, _, _)| *n == node)
                    .map(|(_, ns, sa)| (ns.to_string(), sa.to_string()))
                    .collect()
            })
        };
        CaServer::new(
            CaConfig::default(),
            Arc::new(NoSigner),
            Arc::new(NoAuth),
            Arc::new(locator),
        )
    }

    fn caller(ns: &str, sa: &str, node: Option<&str>) -> CallerIdentity {
        CallerIdentity {
            namespace: ns.into(),
            service_account: sa.into(),
            pod: None,
            node: node.map(String::from),
        }
    }

    #[test]
    fn ttl_default_and_cap() {
        let s = server(None);
        assert_eq!(s.ttl_for(0), DEFAULT_CERT_TTL);
        assert_eq!(s.ttl_for(-5), DEFAULT_CERT_TTL);
        assert_eq!(s.ttl_for(3600), Duration::from_secs(3600));
        assert_eq!(s.ttl_for(i64::MAX), DEFAULT_MAX_CERT_TTL);
    }

    #[test]
    fn impersonation_rules() {
        let s = server(Some(vec![("node-a", "default", "sleep")]));
        let own = s
            .identity_for(&caller("default", "sleep", None), None)
            .unwrap();
        assert_eq!(
            own.to_string(),
            "spiffe://cluster.local/ns/default/sa/sleep"
        );

        let want = "spiffe://cluster.local/ns/default/sleep";
        let zt = caller("istio-system", "ztunnel", Some("node-a"));
        assert_eq!(
            s.identity_for(&zt, Some(want)).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let want = "spiffe://cluster.local/ns/default/sa/sleep";
        assert_eq!(s.identity_for(&zt, Some(want)).unwrap().to_string(), want);

        let err = s
            .identity_for(&caller("istio-system", "foo", Some("node-a")), Some(want))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(
            err.message()
                .contains("istio-system/foo is not a trusted node agent")
        );

        let other_node = caller("istio-system", "ztunnel", Some("node-b"));
        let err = s.identity_for(&other_node, Some(want)).unwrap_err();
        assert!(err.message().contains("node-b"), "{}", err.message());

        let err = s
            .identity_for(&zt, Some("spiffe://other.td/ns/default/sa/sleep"))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("trust domain"));

        // No placement information: the node check is skipped.
        let s = server(None);
        s.identity_for(&other_node, Some(want)).unwrap();
    }
}

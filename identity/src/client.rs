//! The CA client: `istio.v1.auth.IstioCertificateService/CreateCertificate` over gRPC+TLS,
//! behaving like Istio's ztunnel (`../shared/reference/xds-and-ca.md` §5).
//!
//! Per request: a fresh ECDSA P-256 key, a PKCS#10 CSR with an empty subject and one URI SAN
//! (the identity), `validity_duration` in seconds, `ImpersonatedIdentity` metadata in shared
//! (node-agent) mode when the identity is not our own; `authorization: Bearer <token>` (the
//! token file is re-read on every call), `clusterid` and any extra headers. A root certificate
//! file is re-read before each request too: a changed root rebuilds the channel, an unusable
//! one keeps the last good root (or fails the request naming the file when there is none).
//!
//! The response is checked before it is used: non-empty chain, leaf SPIFFE id equal to the
//! requested identity, leaf key equal to ours, and the chain (leaf → intermediates) verifying
//! against the response's root(s) — which, when a trust bundle is configured, must be in it.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use hbone::cert::BoxFuture;
use hbone::{CertError, Identity, WorkloadCertificate};
use proto::istio::v1::auth::IstioCertificateRequest;
use proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::bundle::TrustBundle;
use crate::manager::CertificateProvider;
use crate::pem;

/// Metadata key asking the CA to sign for another identity (node-agent mode).
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";
/// Default certificate lifetime requested (`SECRET_TTL`).
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// TCP+TLS connect timeout towards the CA.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-request deadline.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a certificate could not be obtained from the CA.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CaClientError {
    #[error("invalid CA address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
    #[error("CA root certificate {source_name} is not usable: {reason}")]
    InvalidRoot { source_name: String, reason: String },
    #[error("invalid extra CA header {name:?}: {reason}")]
    InvalidHeader { name: String, reason: String },
    #[error("cannot read the CA token file {}: {reason}", .path.display())]
    TokenUnreadable { path: PathBuf, reason: String },
    #[error("the CA token from {source_name} is empty or not a valid header value")]
    BadToken { source_name: String },
    #[error("cannot create the key or CSR: {0}")]
    Csr(String),
    #[error("CA {address} is unreachable: {reason}")]
    Unreachable { address: String, reason: String },
    #[error(
        "TLS to CA {address} failed (expected server name {server_name:?}; check the CA root \
         certificate and ALT_CA_HOSTNAME): {reason}"
    )]
    Tls {
        address: String,
        server_name: String,
        reason: String,
    },
    #[error("CA rejected the request: {code:?}: {message}")]
    Status { code: tonic::Code, message: String },
    #[error(
        "no CA client is configured: {0}; certificates cannot be requested until this is fixed and the proxy restarted"
    )]
    NotConfigured(String),
    #[error("CA returned an unusable response: {0}")]
    BadResponse(String),
    #[error("CA issued a certificate for {got} but {requested} was requested")]
    IdentityMismatch { requested: Identity, got: String },
    #[error("certificate from the CA does not verify against the trust roots: {0}")]
    ChainInvalid(String),
    #[error("certificate from the CA is not usable: {0}")]
    Certificate(#[from] CertError),
}

pub use crate::source::{RootCert, TokenSource};

/// Reads the current token (files are re-read on every call: projected tokens rotate).
async fn read_token(source: &TokenSource) -> Result<Option<String>, CaClientError> {
    ReadToken(source).read().await
}

struct ReadToken<'a>(&'a TokenSource);

impl ReadToken<'_> {
    async fn read(&self) -> Result<Option<String>, CaClientError> {
        let (token, source_name) = match self.0 {
            TokenSource::None => return Ok(None),
            TokenSource::Literal(t) => (t.trim().to_string(), "the configured literal".into()),
            TokenSource::File(path) => {
                let text = tokio::fs::read_to_string(path).await.map_err(|e| {
                    CaClientError::TokenUnreadable {
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?;
                (text.trim().to_string(), path.display().to_string())
            }
        };
        if token.is_empty() {
            return Err(CaClientError::BadToken { source_name });
        }
        Ok(Some(token))
    }
}

/// Dedicated (one workload per proxy) or shared (node agent signing for many identities).
#[derive(Debug, Clone, Default)]
pub enum Mode {
    /// Never impersonate.
    #[default]
    Dedicated,
    /// Ask for `ImpersonatedIdentity` whenever the requested identity is not `own_identity`.
    Shared { own_identity: Option<Identity> },
}

/// How to reach and talk to the CA.
#[derive(Debug, Clone)]
pub struct CaClientConfig {
    /// `https://host:port`; a value without a scheme gets `https://`.
    pub address: String,
    /// Root that signs the CA's serving certificate. Ignored by [`CaClient::with_channel`].
    pub root_cert: RootCert,
    /// TLS server name to verify instead of the address's host (`ALT_CA_HOSTNAME`).
    pub server_name: Option<String>,
    pub token: TokenSource,
    /// Sent as the `clusterid` header.
    pub cluster_id: String,
    /// Extra headers (`CA_HEADER_<name>`), sent on every request.
    pub headers: BTreeMap<String, String>,
    /// Requested certificate lifetime (`validity_duration`).
    pub validity: Duration,
    pub mode: Mode,
    /// When set, the root returned by the CA must be one of these.
    pub trust_bundle: Option<TrustBundle>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl CaClientConfig {
    /// A configuration with ztunnel's defaults (24 h certificates, cluster `Kubernetes`,
    /// dedicated mode, no token).
    pub fn new(address: impl Into<String>, root_cert: RootCert) -> Self {
        CaClientConfig {
            address: address.into(),
            root_cert,
            server_name: None,
            token: TokenSource::None,
            cluster_id: "Kubernetes".into(),
            headers: BTreeMap::new(),
            validity: DEFAULT_VALIDITY,
            mode: Mode::Dedicated,
            trust_bundle: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// A client of Istio's certificate service.
#[derive(Clone)]
pub struct CaClient {
    channel: ChannelSource,
    address: String,
    server_name: String,
    token: TokenSource,
    /// `clusterid` plus the extra headers, validated once.
    fixed_headers: MetadataMap,
    validity: Duration,
    mode: Mode,
    trust_bundle: Option<TrustBundle>,
}

impl fmt::Debug for CaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaClient")
            .field("address", &self.address)
            .field("server_name", &self.server_name)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl CaClient {
    /// Builds the TLS channel (connected lazily: a CA that is down now is not an error here,
    /// requests report it). An inline root is checked now. A root file is read now and again
    /// before each request: when its content changes (root rotation, a ConfigMap update) the
    /// channel is rebuilt; while it is missing or unusable, requests fail naming the file, or
    /// keep using the last good root if there was one.
    pub fn new(config: CaClientConfig) -> Result<Self, CaClientError> {
        let address = normalise_address(&config.address);
        let uri = http_uri(&address)?;
        let host = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
            .ok_or_else(|| CaClientError::InvalidAddress {
                address: address.clone(),
                reason: "no host".into(),
            })?;
        let server_name = config.server_name.clone().unwrap_or(host);
        let settings = ChannelSettings {
            address: address.clone(),
            server_name: server_name.clone(),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
        };
        let channel = match &config.root_cert {
            RootCert::Pem(p) => ChannelSource::Fixed(settings.client(p, "<inline PEM>")?),
            RootCert::File(path) => {
                let source = RootFileChannel {
                    path: path.clone(),
                    settings,
                    current: std::sync::Mutex::new(None),
                };
                if let Err(e) = source.client() {
                    tracing::warn!(error = %e, "CA root not usable yet; certificate requests \
                        fail until it is");
                }
                ChannelSource::RootFile(std::sync::Arc::new(source))
            }
        };
        Self::build(channel, address, server_name, config)
    }

    /// Uses an already-built channel (tests, or a channel shared with xDS). `config.address`
    /// and `server_name` are only used in error messages; `root_cert` is ignored.
    pub fn with_channel(channel: Channel, config: CaClientConfig) -> Result<Self, CaClientError> {
        let address = normalise_address(&config.address);
        let server_name = config.server_name.clone().unwrap_or_default();
        let channel = ChannelSource::Fixed(IstioCertificateServiceClient::new(channel));
        Self::build(channel, address, server_name, config)
    }

    fn build(
        channel: ChannelSource,
        address: String,
        server_name: String,
        config: CaClientConfig,
    ) -> Result<Self, CaClientError> {
        let mut fixed_headers = MetadataMap::new();
        let mut insert = |name: &str, value: &str| -> Result<(), CaClientError> {
            let bad = |reason: String| CaClientError::InvalidHeader {
                name: name.to_string(),
                reason,
            };
            let key = AsciiMetadataKey::from_str(&name.to_ascii_lowercase())
                .map_err(|e| bad(e.to_string()))?;
            let value = AsciiMetadataValue::try_from(value).map_err(|e| bad(e.to_string()))?;
            fixed_headers.insert(key, value);
            Ok(())
        };
        if !config.cluster_id.is_empty() {
            insert("clusterid", &config.cluster_id)?;
        }
        for (name, value) in &config.headers {
            insert(name, value)?;
        }
        Ok(CaClient {
            channel,
            address,
            server_name,
            token: config.token,
            fixed_headers,
            validity: config.validity,
            mode: config.mode,
            trust_bundle: config.trust_bundle,
        })
    }

    /// The CA address requests go to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Requests a certificate for `identity` and checks the answer.
    pub async fn fetch(&self, identity: &Identity) -> Result<WorkloadCertificate, CaClientError> {
        let token = read_token(&self.token).await?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaClientError::Csr(format!("generating a P-256 key: {e}")))?;
        let csr = build_csr(&key, identity)?;
        let impersonate = match &self.mode {
            Mode::Dedicated => false,
            Mode::Shared { own_identity } => own_identity.as_ref() != Some(identity),
        };
        let request = IstioCertificateRequest {
            csr,
            validity_duration: self.validity.as_secs().try_into().unwrap_or(i64::MAX),
            metadata: impersonate.then(|| impersonation_metadata(identity)),
        };
        let mut request = tonic::Request::new(request);
        let metadata = request.metadata_mut();
        for kv in self.fixed_headers.iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                metadata.insert(k.clone(), v.clone());
            }
        }
        if let Some(token) = token {
            let value = AsciiMetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                CaClientError::BadToken {
                    source_name: match &self.token {
                        TokenSource::File(p) => p.display().to_string(),
                        _ => "the configured literal".into(),
                    },
                }
            })?;
            metadata.insert("authorization", value);
        }
        let response = self
            .channel
            .client()?
            .create_certificate(request)
            .await
            .map_err(|status| self.classify(status))?
            .into_inner();
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let bundle = self.trust_bundle.as_ref();
        let cert = verify_response(&response.cert_chain, identity, key_der, bundle)?;
        tracing::debug!(
            %identity,
            serial = cert.serial(),
            ca = %self.address,
            "certificate issued"
        );
        Ok(cert)
    }

    /// Turns a gRPC status into the error that names the cause: TLS failure, unreachable CA,
    /// or the CA's own answer.
    fn classify(&self, status: tonic::Status) -> CaClientError {
        let mut source = status.source();
        let mut transport = false;
        while let Some(err) = source {
            if let Some(tls) = err.downcast_ref::<rustls::Error>() {
                return self.tls_error(tls);
            }
            if let Some(io) = err.downcast_ref::<std::io::Error>()
                && let Some(tls) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>())
            {
                return self.tls_error(tls);
            }
            if err.is::<tonic::transport::Error>() {
                transport = true;
            }
            source = err.source();
        }
        if transport || (status.code() == tonic::Code::Unavailable && status.source().is_some()) {
            let reason = status
                .source()
                .map(error_chain)
                .unwrap_or_else(|| status.message().to_string());
            return CaClientError::Unreachable {
                address: self.address.clone(),
                reason,
            };
        }
        CaClientError::Status {
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    fn tls_error(&self, err: &rustls::Error) -> CaClientError {
        CaClientError::Tls {
            address: self.address.clone(),
            server_name: self.server_name.clone(),
            reason: err.to_string(),
        }
    }
}

type GrpcClient = IstioCertificateServiceClient<Channel>;

/// Where requests get their gRPC client from.
#[derive(Clone)]
enum ChannelSource {
    /// Built once (an inline root, or a channel given by the caller).
    Fixed(GrpcClient),
    /// Built from the root file, and rebuilt when its content changes.
    RootFile(std::sync::Arc<RootFileChannel>),
}

impl ChannelSource {
    fn client(&self) -> Result<GrpcClient, CaClientError> {
        match self {
            ChannelSource::Fixed(c) => Ok(c.clone()),
            ChannelSource::RootFile(f) => f.client(),
        }
    }
}

/// What a channel to the CA is built from, besides the root.
struct ChannelSettings {
    address: String,
    server_name: String,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl ChannelSettings {
    /// A lazily connected client trusting `root_pem` (checked to hold certificates).
    fn client(&self, root_pem: &str, source_name: &str) -> Result<GrpcClient, CaClientError> {
        let invalid = |reason: String| CaClientError::InvalidRoot {
            source_name: source_name.to_string(),
            reason,
        };
        match pem::certs(root_pem) {
            Ok(c) if !c.is_empty() => {}
            Ok(_) => return Err(invalid("no PEM CERTIFICATE block".into())),
            Err(reason) => return Err(invalid(reason)),
        }
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(root_pem))
            .domain_name(self.server_name.clone());
        let endpoint = Endpoint::from_shared(self.address.clone())
            .map_err(|e| CaClientError::InvalidAddress {
                address: self.address.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .tcp_keepalive(Some(Duration::from_secs(300)))
            .tls_config(tls)
            .map_err(|e| invalid(error_chain(&e)))?;
        Ok(IstioCertificateServiceClient::new(endpoint.connect_lazy()))
    }
}

/// A channel following a root certificate file.
struct RootFileChannel {
    path: PathBuf,
    settings: ChannelSettings,
    /// The root the current client trusts, and the client.
    current: std::sync::Mutex<Option<(String, GrpcClient)>>,
}

impl RootFileChannel {
    /// The client for the file's current root: re-read (a few hundred bytes, once per
    /// certificate request), rebuilt on change; the last good one when the file is unusable.
    fn client(&self) -> Result<GrpcClient, CaClientError> {
        let source_name = self.path.display().to_string();
        let read = std::fs::read_to_string(&self.path).map_err(|e| CaClientError::InvalidRoot {
            source_name: source_name.clone(),
            reason: e.to_string(),
        });
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = read.and_then(|pem| {
            if let Some((old, client)) = current.as_ref()
                && *old == pem
            {
                return Ok(client.clone());
            }
            let client = self.settings.client(&pem, &source_name)?;
            if current.is_some() {
                tracing::info!(root = %source_name, ca = %self.settings.address,
                    "CA root certificate changed; new connections to the CA trust the new root");
            }
            *current = Some((pem, client.clone()));
            Ok(client)
        });
        match (fresh, current.as_ref()) {
            (Ok(client), _) => Ok(client),
            (Err(e), Some((_, last))) => {
                tracing::warn!(error = %e, "keeping the last good CA root");
                Ok(last.clone())
            }
            (Err(e), None) => Err(e),
        }
    }
}

impl CertificateProvider for CaClient {
    fn fetch<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> BoxFuture<'a, Result<WorkloadCertificate, CaClientError>> {
        Box::pin(CaClient::fetch(self, identity))
    }
}

/// PKCS#10 CSR: empty subject, one URI SAN (critical, as the subject is empty), SHA-256.
fn build_csr(key: &KeyPair, identity: &Identity) -> Result<String, CaClientError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names =
        vec![SanType::URI(identity.to_string().try_into().map_err(
            |e| CaClientError::Csr(format!("identity {identity}: {e}")),
        )?)];
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(|e| CaClientError::Csr(e.to_string()))
}

fn impersonation_metadata(identity: &Identity) -> prost_types::Struct {
    let mut fields = BTreeMap::new();
    fields.insert(
        IMPERSONATED_IDENTITY.to_string(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(identity.to_string())),
        },
    );
    prost_types::Struct { fields }
}

/// Checks a `CreateCertificate` answer and builds the workload certificate from it.
///
/// `chain[0]` holds the leaf; every entry but the last holds the leaf and intermediates; the
/// last entry holds the root(s). A one-entry answer takes its roots from `bundle`.
pub fn verify_response(
    chain: &[String],
    requested: &Identity,
    key: PrivateKeyDer<'static>,
    bundle: Option<&TrustBundle>,
) -> Result<WorkloadCertificate, CaClientError> {
    if chain.is_empty() {
        return Err(CaClientError::BadResponse(
            "the certificate chain is empty".into(),
        ));
    }
    let mut entries = Vec::with_capacity(chain.len());
    for (i, text) in chain.iter().enumerate() {
        let certs = pem::certs(text).map_err(|e| {
            CaClientError::BadResponse(format!("chain entry #{} is not valid PEM: {e}", i + 1))
        })?;
        if certs.is_empty() {
            return Err(CaClientError::BadResponse(format!(
                "chain entry #{} holds no PEM CERTIFICATE block",
                i + 1
            )));
        }
        entries.push(certs);
    }
    let (certs, response_roots): (Vec<CertificateDer<'static>>, Vec<CertificateDer<'static>>) =
        if entries.len() >= 2 {
            let roots = entries.pop().unwrap_or_default();
            (entries.into_iter().flatten().collect(), roots)
        } else {
            (entries.into_iter().flatten().collect(), Vec::new())
        };
    let leaf = &certs[0];
    x509_parser::parse_x509_certificate(leaf).map_err(|e| {
        CaClientError::BadResponse(format!("the leaf certificate does not parse: {e}"))
    })?;
    let ids = hbone::cert::spiffe_identities(leaf);
    if !ids.contains(requested) {
        let got = if ids.is_empty() {
            "no SPIFFE identity".to_string()
        } else {
            ids.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(CaClientError::IdentityMismatch {
            requested: requested.clone(),
            got,
        });
    }

    // The roots the chain must verify to.
    let (anchors_from, roots) = match (bundle, response_roots.is_empty()) {
        (None, true) => {
            return Err(CaClientError::BadResponse(
                "the response has no root certificate and no trust bundle is configured".into(),
            ));
        }
        (None, false) => (response_roots.clone(), response_roots),
        (Some(b), true) => {
            let r = b.roots().certificates().to_vec();
            (r.clone(), r)
        }
        (Some(b), false) => {
            let trusted = b.roots();
            let in_bundle: Vec<_> = response_roots
                .iter()
                .filter(|r| trusted.contains(r))
                .cloned()
                .collect();
            if in_bundle.is_empty() {
                return Err(CaClientError::ChainInvalid(format!(
                    "none of the {} root(s) returned by the CA is in the trust bundle {}",
                    response_roots.len(),
                    b.path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "<inline PEM>".into())
                )));
            }
            (in_bundle, response_roots)
        }
    };
    verify_chain(leaf, &certs[1..], &anchors_from)?;
    Ok(WorkloadCertificate::from_der(certs, key, roots)?)
}

/// Verifies that the leaf chains to one of `roots` through `intermediates`, for both TLS
/// client and server use (a workload certificate serves both directions of HBONE).
fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) -> Result<(), CaClientError> {
    let anchors = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaClientError::ChainInvalid(format!("a root is not usable: {e:?}")))?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| CaClientError::ChainInvalid(format!("leaf: {e:?}")))?;
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    let now = UnixTime::now();
    for (usage, name) in [
        (webpki::KeyUsage::client_auth(), "clientAuth"),
        (webpki::KeyUsage::server_auth(), "serverAuth"),
    ] {
        cert.verify_for_usage(algs.all, &anchors, intermediates, now, usage, None, None)
            .map_err(|e| CaClientError::ChainInvalid(format!("{e} (checking {name} use)")))?;
    }
    Ok(())
}

fn normalise_address(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("https://{address}")
    }
}

fn http_uri(address: &str) -> Result<http_uri::Uri, CaClientError> {
    address
        .parse::<http_uri::Uri>()
        .map_err(|e| CaClientError::InvalidAddress {
            address: address.to_string(),
            reason: e.to_string(),
        })
}

/// `tonic` re-exports the `http` types it uses.
mod http_uri {
    pub(crate) use tonic::codegen::http::Uri;
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_has_empty_subject_and_only_the_uri_san() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let id = Identity::parse("spiffe://cluster.local/ns/a/sa/b").unwrap();
        let pem_text = build_csr(&key, &id).unwrap();
        let params = rcgen::CertificateSigningRequestParams::from_pem(&pem_text).unwrap();
        assert_eq!(params.params.distinguished_name.iter().count(), 0);
        let sans: Vec<_> = params.params.subject_alt_names.iter().collect();
        assert_eq!(sans.len(), 1);
        assert!(matches!(sans[0], SanType::URI(u) if u.as_str() == id.to_string()));
    }

    #[test]
    fn token_setting_is_a_path_when_the_file_exists() {
        assert!(matches!(TokenSource::from_env_value(""), TokenSource::None));
        assert!(matches!(
            TokenSource::from_env_value("/etc/hostname-that-does-not-exist"),
            TokenSource::Literal(_)
        ));
        let path = std::env::temp_dir().join(format!("identity-token-{}", std::process::id()));
        std::fs::write(&path, "t").unwrap();
        assert!(matches!(
            TokenSource::from_env_value(path.to_str().unwrap()),
            TokenSource::File(_)
        ));
        let _ = std::fs::remove_file(path);
        assert_eq!(
            format!("{:?}", TokenSource::Literal("secret".into())),
            "Literal(<redacted>)"
        );
    }

    #[test]
    fn addresses_get_https_when_scheme_less() {
        assert_eq!(normalise_address("istiod:15012"), "https://istiod:15012");
        assert_eq!(normalise_address("https://x:1"), "https://x:1");
    }
}

//! Mutual TLS as HBONE uses it.
//!
//! * TLS 1.3 only (1.2 behind [`TlsSettings::allow_tls12`]), AES-GCM suites, ALPN `h2`, no SNI,
//!   no session resumption.
//! * Server: a client certificate is required; it must chain to the roots that came with the
//!   server's own certificate, allow `clientAuth`, and carry a SPIFFE URI SAN in the server's
//!   trust domain. Which identity it is, is for authorization to decide later.
//! * Client: the server certificate must chain to the roots, allow `serverAuth`, and carry one
//!   of the identities the caller expects for that destination. Host names are not checked.
//! * Both: with [`TlsSettings::revocations`], no certificate of the peer's chain may be listed
//!   in a CRL of its issuer (see [`crate::crl`]).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::cert::{WorkloadCertificate, spiffe_identities};
use crate::crl::{Revocations, Side};
use crate::identity::{self, Identity};

/// ALPN protocol HBONE negotiates.
pub const ALPN_H2: &[u8] = b"h2";

/// TLS knobs shared by servers and clients.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Also accept TLS 1.2 (Istio's `TLS12_ENABLED`). Off by default.
    pub allow_tls12: bool,
    /// Longest a TLS handshake may take before the connection is dropped.
    pub handshake_timeout: Duration,
    /// CRLs to check peers against (Istio's `CRL_PATH`); none by default.
    pub revocations: Option<Revocations>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            allow_tls12: false,
            handshake_timeout: Duration::from_secs(10),
            revocations: None,
        }
    }
}

/// Why the peer's certificate was refused. Carried inside the rustls error so the caller can
/// report both identities.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerCertError {
    #[error(
        "server identity mismatch: expected one of {}, server presented {}",
        identity::list(.expected),
        describe(.presented)
    )]
    IdentityMismatch {
        expected: Vec<Identity>,
        presented: Vec<Identity>,
    },
    #[error(
        "client certificate trust domain not accepted: expected trust domain {expected}, client presented {}",
        describe(.presented)
    )]
    ForeignTrustDomain {
        expected: String,
        presented: Vec<Identity>,
    },
}

fn describe(ids: &[Identity]) -> String {
    if ids.is_empty() {
        "no SPIFFE identity".to_string()
    } else {
        identity::list(ids)
    }
}

/// The ring provider, restricted to the suites and groups HBONE allows.
pub(crate) fn provider_ref() -> &'static Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(build_provider(true)))
}

fn build_provider(with_tls12: bool) -> CryptoProvider {
    use rustls::crypto::ring::{cipher_suite as cs, default_provider, kx_group};
    let mut suites = vec![cs::TLS13_AES_256_GCM_SHA384, cs::TLS13_AES_128_GCM_SHA256];
    if with_tls12 {
        suites.extend([
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ]);
    }
    CryptoProvider {
        cipher_suites: suites,
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        ..default_provider()
    }
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS13_AND_12: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn versions(settings: &TlsSettings) -> &'static [&'static rustls::SupportedProtocolVersion] {
    if settings.allow_tls12 {
        TLS13_AND_12
    } else {
        TLS13_ONLY
    }
}

fn algorithms() -> &'static WebPkiSupportedAlgorithms {
    &provider_ref().signature_verification_algorithms
}

/// Verifies a chain for `usage` and returns the SPIFFE identities of the leaf.
fn verify_chain(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchors: &[rustls::pki_types::TrustAnchor<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
    revocations: Option<(&Revocations, Side)>,
) -> Result<Vec<Identity>, rustls::Error> {
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
    let crls = revocations.map(|(r, _)| r.current());
    let lists = crls.as_ref().map(|c| c.lists()).unwrap_or_default();
    // No CRLs (the builder refuses an empty list): nothing to check.
    let revocation = webpki::RevocationOptionsBuilder::new(&lists).ok().map(|b| {
        b.with_depth(webpki::RevocationCheckDepth::Chain)
            .with_status_policy(webpki::UnknownStatusPolicy::Allow)
            .with_expiration_policy(webpki::ExpirationPolicy::Ignore)
            .build()
    });
    let verified = cert.verify_for_usage(
        algorithms().all,
        anchors,
        intermediates,
        now,
        usage,
        revocation,
        None,
    );
    if let (Err(webpki::Error::CertRevoked), Some((r, side))) = (&verified, revocations) {
        r.count_rejection(side);
    }
    verified.map_err(pki_error)?;
    Ok(spiffe_identities(end_entity))
}

fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let ce = match e {
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        E::CertRevoked => CertificateError::Revoked,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

fn other_cert_error(e: PeerCertError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

/// Server side: any client in our trust domain with a chain to our roots.
#[derive(Debug)]
struct TrustDomainClientVerifier {
    anchors: Arc<[rustls::pki_types::TrustAnchor<'static>]>,
    trust_domain: String,
    revocations: Option<Revocations>,
}

impl ClientCertVerifier for TrustDomainClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ids = verify_chain(
            end_entity,
            intermediates,
            &self.anchors,
            now,
            webpki::KeyUsage::client_auth(),
            self.revocations.as_ref().map(|r| (r, Side::Server)),
        )?;
        if ids.iter().any(|id| id.trust_domain() == self.trust_domain) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(other_cert_error(PeerCertError::ForeignTrustDomain {
                expected: self.trust_domain.clone(),
                presented: ids,
            }))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// Client side: the server must be one of the expected identities.
#[derive(Debug)]
struct ExpectedIdentityVerifier {
    anchors: Arc<[rustls::pki_types::TrustAnchor<'static>]>,
    expected: Vec<Identity>,
    revocations: Option<Revocations>,
}

impl ServerCertVerifier for ExpectedIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ids = verify_chain(
            end_entity,
            intermediates,
            &self.anchors,
            now,
            webpki::KeyUsage::server_auth(),
            self.revocations.as_ref().map(|r| (r, Side::Client)),
        )?;
        if ids.iter().any(|id| self.expected.contains(id)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(other_cert_error(PeerCertError::IdentityMismatch {
                expected: self.expected.clone(),
                presented: ids,
            }))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// Presents one fixed certificate (the workload's) on both sides.
#[derive(Debug)]
struct FixedCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for FixedCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Server configuration for one workload certificate.
pub(crate) fn server_config(
    cert: &WorkloadCertificate,
    settings: &TlsSettings,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let verifier = TrustDomainClientVerifier {
        anchors: cert.anchors().into(),
        trust_domain: cert.trust_domain().to_string(),
        revocations: settings.revocations.clone(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider_ref().clone())
        .with_protocol_versions(versions(settings))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(FixedCert(cert.certified_key().clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Client configuration for one connection: our certificate, the identities we expect.
pub(crate) fn client_config(
    cert: &WorkloadCertificate,
    expected: &[Identity],
    settings: &TlsSettings,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let verifier = ExpectedIdentityVerifier {
        anchors: cert.anchors().into(),
        expected: expected.to_vec(),
        revocations: settings.revocations.clone(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider_ref().clone())
        .with_protocol_versions(versions(settings))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(FixedCert(cert.certified_key().clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Digs our [`PeerCertError`] (or the rustls error) out of an I/O error from a handshake.
pub(crate) fn handshake_failure(err: &std::io::Error) -> HandshakeFailure {
    let Some(inner) = err.get_ref() else {
        return HandshakeFailure::Io;
    };
    let Some(tls) = inner.downcast_ref::<rustls::Error>() else {
        return HandshakeFailure::Io;
    };
    if let rustls::Error::InvalidCertificate(CertificateError::Other(other)) = tls
        && let Some(peer) = other.0.downcast_ref::<PeerCertError>()
    {
        return HandshakeFailure::Peer(peer.clone());
    }
    HandshakeFailure::Tls(tls.clone())
}

/// A handshake failure in words an operator can act on.
pub(crate) fn describe_error(err: &rustls::Error) -> String {
    use rustls::Error as E;
    match err {
        E::InvalidCertificate(ce) => match ce {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "peer certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "peer certificate is not valid yet (check the clocks of both nodes)".into()
            }
            CertificateError::UnknownIssuer => {
                "peer certificate does not chain to a trusted root (unknown issuer): is the peer using another mesh CA?".into()
            }
            CertificateError::BadSignature => "peer certificate has a bad signature".into(),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "peer certificate is not allowed for this use (extended key usage)".into()
            }
            CertificateError::BadEncoding => "peer certificate cannot be decoded".into(),
            CertificateError::Revoked => {
                "peer certificate has been revoked (listed in the CRL of CRL_PATH)".into()
            }
            other => format!("peer certificate rejected: {other:?}"),
        },
        E::NoCertificatesPresented => "peer presented no certificate".into(),
        E::PeerIncompatible(p) => format!("peer is incompatible: {p:?}"),
        E::AlertReceived(alert) => format!("peer sent TLS alert {alert:?}"),
        other => other.to_string(),
    }
}

pub(crate) enum HandshakeFailure {
    Peer(PeerCertError),
    Tls(rustls::Error),
    Io,
}

/// The SPIFFE identity a verified peer presented that belongs to `trust_domain` (server side),
/// or the first identity (client side when `trust_domain` is `None`).
pub(crate) fn peer_identity(
    certs: Option<&[CertificateDer<'static>]>,
    trust_domain: Option<&str>,
) -> Option<Identity> {
    let leaf = certs?.first()?;
    spiffe_identities(leaf)
        .into_iter()
        .find(|id| trust_domain.is_none_or(|td| id.trust_domain() == td))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_has_only_gcm_suites() {
        let p = provider_ref();
        for s in &p.cipher_suites {
            let name = format!("{:?}", s.suite());
            assert!(name.contains("GCM"), "unexpected suite {name}");
        }
        let strict = build_provider(false);
        assert_eq!(strict.cipher_suites.len(), 2);
    }
}

//! The plain mutual-TLS baseline: rustls configurations built here, not by `hbone`, with the
//! same profile HBONE uses (TLS 1.3 only, AES-GCM suites, X25519/P-256/P-384 key exchange,
//! the same ECDSA P-256 certificates, client certificate required, no SNI, no resumption, no
//! session tickets).
//!
//! What the baseline leaves out on purpose: the SPIFFE identity checks (HBONE parses the
//! URI SANs of the peer's leaf with x509-parser on both sides) and ALPN. Both sides still
//! verify the peer's chain with webpki, as HBONE does.

use std::sync::Arc;

use anyhow::Context as _;
use mesh_testing::Leaf;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The ring provider restricted to what HBONE allows.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite as cs, default_provider, kx_group};
    Arc::new(CryptoProvider {
        cipher_suites: vec![cs::TLS13_AES_256_GCM_SHA384, cs::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        ..default_provider()
    })
}

struct Parsed {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Vec<CertificateDer<'static>>,
}

fn parse(leaf: &Leaf) -> anyhow::Result<Parsed> {
    let certs =
        |pem: &str| CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>();
    Ok(Parsed {
        chain: certs(&leaf.chain_pem).context("certificate chain PEM")?,
        key: PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).context("private key PEM")?,
        roots: certs(&leaf.roots_pem).context("roots PEM")?,
    })
}

/// Server side: requires a client certificate chaining to the roots (`clientAuth`).
pub fn server_config(leaf: &Leaf) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = provider();
    let parsed = parse(leaf)?;
    let mut roots = rustls::RootCertStore::empty();
    for root in parsed.roots {
        roots.add(root)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(TLS13_ONLY)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(parsed.chain, parsed.key)?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Client side: presents our certificate, verifies the server's chain (`serverAuth`).
pub fn client_config(leaf: &Leaf) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let parsed = parse(leaf)?;
    let anchors = parsed
        .roots
        .iter()
        .map(|der| webpki::anchor_from_trusted_cert(der).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("trust root: {e}"))?;
    let verifier = ChainVerifier {
        anchors,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(TLS13_ONLY)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(parsed.chain, parsed.key)?;
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Verifies the server's chain for `serverAuth`; ignores the name (the certificates carry
/// only a SPIFFE URI SAN, as in the mesh).
#[derive(Debug)]
struct ChainVerifier {
    anchors: Vec<TrustAnchor<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pki = |e: webpki::Error| rustls::Error::General(format!("server certificate: {e}"));
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki)?;
        cert.verify_for_usage(
            self.algorithms.all,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(pki)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

//! Workload certificates and the seam through which they reach the tunnel.
//!
//! The library never fetches certificates. Callers hand it a [`CertificateSource`]; every new
//! TLS handshake asks the source for the current certificate of an identity, so a rotated
//! certificate is used by the next handshake while established connections keep the one
//! they negotiated with.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::identity::{Identity, IdentityError};

/// A boxed future, as returned by [`CertificateSource`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a certificate could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CertError {
    #[error("no PEM {0} block found")]
    MissingPem(&'static str),
    #[error("invalid PEM {what}: {reason}")]
    BadPem { what: &'static str, reason: String },
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("leaf certificate has no SPIFFE URI SAN (found URIs: {0:?})")]
    NoSpiffeIdentity(Vec<String>),
    #[error("leaf certificate identity {actual} does not match the requested identity {expected}")]
    WrongIdentity {
        expected: Identity,
        actual: Identity,
    },
    #[error("private key does not match the leaf certificate")]
    KeyMismatch,
    #[error("private key is not usable: {0}")]
    BadKey(String),
    #[error("no trust roots were supplied with the certificate")]
    NoRoots,
    #[error("trust root is not a usable CA certificate: {0}")]
    BadRoot(String),
    #[error("no certificate is available for {identity}: {reason}")]
    Unavailable { identity: Identity, reason: String },
    #[error("invalid identity in certificate: {0}")]
    Identity(#[from] IdentityError),
}

/// A workload's certificate chain, private key and the roots its peers must chain to.
///
/// Built once, shared by reference: the parsed key and the TLS configurations derived from it
/// are computed here and reused by every handshake.
pub struct WorkloadCertificate {
    identity: Identity,
    certified: Arc<CertifiedKey>,
    roots: Arc<[rustls::pki_types::TrustAnchor<'static>]>,
    root_ders: Vec<CertificateDer<'static>>,
    not_before: SystemTime,
    not_after: SystemTime,
    serial: String,
}

impl fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity)
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.certified.cert.len())
            .field("roots", &self.root_ders.len())
            .finish()
    }
}

impl WorkloadCertificate {
    /// Builds from PEM text: `chain` is the leaf followed by intermediates, `key` a PKCS#8
    /// (or SEC1/PKCS#1) private key, `roots` one or more CA certificates.
    pub fn from_pem(chain: &str, key: &str, roots: &str) -> Result<Self, CertError> {
        let chain = parse_certs(chain, "certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| CertError::BadPem {
            what: "private key",
            reason: e.to_string(),
        })?;
        let roots = parse_certs(roots, "trust roots")?;
        Self::from_der(chain, key, roots)
    }

    /// Builds from DER: leaf first, then intermediates; roots separately.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, CertError> {
        let leaf = chain.first().ok_or(CertError::MissingPem("CERTIFICATE"))?;
        let parsed = LeafInfo::parse(leaf)?;
        let identity = parsed
            .identities
            .first()
            .cloned()
            .ok_or_else(|| CertError::NoSpiffeIdentity(parsed.uris.clone()))?;
        if roots.is_empty() {
            return Err(CertError::NoRoots);
        }
        let anchors = roots
            .iter()
            .map(|der| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|a| a.to_owned())
                    .map_err(|e| CertError::BadRoot(format!("{e:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let provider = crate::tls::provider_ref();
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| CertError::BadKey(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(_)) => return Err(CertError::KeyMismatch),
            // A key type whose public half rustls cannot derive: accept, the handshake
            // will fail loudly if it is really wrong.
            Err(_) => {}
        }
        Ok(WorkloadCertificate {
            identity,
            certified: Arc::new(certified),
            roots: anchors.into(),
            root_ders: roots,
            not_before: parsed.not_before,
            not_after: parsed.not_after,
            serial: parsed.serial,
        })
    }

    /// Checks that the certificate carries `expected` as its SPIFFE identity.
    pub fn ensure_identity(&self, expected: &Identity) -> Result<(), CertError> {
        if &self.identity == expected {
            Ok(())
        } else {
            Err(CertError::WrongIdentity {
                expected: expected.clone(),
                actual: self.identity.clone(),
            })
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Hex serial number of the leaf.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// When a refresh is due: half way through the validity period.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + life / 2
    }

    /// True once `now` is past the leaf's `notAfter`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now > self.not_after
    }

    /// Leaf followed by intermediates, DER.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// The trust roots, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.root_ders
    }

    /// The trust domain of this workload (what peers must share with it).
    pub fn trust_domain(&self) -> &str {
        self.identity.trust_domain()
    }

    pub(crate) fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    pub(crate) fn anchors(&self) -> &[rustls::pki_types::TrustAnchor<'static>] {
        &self.roots
    }
}

/// Gives the tunnel the current certificate of an identity.
///
/// Implementations may fetch asynchronously (a CA round trip on first use) and must return
/// the newest certificate they hold, so rotation needs no restart.
pub trait CertificateSource: Send + Sync + 'static {
    fn certificate<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> BoxFuture<'a, Result<Arc<WorkloadCertificate>, CertError>>;
}

/// A source holding one certificate that can be replaced at any time (tests, dedicated mode,
/// static deployments). Asking it for any other identity is an error.
#[derive(Debug)]
pub struct StaticCertificate {
    current: ArcSwap<WorkloadCertificate>,
}

impl StaticCertificate {
    pub fn new(cert: WorkloadCertificate) -> Arc<Self> {
        Arc::new(StaticCertificate {
            current: ArcSwap::from_pointee(cert),
        })
    }

    /// Replaces the certificate; handshakes from now on use the new one.
    pub fn rotate(&self, cert: WorkloadCertificate) {
        self.current.store(Arc::new(cert));
    }

    pub fn current(&self) -> Arc<WorkloadCertificate> {
        self.current.load_full()
    }
}

impl CertificateSource for StaticCertificate {
    fn certificate<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> BoxFuture<'a, Result<Arc<WorkloadCertificate>, CertError>> {
        let cert = self.current.load_full();
        Box::pin(async move {
            if cert.identity() == identity {
                Ok(cert)
            } else {
                Err(CertError::Unavailable {
                    identity: identity.clone(),
                    reason: format!("this source only holds {}", cert.identity()),
                })
            }
        })
    }
}

/// Parses every `CERTIFICATE` block of a PEM text.
pub fn parse_certs(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadPem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::MissingPem("CERTIFICATE"));
    }
    Ok(certs)
}

/// What we read from a leaf certificate.
#[derive(Debug)]
pub(crate) struct LeafInfo {
    pub identities: Vec<Identity>,
    pub uris: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub serial: String,
}

impl LeafInfo {
    pub(crate) fn parse(der: &[u8]) -> Result<Self, CertError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| CertError::Parse(e.to_string()))?;
        let uris = uri_sans(&cert);
        let identities = uris
            .iter()
            .filter_map(|u| Identity::parse(u).ok())
            .collect();
        let validity = cert.validity();
        Ok(LeafInfo {
            identities,
            uris,
            not_before: to_system_time(validity.not_before.timestamp()),
            not_after: to_system_time(validity.not_after.timestamp()),
            serial: cert.raw_serial_as_string().replace(':', ""),
        })
    }
}

/// The hex serial number of a DER certificate, if it parses.
pub fn serial_of(der: &[u8]) -> Option<String> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, c)| c.raw_serial_as_string().replace(':', ""))
}

/// The SPIFFE identities carried as URI SANs of a DER certificate (unparseable URIs skipped).
pub fn spiffe_identities(der: &[u8]) -> Vec<Identity> {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => uri_sans(&cert)
            .iter()
            .filter_map(|u| Identity::parse(u).ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn uri_sans(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_string()),
            _ => None,
        })
        .collect()
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

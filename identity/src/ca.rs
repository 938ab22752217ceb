//! CA signing: the certificate authority the control plane runs (istiod's role).
//!
//! [`CaSigner`] holds a signing certificate and key, the intermediates between it and the root,
//! and the root(s). It can be a fresh self-signed root ([`CaSigner::generate`]), a root
//! persisted in a state directory ([`CaSigner::load_or_create`]) or an operator's plug-in CA in
//! Istio's `cacerts` layout ([`CaSigner::from_plugged`]).
//!
//! Workload certificates are issued from a PKCS#10 CSR whose signature is verified but whose
//! subject and SANs are ignored: the only SAN of the leaf is the identity the caller
//! authenticated, exactly as istiod does. Authentication, TTL policy (default and maximum) and
//! the gRPC server are the caller's job.

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hbone::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
    SubjectPublicKeyInfo,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::pem;

/// The signing certificate (Istio plug-in CA layout).
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// The signing key, PKCS#8 PEM. Written with mode 0600.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The root certificate(s) workloads trust.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// The chain from the signing certificate up to the root.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";

/// How far back issued certificates are dated, so peers with a slightly slow clock accept
/// them immediately. Workload certificates are backdated by at most a tenth of their
/// lifetime ([`backdate`]), so a short `SECRET_TTL` still renews at about half of it.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// How far back a workload certificate valid for `ttl` is dated: [`CLOCK_SKEW`], or a tenth of
/// `ttl` when that is shorter.
pub fn backdate(ttl: Duration) -> Duration {
    CLOCK_SKEW.min(ttl / 10)
}
/// Lifetime of a generated root.
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Why the CA could not be loaded or could not sign.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CaError {
    #[error("CA file {} is missing", .path.display())]
    MissingFile { path: PathBuf },
    #[error("cannot read CA file {}: {reason}", .path.display())]
    ReadFile { path: PathBuf, reason: String },
    #[error("CA file {} is invalid: {reason}", .path.display())]
    InvalidFile { path: PathBuf, reason: String },
    #[error(
        "CA state directory {} is incomplete ({missing} is missing but other CA files exist); \
         restore the file, or remove the directory to generate a new root (every workload \
         certificate will then change trust root)",
        .dir.display()
    )]
    IncompleteState { dir: PathBuf, missing: &'static str },
    #[error("cannot write CA file {}: {reason}", .path.display())]
    WriteFile { path: PathBuf, reason: String },
    #[error("certificate signing request is not usable: {0}")]
    BadCsr(String),
    #[error("certificate signing request signature does not verify (tampered or corrupt CSR)")]
    CsrSignature,
    #[error("invalid certificate request: {0}")]
    InvalidRequest(String),
    #[error("signing failed: {0}")]
    Signing(String),
}

/// A certificate authority able to sign workload and serving certificates.
pub struct CaSigner {
    issuer: Issuer<'static, KeyPair>,
    /// Intermediates from the signing certificate (included unless it is itself a root) up to,
    /// excluding, the root; one normalised PEM each.
    intermediates: Vec<String>,
    /// Root certificates, one normalised PEM each.
    roots: Vec<String>,
    root_ders: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for CaSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaSigner")
            .field("intermediates", &self.intermediates.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

/// A serving certificate for a TLS server (the control plane's gRPC endpoint).
#[derive(Clone)]
pub struct ServingCert {
    /// Leaf followed by the intermediates (no root), PEM.
    pub chain_pem: String,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
}

impl fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCert")
            .field("chain_pem", &self.chain_pem)
            .finish_non_exhaustive()
    }
}

impl CaSigner {
    /// A new self-signed ECDSA P-256 root valid for ten years; `trust_domain_label` becomes its
    /// organization (istiod uses the trust domain, e.g. `cluster.local`).
    pub fn generate(trust_domain_label: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Signing(format!("generating the CA key: {e}")))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, trust_domain_label);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + ROOT_TTL).into();
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Signing(format!("self-signing the root: {e}")))?;
        let der = cert.der().clone();
        Ok(CaSigner {
            issuer: Issuer::new(params, key),
            intermediates: Vec::new(),
            roots: vec![pem::encode_cert(&der)],
            root_ders: vec![der],
        })
    }

    /// Loads the CA persisted in `state_dir`, or generates a root (organization
    /// `cluster.local`) and persists it there: `ca-key.pem` (mode 0600), `ca-cert.pem`,
    /// `root-cert.pem`, `cert-chain.pem`. A directory with only some of the files is an error,
    /// never silently replaced (a new root would break trust with every existing workload).
    pub fn load_or_create(state_dir: &Path) -> Result<Self, CaError> {
        let required = [CA_KEY_FILE, CA_CERT_FILE, ROOT_CERT_FILE];
        let present: Vec<bool> = required
            .iter()
            .map(|f| state_dir.join(f).exists())
            .collect();
        if present.iter().all(|p| *p) {
            return Self::from_plugged(state_dir);
        }
        if let Some(i) = present.iter().position(|p| !*p)
            && present.iter().any(|p| *p)
        {
            return Err(CaError::IncompleteState {
                dir: state_dir.to_path_buf(),
                missing: required[i],
            });
        }
        let signer = Self::generate(hbone::identity::DEFAULT_TRUST_DOMAIN)?;
        signer.persist(state_dir)?;
        tracing::info!(dir = %state_dir.display(), "generated a new self-signed CA root");
        Ok(signer)
    }

    /// Loads an Istio plug-in CA from `dir`: `ca-cert.pem` (the signing certificate),
    /// `ca-key.pem` (its PKCS#8 key), `root-cert.pem` (the root(s)) and, optionally,
    /// `cert-chain.pem` (signing certificate and intermediates up to the root; the root may be
    /// included). Checks that the key matches, that the signing certificate is a CA and that
    /// it chains to one of the roots. Errors name the file to fix.
    pub fn from_plugged(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let root_path = dir.join(ROOT_CERT_FILE);
        let chain_path = dir.join(CERT_CHAIN_FILE);
        let cert_text = read_file(&cert_path)?;
        let key_text = read_file(&key_path)?;
        let root_text = read_file(&root_path)?;
        let chain_text = if chain_path.exists() {
            Some(read_file(&chain_path)?)
        } else {
            None
        };
        let invalid = |path: &Path, reason: String| CaError::InvalidFile {
            path: path.to_path_buf(),
            reason,
        };

        let key = KeyPair::from_pem(&key_text).map_err(|e| {
            invalid(
                &key_path,
                format!(
                    "not a PKCS#8 private key ({e}); convert it with \
                     `openssl pkcs8 -topk8 -nocrypt -in {CA_KEY_FILE}`"
                ),
            )
        })?;
        let ca_der = certs_in(&cert_text, &cert_path)?.remove(0);
        let roots = certs_in(&root_text, &root_path)?;
        let chain = match &chain_text {
            Some(text) => certs_in(text, &chain_path)?,
            None => Vec::new(),
        };

        let ca = parse_cert(&ca_der, &cert_path)?;
        if !ca.is_ca() {
            return Err(invalid(
                &cert_path,
                "not a CA certificate (basicConstraints CA:TRUE is missing)".into(),
            ));
        }
        if ca.validity().not_after.timestamp() < unix_now() {
            return Err(invalid(
                &cert_path,
                format!("expired at {}", ca.validity().not_after),
            ));
        }
        if ca.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err(invalid(
                &key_path,
                format!("the key does not match the public key of {CA_CERT_FILE}"),
            ));
        }
        for (i, der) in roots.iter().enumerate() {
            let root = parse_cert(der, &root_path)?;
            if !root.is_ca() {
                return Err(invalid(
                    &root_path,
                    format!("certificate #{} is not a CA certificate", i + 1),
                ));
            }
        }

        // Intermediates: the chain file without the roots, starting with the signing
        // certificate unless that certificate is itself a root.
        let ca_is_root = roots.iter().any(|r| r.as_ref() == ca_der.as_ref());
        let mut intermediates: Vec<CertificateDer<'static>> = chain
            .into_iter()
            .filter(|c| !roots.iter().any(|r| r.as_ref() == c.as_ref()))
            .collect();
        if ca_is_root {
            if !intermediates.is_empty() {
                return Err(invalid(
                    &chain_path,
                    format!(
                        "{CA_CERT_FILE} is a root, but the chain holds other certificates \
                         that are not in {ROOT_CERT_FILE}"
                    ),
                ));
            }
        } else {
            match intermediates
                .iter()
                .position(|c| c.as_ref() == ca_der.as_ref())
            {
                Some(0) => {}
                Some(_) => {
                    return Err(invalid(
                        &chain_path,
                        format!("must start with the certificate of {CA_CERT_FILE}"),
                    ));
                }
                None => intermediates.insert(0, ca_der.clone()),
            }
            verify_path(&intermediates, &roots).map_err(|reason| {
                let path = if chain_text.is_some() {
                    &chain_path
                } else {
                    &cert_path
                };
                invalid(path, reason)
            })?;
        }

        let issuer = Issuer::from_ca_cert_der(&ca_der, key)
            .map_err(|e| invalid(&cert_path, format!("cannot use it as an issuer: {e}")))?;
        Ok(CaSigner {
            issuer,
            intermediates: intermediates.iter().map(|d| pem::encode_cert(d)).collect(),
            roots: roots.iter().map(|d| pem::encode_cert(d)).collect(),
            root_ders: roots,
        })
    }

    /// Signs a workload certificate for `identity` from a PKCS#10 CSR (PEM).
    ///
    /// The CSR's signature must verify (proof the requester holds the key); its subject, SANs
    /// and requested extensions are ignored. The leaf has exactly one URI SAN (`identity`),
    /// EKU serverAuth+clientAuth, KU digitalSignature+keyEncipherment, is not a CA, is valid
    /// from now − [`backdate`]`(ttl)` to now + `ttl`, and has a random serial.
    ///
    /// Returns the chain as Istio's CA does: leaf first, then each intermediate, then the
    /// root(s) last in one entry; every entry ends with a newline.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<Vec<String>, CaError> {
        if ttl.is_zero() {
            return Err(CaError::InvalidRequest("TTL must be positive".into()));
        }
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| CaError::BadCsr(format!("no PEM CERTIFICATE REQUEST block: {e}")))?;
        let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
            .map_err(|e| CaError::BadCsr(format!("cannot parse the PKCS#10 request: {e}")))?;
        csr.verify_signature().map_err(|_| CaError::CsrSignature)?;
        let public_key =
            SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
                .map_err(|e| CaError::BadCsr(format!("unsupported public key: {e}")))?;

        let mut params = leaf_params(ttl)?;
        params.subject_alt_names =
            vec![SanType::URI(identity.to_string().try_into().map_err(
                |e| CaError::InvalidRequest(format!("identity {identity}: {e}")),
            )?)];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let mut chain = Vec::with_capacity(self.intermediates.len() + 2);
        chain.push(pem::encode_cert(leaf.der()));
        chain.extend(self.intermediates.iter().cloned());
        chain.push(self.root_pem());
        Ok(chain)
    }

    /// A TLS serving certificate with the given DNS and IP SANs (EKU serverAuth) and a fresh
    /// ECDSA P-256 key, for the control plane's own gRPC endpoint.
    pub fn issue_serving_cert(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<ServingCert, CaError> {
        if dns_names.is_empty() && ips.is_empty() {
            return Err(CaError::InvalidRequest(
                "a serving certificate needs at least one DNS name or IP address".into(),
            ));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Signing(format!("generating a key: {e}")))?;
        let mut params = leaf_params(ttl)?;
        if let Some(first) = dns_names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        for name in dns_names {
            let ia5 = name
                .as_str()
                .try_into()
                .map_err(|e| CaError::InvalidRequest(format!("DNS name {name:?}: {e}")))?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let mut chain_pem = pem::encode_cert(cert.der());
        for i in &self.intermediates {
            chain_pem.push_str(i);
        }
        Ok(ServingCert {
            chain_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// A CRL signed by this CA revoking the certificates with these serial numbers (hex, as
    /// `/config_dump` shows them; `:` separators allowed), valid for `validity`: what an
    /// operator mounts at ztunnel's `CRL_PATH`.
    pub fn revocation_list(
        &self,
        serials_hex: &[&str],
        validity: Duration,
    ) -> Result<String, CaError> {
        let now = SystemTime::now();
        let revoked_certs = serials_hex
            .iter()
            .map(|hex| {
                let bytes = parse_hex(hex).ok_or_else(|| {
                    CaError::InvalidRequest(format!("serial {hex:?} is not a hex number"))
                })?;
                Ok(rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: now.into(),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: (now - CLOCK_SKEW).into(),
            next_update: (now + validity).into(),
            crl_number: random_serial(),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(|e| CaError::Signing(format!("signing the CRL: {e}")))?;
        crl.pem()
            .map_err(|e| CaError::Signing(format!("encoding the CRL: {e}")))
    }

    /// The root certificate(s), PEM (what workloads and the CA client trust).
    pub fn root_pem(&self) -> String {
        self.roots.concat()
    }

    /// The root certificate(s), DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.root_ders
    }

    /// The intermediates between an issued leaf and the root, PEM each (empty when the
    /// signing certificate is the root).
    pub fn intermediates_pem(&self) -> &[String] {
        &self.intermediates
    }

    /// Writes the CA into `dir` in the plug-in layout (key 0600, atomically per file).
    fn persist(&self, dir: &Path) -> Result<(), CaError> {
        fs::create_dir_all(dir).map_err(|e| CaError::WriteFile {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let signing = self
            .intermediates
            .first()
            .cloned()
            .unwrap_or_else(|| self.roots[0].clone());
        let chain = if self.intermediates.is_empty() {
            signing.clone()
        } else {
            format!("{}{}", self.intermediates.concat(), self.root_pem())
        };
        write_file(
            &dir.join(CA_KEY_FILE),
            self.issuer.key().serialize_pem().as_bytes(),
            0o600,
        )?;
        write_file(&dir.join(CERT_CHAIN_FILE), chain.as_bytes(), 0o644)?;
        write_file(&dir.join(ROOT_CERT_FILE), self.root_pem().as_bytes(), 0o644)?;
        // ca-cert.pem last: its presence marks a complete directory.
        write_file(&dir.join(CA_CERT_FILE), signing.as_bytes(), 0o644)
    }
}

/// Parameters shared by every leaf: empty subject, not a CA, KU for TLS, validity
/// `[now - CLOCK_SKEW, now + ttl]`, random serial, authority key identifier.
fn leaf_params(ttl: Duration) -> Result<CertificateParams, CaError> {
    let now = SystemTime::now();
    let not_after = now
        .checked_add(ttl)
        .ok_or_else(|| CaError::InvalidRequest(format!("TTL {ttl:?} is too large")))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = (now - backdate(ttl)).into();
    params.not_after = not_after.into();
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// 128 random bits, positive and without a leading zero byte (RFC 5280 §4.1.2.2).
/// `0a1b…` or `0a:1b:…` as bytes.
fn parse_hex(hex: &str) -> Option<Vec<u8>> {
    let digits: String = hex.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return None;
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(digits.get(i..i + 2)?, 16).ok())
        .collect()
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Checks that each certificate of `chain` is signed by the next, and the last by a root.
fn verify_path(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) -> Result<(), String> {
    for (i, der) in chain.iter().enumerate() {
        let cert = parse(der)?;
        if let Some(next) = chain.get(i + 1) {
            let issuer = parse(next)?;
            cert.verify_signature(Some(issuer.public_key()))
                .map_err(|_| {
                    format!(
                        "certificate #{} ({}) is not signed by the next one ({})",
                        i + 1,
                        cert.subject(),
                        issuer.subject()
                    )
                })?;
        } else {
            let signed_by_root = roots.iter().any(|r| {
                parse(r)
                    .map(|root| cert.verify_signature(Some(root.public_key())).is_ok())
                    .unwrap_or(false)
            });
            if !signed_by_root {
                return Err(format!(
                    "the chain ends with {} which is not signed by any certificate in \
                     {ROOT_CERT_FILE}",
                    cert.subject()
                ));
            }
        }
    }
    Ok(())
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, String> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| e.to_string())
}

fn read_file(path: &Path) -> Result<String, CaError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CaError::MissingFile {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(CaError::ReadFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

fn certs_in(text: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs = pem::certs(text).map_err(|reason| CaError::InvalidFile {
        path: path.to_path_buf(),
        reason: format!("bad PEM: {reason}"),
    })?;
    if certs.is_empty() {
        return Err(CaError::InvalidFile {
            path: path.to_path_buf(),
            reason: "no PEM CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

fn parse_cert<'a>(
    der: &'a CertificateDer<'_>,
    path: &Path,
) -> Result<X509Certificate<'a>, CaError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| CaError::InvalidFile {
            path: path.to_path_buf(),
            reason: format!("certificate does not parse: {e}"),
        })
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |e: std::io::Error| CaError::WriteFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let tmp = path.with_extension("pem.tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)?;
    // The umask may have narrowed or (for the key) must not widen the mode.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;

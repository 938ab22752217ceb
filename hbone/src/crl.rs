//! Certificate revocation (Istio's `CRL_PATH`).
//!
//! [`Revocations`] is a live, shared set of X.509 CRLs. While it holds any:
//! * every HBONE handshake, on both sides, checks the peer's whole chain against them (a CRL is
//!   used only when its signature verifies against the issuing CA; a certificate whose issuer
//!   has no CRL is allowed, as Istio does);
//! * a refused handshake is counted ([`Revocations::rejections`]);
//! * [`Revocations::replace`] installs a new set and tells every open HBONE connection, which
//!   closes at once if its peer's leaf certificate is now listed (matched by issuer name and
//!   serial; the file is the operator's, so its signatures are checked only in handshakes).
//!
//! Reading and watching the file is the caller's job; [`parse_pem`] turns its text into a
//! [`CrlSet`] or an error naming the bad block.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use tokio::sync::watch;
use webpki::{CertRevocationList, OwnedCertRevocationList};

/// Parsed CRLs.
#[derive(Debug, Default)]
pub struct CrlSet {
    crls: Vec<CertRevocationList<'static>>,
}

impl CrlSet {
    /// Number of CRLs (one per issuing CA, normally).
    pub fn len(&self) -> usize {
        self.crls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.crls.is_empty()
    }

    pub(crate) fn lists(&self) -> Vec<&CertRevocationList<'static>> {
        self.crls.iter().collect()
    }

    /// Whether `cert` (a leaf) is listed by a CRL of its issuer.
    fn lists_certificate(&self, cert: &CertificateDer<'_>) -> bool {
        with_issuer_and_serial(cert, |issuer, serial| {
            self.crls
                .iter()
                .any(|crl| crl.issuer() == issuer && matches!(crl.find_serial(serial), Ok(Some(_))))
        })
        .unwrap_or(false)
    }
}

/// Calls `f` with the leaf's issuer Name (without its SEQUENCE header, as CRLs keep it) and raw
/// serial; `None` when they cannot be read.
fn with_issuer_and_serial<T>(
    cert: &CertificateDer<'_>,
    f: impl FnOnce(&[u8], &[u8]) -> T,
) -> Option<T> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let issuer = der_contents(parsed.tbs_certificate.issuer.as_raw())?;
    Some(f(issuer, parsed.tbs_certificate.raw_serial()))
}

/// The contents of one DER element (its tag and length stripped).
fn der_contents(element: &[u8]) -> Option<&[u8]> {
    let first = *element.get(1)?;
    let header = if first < 0x80 {
        2
    } else {
        2 + usize::from(first & 0x7f)
    };
    element.get(header..)
}

/// Why a CRL file was refused.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    #[error("no `X509 CRL` PEM block found")]
    Empty,
    #[error("PEM block {index} is not readable: {reason}")]
    Pem { index: usize, reason: String },
    #[error("CRL {index} cannot be parsed: {reason}")]
    Parse { index: usize, reason: String },
}

/// Parses every `-----BEGIN X509 CRL-----` block of `pem`. Any bad block refuses the whole
/// file, so a half-written update never replaces a good set.
pub fn parse_pem(pem: &[u8]) -> Result<CrlSet, CrlError> {
    let mut crls = Vec::new();
    for (index, der) in CertificateRevocationListDer::pem_slice_iter(pem).enumerate() {
        let index = index + 1;
        let der = der.map_err(|e| CrlError::Pem {
            index,
            reason: e.to_string(),
        })?;
        let owned =
            OwnedCertRevocationList::from_der(der.as_ref()).map_err(|e| CrlError::Parse {
                index,
                reason: format!("{e:?}"),
            })?;
        crls.push(CertRevocationList::from(owned));
    }
    if crls.is_empty() {
        return Err(CrlError::Empty);
    }
    Ok(CrlSet { crls })
}

/// Which side of a handshake refused a revoked peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// We were the client: the server's certificate was revoked.
    Client,
    /// We were the server: the client's certificate was revoked.
    Server,
}

#[derive(Debug)]
struct Inner {
    set: ArcSwap<CrlSet>,
    generation: watch::Sender<u64>,
    rejected_by_client: AtomicU64,
    rejected_by_server: AtomicU64,
    untracked_by_client: AtomicU64,
    untracked_by_server: AtomicU64,
}

/// A shared, replaceable set of CRLs (cheap to clone).
#[derive(Debug, Clone)]
pub struct Revocations {
    inner: Arc<Inner>,
}

impl Revocations {
    pub fn new(set: CrlSet) -> Self {
        Revocations {
            inner: Arc::new(Inner {
                set: ArcSwap::from_pointee(set),
                generation: watch::channel(0).0,
                rejected_by_client: AtomicU64::new(0),
                rejected_by_server: AtomicU64::new(0),
                untracked_by_client: AtomicU64::new(0),
                untracked_by_server: AtomicU64::new(0),
            }),
        }
    }

    /// The current set.
    pub fn current(&self) -> Arc<CrlSet> {
        self.inner.set.load_full()
    }

    /// Installs `set` and has every open connection re-check its peer.
    pub fn replace(&self, set: CrlSet) {
        self.inner.set.store(Arc::new(set));
        self.inner.generation.send_modify(|g| *g += 1);
    }

    /// Whether the current set lists this (leaf) certificate.
    pub fn is_revoked(&self, cert: &CertificateDer<'_>) -> bool {
        self.inner.set.load().lists_certificate(cert)
    }

    /// Handshakes refused because the peer's chain was revoked, by the side that refused.
    pub fn rejections(&self, side: Side) -> u64 {
        match side {
            Side::Client => &self.inner.rejected_by_client,
            Side::Server => &self.inner.rejected_by_server,
        }
        .load(Ordering::Relaxed)
    }

    pub(crate) fn count_rejection(&self, side: Side) {
        match side {
            Side::Client => &self.inner.rejected_by_client,
            Side::Server => &self.inner.rejected_by_server,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Connections whose peer certificate cannot be matched against later CRL updates (its
    /// issuer and serial are unreadable), so a revocation would not close them; by our side of
    /// the connection (`Client`: we dialed it).
    pub fn untracked(&self, side: Side) -> u64 {
        match side {
            Side::Client => &self.inner.untracked_by_client,
            Side::Server => &self.inner.untracked_by_server,
        }
        .load(Ordering::Relaxed)
    }

    /// Called for each established connection: counts it as untracked (and says so) when a
    /// later CRL update could not match its peer's certificate.
    pub(crate) fn track(&self, cert: &CertificateDer<'_>, side: Side) {
        if with_issuer_and_serial(cert, |_, _| ()).is_some() {
            return;
        }
        match side {
            Side::Client => &self.inner.untracked_by_client,
            Side::Server => &self.inner.untracked_by_server,
        }
        .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "peer certificate's issuer or serial is unreadable: a later CRL update cannot close \
             this connection (counted in istio_crl_untracked_connections_total)"
        );
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }
}

/// Resolves when the CRLs change; never, without CRLs.
pub(crate) async fn changed(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_contents_strips_short_and_long_headers() {
        assert_eq!(der_contents(&[0x30, 0x02, 1, 2]), Some(&[1u8, 2][..]));
        let long: Vec<u8> = [0x30, 0x81, 0x80].into_iter().chain([7u8; 128]).collect();
        assert_eq!(der_contents(&long).map(<[u8]>::len), Some(128));
        assert_eq!(der_contents(&[0x30]), None);
    }

    #[test]
    fn refuses_files_without_a_crl_or_with_a_broken_block() {
        assert!(matches!(parse_pem(b""), Err(CrlError::Empty)));
        assert!(matches!(
            parse_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            Err(CrlError::Empty)
        ));
        let garbage = b"-----BEGIN X509 CRL-----\nMIIBAAAA\n-----END X509 CRL-----\n";
        let err = parse_pem(garbage).expect_err("garbage is refused");
        assert!(err.to_string().contains("CRL 1"), "{err}");
    }

    #[test]
    fn an_unreadable_peer_certificate_is_counted_as_untracked() {
        let r = Revocations::new(CrlSet::default());
        r.track(&CertificateDer::from(vec![0x30, 0x00]), Side::Server);
        assert_eq!(r.untracked(Side::Server), 1);
        assert_eq!(r.untracked(Side::Client), 0);
    }
}

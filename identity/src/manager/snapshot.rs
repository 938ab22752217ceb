//! What [`super::CertManager::snapshot`] returns for `/config_dump`: per identity, its state
//! and certificates in the shape of Istio's ztunnel dump (which `istioctl ztunnel-config
//! certificates` parses), plus the manager's own details.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::Priority;
use crate::pem;

/// State of one identity, as shown in the debug snapshot.
///
/// Serializes as the plain string Istio's ztunnel shows in `/config_dump` (and `istioctl
/// ztunnel-config certificates` prints): `"Available"`, `"Initializing"` or
/// `"Unavailable: <reason>"` (the [`Display`](std::fmt::Display) form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertState {
    /// A valid certificate is held.
    Available,
    /// The first fetch has not completed yet.
    Initializing,
    /// No usable certificate; the reason of the last failure.
    Unavailable(String),
}

impl std::fmt::Display for CertState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertState::Available => f.write_str("Available"),
            CertState::Initializing => f.write_str("Initializing"),
            CertState::Unavailable(reason) => write!(f, "Unavailable: {reason}"),
        }
    }
}

impl Serialize for CertState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One certificate of a [`CertSnapshot`], in the shape of Istio's ztunnel `/config_dump`
/// (`{pem, serialNumber, validFrom, expirationTime}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertInfo {
    /// The certificate as PEM text. Serialized base64-encoded, as Istio does (so
    /// `jq -r .pem | base64 -d` gives the PEM back).
    #[serde(serialize_with = "ser_base64")]
    pub pem: String,
    /// The serial number in decimal (`istioctl` parses it in base 10); empty if unreadable.
    pub serial_number: String,
    /// `notBefore`, RFC 3339 (`""` if unreadable).
    #[serde(serialize_with = "ser_time_or_empty")]
    pub valid_from: Option<SystemTime>,
    /// `notAfter`, RFC 3339 (`""` if unreadable).
    #[serde(serialize_with = "ser_time_or_empty")]
    pub expiration_time: Option<SystemTime>,
}

impl CertInfo {
    /// Reads one DER certificate (never fails: unreadable fields stay empty).
    pub fn from_der(der: &[u8]) -> Self {
        let parsed = x509_parser::parse_x509_certificate(der).ok().map(|(_, c)| {
            let validity = c.validity();
            (
                c.tbs_certificate.serial.to_string(),
                unix_time(validity.not_before.timestamp()),
                unix_time(validity.not_after.timestamp()),
            )
        });
        let (serial_number, valid_from, expiration_time) = match parsed {
            Some((serial, from, to)) => (serial, Some(from), Some(to)),
            None => (String::new(), None, None),
        };
        CertInfo {
            pem: pem::encode_cert(der),
            serial_number,
            valid_from,
            expiration_time,
        }
    }
}

/// One identity in [`CertManager::snapshot`] (for `/config_dump`).
///
/// Serializes in the shape of Istio's ztunnel (`identity`, `state`, `certChain`, `rootCerts`,
/// camelCase), which `istioctl ztunnel-config certificates` parses, plus the manager's own
/// details (`serial`, `refreshAt`, `fetching`, `lastError`, `consecutiveFailures`), which
/// `istioctl` ignores.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertSnapshot {
    /// The SPIFFE URI.
    pub identity: String,
    pub state: CertState,
    /// The held certificate's leaf, then its intermediates (empty when none is held).
    pub cert_chain: Vec<CertInfo>,
    /// The trust roots that came with the held certificate.
    pub root_certs: Vec<CertInfo>,
    /// Hex serial number of the held leaf: the form [`crate::CaSigner::revocation_list`]
    /// takes.
    pub serial: Option<String>,
    /// Next scheduled refresh or retry.
    #[serde(serialize_with = "ser_time")]
    pub refresh_at: Option<SystemTime>,
    /// Priority of a queued or running fetch.
    pub fetching: Option<Priority>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
}

impl CertSnapshot {
    /// `notAfter` of the held leaf.
    pub fn not_after(&self) -> Option<SystemTime> {
        self.cert_chain.first().and_then(|c| c.expiration_time)
    }
}

fn ser_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&crate::time::rfc3339(*t)),
        None => s.serialize_none(),
    }
}

fn ser_time_or_empty<S: serde::Serializer>(
    t: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&crate::time::rfc3339(*t)),
        None => s.serialize_str(""),
    }
}

fn ser_base64<S: serde::Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    use base64::Engine;
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(text))
}

/// Seconds since the epoch (negative before it) as a `SystemTime`.
fn unix_time(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        std::time::UNIX_EPOCH + magnitude
    } else {
        std::time::UNIX_EPOCH - magnitude
    }
}

//! SPIFFE workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! This is the only identity form the mesh understands. Parsing is strict: the URI must have
//! exactly the five path segments `<td>/ns/<ns>/sa/<sa>`, none of them empty. Anything else is
//! rejected with an [`IdentityError`] that names the problem, so an operator can see why a peer
//! certificate or a policy principal was not accepted.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The URI scheme prefix of every SPIFFE identity.
pub const SPIFFE_PREFIX: &str = "spiffe://";
/// Trust domain assumed when the control plane leaves it empty.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Service account assumed when the control plane leaves it empty.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Longest identity we accept (URI SANs are bounded; this keeps hostile input cheap).
const MAX_IDENTITY_LEN: usize = 2048;

/// Why a string is not a SPIFFE workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("identity {0:?} does not start with \"spiffe://\"")]
    NotSpiffe(String),
    #[error(
        "identity {0:?} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    Malformed(String),
    #[error("identity {0:?} has an empty {1}")]
    EmptySegment(String, &'static str),
    #[error("identity is {0} bytes long, more than the {MAX_IDENTITY_LEN} allowed")]
    TooLong(usize),
    #[error("identity {0:?} contains a character not allowed in a SPIFFE id")]
    BadCharacter(String),
}

/// A SPIFFE workload identity. Cheap to clone (shared strings).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: Arc<str>,
    namespace: Arc<str>,
    service_account: Arc<str>,
}

impl Identity {
    /// Builds an identity from its parts, applying the mesh defaults for empty trust domain
    /// and service account (as the control plane does for workloads).
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        let td = if trust_domain.is_empty() {
            DEFAULT_TRUST_DOMAIN
        } else {
            trust_domain
        };
        let sa = if service_account.is_empty() {
            DEFAULT_SERVICE_ACCOUNT
        } else {
            service_account
        };
        Identity {
            trust_domain: td.into(),
            namespace: namespace.into(),
            service_account: sa.into(),
        }
    }

    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        if s.len() > MAX_IDENTITY_LEN {
            return Err(IdentityError::TooLong(s.len()));
        }
        let rest = s
            .strip_prefix(SPIFFE_PREFIX)
            .ok_or_else(|| IdentityError::NotSpiffe(s.to_string()))?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(IdentityError::Malformed(s.to_string()));
        };
        for (value, what) in [
            (td, "trust domain"),
            (ns, "namespace"),
            (sa, "service account"),
        ] {
            if value.is_empty() {
                return Err(IdentityError::EmptySegment(s.to_string(), what));
            }
            if !value.bytes().all(is_spiffe_segment_byte) {
                return Err(IdentityError::BadCharacter(s.to_string()));
            }
        }
        Ok(Identity {
            trust_domain: td.into(),
            namespace: ns.into(),
            service_account: sa.into(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The identity without the `spiffe://` prefix, the form authorization principals use
    /// (`cluster.local/ns/shop/sa/cart`).
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// SPIFFE path segments and trust domains: unreserved URI characters only.
fn is_spiffe_segment_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%' | b'+' | b':')
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SPIFFE_PREFIX}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Identity {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Identity::parse(s)
    }
}

/// Formats a list of identities for error messages: `[a, b]`.
pub(crate) fn list(ids: &[Identity]) -> String {
    let parts: Vec<String> = ids.iter().map(ToString::to_string).collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let id = Identity::parse("spiffe://cluster.local/ns/shop/sa/cart").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "cart");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/cart");
        assert_eq!(id.principal(), "cluster.local/ns/shop/sa/cart");
    }

    #[test]
    fn rejects_malformed() {
        let cases = [
            ("", "not spiffe"),
            ("http://cluster.local/ns/a/sa/b", "not spiffe"),
            ("spiffe://cluster.local/ns/a/sa", "malformed"),
            ("spiffe://cluster.local/ns/a/sa/b/extra", "malformed"),
            ("spiffe://cluster.local/namespace/a/sa/b", "malformed"),
            ("spiffe://cluster.local/ns/a/serviceaccount/b", "malformed"),
            ("spiffe:///ns/a/sa/b", "empty"),
            ("spiffe://td/ns//sa/b", "empty"),
            ("spiffe://td/ns/a/sa/", "empty"),
            ("spiffe://td/ns/a b/sa/c", "character"),
            ("spiffe://td/ns/a/sa/c?x=1", "character"),
        ];
        for (input, why) in cases {
            let err = Identity::parse(input).expect_err(input);
            let msg = err.to_string();
            match why {
                "not spiffe" => assert!(matches!(err, IdentityError::NotSpiffe(_)), "{input}"),
                "malformed" => assert!(matches!(err, IdentityError::Malformed(_)), "{input}"),
                "empty" => assert!(matches!(err, IdentityError::EmptySegment(..)), "{input}"),
                _ => assert!(matches!(err, IdentityError::BadCharacter(_)), "{input}"),
            }
            assert!(msg.contains("identity"), "{msg}");
        }
        let long = format!("spiffe://td/ns/{}/sa/x", "a".repeat(5000));
        assert!(matches!(
            Identity::parse(&long),
            Err(IdentityError::TooLong(_))
        ));
    }

    #[test]
    fn defaults_apply_to_empty_parts() {
        let id = Identity::new("", "shop", "");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/default");
    }
}

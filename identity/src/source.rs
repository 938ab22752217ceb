//! Where credentials for the control plane come from: the root certificate that authenticates
//! its TLS server and the bearer token that authenticates us. Shared by the CA client and the
//! xDS client so both read `XDS_ROOT_CA`/`CA_ROOT_CA` and `AUTH_TOKEN` the same way.

use std::fmt;
use std::path::PathBuf;

use serde::{Serialize, Serializer};

/// The root certificate that authenticates the control plane's TLS server.
#[derive(Debug, Clone)]
pub enum RootCert {
    /// A PEM file, read when a connection is made (so a rotated
    /// `istio-ca-root-cert` ConfigMap is picked up on the next connection).
    File(PathBuf),
    /// Inline PEM text.
    Pem(String),
}

impl Serialize for RootCert {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RootCert::File(p) => s.serialize_str(&format!("file:{}", p.display())),
            RootCert::Pem(_) => s.serialize_str("inline PEM"),
        }
    }
}

/// Where the bearer token comes from. Literal tokens never appear in logs or dumps.
#[derive(Clone, Default)]
pub enum TokenSource {
    /// No `authorization` header.
    #[default]
    None,
    /// A file (a projected service-account token), re-read on every use because projected
    /// tokens rotate; surrounding whitespace is trimmed.
    File(PathBuf),
    /// A literal token.
    Literal(String),
}

impl TokenSource {
    /// ztunnel's `AUTH_TOKEN` rule: a path if that file exists, otherwise a literal token; an
    /// empty value means no token.
    pub fn from_env_value(value: &str) -> Self {
        if value.is_empty() {
            TokenSource::None
        } else if std::path::Path::new(value).is_file() {
            TokenSource::File(PathBuf::from(value))
        } else {
            TokenSource::Literal(value.to_string())
        }
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::None => f.write_str("None"),
            TokenSource::File(p) => f.debug_tuple("File").field(p).finish(),
            TokenSource::Literal(_) => f.write_str("Literal(<redacted>)"),
        }
    }
}

impl Serialize for TokenSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TokenSource::None => s.serialize_str("none"),
            TokenSource::File(p) => s.serialize_str(&format!("file:{}", p.display())),
            TokenSource::Literal(_) => s.serialize_str("literal:<redacted>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_token_rule_and_redaction() {
        assert!(matches!(TokenSource::from_env_value(""), TokenSource::None));
        assert!(matches!(
            TokenSource::from_env_value("/no/such/token/file"),
            TokenSource::Literal(_)
        ));
        let file = std::env::temp_dir().join(format!("token-{}", std::process::id()));
        std::fs::write(&file, "t").unwrap();
        assert!(matches!(
            TokenSource::from_env_value(file.to_str().unwrap()),
            TokenSource::File(_)
        ));
        std::fs::remove_file(file).unwrap();
        let literal = TokenSource::Literal("secret".into());
        assert!(!format!("{literal:?}").contains("secret"));
        assert!(!serde_json::to_string(&literal).unwrap().contains("secret"));
    }
}

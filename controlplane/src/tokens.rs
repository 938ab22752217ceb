//! Service-account tokens: the control plane mints and verifies its own.
//!
//! There is no Kubernetes API server (and so no TokenReview) here. Instead the control plane
//! signs JWTs shaped exactly like projected Kubernetes service-account tokens with a P-256 key
//! kept in the state directory, and the xDS and CA servers verify them locally:
//!
//! ```json
//! { "iss": "https://controlplane.local",
//!   "sub": "system:serviceaccount:<ns>:<sa>",
//!   "aud": ["istio-ca"], "iat": ..., "nbf": ..., "exp": ...,
//!   "kubernetes.io": { "namespace": "<ns>",
//!                      "serviceaccount": {"name": "<sa>", "uid": "..."},
//!                      "pod": {"name": "...", "uid": "..."},      (optional)
//!                      "node": {"name": "..."} } }                  (optional)
//! ```
//!
//! Tokens are `base64url(header).base64url(claims).base64url(signature)` with `alg` pinned to
//! `ES256` (the raw 64-byte `r‖s` signature of RFC 7518); anything else is rejected before the
//! signature is looked at, so `alg: none` and algorithm confusion cannot work.
//!
//! The servers only see the [`TokenAuthenticator`] trait. [`LocalTokens`] is the implementation
//! used today; an implementation that asks a real Kubernetes API server (TokenReview, with the
//! `clusterid` header choosing the cluster as istiod does) can plug in later without touching the
//! servers.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};

use crate::state_dir::{StateDir, StateDirError};

/// Issuer written into (and required from) tokens minted by [`LocalTokens`].
pub const DEFAULT_ISSUER: &str = "https://controlplane.local";
/// Audience Istio's CA and xDS server require (istiod's `TOKEN_AUDIENCES` default).
pub const ISTIO_CA_AUDIENCE: &str = "istio-ca";
/// Lifetime of a token when none is asked for (what ztunnel's projected token uses).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);
/// Clock skew tolerated on `exp` and `nbf`.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The only JWS algorithm accepted.
const ALG: &str = "ES256";
/// Tokens longer than this are refused without parsing.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Who called, as established from a verified token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallerIdentity {
    pub namespace: String,
    pub service_account: String,
    /// The pod the token is bound to, if any.
    pub pod: Option<String>,
    /// The node that pod runs on, if the token says.
    pub node: Option<String>,
}

impl CallerIdentity {
    /// `<namespace>/<service account>`, the form `--trusted-node-agent` uses.
    pub fn ns_sa(&self) -> String {
        format!("{}/{}", self.namespace, self.service_account)
    }
}

/// Why a bearer token was not accepted. Messages say what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send the `authorization: Bearer <service-account token>` header")]
    Missing,
    #[error("the authorization header is not of the form `Bearer <token>`")]
    NotBearer,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token algorithm {0:?} is not accepted (only ES256)")]
    Algorithm(String),
    #[error("token was signed by key {got:?}, not this control plane's key {want:?}")]
    UnknownKey { got: String, want: String },
    #[error("token signature does not verify against this control plane's key")]
    Signature,
    #[error("token issuer {got:?} is not {want:?}")]
    Issuer { got: String, want: String },
    #[error("token audiences {got:?} do not include any of {want:?}")]
    Audience { got: Vec<String>, want: Vec<String> },
    #[error("token expired at {exp} (now {now}, unix seconds)")]
    Expired { exp: u64, now: u64 },
    #[error("token is not valid before {nbf} (now {now}, unix seconds)")]
    NotYetValid { nbf: u64, now: u64 },
    #[error("token subject {sub:?} does not match its kubernetes.io claims ({detail})")]
    Inconsistent { sub: String, detail: String },
}

/// Verifies bearer tokens. The seam between the servers and the token authority: today
/// [`LocalTokens`]; a Kubernetes TokenReview client can implement it too.
pub trait TokenAuthenticator: Send + Sync {
    /// Verifies `bearer` (the token without the `Bearer ` prefix).
    fn authenticate(&self, bearer: &str) -> Result<CallerIdentity, AuthError>;
}

/// Extracts the token from gRPC metadata (`authorization: Bearer <token>`).
pub fn bearer_token(metadata: &tonic::metadata::MetadataMap) -> Result<&str, AuthError> {
    let value = metadata.get("authorization").ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::NotBearer)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

/// Why a token could not be minted, or the signing key not loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error("token signing key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("cannot generate a token signing key: {0}")]
    Generate(String),
    #[error("invalid token request: {0}")]
    Request(String),
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    pub namespace: String,
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
}

/// A `{name, uid}` reference inside the `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// The claims of a service-account token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    #[serde(deserialize_with = "audiences")]
    pub aud: Vec<String>,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

/// `aud` may be a string or an array of strings (RFC 7519 §4.1.3).
fn audiences<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Aud::deserialize(d)? {
        Aud::One(a) => vec![a],
        Aud::Many(v) => v,
    })
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
}

/// What to put into a new token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub namespace: String,
    pub service_account: String,
    pub pod: Option<String>,
    pub node: Option<String>,
    pub ttl: Duration,
    pub audiences: Vec<String>,
}

impl TokenRequest {
    /// A token for `ns/sa`, audience `istio-ca`, valid for [`DEFAULT_TOKEN_TTL`].
    pub fn new(namespace: &str, service_account: &str) -> Self {
        TokenRequest {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            pod: None,
            node: None,
            ttl: DEFAULT_TOKEN_TTL,
            audiences: vec![ISTIO_CA_AUDIENCE.to_string()],
        }
    }
}

/// Mints and verifies tokens with a P-256 key (the local token authority).
pub struct LocalTokens {
    key: EcdsaKeyPair,
    key_id: String,
    issuer: String,
    audiences: Vec<String>,
    rng: SystemRandom,
}

impl std::fmt::Debug for LocalTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTokens")
            .field("key_id", &self.key_id)
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl LocalTokens {
    /// A fresh, unpersisted key (tests).
    pub fn generate() -> Result<Self, TokenError> {
        let pkcs8 = generate_pkcs8()?;
        Self::from_pkcs8(&pkcs8).map_err(|reason| TokenError::Key {
            path: "(generated)".into(),
            reason,
        })
    }

    /// Loads the key from `<state-dir>/token-signing-key.pem`, generating and saving it first
    /// when missing. Tokens minted by one process verify in every other using the same dir.
    pub fn load_or_create(state: &StateDir) -> Result<Self, TokenError> {
        let path = state.token_key();
        let key_err = |reason: String| TokenError::Key {
            path: path.display().to_string(),
            reason,
        };
        let pkcs8 = match state.read_optional(&path)? {
            Some(pem) => decode_pem_key(&pem).map_err(key_err)?,
            None => {
                let pkcs8 = generate_pkcs8()?;
                state.write_atomic(&path, encode_pem_key(&pkcs8).as_bytes(), true)?;
                tracing::info!(path = %path.display(), "generated a new token signing key");
                pkcs8
            }
        };
        Self::from_pkcs8(&pkcs8).map_err(key_err)
    }

    /// Loads the key from a PEM file without creating anything.
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let key_err = |reason: String| TokenError::Key {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| key_err(e.to_string()))?;
        Self::from_pkcs8(&decode_pem_key(&pem).map_err(key_err)?).map_err(key_err)
    }

    fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|e| format!("not a P-256 PKCS#8 key: {e}"))?;
        let key_id = short_hash(key.public_key().as_ref());
        Ok(LocalTokens {
            key,
            key_id,
            issuer: DEFAULT_ISSUER.to_string(),
            audiences: vec![ISTIO_CA_AUDIENCE.to_string()],
            rng,
        })
    }

    /// Replaces the audiences a token must carry one of (default `["istio-ca"]`).
    pub fn with_audiences(mut self, audiences: Vec<String>) -> Self {
        self.audiences = audiences;
        self
    }

    /// The key id (`kid`) written into token headers.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Mints a token valid from now.
    pub fn mint(&self, request: &TokenRequest) -> Result<String, TokenError> {
        self.mint_at(request, unix_now())
    }

    /// Mints a token as if the time were `now` (unix seconds).
    pub fn mint_at(&self, request: &TokenRequest, now: u64) -> Result<String, TokenError> {
        for (value, what) in [
            (&request.namespace, "namespace"),
            (&request.service_account, "service account"),
        ] {
            if value.is_empty() || value.contains([':', '/', ' ']) {
                return Err(TokenError::Request(format!(
                    "{what} {value:?} must be a non-empty Kubernetes name"
                )));
            }
        }
        let object = |kind: &str, name: &str| ObjectRef {
            name: name.to_string(),
            uid: stable_uid(&format!("{kind}/{}/{name}", request.namespace)),
        };
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: format!(
                "system:serviceaccount:{}:{}",
                request.namespace, request.service_account
            ),
            aud: request.audiences.clone(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(request.ttl.as_secs()),
            kubernetes: KubernetesClaims {
                namespace: request.namespace.clone(),
                serviceaccount: object("ServiceAccount", &request.service_account),
                pod: request.pod.as_deref().map(|p| object("Pod", p)),
                node: request.node.as_deref().map(|n| ObjectRef {
                    name: n.to_string(),
                    uid: String::new(),
                }),
            },
        };
        self.sign_claims(&claims)
    }

    /// Signs arbitrary claims (tests use it to build inconsistent tokens).
    pub fn sign_claims(&self, claims: &Claims) -> Result<String, TokenError> {
        let header = Header {
            alg: ALG.to_string(),
            typ: Some("JWT".to_string()),
            kid: Some(self.key_id.clone()),
        };
        let signing_input = format!("{}.{}", encode_json(&header)?, encode_json(claims)?);
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|e| TokenError::Sign(e.to_string()))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    /// Verifies a token as of `now` (unix seconds) and returns its claims.
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed(format!(
                "{} bytes, more than {MAX_TOKEN_LEN}",
                token.len()
            )));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed(
                "expected three base64url parts separated by '.'".into(),
            ));
        };
        let header: Header = decode_json(h, "header")?;
        if header.alg != ALG {
            return Err(AuthError::Algorithm(header.alg));
        }
        if let Some(kid) = header.kid
            && kid != self.key_id
        {
            return Err(AuthError::UnknownKey {
                got: kid,
                want: self.key_id.clone(),
            });
        }
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|e| AuthError::Malformed(format!("signature is not base64url: {e}")))?;
        let signing_input = &token[..h.len() + 1 + p.len()];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(signing_input.as_bytes(), &signature)
            .map_err(|_| AuthError::Signature)?;
        let claims: Claims = decode_json(p, "claims")?;
        self.check_claims(&claims, now)?;
        Ok(claims)
    }

    fn check_claims(&self, claims: &Claims, now: u64) -> Result<(), AuthError> {
        if claims.iss != self.issuer {
            return Err(AuthError::Issuer {
                got: claims.iss.clone(),
                want: self.issuer.clone(),
            });
        }
        if !claims.aud.iter().any(|a| self.audiences.contains(a)) {
            return Err(AuthError::Audience {
                got: claims.aud.clone(),
                want: self.audiences.clone(),
            });
        }
        let skew = CLOCK_SKEW.as_secs();
        if now >= claims.exp.saturating_add(skew) {
            return Err(AuthError::Expired {
                exp: claims.exp,
                now,
            });
        }
        if claims.nbf > now.saturating_add(skew) {
            return Err(AuthError::NotYetValid {
                nbf: claims.nbf,
                now,
            });
        }
        let k = &claims.kubernetes;
        let inconsistent = |detail: String| AuthError::Inconsistent {
            sub: claims.sub.clone(),
            detail,
        };
        let Some(rest) = claims.sub.strip_prefix("system:serviceaccount:") else {
            return Err(inconsistent(
                "not system:serviceaccount:<ns>:<sa>".to_string(),
            ));
        };
        let Some((ns, sa)) = rest.split_once(':') else {
            return Err(inconsistent(
                "not system:serviceaccount:<ns>:<sa>".to_string(),
            ));
        };
        if ns.is_empty() || sa.is_empty() || ns != k.namespace || sa != k.serviceaccount.name {
            return Err(inconsistent(format!(
                "kubernetes.io says {}/{}",
                k.namespace, k.serviceaccount.name
            )));
        }
        Ok(())
    }
}

impl TokenAuthenticator for LocalTokens {
    fn authenticate(&self, bearer: &str) -> Result<CallerIdentity, AuthError> {
        let claims = self.verify_at(bearer, unix_now())?;
        let k = claims.kubernetes;
        Ok(CallerIdentity {
            namespace: k.namespace,
            service_account: k.serviceaccount.name,
            pod: k.pod.map(|p| p.name),
            node: k.node.map(|n| n.name),
        })
    }
}

fn encode_json<T: Serialize>(value: &T) -> Result<String, TokenError> {
    let json = serde_json::to_vec(value).map_err(|e| TokenError::Sign(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str, what: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| AuthError::Malformed(format!("{what} is not base64url: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| AuthError::Malformed(format!("{what} is not the expected JSON: {e}")))
}

/// Seconds since the unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn generate_pkcs8() -> Result<Vec<u8>, TokenError> {
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .map_err(|e| TokenError::Generate(e.to_string()))?;
    Ok(doc.as_ref().to_vec())
}

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

fn encode_pem_key(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from(PEM_BEGIN);
    out.push('\n');
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(PEM_END);
    out.push('\n');
    out
}

fn decode_pem_key(pem: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM text file".to_string())?;
    let start = text
        .find(PEM_BEGIN)
        .ok_or("no PRIVATE KEY block (PKCS#8 PEM expected)")?;
    let body = &text[start + PEM_BEGIN.len()..];
    let end = body.find(PEM_END).ok_or("unterminated PRIVATE KEY block")?;
    let b64: String = body[..end].split_whitespace().collect();
    STANDARD
        .decode(b64)
        .map_err(|e| format!("PRIVATE KEY block is not base64: {e}"))
}

/// Hex of the first 8 bytes of SHA-256.
pub(crate) fn short_hash(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A UUID-shaped id derived from `seed`, so the same object always gets the same uid.
fn stable_uid(seed: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
    let h: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip() {
        let der = generate_pkcs8().unwrap();
        assert_eq!(
            decode_pem_key(encode_pem_key(&der).as_bytes()).unwrap(),
            der
        );
        assert!(decode_pem_key(b"garbage").is_err());
    }

    #[test]
    fn bearer_header_parsing() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(bearer_token(&md), Err(AuthError::Missing));
        md.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&md), Err(AuthError::NotBearer));
        md.insert("authorization", "bearer  abc.def.ghi ".parse().unwrap());
        assert_eq!(bearer_token(&md), Ok("abc.def.ghi"));
    }

    #[test]
    fn uid_is_stable_and_uuid_shaped() {
        let a = stable_uid("Pod/default/sleep");
        assert_eq!(a, stable_uid("Pod/default/sleep"));
        assert_eq!(a.len(), 36);
        assert_ne!(a, stable_uid("Pod/default/httpbin"));
    }
}

//! Service-account tokens: minting, verification, tampering, persistence.

mod support;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use controlplane::state_dir::StateDir;
use controlplane::tokens::{
    AuthError, CallerIdentity, LocalTokens, TokenAuthenticator, TokenRequest, unix_now,
};

fn request() -> TokenRequest {
    TokenRequest {
        pod: Some("sleep-1".into()),
        node: Some("node-a".into()),
        ..TokenRequest::new("default", "sleep")
    }
}

#[test]
fn mint_and_verify_round_trip() {
    let t = LocalTokens::generate().unwrap();
    let token = t.mint(&request()).unwrap();
    assert_eq!(token.split('.').count(), 3);
    assert_eq!(
        t.authenticate(&token).unwrap(),
        CallerIdentity {
            namespace: "default".into(),
            service_account: "sleep".into(),
            pod: Some("sleep-1".into()),
            node: Some("node-a".into()),
        }
    );
    let claims = t.verify_at(&token, unix_now()).unwrap();
    assert_eq!(claims.sub, "system:serviceaccount:default:sleep");
    assert_eq!(claims.aud, ["istio-ca"]);
    assert_eq!(claims.iss, "https://controlplane.local");
    assert_eq!(claims.exp - claims.iat, 12 * 3600);
    assert_eq!(claims.kubernetes.serviceaccount.uid.len(), 36);

    // The header pins ES256 and names the key.
    let header = URL_SAFE_NO_PAD
        .decode(token.split('.').next().unwrap())
        .unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], t.key_id());
}

#[test]
fn tampering_is_rejected() {
    let t = LocalTokens::generate().unwrap();
    let token = t.mint(&request()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();

    // Payload claims another service account.
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = "system:serviceaccount:istio-system:ztunnel".into();
    claims["kubernetes.io"]["namespace"] = "istio-system".into();
    claims["kubernetes.io"]["serviceaccount"]["name"] = "ztunnel".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()),
        parts[2]
    );
    assert_eq!(t.authenticate(&forged), Err(AuthError::Signature));

    // Signature bits flipped.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[10] ^= 0x01;
    let bad_sig = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
    assert_eq!(t.authenticate(&bad_sig), Err(AuthError::Signature));

    // alg: none without a signature.
    let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{none}.{}.", parts[1]);
    assert_eq!(
        t.authenticate(&unsigned),
        Err(AuthError::Algorithm("none".into()))
    );

    // Another key.
    let other = LocalTokens::generate().unwrap();
    assert!(matches!(
        other.authenticate(&token),
        Err(AuthError::UnknownKey { .. })
    ));

    for garbage in ["", "a.b", "a.b.c.d", "!!!.???.***"] {
        assert!(
            matches!(t.authenticate(garbage), Err(AuthError::Malformed(_))),
            "{garbage:?}"
        );
    }
}

#[test]
fn audience_expiry_and_consistency() {
    let t = LocalTokens::generate().unwrap();
    let wrong_aud = t
        .mint(&TokenRequest {
            audiences: vec!["kubernetes.default.svc".into()],
            ..request()
        })
        .unwrap();
    assert!(matches!(
        t.authenticate(&wrong_aud),
        Err(AuthError::Audience { .. })
    ));
    // Several audiences, one of them ours.
    let multi = t
        .mint(&TokenRequest {
            audiences: vec!["kubernetes.default.svc".into(), "istio-ca".into()],
            ..request()
        })
        .unwrap();
    t.authenticate(&multi).unwrap();

    let now = unix_now();
    let short = TokenRequest {
        ttl: Duration::from_secs(600),
        ..request()
    };
    let expired = t.mint_at(&short, now - 3600).unwrap();
    assert!(matches!(
        t.authenticate(&expired),
        Err(AuthError::Expired { .. })
    ));
    // Within the clock skew allowance it still passes.
    let just_expired = t.mint_at(&short, now - 630).unwrap();
    t.authenticate(&just_expired).unwrap();
    let future = t.mint_at(&short, now + 3600).unwrap();
    assert!(matches!(
        t.authenticate(&future),
        Err(AuthError::NotYetValid { .. })
    ));

    // sub and kubernetes.io disagree.
    let mut claims = t.verify_at(&t.mint(&request()).unwrap(), now).unwrap();
    claims.sub = "system:serviceaccount:default:other".into();
    let inconsistent = t.sign_claims(&claims).unwrap();
    assert!(matches!(
        t.authenticate(&inconsistent),
        Err(AuthError::Inconsistent { .. })
    ));
    claims.sub = "alice".into();
    let not_sa = t.sign_claims(&claims).unwrap();
    assert!(matches!(
        t.authenticate(&not_sa),
        Err(AuthError::Inconsistent { .. })
    ));
    // Wrong issuer.
    let mut claims = t.verify_at(&t.mint(&request()).unwrap(), now).unwrap();
    claims.iss = "https://kubernetes.default.svc".into();
    assert!(matches!(
        t.authenticate(&t.sign_claims(&claims).unwrap()),
        Err(AuthError::Issuer { .. })
    ));

    // Names that cannot form a subject are refused at minting.
    assert!(t.mint(&TokenRequest::new("a:b", "sleep")).is_err());
    assert!(t.mint(&TokenRequest::new("default", "")).is_err());
}

#[test]
fn the_key_persists_in_the_state_dir() {
    let dir = support::temp_dir("tokens");
    let state = StateDir::open(&dir).unwrap();
    let a = LocalTokens::load_or_create(&state).unwrap();
    let token = a.mint(&request()).unwrap();
    let b = LocalTokens::load_or_create(&state).unwrap();
    assert_eq!(a.key_id(), b.key_id());
    b.authenticate(&token).unwrap();
    let c = LocalTokens::load(&state.token_key()).unwrap();
    c.authenticate(&token).unwrap();
    std::fs::write(state.token_key(), "garbage").unwrap();
    assert!(LocalTokens::load_or_create(&state).is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

//! The CA service over plain TCP: identity choice, impersonation, TTL, errors.

mod support;

use std::time::Duration;

use controlplane::ca_server::{CaConfig, IMPERSONATED_IDENTITY};
use controlplane::tokens::TokenRequest;
use prost_types::Struct;
use proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use support::*;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

/// A fresh P-256 key and a CSR with an empty subject and no SAN (the CA fills in the identity).
fn csr() -> String {
    csr_for(None)
}

/// A CSR asking for `uri` as its SPIFFE identity.
fn csr_for(uri: Option<&str>) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    if let Some(uri) = uri {
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    }
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn request(ttl: i64, metadata: Option<Struct>) -> IstioCertificateRequest {
    IstioCertificateRequest {
        csr: csr(),
        validity_duration: ttl,
        metadata,
    }
}

struct Leaf {
    uris: Vec<String>,
    lifetime: Duration,
}

fn leaf(resp: &IstioCertificateResponse) -> Leaf {
    assert!(resp.cert_chain.len() >= 2, "chain {:?}", resp.cert_chain);
    assert!(resp.cert_chain.iter().all(|p| p.ends_with('\n')));
    let (_, pem) = x509_parser::pem::parse_x509_pem(resp.cert_chain[0].as_bytes()).unwrap();
    let cert: X509Certificate<'_> = pem.parse_x509().unwrap();
    let uris = cert
        .subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let v = cert.validity();
    let secs = v.not_after.timestamp() - v.not_before.timestamp();
    Leaf {
        uris,
        lifetime: Duration::from_secs(secs as u64),
    }
}

fn impersonate(id: &str) -> Option<Struct> {
    Some(string_struct(&[(IMPERSONATED_IDENTITY, id)]))
}

#[tokio::test]
async fn issues_for_the_callers_identity_with_root_last() {
    let h = Harness::start(sample_snapshot()).await;
    let mut ca = h.ca_client(h.channel().await);
    let token = h.token("default", "sleep");
    let resp = ca
        .create_certificate(with_token(request(3600, None), Some(&token)))
        .await
        .unwrap()
        .into_inner();
    let l = leaf(&resp);
    assert_eq!(l.uris, ["spiffe://cluster.local/ns/default/sa/sleep"]);
    assert_eq!(resp.cert_chain.last().unwrap(), &h.root_pem);
}

#[tokio::test]
async fn ttl_is_honoured_defaulted_and_capped() {
    let config = CaConfig {
        max_ttl: Duration::from_secs(48 * 3600),
        ..CaConfig::default()
    };
    let h = Harness::start_with(sample_snapshot(), config).await;
    let mut ca = h.ca_client(h.channel().await);
    let token = h.token("default", "sleep");
    // Issued certificates are back-dated by the CA's clock-skew allowance; allow for it.
    let close = |got: Duration, want: u64| {
        let got = got.as_secs();
        assert!(
            got >= want && got <= want + 120,
            "lifetime {got}s, want ~{want}s"
        );
    };
    for (asked, want) in [
        (3600, 3600),
        (0, 24 * 3600),
        (-1, 24 * 3600),
        (30 * 24 * 3600, 48 * 3600),
    ] {
        let resp = ca
            .create_certificate(with_token(request(asked, None), Some(&token)))
            .await
            .unwrap()
            .into_inner();
        close(leaf(&resp).lifetime, want);
    }
}

#[tokio::test]
async fn impersonation_by_trusted_node_agent_on_the_right_node() {
    let h = Harness::start(sample_snapshot()).await;
    let mut ca = h.ca_client(h.channel().await);
    let zt = h
        .tokens
        .mint(&TokenRequest {
            pod: Some("ztunnel-a".into()),
            node: Some("node-a".into()),
            ..TokenRequest::new("istio-system", "ztunnel")
        })
        .unwrap();
    // sleep runs on node-a: allowed.
    let id = "spiffe://cluster.local/ns/default/sa/sleep";
    let resp = ca
        .create_certificate(with_token(request(3600, impersonate(id)), Some(&zt)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(leaf(&resp).uris, [id]);

    // httpbin runs on node-b: refused.
    let err = ca
        .create_certificate(with_token(
            request(
                3600,
                impersonate("spiffe://cluster.local/ns/default/sa/httpbin"),
            ),
            Some(&zt),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("node-a"), "{}", err.message());

    // Another trust domain: refused.
    let err = ca
        .create_certificate(with_token(
            request(
                3600,
                impersonate("spiffe://other.domain/ns/default/sa/sleep"),
            ),
            Some(&zt),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("trust domain"), "{}", err.message());

    // A token without a node: the placement check does not apply.
    let zt_no_node = h.ztunnel_token();
    let id = "spiffe://cluster.local/ns/default/sa/httpbin";
    let resp = ca
        .create_certificate(with_token(
            request(3600, impersonate(id)),
            Some(&zt_no_node),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(leaf(&resp).uris, [id]);
}

#[tokio::test]
async fn impersonation_refused_for_untrusted_callers() {
    let h = Harness::start(sample_snapshot()).await;
    let mut ca = h.ca_client(h.channel().await);
    let foo = h.token("istio-system", "foo");
    let err = ca
        .create_certificate(with_token(
            request(
                3600,
                impersonate("spiffe://cluster.local/ns/default/sa/sleep"),
            ),
            Some(&foo),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message()
            .contains("caller istio-system/foo is not a trusted node agent"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn bad_requests_and_tokens() {
    let h = Harness::start(sample_snapshot()).await;
    let mut ca = h.ca_client(h.channel().await);
    let token = h.token("default", "sleep");

    let garbage = IstioCertificateRequest {
        csr: "-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n"
            .into(),
        validity_duration: 3600,
        metadata: None,
    };
    let err = ca
        .create_certificate(with_token(garbage, Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );

    let empty = IstioCertificateRequest::default();
    let err = ca
        .create_certificate(with_token(empty, Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let err = ca
        .create_certificate(with_token(request(3600, None), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // Expired an hour ago.
    let now = controlplane::tokens::unix_now();
    let expired = h
        .tokens
        .mint_at(
            &TokenRequest {
                ttl: Duration::from_secs(600),
                ..TokenRequest::new("default", "sleep")
            },
            now - 3600,
        )
        .unwrap();
    let err = ca
        .create_certificate(with_token(request(3600, None), Some(&expired)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{}", err.message());

    let signer = Some(string_struct(&[("CertSigner", "custom")]));
    let err = ca
        .create_certificate(with_token(request(3600, signer), Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn csr_for_another_identity_is_refused_and_a_matching_one_accepted() {
    let h = Harness::start(sample_snapshot()).await;
    let mut client = h.ca_client(h.channel().await);
    let token = h.token("default", "sleep");
    let mut req = request(3600, None);
    req.csr = csr_for(Some("spiffe://cluster.local/ns/kube-system/sa/admin"));
    let err = client
        .create_certificate(with_token(req, Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("sa/admin") && err.message().contains("default/sleep"),
        "{}",
        err.message()
    );
    let mut req = request(3600, None);
    req.csr = csr_for(Some("spiffe://cluster.local/ns/default/sa/sleep"));
    let resp = client
        .create_certificate(with_token(req, Some(&token)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        leaf(&resp).uris,
        ["spiffe://cluster.local/ns/default/sa/sleep"]
    );
}

#[tokio::test]
async fn impersonation_uses_pod_placement_even_before_the_pod_has_an_ip() {
    // A pod being created (CNI ADD in progress) is scheduled but has no IP, so it is not a
    // workload yet; its placement still comes from the Pod object.
    let mut snapshot = sample_snapshot();
    snapshot.pod_placement.insert(
        "node-a".into(),
        [("default".to_string(), "newcomer".to_string())].into(),
    );
    let h = Harness::start(snapshot).await;
    let mut ca = h.ca_client(h.channel().await);
    let zt = h
        .tokens
        .mint(&TokenRequest {
            node: Some("node-a".into()),
            ..TokenRequest::new("istio-system", "ztunnel")
        })
        .unwrap();
    let id = "spiffe://cluster.local/ns/default/sa/newcomer";
    let resp = ca
        .create_certificate(with_token(request(3600, impersonate(id)), Some(&zt)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(leaf(&resp).uris, [id]);
    // With placement known, a pod that is not on this node is still refused.
    let err = ca
        .create_certificate(with_token(
            request(
                3600,
                impersonate("spiffe://cluster.local/ns/default/sa/sleep"),
            ),
            Some(&zt),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

//! Disconnects, control-plane restarts, stalls, backoff and TLS.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use proto::{ADDRESS_TYPE_URL as ADDRESS, AUTHORIZATION_TYPE_URL as AUTHZ};
use support::*;
use tonic::Status;
use xds::{RootCert, TerminationReason, TokenSource};

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Answers an initial request the way istiod does: resources whose version
/// differs from (or is missing in) `initial_resource_versions`, and every
/// initial name it does not have as removed.
fn istiod_reply(
    req: &DeltaDiscoveryRequest,
    nonce: &str,
    state: &[(&str, &str)],
    make: fn(&str, &str) -> proto::envoy::service::discovery::v3::Resource,
) -> DeltaDiscoveryResponse {
    let irv = &req.initial_resource_versions;
    let resources = state
        .iter()
        .filter(|(n, v)| irv.get(*n).map(String::as_str) != Some(*v))
        .map(|(n, v)| make(n, v))
        .collect();
    let mut removed: Vec<&str> = irv
        .keys()
        .map(String::as_str)
        .filter(|n| !state.iter().any(|(s, _)| s == n))
        .collect();
    removed.sort();
    resp(&req.type_url, nonce, resources, &removed)
}

#[tokio::test]
async fn dropped_connection_reconnects_with_exactly_the_held_versions() {
    let mut server = AdsServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let (client, addrs, pols) = spawn_client(config(&proxy.url()));
    let mut conn = server.accept().await;
    conn.initial(&[ADDRESS, AUTHZ]).await;
    let (a, b) = ("Kubernetes//Pod/ns/a", "Kubernetes//Pod/ns/b");
    conn.send(resp(
        ADDRESS,
        "a1",
        vec![
            addr_res(a, "1"),
            addr_res(b, "7"),
            garbage_res(ADDRESS, "Kubernetes//Pod/ns/bad"),
        ],
        &[],
    ));
    assert!(conn.recv().await.error_detail.is_some());
    conn.send(resp(AUTHZ, "p1", vec![authz_res("ns/p", "3")], &[]));
    assert_ack(&conn.recv().await, AUTHZ, "p1");
    tokio::time::timeout(WAIT, client.ready()).await.unwrap();

    // One more (large) response, and the connection dies while it is in
    // flight: the client may have received all of it, part of it or nothing.
    let big = (0..5000)
        .map(|i| addr_res(&format!("Kubernetes//Pod/ns/big-{i:04}"), "1"))
        .collect();
    conn.send(resp(ADDRESS, "a2", big, &[]));
    proxy.kill_all();
    // Whatever the client managed to apply is what it must report.
    let mut conn = server.accept().await;
    let held_addrs: HashMap<String, String> = addrs.versions().into_iter().collect();
    let reqs = conn.initial(&[ADDRESS, AUTHZ]).await;
    assert!(
        reqs.iter().all(|r| r.node.is_some()),
        "node again on a new stream"
    );
    assert!(
        reqs.iter().all(|r| r.resource_names_subscribe.is_empty()),
        "still wildcard"
    );
    assert_eq!(reqs[0].initial_resource_versions, held_addrs);
    assert!(held_addrs.get(a).is_some_and(|v| v == "1"));
    assert!(held_addrs.get(b).is_some_and(|v| v == "7"));
    assert!(!held_addrs.contains_key("Kubernetes//Pod/ns/bad"));
    assert_eq!(reqs[1].initial_resource_versions, map(&[("ns/p", "3")]));
    assert_eq!(
        pols.names(),
        vec!["ns/p"],
        "state kept across the disconnect"
    );
    let dump = client.dump();
    assert!(dump.last_termination.is_some());
    assert!(dump.streams_opened >= 2);
    assert!(client.is_ready(), "readiness survives reconnects");
}

#[tokio::test]
async fn restarted_server_with_different_state_converges() {
    let mut server = AdsServer::start().await;
    let (client, addrs, pols) = spawn_client(config(&server.url()));
    let (a, b, c, d) = (
        "Kubernetes//Pod/ns/a",
        "Kubernetes//Pod/ns/b",
        "Kubernetes//Pod/ns/c",
        "Kubernetes//Pod/ns/d",
    );
    let mut conn = server.accept().await;
    let reqs = conn.initial(&[ADDRESS, AUTHZ]).await;
    let old_addrs = [(a, "1"), (b, "1"), (c, "1")];
    conn.send(istiod_reply(&reqs[0], "a1", &old_addrs, addr_res));
    conn.recv().await;
    conn.send(istiod_reply(&reqs[1], "p1", &[("ns/p", "1")], authz_res));
    conn.recv().await;
    assert_eq!(addrs.names(), vec![a, b, c]);
    let batches_before = addrs.batches.lock().len();

    // The control plane restarts (a rotation status) with other state.
    conn.fail(Status::unavailable("transport is closing"));
    let mut conn = server.accept().await;
    let reqs = conn.initial(&[ADDRESS, AUTHZ]).await;
    assert_eq!(reqs[0].initial_resource_versions, map(&old_addrs));
    let new_addrs = [(a, "1"), (c, "2"), (d, "1")];
    conn.send(istiod_reply(&reqs[0], "a1", &new_addrs, addr_res));
    assert_ack(&conn.recv().await, ADDRESS, "a1");
    conn.send(istiod_reply(&reqs[1], "p1", &[("ns/q", "1")], authz_res));
    assert_ack(&conn.recv().await, AUTHZ, "p1");

    let want: BTreeMap<String, String> = new_addrs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(addrs.versions(), want);
    assert_eq!(pols.names(), vec!["ns/q"], "no stale leftovers");
    assert_eq!(client.dump().types[0].resources, want);
    // The unchanged resource was neither resent nor removed.
    let batches = addrs.batches.lock()[batches_before..].to_vec();
    assert_eq!(
        batches,
        vec![vec![format!("+{c}"), format!("+{d}"), format!("-{b}")]]
    );
}

#[tokio::test]
async fn stalled_server_is_abandoned_and_last_good_state_keeps_serving() {
    let mut server = AdsServer::start().await;
    let mut cfg = config(&server.url());
    cfg.timeouts.initial_response = Duration::from_millis(300);
    let (client, addrs, _pols) = spawn_client(cfg);
    let mut conn = server.accept().await;
    conn.initial(&[ADDRESS, AUTHZ]).await;
    conn.send(resp(
        ADDRESS,
        "a1",
        vec![addr_res("Kubernetes//Pod/ns/a", "1")],
        &[],
    ));
    conn.recv().await;
    conn.send(resp(AUTHZ, "p1", vec![], &[]));
    conn.recv().await;
    // A healthy stream is never timed out, however quiet.
    server.expect_no_conn(Duration::from_millis(600)).await;

    conn.fail(Status::unavailable("transport is closing"));
    // The next server accepts the stream but never answers.
    let mut stalled = server.accept().await;
    let reqs = stalled.initial(&[ADDRESS, AUTHZ]).await;
    assert_eq!(reqs[0].initial_resource_versions.len(), 1);
    let _next = server.accept().await;
    let dump = client.dump();
    let t = dump.last_termination.expect("terminated");
    assert_eq!(t.reason, TerminationReason::Error);
    assert!(t.detail.contains("wildcard"), "{}", t.detail);
    assert_eq!(addrs.names(), vec!["Kubernetes//Pod/ns/a"]);
    assert!(client.is_ready());
}

#[tokio::test]
async fn hung_connection_is_detected_by_http2_keepalive() {
    let mut server = AdsServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let mut cfg = config(&proxy.url());
    cfg.timeouts.keepalive_interval = Duration::from_millis(300);
    cfg.timeouts.keepalive_timeout = Duration::from_millis(300);
    let (client, addrs, _pols) = spawn_client(cfg);
    let mut conn = server.accept().await;
    conn.initial(&[ADDRESS, AUTHZ]).await;
    conn.send(resp(
        ADDRESS,
        "a1",
        vec![addr_res("Kubernetes//Pod/ns/a", "4")],
        &[],
    ));
    conn.recv().await;
    conn.send(resp(AUTHZ, "p1", vec![], &[]));
    conn.recv().await;
    // PINGs keep a live connection up.
    server.expect_no_conn(Duration::from_secs(1)).await;

    proxy.freeze_all();
    let mut conn2 = server.accept().await;
    let reqs = conn2.initial(&[ADDRESS, AUTHZ]).await;
    assert_eq!(
        reqs[0].initial_resource_versions,
        map(&[("Kubernetes//Pod/ns/a", "4")])
    );
    assert_eq!(addrs.names(), vec!["Kubernetes//Pod/ns/a"]);
    assert!(client.is_ready());
    drop(conn);
}

#[tokio::test(start_paused = true)]
async fn connection_errors_back_off_to_the_cap() {
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (client, _a, _p) = spawn_client(config(&format!("http://{addr}")));
    // 10 + 20 + ... + 10240 ms ≈ 20.5 s until the cap; then 15 s steps.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let dump = client.dump();
    assert_eq!(dump.current_backoff_ms, 15_000);
    assert!(!dump.connected);
    assert_eq!(dump.streams_opened, 0);
    assert_eq!(
        dump.last_termination.map(|t| t.reason),
        Some(TerminationReason::ConnectionError)
    );
    let json = serde_json::to_value(client.dump()).unwrap();
    assert_eq!(json["types"][0]["type_url"], ADDRESS);
    assert_eq!(json["types"][0]["mode"], "Wildcard");
    client.shutdown();
}

struct ServingCert {
    ca_pem: String,
    chain_pem: String,
    key_pem: String,
}

/// A CA and a serving certificate with DNS SAN `istiod.istio-system.svc`.
fn serving_cert() -> ServingCert {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["istiod.istio-system.svc".to_string()]).unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    ServingCert {
        ca_pem: ca_cert.pem(),
        chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

#[tokio::test]
async fn tls_with_root_file_and_server_name_override() {
    let certs = serving_cert();
    let mut server =
        AdsServer::start_with(Some((certs.chain_pem.clone(), certs.key_pem.clone()))).await;
    let dir = std::env::temp_dir().join(format!("xds-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let root_file = dir.join("root-cert.pem");
    std::fs::write(&root_file, &certs.ca_pem).unwrap();

    let server_addr = server.addr;
    let tls_config = |root: RootCert, name: &str| {
        let mut cfg = config(&format!("https://{server_addr}"));
        cfg.root_cert = Some(root);
        cfg.server_name = Some(name.to_string());
        cfg.token = TokenSource::Literal("jwt".into());
        cfg
    };

    // Wrong server name, then a root that did not sign the server: no stream.
    for cfg in [
        tls_config(RootCert::Pem(certs.ca_pem.clone()), "istiod.other.svc"),
        tls_config(
            RootCert::Pem(mesh_testing::TestCa::new("other").root_pem().to_string()),
            "istiod.istio-system.svc",
        ),
    ] {
        let (client, _a, _p) = spawn_client(cfg);
        eventually("a TLS connection error", || {
            client
                .dump()
                .last_termination
                .is_some_and(|t| t.reason == TerminationReason::ConnectionError)
        })
        .await;
        client.shutdown();
    }
    server.expect_no_conn(Duration::from_millis(100)).await;

    // The right root (from a file) and name.
    let (client, addrs, _p) = spawn_client(tls_config(
        RootCert::File(root_file),
        "istiod.istio-system.svc",
    ));
    let mut conn = server.accept().await;
    assert_eq!(conn.metadata.get("authorization").unwrap(), "Bearer jwt");
    conn.initial(&[ADDRESS, AUTHZ]).await;
    conn.send(resp(
        ADDRESS,
        "a1",
        vec![addr_res("Kubernetes//Pod/ns/a", "1")],
        &[],
    ));
    assert_ack(&conn.recv().await, ADDRESS, "a1");
    conn.send(resp(AUTHZ, "p1", vec![], &[]));
    assert_ack(&conn.recv().await, AUTHZ, "p1");
    tokio::time::timeout(WAIT, client.ready()).await.unwrap();
    assert_eq!(addrs.names(), vec!["Kubernetes//Pod/ns/a"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn build_checks_registration_against_config() {
    use xds::{BuildError, XdsClient};
    let cfg = config("http://127.0.0.1:1");
    let missing = XdsClient::builder(cfg.clone())
        .handler(ADDRESS, Store::<proto::istio::workload::Address>::default())
        .build();
    assert!(matches!(missing, Err(BuildError::MissingHandler(t)) if t == AUTHZ));
    let mut only_addr = cfg.clone();
    only_addr.wildcard_types = vec![ADDRESS.into()];
    let extra = XdsClient::builder(only_addr)
        .handler(ADDRESS, Store::<proto::istio::workload::Address>::default())
        .handler(
            AUTHZ,
            Store::<proto::istio::security::Authorization>::default(),
        )
        .build();
    assert!(matches!(extra, Err(BuildError::UnsubscribedHandler(t)) if t == AUTHZ));
    let mut bad = cfg.clone();
    bad.address = "istiod:15012".into();
    let err = XdsClient::builder(bad)
        .handler(ADDRESS, Store::<proto::istio::workload::Address>::default())
        .handler(
            AUTHZ,
            Store::<proto::istio::security::Authorization>::default(),
        )
        .build();
    assert!(matches!(err, Err(BuildError::Channel(_))));
}

#[tokio::test]
async fn shutdown_stops_the_task() {
    let mut server = AdsServer::start().await;
    let addrs = Store::<proto::istio::workload::Address>::default();
    let pols = Store::<proto::istio::security::Authorization>::default();
    let (client, task) = xds::XdsClient::builder(config(&server.url()))
        .handler(ADDRESS, addrs)
        .handler(AUTHZ, pols)
        .build()
        .unwrap();
    let handle = tokio::spawn(task.run());
    let mut conn = server.accept().await;
    conn.initial(&[ADDRESS, AUTHZ]).await;
    client.shutdown();
    tokio::time::timeout(WAIT, handle).await.unwrap().unwrap();
    assert!(!client.dump().connected);
    assert!(matches!(
        client.demand(ADDRESS, "x").await,
        Err(xds::DemandError::Stopped)
    ));
}

//! The delta ADS server over plain TCP: subscription semantics, pushes, nonces, status, auth.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use controlplane::Snapshot;
use controlplane::status::SyncState;
use controlplane::tokens::TokenRequest;
use proto::google::rpc::Status as RpcStatus;
use support::*;

#[tokio::test]
async fn wildcard_initial_responses_for_both_types_even_empty() {
    let h = Harness::start(sample_snapshot()).await;
    let mut s = XdsStream::ztunnel(h.channel().await, &h.ztunnel_token())
        .await
        .unwrap();
    let a = s.recv().await;
    assert_eq!(a.type_url, ADDR);
    assert_eq!(
        names(&a),
        [
            "Kubernetes//Pod/default/httpbin",
            "Kubernetes//Pod/default/sleep",
            "default/httpbin.default.svc.cluster.local"
        ]
    );
    assert!(a.resources.iter().all(|r| r.version.len() == 16));
    assert!(a.removed_resources.is_empty());
    let z = s.recv().await;
    assert_eq!(z.type_url, AUTHZ);
    assert!(z.resources.is_empty());
    assert_ne!(a.nonce, z.nonce);
    // Decodes as the message the type URL says.
    let any = a.resources[0].resource.as_ref().unwrap();
    let decoded: proto::istio::workload::Address = proto::unpack_any(any, ADDR).unwrap();
    assert!(decoded.r#type.is_some());
}

#[tokio::test]
async fn snapshot_changes_push_only_differences_address_first() {
    let h = Harness::start(sample_snapshot()).await;
    let mut s = XdsStream::ztunnel(h.channel().await, &h.ztunnel_token())
        .await
        .unwrap();
    let a = s.recv().await;
    let z = s.recv().await;
    s.send(ack(ADDR, &a.nonce)).await;
    s.send(ack(AUTHZ, &z.nonce)).await;
    h.wait_state(ZTUNNEL_NODE, AUTHZ, SyncState::Synced).await;

    // Change sleep's IP, delete httpbin's pod, add a policy.
    let mut next = sample_snapshot();
    let (k, v) = workload("default", "sleep", [10, 0, 0, 50], "sleep", "node-a");
    next.addresses.insert(k, v);
    next.addresses.remove("Kubernetes//Pod/default/httpbin");
    let (k, v) = policy("default", "allow-sleep");
    next.authorizations.insert(k, v);
    h.publish(next.clone());

    let a2 = s.recv().await;
    assert_eq!(a2.type_url, ADDR);
    assert_eq!(names(&a2), ["Kubernetes//Pod/default/sleep"]);
    assert_eq!(a2.removed_resources, ["Kubernetes//Pod/default/httpbin"]);
    let z2 = s.recv().await;
    assert_eq!(z2.type_url, AUTHZ);
    assert_eq!(names(&z2), ["default/allow-sleep"]);

    // Republishing an equal snapshot sends nothing.
    h.publish(next);
    s.silent_for(Duration::from_millis(300)).await;

    // Removing the policy: a removal only.
    let mut last = sample_snapshot();
    last.addresses.remove("Kubernetes//Pod/default/httpbin");
    let (k, v) = workload("default", "sleep", [10, 0, 0, 50], "sleep", "node-a");
    last.addresses.insert(k, v);
    h.publish(last);
    let z3 = s.recv().await;
    assert_eq!(z3.type_url, AUTHZ);
    assert!(z3.resources.is_empty());
    assert_eq!(z3.removed_resources, ["default/allow-sleep"]);
}

#[tokio::test]
async fn reconnect_with_initial_resource_versions_gets_only_differences() {
    let h = Harness::start(sample_snapshot()).await;
    let token = h.ztunnel_token();
    let mut s = XdsStream::ztunnel(h.channel().await, &token).await.unwrap();
    let a = s.recv().await;
    let held: HashMap<String, String> = a
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(s);

    // While disconnected: sleep changes, httpbin's pod goes away.
    let mut next = sample_snapshot();
    let (k, v) = workload("default", "sleep", [10, 0, 0, 51], "sleep", "node-a");
    next.addresses.insert(k, v);
    next.addresses.remove("Kubernetes//Pod/default/httpbin");
    h.publish(next);

    let mut first = request(ADDR);
    first.node = Some(node(ZTUNNEL_NODE, "istio-system"));
    first.initial_resource_versions = held;
    let mut s = XdsStream::open(h.channel().await, Some(&token), vec![first])
        .await
        .unwrap();
    let a = s.recv().await;
    assert_eq!(names(&a), ["Kubernetes//Pod/default/sleep"]);
    assert_eq!(a.removed_resources, ["Kubernetes//Pod/default/httpbin"]);
}

#[tokio::test]
async fn ack_nack_stale_and_status_view() {
    let h = Harness::start(sample_snapshot()).await;
    let mut s = XdsStream::ztunnel(h.channel().await, &h.ztunnel_token())
        .await
        .unwrap();
    let a = s.recv().await;
    let z = s.recv().await;
    // Nothing ACKed yet: STALE.
    let p = h.wait_state(ZTUNNEL_NODE, ADDR, SyncState::Stale).await;
    assert_eq!(p.state(AUTHZ), SyncState::Stale);
    assert_eq!(p.caller, "istio-system/ztunnel");
    assert!(p.peer.as_deref().unwrap().starts_with("127.0.0.1:"));
    assert!(p.connected_since.ends_with('Z'));

    s.send(ack(ADDR, &a.nonce)).await;
    let p = h.wait_state(ZTUNNEL_NODE, ADDR, SyncState::Synced).await;
    assert_eq!(p.state(AUTHZ), SyncState::Stale);

    // NACK the Authorization response.
    let mut nack = ack(AUTHZ, &z.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 0,
        message: "default/x: unsupported".into(),
        details: vec![],
    });
    s.send(nack).await;
    let p = h.wait_state(ZTUNNEL_NODE, AUTHZ, SyncState::Nacked).await;
    assert_eq!(
        p.types[AUTHZ].detail.nack_message.as_deref(),
        Some("default/x: unsupported")
    );
    let table = controlplane::status::render_table(&h.status.report());
    assert!(
        table.contains("NACKED") && table.contains("default/x: unsupported"),
        "{table}"
    );
    // A NACK is not answered.
    s.silent_for(Duration::from_millis(200)).await;

    // A push makes Address STALE again; ACKing the old nonce is stale and changes nothing.
    let mut next = sample_snapshot();
    next.addresses.remove("Kubernetes//Pod/default/httpbin");
    h.publish(next);
    let a2 = s.recv().await;
    assert_eq!(a2.removed_resources, ["Kubernetes//Pod/default/httpbin"]);
    h.wait_state(ZTUNNEL_NODE, ADDR, SyncState::Stale).await;
    s.send(ack(ADDR, &a.nonce)).await;
    s.silent_for(Duration::from_millis(200)).await;
    h.wait_state(ZTUNNEL_NODE, ADDR, SyncState::Stale).await;
    s.send(ack(ADDR, &a2.nonce)).await;
    h.wait_state(ZTUNNEL_NODE, ADDR, SyncState::Synced).await;

    // The proxy leaves the status view when its stream closes.
    drop(s);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !h.status.proxies_named(ZTUNNEL_NODE).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "proxy still listed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn on_demand_lookup_by_alias_and_unknown_key() {
    let h = Harness::start(sample_snapshot()).await;
    let mut nothing = request(ADDR);
    nothing.node = Some(node(ZTUNNEL_NODE, "istio-system"));
    nothing.resource_names_subscribe = vec!["*".into()];
    nothing.resource_names_unsubscribe = vec!["*".into()];
    let mut s = XdsStream::open(h.channel().await, Some(&h.ztunnel_token()), vec![nothing])
        .await
        .unwrap();
    let initial = s.recv().await;
    assert!(
        initial.resources.is_empty(),
        "subscribe-to-nothing got {initial:?}"
    );

    let mut lookup = request(ADDR);
    lookup.resource_names_subscribe = vec!["/10.0.0.5".into()];
    s.send(lookup).await;
    let r = s.recv().await;
    assert_eq!(names(&r), ["Kubernetes//Pod/default/sleep"]);
    assert_eq!(r.resources[0].aliases, ["/10.0.0.5"]);

    let mut vip = request(ADDR);
    vip.resource_names_subscribe = vec!["/10.96.0.10".into(), "/10.1.1.1".into()];
    s.send(vip).await;
    let r = s.recv().await;
    assert_eq!(names(&r), ["default/httpbin.default.svc.cluster.local"]);
    assert_eq!(r.resources[0].aliases, ["/10.96.0.10"]);
    assert_eq!(r.removed_resources, ["/10.1.1.1"]);

    // Only what was looked up is pushed on changes.
    let mut next = sample_snapshot();
    let (k, v) = workload("default", "httpbin", [10, 0, 0, 66], "httpbin", "node-b");
    next.addresses.insert(k, v);
    h.publish(next);
    s.silent_for(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn unknown_types_are_ignored_and_the_stream_lives_on() {
    let h = Harness::start(sample_snapshot()).await;
    let mut first = request("type.googleapis.com/envoy.config.cluster.v3.Cluster");
    first.node = Some(node(ZTUNNEL_NODE, "istio-system"));
    let mut s = XdsStream::open(h.channel().await, Some(&h.ztunnel_token()), vec![first])
        .await
        .unwrap();
    s.silent_for(Duration::from_millis(200)).await;
    s.send(request(ADDR)).await;
    assert_eq!(s.recv().await.type_url, ADDR);
}

#[tokio::test]
async fn authentication_and_identity_check() {
    let h = Harness::start(Snapshot::default()).await;
    let first = |id: &str, ns: &str| {
        let mut r = request(ADDR);
        r.node = Some(node(id, ns));
        vec![r]
    };

    let err = XdsStream::open(h.channel().await, None, first(ZTUNNEL_NODE, "istio-system"))
        .await
        .err()
        .expect("no token must fail");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("Bearer"), "{}", err.message());

    let err = XdsStream::open(
        h.channel().await,
        Some("not.a.token"),
        first(ZTUNNEL_NODE, "istio-system"),
    )
    .await
    .err()
    .expect("garbage token must fail");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // A token from another control plane's key.
    let other = controlplane::tokens::LocalTokens::generate().unwrap();
    let foreign = other
        .mint(&TokenRequest::new("istio-system", "ztunnel"))
        .unwrap();
    let err = XdsStream::open(
        h.channel().await,
        Some(&foreign),
        first(ZTUNNEL_NODE, "istio-system"),
    )
    .await
    .err()
    .expect("foreign token must fail");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let err = XdsStream::open(
        h.channel().await,
        Some(&h.ztunnel_token()),
        first(ZTUNNEL_NODE, "default"),
    )
    .await
    .err()
    .expect("namespace mismatch must fail");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("istio-system/ztunnel"),
        "{}",
        err.message()
    );

    let err = XdsStream::open(
        h.channel().await,
        Some(&h.ztunnel_token()),
        first("ztunnel~10.0.0.1~z.istio-system", "istio-system"),
    )
    .await
    .err()
    .expect("bad node id must fail");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("<type>~<ip>~<pod>.<namespace>~"),
        "{}",
        err.message()
    );

    let no_node = vec![request(ADDR)];
    let err = XdsStream::open(h.channel().await, Some(&h.ztunnel_token()), no_node)
        .await
        .err()
        .expect("missing node must fail");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn streams_end_when_the_snapshot_source_goes_away() {
    let mut h = Harness::start(sample_snapshot()).await;
    let mut s = XdsStream::ztunnel(h.channel().await, &h.ztunnel_token())
        .await
        .unwrap();
    s.recv().await;
    s.recv().await;
    drop(h.snapshots.take());
    let end = tokio::time::timeout(WAIT, s.rx.message()).await.unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
}

#[tokio::test]
async fn state_of_the_world_is_unimplemented() {
    let h = Harness::start(Snapshot::default()).await;
    let mut client = proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient::new(h.channel().await);
    let (_tx, rx) =
        tokio::sync::mpsc::channel::<proto::envoy::service::discovery::v3::DiscoveryRequest>(1);
    let err = client
        .stream_aggregated_resources(with_token(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            Some(&h.ztunnel_token()),
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}

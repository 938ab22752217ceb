use std::collections::HashMap;

use proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use proto::google::rpc::Status as RpcStatus;
use proto::istio::security::Authorization;
use proto::istio::workload::{Address, Workload, address};

use super::*;
use crate::Snapshot;

const ADDR: &str = proto::ADDRESS_TYPE_URL;
const AUTHZ: &str = proto::AUTHORIZATION_TYPE_URL;

fn workload(uid: &str, ip: [u8; 4], sa: &str) -> Address {
    Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: uid.into(),
            addresses: vec![ip.to_vec()],
            service_account: sa.into(),
            ..Default::default()
        })),
    }
}

fn snapshot(workloads: &[(&str, [u8; 4], &str)], policies: &[&str]) -> Indexed {
    let mut s = Snapshot::default();
    for (uid, ip, sa) in workloads {
        s.addresses.insert(uid.to_string(), workload(uid, *ip, sa));
    }
    for p in policies {
        s.authorizations.insert(
            p.to_string(),
            Authorization {
                name: p.to_string(),
                ..Default::default()
            },
        );
    }
    Indexed::build(&s)
}

fn req(type_url: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        ..Default::default()
    }
}

fn ack(type_url: &str, nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        response_nonce: nonce.into(),
        ..req(type_url)
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn wildcard_initial_then_incremental_pushes() {
    let idx = snapshot(
        &[("w1", [10, 0, 0, 1], "a"), ("w2", [10, 0, 0, 2], "b")],
        &[],
    );
    let mut s = StreamState::default();
    let (kind, r) = s.on_request(&req(ADDR), &idx);
    assert_eq!(kind, RequestKind::Initial);
    let r = r.unwrap();
    assert_eq!(names(&r), ["w1", "w2"]);
    assert!(r.resources.iter().all(|r| r.version.len() == 16));
    // Empty types still get an initial response.
    let (_, empty) = s.on_request(&req(AUTHZ), &idx);
    let empty = empty.unwrap();
    assert!(empty.resources.is_empty() && empty.removed_resources.is_empty());
    assert_ne!(empty.nonce, r.nonce);

    // w1 changes, w2 goes away, p1 appears: one response per type, Address first.
    let idx2 = snapshot(&[("w1", [10, 0, 0, 9], "a")], &["ns/p1"]);
    let pushes = s.on_snapshot(&idx2);
    assert_eq!(pushes.len(), 2);
    assert_eq!(pushes[0].type_url, ADDR);
    assert_eq!(names(&pushes[0]), ["w1"]);
    assert_eq!(pushes[0].removed_resources, ["w2"]);
    assert_eq!(pushes[1].type_url, AUTHZ);
    assert_eq!(names(&pushes[1]), ["ns/p1"]);
    // Nothing changed: nothing sent.
    assert!(s.on_snapshot(&idx2).is_empty());
}

#[test]
fn initial_resource_versions_skip_unchanged_and_remove_vanished() {
    let idx = snapshot(
        &[("w1", [10, 0, 0, 1], "a"), ("w2", [10, 0, 0, 2], "b")],
        &[],
    );
    let v1 = idx.addresses.get("w1").unwrap().version.clone();
    let mut s = StreamState::default();
    let mut r = req(ADDR);
    r.initial_resource_versions = HashMap::from([
        ("w1".to_string(), v1),
        ("w2".to_string(), "old".to_string()),
        ("gone".to_string(), "x".to_string()),
    ]);
    let (_, resp) = s.on_request(&r, &idx);
    let resp = resp.unwrap();
    assert_eq!(names(&resp), ["w2"]);
    assert_eq!(resp.removed_resources, ["gone"]);
}

#[test]
fn ack_nack_and_stale_nonces() {
    let idx = snapshot(&[("w1", [10, 0, 0, 1], "a")], &[]);
    let mut s = StreamState::default();
    let first = s.on_request(&req(ADDR), &idx).1.unwrap();
    let status = |s: &StreamState| s.statuses().next().unwrap().1.state();
    assert_eq!(status(&s), crate::status::SyncState::Stale);
    let (kind, resp) = s.on_request(&ack(ADDR, &first.nonce), &idx);
    assert_eq!((kind, resp), (RequestKind::Ack, None));
    assert_eq!(status(&s), crate::status::SyncState::Synced);

    let idx2 = snapshot(&[("w1", [10, 0, 0, 2], "a")], &[]);
    let push = s.on_snapshot(&idx2).remove(0);
    assert_eq!(status(&s), crate::status::SyncState::Stale);
    // An ACK of the old nonce is stale: ignored, still STALE.
    assert_eq!(
        s.on_request(&ack(ADDR, &first.nonce), &idx2),
        (RequestKind::Stale, None)
    );
    assert_eq!(status(&s), crate::status::SyncState::Stale);
    let mut nack = ack(ADDR, &push.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 0,
        message: "w1: bad address".into(),
        details: vec![],
    });
    let (kind, resp) = s.on_request(&nack, &idx2);
    assert_eq!(kind, RequestKind::Nack("w1: bad address".into()));
    assert!(resp.is_none());
    assert_eq!(status(&s), crate::status::SyncState::Nacked);
    let st = s.statuses().next().unwrap().1;
    assert_eq!(st.nack_message.as_deref(), Some("w1: bad address"));
}

#[test]
fn on_demand_by_alias_and_unknown_keys() {
    let idx = snapshot(&[("Kubernetes//Pod/default/a", [10, 0, 0, 5], "a")], &[]);
    let mut s = StreamState::default();
    // ztunnel's "subscribe to nothing".
    let mut nothing = req(ADDR);
    nothing.resource_names_subscribe = vec!["*".into()];
    nothing.resource_names_unsubscribe = vec!["*".into()];
    let initial = s.on_request(&nothing, &idx).1.unwrap();
    assert!(initial.resources.is_empty());

    let mut lookup = req(ADDR);
    lookup.resource_names_subscribe = vec!["/10.0.0.5".into(), "/10.9.9.9".into()];
    let (kind, resp) = s.on_request(&lookup, &idx);
    assert_eq!(kind, RequestKind::Subscribe);
    let resp = resp.unwrap();
    assert_eq!(names(&resp), ["Kubernetes//Pod/default/a"]);
    assert_eq!(resp.resources[0].aliases, ["/10.0.0.5"]);
    assert_eq!(resp.removed_resources, ["/10.9.9.9"]);

    // Changes of the looked-up workload are pushed; unrelated workloads are not.
    let idx2 = snapshot(
        &[
            ("Kubernetes//Pod/default/a", [10, 0, 0, 5], "changed"),
            ("Kubernetes//Pod/default/b", [10, 0, 0, 6], "b"),
        ],
        &[],
    );
    let pushes = s.on_snapshot(&idx2);
    assert_eq!(pushes.len(), 1);
    assert_eq!(names(&pushes[0]), ["Kubernetes//Pod/default/a"]);
    // The missing key appears later: pushed under its real name.
    let idx3 = snapshot(
        &[
            ("Kubernetes//Pod/default/a", [10, 0, 0, 5], "changed"),
            ("Kubernetes//Pod/default/c", [10, 9, 9, 9], "c"),
        ],
        &[],
    );
    let pushes = s.on_snapshot(&idx3);
    assert_eq!(names(&pushes[0]), ["Kubernetes//Pod/default/c"]);
    assert_eq!(pushes[0].resources[0].aliases, ["/10.9.9.9"]);

    // Unsubscribing stops pushes for it without a removal.
    let mut unsub = req(ADDR);
    unsub.resource_names_unsubscribe = vec!["/10.9.9.9".into()];
    assert_eq!(s.on_request(&unsub, &idx3), (RequestKind::Subscribe, None));
    let idx4 = snapshot(
        &[("Kubernetes//Pod/default/a", [10, 0, 0, 5], "changed")],
        &[],
    );
    assert!(s.on_snapshot(&idx4).is_empty());
}

#[test]
fn unknown_types_are_ignored() {
    let idx = snapshot(&[], &[]);
    let mut s = StreamState::default();
    let r = req("type.googleapis.com/envoy.config.cluster.v3.Cluster");
    assert_eq!(s.on_request(&r, &idx), (RequestKind::UnknownType, None));
    assert_eq!(s.statuses().count(), 0);
}

#[test]
fn nonces_are_unique() {
    let a = next_nonce();
    let b = next_nonce();
    assert_ne!(a, b);
}

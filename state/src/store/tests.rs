use proto::istio::workload as pb;

use super::*;
use crate::model::Visibility;
use crate::testutil::*;

fn add_wl(state: &MeshState, w: pb::Workload) {
    let uid = w.uid.clone();
    state.upsert_address(&uid, pb_address_workload(w)).unwrap();
}

fn add_svc(state: &MeshState, s: pb::Service) {
    let key = format!("{}/{}", s.namespace, s.hostname);
    state.upsert_address(&key, pb_address_service(s)).unwrap();
}

fn port_list(ports: &[(u32, u32)]) -> pb::PortList {
    pb::PortList {
        ports: ports
            .iter()
            .map(|(s, t)| pb::Port {
                service_port: *s,
                target_port: *t,
                app_protocol: 0,
            })
            .collect(),
    }
}

#[test]
fn workload_replace_updates_ip_and_endpoint_indexes() {
    let state = MeshState::default();
    let mut w = pb_workload("uid-a", "shop", &["10.0.0.1", "fd00::1"]);
    w.services.insert(
        "shop/cart.shop.svc.cluster.local".into(),
        port_list(&[(80, 8080)]),
    );
    add_wl(&state, w.clone());
    {
        let v = state.read();
        assert_eq!(v.workload_by_ip("", ip("10.0.0.1")).unwrap().uid, "uid-a");
        assert_eq!(v.workload_by_ip("", ip("fd00::1")).unwrap().uid, "uid-a");
        assert!(
            v.workload_by_ip("net2", ip("10.0.0.1")).is_none(),
            "network is part of the key"
        );
        let eps = v.endpoints("shop/cart.shop.svc.cluster.local");
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].workload_uid, "uid-a");
        assert_eq!(eps[0].port.get(&80), Some(&8080));
    }

    // Replace: new IP, different service.
    w.addresses = vec![ip_bytes("10.0.0.7")];
    w.services.clear();
    w.services
        .insert("shop/ui.shop.svc.cluster.local".into(), port_list(&[]));
    add_wl(&state, w);
    {
        let v = state.read();
        assert!(v.workload_by_ip("", ip("10.0.0.1")).is_none());
        assert!(v.workload_by_ip("", ip("fd00::1")).is_none());
        assert_eq!(v.workload_by_ip("", ip("10.0.0.7")).unwrap().uid, "uid-a");
        assert!(v.endpoints("shop/cart.shop.svc.cluster.local").is_empty());
        assert_eq!(v.endpoints("shop/ui.shop.svc.cluster.local").len(), 1);
        assert_eq!(v.workload_count(), 1);
    }

    assert!(state.remove_address("uid-a"));
    assert!(!state.remove_address("uid-a"));
    let v = state.read();
    assert!(v.workload_by_uid("uid-a").is_none());
    assert!(v.workload_by_ip("", ip("10.0.0.7")).is_none());
    assert!(v.endpoints("shop/ui.shop.svc.cluster.local").is_empty());
}

#[test]
fn host_network_workloads_are_not_found_by_ip() {
    let state = MeshState::default();
    let mut w = pb_workload("uid-host", "kube-system", &["192.168.1.10"]);
    w.network_mode = pb::NetworkMode::HostNetwork as i32;
    add_wl(&state, w);
    let v = state.read();
    assert!(v.workload_by_ip("", ip("192.168.1.10")).is_none());
    assert!(v.workload_by_uid("uid-host").is_some());
}

#[test]
fn shared_ip_last_writer_wins_and_removal_falls_back() {
    let state = MeshState::default();
    add_wl(&state, pb_workload("old", "shop", &["10.0.0.1"]));
    add_wl(&state, pb_workload("new", "shop", &["10.0.0.1"]));
    assert_eq!(
        state.read().workload_by_ip("", ip("10.0.0.1")).unwrap().uid,
        "new"
    );
    state.remove_address("new");
    assert_eq!(
        state.read().workload_by_ip("", ip("10.0.0.1")).unwrap().uid,
        "old"
    );
}

#[test]
fn workloads_by_pod_name_namespace_and_sa() {
    let state = MeshState::default();
    let mut a = pb_workload("Kubernetes//Pod/shop/cart-0", "shop", &["10.0.0.1"]);
    a.service_account = "cart".into();
    add_wl(&state, a);
    add_wl(
        &state,
        pb_workload("Kubernetes//Pod/shop/ui-0", "shop", &["10.0.0.2"]),
    );
    let v = state.read();
    assert_eq!(v.workloads_by_pod("cart-0", "shop", "cart").len(), 1);
    assert!(v.workloads_by_pod("cart-0", "shop", "other").is_empty());
    assert!(v.workloads_by_pod("cart-0", "other", "cart").is_empty());
    assert_eq!(
        v.workloads_by_pod("ui-0", "shop", "").len(),
        1,
        "empty SA means default"
    );
    assert_eq!(v.workloads_by_pod("ui-0", "shop", "default").len(), 1);
}

/// The pod and hostname indexes follow replacements and removals.
#[test]
fn pod_and_hostname_indexes_follow_updates() {
    let state = MeshState::default();
    let uid = "Kubernetes//Pod/shop/cart-0";
    let mut w = pb_workload(uid, "shop", &["10.0.0.1"]);
    w.service_account = "cart".into();
    add_wl(&state, w.clone());
    // Same uid, new pod name: only the new name finds it.
    w.name = "cart-renamed".into();
    add_wl(&state, w);
    {
        let v = state.read();
        assert!(v.workloads_by_pod("cart-0", "shop", "cart").is_empty());
        assert_eq!(v.workloads_by_pod("cart-renamed", "shop", "cart").len(), 1);
    }
    assert!(state.remove_address(uid));
    assert!(
        state
            .read()
            .workloads_by_pod("cart-renamed", "shop", "cart")
            .is_empty()
    );

    // One hostname in two namespaces: removing one leaves the other.
    let shared = "api.example.com";
    for ns in ["a", "b"] {
        let mut s = pb_service(ns, "api", &[], &[(80, 80)]);
        s.hostname = shared.into();
        add_svc(&state, s);
    }
    assert_eq!(
        state
            .read()
            .service_by_hostname(shared, "b")
            .unwrap()
            .namespace,
        "b"
    );
    assert!(state.remove_address(&format!("b/{shared}")));
    assert_eq!(
        state
            .read()
            .service_by_hostname(shared, "b")
            .unwrap()
            .namespace,
        "a"
    );
    assert!(state.remove_address(&format!("a/{shared}")));
    assert!(state.read().service_by_hostname(shared, "b").is_none());
}

#[test]
fn vip_tie_break_client_namespace_then_canonical_then_first() {
    let state = MeshState::new(StateOptions::default());
    add_svc(
        &state,
        pb_service("a", "first", &["10.96.0.1"], &[(80, 80)]),
    );
    add_svc(
        &state,
        pb_service("b", "second", &["10.96.0.1"], &[(80, 80)]),
    );
    let pick = |ns: &str| {
        state
            .read()
            .service_by_vip("", ip("10.96.0.1"), ns)
            .map(|s| s.name.clone())
    };
    assert_eq!(
        pick("zzz").as_deref(),
        Some("first"),
        "no preference: first added"
    );
    assert_eq!(
        pick("b").as_deref(),
        Some("second"),
        "client namespace wins"
    );

    let mut canon = pb_service("c", "canon", &["10.96.0.1"], &[(80, 80)]);
    canon.canonical = true;
    add_svc(&state, canon);
    assert_eq!(
        pick("zzz").as_deref(),
        Some("canon"),
        "canonical beats first"
    );
    assert_eq!(
        pick("a").as_deref(),
        Some("first"),
        "client namespace beats canonical"
    );

    // Replacing "first" with the same VIP keeps its position.
    add_svc(
        &state,
        pb_service("a", "first", &["10.96.0.1"], &[(81, 81)]),
    );
    assert_eq!(pick("a").as_deref(), Some("first"));
    state.remove_address("c/canon.c.svc.cluster.local");
    assert_eq!(pick("zzz").as_deref(), Some("first"));

    // Replacing "first" without the VIP unindexes it.
    add_svc(
        &state,
        pb_service("a", "first", &["10.96.0.2"], &[(81, 81)]),
    );
    assert_eq!(pick("a").as_deref(), Some("second"));
    assert!(
        state
            .read()
            .service_by_vip("", ip("10.96.0.2"), "x")
            .is_some()
    );
}

#[test]
fn preferred_namespace_option() {
    let state = MeshState::new(StateOptions {
        preferred_service_namespace: Some("b".into()),
    });
    let mut canon = pb_service("a", "canon", &["10.96.0.1"], &[(80, 80)]);
    canon.canonical = true;
    add_svc(&state, canon);
    add_svc(&state, pb_service("b", "pref", &["10.96.0.1"], &[(80, 80)]));
    let v = state.read();
    assert_eq!(
        v.service_by_vip("", ip("10.96.0.1"), "x").unwrap().name,
        "pref"
    );
    assert_eq!(
        v.service_by_vip("", ip("10.96.0.1"), "a").unwrap().name,
        "canon"
    );
}

#[test]
fn namespace_visibility() {
    let state = MeshState::default();
    let mut private = pb_service("shop", "private", &["10.96.0.9"], &[(80, 80)]);
    private.visibility = pb::service::Visibility::Namespace as i32;
    add_svc(&state, private);
    let v = state.read();
    assert!(v.service_by_vip("", ip("10.96.0.9"), "other").is_none());
    let s = v.service_by_vip("", ip("10.96.0.9"), "shop").unwrap();
    assert_eq!(s.visibility, Visibility::Namespace);
    assert!(
        v.service_by_hostname("private.shop.svc.cluster.local", "other")
            .is_none()
    );
    assert!(
        v.service_by_hostname("private.shop.svc.cluster.local", "shop")
            .is_some()
    );
}

#[test]
fn cidr_vips_longest_prefix() {
    let state = MeshState::default();
    let mut wide = pb_service("a", "wide", &[], &[(80, 80)]);
    wide.addresses.push(pb::NetworkAddress {
        network: String::new(),
        address: ip_bytes("10.10.0.0"),
        length: Some(16),
    });
    let mut narrow = pb_service("b", "narrow", &[], &[(80, 80)]);
    narrow.addresses.push(pb::NetworkAddress {
        network: String::new(),
        address: ip_bytes("10.10.5.0"),
        length: Some(24),
    });
    add_svc(&state, wide);
    add_svc(&state, narrow);
    let v = state.read();
    assert_eq!(
        v.service_by_vip("", ip("10.10.5.9"), "x").unwrap().name,
        "narrow"
    );
    assert_eq!(
        v.service_by_vip("", ip("10.10.6.9"), "x").unwrap().name,
        "wide"
    );
    assert!(v.service_by_vip("", ip("10.11.0.1"), "x").is_none());
    assert!(
        v.service_by_cidr_vip("other-net", ip("10.10.5.9"), "x")
            .is_none()
    );
    drop(v);
    state.remove_address("b/narrow.b.svc.cluster.local");
    assert_eq!(
        state
            .read()
            .service_by_vip("", ip("10.10.5.9"), "x")
            .unwrap()
            .name,
        "wide"
    );
}

#[test]
fn address_name_switching_kind_drops_the_old_entry() {
    let state = MeshState::default();
    add_wl(&state, pb_workload("shared-name", "shop", &["10.0.0.1"]));
    // Same resource name now carries a service (odd, but must not leave the workload behind).
    state
        .upsert_address(
            "shared-name",
            pb_address_service(pb_service("shop", "x", &["10.96.0.1"], &[])),
        )
        .unwrap();
    let v = state.read();
    assert!(v.workload_by_uid("shared-name").is_none());
    assert!(v.service("shop", "x.shop.svc.cluster.local").is_some());
    drop(v);
    assert!(state.remove_address("shared-name"));
    assert_eq!(state.read().service_count(), 0);
}

#[test]
fn bad_resource_changes_nothing() {
    let state = MeshState::default();
    add_wl(&state, pb_workload("uid-a", "shop", &["10.0.0.1"]));
    let mut bad = pb_workload("uid-a", "shop", &["10.0.0.2"]);
    bad.addresses.push(vec![1, 2, 3]);
    let err = state
        .upsert_address("uid-a", pb_address_workload(bad))
        .unwrap_err();
    assert_eq!(err.field(), "workload.addresses[1]");
    assert!(state.read().workload_by_ip("", ip("10.0.0.1")).is_some());
    assert_eq!(
        state.upsert_address("x", Address { r#type: None }),
        Err(ConversionError::EmptyAddress)
    );
}

#[test]
fn generation_counts_address_changes() {
    let state = MeshState::default();
    let rx = state.subscribe();
    add_wl(&state, pb_workload("uid-a", "shop", &["10.0.0.1"]));
    add_svc(&state, pb_service("shop", "s", &[], &[]));
    state.remove_address("uid-a");
    state.remove_address("nope");
    assert_eq!(
        *rx.borrow(),
        Generation {
            addresses: 3,
            policies: 0
        }
    );
}

#[test]
fn config_dump_shape() {
    let state = MeshState::default();
    let mut w = pb_workload("uid-a", "shop", &["10.0.0.1"]);
    w.tunnel_protocol = pb::TunnelProtocol::Hbone as i32;
    w.services.insert(
        "shop/s.shop.svc.cluster.local".into(),
        port_list(&[(80, 8080)]),
    );
    add_wl(&state, w);
    add_svc(&state, pb_service("shop", "s", &["10.96.0.1"], &[(80, 0)]));
    state
        .upsert_policy("shop/p", pb_policy("shop", "p"))
        .unwrap();
    let dump = state.config_dump();
    let wl = &dump["workloads"][0];
    assert_eq!(wl["uid"], "uid-a");
    assert_eq!(wl["addresses"][0], "10.0.0.1");
    assert_eq!(wl["protocol"], "HBONE");
    assert_eq!(wl["identity"], "spiffe://cluster.local/ns/shop/sa/default");
    assert_eq!(wl["clusterId"], "Kubernetes");
    assert_eq!(wl["networkMode"], "Standard");
    assert_eq!(wl["status"], "Healthy");
    assert_eq!(wl["capacity"], 1);
    assert_eq!(wl["services"]["shop/s.shop.svc.cluster.local"]["80"], 8080);
    let svc = &dump["services"][0];
    assert_eq!(svc["vips"][0], "/10.96.0.1");
    assert_eq!(svc["ports"]["80"], 0);
    assert_eq!(svc["visibility"], "Public");
    assert_eq!(svc["endpoints"]["uid-a"]["80"], 8080);
    let pol = &dump["policies"][0];
    assert_eq!(pol["name"], "p");
    assert_eq!(pol["scope"], "Global");
    assert_eq!(pol["action"], "Allow");
    assert_eq!(pol["dryRun"], false);
}

#[test]
fn services_of_and_workloads_on_node() {
    let state = MeshState::default();
    let mut w = pb_workload("uid-a", "shop", &["10.0.0.1"]);
    w.node = "node-a".into();
    w.services
        .insert("shop/s.shop.svc.cluster.local".into(), port_list(&[]));
    w.services
        .insert("shop/unknown.shop.svc.cluster.local".into(), port_list(&[]));
    add_wl(&state, w);
    add_svc(&state, pb_service("shop", "s", &[], &[]));
    let v = state.read();
    let wl = v.workload_by_uid("uid-a").unwrap();
    let svcs = v.services_of(&wl);
    assert_eq!(svcs.len(), 1);
    assert_eq!(svcs[0].name, "s");
    assert_eq!(v.workloads_on_node("node-a").len(), 1);
    assert!(v.workloads_on_node("node-b").is_empty());
}

//! Pod → Workload.

use controlplane::translate::TranslateOptions;
use proto::istio::workload::{NetworkMode, TunnelProtocol, WorkloadStatus, WorkloadType};

use crate::support::{ip, translate, translate_with, view, view_of, workload_of};

#[test]
fn pod_basic() {
    assert_snapshot!(view_of("pod_basic"));
}

#[test]
fn pod_basic_wire_values() {
    let (s, diags) = translate("pod_basic");
    assert!(diags.is_empty(), "{diags:?}");
    let uid = "Kubernetes//Pod/shop/cart-7d9f8b6c4-x2k9p";
    let w = workload_of(&s, uid);
    assert_eq!(w.uid, uid);
    assert_eq!(w.cluster_id, "Kubernetes");
    assert_eq!(w.name, "cart-7d9f8b6c4-x2k9p");
    assert_eq!(w.namespace, "shop");
    assert_eq!(w.addresses, vec![vec![10, 244, 1, 5]]);
    assert_eq!(
        w.trust_domain, "",
        "trust domain stays empty for cluster.local"
    );
    assert_eq!(w.network, "");
    assert_eq!(w.service_account, "cart");
    assert_eq!(w.node, "node-a");
    assert_eq!(w.tunnel_protocol, TunnelProtocol::Hbone as i32);
    assert_eq!(w.workload_type, WorkloadType::Pod as i32);
    assert_eq!(w.workload_name, "cart");
    assert_eq!(w.canonical_name, "cart");
    assert_eq!(w.canonical_revision, "v1");
    assert_eq!(w.status, WorkloadStatus::Healthy as i32);
    let ports = &w.services["shop/cart.shop.svc.cluster.local"].ports;
    assert_eq!(ports.len(), 1);
    assert_eq!((ports[0].service_port, ports[0].target_port), (80, 8080));
    // The service resource is named `<ns>/<hostname>`.
    assert!(s.addresses.contains_key("shop/cart.shop.svc.cluster.local"));
    assert_eq!(s.addresses.len(), 2);
    assert!(s.authorizations.is_empty());
}

#[test]
fn options_change_uid_cluster_trust_domain_and_network() {
    let opts = TranslateOptions {
        cluster_id: "east".into(),
        trust_domain: "example.org".into(),
        network: "net-a".into(),
        domain_suffix: "corp.internal".into(),
        ..Default::default()
    };
    let (s, _) = translate_with("pod_basic", &opts);
    let w = workload_of(&s, "east//Pod/shop/cart-7d9f8b6c4-x2k9p");
    assert_eq!(w.cluster_id, "east");
    assert_eq!(w.trust_domain, "example.org");
    assert_eq!(w.network, "net-a");
    assert!(w.services.contains_key("shop/cart.shop.svc.corp.internal"));
    let svc = crate::support::service_of(&s, "shop/cart.shop.svc.corp.internal");
    assert_eq!(svc.addresses[0].network, "net-a");
    assert_eq!(ip(&svc.addresses[0].address), "10.96.0.20");
}

#[test]
fn pod_redirection() {
    assert_snapshot!(view_of("pod_redirection"));
    let (s, _) = translate("pod_redirection");
    let tp = |n: &str| workload_of(&s, &format!("Kubernetes//Pod/default/{n}")).tunnel_protocol;
    assert_eq!(tp("enabled"), TunnelProtocol::Hbone as i32);
    assert_eq!(tp("pending"), TunnelProtocol::None as i32);
    assert_eq!(tp("not-captured"), TunnelProtocol::None as i32);
    assert_eq!(tp("native-tunnel"), TunnelProtocol::Hbone as i32);
}

#[test]
fn pod_status() {
    assert_snapshot!(view_of("pod_status"));
    let (s, _) = translate("pod_status");
    let status = |n: &str| workload_of(&s, &format!("Kubernetes//Pod/default/{n}")).status;
    assert_eq!(status("ready"), WorkloadStatus::Healthy as i32);
    assert_eq!(status("not-ready"), WorkloadStatus::Unhealthy as i32);
    assert_eq!(status("terminating"), WorkloadStatus::Unhealthy as i32);
    for skipped in ["no-ip", "succeeded", "failed"] {
        assert!(
            !s.addresses
                .contains_key(&format!("Kubernetes//Pod/default/{skipped}"))
        );
    }
    let dual = workload_of(&s, "Kubernetes//Pod/default/dual-stack");
    assert_eq!(
        dual.addresses.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![4, 16]
    );
}

#[test]
fn pod_host_network() {
    assert_snapshot!(view_of("pod_host_network"));
    let (s, _) = translate("pod_host_network");
    let w = workload_of(&s, "Kubernetes//Pod/monitoring/node-exporter-abcde");
    assert_eq!(w.network_mode, NetworkMode::HostNetwork as i32);
}

#[test]
fn pod_workload_names() {
    assert_snapshot!(view_of("pod_workload_names"));
    let (s, _) = translate("pod_workload_names");
    let names = |n: &str| {
        let w = workload_of(&s, &format!("Kubernetes//Pod/bookinfo/{n}"));
        (
            w.workload_name.as_str(),
            w.canonical_name.as_str(),
            w.canonical_revision.as_str(),
        )
    };
    assert_eq!(
        names("reviews-v2-5d8f6c7b9-abcde"),
        ("reviews-v2", "reviews-v2", "latest")
    );
    assert_eq!(
        names("ratings-6c4d9f7b8-qwert"),
        ("ratings", "ratings", "1.2")
    );
    assert_eq!(
        names("backup-28999140-zx9vq"),
        ("backup", "backup", "latest")
    );
    assert_eq!(names("migrate-h7k2p"), ("migrate", "migrate", "latest"));
    assert_eq!(names("db-0"), ("db", "mysql", "8"));
    assert_eq!(names("adopted"), ("adopted", "adopted", "latest"));
    assert_eq!(names("debug"), ("toolbox-workload", "toolbox", "canary"));
}

#[test]
fn pod_services() {
    assert_snapshot!(view_of("pod_services"));
    let (s, _) = translate("pod_services");
    let w = workload_of(&s, "Kubernetes//Pod/shop/web-0");
    let mut keys: Vec<_> = w.services.keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "shop/all-tiers.shop.svc.cluster.local",
            "shop/web-headless.shop.svc.cluster.local",
            "shop/web.shop.svc.cluster.local",
        ]
    );
    let web: Vec<_> = w.services["shop/web.shop.svc.cluster.local"]
        .ports
        .iter()
        .map(|p| (p.service_port, p.target_port))
        .collect();
    assert_eq!(web, [(80, 8080), (8443, 9443), (7000, 7000)]);
}

#[test]
fn snapshot_view_is_stable_across_runs() {
    let (a, _) = translate("pod_services");
    let (b, _) = translate("pod_services");
    assert_eq!(a, b);
    assert_eq!(view(&a), view(&b));
}

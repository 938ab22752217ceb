use std::collections::HashMap;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::model::{
    ApplicationTunnel, ApplicationTunnelProtocol, GatewayAddress, GatewayDestination, HealthStatus,
    LoadBalancer, LoadBalancerScope::*, Locality, NetworkAddress,
};
use crate::testutil::*;

fn at(uid: &str, region: &str, zone: &str, node: &str) -> Workload {
    let mut w = workload(uid, "shop", "s", &["10.0.0.1"]);
    w.locality = Locality {
        region: region.into(),
        zone: zone.into(),
        subzone: String::new(),
    };
    w.node = node.into();
    w
}

fn eps(ws: Vec<Workload>, ports: &[(u16, u16)]) -> Vec<(Arc<Workload>, PortMap)> {
    ws.into_iter()
        .map(|w| (Arc::new(w), ports.iter().copied().collect()))
        .collect()
}

fn svc_with(mode: LoadBalancerMode, prefs: Vec<LoadBalancerScope>) -> Service {
    let mut s = service("shop", "s", &["10.96.0.1"], &[(80, 8080)]);
    s.load_balancer = Some(LoadBalancer {
        routing_preferences: prefs,
        mode,
        health_policy: LoadBalancerHealthPolicy::OnlyHealthy,
    });
    s
}

fn uids(p: &[Picked]) -> Vec<&str> {
    let mut v: Vec<&str> = p.iter().map(|p| p.workload.uid.as_str()).collect();
    v.sort();
    v
}

#[test]
fn rank_table() {
    let src = at("src", "r1", "z1", "n1");
    let mut other_net = at("x", "r1", "z1", "n1");
    other_net.network = "net2".into();
    type Case = (
        &'static str,
        Vec<LoadBalancerScope>,
        Workload,
        (usize, bool),
    );
    let cases: Vec<Case> = vec![
        (
            "all match",
            vec![Region, Zone],
            at("e", "r1", "z1", "n9"),
            (2, true),
        ),
        (
            "zone differs",
            vec![Region, Zone],
            at("e", "r1", "z2", "n9"),
            (1, false),
        ),
        (
            "region differs stops the walk",
            vec![Region, Zone],
            at("e", "r2", "z1", "n9"),
            (0, false),
        ),
        ("node", vec![Node], at("e", "r9", "z9", "n1"), (1, true)),
        (
            "cluster (both default)",
            vec![Cluster],
            at("e", "", "", ""),
            (1, true),
        ),
        ("empty prefs", vec![], at("e", "r2", "z2", "n2"), (0, true)),
        // NETWORK first: a match is worth len-1, a mismatch does not stop the walk.
        (
            "network first, all match",
            vec![Network, Region, Zone],
            at("e", "r1", "z1", "n9"),
            (4, true),
        ),
        (
            "network first, same net other region",
            vec![Network, Region, Zone],
            at("e", "r2", "z1", "n9"),
            (2, false),
        ),
        (
            "network first, other net same locality",
            vec![Network, Region, Zone],
            other_net.clone(),
            (2, false),
        ),
        ("network only", vec![Network], other_net.clone(), (0, false)),
        (
            "network only match",
            vec![Network],
            at("e", "", "", ""),
            (1, true),
        ),
        (
            "network not first walks normally",
            vec![Region, Network, Zone],
            other_net,
            (1, false),
        ),
    ];
    for (name, prefs, ep, want) in cases {
        assert_eq!(rank(&prefs, &src, &ep), want, "{name}");
    }
}

#[test]
fn strict_keeps_only_full_matches() {
    let src = at("src", "r1", "z1", "n1");
    let svc = svc_with(LoadBalancerMode::Strict, vec![Node]);
    let endpoints = eps(
        vec![
            at("same-node", "r1", "z1", "n1"),
            at("other-node", "r1", "z1", "n2"),
        ],
        &[],
    );
    assert_eq!(uids(&candidates(&src, &svc, 80, &endpoints)), ["same-node"]);
    // internalTrafficPolicy: Local with no local endpoint ⇒ nothing.
    let remote_only = eps(vec![at("other-node", "r1", "z1", "n2")], &[]);
    assert!(candidates(&src, &svc, 80, &remote_only).is_empty());
    let mut rng = StdRng::seed_from_u64(1);
    assert!(pick_endpoint(&src, &svc, 80, &remote_only, &mut rng).is_none());
}

#[test]
fn failover_keeps_the_best_rank_only() {
    let src = at("src", "r1", "z1", "n1");
    let svc = svc_with(LoadBalancerMode::Failover, vec![Region, Zone]);
    let endpoints = eps(
        vec![
            at("same-zone", "r1", "z1", "n2"),
            at("same-region", "r1", "z2", "n3"),
            at("far", "r2", "z9", "n4"),
        ],
        &[],
    );
    assert_eq!(uids(&candidates(&src, &svc, 80, &endpoints)), ["same-zone"]);
    // Without the best one, fall over to the next rank.
    let endpoints = eps(
        vec![
            at("same-region", "r1", "z2", "n3"),
            at("far", "r2", "z9", "n4"),
        ],
        &[],
    );
    assert_eq!(
        uids(&candidates(&src, &svc, 80, &endpoints)),
        ["same-region"]
    );
    let endpoints = eps(vec![at("far", "r2", "z9", "n4")], &[]);
    assert_eq!(uids(&candidates(&src, &svc, 80, &endpoints)), ["far"]);
}

#[test]
fn standard_mode_ignores_preferences() {
    let src = at("src", "r1", "z1", "n1");
    let svc = svc_with(LoadBalancerMode::Standard, vec![Region, Zone]);
    let endpoints = eps(
        vec![at("near", "r1", "z1", "n2"), at("far", "r2", "z9", "n4")],
        &[],
    );
    assert_eq!(
        uids(&candidates(&src, &svc, 80, &endpoints)),
        ["far", "near"]
    );
}

#[test]
fn health_filtering_and_allow_all() {
    let src = at("src", "", "", "");
    let mut sick = at("sick", "", "", "");
    sick.status = HealthStatus::Unhealthy;
    let endpoints = eps(vec![sick, at("ok", "", "", "")], &[]);
    let mut svc = service("shop", "s", &["10.96.0.1"], &[(80, 8080)]);
    assert_eq!(uids(&candidates(&src, &svc, 80, &endpoints)), ["ok"]);
    svc.load_balancer = Some(LoadBalancer {
        health_policy: LoadBalancerHealthPolicy::AllowAll,
        ..Default::default()
    });
    assert_eq!(
        uids(&candidates(&src, &svc, 80, &endpoints)),
        ["ok", "sick"]
    );
}

#[test]
fn target_port_resolution_and_named_ports() {
    let src = at("src", "", "", "");
    // Service port 80 → named target (0): only endpoints with their own mapping qualify.
    let named = service("shop", "s", &["10.96.0.1"], &[(80, 0)]);
    let mut endpoints = eps(vec![at("mapped", "", "", "")], &[(80, 8081)]);
    endpoints.extend(eps(vec![at("unmapped", "", "", "")], &[]));
    endpoints.extend(eps(vec![at("zero-mapped", "", "", "")], &[(80, 0)]));
    let c = candidates(&src, &named, 80, &endpoints);
    assert_eq!(uids(&c), ["mapped"]);
    assert_eq!(c[0].target_port, 8081);

    // Numeric service target: endpoint mapping still wins, else the service's.
    let numeric = service("shop", "s", &["10.96.0.1"], &[(80, 9090)]);
    let c = candidates(&src, &numeric, 80, &endpoints);
    let ports: HashMap<&str, u16> = c
        .iter()
        .map(|p| (p.workload.uid.as_str(), p.target_port))
        .collect();
    assert_eq!(ports["mapped"], 8081);
    assert_eq!(ports["unmapped"], 9090);
    assert_eq!(ports["zero-mapped"], 9090);

    // Application tunnel: a port the service does not declare is kept as is.
    let mut tunnel = at("tunnel", "", "", "");
    tunnel.application_tunnel = Some(ApplicationTunnel {
        protocol: ApplicationTunnelProtocol::Proxy,
        port: Some(15088),
    });
    let endpoints = eps(vec![tunnel, at("plain", "", "", "")], &[]);
    let c = candidates(&src, &named, 15008, &endpoints);
    assert_eq!(uids(&c), ["tunnel"]);
    assert_eq!(c[0].target_port, 15008);
}

#[test]
fn unaddressable_endpoints_dropped_unless_behind_a_gateway() {
    let src = at("src", "", "", "");
    let svc = service("shop", "s", &["10.96.0.1"], &[(80, 8080)]);
    let mut bare = at("bare", "", "", "");
    bare.addresses.clear();
    let mut dns = bare.clone();
    dns.uid = "dns".into();
    dns.hostname = "db.example.com".into();
    let mut remote = bare.clone();
    remote.uid = "remote".into();
    remote.network = "net2".into();
    remote.network_gateway = Some(GatewayAddress {
        destination: GatewayDestination::Address(NetworkAddress::new("net2", ip("1.2.3.4"))),
        hbone_mtls_port: 15008,
    });
    let endpoints = eps(vec![bare, dns, remote], &[]);
    assert_eq!(
        uids(&candidates(&src, &svc, 80, &endpoints)),
        ["dns", "remote"]
    );
}

#[test]
fn capacity_weighted_choice() {
    let src = at("src", "", "", "");
    let svc = service("shop", "s", &["10.96.0.1"], &[(80, 8080)]);
    let mut heavy = at("heavy", "", "", "");
    heavy.capacity = 3;
    let mut never = at("never", "", "", "");
    never.capacity = 0;
    let endpoints = eps(vec![heavy, at("light", "", "", ""), never], &[]);
    let mut rng = StdRng::seed_from_u64(42);
    let n = 8000;
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..n {
        let p = pick_endpoint(&src, &svc, 80, &endpoints, &mut rng).unwrap();
        *counts.entry(p.workload.uid.clone()).or_default() += 1;
    }
    assert_eq!(counts.get("never"), None, "capacity 0 is never picked");
    let heavy_share = f64::from(counts["heavy"]) / f64::from(n);
    // Expected 0.75; binomial σ ≈ 0.005, so ±0.03 is a > 5σ bound.
    assert!(
        (heavy_share - 0.75).abs() < 0.03,
        "heavy share {heavy_share}"
    );

    // Only zero-capacity endpoints ⇒ nothing to pick.
    let mut zero = at("zero", "", "", "");
    zero.capacity = 0;
    assert!(pick_endpoint(&src, &svc, 80, &eps(vec![zero], &[]), &mut rng).is_none());
}

#[test]
fn same_seed_same_pick() {
    let src = at("src", "", "", "");
    let svc = service("shop", "s", &["10.96.0.1"], &[(80, 8080)]);
    let endpoints = eps(
        (0..10).map(|i| at(&format!("e{i}"), "", "", "")).collect(),
        &[],
    );
    let a = pick_endpoint(&src, &svc, 80, &endpoints, &mut StdRng::seed_from_u64(7));
    let b = pick_endpoint(&src, &svc, 80, &endpoints, &mut StdRng::seed_from_u64(7));
    assert_eq!(a, b);
}

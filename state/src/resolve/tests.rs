use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::model::{
    GatewayDestination, HealthStatus, IpFamilies, LoadBalancer, LoadBalancerMode,
    NamespacedHostname, NetworkAddress, WeightedWaypoint,
};
use crate::store::MeshState;
use crate::testutil::*;

const CART: &str = "shop/cart.shop.svc.cluster.local";
const WAYPOINT: &str = "shop/waypoint.shop.svc.cluster.local";

fn waypoint_ref() -> GatewayAddress {
    GatewayAddress {
        destination: GatewayDestination::Hostname(NamespacedHostname::new(
            "shop",
            "waypoint.shop.svc.cluster.local",
        )),
        hbone_mtls_port: 15008,
    }
}

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A small mesh; returns the state and the client workload.
fn mesh() -> (MeshState, Workload) {
    let st = MeshState::default();
    let client = workload("client", "shop", "client", &["10.0.0.1"]);
    st.insert_workload("client", client.clone());

    let mut cart = service("shop", "cart", &["10.96.5.5"], &[(8080, 9090)]);
    cart.subject_alt_names = vec![
        "spiffe://cluster.local/ns/shop/sa/cart-san".into(),
        "not-an-identity".into(),
    ];
    st.insert_service(CART, cart);
    st.insert_workload(
        "cart-0",
        with_service(
            workload("cart-0", "shop", "cart", &["10.20.0.11"]),
            CART,
            &[],
        ),
    );

    st.insert_service(
        "shop/plain",
        service("shop", "plain", &["10.96.6.6"], &[(80, 8080)]),
    );
    st.insert_workload(
        "plain-0",
        tcp(with_service(
            workload("plain-0", "shop", "plain", &["10.20.0.12"]),
            "shop/plain.shop.svc.cluster.local",
            &[],
        )),
    );

    // A service behind a waypoint, the waypoint service and its pod.
    let mut reviews = service("shop", "reviews", &["10.96.7.7"], &[(80, 9080)]);
    reviews.waypoint = Some(waypoint_ref());
    st.insert_service("shop/reviews", reviews);
    let mut wp_svc = service("shop", "waypoint", &["10.96.9.9"], &[(15008, 15008)]);
    wp_svc.subject_alt_names = vec!["spiffe://cluster.local/ns/shop/sa/wp-san".into()];
    st.insert_service(WAYPOINT, wp_svc);
    st.insert_workload(
        "waypoint-0",
        with_service(
            workload("waypoint-0", "shop", "waypoint", &["10.20.0.50"]),
            WAYPOINT,
            &[],
        ),
    );

    // A pod with a workload waypoint.
    let mut pod = workload("wp-pod", "shop", "pod", &["10.20.0.60"]);
    pod.waypoint = Some(waypoint_ref());
    st.insert_workload("wp-pod", pod);

    let mut pass = service("shop", "pass", &["10.96.8.8"], &[(80, 80)]);
    pass.load_balancer = Some(LoadBalancer {
        mode: LoadBalancerMode::Passthrough,
        ..Default::default()
    });
    st.insert_service("shop/pass", pass);

    st.insert_service(
        "shop/empty",
        service("shop", "empty", &["10.96.4.4"], &[(80, 80)]),
    );
    let mut sick = with_service(
        workload("sick-0", "shop", "sick", &["10.20.0.13"]),
        "shop/empty.shop.svc.cluster.local",
        &[],
    );
    sick.status = HealthStatus::Unhealthy;
    st.insert_workload("sick-0", sick);

    (st, client)
}

fn resolve(st: &MeshState, src: &Workload, dst: &str) -> Decision {
    let mut rng = StdRng::seed_from_u64(3);
    resolve_outbound(&st.read(), src, sock(dst), &mut rng)
}

fn id(s: &str) -> Identity {
    Identity::parse(s).unwrap()
}

#[test]
fn table() {
    let (st, client) = mesh();
    type Check = Box<dyn Fn(&Decision) -> bool>;
    let cases: Vec<(&str, &str, Check)> = vec![
        (
            "loopback on an illegal port",
            "127.0.0.1:15008",
            Box::new(|d| matches!(d, Decision::Refused { .. })),
        ),
        (
            "loopback 15001",
            "127.0.0.1:15001",
            Box::new(|d| matches!(d, Decision::Refused { .. })),
        ),
        (
            "loopback 15006 v6",
            "[::1]:15006",
            Box::new(|d| matches!(d, Decision::Refused { .. })),
        ),
        (
            "loopback other port passes through",
            "127.0.0.1:8080",
            Box::new(|d| {
                *d == Decision::Passthrough {
                    target: sock("127.0.0.1:8080"),
                }
            }),
        ),
        (
            "unknown IP passes through",
            "192.0.2.1:443",
            Box::new(|d| {
                *d == Decision::Passthrough {
                    target: sock("192.0.2.1:443"),
                }
            }),
        ),
        (
            "VIP port not declared",
            "10.96.5.5:1234",
            Box::new(|d| matches!(d, Decision::NoHealthyUpstream { port: 1234, .. })),
        ),
        (
            "VIP with only unhealthy endpoints",
            "10.96.4.4:80",
            Box::new(
                |d| matches!(d, Decision::NoHealthyUpstream { service, .. } if service.name == "empty"),
            ),
        ),
        (
            "PASSTHROUGH service",
            "10.96.8.8:80",
            Box::new(|d| {
                *d == Decision::Passthrough {
                    target: sock("10.96.8.8:80"),
                }
            }),
        ),
        (
            "plain TCP service endpoint",
            "10.96.6.6:80",
            Box::new(
                |d| matches!(d, Decision::Tcp { target, dest } if *target == sock("10.20.0.12:8080") && dest.service.as_ref().unwrap().name == "plain"),
            ),
        ),
        (
            "plain TCP pod by IP keeps the port",
            "10.20.0.12:7000",
            Box::new(
                |d| matches!(d, Decision::Tcp { target, dest } if *target == sock("10.20.0.12:7000") && dest.service.is_none()),
            ),
        ),
    ];
    for (name, dst, check) in cases {
        let d = resolve(&st, &client, dst);
        assert!(check(&d), "{name}: got {d:?}");
    }
}

#[test]
fn vip_to_hbone_endpoint() {
    let (st, client) = mesh();
    let Decision::Hbone {
        target,
        hbone_addr,
        expected_identities,
        dest,
    } = resolve(&st, &client, "10.96.5.5:8080")
    else {
        panic!("want HBONE");
    };
    assert_eq!(target, sock("10.20.0.11:9090"));
    assert_eq!(hbone_addr, sock("10.20.0.11:15008"));
    assert_eq!(
        expected_identities,
        vec![
            id("spiffe://cluster.local/ns/shop/sa/cart"),
            id("spiffe://cluster.local/ns/shop/sa/cart-san"),
        ],
        "workload identity + parseable service SANs"
    );
    let svc = dest.service.unwrap();
    assert_eq!(
        (svc.name.as_str(), svc.namespace.as_str()),
        ("cart", "shop")
    );
    assert_eq!(svc.hostname, "cart.shop.svc.cluster.local");
    assert_eq!(dest.workload.unwrap().uid, "cart-0");
}

#[test]
fn pod_ip_to_hbone_keeps_port_and_only_workload_identity() {
    let (st, client) = mesh();
    let d = resolve(&st, &client, "10.20.0.11:7777");
    let Decision::Hbone {
        target,
        expected_identities,
        dest,
        ..
    } = d
    else {
        panic!("{d:?}");
    };
    assert_eq!(target, sock("10.20.0.11:7777"));
    assert_eq!(
        expected_identities,
        vec![id("spiffe://cluster.local/ns/shop/sa/cart")]
    );
    assert!(dest.service.is_none());
}

#[test]
fn service_waypoint() {
    let (st, client) = mesh();
    let d = resolve(&st, &client, "10.96.7.7:80");
    let Decision::ViaWaypoint {
        waypoint,
        gateway,
        authority,
        dest,
    } = d
    else {
        panic!("{d:?}");
    };
    assert_eq!(waypoint, waypoint_ref());
    assert_eq!(
        authority,
        sock("10.96.7.7:80"),
        "authority is the original VIP:port"
    );
    assert_eq!(gateway.hbone_addr, sock("10.20.0.50:15008"));
    assert_eq!(
        gateway.expected_identities,
        vec![
            id("spiffe://cluster.local/ns/shop/sa/waypoint"),
            id("spiffe://cluster.local/ns/shop/sa/wp-san"),
        ]
    );
    assert_eq!(dest.service.unwrap().name, "reviews");
    assert!(dest.workload.is_none());
}

#[test]
fn workload_waypoint_unless_source_is_the_waypoint() {
    let (st, client) = mesh();
    let d = resolve(&st, &client, "10.20.0.60:8080");
    assert!(
        matches!(&d, Decision::ViaWaypoint { authority, dest, .. }
            if *authority == sock("10.20.0.60:8080") && dest.workload.as_ref().unwrap().uid == "wp-pod"),
        "{d:?}"
    );
    // The waypoint itself sending to the pod goes direct.
    let wp = st.read().workload_by_uid("waypoint-0").unwrap();
    let d = resolve(&st, &wp, "10.20.0.60:8080");
    assert!(
        matches!(d, Decision::Hbone { target, .. } if target == sock("10.20.0.60:8080")),
        "{d:?}"
    );
    // Same identity but a different IP is not the waypoint.
    let mut imposter = (*wp).clone();
    imposter.addresses = vec![ip("10.0.0.99")];
    assert!(matches!(
        resolve(&st, &imposter, "10.20.0.60:8080"),
        Decision::ViaWaypoint { .. }
    ));
}

#[test]
fn unknown_waypoint_fails() {
    let (st, client) = mesh();
    let mut s = service("shop", "lost", &["10.96.3.3"], &[(80, 80)]);
    s.waypoint = Some(GatewayAddress {
        destination: GatewayDestination::Hostname(NamespacedHostname::new("shop", "gone")),
        hbone_mtls_port: 15008,
    });
    st.insert_service("shop/lost", s);
    assert!(matches!(
        resolve(&st, &client, "10.96.3.3:80"),
        Decision::UnknownWaypoint { .. }
    ));
}

#[test]
fn weighted_waypoints_skip_zero_weight() {
    let (st, client) = mesh();
    let mut s = service("shop", "split", &["10.96.3.4"], &[(80, 80)]);
    let by_ip = GatewayAddress {
        destination: GatewayDestination::Address(NetworkAddress::new("", ip("10.20.0.50"))),
        hbone_mtls_port: 15008,
    };
    s.weighted_waypoints = vec![
        WeightedWaypoint {
            destination: GatewayAddress {
                destination: GatewayDestination::Hostname(NamespacedHostname::new("x", "never")),
                hbone_mtls_port: 15008,
            },
            weight: 0,
        },
        WeightedWaypoint {
            destination: by_ip.clone(),
            weight: 5,
        },
    ];
    st.insert_service("shop/split", s);
    for seed in 0..20 {
        let mut rng = StdRng::seed_from_u64(seed);
        let d = resolve_outbound(&st.read(), &client, sock("10.96.3.4:80"), &mut rng);
        assert!(
            matches!(&d, Decision::ViaWaypoint { waypoint, gateway, .. }
                if *waypoint == by_ip && gateway.hbone_addr == sock("10.20.0.50:15008")),
            "{d:?}"
        );
    }
}

/// Puts `w` on network `net2`, reached through net2's east-west gateway (172.16.0.1, identity
/// `istio-system/eastwest`), which is added to the mesh.
fn behind_net2_gateway(st: &MeshState, w: &mut Workload) {
    w.network = "net2".into();
    w.network_gateway = Some(GatewayAddress {
        destination: GatewayDestination::Address(NetworkAddress::new("net2", ip("172.16.0.1"))),
        hbone_mtls_port: 15008,
    });
    let mut ewgw = workload("ewgw", "istio-system", "eastwest", &["172.16.0.1"]);
    ewgw.network = "net2".into();
    st.insert_workload("ewgw", ewgw);
}

#[test]
fn remote_network_endpoint_goes_through_its_gateway() {
    let (st, client) = mesh();
    st.insert_service(
        "shop/far",
        service("shop", "far", &["10.96.2.2"], &[(80, 8080)]),
    );
    let mut far = with_service(
        workload("far-0", "shop", "far", &["10.50.0.1"]),
        "shop/far.shop.svc.cluster.local",
        &[],
    );
    behind_net2_gateway(&st, &mut far);
    st.insert_workload("far-0", far);

    let d = resolve(&st, &client, "10.96.2.2:80");
    let Decision::ViaNetworkGateway {
        gateway,
        authority,
        inner_expected_identities,
        dest,
    } = d
    else {
        panic!("{d:?}");
    };
    assert_eq!(authority, "far.shop.svc.cluster.local:80");
    assert_eq!(gateway.hbone_addr, sock("172.16.0.1:15008"));
    assert_eq!(
        gateway.expected_identities,
        vec![id("spiffe://cluster.local/ns/istio-system/sa/eastwest")]
    );
    assert!(inner_expected_identities.is_empty());
    assert_eq!(dest.workload.unwrap().uid, "far-0");
}

#[test]
fn waypoint_on_another_network_goes_through_its_gateway() {
    let (st, client) = mesh();
    // The waypoint's only instance is a remote network's split-horizon workload.
    assert!(st.remove_address("waypoint-0"));
    let mut remote_wp = with_service(
        workload("waypoint-net2", "shop", "waypoint", &[]),
        WAYPOINT,
        &[],
    );
    behind_net2_gateway(&st, &mut remote_wp);
    st.insert_workload("waypoint-net2", remote_wp);

    let d = resolve(&st, &client, "10.96.7.7:80");
    let Decision::ViaNetworkGateway {
        gateway,
        authority,
        inner_expected_identities,
        dest,
    } = d
    else {
        panic!("{d:?}");
    };
    assert_eq!(
        authority, "reviews.shop.svc.cluster.local:80",
        "the addressed service"
    );
    assert_eq!(gateway.hbone_addr, sock("172.16.0.1:15008"));
    assert_eq!(
        inner_expected_identities,
        vec![id("spiffe://cluster.local/ns/shop/sa/wp-san")],
        "the inner tunnel ends at the waypoint: its service's SANs"
    );
    assert_eq!(dest.service.unwrap().name, "reviews");

    // Addressed by pod IP there is no hostname to hand the gateway: refused.
    let d = resolve(&st, &client, "10.20.0.60:80");
    assert!(matches!(d, Decision::UnknownWaypoint { .. }), "{d:?}");
}

#[test]
fn hostname_only_endpoint_needs_dns() {
    let (st, client) = mesh();
    st.insert_service(
        "shop/ext",
        service("shop", "ext", &["10.96.1.1"], &[(443, 443)]),
    );
    let mut ext = tcp(with_service(
        workload("ext-0", "shop", "ext", &[]),
        "shop/ext.shop.svc.cluster.local",
        &[],
    ));
    ext.hostname = "api.example.com".into();
    st.insert_workload("ext-0", ext);
    let d = resolve(&st, &client, "10.96.1.1:443");
    assert!(
        matches!(&d, Decision::NeedsDns { hostname, port: 443, .. } if hostname == "api.example.com"),
        "{d:?}"
    );
}

#[test]
fn ip_family_choice() {
    let mut w = workload("dual", "shop", "s", &["fd00::5", "10.20.0.5"]);
    assert_eq!(
        pick_ip(&w, ip("10.96.0.1"), None),
        Some(ip("10.20.0.5")),
        "same family"
    );
    assert_eq!(
        pick_ip(&w, ip("fd00::5"), None),
        Some(ip("fd00::5")),
        "own IP"
    );
    assert_eq!(
        pick_ip(&w, ip("10.96.0.1"), Some(IpFamilies::IPv6)),
        Some(ip("fd00::5")),
        "service families win"
    );
    w.addresses = vec![ip("fd00::5")];
    assert_eq!(
        pick_ip(&w, ip("10.96.0.1"), None),
        Some(ip("fd00::5")),
        "fallback to any"
    );
    assert_eq!(pick_ip(&w, ip("10.96.0.1"), Some(IpFamilies::IPv4)), None);
}

#[test]
fn locality_strict_service_end_to_end() {
    let (st, mut client) = mesh();
    client.node = "n1".into();
    let mut local = service("shop", "local", &["10.96.0.77"], &[(80, 80)]);
    local.load_balancer = Some(LoadBalancer {
        routing_preferences: vec![crate::model::LoadBalancerScope::Node],
        mode: LoadBalancerMode::Strict,
        ..Default::default()
    });
    st.insert_service("shop/local", local);
    let key = "shop/local.shop.svc.cluster.local";
    let mut here = with_service(workload("here", "shop", "l", &["10.20.1.1"]), key, &[]);
    here.node = "n1".into();
    let mut there = with_service(workload("there", "shop", "l", &["10.20.1.2"]), key, &[]);
    there.node = "n2".into();
    st.insert_workload("there", there);
    for seed in 0..10 {
        let mut rng = StdRng::seed_from_u64(seed);
        let d = resolve_outbound(&st.read(), &client, sock("10.96.0.77:80"), &mut rng);
        assert!(matches!(d, Decision::NoHealthyUpstream { .. }), "{d:?}");
    }
    st.insert_workload("here", here);
    for seed in 0..10 {
        let mut rng = StdRng::seed_from_u64(seed);
        let d = resolve_outbound(&st.read(), &client, sock("10.96.0.77:80"), &mut rng);
        assert!(
            matches!(d, Decision::Hbone { target, .. } if target == sock("10.20.1.1:80")),
            "{d:?}"
        );
    }
}

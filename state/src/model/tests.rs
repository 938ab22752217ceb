use std::net::IpAddr;

use proptest::prelude::*;
use proto::istio::security as sec;
use proto::istio::workload as pb;

use super::*;
use crate::testutil::*;

fn gw_hostname(ns: &str, host: &str) -> pb::GatewayAddress {
    pb::GatewayAddress {
        hbone_mtls_port: 15008,
        destination: Some(pb::gateway_address::Destination::Hostname(
            pb::NamespacedHostname {
                namespace: ns.into(),
                hostname: host.into(),
            },
        )),
    }
}

#[test]
fn full_workload_converts() {
    let mut w = pb_workload(
        "Kubernetes//Pod/shop/cart-0",
        "shop",
        &["10.20.0.11", "fd00::11"],
    );
    w.service_account = "cart".into();
    w.trust_domain = "example.org".into();
    w.tunnel_protocol = pb::TunnelProtocol::Hbone as i32;
    w.waypoint = Some(gw_hostname("shop", "waypoint.shop.svc.cluster.local"));
    w.network_gateway = Some(pb::GatewayAddress {
        hbone_mtls_port: 15009,
        destination: Some(pb::gateway_address::Destination::Address(
            pb::NetworkAddress {
                network: "net2".into(),
                address: ip_bytes("172.16.0.1"),
                length: None,
            },
        )),
    });
    w.node = "node-a".into();
    w.canonical_name = "cart".into();
    w.canonical_revision = "v1".into();
    w.workload_type = pb::WorkloadType::Pod as i32;
    w.workload_name = "cart".into();
    w.native_tunnel = true;
    w.application_tunnel = Some(pb::ApplicationTunnel {
        protocol: pb::application_tunnel::Protocol::Proxy as i32,
        port: 0,
    });
    w.authorization_policies = vec!["shop/p".into()];
    w.status = pb::WorkloadStatus::Unhealthy as i32;
    w.cluster_id = "c2".into();
    w.services.insert(
        "shop/cart.shop.svc.cluster.local".into(),
        pb::PortList {
            ports: vec![pb::Port {
                service_port: 8080,
                target_port: 9090,
                app_protocol: 0,
            }],
        },
    );
    w.locality = Some(pb::Locality {
        region: "r".into(),
        zone: "z".into(),
        subzone: "s".into(),
    });
    w.network_mode = pb::NetworkMode::HostNetwork as i32;
    w.capacity = Some(7);

    let m = Workload::try_from(w).unwrap();
    assert_eq!(m.addresses, vec![ip("10.20.0.11"), ip("fd00::11")]);
    assert_eq!(m.protocol, TunnelProtocol::Hbone);
    assert_eq!(
        m.identity.to_string(),
        "spiffe://example.org/ns/shop/sa/cart"
    );
    assert_eq!(
        m.waypoint.as_ref().unwrap().destination,
        GatewayDestination::Hostname(NamespacedHostname::new(
            "shop",
            "waypoint.shop.svc.cluster.local"
        ))
    );
    let ngw = m.network_gateway.clone().unwrap();
    assert_eq!(ngw.hbone_mtls_port, 15009);
    assert_eq!(ngw.destination.to_string(), "net2/172.16.0.1");
    assert_eq!(m.workload_type, WorkloadType::Pod);
    assert_eq!(
        m.application_tunnel,
        Some(ApplicationTunnel {
            protocol: ApplicationTunnelProtocol::Proxy,
            port: None
        })
    );
    assert!(!m.is_healthy());
    assert_eq!(m.cluster_id, "c2");
    assert_eq!(m.services["shop/cart.shop.svc.cluster.local"][&8080], 9090);
    assert_eq!(m.locality.zone, "z");
    assert_eq!(m.network_mode, NetworkMode::HostNetwork);
    assert_eq!(m.capacity, 7);
}

#[test]
fn workload_defaults() {
    let m = Workload::try_from(pb_workload("u", "shop", &[])).unwrap();
    assert_eq!(
        m.identity.to_string(),
        "spiffe://cluster.local/ns/shop/sa/default"
    );
    assert_eq!(m.cluster_id, "Kubernetes");
    assert_eq!(m.capacity, 1);
    assert_eq!(m.protocol, TunnelProtocol::Tcp);
    assert_eq!(m.status, HealthStatus::Healthy);
    assert!(m.locality.is_empty());
    let mut zero = pb_workload("u", "shop", &[]);
    zero.capacity = Some(0);
    assert_eq!(Workload::try_from(zero).unwrap().capacity, 0);
}

#[test]
fn workload_errors_name_the_field() {
    type Edit = Box<dyn Fn(&mut pb::Workload)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("missing uid", Box::new(|w| w.uid.clear()), "workload.uid"),
        (
            "missing namespace",
            Box::new(|w| w.namespace.clear()),
            "workload.namespace",
        ),
        (
            "bad ip",
            Box::new(|w| w.addresses.push(vec![10, 0, 0])),
            "workload.addresses[1]",
        ),
        (
            "unknown tunnel",
            Box::new(|w| w.tunnel_protocol = 9),
            "workload.tunnelProtocol",
        ),
        (
            "legacy mtls",
            Box::new(|w| w.tunnel_protocol = 2),
            "workload.tunnelProtocol",
        ),
        (
            "unknown status",
            Box::new(|w| w.status = 5),
            "workload.status",
        ),
        (
            "unknown network mode",
            Box::new(|w| w.network_mode = -1),
            "workload.networkMode",
        ),
        (
            "unknown workload type",
            Box::new(|w| w.workload_type = 4),
            "workload.workloadType",
        ),
        (
            "unknown app tunnel protocol",
            Box::new(|w| {
                w.application_tunnel = Some(pb::ApplicationTunnel {
                    protocol: 3,
                    port: 0,
                })
            }),
            "workload.applicationTunnel.protocol",
        ),
        (
            "app tunnel port",
            Box::new(|w| {
                w.application_tunnel = Some(pb::ApplicationTunnel {
                    protocol: 0,
                    port: 70000,
                })
            }),
            "workload.applicationTunnel.port",
        ),
        (
            "bad identity part",
            Box::new(|w| w.service_account = "a/b".into()),
            "workload.{trustDomain,namespace,serviceAccount}",
        ),
        (
            "waypoint without destination",
            Box::new(|w| {
                w.waypoint = Some(pb::GatewayAddress {
                    hbone_mtls_port: 15008,
                    destination: None,
                })
            }),
            "workload.waypoint.destination",
        ),
        (
            "waypoint port",
            Box::new(|w| {
                let mut g = gw_hostname("a", "b");
                g.hbone_mtls_port = 1 << 20;
                w.waypoint = Some(g);
            }),
            "workload.waypoint.hboneMtlsPort",
        ),
        (
            "gateway address bytes",
            Box::new(|w| {
                w.network_gateway = Some(pb::GatewayAddress {
                    hbone_mtls_port: 15008,
                    destination: Some(pb::gateway_address::Destination::Address(
                        pb::NetworkAddress {
                            network: String::new(),
                            address: vec![1; 5],
                            length: None,
                        },
                    )),
                })
            }),
            "workload.networkGateway.address.address",
        ),
        (
            "service port range",
            Box::new(|w| {
                w.services.insert(
                    "ns/h".into(),
                    pb::PortList {
                        ports: vec![pb::Port {
                            service_port: 65536,
                            target_port: 1,
                            app_protocol: 0,
                        }],
                    },
                );
            }),
            "workload.services[\"ns/h\"].ports[0].servicePort",
        ),
        (
            "service key",
            Box::new(|w| {
                w.services
                    .insert("no-slash".into(), pb::PortList::default());
            }),
            "workload.services[\"no-slash\"]",
        ),
    ];
    for (name, edit, field) in cases {
        let mut w = pb_workload("u", "shop", &["10.0.0.1"]);
        edit(&mut w);
        let err = Workload::try_from(w).expect_err(name);
        assert_eq!(err.field(), field, "{name}: {err}");
        assert!(err.to_string().starts_with(field), "{name}: {err}");
    }
}

#[test]
fn unknown_enum_message() {
    let mut w = pb_workload("u", "shop", &[]);
    w.tunnel_protocol = 42;
    let err = Workload::try_from(w).unwrap_err();
    assert_eq!(
        err.to_string(),
        "workload.tunnelProtocol: unknown TunnelProtocol value 42"
    );
}

#[test]
fn service_conversion() {
    let mut s = pb_service("shop", "cart", &["10.96.0.1"], &[(80, 0)]);
    s.addresses.push(pb::NetworkAddress {
        network: "n".into(),
        address: ip_bytes("10.96.0.2"),
        length: Some(32),
    });
    s.addresses.push(pb::NetworkAddress {
        network: "n".into(),
        address: ip_bytes("10.10.0.0"),
        length: Some(16),
    });
    s.load_balancing = Some(pb::LoadBalancing {
        routing_preference: vec![6, 1, 2],
        mode: 2,
        health_policy: 1,
    });
    s.ip_families = pb::IpFamilies::Dual as i32;
    s.visibility = 1;
    s.weighted_waypoints = vec![pb::WeightedWaypoint {
        destination: Some(gw_hostname("shop", "wp")),
        weight: 3,
    }];
    let m = Service::try_from(s).unwrap();
    assert_eq!(m.key(), "shop/cart.shop.svc.cluster.local");
    assert_eq!(
        m.vips,
        vec![
            NetworkAddress::new("", ip("10.96.0.1")),
            NetworkAddress::new("n", ip("10.96.0.2"))
        ],
        "a full-length prefix is a plain VIP"
    );
    assert_eq!(m.cidr_vips.len(), 1);
    assert_eq!(m.cidr_vips[0].cidr.to_string(), "10.10.0.0/16");
    assert_eq!(m.ports[&80], 0);
    let lb = m.load_balancer.unwrap();
    assert_eq!(
        lb.routing_preferences,
        vec![
            LoadBalancerScope::Network,
            LoadBalancerScope::Region,
            LoadBalancerScope::Zone
        ]
    );
    assert_eq!(lb.mode, LoadBalancerMode::Failover);
    assert_eq!(lb.health_policy, LoadBalancerHealthPolicy::AllowAll);
    assert_eq!(m.ip_families, Some(IpFamilies::Dual));
    assert_eq!(m.visibility, Visibility::Namespace);
    assert_eq!(m.weighted_waypoints[0].weight, 3);
}

#[test]
fn service_errors_name_the_field() {
    type Edit = Box<dyn Fn(&mut pb::Service)>;
    let lb = |mode, scope, health| pb::LoadBalancing {
        routing_preference: vec![scope],
        mode,
        health_policy: health,
    };
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "missing hostname",
            Box::new(|s| s.hostname.clear()),
            "service.hostname",
        ),
        (
            "missing namespace",
            Box::new(|s| s.namespace.clear()),
            "service.namespace",
        ),
        (
            "vip bytes",
            Box::new(|s| s.addresses[0].address = vec![]),
            "service.addresses[0].address",
        ),
        (
            "v4 prefix > 32",
            Box::new(|s| s.addresses[0].length = Some(33)),
            "service.addresses[0].length",
        ),
        (
            "v6 prefix > 128",
            Box::new(|s| {
                s.addresses[0].address = ip_bytes("fd00::");
                s.addresses[0].length = Some(129);
            }),
            "service.addresses[0].length",
        ),
        (
            "target port",
            Box::new(|s| s.ports[0].target_port = 1 << 16),
            "service.ports[0].targetPort",
        ),
        (
            "lb mode",
            Box::new(move |s| s.load_balancing = Some(lb(9, 1, 0))),
            "service.loadBalancing.mode",
        ),
        (
            "lb scope",
            Box::new(move |s| s.load_balancing = Some(lb(0, 7, 0))),
            "service.loadBalancing.routingPreference[0]",
        ),
        (
            "lb unspecified scope",
            Box::new(move |s| s.load_balancing = Some(lb(0, 0, 0))),
            "service.loadBalancing.routingPreference[0]",
        ),
        (
            "lb health",
            Box::new(move |s| s.load_balancing = Some(lb(0, 1, 2))),
            "service.loadBalancing.healthPolicy",
        ),
        (
            "ip families",
            Box::new(|s| s.ip_families = 4),
            "service.ipFamilies",
        ),
        (
            "visibility",
            Box::new(|s| s.visibility = 2),
            "service.visibility",
        ),
        (
            "weighted waypoint",
            Box::new(|s| {
                s.weighted_waypoints = vec![pb::WeightedWaypoint {
                    destination: None,
                    weight: 1,
                }]
            }),
            "service.weightedWaypoints[0].destination",
        ),
    ];
    for (name, edit, field) in cases {
        let mut s = pb_service("shop", "cart", &["10.96.0.1"], &[(80, 8080)]);
        edit(&mut s);
        let err = Service::try_from(s).expect_err(name);
        assert_eq!(err.field(), field, "{name}: {err}");
    }
}

fn sm(t: sec::string_match::MatchType) -> sec::StringMatch {
    sec::StringMatch {
        match_type: Some(t),
    }
}

#[test]
fn policy_conversion() {
    use sec::string_match::MatchType;
    let mut a = pb_policy("istio-system", "istio_converted_static_strict");
    a.scope = sec::Scope::WorkloadSelector as i32;
    a.action = sec::Action::Deny as i32;
    a.dry_run = true;
    a.rules = vec![sec::Rule {
        clauses: vec![sec::Clause {
            matches: vec![sec::Match {
                not_principals: vec![sm(MatchType::Presence(()))],
                principals: vec![
                    sm(MatchType::Exact("a".into())),
                    sm(MatchType::Prefix("b".into())),
                    sm(MatchType::Suffix("c".into())),
                ],
                source_ips: vec![sec::Address {
                    address: ip_bytes("10.0.0.0"),
                    length: 8,
                }],
                destination_ports: vec![9090],
                service_accounts: vec![sec::ServiceAccountMatch {
                    namespace: "ns".into(),
                    service_account: "sa".into(),
                }],
                ..Default::default()
            }],
        }],
    }];
    let p = Policy::try_from(a).unwrap();
    assert_eq!(p.key(), "istio-system/istio_converted_static_strict");
    assert_eq!(p.scope, PolicyScope::WorkloadSelector);
    assert_eq!(p.action, PolicyAction::Deny);
    assert!(p.dry_run);
    let m = &p.rules[0][0][0];
    assert_eq!(m.not_principals, vec![StringMatch::Presence]);
    assert_eq!(
        m.principals,
        vec![
            StringMatch::Exact("a".into()),
            StringMatch::Prefix("b".into()),
            StringMatch::Suffix("c".into())
        ]
    );
    assert!(m.source_ips[0].contains(ip("10.200.0.1")));
    assert_eq!(m.destination_ports, vec![9090]);
    assert_eq!(m.service_accounts[0].service_account, "sa");
    assert!(!m.is_empty());
    // Extensions alone leave a match empty.
    let mut only_ext = sec::Match::default();
    only_ext.extensions.push(pb::Extension::default());
    let mut a = pb_policy("ns", "n");
    a.rules = vec![sec::Rule {
        clauses: vec![sec::Clause {
            matches: vec![only_ext],
        }],
    }];
    assert!(Policy::try_from(a).unwrap().rules[0][0][0].is_empty());
}

#[test]
fn policy_errors_name_the_field() {
    type Edit = Box<dyn Fn(&mut sec::Authorization)>;
    let with_match = |m: sec::Match| {
        vec![sec::Rule {
            clauses: vec![sec::Clause {
                matches: vec![sec::Match::default(), m],
            }],
        }]
    };
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("name", Box::new(|a| a.name.clear()), "name"),
        ("scope", Box::new(|a| a.scope = 3), "scope"),
        ("action", Box::new(|a| a.action = 2), "action"),
        (
            "string match without type",
            Box::new(move |a| {
                a.rules = with_match(sec::Match {
                    namespaces: vec![sec::StringMatch { match_type: None }],
                    ..Default::default()
                })
            }),
            "rules[0].clauses[0].matches[1].namespaces[0].matchType",
        ),
        (
            "cidr prefix",
            Box::new(move |a| {
                a.rules = with_match(sec::Match {
                    source_ips: vec![sec::Address {
                        address: ip_bytes("10.0.0.0"),
                        length: 33,
                    }],
                    ..Default::default()
                })
            }),
            "rules[0].clauses[0].matches[1].sourceIps[0]",
        ),
        (
            "cidr bytes",
            Box::new(move |a| {
                a.rules = with_match(sec::Match {
                    not_destination_ips: vec![sec::Address {
                        address: vec![1, 2],
                        length: 8,
                    }],
                    ..Default::default()
                })
            }),
            "rules[0].clauses[0].matches[1].notDestinationIps[0]",
        ),
        (
            "port",
            Box::new(move |a| {
                a.rules = with_match(sec::Match {
                    not_destination_ports: vec![70000],
                    ..Default::default()
                })
            }),
            "rules[0].clauses[0].matches[1].notDestinationPorts[0]",
        ),
    ];
    for (name, edit, field) in cases {
        let mut a = pb_policy("ns", "p");
        edit(&mut a);
        let err = Policy::try_from(a).expect_err(name);
        assert_eq!(err.field(), field, "{name}: {err}");
    }
}

#[test]
fn cidr_contains() {
    let cases = [
        ("10.0.0.0/8", "10.255.1.1", true),
        ("10.0.0.0/8", "11.0.0.1", false),
        ("10.1.2.3/32", "10.1.2.3", true),
        ("10.1.2.3/32", "10.1.2.4", false),
        ("0.0.0.0/0", "203.0.113.9", true),
        ("0.0.0.0/0", "::1", false),
        ("10.1.2.99/24", "10.1.2.1", true),
        ("fd00::/8", "fd12::1", true),
        ("fd00::/16", "fd01::1", false),
        ("::/0", "2001:db8::1", true),
        ("::/0", "10.0.0.1", false),
        ("2001:db8::1/128", "2001:db8::1", true),
    ];
    for (c, i, want) in cases {
        let c: Cidr = c.parse().unwrap();
        assert_eq!(c.contains(i.parse::<IpAddr>().unwrap()), want, "{c} ∋ {i}");
    }
    assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    assert!("fd00::/129".parse::<Cidr>().is_err());
    assert_eq!("10.0.0.1".parse::<Cidr>().unwrap().prefix(), 32);
    assert!(Cidr::new(ip("::"), 129).is_none());
}

#[test]
fn address_syntax() {
    assert_eq!(
        "/10.96.0.10".parse::<NetworkAddress>().unwrap(),
        NetworkAddress::new("", ip("10.96.0.10"))
    );
    assert_eq!(
        "net1/fd00::1".parse::<NetworkAddress>().unwrap(),
        NetworkAddress::new("net1", ip("fd00::1"))
    );
    assert!("10.0.0.1".parse::<NetworkAddress>().is_err());
    assert!("/not-ip".parse::<NetworkAddress>().is_err());
    assert!(matches!(
        "shop/waypoint.shop.svc.cluster.local".parse::<GatewayDestination>(),
        Ok(GatewayDestination::Hostname(_))
    ));
    assert!(matches!(
        "net/10.0.0.1".parse::<GatewayDestination>(),
        Ok(GatewayDestination::Address(_))
    ));
    assert!("nowhere".parse::<GatewayDestination>().is_err());
    assert!("/host".parse::<GatewayDestination>().is_err());
}

// --- property tests: conversion never panics -----------------------------------------------

fn enum_value() -> impl Strategy<Value = i32> {
    prop_oneof![0..8i32, any::<i32>()]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![10, 0, 0, 1]),
        Just(vec![0xfd; 16]),
        proptest::collection::vec(any::<u8>(), 0..20)
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z0-9./ -]{0,12}", any::<String>()]
}

fn port_value() -> impl Strategy<Value = u32> {
    prop_oneof![0..70000u32, any::<u32>()]
}

fn gateway() -> impl Strategy<Value = Option<pb::GatewayAddress>> {
    proptest::option::of(
        (
            text(),
            text(),
            bytes(),
            port_value(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(ns, host, addr, port, as_host, present)| pb::GatewayAddress {
                    hbone_mtls_port: port,
                    destination: present.then_some({
                        if as_host {
                            pb::gateway_address::Destination::Hostname(pb::NamespacedHostname {
                                namespace: ns,
                                hostname: host,
                            })
                        } else {
                            pb::gateway_address::Destination::Address(pb::NetworkAddress {
                                network: ns,
                                address: addr,
                                length: None,
                            })
                        }
                    }),
                },
            ),
    )
}

fn ports() -> impl Strategy<Value = Vec<pb::Port>> {
    proptest::collection::vec(
        (port_value(), port_value(), enum_value()).prop_map(|(s, t, a)| pb::Port {
            service_port: s,
            target_port: t,
            app_protocol: a,
        }),
        0..3,
    )
}

prop_compose! {
    fn arb_workload()(
        ids in (text(), text(), text(), text(), text()),
        addresses in proptest::collection::vec(bytes(), 0..3),
        enums in (enum_value(), enum_value(), enum_value(), enum_value(), enum_value()),
        waypoint in gateway(),
        network_gateway in gateway(),
        tunnel in proptest::option::of((enum_value(), port_value())),
        services in proptest::collection::hash_map(text(), ports(), 0..3),
        capacity in proptest::option::of(any::<u32>()),
    ) -> pb::Workload {
        let (uid, namespace, trust_domain, service_account, network) = ids;
        let (tunnel_protocol, status, network_mode, workload_type, app_proto) = enums;
        pb::Workload {
            uid, namespace, trust_domain, service_account, network, addresses,
            tunnel_protocol, status, network_mode, workload_type, waypoint, network_gateway,
            application_tunnel: tunnel.map(|(_, port)| pb::ApplicationTunnel { protocol: app_proto, port }),
            services: services.into_iter().map(|(k, ports)| (k, pb::PortList { ports })).collect(),
            capacity,
            ..Default::default()
        }
    }
}

prop_compose! {
    fn arb_service()(
        names in (text(), text(), text()),
        addresses in proptest::collection::vec(
            (text(), bytes(), proptest::option::of(0..200u32)).prop_map(|(network, address, length)| pb::NetworkAddress { network, address, length }),
            0..3),
        ports in ports(),
        waypoint in gateway(),
        lb in proptest::option::of((proptest::collection::vec(enum_value(), 0..3), enum_value(), enum_value())),
        enums in (enum_value(), enum_value()),
        weighted in proptest::collection::vec((gateway(), any::<u32>()), 0..2),
    ) -> pb::Service {
        let (name, namespace, hostname) = names;
        pb::Service {
            name, namespace, hostname, addresses, ports, waypoint,
            load_balancing: lb.map(|(routing_preference, mode, health_policy)| pb::LoadBalancing { routing_preference, mode, health_policy }),
            ip_families: enums.0,
            visibility: enums.1,
            weighted_waypoints: weighted.into_iter().map(|(destination, weight)| pb::WeightedWaypoint { destination, weight }).collect(),
            ..Default::default()
        }
    }
}

fn arb_string_match() -> impl Strategy<Value = sec::StringMatch> {
    use sec::string_match::MatchType;
    prop_oneof![
        Just(sec::StringMatch { match_type: None }),
        text().prop_map(|s| sm(MatchType::Exact(s))),
        text().prop_map(|s| sm(MatchType::Prefix(s))),
        text().prop_map(|s| sm(MatchType::Suffix(s))),
        Just(sm(MatchType::Presence(()))),
    ]
}

fn arb_match() -> impl Strategy<Value = sec::Match> {
    let addrs = || {
        proptest::collection::vec(
            (bytes(), 0..200u32).prop_map(|(address, length)| sec::Address { address, length }),
            0..2,
        )
    };
    let strs = || proptest::collection::vec(arb_string_match(), 0..2);
    (
        (strs(), strs(), strs(), strs()),
        (addrs(), addrs(), addrs(), addrs()),
        proptest::collection::vec(port_value(), 0..2),
        proptest::collection::vec(port_value(), 0..2),
    )
        .prop_map(
            |((ns, nns, pr, npr), (si, nsi, di, ndi), dp, ndp)| sec::Match {
                namespaces: ns,
                not_namespaces: nns,
                principals: pr,
                not_principals: npr,
                source_ips: si,
                not_source_ips: nsi,
                destination_ips: di,
                not_destination_ips: ndi,
                destination_ports: dp,
                not_destination_ports: ndp,
                ..Default::default()
            },
        )
}

prop_compose! {
    fn arb_policy()(
        name in text(), namespace in text(), scope in enum_value(), action in enum_value(),
        dry_run in any::<bool>(),
        rules in proptest::collection::vec(
            proptest::collection::vec(proptest::collection::vec(arb_match(), 0..3), 0..3), 0..3),
    ) -> sec::Authorization {
        sec::Authorization {
            name, namespace, scope, action, dry_run,
            rules: rules.into_iter().map(|clauses| sec::Rule {
                clauses: clauses.into_iter().map(|matches| sec::Clause { matches }).collect(),
            }).collect(),
            ..Default::default()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn workload_conversion_never_panics(w in arb_workload()) {
        if let Ok(m) = Workload::try_from(w) {
            // Whatever converts must serialize and carry a valid identity.
            serde_json::to_value(&m).unwrap();
            prop_assert!(hbone::Identity::parse(&m.identity.to_string()).is_ok());
        }
    }

    #[test]
    fn service_conversion_never_panics(s in arb_service()) {
        if let Ok(m) = Service::try_from(s) {
            serde_json::to_value(&m).unwrap();
        }
    }

    #[test]
    fn policy_conversion_never_panics(a in arb_policy()) {
        if let Ok(p) = Policy::try_from(a) {
            serde_json::to_value(&p).unwrap();
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        use prost::Message;
        if let Ok(addr) = pb::Address::decode(data.as_slice()) {
            let state = crate::MeshState::default();
            let _ = state.upsert_address("x", addr);
        }
        if let Ok(a) = sec::Authorization::decode(data.as_slice()) {
            let _ = Policy::try_from(a);
        }
    }
}

//! Property tests: arbitrary workloads and authorization policies survive an
//! encode/decode round trip, and decoding arbitrary bytes never panics.

use std::collections::HashMap;

use proptest::collection::{hash_map, vec};
use proptest::option;
use proptest::prelude::*;
use prost::Message;
use proto::istio::security as sec;
use proto::istio::workload as wl;

fn text() -> impl Strategy<Value = String> {
    // Any printable characters, including multi-byte UTF-8.
    "\\PC{0,24}"
}

fn ip() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|a| a.to_vec()),
        any::<[u8; 16]>().prop_map(|a| a.to_vec()),
    ]
}

fn port() -> impl Strategy<Value = u32> {
    prop_oneof![any::<u16>().prop_map(u32::from), any::<u32>()]
}

fn network_address() -> impl Strategy<Value = wl::NetworkAddress> {
    (text(), ip(), option::of(0u32..=128)).prop_map(|(network, address, length)| {
        wl::NetworkAddress {
            network,
            address,
            length,
        }
    })
}

fn gateway() -> impl Strategy<Value = wl::GatewayAddress> {
    use wl::gateway_address::Destination;
    let destination = prop_oneof![
        (text(), text()).prop_map(|(namespace, hostname)| Destination::Hostname(
            wl::NamespacedHostname {
                namespace,
                hostname
            }
        )),
        network_address().prop_map(Destination::Address),
    ];
    (option::of(destination), port()).prop_map(|(destination, hbone_mtls_port)| {
        wl::GatewayAddress {
            destination,
            hbone_mtls_port,
        }
    })
}

fn port_list() -> impl Strategy<Value = wl::PortList> {
    vec((port(), port(), any::<i32>()), 0..3).prop_map(|ports| wl::PortList {
        ports: ports
            .into_iter()
            .map(|(service_port, target_port, app_protocol)| wl::Port {
                service_port,
                target_port,
                app_protocol,
            })
            .collect(),
    })
}

fn extension() -> impl Strategy<Value = wl::Extension> {
    (text(), option::of((text(), vec(any::<u8>(), 0..8)))).prop_map(|(name, config)| {
        wl::Extension {
            name,
            config: config.map(|(type_url, value)| prost_types::Any { type_url, value }),
        }
    })
}

prop_compose! {
    fn workload()(
        ids in (text(), text(), text(), text(), text(), text()),
        addresses in vec(ip(), 0..4),
        enums in (any::<i32>(), any::<i32>(), any::<i32>(), any::<i32>()),
        identity in (text(), text(), text(), text(), text(), text()),
        gateways in (option::of(gateway()), option::of(gateway())),
        native_tunnel in any::<bool>(),
        tunnel in option::of((any::<i32>(), port())),
        services in hash_map(text(), port_list(), 0..3),
        policies in vec(text(), 0..3),
        locality in option::of((text(), text(), text())),
        extensions in vec(extension(), 0..2),
        capacity in option::of(any::<u32>()),
    ) -> wl::Workload {
        let (uid, name, namespace, hostname, network, node) = ids;
        let (tunnel_protocol, workload_type, status, network_mode) = enums;
        let (trust_domain, service_account, canonical_name, canonical_revision, workload_name, cluster_id) =
            identity;
        wl::Workload {
            uid,
            name,
            namespace,
            addresses,
            hostname,
            network,
            tunnel_protocol,
            trust_domain,
            service_account,
            waypoint: gateways.0,
            network_gateway: gateways.1,
            node,
            canonical_name,
            canonical_revision,
            workload_type,
            workload_name,
            native_tunnel,
            application_tunnel: tunnel.map(|(protocol, port)| wl::ApplicationTunnel { protocol, port }),
            services: services.into_iter().collect::<HashMap<_, _>>(),
            authorization_policies: policies,
            status,
            cluster_id,
            locality: locality.map(|(region, zone, subzone)| wl::Locality { region, zone, subzone }),
            network_mode,
            extensions,
            capacity,
        }
    }
}

fn string_match() -> impl Strategy<Value = sec::StringMatch> {
    use sec::string_match::MatchType;
    option::of(prop_oneof![
        text().prop_map(MatchType::Exact),
        text().prop_map(MatchType::Prefix),
        text().prop_map(MatchType::Suffix),
        Just(MatchType::Presence(())),
    ])
    .prop_map(|match_type| sec::StringMatch { match_type })
}

fn cidr() -> impl Strategy<Value = sec::Address> {
    (ip(), any::<u32>()).prop_map(|(address, length)| sec::Address { address, length })
}

fn service_account() -> impl Strategy<Value = sec::ServiceAccountMatch> {
    (text(), text()).prop_map(|(namespace, service_account)| sec::ServiceAccountMatch {
        namespace,
        service_account,
    })
}

prop_compose! {
    fn a_match()(
        names in (vec(string_match(), 0..3), vec(string_match(), 0..3)),
        principals in (vec(string_match(), 0..3), vec(string_match(), 0..3)),
        sources in (vec(cidr(), 0..3), vec(cidr(), 0..3)),
        destinations in (vec(cidr(), 0..3), vec(cidr(), 0..3)),
        ports in (vec(port(), 0..4), vec(port(), 0..4)),
        accounts in (vec(service_account(), 0..2), vec(service_account(), 0..2)),
        extensions in vec(extension(), 0..2),
    ) -> sec::Match {
        sec::Match {
            namespaces: names.0,
            not_namespaces: names.1,
            principals: principals.0,
            not_principals: principals.1,
            source_ips: sources.0,
            not_source_ips: sources.1,
            destination_ips: destinations.0,
            not_destination_ips: destinations.1,
            destination_ports: ports.0,
            not_destination_ports: ports.1,
            service_accounts: accounts.0,
            not_service_accounts: accounts.1,
            extensions,
        }
    }
}

prop_compose! {
    fn authorization()(
        name in text(),
        namespace in text(),
        scope in any::<i32>(),
        action in any::<i32>(),
        rules in vec(vec(vec(a_match(), 0..3), 0..3), 0..3),
        dry_run in any::<bool>(),
        extensions in vec(extension(), 0..2),
    ) -> sec::Authorization {
        sec::Authorization {
            name,
            namespace,
            scope,
            action,
            rules: rules
                .into_iter()
                .map(|clauses| sec::Rule {
                    clauses: clauses
                        .into_iter()
                        .map(|matches| sec::Clause { matches })
                        .collect(),
                })
                .collect(),
            dry_run,
            extensions,
        }
    }
}

fn assert_roundtrip<M: Message + Default + PartialEq + std::fmt::Debug>(
    msg: &M,
) -> Result<(), TestCaseError> {
    let bytes = msg.encode_to_vec();
    prop_assert_eq!(bytes.len(), msg.encoded_len());
    let back = M::decode(bytes.as_slice()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, msg);
    Ok(())
}

proptest! {
    #[test]
    fn workload_roundtrip(w in workload()) {
        assert_roundtrip(&w)?;
        assert_roundtrip(&wl::Address { r#type: Some(wl::address::Type::Workload(w)) })?;
    }

    #[test]
    fn match_roundtrip(m in a_match()) {
        assert_roundtrip(&m)?;
    }

    #[test]
    fn authorization_roundtrip(a in authorization()) {
        assert_roundtrip(&a)?;
        let any = proto::pack_any(proto::AUTHORIZATION_TYPE_URL, &a);
        let back: sec::Authorization = proto::unpack_any(&any, proto::AUTHORIZATION_TYPE_URL)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, a);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..256)) {
        let _ = wl::Address::decode(bytes.as_slice());
        let _ = sec::Authorization::decode(bytes.as_slice());
        let _ = proto::istio::workload::zds::WorkloadRequest::decode(bytes.as_slice());
        let _ = proto::envoy::service::discovery::v3::DeltaDiscoveryResponse::decode(bytes.as_slice());
    }
}

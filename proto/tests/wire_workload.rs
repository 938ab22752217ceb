//! `istio.workload` decoded from hand-assembled bytes: each field is written
//! with the number from the schema table, so a wrong number in the `.proto`
//! makes the value land in the wrong place (or nowhere) and the test fails.

#[macro_use]
mod common;

use common::decode_exact;
use prost::Message;
use proto::istio::workload::{
    Address, AppProtocol, GatewayAddress, IpFamilies, NetworkAddress, NetworkMode, Service,
    TunnelProtocol, Workload, WorkloadStatus, WorkloadType, address, application_tunnel,
    gateway_address, load_balancing, service,
};

/// `GatewayAddress{hostname: {namespace: "ns", hostname: "wp"}, hbone_mtls_port: 15008}`.
fn waypoint_by_hostname() -> Vec<u8> {
    let hostname = nested![8 =>
        [0x0a, 0x02], b"ns"; // NamespacedHostname.namespace = 1
        [0x12, 0x02], b"wp"; // NamespacedHostname.hostname = 2
    ];
    nested![0x0d =>
        [0x0a, 0x08], hostname;  // GatewayAddress.hostname = 1 (oneof destination)
        [0x18, 0xa0, 0x75];      // GatewayAddress.hbone_mtls_port = 3: 15008
    ]
}

fn assert_waypoint_by_hostname(gw: &GatewayAddress) {
    match &gw.destination {
        Some(gateway_address::Destination::Hostname(h)) => {
            assert_eq!(h.namespace, "ns");
            assert_eq!(h.hostname, "wp");
        }
        other => panic!("expected hostname destination, got {other:?}"),
    }
    assert_eq!(gw.hbone_mtls_port, 15008);
}

#[test]
fn address_carrying_a_workload() {
    let bytes = wire![
        [0x0a, 0x05];             // Address.workload = 1, 5 bytes
        [0xa2, 0x01, 0x02], b"w1"; //   Workload.uid = 20
    ];
    let addr: Address = decode_exact(&bytes);
    match addr.r#type {
        Some(address::Type::Workload(w)) => assert_eq!(w.uid, "w1"),
        other => panic!("expected a workload, got {other:?}"),
    }
}

#[test]
fn address_carrying_a_service() {
    let bytes = wire![
        [0x12, 0x03];      // Address.service = 2, 3 bytes
        [0x1a, 0x01], b"h"; //   Service.hostname = 3
    ];
    let addr: Address = decode_exact(&bytes);
    match addr.r#type {
        Some(address::Type::Service(s)) => assert_eq!(s.hostname, "h"),
        other => panic!("expected a service, got {other:?}"),
    }
}

#[test]
fn workload_with_every_field() {
    let network_gateway = {
        let addr = nested![0x0b =>
            [0x0a, 0x03], b"net";           // NetworkAddress.network = 1
            [0x12, 0x04, 0x0a, 0x00, 0x00, 0x09]; // NetworkAddress.address = 2: 10.0.0.9
        ];
        nested![0x10 =>
            [0x12, 0x0b], addr;     // GatewayAddress.address = 2 (oneof destination)
            [0x18, 0xa0, 0x75];     // GatewayAddress.hbone_mtls_port = 3: 15008
        ]
    };
    let services_entry = {
        let port = nested![7 =>
            [0x08, 0x50];       // Port.service_port = 1: 80
            [0x10, 0x90, 0x3f]; // Port.target_port = 2: 8080
            [0x18, 0x02];       // Port.app_protocol = 3: HTTP2
        ];
        let port_list = nested![9 => [0x0a, 0x07], port]; // PortList.ports = 1
        nested![0x11 =>
            [0x0a, 0x04], b"ns/s";   // map entry key = 1
            [0x12, 0x09], port_list; // map entry value = 2
        ]
    };
    let app_tunnel = nested![5 =>
        [0x08, 0x01];       // ApplicationTunnel.protocol = 1: PROXY
        [0x10, 0xf0, 0x75]; // ApplicationTunnel.port = 2: 15088
    ];
    let locality = nested![9 =>
        [0x0a, 0x01], b"r"; // Locality.region = 1
        [0x12, 0x01], b"z"; // Locality.zone = 2
        [0x1a, 0x01], b"s"; // Locality.subzone = 3
    ];
    let extension = {
        let any = nested![6 =>
            [0x0a, 0x01], b"t";    // Any.type_url = 1
            [0x12, 0x01, 0x01];    // Any.value = 2
        ];
        nested![0x0b =>
            [0x0a, 0x01], b"e"; // Extension.name = 1
            [0x12, 0x06], any;  // Extension.config = 2
        ]
    };
    let mut ipv6_loopback = [0u8; 16];
    ipv6_loopback[15] = 1;

    let bytes = wire![
        [0x0a, 0x03], b"pod";                        // name = 1
        [0x12, 0x02], b"ns";                         // namespace = 2
        [0x1a, 0x04, 0x0a, 0x00, 0x00, 0x01];        // addresses = 3: 10.0.0.1
        [0x1a, 0x10], ipv6_loopback;                 // addresses = 3: ::1
        [0x22, 0x03], b"net";                        // network = 4
        [0x28, 0x01];                                // tunnel_protocol = 5: HBONE
        [0x32, 0x02], b"td";                         // trust_domain = 6
        [0x3a, 0x02], b"sa";                         // service_account = 7
        [0x42, 0x0d], waypoint_by_hostname();        // waypoint = 8
        [0x4a, 0x02], b"n1";                         // node = 9
        [0x52, 0x02], b"cn";                         // canonical_name = 10
        [0x5a, 0x02], b"v1";                         // canonical_revision = 11
        [0x60, 0x02];                                // workload_type = 12: POD
        [0x6a, 0x02], b"wn";                         // workload_name = 13
        [0x70, 0x01];                                // native_tunnel = 14: true
        [0x82, 0x01, 0x04], b"ns/p";                 // authorization_policies = 16
        [0x88, 0x01, 0x01];                          // status = 17: UNHEALTHY
        [0x92, 0x01, 0x02], b"c1";                   // cluster_id = 18
        [0x9a, 0x01, 0x10], network_gateway;         // network_gateway = 19
        [0xa2, 0x01, 0x05], b"uid-1";                // uid = 20
        [0xaa, 0x01, 0x09], b"h.example";            // hostname = 21
        [0xb2, 0x01, 0x11], services_entry;          // services = 22 (map entry)
        [0xba, 0x01, 0x05], app_tunnel;              // application_tunnel = 23
        [0xc2, 0x01, 0x09], locality;                // locality = 24
        [0xc8, 0x01, 0x01];                          // network_mode = 25: HOST_NETWORK
        [0xd2, 0x01, 0x0b], extension;               // extensions = 26
        [0xda, 0x01, 0x02, 0x08, 0x05];              // capacity = 27: UInt32Value{value = 1: 5}
    ];

    let w: Workload = decode_exact(&bytes);
    assert_eq!(w.name, "pod");
    assert_eq!(w.namespace, "ns");
    assert_eq!(w.addresses, vec![vec![10, 0, 0, 1], ipv6_loopback.to_vec()]);
    assert_eq!(w.network, "net");
    assert_eq!(w.tunnel_protocol(), TunnelProtocol::Hbone);
    assert_eq!(w.trust_domain, "td");
    assert_eq!(w.service_account, "sa");
    assert_waypoint_by_hostname(w.waypoint.as_ref().unwrap());
    assert_eq!(w.node, "n1");
    assert_eq!(w.canonical_name, "cn");
    assert_eq!(w.canonical_revision, "v1");
    assert_eq!(w.workload_type(), WorkloadType::Pod);
    assert_eq!(w.workload_name, "wn");
    assert!(w.native_tunnel);
    assert_eq!(w.authorization_policies, vec!["ns/p".to_owned()]);
    assert_eq!(w.status(), WorkloadStatus::Unhealthy);
    assert_eq!(w.cluster_id, "c1");
    let ngw = w.network_gateway.as_ref().unwrap();
    match &ngw.destination {
        Some(gateway_address::Destination::Address(a)) => {
            assert_eq!(a.network, "net");
            assert_eq!(a.address, vec![10, 0, 0, 9]);
            assert_eq!(a.length, None);
        }
        other => panic!("expected address destination, got {other:?}"),
    }
    assert_eq!(ngw.hbone_mtls_port, 15008);
    assert_eq!(w.uid, "uid-1");
    assert_eq!(w.hostname, "h.example");
    assert_eq!(w.services.len(), 1);
    let ports = &w.services["ns/s"].ports;
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].service_port, 80);
    assert_eq!(ports[0].target_port, 8080);
    assert_eq!(ports[0].app_protocol(), AppProtocol::Http2);
    let tunnel = w.application_tunnel.as_ref().unwrap();
    assert_eq!(tunnel.protocol(), application_tunnel::Protocol::Proxy);
    assert_eq!(tunnel.port, 15088);
    let locality = w.locality.as_ref().unwrap();
    assert_eq!(
        (
            locality.region.as_str(),
            locality.zone.as_str(),
            locality.subzone.as_str()
        ),
        ("r", "z", "s")
    );
    assert_eq!(w.network_mode(), NetworkMode::HostNetwork);
    assert_eq!(w.extensions.len(), 1);
    assert_eq!(w.extensions[0].name, "e");
    let config = w.extensions[0].config.as_ref().unwrap();
    assert_eq!(config.type_url, "t");
    assert_eq!(config.value, vec![0x01]);
    assert_eq!(w.capacity, Some(5));
}

#[test]
fn workload_uid_is_field_20_and_capacity_is_a_wrapper_at_27() {
    // uid written under field 1 is the name, not the uid.
    let w = Workload::decode(&[0x0a, 0x01, b'x'][..]).unwrap();
    assert_eq!((w.name.as_str(), w.uid.as_str()), ("x", ""));

    let bytes = wire![
        [0xa2, 0x01, 0x01], b"u"; // uid = 20
        [0xda, 0x01, 0x00];       // capacity = 27: UInt32Value{} (present, value 0)
    ];
    let w: Workload = decode_exact(&bytes);
    assert_eq!(w.uid, "u");
    assert_eq!(w.capacity, Some(0), "an empty wrapper is still present");

    // Absent wrapper: unset, which consumers read as weight 1.
    let w = Workload::decode(&[0xa2, 0x01, 0x01, b'u'][..]).unwrap();
    assert_eq!(w.capacity, None);
    // And the wrapper is encoded as a nested message, not a bare varint.
    let encoded = Workload {
        capacity: Some(5),
        ..Default::default()
    }
    .encode_to_vec();
    assert_eq!(encoded, [0xda, 0x01, 0x02, 0x08, 0x05]);
}

#[test]
fn workload_services_map_with_two_entries() {
    let entry_a = nested![0x0b =>
        [0x0a, 0x03], b"a/x";             // key = 1
        [0x12, 0x04, 0x0a, 0x02, 0x08, 0x50]; // value = 2: PortList{ports: [Port{service_port: 80}]}
    ];
    let entry_b = nested![5 =>
        [0x0a, 0x03], b"b/y"; // key = 1; no value: an empty PortList
    ];
    let bytes = wire![
        [0xb2, 0x01, 0x0b], entry_a; // services = 22
        [0xb2, 0x01, 0x05], entry_b; // services = 22
    ];
    let w: Workload = decode_exact(&bytes);
    assert_eq!(w.services.len(), 2);
    assert_eq!(w.services["a/x"].ports[0].service_port, 80);
    assert_eq!(w.services["a/x"].ports[0].target_port, 0);
    assert!(w.services["b/y"].ports.is_empty());
}

#[test]
fn network_address_length_presence() {
    let base = wire![[0x12, 0x04, 0x0a, 0x00, 0x00, 0x00]]; // address = 2: 10.0.0.0
    let absent: NetworkAddress = decode_exact(&base);
    assert_eq!(absent.length, None);

    let zero = wire![base, [0x18, 0x00]]; // length = 3: 0 (explicitly present)
    let zero: NetworkAddress = decode_exact(&zero);
    assert_eq!(zero.length, Some(0));

    let cidr = wire![base, [0x18, 0x18]]; // length = 3: 24
    assert_eq!(decode_exact::<NetworkAddress>(&cidr).length, Some(24));

    // Explicit presence survives encoding: Some(0) is written, None is not.
    let some_zero = NetworkAddress {
        length: Some(0),
        ..Default::default()
    };
    assert_eq!(some_zero.encode_to_vec(), [0x18, 0x00]);
    assert!(NetworkAddress::default().encode_to_vec().is_empty());
}

#[test]
fn service_with_every_field() {
    let vip = nested![6 => [0x12, 0x04, 0x0a, 0x60, 0x00, 0x01]]; // NetworkAddress.address = 2
    let cidr = nested![0x0d =>
        [0x0a, 0x03], b"net";                  // NetworkAddress.network = 1
        [0x12, 0x04, 0x0a, 0x60, 0x00, 0x00];  // NetworkAddress.address = 2
        [0x18, 0x0c];                          // NetworkAddress.length = 3: 12
    ];
    let port = nested![4 =>
        [0x08, 0x50]; // Port.service_port = 1: 80
        [0x18, 0x01]; // Port.app_protocol = 3: HTTP11 (target_port 0 omitted)
    ];
    let load_balancing = nested![9 =>
        [0x0a, 0x03, 0x06, 0x01, 0x02]; // routing_preference = 1, packed: NETWORK, REGION, ZONE
        [0x10, 0x02];                   // mode = 2: FAILOVER
        [0x18, 0x01];                   // health_policy = 3: ALLOW_ALL
    ];
    let weighted = nested![0x11 =>
        [0x0a, 0x0d], waypoint_by_hostname(); // WeightedWaypoint.destination = 1
        [0x10, 0x03];                         // WeightedWaypoint.weight = 2
    ];
    let bytes = wire![
        [0x0a, 0x01], b"s";                // name = 1
        [0x12, 0x02], b"ns";               // namespace = 2
        [0x1a, 0x08], b"s.ns.svc";         // hostname = 3
        [0x22, 0x06], vip;                 // addresses = 4
        [0x22, 0x0d], cidr;                // addresses = 4
        [0x2a, 0x04], port;                // ports = 5
        [0x32, 0x03], b"id1";              // subject_alt_names = 6
        [0x3a, 0x0d], waypoint_by_hostname(); // waypoint = 7
        [0x42, 0x09], load_balancing;      // load_balancing = 8
        [0x48, 0x03];                      // ip_families = 9: DUAL
        [0x52, 0x03, 0x0a, 0x01], b"e";    // extensions = 10: Extension{name = 1}
        [0x58, 0x01];                      // canonical = 11: true
        [0x60, 0x01];                      // ingress_use_waypoint = 12: true
        [0x6a, 0x11], weighted;            // weighted_waypoints = 13
        [0x70, 0x01];                      // visibility = 14: NAMESPACE
    ];

    let s: Service = decode_exact(&bytes);
    assert_eq!(s.name, "s");
    assert_eq!(s.namespace, "ns");
    assert_eq!(s.hostname, "s.ns.svc");
    assert_eq!(s.addresses.len(), 2);
    assert_eq!(s.addresses[0].network, "");
    assert_eq!(s.addresses[0].address, vec![10, 96, 0, 1]);
    assert_eq!(s.addresses[0].length, None);
    assert_eq!(s.addresses[1].network, "net");
    assert_eq!(s.addresses[1].address, vec![10, 96, 0, 0]);
    assert_eq!(s.addresses[1].length, Some(12));
    assert_eq!(s.ports.len(), 1);
    assert_eq!(s.ports[0].service_port, 80);
    assert_eq!(s.ports[0].target_port, 0);
    assert_eq!(s.ports[0].app_protocol(), AppProtocol::Http11);
    assert_eq!(s.subject_alt_names, vec!["id1".to_owned()]);
    assert_waypoint_by_hostname(s.waypoint.as_ref().unwrap());
    let lb = s.load_balancing.as_ref().unwrap();
    assert_eq!(
        lb.routing_preference().collect::<Vec<_>>(),
        vec![
            load_balancing::Scope::Network,
            load_balancing::Scope::Region,
            load_balancing::Scope::Zone
        ]
    );
    assert_eq!(lb.mode(), load_balancing::Mode::Failover);
    assert_eq!(lb.health_policy(), load_balancing::HealthPolicy::AllowAll);
    assert_eq!(s.ip_families(), IpFamilies::Dual);
    assert_eq!(s.extensions.len(), 1);
    assert_eq!(s.extensions[0].name, "e");
    assert!(s.canonical);
    assert!(s.ingress_use_waypoint);
    assert_eq!(s.weighted_waypoints.len(), 1);
    assert_waypoint_by_hostname(s.weighted_waypoints[0].destination.as_ref().unwrap());
    assert_eq!(s.weighted_waypoints[0].weight, 3);
    assert_eq!(s.visibility(), service::Visibility::Namespace);
}

#[test]
fn service_canonical_is_field_11() {
    let s: Service = decode_exact(&[0x58, 0x01]); // canonical = 11: true
    assert!(s.canonical);
    assert!(!s.ingress_use_waypoint);
    assert_eq!(
        Service {
            canonical: true,
            ..Default::default()
        }
        .encode_to_vec(),
        [0x58, 0x01]
    );
}

#[test]
fn routing_preference_also_accepted_unpacked() {
    // A parser must accept a repeated enum both packed and one tag per value.
    let bytes = [
        0x08, 0x04, // routing_preference = 1 (varint): NODE
        0x08, 0x05, // routing_preference = 1 (varint): CLUSTER
        0x10, 0x01, // mode = 2: STRICT
    ];
    let lb = proto::istio::workload::LoadBalancing::decode(&bytes[..]).unwrap();
    assert_eq!(
        lb.routing_preference().collect::<Vec<_>>(),
        vec![load_balancing::Scope::Node, load_balancing::Scope::Cluster]
    );
    assert_eq!(lb.mode(), load_balancing::Mode::Strict);
}

#[test]
fn gateway_address_reserved_field_4_is_skipped() {
    let bytes = [
        0x18, 0xa0, 0x75, // hbone_mtls_port = 3: 15008
        0x20, 0x01, // 4: retired field, must be ignored
    ];
    let gw = GatewayAddress::decode(&bytes[..]).unwrap();
    assert_eq!(gw.hbone_mtls_port, 15008);
    assert_eq!(gw.destination, None);
}

#[test]
fn every_enum_number() {
    use application_tunnel::Protocol;
    use load_balancing::{HealthPolicy, Mode, Scope};
    let pairs: &[(i32, i32)] = &[
        (IpFamilies::Automatic as i32, 0),
        (IpFamilies::Ipv4Only as i32, 1),
        (IpFamilies::Ipv6Only as i32, 2),
        (IpFamilies::Dual as i32, 3),
        (NetworkMode::Standard as i32, 0),
        (NetworkMode::HostNetwork as i32, 1),
        (Scope::UnspecifiedScope as i32, 0),
        (Scope::Region as i32, 1),
        (Scope::Zone as i32, 2),
        (Scope::Subzone as i32, 3),
        (Scope::Node as i32, 4),
        (Scope::Cluster as i32, 5),
        (Scope::Network as i32, 6),
        (Mode::UnspecifiedMode as i32, 0),
        (Mode::Strict as i32, 1),
        (Mode::Failover as i32, 2),
        (Mode::Passthrough as i32, 3),
        (HealthPolicy::OnlyHealthy as i32, 0),
        (HealthPolicy::AllowAll as i32, 1),
        (WorkloadStatus::Healthy as i32, 0),
        (WorkloadStatus::Unhealthy as i32, 1),
        (WorkloadType::Deployment as i32, 0),
        (WorkloadType::Cronjob as i32, 1),
        (WorkloadType::Pod as i32, 2),
        (WorkloadType::Job as i32, 3),
        (AppProtocol::Unknown as i32, 0),
        (AppProtocol::Http11 as i32, 1),
        (AppProtocol::Http2 as i32, 2),
        (AppProtocol::Grpc as i32, 3),
        (AppProtocol::Tcp as i32, 4),
        (AppProtocol::Tls as i32, 5),
        (TunnelProtocol::None as i32, 0),
        (TunnelProtocol::Hbone as i32, 1),
        (TunnelProtocol::LegacyIstioMtls as i32, 2),
        (Protocol::None as i32, 0),
        (Protocol::Proxy as i32, 1),
        (service::Visibility::Public as i32, 0),
        (service::Visibility::Namespace as i32, 1),
    ];
    for (i, (got, want)) in pairs.iter().enumerate() {
        assert_eq!(got, want, "enum pair #{i}");
    }
}

#[test]
fn unknown_enum_number_decodes_but_does_not_convert() {
    // tunnel_protocol = 5: 9 (unknown). proto3 enums are open: decoding works,
    // converting to the Rust enum does not; consumers NACK such resources.
    let w = Workload::decode(&[0x28, 0x09][..]).unwrap();
    assert_eq!(w.tunnel_protocol, 9);
    assert!(TunnelProtocol::try_from(w.tunnel_protocol).is_err());
}

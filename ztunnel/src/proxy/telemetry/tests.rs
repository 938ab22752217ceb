//! Table tests of the label set and response flags.

use super::*;

fn id(s: &str) -> Identity {
    Identity::parse(s).unwrap()
}

fn peer(name: &str, ns: &str) -> PeerInfo {
    PeerInfo {
        name: format!("{name}-0"),
        workload_name: name.into(),
        namespace: ns.into(),
        canonical_name: name.into(),
        canonical_revision: "v1".into(),
        cluster_id: "Kubernetes".into(),
        ..Default::default()
    }
}

fn ctx(direction: Direction) -> ConnectionContext {
    ConnectionContext {
        direction,
        src_addr: "10.0.0.1:40000".parse().unwrap(),
        dst_addr: "10.0.0.2:15008".parse().unwrap(),
        hbone_target: Some("10.0.0.2:8080".into()),
        source: Some(peer("ui", "shop")),
        source_identity: Some(id("spiffe://cluster.local/ns/shop/sa/ui")),
        destination: Some(peer("cart", "shop")),
        destination_identity: Some(id("spiffe://cluster.local/ns/shop/sa/cart")),
        destination_service: Some(ServiceInfo {
            hostname: "cart.shop.svc.cluster.local".into(),
            namespace: "shop".into(),
            name: "cart".into(),
        }),
        security: SecurityPolicy::MutualTls,
    }
}

const NAMES: [&str; 23] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

fn get<'a>(labels: &'a [(&'static str, String)], k: &str) -> &'a str {
    &labels.iter().find(|(n, _)| *n == k).unwrap().1
}

#[test]
fn label_names_and_order_are_istios() {
    for d in [Direction::Outbound, Direction::Inbound] {
        let labels = traffic_labels(&ctx(d), ResponseFlag::None);
        let names: Vec<_> = labels.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, NAMES);
    }
}

#[test]
fn label_values_table() {
    struct Case {
        name: &'static str,
        ctx: ConnectionContext,
        flag: ResponseFlag,
        expect: &'static [(&'static str, &'static str)],
    }
    let mut plaintext = ctx(Direction::Inbound);
    plaintext.source = None;
    plaintext.source_identity = None;
    plaintext.destination_identity = None;
    plaintext.destination_service = None;
    plaintext.security = SecurityPolicy::Unknown;
    let mut passthrough = ctx(Direction::Outbound);
    passthrough.destination = None;
    passthrough.destination_identity = None;
    passthrough.destination_service = None;
    passthrough.source_identity = None;
    passthrough.security = SecurityPolicy::Unknown;
    let cases = [
        Case {
            name: "outbound hbone",
            ctx: ctx(Direction::Outbound),
            flag: ResponseFlag::None,
            expect: &[
                ("reporter", "source"),
                ("source_workload", "ui"),
                ("source_canonical_service", "ui"),
                ("source_canonical_revision", "v1"),
                ("source_workload_namespace", "shop"),
                ("source_principal", "spiffe://cluster.local/ns/shop/sa/ui"),
                ("source_app", "ui"),
                ("source_version", "v1"),
                ("source_cluster", "Kubernetes"),
                ("destination_service", "cart.shop.svc.cluster.local"),
                ("destination_service_namespace", "shop"),
                ("destination_service_name", "cart"),
                ("destination_workload", "cart"),
                (
                    "destination_principal",
                    "spiffe://cluster.local/ns/shop/sa/cart",
                ),
                ("request_protocol", "tcp"),
                ("response_flags", "-"),
                ("connection_security_policy", "mutual_tls"),
            ],
        },
        Case {
            name: "inbound denied",
            ctx: ctx(Direction::Inbound),
            flag: ResponseFlag::Deny,
            expect: &[("reporter", "destination"), ("response_flags", "DENY")],
        },
        Case {
            name: "plaintext inbound: unknown source, no principals",
            ctx: plaintext,
            flag: ResponseFlag::None,
            expect: &[
                ("source_workload", "unknown"),
                ("source_workload_namespace", "unknown"),
                ("source_principal", "unknown"),
                ("destination_principal", "unknown"),
                ("destination_service", "unknown"),
                ("destination_workload", "cart"),
                ("connection_security_policy", "unknown"),
            ],
        },
        Case {
            name: "passthrough",
            ctx: passthrough,
            flag: ResponseFlag::Connect,
            expect: &[
                ("source_principal", "unknown"),
                ("destination_workload", "unknown"),
                ("destination_service_name", "unknown"),
                ("response_flags", "CONNECT"),
                ("connection_security_policy", "unknown"),
            ],
        },
    ];
    for c in cases {
        let labels = traffic_labels(&c.ctx, c.flag);
        assert_eq!(labels.len(), 23, "{}", c.name);
        for (k, v) in c.expect {
            assert_eq!(get(&labels, k), *v, "{}: {k}", c.name);
        }
    }
}

#[test]
fn locality_labels_only_when_attached() {
    let mut c = ctx(Direction::Outbound);
    c.destination.as_mut().unwrap().region = "us-east".into();
    let labels = traffic_labels(&c, ResponseFlag::None);
    let tail: Vec<_> = labels[23..].iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        tail,
        [
            ("source_region", "unknown"),
            ("source_zone", "unknown"),
            ("destination_region", "us-east"),
            ("destination_zone", "unknown"),
        ]
    );
}

#[test]
fn peer_from_baggage() {
    let b = Baggage {
        cluster_id: Some("c1".into()),
        namespace: Some("shop".into()),
        workload_name: Some("ui".into()),
        service_name: Some("ui-svc".into()),
        service_version: Some("v2".into()),
        ..Default::default()
    };
    let p = PeerInfo::from(&b);
    assert_eq!(p.workload_name, "ui");
    assert_eq!(p.display_name(), "ui-svc");
    assert_eq!(p.cluster_id, "c1");
    assert_eq!(p.canonical_revision, "v2");
}

#[test]
fn response_flags_from_hbone_errors() {
    let dst: SocketAddr = "10.0.0.1:15008".parse().unwrap();
    let cases = [
        (
            hbone::Error::ConnectTimeout {
                dst,
                timeout: Duration::from_secs(10),
            },
            ResponseFlag::NetworkPolicy,
        ),
        (
            hbone::Error::Tls {
                dst,
                reason: "x".into(),
            },
            ResponseFlag::TlsFailure,
        ),
        (hbone::Error::NoH2 { dst }, ResponseFlag::H2HandshakeFailure),
        (
            hbone::Error::ConnectStatus {
                dst,
                authority: "a:1".into(),
                status: 401,
            },
            ResponseFlag::Connect,
        ),
    ];
    for (e, flag) in cases {
        assert_eq!(ResponseFlag::from_hbone(&e), flag, "{e}");
    }
}

#[test]
fn on_demand_dns_labels_are_istios() {
    let state = state::MeshState::default();
    state::local::load(&state, crate::proxy::tests::MESH).unwrap();
    let w = state
        .read()
        .workload_by_uid("Kubernetes//Pod/shop/ui-0")
        .unwrap();
    let labels = on_demand_dns_labels(&w, "db.example.com");
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        labels,
        [
            ("source_workload", "ui"),
            ("source_canonical_service", "ui"),
            ("source_canonical_revision", "v1"),
            ("source_workload_namespace", "shop"),
            ("source_principal", "spiffe://cluster.local/ns/shop/sa/ui"),
            ("source_app", "ui"),
            ("source_version", "v1"),
            ("source_cluster", "Kubernetes"),
            ("hostname", "db.example.com"),
        ]
    );
}

//! Table tests of the DNS decision.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use proto::istio::workload as pb;
use state::MeshState;
use state::model::{HealthStatus, Visibility};

use super::*;

fn ip_bytes(ip: &str) -> Vec<u8> {
    match ip.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn service(ns: &str, hostname: &str, vips: &[&str]) -> Service {
    Service::try_from(pb::Service {
        name: hostname.split('.').next().unwrap().into(),
        namespace: ns.into(),
        hostname: hostname.into(),
        addresses: vips
            .iter()
            .map(|v| pb::NetworkAddress {
                network: String::new(),
                address: ip_bytes(v),
                length: None,
            })
            .collect(),
        ..Default::default()
    })
    .unwrap()
}

fn pod(ns: &str, name: &str, ips: &[&str], service_key: &str, healthy: bool) -> state::Workload {
    let mut w = state::Workload::try_from(pb::Workload {
        uid: format!("Kubernetes//Pod/{ns}/{name}"),
        name: name.into(),
        namespace: ns.into(),
        addresses: ips.iter().map(|i| ip_bytes(i)).collect(),
        ..Default::default()
    })
    .unwrap();
    w.services.insert(service_key.into(), BTreeMap::new());
    if !healthy {
        w.status = HealthStatus::Unhealthy;
    }
    w
}

fn mesh() -> MeshState {
    let s = MeshState::default();
    let d = "svc.cluster.local";
    s.insert_service(
        "cart",
        service("shop", &format!("cart.shop.{d}"), &["10.0.0.1", "fd00::1"]),
    );
    s.insert_service(
        "v4",
        service("shop", &format!("v4only.shop.{d}"), &["10.0.0.2"]),
    );
    s.insert_service(
        "pay",
        service("other", &format!("pay.other.{d}"), &["10.0.1.1"]),
    );
    let mut secret = service("other", &format!("secret.other.{d}"), &["10.0.1.2"]);
    secret.visibility = Visibility::Namespace;
    s.insert_service("secret", secret);
    let mut own = service("shop", &format!("own.shop.{d}"), &["10.0.0.3"]);
    own.visibility = Visibility::Namespace;
    s.insert_service("own", own);
    s.insert_service("db", service("shop", &format!("db.shop.{d}"), &[]));
    s.insert_service("empty", service("shop", &format!("empty.shop.{d}"), &[]));
    let db = format!("shop/db.shop.{d}");
    s.insert_workload("db-0", pod("shop", "db-0", &["10.1.0.10"], &db, true));
    s.insert_workload(
        "db-1",
        pod("shop", "db-1", &["10.1.0.11", "fd00::11"], &db, true),
    );
    s.insert_workload("db-2", pod("shop", "db-2", &["10.1.0.12"], &db, false));
    s.insert_service("api", service("other", "api.example.com", &["240.240.0.1"]));
    s.insert_service(
        "wild",
        service("shop", "*.wild.example.com", &["240.240.0.2"]),
    );
    s.insert_service("dnsonly", service("other", "dnsonly.example.com", &[]));
    s
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m
}

fn decide_for(state: &MeshState, msg: &Message) -> Decision {
    let search = SearchContext::new("shop", "cluster.local");
    decide(&state.read(), &search, msg)
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|i| i.parse().unwrap()).collect()
}

const CART: &str = "cart.shop.svc.cluster.local";

#[test]
fn decision_table() {
    use RecordType::{A, AAAA, MX, TXT};
    let state = mesh();
    // (query name, type, CNAME target, addresses); `None` = forward.
    #[allow(clippy::type_complexity)]
    let table: &[(&str, RecordType, Option<(Option<&str>, &[&str])>)] = &[
        // Exact FQDNs, trailing dot or not, any case.
        (
            "cart.shop.svc.cluster.local.",
            A,
            Some((None, &["10.0.0.1"])),
        ),
        (
            "cart.shop.svc.cluster.local",
            AAAA,
            Some((None, &["fd00::1"])),
        ),
        (
            "CART.Shop.SVC.cluster.LOCAL.",
            A,
            Some((None, &["10.0.0.1"])),
        ),
        // The client's search list: short names answered with a CNAME to the FQDN.
        ("cart", A, Some((Some(CART), &["10.0.0.1"]))),
        ("cart.shop", A, Some((Some(CART), &["10.0.0.1"]))),
        ("cart.shop.svc", AAAA, Some((Some(CART), &["fd00::1"]))),
        ("Cart.Shop.", A, Some((Some(CART), &["10.0.0.1"]))),
        // As sent by a stub resolver (first search domain appended).
        (
            "cart.shop.shop.svc.cluster.local.",
            A,
            Some((Some(CART), &["10.0.0.1"])),
        ),
        (
            "cart.shop.svc.cluster.local.shop.svc.cluster.local",
            A,
            Some((Some(CART), &["10.0.0.1"])),
        ),
        // Other namespaces only when named.
        (
            "pay.other.shop.svc.cluster.local",
            A,
            Some((Some("pay.other.svc.cluster.local"), &["10.0.1.1"])),
        ),
        (
            "pay.other",
            A,
            Some((Some("pay.other.svc.cluster.local"), &["10.0.1.1"])),
        ),
        (
            "pay.other.svc",
            A,
            Some((Some("pay.other.svc.cluster.local"), &["10.0.1.1"])),
        ),
        (
            "pay.other.svc.cluster.local",
            A,
            Some((None, &["10.0.1.1"])),
        ),
        ("pay", A, None),
        ("pay.shop.svc.cluster.local", A, None),
        ("pay.svc.cluster.local", A, None),
        // Known name without an address of the family: empty NOERROR (CNAME kept).
        (
            "v4only",
            AAAA,
            Some((Some("v4only.shop.svc.cluster.local"), &[])),
        ),
        ("v4only.shop.svc.cluster.local", AAAA, Some((None, &[]))),
        // NAMESPACE visibility.
        ("secret.other.svc.cluster.local", A, None),
        ("secret.other", A, None),
        (
            "own",
            A,
            Some((Some("own.shop.svc.cluster.local"), &["10.0.0.3"])),
        ),
        // Headless services: healthy endpoints; pod names.
        (
            "db.shop.svc.cluster.local",
            A,
            Some((None, &["10.1.0.10", "10.1.0.11"])),
        ),
        (
            "db.shop.svc.cluster.local",
            AAAA,
            Some((None, &["fd00::11"])),
        ),
        (
            "db-1.db.shop.svc.cluster.local",
            A,
            Some((None, &["10.1.0.11"])),
        ),
        (
            "DB-1.db.shop.svc.cluster.local.",
            AAAA,
            Some((None, &["fd00::11"])),
        ),
        (
            "db-0.db",
            A,
            Some((Some("db-0.db.shop.svc.cluster.local"), &["10.1.0.10"])),
        ),
        ("db-2.db.shop.svc.cluster.local", A, None),
        ("db-9.db.shop.svc.cluster.local", A, None),
        ("cart-0.cart.shop.svc.cluster.local", A, None),
        ("empty.shop.svc.cluster.local", A, None),
        ("empty", A, None),
        // ServiceEntry hosts, exact and wildcard, also through the search list.
        ("api.example.com", A, Some((None, &["240.240.0.1"]))),
        ("API.example.com.", AAAA, Some((None, &[]))),
        (
            "api.example.com.shop.svc.cluster.local",
            A,
            Some((Some("api.example.com"), &["240.240.0.1"])),
        ),
        ("foo.wild.example.com", A, Some((None, &["240.240.0.2"]))),
        ("a.b.wild.example.com", A, Some((None, &["240.240.0.2"]))),
        (
            "foo.wild.example.com.shop.svc.cluster.local",
            A,
            Some((Some("foo.wild.example.com"), &["240.240.0.2"])),
        ),
        ("wild.example.com", A, None),
        ("dnsonly.example.com", A, None),
        // Everything else is forwarded.
        ("google.com", A, None),
        ("google.com.shop.svc.cluster.local", AAAA, None),
        ("cluster.local", A, None),
        ("svc.cluster.local", A, None),
        ("shop.svc.cluster.local", A, None),
        (".", A, None),
        // Only A/AAAA are answered.
        ("cart.shop.svc.cluster.local", MX, None),
        ("cart", TXT, None),
    ];
    for (name, qtype, want) in table {
        let got = decide_for(&state, &query(name, *qtype));
        let want = match want {
            None => Decision::Forward,
            Some((cname, addrs)) => Decision::Answer(Answer {
                cname: cname.map(str::to_string),
                ips: ips(addrs),
            }),
        };
        assert_eq!(got, want, "{name} {qtype}");
    }
}

#[test]
fn only_single_in_class_queries_are_answered() {
    let state = mesh();
    let mut chaos = query(CART, RecordType::A);
    chaos.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(decide_for(&state, &chaos), Decision::Forward);

    let mut two = query(CART, RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii(CART).unwrap(),
        RecordType::AAAA,
    ));
    assert_eq!(decide_for(&state, &two), Decision::Forward);

    let mut none = query(CART, RecordType::A);
    none.queries.clear();
    assert_eq!(decide_for(&state, &none), Decision::FormErr);

    let response = query(CART, RecordType::A).into_response();
    assert_eq!(decide_for(&state, &response), Decision::Forward);
}

#[test]
fn other_client_namespace_sees_its_own_services() {
    let state = mesh();
    let search = SearchContext::new("other", "cluster.local");
    let d = decide(&state.read(), &search, &query("secret", RecordType::A));
    assert_eq!(
        d,
        Decision::Answer(Answer {
            cname: Some("secret.other.svc.cluster.local".into()),
            ips: ips(&["10.0.1.2"]),
        })
    );
    let d = decide(&state.read(), &search, &query("cart", RecordType::A));
    assert_eq!(d, Decision::Forward);
}

#[test]
fn custom_cluster_domain() {
    let state = MeshState::default();
    state.insert_service(
        "x",
        service("shop", "cart.shop.svc.corp.example", &["10.0.0.9"]),
    );
    let search = SearchContext::new("shop", "corp.example.");
    let d = decide(&state.read(), &search, &query("cart", RecordType::A));
    assert_eq!(
        d,
        Decision::Answer(Answer {
            cname: Some("cart.shop.svc.corp.example".into()),
            ips: ips(&["10.0.0.9"]),
        })
    );
}

#[test]
fn candidates_follow_the_search_list() {
    let s = SearchContext::new("Shop", "cluster.local");
    assert_eq!(
        s.candidates("cart.other.shop.svc.cluster.local"),
        vec![
            "cart.other.shop.svc.cluster.local",
            "cart.other.svc.cluster.local",
            "cart.other.cluster.local",
            "cart.other",
        ]
    );
    assert_eq!(
        s.candidates("cart"),
        vec![
            "cart.shop.svc.cluster.local",
            "cart.svc.cluster.local",
            "cart.cluster.local",
            "cart",
        ]
    );
    assert_eq!(
        s.candidates("cart.other.svc.cluster.local"),
        vec!["cart.other.svc.cluster.local"]
    );
    assert_eq!(
        s.candidates("shop.svc.cluster.local"),
        vec!["shop.svc.cluster.local"]
    );
}

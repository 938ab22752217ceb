//! Service → Service.

use proto::istio::workload::{AppProtocol, IpFamilies};

use crate::support::{ip, service_of, translate, view_of};

#[test]
fn service_basic() {
    assert_snapshot!(view_of("service_basic"));
    let (s, _) = translate("service_basic");
    let svc = service_of(&s, "bookinfo/reviews.bookinfo.svc.cluster.local");
    assert_eq!(svc.hostname, "reviews.bookinfo.svc.cluster.local");
    assert!(svc.canonical);
    assert_eq!(svc.addresses.len(), 1);
    assert_eq!(svc.addresses[0].address, vec![10, 96, 5, 5]);
    assert_eq!(svc.addresses[0].length, None);
    let named = svc.ports.iter().find(|p| p.service_port == 9081).unwrap();
    assert_eq!(
        named.target_port, 0,
        "named target port is resolved per endpoint"
    );
    assert_eq!(named.app_protocol, AppProtocol::Http2 as i32);
    assert_eq!(svc.ip_families, IpFamilies::Ipv4Only as i32);
}

#[test]
fn service_headless() {
    assert_snapshot!(view_of("service_headless"));
    let (s, _) = translate("service_headless");
    assert!(
        service_of(&s, "data/db.data.svc.cluster.local")
            .addresses
            .is_empty()
    );
    assert!(
        !s.addresses
            .contains_key("data/external.data.svc.cluster.local")
    );
}

#[test]
fn service_dual_stack() {
    assert_snapshot!(view_of("service_dual_stack"));
    let (s, _) = translate("service_dual_stack");
    let dual = service_of(&s, "net/dual.net.svc.cluster.local");
    assert_eq!(dual.ip_families, IpFamilies::Dual as i32);
    let ips: Vec<_> = dual
        .addresses
        .iter()
        .map(|a| (a.network.as_str(), ip(&a.address)))
        .collect();
    assert_eq!(
        ips,
        [
            ("net-1", "10.96.7.7".to_owned()),
            ("net-1", "fd00:10:96::7".to_owned())
        ]
    );
}

#[test]
fn service_load_balancing() {
    assert_snapshot!(view_of("service_load_balancing"));
}

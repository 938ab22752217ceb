//! Builders shared by the unit tests.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use proto::istio::security as sec;
use proto::istio::workload as pb;

use crate::model::{
    Cidr, Match, Policy, PolicyAction, PolicyScope, Service, StringMatch, TunnelProtocol, Workload,
};

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(crate) fn ip_bytes(s: &str) -> Vec<u8> {
    match ip(s) {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// A minimal valid proto workload.
pub(crate) fn pb_workload(uid: &str, namespace: &str, ips: &[&str]) -> pb::Workload {
    pb::Workload {
        uid: uid.into(),
        name: uid.rsplit('/').next().unwrap_or(uid).into(),
        namespace: namespace.into(),
        addresses: ips.iter().map(|i| ip_bytes(i)).collect(),
        ..Default::default()
    }
}

/// A model workload (HBONE, healthy) with `sa` as its service account.
pub(crate) fn workload(uid: &str, namespace: &str, sa: &str, ips: &[&str]) -> Workload {
    let mut w = pb_workload(uid, namespace, ips);
    w.service_account = sa.into();
    w.tunnel_protocol = pb::TunnelProtocol::Hbone as i32;
    Workload::try_from(w).unwrap()
}

/// Adds `workload` as an endpoint of `ns/host` with the given port map.
pub(crate) fn with_service(mut w: Workload, key: &str, ports: &[(u16, u16)]) -> Workload {
    w.services.insert(
        key.into(),
        ports.iter().copied().collect::<BTreeMap<_, _>>(),
    );
    w
}

pub(crate) fn tcp(mut w: Workload) -> Workload {
    w.protocol = TunnelProtocol::Tcp;
    w
}

pub(crate) fn pb_service(
    namespace: &str,
    name: &str,
    vips: &[&str],
    ports: &[(u32, u32)],
) -> pb::Service {
    pb::Service {
        name: name.into(),
        namespace: namespace.into(),
        hostname: format!("{name}.{namespace}.svc.cluster.local"),
        addresses: vips
            .iter()
            .map(|v| pb::NetworkAddress {
                network: String::new(),
                address: ip_bytes(v),
                length: None,
            })
            .collect(),
        ports: ports
            .iter()
            .map(|(s, t)| pb::Port {
                service_port: *s,
                target_port: *t,
                app_protocol: 0,
            })
            .collect(),
        ..Default::default()
    }
}

pub(crate) fn service(namespace: &str, name: &str, vips: &[&str], ports: &[(u32, u32)]) -> Service {
    Service::try_from(pb_service(namespace, name, vips, ports)).unwrap()
}

pub(crate) fn policy(
    namespace: &str,
    name: &str,
    scope: PolicyScope,
    action: PolicyAction,
    rules: Vec<Vec<Vec<Match>>>,
) -> Arc<Policy> {
    Arc::new(Policy {
        name: name.into(),
        namespace: namespace.into(),
        scope,
        action,
        dry_run: false,
        rules,
    })
}

pub(crate) fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.into())
}

pub(crate) fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

pub(crate) fn pb_policy(namespace: &str, name: &str) -> sec::Authorization {
    sec::Authorization {
        name: name.into(),
        namespace: namespace.into(),
        ..Default::default()
    }
}

pub(crate) fn pb_address_workload(w: pb::Workload) -> pb::Address {
    pb::Address {
        r#type: Some(pb::address::Type::Workload(w)),
    }
}

pub(crate) fn pb_address_service(s: pb::Service) -> pb::Address {
    pb::Address {
        r#type: Some(pb::address::Type::Service(s)),
    }
}

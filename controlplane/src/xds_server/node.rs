//! Who is on the other end of a stream: the node id, its metadata, and istiod's identity check.
//!
//! `Node.id` is `<type>~<ip>~<pod>.<namespace>~<domain>` (exactly four `~`-separated parts, a
//! known proxy type, an IP address unless metadata `INSTANCE_IPS` carries valid ones). The
//! token's namespace must equal metadata `NAMESPACE` when present and its service account must
//! equal metadata `SERVICE_ACCOUNT` when present (istiod's `PILOT_ENABLE_XDS_IDENTITY_CHECK`),
//! otherwise the stream is refused with `PermissionDenied`.

use std::net::IpAddr;

use prost_types::value::Kind;
use proto::envoy::config::core::v3::Node;
use tonic::Status;

use crate::tokens::CallerIdentity;

/// Proxy types istiod accepts in a node id.
pub const PROXY_TYPES: [&str; 5] = ["ztunnel", "waypoint", "agentgateway", "sidecar", "router"];

/// The node id format, for error messages.
pub const NODE_ID_FORMAT: &str = "<type>~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local";

/// A parsed node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyNode {
    pub id: String,
    pub proxy_type: String,
    pub ips: Vec<IpAddr>,
    pub pod_name: String,
    pub pod_namespace: String,
    pub domain: String,
    /// Metadata `NAMESPACE`, `SERVICE_ACCOUNT`, `NODE_NAME`.
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    pub node_name: Option<String>,
}

fn meta_string(node: &Node, key: &str) -> Option<String> {
    let value = node.metadata.as_ref()?.fields.get(key)?;
    match &value.kind {
        Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// Parses the node of a stream's first request.
pub fn parse_node(node: Option<&Node>) -> Result<ProxyNode, Status> {
    let node = node.ok_or_else(|| {
        Status::invalid_argument("the first request of a stream must carry `node`")
    })?;
    let invalid = |why: &str| {
        Status::invalid_argument(format!(
            "invalid node id {:?}: {why}; expected {NODE_ID_FORMAT}",
            node.id
        ))
    };
    let parts: Vec<&str> = node.id.split('~').collect();
    let [proxy_type, ip, pod, domain] = parts[..] else {
        return Err(invalid(&format!("{} parts instead of 4", parts.len())));
    };
    if !PROXY_TYPES.contains(&proxy_type) {
        return Err(invalid(&format!(
            "unknown proxy type {proxy_type:?} (known: {})",
            PROXY_TYPES.join(", ")
        )));
    }
    let mut ips: Vec<IpAddr> = meta_string(node, "INSTANCE_IPS")
        .map(|s| s.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .unwrap_or_default();
    if ips.is_empty() {
        ips.push(
            ip.parse()
                .map_err(|_| invalid(&format!("{ip:?} is not an IP address")))?,
        );
    }
    let (pod_name, pod_namespace) = pod.rsplit_once('.').unwrap_or((pod, ""));
    Ok(ProxyNode {
        id: node.id.clone(),
        proxy_type: proxy_type.to_string(),
        ips,
        pod_name: pod_name.to_string(),
        pod_namespace: pod_namespace.to_string(),
        domain: domain.to_string(),
        namespace: meta_string(node, "NAMESPACE"),
        service_account: meta_string(node, "SERVICE_ACCOUNT"),
        node_name: meta_string(node, "NODE_NAME"),
    })
}

/// istiod's xDS identity check.
pub fn check_identity(node: &ProxyNode, caller: &CallerIdentity) -> Result<(), Status> {
    if let Some(ns) = &node.namespace
        && *ns != caller.namespace
    {
        return Err(Status::permission_denied(format!(
            "node {} claims namespace {ns:?} (metadata NAMESPACE) but its token is for {}",
            node.id,
            caller.ns_sa()
        )));
    }
    if let Some(sa) = &node.service_account
        && *sa != caller.service_account
    {
        return Err(Status::permission_denied(format!(
            "node {} claims service account {sa:?} (metadata SERVICE_ACCOUNT) but its token is for {}",
            node.id,
            caller.ns_sa()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use prost_types::{Struct, Value};

    use super::*;

    fn node(id: &str, meta: &[(&str, &str)]) -> Node {
        Node {
            id: id.into(),
            metadata: Some(Struct {
                fields: meta
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            Value {
                                kind: Some(Kind::StringValue(v.to_string())),
                            },
                        )
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    fn caller(ns: &str, sa: &str) -> CallerIdentity {
        CallerIdentity {
            namespace: ns.into(),
            service_account: sa.into(),
            pod: None,
            node: None,
        }
    }

    #[test]
    fn parses_ztunnel_node() {
        let n = node(
            "ztunnel~10.244.1.7~ztunnel-x2k9.istio-system~istio-system.svc.cluster.local",
            &[("NAMESPACE", "istio-system"), ("NODE_NAME", "node-a")],
        );
        let p = parse_node(Some(&n)).unwrap();
        assert_eq!(p.proxy_type, "ztunnel");
        assert_eq!(p.pod_name, "ztunnel-x2k9");
        assert_eq!(p.pod_namespace, "istio-system");
        assert_eq!(p.ips, vec!["10.244.1.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(p.node_name.as_deref(), Some("node-a"));
        check_identity(&p, &caller("istio-system", "ztunnel")).unwrap();
        let err = check_identity(&p, &caller("default", "ztunnel")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("default/ztunnel"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn rejects_bad_ids() {
        for id in [
            "ztunnel~1.1.1.1~a.b",
            "a~b~c~d~e",
            "envoy~1.1.1.1~a.b~b.svc.cluster.local",
            "ztunnel~not-an-ip~a.b~b.svc.cluster.local",
        ] {
            let err = parse_node(Some(&node(id, &[]))).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{id}");
            assert!(err.message().contains(NODE_ID_FORMAT), "{}", err.message());
        }
        // INSTANCE_IPS replaces an unusable ip part.
        let n = node(
            "ztunnel~x~a.b~b.svc",
            &[("INSTANCE_IPS", "10.0.0.1,fd00::1")],
        );
        assert_eq!(parse_node(Some(&n)).unwrap().ips.len(), 2);
        assert_eq!(
            parse_node(None).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn service_account_metadata_must_match() {
        let n = node(
            "waypoint~10.0.0.9~wp.shop~shop.svc.cluster.local",
            &[("NAMESPACE", "shop"), ("SERVICE_ACCOUNT", "waypoint")],
        );
        let p = parse_node(Some(&n)).unwrap();
        check_identity(&p, &caller("shop", "waypoint")).unwrap();
        let err = check_identity(&p, &caller("shop", "cart")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }
}

//! Pod → `istio.workload.Workload`.
//!
//! Pods in a terminal phase (`Succeeded`, `Failed`) and pods without an IP are not sent; a pod
//! with an unparsable IP is skipped with a diagnostic.
//!
//! | Pod | Workload |
//! |---|---|
//! | cluster ID, namespace, name | `uid` = `<clusterId>//Pod/<ns>/<name>`, `name`, `namespace`, `cluster_id` |
//! | `status.podIPs` (else `podIP`) | `addresses` (raw bytes) |
//! | annotation `ambient.istio.io/redirection: enabled` | `tunnel_protocol: HBONE` |
//! | label `networking.istio.io/tunnel` containing `http` | `HBONE` and `native_tunnel` |
//! | `spec.serviceAccountName` (default `default`), `spec.nodeName` | `service_account`, `node` |
//! | Ready condition not `True`, or `deletionTimestamp` set | `status: UNHEALTHY` |
//! | `spec.hostNetwork` | `network_mode: HOST_NETWORK` |
//! | owner / labels | `workload_name`, `canonical_name`, `canonical_revision`; `workload_type` is always `POD` |
//! | selecting Services of the namespace | `services` (`ns/hostname` → ports, named target ports resolved) |
//! | selector policies + PeerAuthentication | `authorization_policies` |
//!
//! `trust_domain` is set only when the mesh trust domain is not `cluster.local`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proto::istio::workload::{
    NetworkMode, Port, PortList, TunnelProtocol, Workload, WorkloadStatus, WorkloadType,
};

use super::authz::SentPolicy;
use super::peer_auth::PeerAuthIndex;
use super::service::{hostname, ip_bytes};
use super::{Context, TranslateError, labels_of};
use crate::k8s::ObjectKey;

/// Pod annotation the CNI node agent sets once in-pod redirection is in place.
pub const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";
/// Label declaring that the workload speaks a tunnel protocol itself.
pub const TUNNEL_LABEL: &str = "networking.istio.io/tunnel";
/// Label overriding the derived workload name.
pub const WORKLOAD_NAME_LABEL: &str = "service.istio.io/workload-name";

/// `<clusterId>//Pod/<namespace>/<name>`.
pub fn pod_uid(cluster_id: &str, namespace: &str, name: &str) -> String {
    format!("{cluster_id}//Pod/{namespace}/{name}")
}

/// Translates one pod; `Ok(None)` when istiod does not send it.
pub(crate) fn convert(
    pod: &Pod,
    ctx: &Context<'_>,
    policies: &BTreeMap<ObjectKey, SentPolicy>,
    peer_auths: &PeerAuthIndex<'_>,
) -> Result<Option<Workload>, TranslateError> {
    let status = pod.status.clone().unwrap_or_default();
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Ok(None);
    }
    let ips: Vec<String> = match &status.pod_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(|p| p.ip.clone()).collect(),
        _ => status
            .pod_ip
            .iter()
            .filter(|ip| !ip.is_empty())
            .cloned()
            .collect(),
    };
    if ips.is_empty() {
        return Ok(None);
    }
    let addresses = ips
        .iter()
        .map(|ip| {
            ip.parse::<IpAddr>()
                .map(ip_bytes)
                .map_err(|_| TranslateError::InvalidPodIp(ip.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let meta = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let namespace = meta.namespace.clone().unwrap_or_default();
    let labels = labels_of(meta);
    let opts = ctx.options;

    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let healthy = ready && meta.deletion_timestamp.is_none();

    let authorization_policies = policy_keys(&namespace, labels, opts, policies, peer_auths);

    let workload_name = workload_name(pod);
    let (canonical_name, canonical_revision) = canonical_service(labels, &workload_name);

    let mut w = Workload {
        uid: pod_uid(&opts.cluster_id, &namespace, &name),
        name,
        namespace: namespace.clone(),
        addresses,
        network: ctx.network.clone(),
        tunnel_protocol: TunnelProtocol::None as i32,
        trust_domain: trust_domain(opts),
        service_account: service_account(&spec),
        node: spec.node_name.clone().unwrap_or_default(),
        canonical_name,
        canonical_revision,
        workload_type: WorkloadType::Pod as i32,
        workload_name,
        services: services_for(pod, &namespace, labels, ctx),
        authorization_policies,
        status: if healthy {
            WorkloadStatus::Healthy
        } else {
            WorkloadStatus::Unhealthy
        } as i32,
        cluster_id: opts.cluster_id.clone(),
        network_mode: if spec.host_network == Some(true) {
            NetworkMode::HostNetwork
        } else {
            NetworkMode::Standard
        } as i32,
        ..Default::default()
    };
    set_tunnel_protocol(labels, meta.annotations.as_ref(), &mut w);
    Ok(Some(w))
}

/// `authorization_policies` of a workload in `namespace` with `labels`: the selector policies of
/// its namespace and of the root namespace that select it (sorted), then its PeerAuthentication
/// keys.
pub(crate) fn policy_keys(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    opts: &super::TranslateOptions,
    policies: &BTreeMap<ObjectKey, SentPolicy>,
    peer_auths: &PeerAuthIndex<'_>,
) -> Vec<String> {
    let mut keys: Vec<String> = policies
        .values()
        .filter(|p| {
            let ns = &p.authorization.namespace;
            (ns == namespace || *ns == opts.root_namespace)
                && p.selector.as_ref().is_some_and(|s| s.matches(labels))
        })
        .map(SentPolicy::key)
        .collect();
    keys.sort();
    keys.extend(peer_auths.keys_for_workload(namespace, labels));
    keys
}

/// `Workload.trust_domain`: empty for the default `cluster.local`.
pub(crate) fn trust_domain(opts: &super::TranslateOptions) -> String {
    if opts.trust_domain == "cluster.local" {
        String::new()
    } else {
        opts.trust_domain.clone()
    }
}

fn service_account(spec: &k8s_openapi::api::core::v1::PodSpec) -> String {
    spec.service_account_name
        .as_deref()
        .or(spec.service_account.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_owned()
}

fn set_tunnel_protocol(
    labels: &BTreeMap<String, String>,
    annotations: Option<&BTreeMap<String, String>>,
    w: &mut Workload,
) {
    if annotations
        .and_then(|a| a.get(REDIRECTION_ANNOTATION))
        .is_some_and(|v| v == "enabled")
    {
        w.tunnel_protocol = TunnelProtocol::Hbone as i32;
    }
    if labels
        .get(TUNNEL_LABEL)
        .is_some_and(|v| v.split(',').any(|t| t == "http"))
    {
        w.tunnel_protocol = TunnelProtocol::Hbone as i32;
        w.native_tunnel = true;
    }
}

/// The owning workload's name: label `service.istio.io/workload-name`, else derived from the
/// controller owner reference (ReplicaSet of a Deployment ⇒ the Deployment, Job of a CronJob
/// ⇒ the CronJob, other controllers ⇒ their name), else the pod name.
pub fn workload_name(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let labels = labels_of(meta);
    if let Some(n) = labels.get(WORKLOAD_NAME_LABEL) {
        return n.clone();
    }
    let pod_name = meta.name.clone().unwrap_or_default();
    let Some(owner) = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    else {
        return pod_name;
    };
    let derived = match owner.kind.as_str() {
        "ReplicaSet" => replica_set_owner(&owner.name, labels),
        "ReplicationController" => labels
            .get("deploymentconfig")
            .filter(|d| !d.is_empty())
            .cloned()
            .unwrap_or_else(|| owner.name.clone()),
        "Job" => cron_job_name(&owner.name)
            .map(str::to_owned)
            .unwrap_or_else(|| owner.name.clone()),
        _ => owner.name.clone(),
    };
    if derived.is_empty() {
        pod_name
    } else {
        derived
    }
}

/// Deployment (or Argo Rollout) name from a ReplicaSet name: strip `-<pod-template-hash>`.
/// Without the hash label (hand-written pods) a last segment that looks like a template hash
/// is stripped.
fn replica_set_owner(rs: &str, labels: &BTreeMap<String, String>) -> String {
    for label in ["pod-template-hash", "rollouts-pod-template-hash"] {
        if let Some(hash) = labels.get(label).filter(|h| !h.is_empty()) {
            if rs.ends_with(hash.as_str()) {
                return rs
                    .strip_suffix(&format!("-{hash}"))
                    .unwrap_or(rs)
                    .to_owned();
            }
            return rs.to_owned();
        }
    }
    match rs.rsplit_once('-') {
        Some((base, hash)) if !base.is_empty() && looks_like_template_hash(hash) => base.to_owned(),
        _ => rs.to_owned(),
    }
}

/// Kubernetes' `SafeEncodeString` alphabet (no vowels, no 0/1/3), 1–10 characters.
fn looks_like_template_hash(s: &str) -> bool {
    (1..=10).contains(&s.len())
        && s.bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
}

/// `<cronjob>-<8 to 10 digits>` ⇒ `<cronjob>`.
fn cron_job_name(job: &str) -> Option<&str> {
    let (base, ts) = job.rsplit_once('-')?;
    ((8..=10).contains(&ts.len()) && ts.bytes().all(|b| b.is_ascii_digit()) && !base.is_empty())
        .then_some(base)
}

/// `(canonical name, canonical revision)` from the labels, else the workload name and `latest`.
pub fn canonical_service(
    labels: &BTreeMap<String, String>,
    workload_name: &str,
) -> (String, String) {
    let first = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
            .cloned()
    };
    let name = first(&[
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ])
    .unwrap_or_else(|| workload_name.to_owned());
    let revision = first(&[
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ])
    .unwrap_or_else(|| "latest".to_owned());
    (name, revision)
}

/// Every Service of the pod's namespace whose (non-empty) selector matches the pod.
fn services_for(
    pod: &Pod,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    ctx: &Context<'_>,
) -> HashMap<String, PortList> {
    let mut out = HashMap::new();
    let range = ObjectKey::new(namespace, "")..;
    for (key, svc) in ctx.cluster.services.range(range) {
        if key.namespace != namespace {
            break;
        }
        if !selects(svc, labels) {
            continue;
        }
        let host = hostname(&key.name, namespace, &ctx.options.domain_suffix);
        out.insert(format!("{namespace}/{host}"), port_list(svc, pod));
    }
    out
}

fn selects(svc: &Service, labels: &BTreeMap<String, String>) -> bool {
    let Some(spec) = &svc.spec else { return false };
    if spec.type_.as_deref() == Some("ExternalName") {
        return false;
    }
    match &spec.selector {
        Some(sel) if !sel.is_empty() => sel
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v)),
        _ => false,
    }
}

/// Service port → the pod's target port; a named target port the pod does not declare drops
/// that service port for this pod.
fn port_list(svc: &Service, pod: &Pod) -> PortList {
    let ports = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|p| {
            let service_port = u32::try_from(p.port).ok()?;
            let target_port = match &p.target_port {
                None => service_port,
                Some(IntOrString::Int(t)) => u32::try_from(*t).ok()?,
                Some(IntOrString::String(name)) => container_port(pod, name)?,
            };
            Some(Port {
                service_port,
                target_port,
                app_protocol: 0,
            })
        })
        .collect();
    PortList { ports }
}

fn container_port(pod: &Pod, name: &str) -> Option<u32> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u32::try_from(p.container_port).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_set_names() {
        let l = |h: &str| BTreeMap::from([("pod-template-hash".to_owned(), h.to_owned())]);
        assert_eq!(replica_set_owner("cart-7d9f8b6c4", &l("7d9f8b6c4")), "cart");
        assert_eq!(
            replica_set_owner("my-app-7d9f8b6c4", &l("7d9f8b6c4")),
            "my-app"
        );
        // Hash label that is not the suffix: the ReplicaSet is its own workload.
        assert_eq!(replica_set_owner("cart-abc", &l("zzz")), "cart-abc");
        // No label: strip a hash-looking suffix only.
        assert_eq!(
            replica_set_owner("cart-7d9f8b6c4", &BTreeMap::new()),
            "cart"
        );
        assert_eq!(
            replica_set_owner("cart-frontend", &BTreeMap::new()),
            "cart-frontend"
        );
        assert_eq!(replica_set_owner("cart", &BTreeMap::new()), "cart");
    }

    #[test]
    fn cron_job_names() {
        assert_eq!(cron_job_name("backup-28999140"), Some("backup"));
        assert_eq!(cron_job_name("backup-1234567"), None);
        assert_eq!(cron_job_name("backup-12345678901"), None);
        assert_eq!(cron_job_name("migrate"), None);
    }

    #[test]
    fn canonical_precedence() {
        let l = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            canonical_service(&l(&[]), "wl"),
            ("wl".into(), "latest".into())
        );
        assert_eq!(
            canonical_service(&l(&[("app", "a"), ("version", "v1")]), "wl"),
            ("a".into(), "v1".into())
        );
        assert_eq!(
            canonical_service(
                &l(&[
                    ("app", "a"),
                    ("app.kubernetes.io/name", "k"),
                    ("app.kubernetes.io/version", "kv"),
                    ("version", "v1")
                ]),
                "wl"
            ),
            ("k".into(), "kv".into())
        );
        assert_eq!(
            canonical_service(
                &l(&[
                    ("app.kubernetes.io/name", "k"),
                    ("service.istio.io/canonical-name", "c"),
                    ("service.istio.io/canonical-revision", "cr")
                ]),
                "wl"
            ),
            ("c".into(), "cr".into())
        );
    }
}

//! The translator: Kubernetes objects ([`Cluster`]) in, exactly what istiod sends to ztunnel
//! ([`Snapshot`]) out.
//!
//! What it owns: the istiod ambient-index rules for
//!
//! - Pod → `istio.workload.Workload` ([`workload`]), resource name = uid
//!   `<clusterId>//Pod/<ns>/<name>`;
//! - Service → `istio.workload.Service` ([`service`]), resource name `<ns>/<hostname>`;
//! - AuthorizationPolicy → `istio.security.Authorization` ([`authz`]), name `<ns>/<name>`;
//! - PeerAuthentication → the static STRICT policy, port-level conversions and the
//!   per-workload policy keys ([`peer_auth`]);
//! - ServiceEntry → one Service per host and one Workload per endpoint ([`service_entry`]).
//!
//! The translation is a pure function of its inputs: no I/O, no clock, deterministic output.
//! Whatever istiod would report in an object's status (unsupported action, HTTP attributes
//! dropped, skipped objects) comes back as [`Diagnostic`]s from [`translate_with_diagnostics`];
//! [`translate`] logs them.
//!
//! Where the input lacks what the API server would have defaulted (hand-written YAML), the
//! API server's defaults are applied: `serviceAccountName` = `default`, `targetPort` = `port`,
//! `protocol` = `TCP`, `clusterIPs` from `clusterIP`, and `ipFamilies` from the cluster IPs.
//!
//! Not modelled yet: waypoints (`istio.io/use-waypoint` is ignored, `waypoint` stays unset),
//! Nodes (so `locality` stays unset), WorkloadEntry/EndpointSlice workloads, ServiceEntries
//! selecting pods (`workloadSelector`), multi-network gateways.

pub mod authz;
pub mod peer_auth;
pub mod service;
pub mod service_entry;
pub mod workload;

use std::collections::BTreeMap;

use proto::istio::workload::{Address, address};
use serde::Serialize;

use crate::k8s::{Cluster, ObjectKey};
use crate::snapshot::Snapshot;

/// Namespace label istiod reads for the cluster's network.
pub const NETWORK_LABEL: &str = "topology.istio.io/network";

/// Knobs that istiod takes from its mesh config and environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TranslateOptions {
    /// istiod's cluster ID (`CLUSTER_ID`); prefix of workload uids and `Workload.cluster_id`.
    pub cluster_id: String,
    /// Mesh trust domain. `Workload.trust_domain` stays empty when it is `cluster.local`.
    pub trust_domain: String,
    /// Istio root namespace: mesh-wide policies live here.
    pub root_namespace: String,
    /// Cluster DNS suffix for service hostnames.
    pub domain_suffix: String,
    /// Network of workloads and service VIPs. When empty, the root namespace's
    /// `topology.istio.io/network` label is used, as istiod does.
    pub network: String,
    /// istiod's `AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY`: send `istio.io/dry-run` policies
    /// with `dry_run=true` instead of leaving them out.
    pub enable_dry_run_authorization_policy: bool,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        Self {
            cluster_id: "Kubernetes".to_owned(),
            trust_domain: "cluster.local".to_owned(),
            root_namespace: "istio-system".to_owned(),
            domain_suffix: "cluster.local".to_owned(),
            network: String::new(),
            enable_dry_run_authorization_policy: false,
        }
    }
}

/// An object that was skipped, or translated with a caveat (istiod's status conditions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Kind of the object (`Pod`, `Service`, `AuthorizationPolicy`, ...).
    pub kind: &'static str,
    /// The object.
    pub object: ObjectKey,
    /// What happened.
    pub finding: Finding,
}

/// What happened to an object during translation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Finding {
    /// The object is not sent.
    #[error("not sent: {0}")]
    Skipped(#[from] TranslateError),
    /// The object is sent without the part named.
    #[error("partly sent: {0}")]
    Partial(TranslateError),
    /// AUDIT/CUSTOM policies are not sent (istiod: "ztunnel does not support the X action").
    #[error("ztunnel does not support the {0} action; the policy is not sent")]
    UnsupportedAction(&'static str),
    /// A dry-run policy while dry-run support is off.
    #[error("istio.io/dry-run policy not sent (dry-run support is disabled)")]
    DryRunNotSent,
    /// HTTP attributes cannot be enforced by ztunnel.
    #[error(
        "ztunnel does not support HTTP attributes (found: {attributes}). In ambient mode you \
         must use a waypoint proxy to enforce HTTP rules. {effect}"
    )]
    HttpAttributes {
        /// Attribute names, sorted, comma-separated.
        attributes: String,
        /// What ztunnel enforces instead.
        effect: &'static str,
    },
    /// `selector: {}` makes a workload-selector policy that istiod attaches to no workload.
    #[error("the selector has no labels; the policy is sent but attached to no workload")]
    EmptySelector,
}

/// Why an object could not be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// `status.podIP(s)` holds something that is not an IP address.
    #[error("pod IP {0:?} is not an IP address")]
    InvalidPodIp(String),
    /// `spec.clusterIP(s)` holds something that is not an IP address.
    #[error("cluster IP {0:?} is not an IP address")]
    InvalidClusterIp(String),
    /// A ServiceEntry address that is neither an IP nor a CIDR.
    #[error("address {0:?} is neither an IP address nor a CIDR; the address is left out")]
    InvalidAddress(String),
    /// A `STATIC` ServiceEntry endpoint whose address is not an IP.
    #[error(
        "endpoint address {0:?} is not an IP address, which resolution STATIC needs (use resolution DNS for host names); the endpoint is left out"
    )]
    InvalidEndpointAddress(String),
    /// A field the translation does not model.
    #[error("not modelled: {0}")]
    Unsupported(String),
}

/// Translates the cluster; diagnostics are logged.
pub fn translate(cluster: &Cluster, options: &TranslateOptions) -> Snapshot {
    let (snapshot, diagnostics) = translate_with_diagnostics(cluster, options);
    for d in &diagnostics {
        tracing::warn!(kind = d.kind, object = %d.object, "{}", d.finding);
    }
    snapshot
}

/// Translates the cluster and returns what istiod would have reported in statuses.
pub fn translate_with_diagnostics(
    cluster: &Cluster,
    options: &TranslateOptions,
) -> (Snapshot, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let ctx = Context::new(cluster, options);
    let mut snapshot = Snapshot::default();

    let policies = authz::convert_all(cluster, options, &mut diags);
    let peer_auths = peer_auth::PeerAuthIndex::new(cluster, &options.root_namespace);

    for (key, svc) in &cluster.services {
        match service::convert(svc, &ctx) {
            Ok(Some(s)) => {
                let name = format!("{}/{}", s.namespace, s.hostname);
                snapshot.addresses.insert(
                    name,
                    Address {
                        r#type: Some(address::Type::Service(s)),
                    },
                );
            }
            Ok(None) => {}
            Err(e) => diags.push(Diagnostic {
                kind: "Service",
                object: key.clone(),
                finding: e.into(),
            }),
        }
    }

    for (key, pod) in &cluster.pods {
        match workload::convert(pod, &ctx, &policies, &peer_auths) {
            Ok(Some(w)) => {
                snapshot.addresses.insert(
                    w.uid.clone(),
                    Address {
                        r#type: Some(address::Type::Workload(w)),
                    },
                );
            }
            Ok(None) => {}
            Err(e) => diags.push(Diagnostic {
                kind: "Pod",
                object: key.clone(),
                finding: e.into(),
            }),
        }
    }

    let (services, workloads) =
        service_entry::convert_all(&ctx, &policies, &peer_auths, &mut diags);
    for s in services {
        snapshot.addresses.insert(
            format!("{}/{}", s.namespace, s.hostname),
            Address {
                r#type: Some(address::Type::Service(s)),
            },
        );
    }
    for w in workloads {
        snapshot.addresses.insert(
            w.uid.clone(),
            Address {
                r#type: Some(address::Type::Workload(w)),
            },
        );
    }

    for p in policies.values() {
        snapshot.authorizations.insert(
            format!("{}/{}", p.authorization.namespace, p.authorization.name),
            p.authorization.clone(),
        );
    }
    for a in peer_auths.authorizations() {
        snapshot
            .authorizations
            .insert(format!("{}/{}", a.namespace, a.name), a);
    }
    (snapshot, diags)
}

/// Inputs shared by the per-object conversions.
pub(crate) struct Context<'a> {
    pub cluster: &'a Cluster,
    pub options: &'a TranslateOptions,
    /// Effective network (option, else the root namespace label).
    pub network: String,
}

impl<'a> Context<'a> {
    fn new(cluster: &'a Cluster, options: &'a TranslateOptions) -> Self {
        let network = if options.network.is_empty() {
            cluster
                .namespace_labels(&options.root_namespace)
                .and_then(|l| l.get(NETWORK_LABEL))
                .cloned()
                .unwrap_or_default()
        } else {
            options.network.clone()
        };
        Self {
            cluster,
            options,
            network,
        }
    }
}

/// Labels of an object, or an empty map.
pub(crate) fn labels_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    meta.labels.as_ref().unwrap_or(&EMPTY)
}

/// Go's `strconv.ParseBool`, which istiod uses for boolean annotations.
pub(crate) fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

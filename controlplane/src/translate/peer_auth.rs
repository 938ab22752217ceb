//! PeerAuthentication → L4 DENY policies and per-workload policy keys, as istiod does for
//! ztunnel.
//!
//! Levels: *mesh* (root namespace, no selector), *namespace* (other namespace, no selector),
//! *workload* (other namespace, selector with labels; selector policies in the root namespace
//! are ignored). At each level the oldest policy wins (`creationTimestamp`, a missing one
//! counting as oldest, then name). An empty selector counts as no selector.
//!
//! Effective mode of a workload: the workload policy's mode, else (UNSET) the namespace
//! policy's, else the mesh policy's; only `STRICT` matters (PERMISSIVE, DISABLE and unset all
//! allow plaintext).
//!
//! - Effective STRICT ⇒ the workload lists `<root>/istio_converted_static_strict` (DENY, one
//!   rule, one clause, one `Match{not_principals: [presence]}`).
//! - A workload policy with `portLevelMtls` that changes the mode of some port ⇒ the workload
//!   lists `<ns>/converted_peer_authentication_<name>` instead:
//!   - effective STRICT with PERMISSIVE/DISABLE ports: one rule whose clauses are
//!     `{not_principals: [presence]}` and `{not_destination_ports: [p]}` per exempt port (deny
//!     plaintext except on those ports); the static STRICT key is then left out;
//!   - effective not STRICT with STRICT ports: one rule per such port,
//!     `{not_principals: [presence], destination_ports: [p]}`.
//!
//! The static policy is sent whenever any PeerAuthentication exists (istiod's "default
//! policy"); converted policies are sent for every workload-level policy that needs one,
//! whether or not it selects a workload.

use std::collections::BTreeMap;

use proto::istio::security::{self as sec, Authorization, Clause, Match, Rule};

use super::authz::string_match;
use crate::k8s::istio::{MtlsMode, PeerAuthentication};
use crate::k8s::{Cluster, ObjectKey};

/// Name of the static STRICT policy (in the root namespace).
pub const STATIC_STRICT_POLICY_NAME: &str = "istio_converted_static_strict";

/// Prefix of a port-level conversion's name.
pub const CONVERTED_PREFIX: &str = "converted_peer_authentication_";

/// PeerAuthentications grouped by level.
#[derive(Debug)]
pub struct PeerAuthIndex<'a> {
    root_namespace: &'a str,
    any: bool,
    mesh: Option<(&'a ObjectKey, &'a PeerAuthentication)>,
    namespace: BTreeMap<&'a str, (&'a ObjectKey, &'a PeerAuthentication)>,
    /// Workload-level policies per namespace, oldest first.
    workload: BTreeMap<&'a str, Vec<(&'a ObjectKey, &'a PeerAuthentication)>>,
}

/// Sort key: oldest first, then by name.
fn age(
    entry: &(&ObjectKey, &PeerAuthentication),
) -> (
    Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    String,
) {
    (
        entry.1.metadata.creation_timestamp.clone(),
        entry.0.name.clone(),
    )
}

fn keep_oldest<'a>(
    slot: &mut Option<(&'a ObjectKey, &'a PeerAuthentication)>,
    candidate: (&'a ObjectKey, &'a PeerAuthentication),
) {
    if slot.as_ref().is_none_or(|cur| age(&candidate) < age(cur)) {
        *slot = Some(candidate);
    }
}

impl<'a> PeerAuthIndex<'a> {
    /// Indexes every PeerAuthentication of the cluster.
    pub fn new(cluster: &'a Cluster, root_namespace: &'a str) -> Self {
        let mut index = Self {
            root_namespace,
            any: !cluster.peer_authentications.is_empty(),
            mesh: None,
            namespace: BTreeMap::new(),
            workload: BTreeMap::new(),
        };
        for entry in &cluster.peer_authentications {
            let ns = entry.0.namespace.as_str();
            let has_selector = entry.1.spec.label_selector().is_some();
            match (ns == root_namespace, has_selector) {
                (true, false) => keep_oldest(&mut index.mesh, entry),
                (true, true) => {} // ignored by istiod
                (false, false) => {
                    let mut slot = index.namespace.get(ns).copied();
                    keep_oldest(&mut slot, entry);
                    if let Some(s) = slot {
                        index.namespace.insert(ns, s);
                    }
                }
                (false, true) => index.workload.entry(ns).or_default().push(entry),
            }
        }
        for list in index.workload.values_mut() {
            list.sort_by_key(age);
        }
        index
    }

    /// Whether the mode inherited from the namespace and mesh levels is STRICT.
    fn inherited_strict(&self, namespace: &str) -> bool {
        let mut strict = self
            .mesh
            .is_some_and(|(_, pa)| pa.spec.mode() == MtlsMode::Strict);
        if let Some((_, pa)) = self.namespace.get(namespace) {
            match pa.spec.mode() {
                MtlsMode::Unset => {}
                mode => strict = mode == MtlsMode::Strict,
            }
        }
        strict
    }

    /// The winning workload-level policy for a workload.
    fn workload_policy(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<(&'a ObjectKey, &'a PeerAuthentication)> {
        self.workload
            .get(namespace)?
            .iter()
            .copied()
            .find(|(_, pa)| pa.spec.label_selector().is_some_and(|s| s.matches(labels)))
    }

    /// The PeerAuthentication-derived keys for a workload's `authorization_policies`, sorted.
    pub fn keys_for_workload(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<String> {
        let inherited = self.inherited_strict(namespace);
        let mut static_strict = inherited;
        let mut converted = None;
        if let Some((key, pa)) = self.workload_policy(namespace, labels) {
            let strict = effective_strict(pa, inherited);
            static_strict = strict;
            if needs_conversion(pa, strict) {
                converted = Some(format!("{}/{CONVERTED_PREFIX}{}", key.namespace, key.name));
                if strict {
                    // The conversion carries the STRICT default itself.
                    static_strict = false;
                }
            }
        }
        let mut keys: Vec<String> = static_strict
            .then(|| format!("{}/{STATIC_STRICT_POLICY_NAME}", self.root_namespace))
            .into_iter()
            .chain(converted)
            .collect();
        keys.sort();
        keys
    }

    /// The policies to send: the static STRICT policy (when any PeerAuthentication exists)
    /// and every port-level conversion.
    pub fn authorizations(&self) -> Vec<Authorization> {
        let mut out = Vec::new();
        if self.any {
            out.push(static_strict_policy(self.root_namespace));
        }
        for list in self.workload.values() {
            for (key, pa) in list {
                if let Some(a) = self.convert(key, pa) {
                    out.push(a);
                }
            }
        }
        out
    }

    /// The port-level conversion of one workload-level policy, if it changes any port.
    fn convert(&self, key: &ObjectKey, pa: &PeerAuthentication) -> Option<Authorization> {
        let inherited = self.inherited_strict(&key.namespace);
        let strict = effective_strict(pa, inherited);
        if !needs_conversion(pa, strict) {
            return None;
        }
        let ports = &pa.spec.port_level_mtls;
        let rules = if strict {
            let exempt: Vec<Clause> = ports
                .iter()
                .filter(|(_, m)| matches!(m.mode, MtlsMode::Permissive | MtlsMode::Disable))
                .map(|(p, _)| Clause {
                    matches: vec![Match {
                        not_destination_ports: vec![*p],
                        ..Default::default()
                    }],
                })
                .collect();
            let deny_plaintext = Clause {
                matches: vec![plaintext_match()],
            };
            // istiod puts the plaintext clause first when the policy itself says STRICT and
            // last when STRICT is inherited; the order does not change the meaning.
            let clauses = if pa.spec.mode() == MtlsMode::Strict {
                std::iter::once(deny_plaintext).chain(exempt).collect()
            } else {
                exempt
                    .into_iter()
                    .chain(std::iter::once(deny_plaintext))
                    .collect()
            };
            vec![Rule { clauses }]
        } else {
            ports
                .iter()
                .filter(|(_, m)| m.mode == MtlsMode::Strict)
                .map(|(p, _)| Rule {
                    clauses: vec![Clause {
                        matches: vec![Match {
                            destination_ports: vec![*p],
                            ..plaintext_match()
                        }],
                    }],
                })
                .collect()
        };
        Some(Authorization {
            name: format!("{CONVERTED_PREFIX}{}", key.name),
            namespace: key.namespace.clone(),
            scope: sec::Scope::WorkloadSelector as i32,
            action: sec::Action::Deny as i32,
            rules,
            dry_run: false,
            extensions: Vec::new(),
        })
    }
}

/// Whether a workload under this workload-level policy is effectively STRICT (ports aside).
fn effective_strict(pa: &PeerAuthentication, inherited: bool) -> bool {
    match pa.spec.mode() {
        MtlsMode::Strict => true,
        MtlsMode::Permissive | MtlsMode::Disable => false,
        MtlsMode::Unset => inherited,
    }
}

/// Whether some port's mode differs from the workload's effective mode.
fn needs_conversion(pa: &PeerAuthentication, strict: bool) -> bool {
    pa.spec.port_level_mtls.values().any(|m| match m.mode {
        MtlsMode::Strict => !strict,
        MtlsMode::Permissive | MtlsMode::Disable => strict,
        MtlsMode::Unset => false,
    })
}

/// `not_principals: [presence]`: matches connections without an mTLS identity.
fn plaintext_match() -> Match {
    Match {
        not_principals: vec![string_match("*")],
        ..Default::default()
    }
}

/// `<root>/istio_converted_static_strict`.
pub fn static_strict_policy(root_namespace: &str) -> Authorization {
    Authorization {
        name: STATIC_STRICT_POLICY_NAME.to_owned(),
        namespace: root_namespace.to_owned(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: sec::Action::Deny as i32,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![plaintext_match()],
            }],
        }],
        dry_run: false,
        extensions: Vec::new(),
    }
}

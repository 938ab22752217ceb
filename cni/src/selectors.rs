//! Enrollment decisions shared by the plugin and the agent.
//!
//! A pod is enrolled in ambient mode when it is not excluded and at least one
//! [`EnablementSelector`] matches (pod labels against `podSelector`, namespace labels against
//! `namespaceSelector`; a missing selector matches everything). Exclusions (checked first):
//! `spec.hostNetwork`, the sidecar annotation `sidecar.istio.io/status`, namespaces in the
//! exclusion list, ztunnel pods (`app=ztunnel` in the system namespace), and the opt-out label
//! `istio.io/dataplane-mode=none`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::podsource::PodMeta;

/// Label and annotation names.
pub mod keys {
    /// Label on pods and namespaces: `ambient` | `none`.
    pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
    /// Annotation written by the agent: `enabled` | `pending`.
    pub const REDIRECTION: &str = "ambient.istio.io/redirection";
    /// Sidecar-injected pods carry this annotation.
    pub const SIDECAR_STATUS: &str = "sidecar.istio.io/status";
    /// `true` ⇒ outbound-only capture.
    pub const BYPASS_INBOUND: &str = "ambient.istio.io/bypass-inbound-capture";
    /// `true`/`false` DNS capture override.
    pub const DNS_CAPTURE: &str = "ambient.istio.io/dns-capture";
    /// Comma-separated interfaces treated as outbound.
    pub const REROUTE_INTERFACES: &str = "istio.io/reroute-virtual-interfaces";
}

/// A Kubernetes `LabelSelector` (`matchLabels` AND every `matchExpressions` requirement).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Exact label matches.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// Label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    pub operator: String,
    /// Values for `In`/`NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Why a selector is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    /// Unknown operator.
    #[error(
        "label selector requirement on {key:?}: unknown operator {operator:?} (use In, NotIn, Exists or DoesNotExist)"
    )]
    Operator {
        /// Label key.
        key: String,
        /// The operator given.
        operator: String,
    },
    /// `In`/`NotIn` without values, or `Exists`/`DoesNotExist` with values.
    #[error("label selector requirement on {key:?}: operator {operator} {problem}")]
    Values {
        /// Label key.
        key: String,
        /// The operator.
        operator: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// The YAML/JSON did not parse.
    #[error("enablement selectors do not parse: {0}")]
    Parse(String),
}

impl LabelSelector {
    /// Rejects unknown operators and inconsistent values.
    pub fn validate(&self) -> Result<(), SelectorError> {
        for r in &self.match_expressions {
            let needs_values = match r.operator.as_str() {
                "In" | "NotIn" => true,
                "Exists" | "DoesNotExist" => false,
                _ => {
                    return Err(SelectorError::Operator {
                        key: r.key.clone(),
                        operator: r.operator.clone(),
                    });
                }
            };
            if needs_values == r.values.is_empty() {
                return Err(SelectorError::Values {
                    key: r.key.clone(),
                    operator: r.operator.clone(),
                    problem: if needs_values {
                        "needs at least one value"
                    } else {
                        "takes no values"
                    },
                });
            }
        }
        Ok(())
    }

    /// Whether `labels` satisfy the selector (an empty selector matches everything).
    /// Invalid requirements match nothing.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let got = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => got.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => got.is_none_or(|v| !r.values.contains(v)),
                    "Exists" => got.is_some(),
                    "DoesNotExist" => got.is_none(),
                    _ => false,
                }
            })
    }
}

/// One entry of `AMBIENT_ENABLEMENT_SELECTOR` / `enablement_selectors`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnablementSelector {
    /// Matched against the pod's labels; absent ⇒ any pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Matched against the namespace's labels; absent ⇒ any namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

impl EnablementSelector {
    /// Both selectors match.
    pub fn matches(
        &self,
        pod_labels: &BTreeMap<String, String>,
        ns_labels: &BTreeMap<String, String>,
    ) -> bool {
        self.pod_selector
            .as_ref()
            .is_none_or(|s| s.matches(pod_labels))
            && self
                .namespace_selector
                .as_ref()
                .is_none_or(|s| s.matches(ns_labels))
    }
}

/// Istio's defaults: pod label `istio.io/dataplane-mode=ambient`; or namespace label
/// `istio.io/dataplane-mode=ambient` and the pod's label not `none`.
pub fn default_selectors() -> Vec<EnablementSelector> {
    let ambient = BTreeMap::from([(keys::DATAPLANE_MODE.to_owned(), "ambient".to_owned())]);
    vec![
        EnablementSelector {
            pod_selector: Some(LabelSelector {
                match_labels: ambient.clone(),
                match_expressions: vec![],
            }),
            namespace_selector: None,
        },
        EnablementSelector {
            pod_selector: Some(LabelSelector {
                match_labels: BTreeMap::new(),
                match_expressions: vec![Requirement {
                    key: keys::DATAPLANE_MODE.to_owned(),
                    operator: "NotIn".to_owned(),
                    values: vec!["none".to_owned()],
                }],
            }),
            namespace_selector: Some(LabelSelector {
                match_labels: ambient,
                match_expressions: vec![],
            }),
        },
    ]
}

/// Parses a selector list from YAML (JSON is YAML) and validates it.
pub fn parse_selectors(text: &str) -> Result<Vec<EnablementSelector>, SelectorError> {
    let list: Vec<EnablementSelector> =
        serde_yaml::from_str(text).map_err(|e| SelectorError::Parse(e.to_string()))?;
    validate_all(&list)?;
    Ok(list)
}

/// Validates every selector of a list.
pub fn validate_all(list: &[EnablementSelector]) -> Result<(), SelectorError> {
    for s in list {
        if let Some(p) = &s.pod_selector {
            p.validate()?;
        }
        if let Some(n) = &s.namespace_selector {
            n.validate()?;
        }
    }
    Ok(())
}

/// The outcome of [`Enrollment::decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Capture the pod.
    Enroll,
    /// Never captured, whatever the selectors say.
    Excluded(&'static str),
    /// No selector matched.
    NotSelected,
}

impl Decision {
    /// `Enroll`?
    pub fn is_enroll(self) -> bool {
        self == Decision::Enroll
    }
}

/// Everything needed to decide whether a pod is in the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Enrollment {
    /// Enablement selectors (OR).
    pub selectors: Vec<EnablementSelector>,
    /// Namespaces never captured.
    pub exclude_namespaces: Vec<String>,
    /// The mesh's system namespace (ztunnel pods there are excluded).
    pub system_namespace: String,
}

impl Default for Enrollment {
    fn default() -> Self {
        Enrollment {
            selectors: default_selectors(),
            exclude_namespaces: vec!["kube-system".to_owned()],
            system_namespace: "istio-system".to_owned(),
        }
    }
}

impl Enrollment {
    /// Decides for `pod` in a namespace labelled `ns_labels`.
    pub fn decide(&self, pod: &PodMeta, ns_labels: &BTreeMap<String, String>) -> Decision {
        if pod.host_network {
            return Decision::Excluded("hostNetwork pod");
        }
        if pod.annotations.contains_key(keys::SIDECAR_STATUS) {
            return Decision::Excluded("sidecar-injected pod");
        }
        if self.exclude_namespaces.contains(&pod.namespace) {
            return Decision::Excluded("namespace excluded");
        }
        if pod.namespace == self.system_namespace
            && pod.labels.get("app").map(String::as_str) == Some("ztunnel")
        {
            return Decision::Excluded("ztunnel pod");
        }
        if pod.labels.get(keys::DATAPLANE_MODE).map(String::as_str) == Some("none") {
            return Decision::Excluded("opted out (istio.io/dataplane-mode=none)");
        }
        if self
            .selectors
            .iter()
            .any(|s| s.matches(&pod.labels, ns_labels))
        {
            Decision::Enroll
        } else {
            Decision::NotSelected
        }
    }
}

#[cfg(test)]
mod tests;

//! Istio security resources (`security.istio.io/v1` and `v1beta1`) as plain serde structs.
//!
//! Only the fields istiod reads for ztunnel are modelled; anything else in the object (status,
//! fields of newer API versions) is ignored, as the API server's pruning would. Lists that
//! Istio types as strings (ports, IP blocks) also accept YAML numbers, which is a common
//! hand-written slip the API server would reject but whose meaning is unambiguous.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};

/// `security.istio.io` `AuthorizationPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy (`spec: {}`, `spec:` and no spec all mean the empty policy).
    #[serde(default, deserialize_with = "null_as_default")]
    pub spec: AuthorizationPolicySpec,
}

/// `AuthorizationPolicy.spec`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Workload selector; absent means namespace-wide (or mesh-wide in the root namespace).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Deprecated single target reference (waypoint policies).
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    /// Target references (waypoint policies).
    #[serde(default, deserialize_with = "null_as_default")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Rules, OR-ed.
    #[serde(default, deserialize_with = "null_as_default")]
    pub rules: Vec<Rule>,
    /// Action; `ALLOW` when absent.
    #[serde(default)]
    pub action: Action,
    /// Extension provider, for `CUSTOM`.
    #[serde(default)]
    pub provider: Option<ExtensionProvider>,
}

impl AuthorizationPolicySpec {
    /// Whether the policy targets a Gateway/Service/ServiceEntry (a waypoint policy).
    pub fn has_target_refs(&self) -> bool {
        self.target_ref.is_some() || !self.target_refs.is_empty()
    }
}

/// `spec.selector`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a workload must carry (all of them).
    #[serde(default, deserialize_with = "null_as_default")]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// Whether every label of the selector is on `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
    }
}

/// `spec.targetRef(s)` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetReference {
    /// API group of the target.
    #[serde(default)]
    pub group: String,
    /// Kind of the target.
    #[serde(default)]
    pub kind: String,
    /// Name of the target.
    #[serde(default)]
    pub name: String,
    /// Namespace of the target.
    #[serde(default)]
    pub namespace: String,
}

/// `spec.provider`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ExtensionProvider {
    /// Provider name from the mesh config.
    #[serde(default)]
    pub name: String,
}

/// `spec.action`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// Allow matching requests (the default).
    #[default]
    Allow,
    /// Deny matching requests.
    Deny,
    /// Audit matching requests (not supported by ztunnel).
    Audit,
    /// Delegate to an extension provider (not supported by ztunnel).
    Custom,
}

/// `spec.rules[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Sources, OR-ed.
    #[serde(default, deserialize_with = "null_as_default")]
    pub from: Vec<From>,
    /// Operations, OR-ed.
    #[serde(default, deserialize_with = "null_as_default")]
    pub to: Vec<To>,
    /// Conditions, AND-ed.
    #[serde(default, deserialize_with = "null_as_default")]
    pub when: Vec<Condition>,
}

/// `rules[].from[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct From {
    /// The source.
    #[serde(default, deserialize_with = "null_as_default")]
    pub source: Source,
}

/// `rules[].from[].source`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs, reason = "field names are the Istio API's")]
pub struct Source {
    #[serde(default, deserialize_with = "string_list")]
    pub principals: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub not_principals: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub request_principals: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub not_request_principals: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub namespaces: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub not_namespaces: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub service_accounts: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub not_service_accounts: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub ip_blocks: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub not_ip_blocks: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub not_remote_ip_blocks: Vec<String>,
}

/// `rules[].to[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct To {
    /// The operation.
    #[serde(default, deserialize_with = "null_as_default")]
    pub operation: Operation,
}

/// `rules[].to[].operation`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs, reason = "field names are the Istio API's")]
pub struct Operation {
    #[serde(default, deserialize_with = "string_list")]
    pub hosts: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub not_hosts: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub ports: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub not_ports: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub methods: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub not_methods: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub paths: Vec<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub not_paths: Vec<String>,
}

/// `rules[].when[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Attribute name, e.g. `source.ip`.
    pub key: String,
    /// Accepted values.
    #[serde(default, deserialize_with = "string_list")]
    pub values: Vec<String>,
    /// Rejected values.
    #[serde(default, deserialize_with = "string_list")]
    pub not_values: Vec<String>,
}

/// `security.istio.io` `PeerAuthentication`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthentication {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default, deserialize_with = "null_as_default")]
    pub spec: PeerAuthenticationSpec,
}

/// `PeerAuthentication.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Workload selector; absent (or empty) means namespace-wide / mesh-wide.
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Workload-level mode.
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    /// Per-port modes (only honoured with a selector).
    #[serde(default, deserialize_with = "port_map")]
    pub port_level_mtls: BTreeMap<u32, MutualTls>,
}

impl PeerAuthenticationSpec {
    /// The top-level mode, `UNSET` when `mtls` is absent.
    pub fn mode(&self) -> MtlsMode {
        self.mtls.map(|m| m.mode).unwrap_or_default()
    }

    /// The selector if it selects by at least one label. An empty selector is treated as no
    /// selector (namespace-wide), which is how istiod ranks it.
    pub fn label_selector(&self) -> Option<&WorkloadSelector> {
        self.selector
            .as_ref()
            .filter(|s| !s.match_labels.is_empty())
    }
}

/// `mtls` / `portLevelMtls` value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct MutualTls {
    /// The mode.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// `MutualTLS.Mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Inherit from the parent level.
    #[default]
    Unset,
    /// Plaintext only (treated like `PERMISSIVE` by ztunnel).
    Disable,
    /// mTLS and plaintext.
    Permissive,
    /// mTLS only.
    Strict,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A scalar Istio types as a string but users sometimes write as a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Str(String),
    Int(i64),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Scalar::Str(s) => s,
            Scalar::Int(i) => i.to_string(),
        }
    }
}

fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v: Option<Vec<Scalar>> = Option::deserialize(d)?;
    Ok(v.unwrap_or_default()
        .into_iter()
        .map(Scalar::into_string)
        .collect())
}

fn port_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u32, MutualTls>, D::Error> {
    let raw: Option<BTreeMap<ScalarKey, MutualTls>> = Option::deserialize(d)?;
    let mut out = BTreeMap::new();
    for (k, v) in raw.unwrap_or_default() {
        let port =
            k.0.parse::<u32>()
                .ok()
                .filter(|p| (1..=65535).contains(p))
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "portLevelMtls key {:?} is not a port number (1-65535)",
                        k.0
                    ))
                })?;
        out.insert(port, v);
    }
    Ok(out)
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct ScalarKey(String);

impl<'de> Deserialize<'de> for ScalarKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ScalarKey(Scalar::deserialize(d)?.into_string()))
    }
}

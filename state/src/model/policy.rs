//! `Policy`: an L4 authorization policy (`istio.security.Authorization`).
//!
//! Structure: `rules` (OR) of clauses (AND) of matches (OR). Evaluation lives in
//! [`crate::authz`]; this module only holds and validates the data.

use proto::istio::security as pb;
use serde::{Deserialize, Serialize};

use super::common::Cidr;
use super::{ConversionError, convert};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyScope {
    /// Applies to every workload.
    Global,
    /// Applies to every workload in the policy's namespace.
    Namespace,
    /// Applies to workloads that list the policy key in `authorization_policies`.
    WorkloadSelector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyAction {
    Allow,
    Deny,
}

/// A string comparison; `Presence` matches any non-empty value.
///
/// Serializes externally tagged, as Istio's ztunnel does (and `istioctl` parses):
/// `{"Exact": "x"}`, `{"Prefix": "x"}`, `{"Suffix": "x"}`, `{"Presence": []}`; the same
/// names the `LOCAL_XDS_PATH` YAML tags use (`!Presence []`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

impl Serialize for StringMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTupleVariant;
        const NAME: &str = "StringMatch";
        match self {
            StringMatch::Exact(v) => s.serialize_newtype_variant(NAME, 0, "Exact", v),
            StringMatch::Prefix(v) => s.serialize_newtype_variant(NAME, 1, "Prefix", v),
            StringMatch::Suffix(v) => s.serialize_newtype_variant(NAME, 2, "Suffix", v),
            // A variant with an empty payload, like Istio's `Presence()`: `{"Presence": []}`.
            StringMatch::Presence => s.serialize_tuple_variant(NAME, 3, "Presence", 0)?.end(),
        }
    }
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Presence => !value.is_empty(),
        }
    }
}

/// `namespace` + `serviceAccount`, compared exactly with the peer identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub service_account: String,
}

/// One match: every non-empty field must hold. A match with every field empty is "empty" and is
/// skipped by evaluation (see [`crate::authz`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Match {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccountMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<Cidr>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_source_ips: Vec<Cidr>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_ips: Vec<Cidr>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ips: Vec<Cidr>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_ports: Vec<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ports: Vec<u16>,
}

impl Match {
    /// True when no field is set (e.g. an entry that only carried L7 attributes istiod stripped).
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.not_namespaces.is_empty()
            && self.principals.is_empty()
            && self.not_principals.is_empty()
            && self.service_accounts.is_empty()
            && self.not_service_accounts.is_empty()
            && self.source_ips.is_empty()
            && self.not_source_ips.is_empty()
            && self.destination_ips.is_empty()
            && self.not_destination_ips.is_empty()
            && self.destination_ports.is_empty()
            && self.not_destination_ports.is_empty()
    }
}

/// An authorization policy. Key = `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    pub scope: PolicyScope,
    pub action: PolicyAction,
    pub dry_run: bool,
    /// Rules (OR) → clauses (AND) → matches (OR).
    pub rules: Vec<Vec<Vec<Match>>>,
}

impl Policy {
    /// The store key, `<namespace>/<name>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl TryFrom<pb::Authorization> for Policy {
    type Error = ConversionError;
    fn try_from(a: pb::Authorization) -> Result<Self, Self::Error> {
        Policy::try_from(&a)
    }
}

impl TryFrom<&pb::Authorization> for Policy {
    type Error = ConversionError;

    fn try_from(a: &pb::Authorization) -> Result<Self, Self::Error> {
        convert::required("name", &a.name)?;
        let scope = match convert::enumeration::<pb::Scope>("scope", "Scope", a.scope)? {
            pb::Scope::Global => PolicyScope::Global,
            pb::Scope::Namespace => PolicyScope::Namespace,
            pb::Scope::WorkloadSelector => PolicyScope::WorkloadSelector,
        };
        let action = match convert::enumeration::<pb::Action>("action", "Action", a.action)? {
            pb::Action::Allow => PolicyAction::Allow,
            pb::Action::Deny => PolicyAction::Deny,
        };
        let rules = a
            .rules
            .iter()
            .enumerate()
            .map(|(r, rule)| {
                rule.clauses
                    .iter()
                    .enumerate()
                    .map(|(c, clause)| {
                        clause
                            .matches
                            .iter()
                            .enumerate()
                            .map(|(m, mt)| {
                                convert_match(&format!("rules[{r}].clauses[{c}].matches[{m}]"), mt)
                            })
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            name: a.name.clone(),
            namespace: a.namespace.clone(),
            scope,
            action,
            dry_run: a.dry_run,
            rules,
        })
    }
}

fn convert_match(field: &str, m: &pb::Match) -> Result<Match, ConversionError> {
    let strings =
        |name: &str, v: &[pb::StringMatch]| -> Result<Vec<StringMatch>, ConversionError> {
            v.iter()
                .enumerate()
                .map(|(i, s)| string_match(&format!("{field}.{name}[{i}]"), s))
                .collect()
        };
    let cidrs = |name: &str, v: &[pb::Address]| -> Result<Vec<Cidr>, ConversionError> {
        v.iter()
            .enumerate()
            .map(|(i, a)| Cidr::from_parts(|| format!("{field}.{name}[{i}]"), &a.address, a.length))
            .collect()
    };
    let ports = |name: &str, v: &[u32]| -> Result<Vec<u16>, ConversionError> {
        v.iter()
            .enumerate()
            .map(|(i, p)| convert::port(|| format!("{field}.{name}[{i}]"), *p))
            .collect()
    };
    let sas = |v: &[pb::ServiceAccountMatch]| -> Vec<ServiceAccountMatch> {
        v.iter()
            .map(|s| ServiceAccountMatch {
                namespace: s.namespace.clone(),
                service_account: s.service_account.clone(),
            })
            .collect()
    };
    Ok(Match {
        namespaces: strings("namespaces", &m.namespaces)?,
        not_namespaces: strings("notNamespaces", &m.not_namespaces)?,
        principals: strings("principals", &m.principals)?,
        not_principals: strings("notPrincipals", &m.not_principals)?,
        service_accounts: sas(&m.service_accounts),
        not_service_accounts: sas(&m.not_service_accounts),
        source_ips: cidrs("sourceIps", &m.source_ips)?,
        not_source_ips: cidrs("notSourceIps", &m.not_source_ips)?,
        destination_ips: cidrs("destinationIps", &m.destination_ips)?,
        not_destination_ips: cidrs("notDestinationIps", &m.not_destination_ips)?,
        destination_ports: ports("destinationPorts", &m.destination_ports)?,
        not_destination_ports: ports("notDestinationPorts", &m.not_destination_ports)?,
    })
}

fn string_match(field: &str, s: &pb::StringMatch) -> Result<StringMatch, ConversionError> {
    use pb::string_match::MatchType;
    match &s.match_type {
        Some(MatchType::Exact(v)) => Ok(StringMatch::Exact(v.clone())),
        Some(MatchType::Prefix(v)) => Ok(StringMatch::Prefix(v.clone())),
        Some(MatchType::Suffix(v)) => Ok(StringMatch::Suffix(v.clone())),
        Some(MatchType::Presence(())) => Ok(StringMatch::Presence),
        None => Err(ConversionError::Missing {
            field: format!("{field}.matchType"),
        }),
    }
}

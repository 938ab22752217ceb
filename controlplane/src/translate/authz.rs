//! AuthorizationPolicy → `istio.security.Authorization`, as istiod's ambient index converts it.
//!
//! Which policies are sent:
//!
//! - with `targetRef`/`targetRefs`: never (they are for waypoints), silently;
//! - `AUDIT` / `CUSTOM`: never (diagnostic "ztunnel does not support the X action");
//! - annotation `istio.io/dry-run: "true"`: only with
//!   [`TranslateOptions::enable_dry_run_authorization_policy`], then with `dry_run=true`.
//!
//! Scope: no `selector` ⇒ `GLOBAL` in the root namespace, else `NAMESPACE`; any `selector` ⇒
//! `WORKLOAD_SELECTOR` (the key is listed on matching workloads of the policy's namespace, or of
//! every namespace for a root-namespace policy). A selector without labels produces a
//! `WORKLOAD_SELECTOR` policy that istiod attaches to no workload.
//!
//! Each `rules[i]` becomes one `Rule` whose clauses are, in order: one clause for all `to[]`
//! entries (one `Match` per entry), one for all `from[]` entries, then one clause per `when[]`
//! entry. A rule without any of them (`rules: [{}]`) is a `Rule` with zero clauses, which
//! matches everything; a policy without rules (`spec: {}`) has zero `Rule`s and matches
//! nothing (an ALLOW policy like that denies everything).
//!
//! HTTP-only attributes (`hosts`, `methods`, `paths` and their `not` forms; `remoteIpBlocks`,
//! `requestPrincipals` and their `not` forms; `when` keys other than the five L4 ones): in an
//! ALLOW policy the whole rule is dropped (the policy is still sent, possibly with zero rules);
//! in a DENY policy only those values are ignored, so an entry with nothing else becomes an
//! empty `Match`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use proto::istio::security::{
    self as sec, Authorization, Clause, Match, Rule, ServiceAccountMatch, StringMatch,
    string_match::MatchType,
};

use super::{Diagnostic, Finding, TranslateOptions, parse_go_bool, service::ip_bytes};
use crate::k8s::istio::{Action, AuthorizationPolicy, Condition, WorkloadSelector};
use crate::k8s::{Cluster, ObjectKey};

/// Annotation that marks a dry-run policy.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// `when` keys ztunnel can evaluate.
const L4_WHEN_KEYS: [&str; 5] = [
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
];

/// A policy that is sent, with what is needed to attach it to workloads.
#[derive(Debug, Clone, PartialEq)]
pub struct SentPolicy {
    /// The resource.
    pub authorization: Authorization,
    /// For `WORKLOAD_SELECTOR` policies with at least one label: the selector.
    pub selector: Option<WorkloadSelector>,
}

impl SentPolicy {
    /// `ns/name`, the xDS resource name and the workload's reference.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.authorization.namespace, self.authorization.name
        )
    }
}

/// Converts every AuthorizationPolicy; the result holds only the policies that are sent.
pub(crate) fn convert_all(
    cluster: &Cluster,
    options: &TranslateOptions,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<ObjectKey, SentPolicy> {
    let mut out = BTreeMap::new();
    for (key, ap) in &cluster.authorization_policies {
        let mut push = |finding| {
            diags.push(Diagnostic {
                kind: "AuthorizationPolicy",
                object: key.clone(),
                finding,
            })
        };
        let (converted, findings) = convert(key, ap, options);
        for f in findings {
            push(f);
        }
        if let Some(p) = converted {
            out.insert(key.clone(), p);
        }
    }
    out
}

/// Converts one policy. Returns the policy if it is sent, and istiod's status findings.
pub fn convert(
    key: &ObjectKey,
    ap: &AuthorizationPolicy,
    options: &TranslateOptions,
) -> (Option<SentPolicy>, Vec<Finding>) {
    let mut findings = Vec::new();
    let spec = &ap.spec;
    if spec.has_target_refs() {
        return (None, findings);
    }
    let action = match spec.action {
        Action::Allow => sec::Action::Allow,
        Action::Deny => sec::Action::Deny,
        Action::Audit => {
            findings.push(Finding::UnsupportedAction("AUDIT"));
            return (None, findings);
        }
        Action::Custom => {
            findings.push(Finding::UnsupportedAction("CUSTOM"));
            return (None, findings);
        }
    };
    let dry_run = ap
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRY_RUN_ANNOTATION))
        .and_then(|v| parse_go_bool(v))
        .unwrap_or(false);
    if dry_run && !options.enable_dry_run_authorization_policy {
        findings.push(Finding::DryRunNotSent);
        return (None, findings);
    }

    let scope = match &spec.selector {
        Some(_) => sec::Scope::WorkloadSelector,
        None if key.namespace == options.root_namespace => sec::Scope::Global,
        None => sec::Scope::Namespace,
    };
    let selector = spec.selector.clone().filter(|s| !s.match_labels.is_empty());
    if spec.selector.is_some() && selector.is_none() {
        findings.push(Finding::EmptySelector);
    }

    let mut l7 = BTreeSet::new();
    let rules = spec
        .rules
        .iter()
        .filter_map(|r| convert_rule(r, action, &key.namespace, &mut l7))
        .collect();
    if !l7.is_empty() {
        findings.push(Finding::HttpAttributes {
            attributes: l7.into_iter().collect::<Vec<_>>().join(", "),
            effect: match action {
                sec::Action::Allow => {
                    "Within an ALLOW policy, rules matching HTTP attributes are omitted. This \
                     will be more restrictive than requested."
                }
                sec::Action::Deny => {
                    "DENY policy with HTTP attributes is enforced without the HTTP rules. This \
                     will be more restrictive than requested."
                }
            },
        });
    }

    let authorization = Authorization {
        name: key.name.clone(),
        namespace: key.namespace.clone(),
        scope: scope as i32,
        action: action as i32,
        rules,
        dry_run,
        extensions: Vec::new(),
    };
    (
        Some(SentPolicy {
            authorization,
            selector,
        }),
        findings,
    )
}

/// One `rules[i]`; `None` when an ALLOW rule uses HTTP attributes. HTTP attribute names found
/// are added to `l7`.
fn convert_rule(
    rule: &crate::k8s::istio::Rule,
    action: sec::Action,
    policy_ns: &str,
    l7: &mut BTreeSet<String>,
) -> Option<Rule> {
    let mut found_l7 = false;
    let mut note = |present: bool, name: &str| {
        if present {
            found_l7 = true;
            l7.insert(name.to_owned());
        }
    };

    let mut to_matches = Vec::with_capacity(rule.to.len());
    for to in &rule.to {
        let op = &to.operation;
        note(!op.hosts.is_empty(), "hosts");
        note(!op.not_hosts.is_empty(), "notHosts");
        note(!op.methods.is_empty(), "methods");
        note(!op.not_methods.is_empty(), "notMethods");
        note(!op.paths.is_empty(), "paths");
        note(!op.not_paths.is_empty(), "notPaths");
        to_matches.push(Match {
            destination_ports: ports(&op.ports),
            not_destination_ports: ports(&op.not_ports),
            ..Default::default()
        });
    }

    let mut from_matches = Vec::with_capacity(rule.from.len());
    for from in &rule.from {
        let s = &from.source;
        note(!s.remote_ip_blocks.is_empty(), "remoteIpBlocks");
        note(!s.not_remote_ip_blocks.is_empty(), "notRemoteIpBlocks");
        note(!s.request_principals.is_empty(), "requestPrincipals");
        note(!s.not_request_principals.is_empty(), "notRequestPrincipals");
        from_matches.push(Match {
            source_ips: addresses(&s.ip_blocks),
            not_source_ips: addresses(&s.not_ip_blocks),
            namespaces: string_matches(&s.namespaces),
            not_namespaces: string_matches(&s.not_namespaces),
            service_accounts: service_accounts(&s.service_accounts, policy_ns),
            not_service_accounts: service_accounts(&s.not_service_accounts, policy_ns),
            principals: string_matches(&s.principals),
            not_principals: string_matches(&s.not_principals),
            ..Default::default()
        });
    }

    let mut clauses = Vec::new();
    if !to_matches.is_empty() {
        clauses.push(Clause {
            matches: to_matches,
        });
    }
    if !from_matches.is_empty() {
        clauses.push(Clause {
            matches: from_matches,
        });
    }
    for when in &rule.when {
        note(!L4_WHEN_KEYS.contains(&when.key.as_str()), &when.key);
        clauses.push(Clause {
            matches: vec![when_match(when)],
        });
    }

    if action == sec::Action::Allow && found_l7 {
        return None;
    }
    Some(Rule { clauses })
}

/// The `Match` of one `when` entry: `values` fill the positive field of the key, `notValues`
/// its `not_` twin. Keys ztunnel does not know give an empty `Match`.
fn when_match(when: &Condition) -> Match {
    let (v, n) = (&when.values, &when.not_values);
    match when.key.as_str() {
        "source.ip" => Match {
            source_ips: addresses(v),
            not_source_ips: addresses(n),
            ..Default::default()
        },
        "source.namespace" => Match {
            namespaces: string_matches(v),
            not_namespaces: string_matches(n),
            ..Default::default()
        },
        "source.principal" => Match {
            principals: string_matches(v),
            not_principals: string_matches(n),
            ..Default::default()
        },
        "destination.ip" => Match {
            destination_ips: addresses(v),
            not_destination_ips: addresses(n),
            ..Default::default()
        },
        "destination.port" => Match {
            destination_ports: ports(v),
            not_destination_ports: ports(n),
            ..Default::default()
        },
        _ => Match::default(),
    }
}

/// `*` ⇒ presence, `*x` ⇒ suffix `x`, `x*` ⇒ prefix `x`, otherwise exact.
pub fn string_match(v: &str) -> StringMatch {
    let t = if v == "*" {
        MatchType::Presence(())
    } else if let Some(s) = v.strip_prefix('*') {
        MatchType::Suffix(s.to_owned())
    } else if let Some(p) = v.strip_suffix('*') {
        MatchType::Prefix(p.to_owned())
    } else {
        MatchType::Exact(v.to_owned())
    };
    StringMatch {
        match_type: Some(t),
    }
}

fn string_matches(v: &[String]) -> Vec<StringMatch> {
    v.iter().map(|s| string_match(s)).collect()
}

/// `ns/sa`, or a bare `sa` in the policy's namespace.
fn service_accounts(v: &[String], policy_ns: &str) -> Vec<ServiceAccountMatch> {
    v.iter()
        .map(|s| match s.split_once('/') {
            Some((ns, sa)) => ServiceAccountMatch {
                namespace: ns.to_owned(),
                service_account: sa.to_owned(),
            },
            None => ServiceAccountMatch {
                namespace: policy_ns.to_owned(),
                service_account: s.clone(),
            },
        })
        .collect()
}

/// Decimal ports in 0..=65535; anything else is dropped.
fn ports(v: &[String]) -> Vec<u32> {
    v.iter()
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|p| p.parse::<u32>().ok())
        .filter(|p| *p <= 65535)
        .collect()
}

/// CIDRs (address kept as written, not masked) or bare IPs (full-length prefix); anything
/// unparsable is dropped.
fn addresses(v: &[String]) -> Vec<sec::Address> {
    v.iter().filter_map(|s| cidr(s)).collect()
}

/// Parses `ip` or `ip/len`.
pub fn cidr(s: &str) -> Option<sec::Address> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => {
            let ip: IpAddr = ip.parse().ok()?;
            if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 3 {
                return None;
            }
            let len: u32 = len.parse().ok()?;
            (ip, len)
        }
        None => {
            let ip: IpAddr = s.parse().ok()?;
            (ip, 0)
        }
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let length = if s.contains('/') { len } else { max };
    if length > max {
        return None;
    }
    Some(sec::Address {
        address: ip_bytes(ip),
        length,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_match_table() {
        let t = |v: &str| string_match(v).match_type.unwrap();
        assert_eq!(t("*"), MatchType::Presence(()));
        assert_eq!(t("*.example"), MatchType::Suffix(".example".into()));
        assert_eq!(t("ns-*"), MatchType::Prefix("ns-".into()));
        assert_eq!(t("exact"), MatchType::Exact("exact".into()));
        assert_eq!(t(""), MatchType::Exact(String::new()));
        assert_eq!(t("**"), MatchType::Suffix("*".into()));
    }

    #[test]
    fn port_parsing_drops_garbage() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            ports(&v(&["80", "http", "65535", "65536", "-1", "+8", "", "0"])),
            vec![80, 65535, 0]
        );
    }

    #[test]
    fn cidr_parsing() {
        let a = |s: &str| cidr(s).map(|a| (a.address, a.length));
        assert_eq!(a("10.0.0.1"), Some((vec![10, 0, 0, 1], 32)));
        assert_eq!(a("10.1.0.0/16"), Some((vec![10, 1, 0, 0], 16)));
        assert_eq!(a("10.1.2.3/16"), Some((vec![10, 1, 2, 3], 16)));
        assert_eq!(a("fd00::1").map(|x| x.1), Some(128));
        assert_eq!(a("fd00::/8").map(|x| x.1), Some(8));
        assert_eq!(a("10.0.0.0/33"), None);
        assert_eq!(a("10.0.0.0/"), None);
        assert_eq!(a("not-an-ip"), None);
        assert_eq!(a(""), None);
    }
}

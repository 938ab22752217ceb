//! L4 authorization at the destination, with Istio ztunnel's semantics.
//!
//! Order ([`evaluate`]):
//! 1. the applicable policies are the destination workload's (see [`MeshView::policies_for`]);
//! 2. dry-run policies never decide; the ones that match are reported in
//!    [`AuthzOutcome::dry_run_matches`] for logging;
//! 3. any enforced DENY that matches ⇒ deny ("explicitly denied by ns/name");
//! 4. no enforced ALLOW policy ⇒ allow;
//! 5. any enforced ALLOW that matches ⇒ allow, else deny ("allow policies exist, but none allowed").
//!
//! Matching ([`policy_matches`]): a policy with zero rules never matches; rules are OR-ed; a rule
//! matches when all its clauses match (a rule with no clauses matches); a clause with no matches
//! counts as matched; otherwise a clause matches when one of its **non-empty** matches matches.
//!
//! Interpretation of "an empty Match is skipped": a skipped match contributes nothing to the OR,
//! so a clause whose matches are all empty has nothing that can match and **fails**. This is what
//! makes a DENY rule whose entries only carried L7 attributes (stripped by istiod) have "no
//! effect", as istiod's status message promises. Tested by
//! `clause_of_only_empty_matches_fails_so_l7_only_deny_has_no_effect`.
//!
//! Within a match every non-empty field must hold: a positive list holds when any element
//! matches, a `not_` list when no element matches. Principals are compared against the peer
//! identity without `spiffe://`; namespaces against the peer identity's namespace; service
//! accounts against its namespace and service account. Without a peer identity (plaintext)
//! principal/namespace/service-account positives fail and their negatives hold.

use std::net::IpAddr;
use std::sync::Arc;

use hbone::Identity;
use serde::Serialize;
use tracing::debug;

use crate::model::{Cidr, Match, Policy, PolicyAction, ServiceAccountMatch, StringMatch, Workload};
use crate::store::{MeshState, MeshView};

#[cfg(test)]
mod tests;

/// What the destination knows about a connection when authorizing it.
#[derive(Debug, Clone)]
pub struct ConnectionInfo<'a> {
    /// The verified mTLS peer identity; `None` for plaintext.
    pub src_identity: Option<Identity>,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    /// The resolved target port (after service port → target port translation).
    pub dst_port: u16,
    pub dst_workload: &'a Workload,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum AuthzDecision {
    Allow,
    Deny { reason: String },
}

impl AuthzDecision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, AuthzDecision::Allow)
    }
}

/// A dry-run policy that matched (it would have taken `action` if enforced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DryRunMatch {
    pub policy: String,
    pub action: PolicyAction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthzOutcome {
    pub decision: AuthzDecision,
    /// Dry-run policies that matched, DENY ones first, each group ordered as evaluated.
    pub dry_run_matches: Vec<DryRunMatch>,
}

/// Authorizes a connection against the destination workload's policies.
pub fn authorize(state: &MeshState, conn: &ConnectionInfo<'_>) -> AuthzOutcome {
    let policies = state.read().policies_for(conn.dst_workload);
    evaluate(&policies, conn)
}

/// Same as [`authorize`] on an existing view.
pub fn authorize_in(view: &MeshView<'_>, conn: &ConnectionInfo<'_>) -> AuthzOutcome {
    evaluate(&view.policies_for(conn.dst_workload), conn)
}

/// Evaluates `policies` (already selected for the destination) against `conn`.
pub fn evaluate(policies: &[Arc<Policy>], conn: &ConnectionInfo<'_>) -> AuthzOutcome {
    let mut dry_run_matches = Vec::new();
    let by = |action: PolicyAction, dry_run: bool| {
        policies
            .iter()
            .filter(move |p| p.action == action && p.dry_run == dry_run)
    };

    for p in by(PolicyAction::Deny, true) {
        if policy_matches(p, conn) {
            debug!(policy = %p.key(), "dry-run DENY policy would deny the connection");
            dry_run_matches.push(DryRunMatch {
                policy: p.key(),
                action: PolicyAction::Deny,
            });
        }
    }

    let denied_by = by(PolicyAction::Deny, false).find(|p| policy_matches(p, conn));

    for p in by(PolicyAction::Allow, true) {
        if policy_matches(p, conn) {
            debug!(policy = %p.key(), "dry-run ALLOW policy would allow the connection");
            dry_run_matches.push(DryRunMatch {
                policy: p.key(),
                action: PolicyAction::Allow,
            });
        }
    }

    let decision = if let Some(p) = denied_by {
        AuthzDecision::Deny {
            reason: format!("explicitly denied by {}", p.key()),
        }
    } else {
        let mut allows = by(PolicyAction::Allow, false).peekable();
        // No enforced ALLOW policy ⇒ allow; otherwise one of them must match.
        if allows.peek().is_none() || allows.any(|p| policy_matches(p, conn)) {
            AuthzDecision::Allow
        } else {
            AuthzDecision::Deny {
                reason: "allow policies exist, but none allowed".into(),
            }
        }
    };
    debug!(
        workload = %conn.dst_workload.uid,
        src = %conn.src_ip,
        dst = %conn.dst_ip,
        port = conn.dst_port,
        ?decision,
        "authorization decision"
    );
    AuthzOutcome {
        decision,
        dry_run_matches,
    }
}

/// Whether `policy`'s rules match `conn` (ignoring its action and dry-run flag).
pub fn policy_matches(policy: &Policy, conn: &ConnectionInfo<'_>) -> bool {
    if policy.rules.is_empty() {
        return false;
    }
    policy.rules.iter().any(|rule| {
        rule.iter().all(|clause| {
            clause.is_empty() || clause.iter().any(|m| !m.is_empty() && match_holds(m, conn))
        })
    })
}

/// Whether every non-empty field of one match holds. (An empty match trivially "holds" here;
/// callers skip empty matches before asking.)
pub fn match_holds(m: &Match, conn: &ConnectionInfo<'_>) -> bool {
    let principal = conn.src_identity.as_ref().map(Identity::principal);
    let namespace = conn.src_identity.as_ref().map(Identity::namespace);

    strings(&m.principals, &m.not_principals, principal.as_deref())
        && strings(&m.namespaces, &m.not_namespaces, namespace)
        && pair(&m.service_accounts, &m.not_service_accounts, |sa| {
            sa_matches(sa, conn.src_identity.as_ref())
        })
        && pair(&m.source_ips, &m.not_source_ips, |c: &Cidr| {
            c.contains(conn.src_ip)
        })
        && pair(&m.destination_ips, &m.not_destination_ips, |c: &Cidr| {
            c.contains(conn.dst_ip)
        })
        && pair(&m.destination_ports, &m.not_destination_ports, |p| {
            *p == conn.dst_port
        })
}

/// A positive/negative list pair: positives (if any) need one hit, negatives need none.
fn pair<T>(positive: &[T], negative: &[T], hit: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&hit)) && !negative.iter().any(&hit)
}

/// String pair against an optional value: no value ⇒ positives fail, negatives hold.
fn strings(positive: &[StringMatch], negative: &[StringMatch], value: Option<&str>) -> bool {
    match value {
        Some(v) => pair(positive, negative, |s| s.matches(v)),
        None => positive.is_empty(),
    }
}

fn sa_matches(sa: &ServiceAccountMatch, id: Option<&Identity>) -> bool {
    id.is_some_and(|id| {
        id.namespace() == sa.namespace && id.service_account() == sa.service_account
    })
}

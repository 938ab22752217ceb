//! AuthorizationPolicy → Authorization.

use controlplane::translate::TranslateOptions;
use proto::istio::security::{Action, Scope};

use crate::support::{translate, translate_with, view, view_of, with_diagnostics, workload_of};

#[test]
fn authz_scopes() {
    assert_snapshot!(view_of("authz_scopes"));
    let (s, _) = translate("authz_scopes");
    let scope = |k: &str| s.authorizations[k].scope;
    assert_eq!(scope("istio-system/mesh-wide"), Scope::Global as i32);
    assert_eq!(
        scope("istio-system/all-carts"),
        Scope::WorkloadSelector as i32
    );
    assert_eq!(scope("shop/shop-wide"), Scope::Namespace as i32);
    assert_eq!(scope("shop/cart-only"), Scope::WorkloadSelector as i32);
    assert_eq!(scope("shop/empty-selector"), Scope::WorkloadSelector as i32);
    // Sorted; root-namespace selector policies attach across namespaces.
    assert_eq!(
        workload_of(&s, "Kubernetes//Pod/shop/cart").authorization_policies,
        [
            "istio-system/all-carts",
            "shop/a-second-cart-policy",
            "shop/cart-only"
        ]
    );
    assert_eq!(
        workload_of(&s, "Kubernetes//Pod/other/cart").authorization_policies,
        ["istio-system/all-carts"]
    );
    assert!(
        workload_of(&s, "Kubernetes//Pod/shop/frontend")
            .authorization_policies
            .is_empty()
    );
}

#[test]
fn authz_empty_vs_allow_all() {
    assert_snapshot!(view_of("authz_empty_vs_allow_all"));
    let (s, _) = translate("authz_empty_vs_allow_all");
    // `spec: {}` ⇒ zero rules (matches nothing); `rules: [{}]` ⇒ one rule, zero clauses.
    assert!(s.authorizations["shop/allow-nothing"].rules.is_empty());
    assert!(s.authorizations["shop/no-spec"].rules.is_empty());
    let all = &s.authorizations["shop/allow-all"];
    assert_eq!(all.rules.len(), 1);
    assert!(all.rules[0].clauses.is_empty());
    assert_eq!(all.action, Action::Allow as i32);
    assert_eq!(s.authorizations["shop/deny-all"].rules[0].clauses.len(), 0);
    assert!(s.authorizations["shop/deny-nothing"].rules.is_empty());
}

#[test]
fn authz_l7_allow() {
    assert_snapshot!(view_of("authz_l7_allow"));
    let (s, diags) = translate("authz_l7_allow");
    assert_eq!(s.authorizations["shop/mixed"].rules.len(), 2);
    let only_http = &s.authorizations["shop/only-http"];
    assert!(
        only_http.rules.is_empty(),
        "policy kept, every rule dropped"
    );
    assert_eq!(diags.len(), 2);
}

#[test]
fn authz_l7_deny() {
    assert_snapshot!(view_of("authz_l7_deny"));
    let (s, _) = translate("authz_l7_deny");
    let mixed = &s.authorizations["shop/mixed-entry"];
    assert_eq!(
        mixed.rules[0].clauses[0].matches[0].destination_ports,
        [8080]
    );
    let only = &s.authorizations["shop/only-http"];
    // to: one empty Match; from: an empty Match and the namespace Match.
    assert_eq!(only.rules[0].clauses[0].matches, [Default::default()]);
    assert_eq!(only.rules[0].clauses[1].matches[0], Default::default());
    assert_eq!(only.rules[1].clauses[0].matches, [Default::default()]);
    assert_eq!(only.rules[1].clauses[1].matches[0].destination_ports, [22]);
}

#[test]
fn authz_unsupported_not_sent() {
    assert_snapshot!(view_of("authz_unsupported"));
    let (s, diags) = translate("authz_unsupported");
    assert_eq!(
        s.authorizations.keys().collect::<Vec<_>>(),
        ["shop/not-dry-run"]
    );
    assert_eq!(
        workload_of(&s, "Kubernetes//Pod/shop/cart").authorization_policies,
        ["shop/not-dry-run"]
    );
    // AUDIT, CUSTOM, two dry-run, one AUDIT selector; targetRef policies are silent.
    assert_eq!(diags.len(), 5, "{diags:#?}");
}

#[test]
fn authz_dry_run_enabled() {
    let opts = TranslateOptions {
        enable_dry_run_authorization_policy: true,
        ..Default::default()
    };
    let (s, diags) = translate_with("authz_unsupported", &opts);
    assert_snapshot!(with_diagnostics(view(&s), &diags));
    assert!(s.authorizations["shop/dry-run"].dry_run);
    assert!(s.authorizations["shop/dry-run-selector"].dry_run);
    assert!(!s.authorizations["shop/not-dry-run"].dry_run);
    assert_eq!(
        workload_of(&s, "Kubernetes//Pod/shop/cart").authorization_policies,
        ["shop/dry-run-selector", "shop/not-dry-run"]
    );
}

#[test]
fn authz_from() {
    assert_snapshot!(view_of("authz_from"));
    let (s, _) = translate("authz_from");
    let m = &s.authorizations["shop/sources"].rules[0].clauses[0].matches;
    assert_eq!(m.len(), 4, "one Match per from entry, one clause");
    let sa = &m[2].service_accounts;
    assert_eq!(
        (sa[0].namespace.as_str(), sa[0].service_account.as_str()),
        ("shop", "frontend")
    );
    assert_eq!(
        (sa[1].namespace.as_str(), sa[1].service_account.as_str()),
        ("other", "checkout")
    );
    let ips: Vec<_> = m[3]
        .source_ips
        .iter()
        .map(|a| (a.address.len(), a.length))
        .collect();
    assert_eq!(ips, [(4, 32), (4, 16), (16, 128), (16, 48)]);
}

#[test]
fn authz_to() {
    assert_snapshot!(view_of("authz_to"));
}

#[test]
fn authz_when() {
    assert_snapshot!(view_of("authz_when"));
    let (s, _) = translate("authz_when");
    let clauses = &s.authorizations["shop/conditions"].rules[0].clauses;
    assert_eq!(clauses.len(), 6, "one clause per when entry");
    assert!(clauses.iter().all(|c| c.matches.len() == 1));
}

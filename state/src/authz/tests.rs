use std::sync::Arc;

use hbone::Identity;

use super::*;
use crate::model::{
    Match, Policy, PolicyAction::*, PolicyScope::*, ServiceAccountMatch, StringMatch,
};
use crate::testutil::*;

/// Who connects.
#[derive(Clone, Copy, Debug)]
enum Src {
    /// mTLS `cluster.local/ns/shop/sa/ui` from 10.0.0.1
    Ui,
    /// mTLS `cluster.local/ns/other/sa/x` from 10.1.0.5
    Foreign,
    /// plaintext from 10.0.0.9
    Plain,
}

fn conn(src: Src, port: u16, dst: &Workload) -> ConnectionInfo<'_> {
    let (id, ip_) = match src {
        Src::Ui => (Some(Identity::new("", "shop", "ui")), "10.0.0.1"),
        Src::Foreign => (Some(Identity::new("", "other", "x")), "10.1.0.5"),
        Src::Plain => (None, "10.0.0.9"),
    };
    ConnectionInfo {
        src_identity: id,
        src_ip: ip(ip_),
        dst_ip: ip("10.0.0.2"),
        dst_port: port,
        dst_workload: dst,
    }
}

fn m(f: impl FnOnce(&mut Match)) -> Match {
    let mut m = Match::default();
    f(&mut m);
    m
}

fn p(action: PolicyAction, rules: Vec<Vec<Vec<Match>>>) -> Arc<Policy> {
    policy(
        "shop",
        &format!("{action:?}").to_lowercase(),
        Namespace,
        action,
        rules,
    )
}

fn named(name: &str, action: PolicyAction, rules: Vec<Vec<Vec<Match>>>) -> Arc<Policy> {
    policy("shop", name, Namespace, action, rules)
}

fn dry(p: Arc<Policy>) -> Arc<Policy> {
    let mut p = (*p).clone();
    p.dry_run = true;
    Arc::new(p)
}

fn principal_ui() -> Match {
    m(|m| m.principals = vec![exact("cluster.local/ns/shop/sa/ui")])
}

fn port(p: u16) -> Match {
    m(|m| m.destination_ports = vec![p])
}

/// Expected: `None` = allow, `Some(substr)` = deny with a reason containing `substr`.
type Want = Option<&'static str>;
const ALLOW: Want = None;
const NONE_ALLOWED: Want = Some("allow policies exist, but none allowed");

#[test]
fn table() {
    let dst = workload("Kubernetes//Pod/shop/cart-0", "shop", "cart", &["10.0.0.2"]);
    type Case = (&'static str, Vec<Arc<Policy>>, Src, u16, Want);
    let cases: Vec<Case> = vec![
        (
            "no policies allow everything",
            vec![],
            Src::Plain,
            9090,
            ALLOW,
        ),
        // S08: `spec: {}` ⇒ ALLOW policy with no rules ⇒ allow-list mode with nothing allowed.
        (
            "S08 deny-all (ALLOW, zero rules) denies mTLS",
            vec![p(Allow, vec![])],
            Src::Ui,
            9090,
            NONE_ALLOWED,
        ),
        (
            "S08 deny-all denies plaintext",
            vec![p(Allow, vec![])],
            Src::Plain,
            9090,
            NONE_ALLOWED,
        ),
        (
            "allow-all (one rule, no clauses)",
            vec![p(Allow, vec![vec![]])],
            Src::Foreign,
            1,
            ALLOW,
        ),
        (
            "zero-rule DENY never matches",
            vec![p(Deny, vec![])],
            Src::Ui,
            9090,
            ALLOW,
        ),
        // S09: allow by principal.
        (
            "S09 principal allowed",
            vec![p(Allow, vec![vec![vec![principal_ui()]]])],
            Src::Ui,
            9090,
            ALLOW,
        ),
        (
            "S09 other principal denied",
            vec![p(Allow, vec![vec![vec![principal_ui()]]])],
            Src::Foreign,
            9090,
            NONE_ALLOWED,
        ),
        (
            "S09 plaintext fails a principal positive",
            vec![p(Allow, vec![vec![vec![principal_ui()]]])],
            Src::Plain,
            9090,
            NONE_ALLOWED,
        ),
        // S10: namespaces / notNamespaces.
        (
            "S10 namespaces allow",
            vec![p(
                Allow,
                vec![vec![vec![m(|m| m.namespaces = vec![exact("shop")])]]],
            )],
            Src::Ui,
            9090,
            ALLOW,
        ),
        (
            "S10 namespaces deny foreign",
            vec![p(
                Allow,
                vec![vec![vec![m(|m| m.namespaces = vec![exact("shop")])]]],
            )],
            Src::Foreign,
            9090,
            NONE_ALLOWED,
        ),
        (
            "S10 notNamespaces DENY hits foreign",
            vec![named(
                "deny-foreign",
                Deny,
                vec![vec![vec![m(|m| m.not_namespaces = vec![exact("shop")])]]],
            )],
            Src::Foreign,
            9090,
            Some("explicitly denied by shop/deny-foreign"),
        ),
        (
            "S10 notNamespaces DENY spares own ns",
            vec![named(
                "deny-foreign",
                Deny,
                vec![vec![vec![m(|m| m.not_namespaces = vec![exact("shop")])]]],
            )],
            Src::Ui,
            9090,
            ALLOW,
        ),
        (
            "S10 notNamespaces DENY hits plaintext (negative holds without identity)",
            vec![named(
                "deny-foreign",
                Deny,
                vec![vec![vec![m(|m| m.not_namespaces = vec![exact("shop")])]]],
            )],
            Src::Plain,
            9090,
            Some("deny-foreign"),
        ),
        // Ports compare the resolved target port.
        (
            "S10 target port allowed",
            vec![p(Allow, vec![vec![vec![port(9090)]]])],
            Src::Foreign,
            9090,
            ALLOW,
        ),
        (
            "S10 service port is not the target port",
            vec![p(Allow, vec![vec![vec![port(9090)]]])],
            Src::Foreign,
            8080,
            NONE_ALLOWED,
        ),
        (
            "notDestinationPorts",
            vec![p(
                Deny,
                vec![vec![vec![m(|m| m.not_destination_ports = vec![9090])]]],
            )],
            Src::Ui,
            8080,
            Some("explicitly denied"),
        ),
        (
            "notDestinationPorts spares the port",
            vec![p(
                Deny,
                vec![vec![vec![m(|m| m.not_destination_ports = vec![9090])]]],
            )],
            Src::Ui,
            9090,
            ALLOW,
        ),
        // ipBlocks / notIpBlocks (`when: source.ip notValues`).
        (
            "ipBlocks allow",
            vec![p(
                Allow,
                vec![vec![vec![m(|m| m.source_ips = vec![cidr("10.0.0.0/24")])]]],
            )],
            Src::Ui,
            9090,
            ALLOW,
        ),
        (
            "ipBlocks miss",
            vec![p(
                Allow,
                vec![vec![vec![m(|m| m.source_ips = vec![cidr("10.0.0.0/24")])]]],
            )],
            Src::Foreign,
            9090,
            NONE_ALLOWED,
        ),
        (
            "when source.ip notValues denies outside",
            vec![p(
                Deny,
                vec![vec![vec![m(|m| {
                    m.not_source_ips = vec![cidr("10.0.0.0/24")]
                })]]],
            )],
            Src::Foreign,
            9090,
            Some("explicitly denied"),
        ),
        (
            "when source.ip notValues spares inside",
            vec![p(
                Deny,
                vec![vec![vec![m(|m| {
                    m.not_source_ips = vec![cidr("10.0.0.0/24")]
                })]]],
            )],
            Src::Ui,
            9090,
            ALLOW,
        ),
        (
            "destination ips",
            vec![p(
                Allow,
                vec![vec![vec![m(|m| {
                    m.destination_ips = vec![cidr("10.0.0.2/32")]
                })]]],
            )],
            Src::Foreign,
            9090,
            ALLOW,
        ),
        (
            "not destination ips",
            vec![p(
                Deny,
                vec![vec![vec![m(|m| {
                    m.not_destination_ips = vec![cidr("10.0.0.2/32")]
                })]]],
            )],
            Src::Foreign,
            9090,
            ALLOW,
        ),
        // DENY wins over ALLOW.
        (
            "DENY precedence",
            vec![
                p(Allow, vec![vec![vec![principal_ui()]]]),
                named("no-ui", Deny, vec![vec![vec![principal_ui()]]]),
            ],
            Src::Ui,
            9090,
            Some("explicitly denied by shop/no-ui"),
        ),
        // STRICT PeerAuthentication conversion.
        (
            "STRICT denies plaintext",
            vec![named(
                "istio_converted_static_strict",
                Deny,
                vec![vec![vec![m(|m| {
                    m.not_principals = vec![StringMatch::Presence]
                })]]],
            )],
            Src::Plain,
            9090,
            Some("istio_converted_static_strict"),
        ),
        (
            "STRICT allows mTLS",
            vec![named(
                "istio_converted_static_strict",
                Deny,
                vec![vec![vec![m(|m| {
                    m.not_principals = vec![StringMatch::Presence]
                })]]],
            )],
            Src::Foreign,
            9090,
            ALLOW,
        ),
        // Service accounts.
        (
            "serviceAccounts allow",
            vec![p(
                Allow,
                vec![vec![vec![m(|m| {
                    m.service_accounts = vec![sa("shop", "ui")]
                })]]],
            )],
            Src::Ui,
            9090,
            ALLOW,
        ),
        (
            "serviceAccounts need ns and sa",
            vec![p(
                Allow,
                vec![vec![vec![m(|m| {
                    m.service_accounts = vec![sa("other", "ui"), sa("shop", "x")]
                })]]],
            )],
            Src::Ui,
            9090,
            NONE_ALLOWED,
        ),
        (
            "serviceAccounts plaintext fails",
            vec![p(
                Allow,
                vec![vec![vec![m(|m| {
                    m.service_accounts = vec![sa("shop", "ui")]
                })]]],
            )],
            Src::Plain,
            9090,
            NONE_ALLOWED,
        ),
        (
            "notServiceAccounts plaintext holds",
            vec![p(
                Deny,
                vec![vec![vec![m(|m| {
                    m.not_service_accounts = vec![sa("shop", "ui")]
                })]]],
            )],
            Src::Plain,
            9090,
            Some("explicitly denied"),
        ),
        (
            "notServiceAccounts spares listed",
            vec![p(
                Deny,
                vec![vec![vec![m(|m| {
                    m.not_service_accounts = vec![sa("shop", "ui")]
                })]]],
            )],
            Src::Ui,
            9090,
            ALLOW,
        ),
        // String match kinds (principal without spiffe://).
        (
            "prefix",
            vec![p(
                Allow,
                vec![vec![vec![m(|m| {
                    m.principals = vec![StringMatch::Prefix("cluster.local/ns/shop/".into())]
                })]]],
            )],
            Src::Ui,
            9090,
            ALLOW,
        ),
        (
            "suffix",
            vec![p(
                Allow,
                vec![vec![vec![m(|m| {
                    m.principals = vec![StringMatch::Suffix("/sa/x".into())]
                })]]],
            )],
            Src::Foreign,
            9090,
            ALLOW,
        ),
        (
            "presence",
            vec![p(
                Allow,
                vec![vec![vec![m(|m| {
                    m.principals = vec![StringMatch::Presence]
                })]]],
            )],
            Src::Foreign,
            9090,
            ALLOW,
        ),
        (
            "spiffe:// prefix never matches a principal",
            vec![p(
                Allow,
                vec![vec![vec![m(|m| {
                    m.principals = vec![exact("spiffe://cluster.local/ns/shop/sa/ui")]
                })]]],
            )],
            Src::Ui,
            9090,
            NONE_ALLOWED,
        ),
        // Structure: rule = AND of clauses, clause = OR of matches, rules OR-ed.
        (
            "AND of clauses: both hold",
            vec![p(Allow, vec![vec![vec![principal_ui()], vec![port(9090)]]])],
            Src::Ui,
            9090,
            ALLOW,
        ),
        (
            "AND of clauses: one fails",
            vec![p(Allow, vec![vec![vec![principal_ui()], vec![port(9090)]]])],
            Src::Ui,
            8080,
            NONE_ALLOWED,
        ),
        (
            "OR of matches",
            vec![p(Allow, vec![vec![vec![principal_ui(), port(8080)]]])],
            Src::Foreign,
            8080,
            ALLOW,
        ),
        (
            "OR of rules",
            vec![p(
                Allow,
                vec![vec![vec![principal_ui()]], vec![vec![port(8080)]]],
            )],
            Src::Foreign,
            8080,
            ALLOW,
        ),
        (
            "within a match all fields must hold",
            vec![p(
                Allow,
                vec![vec![vec![m(|m| {
                    m.principals = vec![exact("cluster.local/ns/shop/sa/ui")];
                    m.destination_ports = vec![9090];
                })]]],
            )],
            Src::Ui,
            8080,
            NONE_ALLOWED,
        ),
        (
            "clause with zero matches counts as matched",
            vec![p(Allow, vec![vec![vec![], vec![port(9090)]]])],
            Src::Foreign,
            9090,
            ALLOW,
        ),
        (
            "empty match is skipped, others still OR",
            vec![p(Allow, vec![vec![vec![Match::default(), principal_ui()]]])],
            Src::Ui,
            9090,
            ALLOW,
        ),
        (
            "empty match is skipped, does not match alone",
            vec![p(Allow, vec![vec![vec![Match::default(), principal_ui()]]])],
            Src::Foreign,
            9090,
            NONE_ALLOWED,
        ),
    ];
    for (name, policies, src, port, want) in cases {
        let c = conn(src, port, &dst);
        let out = evaluate(&policies, &c);
        match (want, &out.decision) {
            (None, AuthzDecision::Allow) => {}
            (Some(s), AuthzDecision::Deny { reason }) if reason.contains(s) => {}
            _ => panic!("{name}: want {want:?}, got {:?}", out.decision),
        }
        assert!(out.dry_run_matches.is_empty(), "{name}");
    }
}

fn sa(ns: &str, sa: &str) -> ServiceAccountMatch {
    ServiceAccountMatch {
        namespace: ns.into(),
        service_account: sa.into(),
    }
}

/// xds-and-ca.md §6: a DENY rule whose entries only had L7 attributes keeps its clauses with
/// empty matches; "an empty Match never matches, so a clause consisting only of empty Matches
/// fails and that rule has no effect". Also the L4 part of a mixed rule still denies.
#[test]
fn clause_of_only_empty_matches_fails_so_l7_only_deny_has_no_effect() {
    let dst = workload("Kubernetes//Pod/shop/cart-0", "shop", "cart", &["10.0.0.2"]);
    let l7_only = named("l7-only", Deny, vec![vec![vec![Match::default()]]]);
    let l7_only_two_clauses = named(
        "l7-two",
        Deny,
        vec![vec![
            vec![Match::default()],
            vec![Match::default(), Match::default()],
        ]],
    );
    for src in [Src::Ui, Src::Foreign, Src::Plain] {
        let c = conn(src, 9090, &dst);
        assert_eq!(
            evaluate(std::slice::from_ref(&l7_only), &c).decision,
            AuthzDecision::Allow
        );
        assert_eq!(
            evaluate(std::slice::from_ref(&l7_only_two_clauses), &c).decision,
            AuthzDecision::Allow
        );
        assert!(!policy_matches(&l7_only, &c));
    }
    // `from` kept its L4 principal, `to` lost everything (methods only): the to-clause fails,
    // so the whole rule has no effect.
    let mixed = named(
        "mixed",
        Deny,
        vec![vec![vec![principal_ui()], vec![Match::default()]]],
    );
    assert!(
        evaluate(&[mixed], &conn(Src::Ui, 9090, &dst))
            .decision
            .is_allowed()
    );
    // The L4 part of an entry that also had L7 fields still denies (broader than asked).
    let l4_left = named("l4", Deny, vec![vec![vec![principal_ui()]]]);
    assert!(
        !evaluate(&[l4_left], &conn(Src::Ui, 9090, &dst))
            .decision
            .is_allowed()
    );
}

#[test]
fn dry_run_policies_do_not_enforce_but_are_reported() {
    let dst = workload("Kubernetes//Pod/shop/cart-0", "shop", "cart", &["10.0.0.2"]);
    let dry_deny = dry(named("dry-deny", Deny, vec![vec![vec![principal_ui()]]]));
    let dry_allow = dry(named("dry-allow", Allow, vec![vec![vec![port(1)]]]));
    let dry_allow_ui = dry(named(
        "dry-allow-ui",
        Allow,
        vec![vec![vec![principal_ui()]]],
    ));

    // A matching dry-run DENY does not deny; a dry-run ALLOW does not turn on allow-list mode.
    let out = evaluate(
        &[dry_deny.clone(), dry_allow.clone(), dry_allow_ui.clone()],
        &conn(Src::Ui, 9090, &dst),
    );
    assert_eq!(out.decision, AuthzDecision::Allow);
    assert_eq!(
        out.dry_run_matches,
        vec![
            DryRunMatch {
                policy: "shop/dry-deny".into(),
                action: Deny
            },
            DryRunMatch {
                policy: "shop/dry-allow-ui".into(),
                action: Allow
            },
        ]
    );

    // Enforced policies still decide; dry-run outcomes are reported alongside.
    let enforced = named("only-port-1", Allow, vec![vec![vec![port(1)]]]);
    let out = evaluate(&[dry_deny, enforced], &conn(Src::Ui, 9090, &dst));
    assert_eq!(
        out.decision,
        AuthzDecision::Deny {
            reason: "allow policies exist, but none allowed".into()
        }
    );
    assert_eq!(out.dry_run_matches.len(), 1);
}

#[test]
fn scopes_and_missing_keys_through_the_store() {
    let state = MeshState::default();
    let mut dst = workload("Kubernetes//Pod/shop/cart-0", "shop", "cart", &["10.0.0.2"]);
    dst.authorization_policies = vec!["shop/selected".into(), "shop/missing".into()];
    let deny_port = |ns: &str, name: &str, scope, p: u16| {
        let mut pol = (*policy(ns, name, scope, Deny, vec![vec![vec![port(p)]]])).clone();
        pol.dry_run = false;
        pol
    };
    state.insert_policy(
        "istio-system/global",
        deny_port("istio-system", "global", Global, 1),
    );
    state.insert_policy("shop/ns", deny_port("shop", "ns", Namespace, 2));
    state.insert_policy("other/ns", deny_port("other", "ns", Namespace, 3));
    state.insert_policy(
        "shop/selected",
        deny_port("shop", "selected", WorkloadSelector, 4),
    );
    state.insert_policy(
        "shop/unselected",
        deny_port("shop", "unselected", WorkloadSelector, 5),
    );

    let verdict = |p: u16| {
        let c = conn(Src::Ui, p, &dst);
        authorize(&state, &c).decision
    };
    assert!(
        matches!(verdict(1), AuthzDecision::Deny { reason } if reason.ends_with("istio-system/global"))
    );
    assert!(matches!(verdict(2), AuthzDecision::Deny { reason } if reason.ends_with("shop/ns")));
    assert_eq!(verdict(3), AuthzDecision::Allow, "other namespace's policy");
    assert!(
        matches!(verdict(4), AuthzDecision::Deny { reason } if reason.ends_with("shop/selected"))
    );
    assert_eq!(
        verdict(5),
        AuthzDecision::Allow,
        "selector policy not listed"
    );

    let keys: Vec<String> = state
        .read()
        .policies_for(&dst)
        .iter()
        .map(|p| p.key())
        .collect();
    assert_eq!(keys, ["istio-system/global", "shop/ns", "shop/selected"]);

    // Removing a policy takes effect for the next evaluation.
    assert!(state.remove_policy("shop/ns"));
    assert_eq!(verdict(2), AuthzDecision::Allow);
}

#[test]
fn policy_change_bumps_generation() {
    let state = MeshState::default();
    let rx = state.subscribe();
    let before = *rx.borrow();
    state
        .upsert_policy("shop/p", {
            let mut a = pb_policy("shop", "p");
            a.action = proto::istio::security::Action::Deny as i32;
            a
        })
        .unwrap();
    assert!(rx.has_changed().unwrap());
    let after = *rx.borrow();
    assert_eq!(after.policies, before.policies + 1);
    assert_eq!(after.addresses, before.addresses);
}

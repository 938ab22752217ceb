//! PeerAuthentication → Authorization and workload keys.

use proto::istio::security::{Action, Scope};

use crate::support::{string_match, translate, view_of, workload_of};

const STATIC: &str = "istio-system/istio_converted_static_strict";

#[test]
fn pa_mesh_strict() {
    assert_snapshot!(view_of("pa_mesh_strict"));
    let (s, _) = translate("pa_mesh_strict");
    for uid in ["ns-a/a", "ns-b/b", "istio-system/gateway"] {
        let w = workload_of(&s, &format!("Kubernetes//Pod/{uid}"));
        assert_eq!(w.authorization_policies, [STATIC], "{uid}");
    }
    let p = &s.authorizations[STATIC];
    assert_eq!(p.name, "istio_converted_static_strict");
    assert_eq!(p.namespace, "istio-system");
    assert_eq!(p.scope, Scope::WorkloadSelector as i32);
    assert_eq!(p.action, Action::Deny as i32);
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.rules[0].clauses.len(), 1);
    assert_eq!(p.rules[0].clauses[0].matches.len(), 1);
    let m = &p.rules[0].clauses[0].matches[0];
    assert_eq!(
        m.not_principals
            .iter()
            .map(string_match)
            .collect::<Vec<_>>(),
        ["presence"]
    );
    let rest = proto::istio::security::Match {
        not_principals: vec![],
        ..m.clone()
    };
    assert_eq!(rest, Default::default(), "only not_principals is set");
}

#[test]
fn pa_precedence() {
    assert_snapshot!(view_of("pa_precedence"));
    let (s, _) = translate("pa_precedence");
    let keys = |uid: &str| {
        workload_of(&s, &format!("Kubernetes//Pod/{uid}"))
            .authorization_policies
            .clone()
    };
    let none: [&str; 0] = [];
    assert_eq!(
        keys("relaxed/plain"),
        none,
        "namespace PERMISSIVE beats mesh STRICT"
    );
    assert_eq!(
        keys("relaxed/secure"),
        [STATIC],
        "workload STRICT beats namespace"
    );
    assert_eq!(
        keys("no-policy/inherits"),
        [STATIC],
        "older mesh STRICT wins"
    );
    assert_eq!(keys("unset-ns/x"), [STATIC], "unset modes inherit");
    assert_eq!(keys("oldest/plain"), none, "older namespace DISABLE wins");
    assert_eq!(
        keys("oldest/pinned"),
        [STATIC],
        "older workload STRICT wins"
    );
    assert_eq!(
        keys("istio-system/gw"),
        [STATIC],
        "root selector policy ignored"
    );
}

#[test]
fn pa_port_level() {
    assert_snapshot!(view_of("pa_port_level"));
    let (s, _) = translate("pa_port_level");
    let keys = |uid: &str| {
        workload_of(&s, &format!("Kubernetes//Pod/{uid}"))
            .authorization_policies
            .clone()
    };
    assert_eq!(
        keys("ports/a"),
        ["ports/converted_peer_authentication_strict-with-exceptions"]
    );
    assert_eq!(
        keys("ports/b"),
        ["ports/converted_peer_authentication_permissive-with-strict-ports"]
    );
    assert_eq!(keys("ports/c"), [STATIC]);
    assert_eq!(
        keys("inherit-strict/d"),
        ["inherit-strict/converted_peer_authentication_unset-with-exception"]
    );
    assert_eq!(keys("inherit-strict/e"), [STATIC]);
    assert_eq!(
        keys("plain/f"),
        ["plain/converted_peer_authentication_unset-strict-port"]
    );
    assert_eq!(keys("nsports/g"), [STATIC]);

    // STRICT with exemptions: one rule, plaintext clause AND not-port clauses.
    let a = &s.authorizations["ports/converted_peer_authentication_strict-with-exceptions"];
    assert_eq!(a.scope, Scope::WorkloadSelector as i32);
    assert_eq!(a.action, Action::Deny as i32);
    assert_eq!(a.rules.len(), 1);
    let ports: Vec<_> = a.rules[0].clauses[1..]
        .iter()
        .map(|c| c.matches[0].not_destination_ports.clone())
        .collect();
    assert_eq!(ports, [vec![8080], vec![9090]]);
    // PERMISSIVE with STRICT ports: one rule per port.
    let b = &s.authorizations["ports/converted_peer_authentication_permissive-with-strict-ports"];
    let ports: Vec<_> = b
        .rules
        .iter()
        .map(|r| r.clauses[0].matches[0].destination_ports.clone())
        .collect();
    assert_eq!(ports, [vec![9000], vec![9001]]);
    assert!(
        !s.authorizations
            .contains_key("ports/converted_peer_authentication_all-strict")
    );
    assert!(
        !s.authorizations
            .contains_key("nsports/converted_peer_authentication_ns-with-ports")
    );
    assert!(
        s.authorizations
            .contains_key("plain/converted_peer_authentication_selects-nothing")
    );
}

#[test]
fn pa_disable() {
    assert_snapshot!(view_of("pa_disable"));
    let (s, _) = translate("pa_disable");
    for uid in ["shop/cart", "shop/legacy", "default/other"] {
        assert!(
            workload_of(&s, &format!("Kubernetes//Pod/{uid}"))
                .authorization_policies
                .is_empty()
        );
    }
    assert_eq!(s.authorizations.keys().collect::<Vec<_>>(), [STATIC]);
}

#[test]
fn no_peer_authentication_no_static_policy() {
    let (s, _) = translate("pod_basic");
    assert!(!s.authorizations.contains_key(STATIC));
}

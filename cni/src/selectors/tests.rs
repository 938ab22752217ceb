use std::collections::BTreeMap;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn pod(ns: &str, l: &[(&str, &str)]) -> PodMeta {
    PodMeta {
        uid: "u".into(),
        name: "p".into(),
        namespace: ns.into(),
        labels: labels(l),
        ..Default::default()
    }
}

#[test]
fn label_selector_table() {
    let sel = |yaml: &str| -> LabelSelector { serde_yaml::from_str(yaml).unwrap() };
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
    let cases: &[Case] = &[
        ("{}", &[], true),
        ("{matchLabels: {a: b}}", &[("a", "b")], true),
        ("{matchLabels: {a: b}}", &[("a", "c")], false),
        ("{matchLabels: {a: b}}", &[], false),
        (
            "{matchExpressions: [{key: a, operator: In, values: [x, y]}]}",
            &[("a", "y")],
            true,
        ),
        (
            "{matchExpressions: [{key: a, operator: In, values: [x]}]}",
            &[],
            false,
        ),
        (
            "{matchExpressions: [{key: a, operator: NotIn, values: [none]}]}",
            &[],
            true,
        ),
        (
            "{matchExpressions: [{key: a, operator: NotIn, values: [none]}]}",
            &[("a", "none")],
            false,
        ),
        (
            "{matchExpressions: [{key: a, operator: Exists}]}",
            &[("a", "")],
            true,
        ),
        (
            "{matchExpressions: [{key: a, operator: Exists}]}",
            &[],
            false,
        ),
        (
            "{matchExpressions: [{key: a, operator: DoesNotExist}]}",
            &[],
            true,
        ),
        (
            "{matchExpressions: [{key: a, operator: DoesNotExist}]}",
            &[("a", "1")],
            false,
        ),
        (
            "{matchLabels: {b: c}, matchExpressions: [{key: a, operator: Exists}]}",
            &[("a", "1")],
            false,
        ),
        (
            "{matchExpressions: [{key: a, operator: Bogus}]}",
            &[("a", "1")],
            false,
        ),
    ];
    for (yaml, l, want) in cases {
        assert_eq!(sel(yaml).matches(&labels(l)), *want, "{yaml} vs {l:?}");
    }
}

#[test]
fn validation_rejects_bad_requirements() {
    for bad in [
        "[{podSelector: {matchExpressions: [{key: a, operator: Bogus}]}}]",
        "[{podSelector: {matchExpressions: [{key: a, operator: In}]}}]",
        "[{namespaceSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}}]",
        "not: [a list",
    ] {
        assert!(parse_selectors(bad).is_err(), "{bad}");
    }
    let ok = parse_selectors(
        "- podSelector: {matchLabels: {istio.io/dataplane-mode: ambient}}\n\
         - namespaceSelector: {matchLabels: {istio.io/dataplane-mode: ambient}}\n  \
           podSelector: {matchExpressions: [{key: istio.io/dataplane-mode, operator: NotIn, values: [none]}]}\n",
    )
    .unwrap();
    assert_eq!(ok, default_selectors());
}

#[test]
fn default_enrollment_table() {
    let e = Enrollment::default();
    let amb = [("istio.io/dataplane-mode", "ambient")];
    let none = [("istio.io/dataplane-mode", "none")];
    let cases: Vec<(PodMeta, BTreeMap<String, String>, Decision)> = vec![
        (pod("a", &amb), labels(&[]), Decision::Enroll),
        (pod("a", &[]), labels(&amb), Decision::Enroll),
        (pod("a", &[]), labels(&[]), Decision::NotSelected),
        (
            pod("a", &[("istio.io/dataplane-mode", "other")]),
            labels(&amb),
            Decision::Enroll,
        ),
        (
            pod("a", &none),
            labels(&amb),
            Decision::Excluded("opted out (istio.io/dataplane-mode=none)"),
        ),
        (
            pod("kube-system", &amb),
            labels(&[]),
            Decision::Excluded("namespace excluded"),
        ),
        (
            pod(
                "istio-system",
                &[("app", "ztunnel"), ("istio.io/dataplane-mode", "ambient")],
            ),
            labels(&[]),
            Decision::Excluded("ztunnel pod"),
        ),
        (
            PodMeta {
                host_network: true,
                ..pod("a", &amb)
            },
            labels(&[]),
            Decision::Excluded("hostNetwork pod"),
        ),
        (
            PodMeta {
                annotations: labels(&[("sidecar.istio.io/status", "{}")]),
                ..pod("a", &amb)
            },
            labels(&[]),
            Decision::Excluded("sidecar-injected pod"),
        ),
    ];
    for (p, ns, want) in cases {
        assert_eq!(e.decide(&p, &ns), want, "{p:?} ns={ns:?}");
    }
}

#[test]
fn custom_selector_only_namespace() {
    let e = Enrollment {
        selectors: parse_selectors("[{namespaceSelector: {matchLabels: {mesh: 'on'}}}]").unwrap(),
        ..Default::default()
    };
    assert!(
        e.decide(&pod("x", &[]), &labels(&[("mesh", "on")]))
            .is_enroll()
    );
    assert!(
        !e.decide(
            &pod("x", &[("istio.io/dataplane-mode", "ambient")]),
            &labels(&[])
        )
        .is_enroll()
    );
}

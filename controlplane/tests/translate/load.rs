//! Loading YAML: unknown kinds, invalid objects, lists, directories.

use controlplane::k8s::{Cluster, LoadErrorReason, ObjectKey, load_dir};
use controlplane::translate::{TranslateOptions, translate};

use crate::support::{fixtures_dir, view};

#[test]
fn load_dir_reports_errors_and_loads_the_rest() {
    let dir = fixtures_dir().join("load_dir");
    let loaded = load_dir(&dir).expect("directory is readable");
    let report = &loaded.report;

    // Errors, with the directory prefix removed for a stable snapshot.
    let errors: Vec<String> = report
        .errors
        .iter()
        .map(|e| e.to_string().replace(&format!("{}/", dir.display()), ""))
        .collect();
    assert_snapshot!("load_dir_errors", errors);

    let by_index: Vec<_> = report
        .errors
        .iter()
        .map(|e| {
            (
                e.file.file_name().unwrap().to_string_lossy().into_owned(),
                e.index,
                e.kind.clone(),
                e.name.clone(),
            )
        })
        .collect();
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        by_index,
        [
            ("02-mixed.yaml".into(), Some(1), s("Pod"), s("shop/broken")),
            ("02-mixed.yaml".into(), Some(2), s("Service"), None),
            (
                "02-mixed.yaml".into(),
                Some(3),
                s("AuthorizationPolicy"),
                s("shop/bad-action")
            ),
            ("02-mixed.yaml".into(), Some(4), None, None),
            (
                "02-mixed.yaml".into(),
                Some(7),
                s("PeerAuthentication"),
                s("shop/bad-port")
            ),
            ("05-syntax.yaml".into(), Some(1), None, None),
        ]
    );
    assert!(matches!(
        report.errors[1].reason,
        LoadErrorReason::MissingName
    ));
    assert!(matches!(
        report.errors[5].reason,
        LoadErrorReason::Syntax(_)
    ));

    assert_eq!(
        report
            .ignored
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect::<Vec<_>>(),
        [
            ("apps/v1/Deployment", 1),
            ("gateway.networking.k8s.io/v1/Gateway", 1),
            ("security.istio.io/v1alpha1/AuthorizationPolicy", 1),
            ("v1/ConfigMap", 1),
        ]
    );
    assert_eq!(report.files, 5, "hidden files and README.md are skipped");

    let c = &loaded.cluster;
    assert!(c.namespaces.contains_key("shop"));
    assert!(
        c.pods.contains_key(&ObjectKey::new("default", "ok")),
        "no namespace ⇒ default"
    );
    assert!(
        c.pods.contains_key(&ObjectKey::new("shop", "cart-1")),
        "from the List"
    );
    assert!(
        c.service_accounts
            .contains_key(&ObjectKey::new("shop", "cart"))
    );
    assert!(
        c.service_accounts
            .contains_key(&ObjectKey::new("shop", "before-error"))
    );
    assert!(
        !c.service_accounts
            .contains_key(&ObjectKey::new("shop", "after-error"))
    );
    assert!(
        c.authorization_policies
            .contains_key(&ObjectKey::new("shop", "good"))
    );
    assert!(
        c.peer_authentications
            .contains_key(&ObjectKey::new("istio-system", "default")),
        "subdirectory"
    );
    assert_eq!(report.objects, 8);

    assert_snapshot!(
        "load_dir_translated",
        view(&translate(c, &TranslateOptions::default()))
    );
}

#[test]
fn unknown_kind_is_ignored_and_counted() {
    let loaded = Cluster::from_yaml_str(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: a, namespace: ignored}\n",
    );
    assert!(loaded.report.errors.is_empty());
    assert_eq!(
        loaded.report.ignored["networking.istio.io/v1/VirtualService"],
        1
    );
    assert_eq!(loaded.report.objects, 1);
    assert!(loaded.cluster.namespaces.contains_key("a"));
}

#[test]
fn missing_directory_is_an_error() {
    let err = load_dir(&fixtures_dir().join("does-not-exist")).unwrap_err();
    assert_eq!(err.source.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("does-not-exist"), "{err}");
}

#[test]
fn later_duplicate_replaces_earlier() {
    let loaded = Cluster::from_yaml_str(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa, namespace: a, labels: {v: '1'}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa, namespace: a, labels: {v: '2'}}\n",
    );
    let sa = &loaded.cluster.service_accounts[&ObjectKey::new("a", "sa")];
    assert_eq!(sa.metadata.labels.as_ref().unwrap()["v"], "2");
}

#[test]
fn invalid_pod_ip_is_a_diagnostic_not_a_failure() {
    let loaded = Cluster::from_yaml_str(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: not-an-ip}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: q}\nstatus: {podIP: 10.0.0.1}\n",
    );
    let (s, diags) =
        controlplane::translate::translate_with_diagnostics(&loaded.cluster, &Default::default());
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].object, ObjectKey::new("default", "p"));
    assert_eq!(s.addresses.len(), 1);
}

#[test]
fn null_spec_and_entries_mean_empty() {
    let loaded = Cluster::from_yaml_str(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b}\n\
         spec: {rules: [{from: [{source: null}], to: [{operation: null}]}]}\n---\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: c}\nspec: null\n",
    );
    assert!(
        loaded.report.errors.is_empty(),
        "{:#?}",
        loaded.report.errors
    );
    let c = &loaded.cluster;
    assert!(
        c.authorization_policies[&ObjectKey::new("default", "a")]
            .spec
            .rules
            .is_empty()
    );
    let b = &c.authorization_policies[&ObjectKey::new("default", "b")]
        .spec
        .rules[0];
    assert_eq!((b.from.len(), b.to.len()), (1, 1));
    assert!(
        c.peer_authentications[&ObjectKey::new("default", "c")]
            .spec
            .mtls
            .is_none()
    );
}

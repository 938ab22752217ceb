//! End to end, peer authentication and L4 authorization at ztunnel (scenarios S03, S04, S06,
//! S08, S09, S10 of `../shared/reference/scenarios.md`, plus live re-evaluation and the kubelet
//! probe bypass), with each redirection backend. Needs root; a lab per test.

use mesh_tests::both_backends;
use mesh_tests::lab::*;

/// How long a policy change may take to reach every ztunnel (control plane → xDS).
const PROPAGATION_SECS: u64 = 20;

fn reset(c: &Curl) -> bool {
    c.reset() && c.stderr.contains("Connection reset by peer")
}

fn refused(c: &Curl) -> bool {
    c.exit != 0 && c.code == "000"
}

/// `default` ambient with sleep (node0) and httpbin (node1); `legacy` not enrolled, with its
/// own sleep on node0.
fn lab_with_legacy(name: &str, backend: Backend) -> LabGuard {
    let lab = start(name, backend);
    lab.label("ns", "", "default", "istio.io/dataplane-mode=ambient")
        .unwrap();
    lab.apply_yaml(&format!(
        "{}---\n{}---\n{}",
        sleep_and_httpbin("default", "node0", "node1"),
        namespace("legacy", &[]),
        app("legacy", "sleep", "curlimages/curl", "node0", None)
    ))
    .unwrap();
    curl_until(
        &lab,
        ("sleep", "default"),
        "http://httpbin.default:8000/get",
        20,
        "default/sleep → httpbin before any policy",
        Curl::ok,
    );
    lab
}

const HTTPBIN: &str = "http://httpbin.default:8000/get";

fn pa(ns: &str, mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: {ns}}}
spec: {{mtls: {{mode: {mode}}}}}
"
    )
}

/// S03: mesh-wide STRICT refuses plaintext from a non-mesh pod; mesh traffic still works; the
/// refusal goes away with the policy.
fn s03_mesh_wide_strict(backend: Backend) {
    let lab = lab_with_legacy("s03", backend);
    curl_until(
        &lab,
        ("sleep", "legacy"),
        HTTPBIN,
        10,
        "legacy → httpbin while PERMISSIVE",
        Curl::ok,
    );
    lab.apply_yaml(&pa("istio-system", "STRICT")).unwrap();
    let c = curl_until(
        &lab,
        ("sleep", "legacy"),
        HTTPBIN,
        PROPAGATION_SECS,
        "legacy → httpbin refused under STRICT",
        refused,
    );
    // Refused or reset, depending on whether curl saw the reset before its connect returned.
    assert!(
        matches!(c.exit, 7 | 56),
        "plaintext under STRICT is refused or reset: {c:?}"
    );
    let c = curl(&lab, "sleep", "default", HTTPBIN, &[]);
    assert!(c.ok(), "mesh traffic under STRICT: {c:?}");
    lab.delete("PeerAuthentication", "istio-system", "default")
        .unwrap();
    curl_until(
        &lab,
        ("sleep", "legacy"),
        HTTPBIN,
        PROPAGATION_SECS,
        "legacy → httpbin after the PeerAuthentication is deleted",
        Curl::ok,
    );
}

/// S04 (explicit PERMISSIVE accepts both) and S06 (namespace STRICT between ambient pods).
fn s04_s06_permissive_and_namespace_strict(backend: Backend) {
    let lab = lab_with_legacy("s04", backend);
    lab.apply_yaml(&pa("istio-system", "PERMISSIVE")).unwrap();
    // Nothing changes: give the policy time to arrive, then both clients succeed.
    wait_until("PERMISSIVE reaches ztunnel", PROPAGATION_SECS, || {
        let s = lab.status().unwrap();
        if s.contains("SYNCED") || !s.contains("STALE") {
            Ok(())
        } else {
            Err(s)
        }
    });
    for ns in ["legacy", "default"] {
        let c = curl(&lab, "sleep", ns, HTTPBIN, &[]);
        assert!(c.ok(), "{ns}/sleep under PERMISSIVE: {c:?}");
    }
    assert!(
        ztunnel_metric(
            &lab,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "mutual_tls")
            ]
        ) >= 1.0
    );
    lab.apply_yaml(&pa("default", "STRICT")).unwrap();
    curl_until(
        &lab,
        ("sleep", "legacy"),
        HTTPBIN,
        PROPAGATION_SECS,
        "legacy → httpbin refused under the namespace's STRICT",
        refused,
    );
    let c = curl(&lab, "sleep", "default", HTTPBIN, &[]);
    assert!(c.ok(), "ambient → ambient under STRICT (S06): {c:?}");
}

fn authz(name: &str, action: &str, selector: Option<&str>, rules: &str) -> String {
    let selector = selector
        .map(|app| format!("  selector: {{matchLabels: {{app: {app}}}}}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: default}}
spec:
{selector}  action: {action}
{rules}"
    )
}

/// S08 and S09: deny-all resets with no HTTP status; an ALLOW by principal lets exactly that
/// client through; the kubelet's probe from the node still reaches the app.
fn s08_s09_deny_all_then_allow_principal(backend: Backend) {
    let lab = start("s08", backend);
    lab.label("ns", "", "default", "istio.io/dataplane-mode=ambient")
        .unwrap();
    lab.apply_yaml(&format!(
        "{}---\n{}---\n{}",
        app("default", "web-frontend", "curlimages/curl", "node0", None),
        app("default", "curl", "curlimages/curl", "node0", None),
        app(
            "default",
            "customers",
            "docker.io/kennethreitz/httpbin",
            "node1",
            Some((80, 80))
        ),
    ))
    .unwrap();
    let url = "http://customers/get";
    for client in ["web-frontend", "curl"] {
        curl_until(
            &lab,
            (client, "default"),
            url,
            20,
            "no policy: allowed",
            Curl::ok,
        );
    }
    lab.apply_yaml(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: default}
spec: {}
",
    )
    .unwrap();
    let c = curl_until(
        &lab,
        ("web-frontend", "default"),
        url,
        PROPAGATION_SECS,
        "deny-all resets the connection",
        reset,
    );
    assert_eq!(c.code, "000", "no HTTP status under deny-all: {c:?}");

    // The kubelet's probe comes from the node, bypasses ztunnel and is not subject to policy.
    let ip = lab
        .pods()
        .unwrap()
        .into_iter()
        .find(|p| p.name.starts_with("customers"))
        .and_then(|p| p.ip)
        .expect("customers ip");
    let probe = lab
        .node_exec(
            "node1",
            &[
                "curl",
                "-sS",
                "-m",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://{ip}:80/status/200"),
            ],
        )
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&probe.stdout),
        "200",
        "kubelet probe under deny-all: {}",
        String::from_utf8_lossy(&probe.stderr)
    );

    lab.apply_yaml(&authz(
        "allow-web-frontend",
        "ALLOW",
        Some("customers"),
        "  rules:\n  - from:\n    - source: {principals: [\"cluster.local/ns/default/sa/web-frontend\"]}\n",
    ))
    .unwrap();
    curl_until(
        &lab,
        ("web-frontend", "default"),
        url,
        PROPAGATION_SECS,
        "the ALLOW for web-frontend's principal restores it",
        Curl::ok,
    );
    let c = curl(&lab, "curl", "default", url, &[]);
    // Reset (56), or refused (7) when the reset beat curl's own connect (a busy machine).
    assert!(
        matches!(c.exit, 7 | 56) && c.code == "000",
        "another principal is still refused: {c:?}"
    );
}

/// S10: ALLOW by namespace, DENY by notNamespaces, ALLOW by port, `when source.ip notValues`
/// and ipBlocks; DENY wins over a matching ALLOW; with no policy everything is allowed.
fn s10_namespaces_ports_ip_blocks_and_deny_precedence(backend: Backend) {
    let lab = start("s10", backend);
    lab.apply_yaml(&format!(
        "{}---\n{}---\n{}---\n{}---\n{}---\n{}",
        namespace("other", &[("istio.io/dataplane-mode", "ambient")]),
        app("default", "sleep", "curlimages/curl", "node0", None),
        app("other", "sleep", "curlimages/curl", "node0", None),
        app(
            "default",
            "httpbin",
            "docker.io/kennethreitz/httpbin",
            "node1",
            Some((8000, 80))
        ),
        app(
            "default",
            "web-api",
            "docker.io/kennethreitz/httpbin",
            "node1",
            Some((8080, 8080))
        ),
        namespace("production", &[("istio.io/dataplane-mode", "ambient")]),
    ))
    .unwrap();
    lab.label("ns", "", "default", "istio.io/dataplane-mode=ambient")
        .unwrap();
    let httpbin = "http://httpbin.default:8000/get";
    let web_api = "http://web-api.default:8080/get";
    let clients = [("sleep", "default"), ("sleep", "other")];
    for c in clients {
        curl_until(&lab, c, httpbin, 20, "no policy: allowed", Curl::ok);
        curl_until(&lab, c, web_api, 20, "no policy: allowed", Curl::ok);
    }
    let check = |what: &str, url: &str, (pod, ns): (&str, &str), allowed: bool| {
        curl_until(
            &lab,
            (pod, ns),
            url,
            PROPAGATION_SECS,
            &format!("{what}: {ns}/{pod} → {url} allowed={allowed}"),
            |c| if allowed { c.ok() } else { reset(c) },
        );
    };

    // (a) ALLOW from the default namespace only.
    lab.apply_yaml(&authz(
        "p",
        "ALLOW",
        None,
        "  rules:\n  - from:\n    - source: {namespaces: [default]}\n",
    ))
    .unwrap();
    check("(a)", httpbin, ("sleep", "other"), false);
    check("(a)", httpbin, ("sleep", "default"), true);

    // (b) DENY from outside default and production (replaces (a)).
    lab.apply_yaml(&authz(
        "p",
        "DENY",
        None,
        "  rules:\n  - from:\n    - source: {notNamespaces: [default, production]}\n",
    ))
    .unwrap();
    check("(b)", web_api, ("sleep", "other"), false);
    check("(b)", web_api, ("sleep", "default"), true);

    // (c) ALLOW to port 8080 only (the port the app listens on).
    lab.apply_yaml(&authz(
        "p",
        "ALLOW",
        None,
        "  rules:\n  - to:\n    - operation: {ports: [\"8080\"]}\n",
    ))
    .unwrap();
    check("(c)", httpbin, ("sleep", "default"), false);
    check("(c)", web_api, ("sleep", "other"), true);

    // (d) ALLOW when the source IP is not other/sleep's, and by ipBlocks.
    let other_ip = lab
        .pods()
        .unwrap()
        .into_iter()
        .find(|p| p.namespace == "other")
        .and_then(|p| p.ip)
        .expect("other/sleep ip");
    lab.apply_yaml(&authz(
        "p",
        "ALLOW",
        None,
        &format!("  rules:\n  - when:\n    - {{key: source.ip, notValues: [\"{other_ip}\"]}}\n"),
    ))
    .unwrap();
    check("(d) notValues", httpbin, ("sleep", "other"), false);
    check("(d) notValues", httpbin, ("sleep", "default"), true);
    lab.apply_yaml(&authz(
        "p",
        "ALLOW",
        None,
        &format!("  rules:\n  - from:\n    - source: {{ipBlocks: [\"{other_ip}/32\"]}}\n"),
    ))
    .unwrap();
    check("(d) ipBlocks", httpbin, ("sleep", "default"), false);
    check("(d) ipBlocks", httpbin, ("sleep", "other"), true);

    // (e) An ALLOW and a DENY that both match: DENY wins.
    lab.apply_yaml(&format!(
        "{}---\n{}",
        authz(
            "p",
            "ALLOW",
            None,
            "  rules:\n  - from:\n    - source: {namespaces: [default, other]}\n"
        ),
        authz(
            "q",
            "DENY",
            None,
            "  rules:\n  - from:\n    - source: {namespaces: [other]}\n"
        ),
    ))
    .unwrap();
    check("(e)", httpbin, ("sleep", "other"), false);
    check("(e)", httpbin, ("sleep", "default"), true);

    // No policy at all: everything is allowed again.
    lab.delete("AuthorizationPolicy", "default", "p").unwrap();
    lab.delete("AuthorizationPolicy", "default", "q").unwrap();
    for c in clients {
        check("no policy", httpbin, c, true);
    }
}

/// A policy change closes the live connections it now denies (Istio re-evaluates them).
fn policy_change_closes_live_connections(backend: Backend) {
    let lab = lab_with_legacy("live", backend);
    // A request that takes 10 s runs in the background while deny-all arrives.
    let slow = slow_request(&lab, 10);
    // The connection is open once the destination ztunnel counts it.
    wait_until("the slow request's connection is open", 10, || {
        let open = ztunnel_metric(
            &lab,
            "istio_tcp_connections_opened_total",
            &[("reporter", "destination")],
        ) - ztunnel_metric(
            &lab,
            "istio_tcp_connections_closed_total",
            &[("reporter", "destination")],
        );
        if open >= 1.0 { Ok(()) } else { Err(open) }
    });
    lab.apply_yaml(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: default}
spec: {}
",
    )
    .unwrap();
    let c = slow.join().expect("curl thread");
    assert!(
        c.exit != 0 && c.code != "200",
        "the live connection must be closed by the new deny-all, not served: {c:?}\n{}",
        ztunnel_logs(&lab)
    );
}

both_backends!(
    s03_mesh_wide_strict,
    s04_s06_permissive_and_namespace_strict,
    s08_s09_deny_all_then_allow_principal,
    s10_namespaces_ports_ip_blocks_and_deny_precedence,
    policy_change_closes_live_connections,
);

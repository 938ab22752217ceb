//! End to end, the secure overlay (scenarios S01, S02, S05, S07, S12 of
//! `../shared/reference/scenarios.md`): the whole mesh in a lab of network namespaces, with
//! each redirection backend. Needs root; a lab per test, torn down even when the test fails.

use mesh_tests::both_backends;
use mesh_tests::lab::*;

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const HTTPBIN: &str = "spiffe://cluster.local/ns/default/sa/httpbin";

/// An ambient `default` namespace with sleep on node0 and httpbin on node1.
fn ambient_lab(name: &str, backend: Backend) -> LabGuard {
    let lab = start(name, backend);
    lab.label("ns", "", "default", "istio.io/dataplane-mode=ambient")
        .unwrap();
    lab.apply_yaml(&sleep_and_httpbin("default", "node0", "node1"))
        .unwrap();
    lab
}

/// S01: pods in an ambient namespace are enrolled (redirection annotation, no sidecar), one
/// ztunnel per node, and sleep reaches httpbin by its Service name.
fn s01_enrollment(backend: Backend) {
    let lab = ambient_lab("s01", backend);
    let pods = lab.pods().unwrap();
    assert_eq!(pods.len(), 2, "{pods:?}");
    for p in &pods {
        assert_eq!(p.phase, "Running", "{p:?}");
        assert_eq!(p.enrolment.as_deref(), Some("enabled"), "{p:?}");
    }
    let nodes = lab.nodes().unwrap();
    assert!(nodes.iter().all(|n| n.ztunnel && n.cni_agent), "{nodes:?}");
    let c = curl_until(
        &lab,
        ("sleep", "default"),
        "http://httpbin:8000/get",
        20,
        "sleep → httpbin:8000",
        Curl::ok,
    );
    assert!(c.body.contains("\"url\""), "{c:?}");
}

/// S02: the bytes between the nodes are TLS to 15008 only, and the metrics carry both SPIFFE
/// identities with `mutual_tls`.
fn s02_mtls_with_identities(backend: Backend) {
    let lab = ambient_lab("s02", backend);
    // Counted from before the first request, so the pooled connection's handshake is seen.
    lab.wire_reset().unwrap();
    curl_until(
        &lab,
        ("sleep", "default"),
        "http://httpbin:8000/get",
        20,
        "first request",
        Curl::ok,
    );
    for i in 0..20 {
        let c = curl(&lab, "sleep", "default", "http://httpbin:8000/get", &[]);
        assert!(c.ok(), "request {i}: {c:?}");
    }
    let wire = lab.wire_counts().unwrap();
    assert!(wire.only_hbone(), "{wire}");
    assert!(wire.tls_handshakes >= 1, "{wire}");
    let want = [
        ("source_principal", SLEEP),
        ("destination_principal", HTTPBIN),
        ("connection_security_policy", "mutual_tls"),
    ];
    for reporter in ["source", "destination"] {
        let mut labels = want.to_vec();
        labels.push(("reporter", reporter));
        let opened = wait_until(&format!("{reporter} metrics"), 10, || {
            let v = ztunnel_metric(&lab, "istio_tcp_connections_opened_total", &labels);
            if v >= 21.0 { Ok(v) } else { Err(v) }
        });
        assert!(opened >= 21.0, "{opened}");
    }
}

both_backends!(s01_enrollment, s02_mtls_with_identities);

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
    // One access-log line per connection on each side, naming both identities.
    for node in ["node0", "node1"] {
        let log = lab.logs("ztunnel", Some(node)).unwrap();
        let lines = log
            .lines()
            .filter(|l| {
                l.contains("access")
                    && l.contains(&format!("src.identity={SLEEP} "))
                    && l.contains(&format!("dst.identity={HTTPBIN} "))
            })
            .count();
        assert!(lines >= 21, "{lines} access-log lines on {node}:\n{log}");
    }
}

/// S05: an ambient client reaches a non-mesh server in plaintext (no HBONE attempted).
fn s05_mesh_client_to_non_mesh_server(backend: Backend) {
    let lab = start("s05", backend);
    lab.label("ns", "", "default", "istio.io/dataplane-mode=ambient")
        .unwrap();
    lab.apply_yaml(&format!(
        "{}---\n{}---\n{}",
        namespace("legacy", &[]),
        app("default", "sleep", "curlimages/curl", "node0", None),
        app(
            "legacy",
            "httpbin",
            "docker.io/kennethreitz/httpbin",
            "node1",
            Some((8000, 80))
        ),
    ))
    .unwrap();
    lab.wire_reset().unwrap();
    curl_until(
        &lab,
        ("sleep", "default"),
        "http://httpbin.legacy:8000/get",
        20,
        "default/sleep → legacy/httpbin",
        Curl::ok,
    );
    let wire = lab.wire_counts().unwrap();
    assert_eq!(wire.hbone_packets, 0, "no HBONE to a non-mesh pod: {wire}");
    assert!(
        wire.plaintext_http_packets > 0,
        "plaintext on the wire: {wire}"
    );
}

/// S07: a PeerAuthentication DISABLE does not turn mTLS off between ambient pods. It replaces
/// a STRICT one first, so the moment a non-mesh client gets through again shows that ztunnel
/// has the DISABLE.
fn s07_disable_is_ignored(backend: Backend) {
    let lab = ambient_lab("s07", backend);
    lab.apply_yaml(&format!(
        "{}---\n{}",
        namespace("legacy", &[]),
        app("legacy", "sleep", "curlimages/curl", "node0", None)
    ))
    .unwrap();
    let pa = |mode: &str| {
        format!(
            "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: default}}
spec: {{mtls: {{mode: {mode}}}}}
"
        )
    };
    let url = "http://httpbin.default:8000/get";
    lab.apply_yaml(&pa("STRICT")).unwrap();
    curl_until(
        &lab,
        ("sleep", "legacy"),
        url,
        20,
        "STRICT refuses plaintext",
        |c| c.exit != 0,
    );
    lab.apply_yaml(&pa("DISABLE")).unwrap();
    curl_until(
        &lab,
        ("sleep", "legacy"),
        url,
        20,
        "DISABLE (like PERMISSIVE) accepts plaintext",
        Curl::ok,
    );
    lab.wire_reset().unwrap();
    let c = curl(&lab, "sleep", "default", url, &[]);
    assert!(c.ok(), "{c:?}");
    let wire = lab.wire_counts().unwrap();
    assert!(
        wire.only_hbone(),
        "ambient → ambient is still HBONE: {wire}"
    );
    assert!(
        ztunnel_metric(
            &lab,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("source_principal", SLEEP),
                ("connection_security_policy", "mutual_tls")
            ]
        ) >= 1.0
    );
}

/// The workload as ztunnel on `node` sees it in its config dump: its `protocol`.
fn protocol_in_dump(lab: &Lab, node: &str, pod_prefix: &str) -> Option<String> {
    let dump: serde_json::Value =
        serde_json::from_str(&lab.node_http(node, 15000, "/config_dump").unwrap()).unwrap();
    dump["workloads"]
        .as_array()?
        .iter()
        .find(|w| {
            w["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(pod_prefix))
        })
        .and_then(|w| w["protocol"].as_str().map(str::to_string))
}

/// S12 and label-driven enrolment: removing the namespace label releases the running pods
/// (plaintext on the wire, ztunnel no longer counts them), putting it back enrols the same
/// pods again (HBONE), without restarting them.
fn s12_opt_out_and_back_by_label(backend: Backend) {
    let lab = ambient_lab("s12", backend);
    let pods_before: Vec<String> = lab.pods().unwrap().into_iter().map(|p| p.name).collect();
    curl_until(
        &lab,
        ("sleep", "default"),
        "http://httpbin:8000/get",
        20,
        "enrolled",
        Curl::ok,
    );
    lab.label("ns", "", "default", "istio.io/dataplane-mode-")
        .unwrap();
    wait_until("pods released", 20, || {
        let pods = lab.pods().unwrap();
        if pods.iter().all(|p| p.enrolment.is_none()) {
            Ok(())
        } else {
            Err(pods)
        }
    });
    wait_until(
        "ztunnel sees the workloads as plain TCP",
        20,
        || match protocol_in_dump(&lab, "node0", "httpbin").as_deref() {
            Some("TCP") => Ok(()),
            other => Err(other.map(str::to_string)),
        },
    );
    let opened = |lab: &Lab| ztunnel_metric(lab, "istio_tcp_connections_opened_total", &[]);
    let before = opened(&lab);
    lab.wire_reset().unwrap();
    let c = curl(&lab, "sleep", "default", "http://httpbin:8000/get", &[]);
    assert!(c.ok(), "released pods keep working: {c:?}");
    let wire = lab.wire_counts().unwrap();
    assert_eq!(wire.hbone_packets, 0, "{wire}");
    assert!(wire.plaintext_http_packets > 0, "{wire}");
    assert_eq!(
        opened(&lab),
        before,
        "ztunnel no longer handles their connections"
    );

    lab.label("ns", "", "default", "istio.io/dataplane-mode=ambient")
        .unwrap();
    wait_until("pods enrolled again", 20, || {
        let pods = lab.pods().unwrap();
        if pods
            .iter()
            .all(|p| p.enrolment.as_deref() == Some("enabled"))
        {
            Ok(())
        } else {
            Err(pods)
        }
    });
    let pods_after: Vec<String> = lab.pods().unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(pods_before, pods_after, "the same pods, not restarted");
    wait_until(
        "ztunnel sees the workloads as HBONE",
        20,
        || match protocol_in_dump(&lab, "node0", "httpbin").as_deref() {
            Some("HBONE") => Ok(()),
            other => Err(other.map(str::to_string)),
        },
    );
    lab.wire_reset().unwrap();
    let c = curl(&lab, "sleep", "default", "http://httpbin:8000/get", &[]);
    assert!(c.ok(), "{c:?}");
    let wire = lab.wire_counts().unwrap();
    assert!(wire.only_hbone(), "{wire}");
}

/// An ambient `default` namespace with sleep on node0, and httpbin (Service port 8000) on node1
/// in the `outside` namespace, outside the mesh: what ServiceEntries point at.
fn sleep_and_outside_httpbin(name: &str, backend: Backend) -> LabGuard {
    let lab = start(name, backend);
    lab.label("ns", "", "default", "istio.io/dataplane-mode=ambient")
        .unwrap();
    lab.apply_yaml(&format!(
        "{}---\n{}---\n{}",
        namespace("outside", &[]),
        app("default", "sleep", "curlimages/curl", "node0", None),
        app(
            "outside",
            "httpbin",
            "docker.io/kennethreitz/httpbin",
            "node1",
            Some((8000, 80))
        ),
    ))
    .unwrap();
    lab
}

/// A ServiceEntry (S36, ztunnel's part): an external service by name, with a `STATIC`
/// endpoint (here a non-mesh pod standing in for a host outside the cluster). The DNS proxy
/// answers the host with the VIP the control plane allocated, ztunnel captures the VIP and
/// connects to the endpoint, and reports the entry's host as the destination service.
#[test]
fn service_entry_static_endpoint() {
    let lab = sleep_and_outside_httpbin("se", Backend::Nftables);
    let ip = wait_until("the outside httpbin has an IP", 20, || {
        pod_info(&lab, "outside", "httpbin").ip.ok_or("no IP yet")
    });
    lab.apply_yaml(&format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: payments, namespace: default}}
spec:
  hosts: [payments.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  endpoints:
  - address: {ip}
"
    ))
    .unwrap();
    // The pod asks the cluster's DNS (10.96.0.10, its resolv.conf nameserver): the query is
    // captured and ztunnel's DNS proxy answers with the allocated VIP (240.240.0.0/16); the
    // cluster DNS itself knows nothing of the entry.
    let vip = wait_until(
        "ztunnel answers the entry's host",
        20,
        || match dns_query_a(
            &pod_netns(&lab, "default", "sleep"),
            "10.96.0.10:53".parse().unwrap(),
            "payments.example.com",
        ) {
            Ok(a) if !a.is_empty() => Ok(a[0]),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(vip.octets()[..2], [240, 240], "{vip}");
    // curl resolves the name itself, through the pod's resolv.conf, as an app would.
    let c = wait_until("sleep → payments.example.com (ServiceEntry)", 20, || {
        let c = curl(
            &lab,
            "sleep",
            "default",
            "http://payments.example.com/get",
            &[],
        );
        if c.ok() { Ok(c) } else { Err(c) }
    });
    assert!(
        c.body.contains("\"Host\": \"payments.example.com\""),
        "{c:?}"
    );
    let through_entry = ztunnel_metric(
        &lab,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "source"),
            ("destination_service", "payments.example.com"),
        ],
    );
    assert!(through_entry >= 1.0, "{through_entry}");
}

/// A ServiceEntry with DNS resolution whose endpoint is a hostname: ztunnel resolves it
/// through its node's resolver (the lab's cluster DNS) when the connection comes, and maps the
/// entry's port to the endpoint's. The endpoint here is a Service outside the mesh, reached by
/// its cluster name. A name only the cluster DNS knows (a pod record) is forwarded by
/// ztunnel's DNS proxy.
#[test]
fn service_entry_dns_resolution() {
    let lab = sleep_and_outside_httpbin("sedns", Backend::Iptables);
    lab.apply_yaml(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: orders, namespace: default}
spec:
  hosts: [orders.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - {number: 80, name: http, protocol: HTTP}
  endpoints:
  - address: httpbin.outside.svc.cluster.local
    ports: {http: 8000}
",
    )
    .unwrap();
    let c = wait_until(
        "sleep → orders.example.com (DNS ServiceEntry)",
        30,
        || {
            let c = curl(
                &lab,
                "sleep",
                "default",
                "http://orders.example.com/get",
                &[],
            );
            if c.ok() { Ok(c) } else { Err(c) }
        },
    );
    assert!(c.body.contains("\"Host\": \"orders.example.com\""), "{c:?}");
    let lookups = ztunnel_metric(
        &lab,
        "istio_on_demand_dns_total",
        &[("hostname", "httpbin.outside.svc.cluster.local")],
    );
    assert!(lookups >= 1.0, "on-demand lookups: {lookups}");
    let opened = ztunnel_metric(
        &lab,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "source"),
            ("destination_service", "orders.example.com"),
        ],
    );
    assert!(opened >= 1.0, "{opened}");

    // Forwarding: ztunnel does not know pod records; the cluster DNS does.
    let ip = pod_info(&lab, "outside", "httpbin").ip.expect("httpbin IP");
    let record = format!("{}.outside.pod.cluster.local", ip.replace('.', "-"));
    let answer = dns_query_a(
        &pod_netns(&lab, "default", "sleep"),
        "10.96.0.10:53".parse().unwrap(),
        &record,
    )
    .unwrap();
    assert_eq!(answer, vec![ip.parse::<std::net::Ipv4Addr>().unwrap()]);
    let forwarded = ztunnel_metric(&lab, "istio_dns_upstream_requests_total", &[]);
    assert!(forwarded >= 1.0, "forwarded queries: {forwarded}");
}

both_backends!(
    s01_enrollment,
    s02_mtls_with_identities,
    s05_mesh_client_to_non_mesh_server,
    s07_disable_is_ignored,
    s12_opt_out_and_back_by_label,
);

//! End to end, the lifecycle around the data path: certificate rotation (S11), restarts of
//! ztunnel and of the CNI agent, DNS capture, the proxy's own ports, and the plugin failing
//! closed. Each redirection backend; needs root; a lab per test.

use std::time::Duration;

use mesh_tests::both_backends;
use mesh_tests::lab::*;

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const URL: &str = "http://httpbin.default:8000/get";

fn ambient(lab: &Lab) {
    lab.label("ns", "", "default", "istio.io/dataplane-mode=ambient")
        .unwrap();
    lab.apply_yaml(&sleep_and_httpbin("default", "node0", "node1"))
        .unwrap();
    curl_until(
        lab,
        ("sleep", "default"),
        URL,
        20,
        "sleep → httpbin",
        Curl::ok,
    );
}

fn legacy_sleep(lab: &Lab) {
    lab.apply_yaml(&format!(
        "{}---\n{}",
        namespace("legacy", &[]),
        app("legacy", "sleep", "curlimages/curl", "node0", None)
    ))
    .unwrap();
}

/// sleep's certificate as ztunnel on node0 shows it in its config dump.
fn sleep_cert(lab: &Lab) -> serde_json::Value {
    let dump: serde_json::Value =
        serde_json::from_str(&lab.node_http("node0", 15000, "/config_dump").unwrap()).unwrap();
    dump["certificates"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["identity"] == SLEEP).cloned())
        .unwrap_or_else(|| panic!("no certificate for {SLEEP}: {}", dump["certificates"]))
}

/// The PEMs of a `/config_dump` certificate entry: `certChain` (leaf, intermediates) then
/// `rootCerts`; the dump carries each PEM base64-encoded, as Istio's ztunnel does.
fn dump_pems(cert: &serde_json::Value) -> Vec<String> {
    ["certChain", "rootCerts"]
        .iter()
        .flat_map(|key| cert[*key].as_array().cloned().unwrap_or_default())
        .map(|c| {
            let b64 = c["pem"]
                .as_str()
                .unwrap_or_else(|| panic!("no pem: {cert}"));
            String::from_utf8(base64_decode(b64)).expect("PEM text")
        })
        .collect()
}

/// Standard base64 with padding.
fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in s.bytes().filter(|b| *b != b'=') {
        let v = ALPHABET
            .iter()
            .position(|a| *a == b)
            .unwrap_or_else(|| panic!("not base64: {s:?}")) as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn not_after(pem: &str) -> i64 {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("leaf PEM");
    let cert = p.parse_x509().expect("leaf certificate");
    cert.validity().not_after.timestamp()
}

/// S11: the leaf carries the workload's SPIFFE id and chains to the control plane's root; with
/// a short lifetime it is renewed before it expires, while a long request on an existing
/// connection and new requests keep working.
fn s11_certificate_issuance_and_rotation(backend: Backend) {
    let lab = start_with("s11", 2, backend, &[("SECRET_TTL", "16s")]);
    ambient(&lab);
    let first = sleep_cert(&lab);
    let chain = dump_pems(&first);
    assert!(chain.len() >= 2, "leaf and root: {first}");
    let (_, leaf_pem) = x509_parser::pem::parse_x509_pem(chain[0].as_bytes()).unwrap();
    let leaf = leaf_pem.parse_x509().unwrap();
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .map(|g| g.to_string())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(sans, vec![format!("URI({SLEEP})")], "the leaf's SANs");
    let root = std::fs::read_to_string(lab.state_dir().join("controlplane/root-cert.pem")).unwrap();
    assert_eq!(
        chain.last().unwrap().trim(),
        root.trim(),
        "the chain ends at the control plane's root"
    );
    let (_, root_pem) = x509_parser::pem::parse_x509_pem(root.as_bytes()).unwrap();
    assert_eq!(
        leaf.issuer().to_string(),
        root_pem.parse_x509().unwrap().subject().to_string()
    );
    let lifetime = not_after(&chain[0]) - leaf.validity().not_before.timestamp();
    assert!(
        (10..=20).contains(&lifetime),
        "SECRET_TTL=16s asked for a 16 s certificate, got {lifetime} s"
    );

    // A 10 s request across the rotation, on the pooled connection.
    let slow = slow_request(&lab, 10);
    let first_serial = first["serial"].clone();
    let first_expiry = not_after(&chain[0]);
    let renewed = wait_until("the certificate is renewed", 30, || {
        let c = sleep_cert(&lab);
        if c["serial"] != first_serial {
            Ok(c)
        } else {
            Err(c["serial"].clone())
        }
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        now < first_expiry,
        "renewed before the old certificate expired ({now} vs {first_expiry})"
    );
    let new_chain = dump_pems(&renewed);
    assert!(not_after(&new_chain[0]) > first_expiry, "{renewed}");
    let c = slow.join().unwrap();
    assert!(c.ok(), "the long request survives the rotation: {c:?}");
    let c = curl(&lab, "sleep", "default", URL, &[]);
    assert!(c.ok(), "new requests after the rotation: {c:?}");
}

/// Listening TCP ports in a netns, one entry per socket.
fn listeners(netns: &str) -> Vec<u16> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "ss", "-Hltn"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|a| a.rsplit(':').next().and_then(|p| p.parse().ok()))
        .collect()
}

/// ztunnel restarted: it gets the CNI agent's snapshot again, re-creates the in-pod listeners
/// exactly once, and traffic flows over HBONE again.
fn ztunnel_restart_replays_the_snapshot(backend: Backend) {
    let lab = start("zrestart", backend);
    ambient(&lab);
    let netns = pod_netns(&lab, "default", "httpbin");
    let before = lab
        .pid("ztunnel", Some("node1"))
        .unwrap()
        .expect("ztunnel runs");
    lab.restart("ztunnel", "node1", Duration::from_secs(5))
        .unwrap();
    let after = lab
        .pid("ztunnel", Some("node1"))
        .unwrap()
        .expect("ztunnel runs");
    assert_ne!(before, after);
    let stat = std::fs::read_to_string(format!("/proc/{before}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "the old ztunnel is gone: {stat}"
    );
    let mut ports = listeners(&netns);
    ports.sort_unstable();
    for p in [15001, 15006, 15008] {
        assert_eq!(
            ports.iter().filter(|&&x| x == p).count(),
            1,
            "one listener on {p} in the pod: {ports:?}"
        );
    }
    lab.wire_reset().unwrap();
    curl_until(
        &lab,
        ("sleep", "default"),
        URL,
        20,
        "after restart",
        Curl::ok,
    );
    assert!(lab.wire_counts().unwrap().only_hbone());
    let log = lab.logs("ztunnel", Some("node1")).unwrap();
    assert!(
        log.matches("snapshot").count() >= 2,
        "both ztunnels received a snapshot:\n{log}"
    );
}

/// A pod's redirection rules as text (Istio's chains or tables only), without counters and
/// comments.
fn rules(backend: Backend, netns: &str) -> String {
    let argv: &[&str] = match backend {
        Backend::Iptables => &["iptables-save"],
        Backend::Nftables => &["nft", "list", "ruleset"],
    };
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns])
        .args(argv)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut keep = backend == Backend::Iptables;
    let mut lines = Vec::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        if backend == Backend::Nftables && l.starts_with("table ") {
            keep = l.contains("istio");
        }
        if !keep {
            continue;
        }
        // iptables-save chain counters `[p:b]`, nft `counter packets P bytes B`.
        let mut words: Vec<&str> = l.split_whitespace().collect();
        if words.first().is_some_and(|w| w.starts_with(':')) {
            words.retain(|w| !w.starts_with('['));
        }
        let mut out = Vec::new();
        let mut i = 0;
        while i < words.len() {
            if words[i] == "packets" || words[i] == "bytes" {
                i += 2;
                continue;
            }
            out.push(words[i]);
            i += 1;
        }
        lines.push(out.join(" "));
    }
    lines.join("\n")
}

/// The CNI agent restarted: a request in flight completes, traffic keeps using HBONE, and the
/// pod's rules are the same (reconciled, not duplicated).
fn cni_agent_restart_keeps_traffic_and_rules(backend: Backend) {
    let lab = start("arestart", backend);
    ambient(&lab);
    let netns = pod_netns(&lab, "default", "httpbin");
    let rules_before = rules(backend, &netns);
    assert!(rules_before.contains("15006"), "{rules_before}");
    let slow = slow_request(&lab, 3);
    lab.restart("cni-agent", "node1", Duration::from_secs(5))
        .unwrap();
    let c = slow.join().unwrap();
    assert!(c.ok(), "the request in flight: {c:?}");
    lab.wire_reset().unwrap();
    let c = curl(&lab, "sleep", "default", URL, &[]);
    assert!(c.ok(), "{c:?}");
    assert!(lab.wire_counts().unwrap().only_hbone());
    // The restarted agent re-applies the rules on startup: wait for its adoption, then compare.
    wait_until("the agent adopted the pod", 20, || {
        let log = lab.logs("cni-agent", Some("node1")).unwrap();
        if log.contains("adopted enrolled pod") {
            Ok(())
        } else {
            Err(log.len())
        }
    });
    assert_eq!(
        rules(backend, &netns),
        rules_before,
        "rules after the restart"
    );
    assert_eq!(
        pod_info(&lab, "default", "httpbin").enrolment.as_deref(),
        Some("enabled")
    );
}

/// DNS from an enrolled pod is answered by ztunnel's DNS proxy (port 53 captured to 15053)
/// with the Service's ClusterIP; a pod outside the mesh asks the cluster DNS itself and gets
/// the same answer, without ztunnel seeing the query.
fn dns_capture_answers_service_names(backend: Backend) {
    let lab = start("dns", backend);
    ambient(&lab);
    legacy_sleep(&lab);
    let vip: std::net::Ipv4Addr = lab
        .services()
        .unwrap()
        .into_iter()
        .find(|s| s.name == "httpbin")
        .and_then(|s| s.cluster_ip.and_then(|ip| ip.parse().ok()))
        .expect("httpbin ClusterIP");
    // 10.96.0.10 is the cluster DNS's ClusterIP, the pods' resolv.conf nameserver.
    let server = "10.96.0.10:53".parse().unwrap();
    let name = "httpbin.default.svc.cluster.local";
    let answered = || ztunnel_metric(&lab, "istio_dns_requests_total", &[]);
    let answer = wait_until(
        "ztunnel answers the pod's DNS query",
        20,
        || match dns_query_a(&pod_netns(&lab, "default", "sleep"), server, name) {
            Ok(a) if !a.is_empty() => Ok(a),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(answer, vec![vip]);
    let seen = answered();
    assert!(seen >= 1.0, "ztunnel counted no DNS request");
    let legacy = dns_query_a(&pod_netns(&lab, "legacy", "sleep"), server, name);
    assert_eq!(
        legacy.unwrap(),
        vec![vip],
        "the cluster DNS answers outside the mesh"
    );
    assert_eq!(answered(), seen, "no capture outside the mesh");
}

/// The proxy's own ports are not a way in: from a pod to its in-pod listeners or its node's
/// 15000/15001/15006/15008, and plaintext to another pod's 15006 or 15008, all fail without an
/// HTTP response.
fn proxy_ports_are_refused(backend: Backend) {
    let lab = start("ports", backend);
    ambient(&lab);
    legacy_sleep(&lab);
    let ip = pod_info(&lab, "default", "httpbin").ip.expect("httpbin ip");
    let mut attempts = vec![
        ("sleep", "legacy", format!("http://{ip}:15006/get")),
        ("sleep", "legacy", format!("http://{ip}:15008/get")),
        ("sleep", "default", format!("http://{ip}:15008/get")),
    ];
    // The pod's own in-pod listeners, and its node (gateway and underlay address).
    for host in ["127.0.0.1", "10.244.0.1", "10.99.0.10"] {
        for port in [15000, 15001, 15006, 15008] {
            attempts.push(("sleep", "default", format!("http://{host}:{port}/get")));
        }
    }
    for (pod, ns, url) in attempts {
        let c = curl(&lab, pod, ns, &url, &[]);
        assert!(
            c.exit != 0 && c.code == "000",
            "{ns}/{pod} → {url} must fail: {c:?}"
        );
    }
    // The app itself is still reachable the normal way.
    let c = curl(&lab, "sleep", "legacy", URL, &[]);
    assert!(c.ok(), "{c:?}");
}

/// With the node's CNI agent down, a pod that must be enrolled does not start (the plugin
/// fails closed); a pod outside the mesh starts; once the agent is back the first one starts.
fn plugin_fails_closed_without_the_agent(backend: Backend) {
    let lab = start("closed", backend);
    lab.label("ns", "", "default", "istio.io/dataplane-mode=ambient")
        .unwrap();
    legacy_sleep(&lab);
    lab.stop("cni-agent", "node0", Duration::from_secs(5))
        .unwrap();
    let err = lab
        .apply_yaml(&app("default", "sleep", "curlimages/curl", "node0", None))
        .expect_err("an ambient pod must not start without the agent");
    assert!(
        err.to_string().contains("sleep"),
        "the error names the pod: {err}"
    );
    let pending = pod_info(&lab, "default", "sleep");
    assert_eq!(
        (pending.phase.as_str(), pending.ip.as_deref()),
        ("Pending", None),
        "the pod waits for its sandbox, unprotected traffic impossible: {pending:?}"
    );
    lab.apply_yaml(&app("legacy", "other", "curlimages/curl", "node0", None))
        .expect("a pod outside the mesh starts without the agent");
    lab.restart("cni-agent", "node0", Duration::from_secs(5))
        .unwrap();
    // Applying again retries the sandbox, as kubelet keeps doing.
    lab.apply_yaml(&app("default", "sleep", "curlimages/curl", "node0", None))
        .expect("the ambient pod starts once the agent is back");
    let running = pod_info(&lab, "default", "sleep");
    assert_eq!(running.name, pending.name, "the same pod");
    assert_eq!(running.phase, "Running");
    assert_eq!(running.enrolment.as_deref(), Some("enabled"));
}

/// What an HBONE client holding `identity` (signed by the lab's own CA) gets when it tunnels
/// from inside `netns` to `target_ip`:15008 → `target_ip`:80 and sends a GET: the response's
/// first line, or the error.
fn hbone_get(
    lab: &Lab,
    netns: &str,
    identity: &str,
    target_ip: std::net::IpAddr,
    expected: &str,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let id = hbone::Identity::parse(identity).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(identity).unwrap(),
    )];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let signer = identity::CaSigner::from_plugged(&lab.state_dir().join("controlplane/ca"))
        .expect("the lab's CA");
    let chain = signer
        .sign_csr(&csr, &id, Duration::from_secs(3600))
        .expect("signing");
    let (leaf, root) = chain.split_at(chain.len() - 1);
    let cert = hbone::WorkloadCertificate::from_pem(&leaf.concat(), &key.serialize_pem(), &root[0])
        .expect("certificate");
    let expected = hbone::Identity::parse(expected).unwrap();
    let path = format!("/var/run/netns/{netns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let pool = hbone::Pool::new(
                hbone::ClientSettings::default(),
                hbone::StaticCertificate::new(cert),
                std::sync::Arc::new(hbone::DefaultDialer),
            );
            let request = hbone::ConnectRequest {
                source: id,
                expected: vec![expected],
                destination: std::net::SocketAddr::new(target_ip, 15008),
                source_ip: None,
                authority: format!("{target_ip}:80"),
                headers: http::HeaderMap::new(),
            };
            let work = async {
                let tunnel = pool.connect(request).await.map_err(|e| e.to_string())?;
                let mut s = tunnel.stream;
                s.write_all(b"GET /get HTTP/1.0\r\nHost: x\r\n\r\n")
                    .await
                    .map_err(|e| e.to_string())?;
                let mut body = Vec::new();
                s.read_to_end(&mut body).await.map_err(|e| e.to_string())?;
                let text = String::from_utf8_lossy(&body).into_owned();
                Ok(text.lines().next().unwrap_or_default().to_string())
            };
            tokio::time::timeout(Duration::from_secs(10), work)
                .await
                .unwrap_or_else(|_| Err("timed out".into()))
        })
    })
    .join()
    .unwrap()
}

/// A peer whose certificate comes from the mesh's own CA but names another trust domain is
/// refused by the destination ztunnel; the same client with a `cluster.local` identity is
/// served (so the refusal is about the trust domain, nothing else).
fn foreign_trust_domain_is_refused(backend: Backend) {
    let lab = start("trustdomain", backend);
    ambient(&lab);
    legacy_sleep(&lab);
    let netns = pod_netns(&lab, "legacy", "sleep");
    let ip = pod_info(&lab, "default", "httpbin")
        .ip
        .and_then(|ip| ip.parse().ok())
        .expect("httpbin ip");
    let httpbin = "spiffe://cluster.local/ns/default/sa/httpbin";
    let ok = hbone_get(
        &lab,
        &netns,
        "spiffe://cluster.local/ns/legacy/sa/sleep",
        ip,
        httpbin,
    );
    assert_eq!(ok.as_deref(), Ok("HTTP/1.1 200 OK"), "in-domain client");
    let refused = hbone_get(
        &lab,
        &netns,
        "spiffe://evil.local/ns/legacy/sa/sleep",
        ip,
        httpbin,
    );
    assert!(
        refused.is_err(),
        "a foreign trust domain must be refused: {refused:?}"
    );
    wait_until("ztunnel logs why it refused the handshake", 10, || {
        let log = lab.logs("ztunnel", Some("node1")).unwrap();
        if log.contains("evil.local") {
            Ok(())
        } else {
            Err(log.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
        }
    });
}

/// `CRL_PATH` end to end: ztunnel starts with a CRL that revokes nobody here; once the file
/// lists sleep's certificate (signed by the mesh's CA, serial from the config dump), node1's
/// ztunnel closes the live tunnel, refuses new handshakes from that certificate and counts them.
fn revoked_workload_certificate_is_refused(backend: Backend) {
    let crl_path =
        std::env::temp_dir().join(format!("mesh-e2e-crl-{}-{backend}.pem", std::process::id()));
    let unrelated = identity::CaSigner::generate("elsewhere.local").unwrap();
    let nobody = unrelated
        .revocation_list(&[], Duration::from_secs(86400))
        .unwrap();
    std::fs::write(&crl_path, nobody).unwrap();
    let lab = start_with(
        "crl",
        2,
        backend,
        &[("CRL_PATH", crl_path.to_str().unwrap())],
    );
    ambient(&lab);

    let slow = slow_request(&lab, 8);
    std::thread::sleep(Duration::from_millis(500));
    let serial = sleep_cert(&lab)["serial"]
        .as_str()
        .expect("sleep's serial")
        .to_string();
    let ca = identity::CaSigner::from_plugged(&lab.state_dir().join("controlplane/ca"))
        .expect("the lab's CA");
    let revoking = ca
        .revocation_list(&[&serial], Duration::from_secs(86400))
        .unwrap();
    std::fs::write(&crl_path, revoking).unwrap();

    let started = std::time::Instant::now();
    let c = slow.join().unwrap();
    assert!(
        !c.ok() && started.elapsed() < Duration::from_secs(7),
        "the request in flight is cut when its certificate is revoked: {c:?} after {:?}",
        started.elapsed()
    );
    let refused = curl_until(
        &lab,
        ("sleep", "default"),
        URL,
        10,
        "new requests with the revoked certificate fail",
        |c| !c.ok(),
    );
    // Reset (56), or refused (7) when the reset beat curl's own connect (a busy machine).
    assert!(
        matches!(refused.exit, 7 | 56),
        "refused with a reset: {refused:?}"
    );
    // The counter is refreshed with each check of the file (every 2 s).
    wait_until("node1's ztunnel counts the refusals", 10, || {
        let rejected = ztunnel_metric(
            &lab,
            "istio_crl_policy_rejections_total",
            &[("reporter", "destination")],
        );
        if rejected >= 1.0 {
            Ok(())
        } else {
            Err(rejected)
        }
    });
    // Every connection's peer could be matched against the updates: none went untracked.
    let samples = lab.ztunnel_metrics("node1").unwrap();
    let untracked: Vec<f64> = prom::matching(
        &samples,
        "istio_crl_untracked_connections_total",
        &[("reporter", "destination")],
    )
    .map(|s| s.value)
    .collect();
    assert_eq!(untracked, vec![0.0], "exported, and zero");
    let log = lab.logs("ztunnel", Some("node1")).unwrap();
    assert!(log.contains("revoked"), "ztunnel says why: {log}");
    let _ = std::fs::remove_file(&crl_path);
}

both_backends!(
    revoked_workload_certificate_is_refused,
    foreign_trust_domain_is_refused,
    s11_certificate_issuance_and_rotation,
    ztunnel_restart_replays_the_snapshot,
    cni_agent_restart_keeps_traffic_and_rules,
    dns_capture_answers_service_names,
    proxy_ports_are_refused,
    plugin_fails_closed_without_the_agent,
);

use meshcore::env::MapEnv;
use serde_json::json;

use super::*;

#[test]
fn cni_args_parse() {
    let a = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u");
    assert_eq!(a["K8S_POD_NAME"], "p");
    assert_eq!(a["K8S_POD_NAMESPACE"], "ns");
    assert!(parse_cni_args("").is_empty());
    assert!(parse_cni_args("garbage").is_empty());
}

#[test]
fn every_version_parses_with_all_keys() {
    for v in SUPPORTED_VERSIONS {
        let text = json!({
            "cniVersion": v, "name": "k8s-pod-network", "type": "ambient-cni",
            "plugin_log_level": "debug", "cni_agent_run_dir": "/run/x", "ambient_enabled": true,
            "enablement_selectors": [{"podSelector": {"matchLabels": {"a": "b"}}}],
            "exclude_namespaces": ["kube-system", "x"], "pod_namespace": "mesh",
            "native_nftables": true, "enable_ambient_detection_retry": false,
            "pod_source_dir": "/lab/pods", "prevResult": {"cniVersion": v}
        })
        .to_string();
        let (c, _) = parse_conf(text.as_bytes()).unwrap();
        assert_eq!(c.cni_version, *v);
        assert_eq!(c.cni_agent_run_dir, PathBuf::from("/run/x"));
        assert_eq!(c.pod_namespace, "mesh");
        assert!(c.native_nftables);
        assert_eq!(c.pod_source_dir, Some(PathBuf::from("/lab/pods")));
        assert_eq!(c.enablement_selectors.unwrap().len(), 1);
    }
    let (c, _) = parse_conf(br#"{"cniVersion":"0.3.1"}"#).unwrap();
    assert!(c.ambient_enabled);
    assert_eq!(c.cni_agent_run_dir, PathBuf::from("/var/run/istio-cni"));
    assert!(c.enablement_selectors.is_none());
}

#[test]
fn prev_result_ips_become_go_ipnets() {
    let prev = json!({"ips": [
        {"address": "10.1.2.3/24", "gateway": "10.1.2.1", "interface": 0},
        {"version": "6", "address": "fd00::3/64"}
    ]});
    let ips = prev_result_ips(Some(&prev));
    assert_eq!(ips.len(), 2);
    assert_eq!(ips[0].address.ip, "10.1.2.3");
    assert_eq!(ips[0].address.mask, "////AA==");
    assert_eq!(ips[0].interface, Some(0));
    assert_eq!(ips[0].gateway.as_deref(), Some("10.1.2.1"));
    assert_eq!(
        ips[1].address.mask,
        json::base64(&[
            255, 255, 255, 255, 255, 255, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0
        ])
    );
    assert!(prev_result_ips(None).is_empty());
}

#[test]
fn run_is_total_on_odd_input() {
    for stdin in [
        &b""[..],
        b"\xff\xfe",
        b"null",
        b"[]",
        b"{\"cniVersion\": 5}",
    ] {
        let out = run(
            &MapEnv::new()
                .with("CNI_COMMAND", "ADD")
                .with("CNI_NETNS", "/x"),
            stdin,
        );
        assert_eq!(out.exit_code, 1);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["code"], 6, "{v}");
    }
}

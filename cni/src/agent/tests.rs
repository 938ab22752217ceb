use meshcore::env::MapEnv;

use super::config::{Config, PodSourceSpec};
use super::*;

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[test]
fn defaults_and_env_names() {
    let cfg = Config::from_args(&args(&["--node-name", "n1"]), &MapEnv::new()).unwrap();
    assert_eq!(cfg.pod_source, PodSourceSpec::Kube);
    assert_eq!(cfg.run_dir, PathBuf::from("/var/run/istio-cni"));
    assert_eq!(
        cfg.ztunnel_socket,
        PathBuf::from("/var/run/ztunnel/ztunnel.sock")
    );
    assert!(cfg.dns_capture && cfg.ipv6 && cfg.reconcile_pod_rules_on_startup);
    assert!(!cfg.native_nftables);
    assert_eq!(cfg.exclude_namespaces, vec!["kube-system"]);
    assert_eq!(
        cfg.enablement_selectors,
        crate::selectors::default_selectors()
    );
    assert_eq!(cfg.readiness_addr.port(), 8000);
    assert_eq!(cfg.metrics_addr.port(), 15014);
    assert!(cfg.install.is_none());
    assert_eq!(cfg.host_prefix, PathBuf::from("/host"));
    for name in [
        "NODE_NAME",
        "AMBIENT_DNS_CAPTURE",
        "AMBIENT_IPV6",
        "NATIVE_NFTABLES",
        "EXCLUDE_NAMESPACES",
        "AMBIENT_ENABLEMENT_SELECTOR",
        "AMBIENT_RECONCILE_POD_RULES_ON_STARTUP",
    ] {
        assert!(Config::env_names().contains(&name), "{name}");
    }
}

#[test]
fn env_and_flags() {
    let env = MapEnv::new()
        .with("NODE_NAME", "from-env")
        .with("AMBIENT_DNS_CAPTURE", "false")
        .with("NATIVE_NFTABLES", "true")
        .with("EXCLUDE_NAMESPACES", "a, b")
        .with(
            "AMBIENT_ENABLEMENT_SELECTOR",
            "- podSelector: {matchLabels: {x: y}}",
        );
    let cfg = Config::from_args(
        &args(&[
            "--node-name=flag",
            "--pod-source",
            "dir:/tmp/pods",
            "--readiness-addr",
            "127.0.0.1:9000",
            "--install",
            "--cni-bin-dir",
            "/b",
        ]),
        &env,
    )
    .unwrap();
    assert_eq!(cfg.node_name, "flag");
    assert_eq!(cfg.host_prefix, PathBuf::new());
    assert_eq!(cfg.pod_source, PodSourceSpec::Dir("/tmp/pods".into()));
    assert!(!cfg.dns_capture && cfg.native_nftables);
    assert_eq!(cfg.exclude_namespaces, vec!["a", "b"]);
    assert_eq!(cfg.enablement_selectors.len(), 1);
    assert_eq!(cfg.readiness_addr.to_string(), "127.0.0.1:9000");
    let install = cfg.install.unwrap();
    assert_eq!(install.cni_bin_dir, PathBuf::from("/b"));
    assert_eq!(install.cni_conf_dir, PathBuf::from("/host/etc/cni/net.d"));
}

#[test]
fn bad_config_is_rejected() {
    let e = MapEnv::new();
    assert!(
        Config::from_args(&args(&[]), &e).is_err(),
        "kube needs a node name"
    );
    assert!(Config::from_args(&args(&["--pod-source", "nope"]), &e).is_err());
    assert!(Config::from_args(&args(&["--bogus"]), &e).is_err());
    assert!(Config::from_args(&args(&["--node-name"]), &e).is_err());
    let bad = MapEnv::new().with("AMBIENT_IPV6", "maybe");
    assert!(Config::from_args(&args(&["--node-name", "n"]), &bad).is_err());
    let bad = MapEnv::new().with(
        "AMBIENT_ENABLEMENT_SELECTOR",
        "[{podSelector: {matchExpressions: [{key: a, operator: In}]}}]",
    );
    assert!(Config::from_args(&args(&["--node-name", "n"]), &bad).is_err());
}

#[test]
fn cmdadd_body_matches_istio() {
    let body = r#"{"Netns":"/var/run/netns/x","PodName":"p","PodNamespace":"ns","IPs":[{"Interface":0,"Address":{"IP":"10.0.0.5","Mask":"////AA=="},"Gateway":"10.0.0.1"},{"Interface":null,"Address":{"IP":"fd00::5","Mask":""}}]}"#;
    let c: CmdAdd = serde_json::from_str(body).unwrap();
    assert_eq!(c.netns, "/var/run/netns/x");
    assert_eq!(
        c.ips(),
        vec![
            "10.0.0.5".parse::<IpAddr>().unwrap(),
            "fd00::5".parse().unwrap()
        ]
    );
}

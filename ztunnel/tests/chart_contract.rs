//! The Helm chart `charts/ztunnel` and this binary agree: every environment variable the chart
//! sets is one ztunnel reads, the values it sets parse, and the probe/stats ports and the probe
//! path are the ones the binary serves.
//!
//! The chart is rendered by real Helm (`scripts/charts-check.py render`, helm-python-sdk) with
//! the Python interpreter named by `HELM_PYTHON` (the `.venv` of `make setup`; `make test-only`
//! exports it). Without it the test FAILS with instructions: it never passes silently.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meshcore::env::MapEnv;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ztunnel::admin::{self, Readiness};
use ztunnel::config::{
    Config, DEFAULT_READINESS_PORT, DEFAULT_STATS_PORT, Host, ListenAddress, ProxyMode,
};

/// Variables the chart must always set (downward API, control plane, in-pod mode).
const ESSENTIAL: &[&str] = &[
    "XDS_ADDRESS",
    "CA_ADDRESS",
    "POD_NAME",
    "POD_NAMESPACE",
    "NODE_NAME",
    "INSTANCE_IP",
    "SERVICE_ACCOUNT",
    "ISTIO_META_CLUSTER_ID",
    "INPOD_ENABLED",
    "TERMINATION_GRACE_PERIOD_SECONDS",
    "ZTUNNEL_CPU_LIMIT",
    "RUST_LOG",
    "TRUST_DOMAIN",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the ztunnel crate lives in the workspace root")
        .to_path_buf()
}

fn helm_python() -> PathBuf {
    let help = "this test renders charts/ztunnel with real Helm through helm-python-sdk: run \
                `make setup` (creates .venv with scripts/requirements.txt), then \
                `HELM_PYTHON=$PWD/.venv/bin/python cargo nextest run -p ztunnel --test \
                chart_contract` (or `make test-only`, which exports HELM_PYTHON)";
    let python = std::env::var_os("HELM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("HELM_PYTHON is not set; {help}"));
    assert!(
        python.is_file(),
        "HELM_PYTHON={} does not exist; {help}",
        python.display()
    );
    python
}

/// The values files the chart is rendered with: the defaults and each `ci/*.yaml`.
fn cases() -> Vec<Option<PathBuf>> {
    let ci = repo_root().join("charts/ztunnel/ci");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&ci)
        .unwrap_or_else(|e| panic!("{}: {e}", ci.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no values files in {}", ci.display());
    std::iter::once(None)
        .chain(files.into_iter().map(Some))
        .collect()
}

fn label(values: &Option<PathBuf>) -> String {
    values.as_ref().map_or("defaults".into(), |p| {
        format!("ci/{}", p.file_name().unwrap().to_string_lossy())
    })
}

/// Renders the chart and returns the `istio-proxy` container and the pod spec of the DaemonSet.
fn render(values: &Option<PathBuf>) -> (Value, Value) {
    let root = repo_root();
    let mut cmd = Command::new(helm_python());
    cmd.current_dir(&root)
        .arg(root.join("scripts/charts-check.py"))
        .args(["render", "ztunnel"]);
    if let Some(v) = values {
        cmd.arg("--values").arg(v);
    }
    let out = cmd.output().expect("run scripts/charts-check.py render");
    assert!(
        out.status.success(),
        "rendering charts/ztunnel ({}) failed: {}",
        label(values),
        String::from_utf8_lossy(&out.stderr)
    );
    let objects: Vec<Value> = serde_json::from_slice(&out.stdout).expect("rendered JSON");
    let ds = objects
        .into_iter()
        .find(|o| o["kind"] == "DaemonSet" && o["metadata"]["name"] == "ztunnel")
        .expect("the chart renders DaemonSet ztunnel");
    let pod = ds["spec"]["template"]["spec"].clone();
    let container = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .expect("container istio-proxy")
        .clone();
    (container, pod)
}

/// The container's env as name → literal value (`None` for downward-API values).
fn env_of(container: &Value) -> BTreeMap<String, Option<String>> {
    let mut env = BTreeMap::new();
    for e in container["env"].as_array().expect("env list") {
        let name = e["name"].as_str().unwrap().to_owned();
        let value = e["value"].as_str().map(str::to_owned);
        assert!(
            value.is_some() || e.get("valueFrom").is_some(),
            "env {name} has neither value nor valueFrom"
        );
        assert!(
            env.insert(name.clone(), value).is_none(),
            "env {name} set twice"
        );
    }
    env
}

/// What the kubelet substitutes for the downward-API variables on a running pod.
fn kubelet_value(name: &str, container: &Value) -> String {
    let e = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap();
    if let Some(field) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
        return match field {
            "metadata.name" => "ztunnel-x7k2p",
            "metadata.namespace" => "istio-system",
            "spec.nodeName" => "worker-1",
            "status.podIP" => "10.244.1.7",
            "spec.serviceAccountName" => "ztunnel",
            other => panic!("env {name}: unexpected fieldRef {other}"),
        }
        .into();
    }
    if let Some(res) = e["valueFrom"]["resourceFieldRef"]["resource"].as_str() {
        assert_eq!(res, "limits.cpu", "env {name}: unexpected resourceFieldRef");
        return "2".into();
    }
    panic!("env {name}: unsupported valueFrom {}", e["valueFrom"]);
}

/// A host without files under its base directory (no mesh config, token or root cert).
fn host() -> Host {
    Host {
        base_dir: PathBuf::from("/nonexistent"),
        cpus: 8,
    }
}

fn known_to_ztunnel(name: &str) -> bool {
    Config::env_names().contains(&name)
        || Config::env_prefixes()
            .iter()
            .any(|p| name.starts_with(p) && name.len() > p.len())
}

#[test]
fn every_chart_env_var_is_read_by_ztunnel_and_the_essentials_are_set() {
    for values in cases() {
        let (container, _) = render(&values);
        let env = env_of(&container);
        let unknown: Vec<&String> = env.keys().filter(|n| !known_to_ztunnel(n)).collect();
        assert!(
            unknown.is_empty(),
            "{}: the chart sets variables ztunnel does not read (typo, or a missing entry in \
             ztunnel::config::vars::ALL/PREFIXES): {unknown:?}",
            label(&values)
        );
        let missing: Vec<&&str> = ESSENTIAL
            .iter()
            .filter(|n| !env.contains_key(**n))
            .collect();
        assert!(
            missing.is_empty(),
            "{}: essential variables missing: {missing:?}",
            label(&values)
        );
        assert_eq!(env["INPOD_ENABLED"].as_deref(), Some("true"));
        assert_eq!(env["RUST_BACKTRACE"].as_deref(), Some("1"));
    }
}

#[test]
fn the_chart_env_is_a_valid_ztunnel_configuration() {
    for values in cases() {
        let (container, pod) = render(&values);
        let env = env_of(&container);
        let mut vars: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| {
                let v = v.clone().unwrap_or_else(|| kubelet_value(k, &container));
                (k.clone(), v)
            })
            .collect();
        // Set by the kubelet in every pod.
        vars.push(("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into()));
        let config = Config::from_env_on(&MapEnv::from_iter(vars), &host())
            .unwrap_or_else(|e| panic!("{}: ztunnel rejects the chart's env: {e}", label(&values)));
        let case = label(&values);
        assert_eq!(config.proxy_mode, ProxyMode::Shared, "{case}");
        assert!(
            config.self_workload.is_some(),
            "{case}: POD_NAME/POD_NAMESPACE/SERVICE_ACCOUNT give ztunnel its own identity"
        );
        let xds = env["XDS_ADDRESS"].as_deref().unwrap();
        assert_eq!(
            config.xds.address.as_deref(),
            Some(format!("https://{xds}").as_str()),
            "{case}"
        );
        assert_eq!(config.node_name.as_deref(), Some("worker-1"), "{case}");
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert_eq!(
            env["TERMINATION_GRACE_PERIOD_SECONDS"].as_deref(),
            Some(grace.to_string().as_str()),
            "{case}: the drain deadline must follow the pod's grace period"
        );
        assert!(
            config.termination_deadline < Duration::from_secs(grace),
            "{case}: ztunnel must finish draining before the kubelet kills it"
        );
    }
}

#[test]
fn capabilities_are_exactly_what_ztunnel_needs() {
    for values in cases() {
        let (container, pod) = render(&values);
        let sc = &container["securityContext"];
        let caps = |k: &str| -> BTreeSet<&str> {
            sc["capabilities"][k]
                .as_array()
                .unwrap_or_else(|| panic!("capabilities.{k}"))
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect()
        };
        assert_eq!(
            caps("add"),
            BTreeSet::from(["NET_ADMIN", "SYS_ADMIN", "NET_RAW"])
        );
        assert_eq!(caps("drop"), BTreeSet::from(["ALL"]));
        assert_eq!(sc["privileged"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["runAsUser"], 0);
        assert_eq!(sc["runAsGroup"], 1337);
        assert_ne!(
            pod["hostNetwork"], true,
            "ztunnel runs in its own pod netns"
        );
    }
}

#[test]
fn stats_port_is_the_one_ztunnel_serves() {
    let config = Config::from_env_on(&MapEnv::default(), &host()).unwrap();
    assert_eq!(config.stats_addr.port(), DEFAULT_STATS_PORT);
    for values in cases() {
        let (container, _) = render(&values);
        let stats = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "ztunnel-stats")
            .expect("containerPort ztunnel-stats");
        assert_eq!(stats["containerPort"], u64::from(config.stats_addr.port()));
        assert_eq!(stats["protocol"], "TCP");
    }
}

/// The probe's port is the binary's readiness port, and its path answers 200 on the real
/// readiness server once nothing is pending.
#[tokio::test]
async fn readiness_probe_matches_the_readiness_server() {
    let config = Config::from_env_on(&MapEnv::default(), &host()).unwrap();
    assert_eq!(config.readiness_addr.port(), DEFAULT_READINESS_PORT);
    let (container, _) = render(&None);
    let probe = &container["readinessProbe"]["httpGet"];
    assert_eq!(probe["port"], u64::from(config.readiness_addr.port()));
    let path = probe["path"].as_str().expect("probe path");

    let (_trigger, watch) = meshcore::drain::channel();
    let local = ListenAddress::Exact(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0));
    let server = admin::start_readiness(&local, Readiness::new(), watch)
        .await
        .unwrap();
    let mut stream = TcpStream::connect(server.local_addrs()[0]).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
        .await
        .expect("readiness reply in time")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "GET {path} on the readiness server: {reply}"
    );
}

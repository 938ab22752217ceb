//! The Helm chart `charts/cni` and the `cni-agent` binary agree: every environment variable the
//! chart gives the agent (directly or through its ConfigMap) is one the agent reads, the
//! arguments and values it sets parse as a valid agent configuration, the capabilities are
//! exactly Istio's CNI agent's, and the probe and metrics ports are the binary's.
//!
//! The chart is rendered by real Helm (`scripts/charts-check.py render`) with the Python named by
//! `HELM_PYTHON` (`make test-only` exports it); without it the test FAILS with instructions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use cni::agent::Config;
use meshcore::env::MapEnv;
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the cni crate lives in the workspace root")
        .to_path_buf()
}

fn render() -> Vec<Value> {
    let help = "this test renders charts/cni with real Helm: run `make setup`, then \
                `HELM_PYTHON=$PWD/.venv/bin/python cargo nextest run -p cni --test chart_contract`";
    let python = std::env::var_os("HELM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("HELM_PYTHON is not set; {help}"));
    assert!(
        python.is_file(),
        "HELM_PYTHON={} does not exist; {help}",
        python.display()
    );
    let root = repo_root();
    let out = Command::new(python)
        .current_dir(&root)
        .arg(root.join("scripts/charts-check.py"))
        .args(["render", "cni"])
        .output()
        .expect("run scripts/charts-check.py render");
    assert!(
        out.status.success(),
        "rendering charts/cni failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("rendered JSON")
}

struct Rendered {
    container: Value,
    env: BTreeMap<String, Option<String>>,
}

fn agent(objects: &[Value]) -> Rendered {
    let ds = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .expect("the chart renders a DaemonSet");
    let container = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "cni-agent")
        .expect("container cni-agent")
        .clone();
    let mut env = BTreeMap::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let name = from["configMapRef"]["name"].as_str().expect("configMapRef");
        let cm = objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("ConfigMap {name} is rendered"));
        for (k, v) in cm["data"].as_object().expect("ConfigMap data") {
            env.insert(k.clone(), v.as_str().map(str::to_owned));
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_owned();
        env.insert(name, e["value"].as_str().map(str::to_owned));
    }
    Rendered { container, env }
}

#[test]
fn every_variable_the_chart_sets_is_read_by_the_agent() {
    let r = agent(&render());
    let known: BTreeSet<&str> = Config::env_names().iter().copied().collect();
    let unknown: Vec<&String> = r
        .env
        .keys()
        .filter(|k| !known.contains(k.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "the chart sets variables cni-agent never reads: {unknown:?} (known: {known:?})"
    );
    for essential in [
        "NODE_NAME",
        "POD_NAMESPACE",
        "NATIVE_NFTABLES",
        "AMBIENT_DNS_CAPTURE",
    ] {
        assert!(
            r.env.contains_key(essential),
            "the chart does not set {essential}"
        );
    }
}

#[test]
fn the_charts_arguments_and_values_form_a_valid_agent_config() {
    let r = agent(&render());
    let args: Vec<String> = r.container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let mut env = MapEnv::new();
    for (k, v) in &r.env {
        // Downward-API values are filled in by the kubelet.
        let value = v.clone().unwrap_or_else(|| match k.as_str() {
            "NODE_NAME" => "worker-1".into(),
            "POD_NAMESPACE" => "istio-system".into(),
            _ => "ambient-cni-node-abcde".into(),
        });
        env.set(k, value);
    }
    let cfg = Config::from_args(&args, &env)
        .unwrap_or_else(|e| panic!("chart args {args:?} do not parse: {e}"));
    assert_eq!(cfg.node_name, "worker-1");
    let probe = &r.container["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/readyz");
    assert_eq!(
        probe["port"].as_u64().map(|p| p as u16),
        Some(cfg.readiness_addr.port()),
        "readiness probe port vs the agent's readiness address"
    );
    let metrics: Vec<u64> = r.container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    assert!(
        metrics.contains(&u64::from(cfg.metrics_addr.port())),
        "container ports {metrics:?} do not include the metrics port {}",
        cfg.metrics_addr.port()
    );
}

#[test]
fn capabilities_are_exactly_istios_cni_agent_set() {
    let r = agent(&render());
    let caps = &r.container["securityContext"]["capabilities"];
    let add: BTreeSet<&str> = caps["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let want: BTreeSet<&str> = [
        "NET_ADMIN",
        "NET_RAW",
        "SYS_PTRACE",
        "SYS_ADMIN",
        "DAC_OVERRIDE",
    ]
    .into();
    assert_eq!(add, want);
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
}

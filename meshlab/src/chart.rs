//! The environment the Helm charts give ztunnel and the CNI agent, read from the renders that
//! `make charts-check` writes (`target/charts/<chart>.json`, real Helm), so the lab starts the
//! binaries the way the DaemonSets would and every `make test` exercises the charts' settings.
//!
//! Only literal values are taken (and the ConfigMap behind `envFrom`); what the kubelet would
//! fill in (downward API) and what must point into the lab (control-plane address, socket and
//! token paths) is supplied by the lab on top.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where the rendered charts are: `MESHLAB_CHART_DIR`, else `<target>/charts` next to the
/// binaries' directory (`target/debug` ⇒ `target/charts`).
pub fn chart_dir(bin_dir: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("MESHLAB_CHART_DIR") {
        return PathBuf::from(dir);
    }
    bin_dir
        .parent()
        .map_or_else(|| bin_dir.join("charts"), |target| target.join("charts"))
}

/// The literal environment of `container` in the DaemonSet of the rendered `chart`, with its
/// ConfigMap's data first; `None` when the render is not there or not readable.
pub fn env(bin_dir: &Path, chart: &str, container: &str) -> Option<BTreeMap<String, String>> {
    let path = chart_dir(bin_dir).join(format!("{chart}.json"));
    let text = std::fs::read_to_string(&path).ok()?;
    let objects: Vec<Value> = serde_json::from_str(&text).ok()?;
    container_env(&objects, container)
}

/// The same, from already-parsed rendered objects.
pub fn container_env(objects: &[Value], container: &str) -> Option<BTreeMap<String, String>> {
    let ds = objects.iter().find(|o| o["kind"] == "DaemonSet")?;
    let c = ds["spec"]["template"]["spec"]["containers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == container)?;
    let mut env = BTreeMap::new();
    for from in c["envFrom"].as_array().into_iter().flatten() {
        let Some(name) = from["configMapRef"]["name"].as_str() else {
            continue;
        };
        let cm = objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == name)?;
        for (k, v) in cm["data"].as_object().into_iter().flatten() {
            if let Some(v) = v.as_str() {
                env.insert(k.clone(), v.to_string());
            }
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        if let (Some(name), Some(value)) = (e["name"].as_str(), e["value"].as_str()) {
            env.insert(name.to_string(), value.to_string());
        }
    }
    Some(env)
}

/// The chart's environment with the lab's values on top (the lab wins).
pub fn merge(
    chart: Option<BTreeMap<String, String>>,
    lab: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let mut env = chart.unwrap_or_default();
    env.extend(lab);
    env.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_literal_env_and_configmap_and_lets_the_lab_win() {
        let objects: Vec<Value> = serde_json::from_str(
            r#"[
              {"kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"A": "from-cm", "B": "cm"}},
              {"kind": "DaemonSet", "spec": {"template": {"spec": {"containers": [
                {"name": "agent", "envFrom": [{"configMapRef": {"name": "cfg"}}],
                 "env": [{"name": "A", "value": "from-env"},
                         {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                         {"name": "C", "value": "chart"}]}]}}}}
            ]"#,
        )
        .unwrap();
        let env = container_env(&objects, "agent").unwrap();
        assert_eq!(env["A"], "from-env");
        assert_eq!(env["B"], "cm");
        assert!(
            !env.contains_key("NODE_NAME"),
            "downward API is the lab's job"
        );
        let merged = merge(Some(env), vec![("C".into(), "lab".into())]);
        assert!(merged.contains(&("C".to_string(), "lab".to_string())));
        assert!(container_env(&objects, "missing").is_none());
    }
}

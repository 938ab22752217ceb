//! Pods: a netns per pod wired by the CNI chain exactly like kubelet would (bridge + host-local,
//! then `ambient-cni` with the previous result), the pod object's life in `cluster/`, and the
//! built-in apps standing in for container images.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use crate::error::{LabError, Result};
use crate::objects::{self, AppKind, Cluster};
use crate::services;
use crate::state::{Backend, LabState, Layout, NodeState, PodState, save};
use crate::sys;
use crate::topology::{self, POD_BRIDGE};

/// Annotation the lab puts on pods: the path of the pod's netns (for the CNI agent).
pub const NETNS_ANNOTATION: &str = "meshlab.io/netns";

/// The node's CNI chain: `bridge` with host-local IPAM, then (when built) `ambient-cni`.
pub fn conflist(layout: &Layout, node: &NodeState, backend: Backend, ambient: bool) -> Value {
    let gw = node.pod_cidr.replace(".0/24", ".1");
    let mut plugins = vec![json!({
        "type": "bridge",
        "bridge": POD_BRIDGE,
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": node.pod_cidr, "gateway": gw}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": layout.node(&node.name).join("ipam"),
        },
    })];
    if ambient {
        plugins.push(json!({
            "type": "ambient-cni",
            "plugin_log_level": "info",
            "cni_agent_run_dir": topology::agent_run_dir(layout, &node.name),
            "pod_source_dir": layout.cluster(),
            "ambient_enabled": true,
            "enablement_selectors": [
                {"podSelector": {"matchLabels": {"istio.io/dataplane-mode": "ambient"}}},
                {"podSelector": {"matchExpressions": [{"key": "istio.io/dataplane-mode", "operator": "NotIn", "values": ["none"]}]},
                 "namespaceSelector": {"matchLabels": {"istio.io/dataplane-mode": "ambient"}}},
            ],
            "exclude_namespaces": ["kube-system"],
            "pod_namespace": "istio-system",
            "native_nftables": backend == Backend::Nftables,
        }));
    }
    json!({"cniVersion": "1.0.0", "name": "meshlab", "plugins": plugins})
}

/// Writes the node's conflist to `nodes/<node>/cni/10-meshlab.conflist`.
pub fn write_conflist(
    layout: &Layout,
    node: &NodeState,
    backend: Backend,
    ambient: bool,
) -> Result<()> {
    let dir = layout.node(&node.name).join("cni");
    crate::state::mkdir(&dir)?;
    let data =
        serde_json::to_vec_pretty(&conflist(layout, node, backend, ambient)).unwrap_or_default();
    sys::write_atomic(&dir.join("10-meshlab.conflist"), &data)
}

fn plugin_path(bin_dir: &std::path::Path, ty: &str) -> PathBuf {
    let ours = bin_dir.join(ty);
    if ours.is_file() {
        ours
    } else {
        PathBuf::from(sys::CNI_PLUGIN_DIR).join(ty)
    }
}

/// Runs one CNI command for a pod through the chain, from inside the node netns.
fn cni_chain(
    layout: &Layout,
    st: &LabState,
    pod: &PodState,
    command: &str,
) -> Result<Option<Value>> {
    let node = st
        .nodes
        .iter()
        .find(|n| n.name == pod.node)
        .ok_or_else(|| LabError::Invalid(format!("unknown node {}", pod.node)))?;
    let list = conflist(layout, node, st.backend, pod.ambient_cni);
    let mut plugins: Vec<Value> = list["plugins"].as_array().cloned().unwrap_or_default();
    if command == "DEL" {
        plugins.reverse();
    }
    let cni_path = format!("{}:{}", sys::CNI_PLUGIN_DIR, st.bin_dir.display());
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        pod.namespace, pod.name, pod.container_id, pod.uid
    );
    let mut prev: Option<Value> = None;
    for mut conf in plugins {
        let ty = conf["type"].as_str().unwrap_or_default().to_string();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        if let Some(p) = &prev {
            conf["prevResult"] = p.clone();
        }
        let mut cmd = sys::in_netns(&node.netns, plugin_path(&st.bin_dir, &ty));
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_NETNS", format!("/var/run/netns/{}", pod.netns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &cni_path)
            .env("CNI_ARGS", &args);
        let input = serde_json::to_vec(&conf).unwrap_or_default();
        let out = sys::output_input(&mut cmd, Some(&input))?;
        if !out.status.success() {
            let msg = format!(
                "CNI {command} of {}/{} failed in plugin {ty}: {}{}",
                pod.namespace,
                pod.name,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            if command == "DEL" {
                tracing::warn!("{msg}");
                continue;
            }
            return Err(LabError::Invalid(msg));
        }
        if command == "ADD" {
            prev = serde_json::from_slice(&out.stdout).ok();
        }
    }
    Ok(prev)
}

/// Validates the containers of a pod spec (images the lab can run).
pub fn check_images(obj: &objects::Object, spec: &Value) -> Result<Vec<AppKind>> {
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if containers.is_empty() {
        return Err(obj.error("the pod template has no containers"));
    }
    containers
        .iter()
        .map(|c| {
            objects::app_for(c).ok_or_else(|| {
                obj.error(format!(
                    "unsupported image {:?}; supported: {}",
                    c.get("image").and_then(Value::as_str).unwrap_or(""),
                    objects::SUPPORTED_IMAGES
                ))
            })
        })
        .collect()
}

/// Creates a pod: netns, name files, pod object, CNI ADD, apps, Ready status.
pub fn create(
    layout: &Layout,
    cluster: &Cluster,
    st: &mut LabState,
    mut pod: Value,
    deployment: Option<(String, String)>,
) -> Result<()> {
    let ns = objects::namespace(&pod).to_string();
    let name = objects::name(&pod).to_string();
    let wanted = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .map(str::to_string);
    let node = match wanted.and_then(|w| st.nodes.iter().find(|n| n.name == w).cloned()) {
        Some(n) => n,
        None => {
            let n = st.nodes[st.next_node % st.nodes.len()].clone();
            st.next_node += 1;
            n
        }
    };
    let uid = {
        let b = sys::random_bytes::<16>();
        let h = sys::hex(&b);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    };
    let netns = topology::pod_netns(&node.name, &ns, &name);
    let state = PodState {
        namespace: ns.clone(),
        name: name.clone(),
        uid: uid.clone(),
        node: node.name.clone(),
        netns: netns.clone(),
        container_id: sys::hex(&sys::random_bytes::<32>()),
        ip: None,
        deployment: deployment.as_ref().map(|d| d.0.clone()),
        template_hash: deployment.as_ref().map(|d| d.1.clone()),
        apps: Vec::new(),
        ambient_cni: st.ambient_cni,
    };
    let key = format!("{ns}/{name}");
    st.netns.push(netns.clone());
    st.etc_netns.push(services::etc_dir(&netns));
    st.pods.insert(key.clone(), state.clone());
    save(layout, st)?;
    sys::ip(&["netns", "add", &netns])?;
    sys::ip(&["-n", &netns, "link", "set", "lo", "up"])?;
    services::write_pod_files(&state, &services::views(cluster))?;

    // The API object first, as kubelet sees the pod before it creates the sandbox.
    pod["metadata"]["uid"] = json!(uid);
    if !pod["metadata"]["annotations"].is_object() {
        pod["metadata"]["annotations"] = json!({});
    }
    pod["metadata"]["annotations"][NETNS_ANNOTATION] = json!(format!("/var/run/netns/{netns}"));
    pod["spec"]["nodeName"] = json!(node.name);
    if pod.pointer("/spec/serviceAccountName").is_none() {
        pod["spec"]["serviceAccountName"] = json!("default");
    }
    pod["status"] = json!({"phase": "Pending", "hostIP": node.underlay_ip});
    cluster.put(&pod)?;

    if !st.ambient_cni {
        tracing::info!(pod = %key, "ambient-cni not built: running only the bridge plugin");
    }
    start_sandbox(layout, cluster, st, &key)
}

/// Runs the CNI chain (ADD) for a recorded pod, starts its apps and marks it Running. When
/// ADD fails, like kubelet it runs DEL, leaves the pod Pending with a `FailedCreatePodSandBox`
/// condition, and returns the error; applying the pod (or its Deployment) again retries.
pub fn start_sandbox(
    layout: &Layout,
    cluster: &Cluster,
    st: &mut LabState,
    key: &str,
) -> Result<()> {
    let state = st
        .pods
        .get(key)
        .cloned()
        .ok_or_else(|| LabError::Invalid(format!("no pod {key}")))?;
    let node_ip = st
        .nodes
        .iter()
        .find(|n| n.name == state.node)
        .map(|n| n.underlay_ip.clone())
        .unwrap_or_default();
    let added = cni_chain(layout, st, &state, "ADD").and_then(|result| {
        result
            .as_ref()
            .and_then(|r| r.pointer("/ips/0/address"))
            .and_then(Value::as_str)
            .and_then(|a| a.split('/').next())
            .map(str::to_string)
            .ok_or_else(|| {
                LabError::Invalid(format!("CNI ADD of {key} returned no address: {result:?}"))
            })
    });
    let ip = match added {
        Ok(ip) => ip,
        Err(e) => {
            if let Err(del) = cni_chain(layout, st, &state, "DEL") {
                tracing::warn!(pod = %key, error = %del, "CNI DEL after a failed ADD failed");
            }
            if let Some(mut current) = cluster.get("Pod", &state.namespace, &state.name) {
                current["status"] = json!({
                    "phase": "Pending",
                    "hostIP": node_ip,
                    "conditions": [
                        {"type": "PodScheduled", "status": "True"},
                        {"type": "ContainersReady", "status": "False",
                         "reason": "FailedCreatePodSandBox", "message": e.to_string()},
                        {"type": "Ready", "status": "False"},
                    ],
                });
                cluster.put(&current)?;
            }
            return Err(e);
        }
    };
    if let Some(p) = st.pods.get_mut(key) {
        p.ip = Some(ip.clone());
    }
    save(layout, st)?;
    let state = st.pods[key].clone();
    services::write_pod_files(&state, &services::views(cluster))?;
    let pod = cluster
        .get("Pod", &state.namespace, &state.name)
        .ok_or_else(|| LabError::Invalid(format!("pod {key} vanished")))?;
    start_apps(layout, st, key, &pod)?;

    // Re-read: the CNI agent may have annotated the pod during ADD.
    let mut current = cluster
        .get("Pod", &state.namespace, &state.name)
        .unwrap_or(pod);
    current["status"] = json!({
        "phase": "Running",
        "hostIP": node_ip,
        "hostIPs": [{"ip": node_ip}],
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": "True"},
        ],
    });
    cluster.put(&current)
}

fn start_apps(layout: &Layout, st: &mut LabState, key: &str, pod: &Value) -> Result<()> {
    let p = st.pods[key].clone();
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let version = objects::labels(pod)
        .get("version")
        .cloned()
        .unwrap_or_default();
    for (i, c) in containers.iter().enumerate() {
        let (app, port) = match objects::app_for(c) {
            Some(AppKind::Httpbin(port)) => ("httpbin", port),
            Some(AppKind::Echo(port)) => ("echo", port),
            _ => continue,
        };
        let meshlab = topology::binary(&st.bin_dir, "meshlab", "meshlab")?;
        let ready = layout.run().join(format!("{}-{i}.ready", p.netns));
        let _ = std::fs::remove_file(&ready);
        let mut cmd = sys::in_netns(&p.netns, meshlab);
        cmd.args(["app", app, "--port", &port.to_string()])
            .env("POD_NAME", &p.name)
            .env("POD_NAMESPACE", &p.namespace)
            .env("NODE_NAME", &p.node)
            .env("VERSION", &version)
            .env("MESHLAB_READY_FILE", &ready);
        for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
            if let (Some(k), Some(v)) = (
                e.get("name").and_then(Value::as_str),
                e.get("value").and_then(Value::as_str),
            ) {
                cmd.env(k, v);
            }
        }
        let name = format!("app-{}-{}-{i}", p.namespace, p.name);
        let log = layout.log(&format!("app-{}-{}", p.namespace, p.name), None);
        let rec = sys::spawn_detached(&name, &cmd, &log, &layout.pids())?;
        st.processes.insert(name.clone(), rec.clone());
        if let Some(ps) = st.pods.get_mut(key) {
            ps.apps.push(name);
        }
        save(layout, st)?;
        topology::wait_for(
            &format!("app {app} in pod {key}"),
            15,
            &log,
            Some(&rec),
            || ready.exists(),
        )?;
    }
    Ok(())
}

/// Deletes a pod: marks it terminating, stops its apps, CNI DEL, removes netns and files.
pub fn delete(layout: &Layout, cluster: &Cluster, st: &mut LabState, key: &str) -> Result<()> {
    let Some(p) = st.pods.get(key).cloned() else {
        return Ok(());
    };
    if let Some(mut obj) = cluster.get("Pod", &p.namespace, &p.name) {
        obj["metadata"]["deletionTimestamp"] = json!("1970-01-01T00:00:00Z");
        cluster.put(&obj)?;
    }
    for app in &p.apps {
        if let Some(rec) = st.processes.remove(app) {
            sys::stop(&rec, std::time::Duration::from_secs(2));
            let _ = std::fs::remove_file(layout.pids().join(format!("{app}.pid")));
        }
    }
    if p.ip.is_some() {
        let _ = cni_chain(layout, st, &p, "DEL");
    }
    sys::kill_netns_pids(&p.netns);
    let _ = sys::ip(&["netns", "del", &p.netns]);
    let _ = std::fs::remove_dir_all(services::etc_dir(&p.netns));
    cluster.remove("Pod", &p.namespace, &p.name);
    st.pods.remove(key);
    st.netns.retain(|n| n != &p.netns);
    st.etc_netns.retain(|d| d != &services::etc_dir(&p.netns));
    save(layout, st)
}

/// Runs a command inside a pod's netns (with its hosts/resolv.conf), whatever its exit status.
pub fn exec(p: &PodState, argv: &[&str]) -> Result<std::process::Output> {
    let (prog, rest) = argv
        .split_first()
        .ok_or_else(|| LabError::Invalid("exec needs a command".into()))?;
    let mut cmd: Command = sys::in_netns(&p.netns, prog);
    cmd.args(rest)
        .env("POD_NAME", &p.name)
        .env("POD_NAMESPACE", &p.namespace);
    sys::output_input(&mut cmd, None)
}

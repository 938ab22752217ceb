//! The [`Lab`] handle: up, apply, delete, label, exec, inspect, down.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use crate::error::{LabError, Result, io_err};
use crate::objects::{self, Cluster, Object};
use crate::pods;
use crate::services::{self, ServiceView};
use crate::state::{self, Backend, LabState, Layout, mkdir, save};
use crate::sys::{self, ProcRecord};
use crate::topology::{self, BRIDGE, PREFIX};

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Number of nodes (1–50).
    pub nodes: usize,
    /// Redirection backend of the CNI agent.
    pub backend: Backend,
    /// State directory.
    pub state_dir: PathBuf,
    /// Directory of `controlplane`, `ztunnel`, `cni-agent`, `ambient-cni`, `meshlab`.
    pub bin_dir: PathBuf,
    /// Extra environment for every ztunnel, on top of the chart's and the lab's (for example
    /// `SECRET_TTL=20s` to watch certificate rotation). Kept for restarts.
    pub ztunnel_env: Vec<(String, String)>,
}

impl Default for LabConfig {
    fn default() -> Self {
        Self {
            nodes: 2,
            backend: Backend::default(),
            state_dir: PathBuf::from(state::DEFAULT_STATE_DIR),
            bin_dir: topology::default_bin_dir(),
            ztunnel_env: Vec::new(),
        }
    }
}

/// A running lab (a handle on its state directory; dropping it leaves the lab running).
#[derive(Debug, Clone)]
pub struct Lab {
    layout: Layout,
}

/// A node as `get nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeInfo {
    /// Name.
    pub name: String,
    /// Netns.
    pub netns: String,
    /// Underlay address.
    pub ip: String,
    /// Pod CIDR.
    pub pod_cidr: String,
    /// Whether its ztunnel process runs.
    pub ztunnel: bool,
    /// Whether its CNI agent runs.
    pub cni_agent: bool,
}

/// A pod as `get pods` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Node.
    pub node: String,
    /// Pod IP.
    pub ip: Option<String>,
    /// status.phase.
    pub phase: String,
    /// `ambient.istio.io/redirection` annotation (written by the CNI agent).
    pub enrolment: Option<String>,
    /// Netns.
    pub netns: String,
}

/// What `down` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DownReport {
    /// Processes stopped.
    pub processes: usize,
    /// Network namespaces deleted.
    pub netns: usize,
    /// Root-netns links deleted.
    pub links: usize,
    /// Mounts removed.
    pub mounts: usize,
}

const DEFAULT_NAMESPACES: &[&str] = &["default", "kube-system", "istio-system"];

impl Lab {
    /// Builds a lab: checks, underlay, nodes, control plane, per-node agents. On failure
    /// everything made so far is removed and the error says why.
    pub fn up(cfg: LabConfig) -> Result<Lab> {
        sys::require_root()?;
        sys::require_tools(cfg.backend == Backend::Iptables)?;
        if cfg.nodes == 0 || cfg.nodes > 50 {
            return Err(LabError::Invalid(format!(
                "--nodes must be 1..=50, not {}",
                cfg.nodes
            )));
        }
        topology::binary(&cfg.bin_dir, "controlplane", "controlplane")?;
        topology::binary(&cfg.bin_dir, "ztunnel", "ztunnel")?;
        topology::binary(&cfg.bin_dir, "meshlab", "meshlab")?;
        let layout = Layout::new(&cfg.state_dir);
        topology::check_free(&layout)?;
        for d in [
            layout.root.clone(),
            layout.cluster(),
            layout.pids(),
            layout.logs(),
            layout.run(),
        ] {
            mkdir(&d)?;
        }
        std::fs::write(topology::ACTIVE_MARKER, layout.root.display().to_string())
            .map_err(io_err(topology::ACTIVE_MARKER))?;
        let mut st = LabState {
            bin_dir: cfg.bin_dir.clone(),
            backend: cfg.backend,
            cni_agent: topology::cni_agent_usable(&cfg.bin_dir),
            ambient_cni: topology::ambient_cni_usable(&cfg.bin_dir),
            ztunnel_env: cfg.ztunnel_env.clone(),
            ..LabState::default()
        };
        save(&layout, &st)?;
        let lab = Lab { layout };
        if let Err(e) = lab.build(&mut st, cfg.nodes) {
            let _ = Self::down_from_state(&lab.layout.root);
            return Err(e);
        }
        Ok(lab)
    }

    fn build(&self, st: &mut LabState, n: usize) -> Result<()> {
        let _lock = state::lock(&self.layout)?;
        let layout = &self.layout;
        let cluster = self.cluster();
        for ns in DEFAULT_NAMESPACES {
            cluster.put(&json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
            }))?;
        }
        topology::create_bridge(layout, st)?;
        let nodes: Vec<_> = (0..n).map(topology::node_state).collect();
        for node in &nodes {
            topology::create_node(layout, st, node, &nodes)?;
            pods::write_conflist(layout, node, st.backend, st.ambient_cni)?;
        }
        topology::start_controlplane(layout, st)?;
        topology::start_cluster_dns(layout, st)?;
        for node in &nodes {
            topology::start_node_components(layout, st, node)?;
        }
        // Without a CNI agent ztunnel never becomes ready (no ZDS snapshot): nothing to wait for.
        if st.cni_agent {
            for node in &nodes {
                topology::wait_ztunnel_ready(layout, node, 60)?;
            }
        }
        st.ready = true;
        save(layout, st)
    }

    /// Attaches to the lab in `state_dir`.
    pub fn open(state_dir: impl AsRef<Path>) -> Result<Lab> {
        let layout = Layout::new(state_dir.as_ref());
        state::load(&layout)?;
        Ok(Lab { layout })
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.layout.root
    }

    /// The state directory layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn cluster(&self) -> Cluster {
        Cluster::new(self.layout.cluster())
    }

    /// Applies multi-document YAML.
    pub fn apply_yaml(&self, yaml: &str) -> Result<()> {
        self.apply_objects(objects::parse(yaml, "<inline>")?)
    }

    /// Applies a file or every YAML file of a directory.
    pub fn apply_path(&self, path: impl AsRef<Path>) -> Result<()> {
        self.apply_objects(objects::read_path(path.as_ref())?)
    }

    /// Deletes the objects named in multi-document YAML.
    pub fn delete_yaml(&self, yaml: &str) -> Result<()> {
        self.delete_objects(objects::parse(yaml, "<inline>")?)
    }

    /// Deletes the objects named in a file or directory.
    pub fn delete_path(&self, path: impl AsRef<Path>) -> Result<()> {
        self.delete_objects(objects::read_path(path.as_ref())?)
    }

    /// Deletes one object by kind, namespace and name.
    pub fn delete(&self, kind: &str, ns: &str, name: &str) -> Result<()> {
        let ns = if objects::cluster_scoped(kind) {
            ""
        } else {
            ns
        };
        let mut v = json!({"kind": kind, "metadata": {"name": name}});
        if !ns.is_empty() {
            v["metadata"]["namespace"] = json!(ns);
        }
        self.delete_objects(vec![Object {
            value: v,
            source: "<delete>".into(),
        }])
    }

    fn apply_objects(&self, mut objs: Vec<Object>) -> Result<()> {
        objs.sort_by_key(|o| objects::apply_rank(o.kind()));
        let _lock = state::lock(&self.layout)?;
        let mut st = state::load(&self.layout)?;
        let cluster = self.cluster();
        // Validate everything before changing anything.
        for o in &objs {
            let ns = o.namespace();
            if !ns.is_empty()
                && cluster.get("Namespace", "", ns).is_none()
                && !objs
                    .iter()
                    .any(|x| x.kind() == "Namespace" && x.name() == ns)
            {
                return Err(o.error(format!(
                    "namespace {ns:?} does not exist (apply a Namespace first)"
                )));
            }
            match o.kind() {
                "Deployment" => {
                    let spec = o
                        .value
                        .pointer("/spec/template/spec")
                        .cloned()
                        .unwrap_or_default();
                    pods::check_images(o, &spec)?;
                }
                "Pod" => {
                    pods::check_images(o, o.value.get("spec").unwrap_or(&Value::Null))?;
                }
                _ => {}
            }
        }
        let result = objs
            .iter()
            .try_for_each(|o| self.apply_one(&cluster, &mut st, o));
        save(&self.layout, &st)?;
        result?;
        services::sync(&self.layout, &cluster, &st)
    }

    fn apply_one(&self, cluster: &Cluster, st: &mut LabState, o: &Object) -> Result<()> {
        let mut v = o.value.clone();
        match o.kind() {
            "Service" => {
                let ip = v
                    .pointer("/spec/clusterIP")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if ip.is_none() {
                    let existing = cluster
                        .get("Service", o.namespace(), o.name())
                        .and_then(|s| {
                            s.pointer("/spec/clusterIP")
                                .and_then(Value::as_str)
                                .map(str::to_string)
                        });
                    let ip = match existing {
                        Some(ip) => ip,
                        None => services::allocate_vip(cluster)?,
                    };
                    v["spec"]["clusterIP"] = json!(ip);
                    v["spec"]["clusterIPs"] = json!([ip]);
                }
                if v.pointer("/spec/type").is_none() {
                    v["spec"]["type"] = json!("ClusterIP");
                }
                cluster.put(&v)
            }
            "Deployment" => {
                cluster.put(&v)?;
                self.reconcile_deployment(cluster, st, &v)
            }
            "Pod" => {
                let key = format!("{}/{}", o.namespace(), o.name());
                if st.pods.contains_key(&key) {
                    // Running pods only take new labels and annotations.
                    let mut cur = cluster
                        .get("Pod", o.namespace(), o.name())
                        .unwrap_or(v.clone());
                    cur["metadata"]["labels"] =
                        v.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
                    cluster.put(&cur)?;
                    // A pod whose sandbox failed is retried, as kubelet would.
                    if st.pods[&key].ip.is_none() {
                        pods::start_sandbox(&self.layout, cluster, st, &key)
                            .map_err(|e| o.error(e.to_string()))?;
                    }
                    Ok(())
                } else {
                    pods::create(&self.layout, cluster, st, v, None)
                        .map_err(|e| o.error(e.to_string()))
                }
            }
            _ => cluster.put(&v),
        }
    }

    fn reconcile_deployment(&self, cluster: &Cluster, st: &mut LabState, d: &Value) -> Result<()> {
        let name = objects::name(d).to_string();
        let ns = objects::namespace(d).to_string();
        let hash = objects::template_hash(d);
        let owned = |st: &LabState| -> Vec<String> {
            st.pods
                .iter()
                .filter(|(_, p)| {
                    p.namespace == ns && p.deployment.as_deref() == Some(name.as_str())
                })
                .map(|(k, _)| k.clone())
                .collect()
        };
        for key in owned(st) {
            if st.pods[&key].template_hash.as_deref() != Some(hash.as_str()) {
                pods::delete(&self.layout, cluster, st, &key)?;
            }
        }
        // Pods whose sandbox failed are retried, as kubelet would.
        for key in owned(st) {
            if st.pods[&key].ip.is_none() {
                pods::start_sandbox(&self.layout, cluster, st, &key).map_err(|e| {
                    LabError::Apply {
                        source_name: "<deployment>".into(),
                        object: format!("Deployment {ns}/{name}"),
                        reason: e.to_string(),
                    }
                })?;
            }
        }
        let want = objects::replicas(d);
        let mut have = owned(st);
        while have.len() > want {
            if let Some(k) = have.pop() {
                pods::delete(&self.layout, cluster, st, &k)?;
            }
        }
        for _ in have.len()..want {
            let suffix = objects::safe_string(u64::from_le_bytes(sys::random_bytes::<8>()), 5);
            let pod = objects::pod_from_deployment(d, &hash, &suffix);
            let desc = format!("Deployment {ns}/{name}");
            pods::create(
                &self.layout,
                cluster,
                st,
                pod,
                Some((name.clone(), hash.clone())),
            )
            .map_err(|e| LabError::Apply {
                source_name: "<deployment>".into(),
                object: desc,
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    fn delete_objects(&self, objs: Vec<Object>) -> Result<()> {
        let _lock = state::lock(&self.layout)?;
        let mut st = state::load(&self.layout)?;
        let cluster = self.cluster();
        let mut objs = objs;
        objs.sort_by_key(|o| std::cmp::Reverse(objects::apply_rank(o.kind())));
        let mut result = Ok(());
        for o in &objs {
            let (ns, name) = (o.namespace().to_string(), o.name().to_string());
            let r = match o.kind() {
                "Namespace" => {
                    let keys: Vec<String> = st
                        .pods
                        .iter()
                        .filter(|(_, p)| p.namespace == name)
                        .map(|(k, _)| k.clone())
                        .collect();
                    let r = keys
                        .iter()
                        .try_for_each(|k| pods::delete(&self.layout, &cluster, &mut st, k));
                    for v in cluster.all() {
                        if objects::namespace(&v) == name {
                            cluster.remove(objects::kind(&v), &name, objects::name(&v));
                        }
                    }
                    cluster.remove("Namespace", "", &name);
                    r
                }
                "Deployment" => {
                    let keys: Vec<String> = st
                        .pods
                        .iter()
                        .filter(|(_, p)| {
                            p.namespace == ns && p.deployment.as_deref() == Some(name.as_str())
                        })
                        .map(|(k, _)| k.clone())
                        .collect();
                    cluster.remove("Deployment", &ns, &name);
                    keys.iter()
                        .try_for_each(|k| pods::delete(&self.layout, &cluster, &mut st, k))
                }
                "Pod" => pods::delete(&self.layout, &cluster, &mut st, &format!("{ns}/{name}")),
                k => {
                    cluster.remove(k, &ns, &name);
                    Ok(())
                }
            };
            if result.is_ok() {
                result = r;
            }
        }
        save(&self.layout, &st)?;
        result?;
        services::sync(&self.layout, &cluster, &st)
    }

    /// Sets (`k=v`) or removes (`k-`) a label on an object (`namespace`/`ns`, `pod`, `service`...).
    pub fn label(&self, kind: &str, ns: &str, name: &str, edit: &str) -> Result<()> {
        let kind = match kind.to_ascii_lowercase().as_str() {
            "ns" | "namespace" => "Namespace",
            "pod" | "po" => "Pod",
            "svc" | "service" => "Service",
            "deployment" | "deploy" => "Deployment",
            "serviceaccount" | "sa" => "ServiceAccount",
            _ => kind,
        }
        .to_string();
        let _lock = state::lock(&self.layout)?;
        let st = state::load(&self.layout)?;
        let cluster = self.cluster();
        let ns = if objects::cluster_scoped(&kind) {
            ""
        } else {
            ns
        };
        let name = if kind == "Pod" {
            self.resolve_pod(&st, ns, name)?.name
        } else {
            name.to_string()
        };
        let mut v = cluster
            .get(&kind, ns, &name)
            .ok_or_else(|| LabError::Invalid(format!("{kind} {ns}/{name} not found")))?;
        objects::edit_label(&mut v, edit)?;
        cluster.put(&v)?;
        services::sync(&self.layout, &cluster, &st)
    }

    fn resolve_pod(&self, st: &LabState, ns: &str, name: &str) -> Result<state::PodState> {
        let ns = if ns.is_empty() { "default" } else { ns };
        if let Some(p) = st.pods.get(&format!("{ns}/{name}")) {
            return Ok(p.clone());
        }
        let deploy = name
            .strip_prefix("deploy/")
            .or_else(|| name.strip_prefix("deployment/"))
            .unwrap_or(name);
        st.pods
            .values()
            .find(|p| p.namespace == ns && p.deployment.as_deref() == Some(deploy))
            .cloned()
            .ok_or_else(|| LabError::PodNotFound {
                namespace: ns.into(),
                name: name.into(),
            })
    }

    /// Runs a command in a pod's netns (name, or a Deployment name / `deploy/<name>` for its
    /// first pod), with the pod's hosts and resolv.conf. Returns the output whatever the status.
    pub fn exec(&self, pod: &str, ns: &str, argv: &[&str]) -> Result<Output> {
        let st = state::load(&self.layout)?;
        let p = self.resolve_pod(&st, ns, pod)?;
        pods::exec(&p, argv)
    }

    /// Pods, sorted by namespace and name.
    pub fn pods(&self) -> Result<Vec<PodInfo>> {
        let st = state::load(&self.layout)?;
        let cluster = self.cluster();
        Ok(st
            .pods
            .values()
            .map(|p| {
                let obj = cluster
                    .get("Pod", &p.namespace, &p.name)
                    .unwrap_or_default();
                PodInfo {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    node: p.node.clone(),
                    ip: p.ip.clone(),
                    phase: obj
                        .pointer("/status/phase")
                        .and_then(Value::as_str)
                        .unwrap_or("Unknown")
                        .into(),
                    enrolment: obj
                        .pointer("/metadata/annotations")
                        .and_then(|a| a.get("ambient.istio.io/redirection"))
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    netns: p.netns.clone(),
                }
            })
            .collect())
    }

    /// Services with their ClusterIPs and ready endpoints.
    pub fn services(&self) -> Result<Vec<ServiceView>> {
        state::load(&self.layout)?;
        Ok(services::views(&self.cluster()))
    }

    /// Nodes.
    pub fn nodes(&self) -> Result<Vec<NodeInfo>> {
        let st = state::load(&self.layout)?;
        let alive = |n: String| st.processes.get(&n).is_some_and(ProcRecord::alive);
        Ok(st
            .nodes
            .iter()
            .map(|n| NodeInfo {
                name: n.name.clone(),
                netns: n.netns.clone(),
                ip: n.underlay_ip.clone(),
                pod_cidr: n.pod_cidr.clone(),
                ztunnel: alive(format!("ztunnel-{}", n.name)),
                cni_agent: alive(format!("cni-agent-{}", n.name)),
            })
            .collect())
    }

    /// Whether the CNI agent and plugin are real (pods can be enrolled).
    pub fn enrolment_available(&self) -> Result<bool> {
        let st = state::load(&self.layout)?;
        Ok(st.cni_agent && st.ambient_cni)
    }

    /// The log of a component (`ztunnel`, `cni-agent` need a node; `controlplane` none).
    pub fn logs(&self, component: &str, node: Option<&str>) -> Result<String> {
        let path = if component == "controlplane" {
            self.layout.log(component, None)
        } else {
            self.layout.log(component, node)
        };
        std::fs::read_to_string(&path).map_err(io_err(path))
    }

    /// `controlplane status` (connected proxies and their sync state).
    pub fn status(&self) -> Result<String> {
        let st = state::load(&self.layout)?;
        let cp = topology::binary(&st.bin_dir, "controlplane", "controlplane")?;
        sys::run(
            Command::new(cp)
                .arg("status")
                .arg("--state-dir")
                .arg(self.layout.controlplane()),
        )
    }

    /// Runs a command inside a node's netns.
    pub fn node_exec(&self, node: &str, argv: &[&str]) -> Result<Output> {
        let st = state::load(&self.layout)?;
        let n = st
            .nodes
            .iter()
            .find(|n| n.name == node)
            .ok_or_else(|| LabError::Invalid(format!("no node {node}")))?;
        let (prog, rest) = argv
            .split_first()
            .ok_or_else(|| LabError::Invalid("exec needs a command".into()))?;
        sys::output_input(sys::in_netns(&n.netns, prog).args(rest), None)
    }

    /// The pid of a running lab process: `controlplane`, or `ztunnel`/`cni-agent` with a node.
    pub fn pid(&self, component: &str, node: Option<&str>) -> Result<Option<i32>> {
        let st = state::load(&self.layout)?;
        let name = match node {
            Some(n) => format!("{component}-{n}"),
            None => component.to_string(),
        };
        Ok(st.processes.get(&name).filter(|r| r.alive()).map(|r| r.pid))
    }

    /// Stops a node's `ztunnel` or `cni-agent` (SIGTERM, then SIGKILL after `grace`) and
    /// leaves it stopped; [`Lab::restart`] starts it again.
    pub fn stop(&self, component: &str, node: &str, grace: Duration) -> Result<()> {
        let _lock = state::lock(&self.layout)?;
        let st = state::load(&self.layout)?;
        if !matches!(component, "ztunnel" | "cni-agent") {
            return Err(LabError::Invalid(format!(
                "cannot stop {component:?}: use ztunnel or cni-agent"
            )));
        }
        let rec = st
            .processes
            .get(&format!("{component}-{node}"))
            .ok_or_else(|| LabError::Invalid(format!("no {component} on node {node:?}")))?;
        sys::stop(rec, grace);
        Ok(())
    }

    /// Stops a node's `ztunnel` or `cni-agent` (SIGTERM, then SIGKILL after `grace`) and starts
    /// it again the way `up` did; waits until ztunnel is ready again (it needs the CNI agent's
    /// snapshot for that).
    pub fn restart(&self, component: &str, node: &str, grace: Duration) -> Result<()> {
        let _lock = state::lock(&self.layout)?;
        let mut st = state::load(&self.layout)?;
        let n = st
            .nodes
            .iter()
            .find(|n| n.name == node)
            .cloned()
            .ok_or_else(|| LabError::Invalid(format!("no node {node}")))?;
        let key = format!("{component}-{node}");
        if let Some(rec) = st.processes.get(&key) {
            sys::stop(rec, grace);
        }
        match component {
            "ztunnel" => topology::start_ztunnel(&self.layout, &mut st, &n)?,
            "cni-agent" => topology::start_cni_agent(&self.layout, &mut st, &n)?,
            other => {
                return Err(LabError::Invalid(format!(
                    "cannot restart {other:?}: use ztunnel or cni-agent"
                )));
            }
        }
        if st.cni_agent {
            topology::wait_ztunnel_ready(&self.layout, &n, 60)?;
        }
        Ok(())
    }

    /// GETs `http://127.0.0.1:<port><path>` inside a node's netns (ztunnel's admin 15000,
    /// metrics 15020, readiness 15021) and returns the body; an error names the status.
    pub fn node_http(&self, node: &str, port: u16, path: &str) -> Result<String> {
        let url = format!("http://127.0.0.1:{port}{path}");
        let out = self.node_exec(node, &["curl", "-sS", "-f", "-m", "5", &url])?;
        if !out.status.success() {
            return Err(LabError::Invalid(format!(
                "GET {url} on {node}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The samples of a node's ztunnel `/metrics` (port 15020).
    pub fn ztunnel_metrics(&self, node: &str) -> Result<Vec<crate::prom::Sample>> {
        Ok(crate::prom::parse(
            &self.node_http(node, 15020, "/metrics")?,
        ))
    }

    /// Zeroes the node-to-node traffic counters of every node (see [`crate::wire`]).
    pub fn wire_reset(&self) -> Result<()> {
        let st = state::load(&self.layout)?;
        st.nodes
            .iter()
            .try_for_each(|n| crate::wire::reset(&n.netns))
    }

    /// Node-to-node pod traffic since the last [`Lab::wire_reset`], summed over all nodes.
    pub fn wire_counts(&self) -> Result<crate::WireCounts> {
        let st = state::load(&self.layout)?;
        let mut total = crate::WireCounts::default();
        for n in &st.nodes {
            total.add(&crate::wire::read(&n.netns)?);
        }
        Ok(total)
    }

    /// Tears the lab down.
    pub fn down(self) -> Result<DownReport> {
        Self::down_from_state(&self.layout.root)
    }

    /// Removes everything a lab in `state_dir` made, even after a crash: processes (lab.json,
    /// `pids/`, and anything still inside an `ml-` netns), namespaces, root links, mounts,
    /// `/etc/netns/ml-*` and the state directory.
    pub fn down_from_state(state_dir: impl AsRef<Path>) -> Result<DownReport> {
        sys::require_root()?;
        let layout = Layout::new(state_dir.as_ref());
        let st = state::load(&layout).unwrap_or_default();
        let mut report = DownReport::default();

        let mut recs: Vec<ProcRecord> = st.processes.values().cloned().collect();
        if let Ok(rd) = std::fs::read_dir(layout.pids()) {
            for e in rd.flatten() {
                if let Some(r) = std::fs::read(e.path())
                    .ok()
                    .and_then(|d| serde_json::from_slice::<ProcRecord>(&d).ok())
                    && !recs.contains(&r)
                {
                    recs.push(r);
                }
            }
        }
        // Apps and agents first, the control plane last.
        recs.sort_by_key(|r| r.name == "controlplane");
        let live: Vec<&ProcRecord> = recs.iter().filter(|r| r.alive()).collect();
        report.processes = live.len();
        std::thread::scope(|s| {
            for r in &live {
                s.spawn(|| sys::stop(r, Duration::from_secs(3)));
            }
        });

        // Leftovers found by prefix belong to this lab only when no other lab is running.
        let other = topology::other_active_lab(&layout.root);
        if let Some(o) = &other {
            tracing::warn!(
                running = %o.display(),
                "another lab is running: removing only what {} recorded",
                layout.root.display()
            );
        }
        let scan = other.is_none();
        let mut netns: Vec<String> = st.netns.clone();
        for n in sys::netns_list() {
            if scan && n.starts_with(PREFIX) && !netns.contains(&n) {
                netns.push(n);
            }
        }
        // Pods (longer names) before their nodes.
        netns.sort_by_key(|n| std::cmp::Reverse(n.len()));
        let existing = sys::netns_list();
        for n in &netns {
            if existing.contains(n) {
                sys::kill_netns_pids(n);
                if sys::ip(&["netns", "del", n]).is_ok() {
                    report.netns += 1;
                }
            }
            let _ = std::fs::remove_file(Path::new("/var/run/netns").join(n));
        }

        let mut links = st.links.clone();
        if scan {
            links.push(BRIDGE.into());
        }
        for l in sys::link_names() {
            if scan && l.starts_with(PREFIX) && !links.contains(&l) {
                links.push(l);
            }
        }
        let existing = sys::link_names();
        for l in links.iter().filter(|l| existing.contains(l)) {
            if sys::ip(&["link", "del", l]).is_ok() {
                report.links += 1;
            }
        }

        let root = layout
            .root
            .canonicalize()
            .unwrap_or_else(|_| layout.root.clone());
        if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<String> = info
                .lines()
                .filter_map(|l| l.split_whitespace().nth(4))
                .filter(|m| {
                    (scan
                        && (m.starts_with("/run/netns/ml-")
                            || m.starts_with("/var/run/netns/ml-")
                            || m.starts_with("/etc/netns/ml-")))
                        || Path::new(m).starts_with(&root)
                        || st.netns.iter().any(|n| {
                            m.ends_with(&format!("/netns/{n}"))
                                || m.contains(&format!("/etc/netns/{n}/"))
                        })
                })
                .map(str::to_string)
                .collect();
            points.sort_by_key(|m| std::cmp::Reverse(m.len()));
            points.dedup();
            for m in points {
                if sys::run(Command::new("umount").args(["-l", &m])).is_ok() {
                    report.mounts += 1;
                }
            }
        }

        let mut etc = st.etc_netns.clone();
        if scan && let Ok(rd) = std::fs::read_dir("/etc/netns") {
            etc.extend(rd.flatten().map(|e| e.path()).filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(PREFIX))
            }));
        }
        for d in etc {
            let _ = std::fs::remove_dir_all(d);
        }
        if layout.root.exists() {
            std::fs::remove_dir_all(&layout.root).map_err(io_err(&layout.root))?;
        }
        // The marker goes with the lab it names (or with a lab that no longer runs).
        if scan {
            let _ = std::fs::remove_file(topology::ACTIVE_MARKER);
        }
        Ok(report)
    }
}

//! Kubernetes objects as the lab handles them: parsing multi-document YAML, the one-object-per-file
//! layout of `cluster/`, Deployment → pod expansion, and image → built-in app mapping.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{LabError, Result, io_err};

/// Kinds without a namespace.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "GatewayClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "Node",
];

/// One parsed object with where it came from.
#[derive(Debug, Clone)]
pub struct Object {
    /// The object.
    pub value: Value,
    /// File it came from, for errors.
    pub source: String,
}

impl Object {
    /// `kind`.
    pub fn kind(&self) -> &str {
        kind(&self.value)
    }
    /// `metadata.name`.
    pub fn name(&self) -> &str {
        name(&self.value)
    }
    /// `metadata.namespace` (empty for cluster-scoped kinds).
    pub fn namespace(&self) -> &str {
        namespace(&self.value)
    }
    /// `Kind ns/name` for messages.
    pub fn describe(&self) -> String {
        describe(&self.value)
    }
    /// An apply error about this object.
    pub fn error(&self, reason: impl Into<String>) -> LabError {
        LabError::Apply {
            source_name: self.source.clone(),
            object: self.describe(),
            reason: reason.into(),
        }
    }
}

/// `kind` of an object.
pub fn kind(v: &Value) -> &str {
    v.get("kind").and_then(Value::as_str).unwrap_or("")
}
/// `metadata.name` of an object.
pub fn name(v: &Value) -> &str {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}
/// `metadata.namespace` of an object.
pub fn namespace(v: &Value) -> &str {
    v.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
}
/// `Kind ns/name`.
pub fn describe(v: &Value) -> String {
    let ns = namespace(v);
    if ns.is_empty() {
        format!("{} {}", kind(v), name(v))
    } else {
        format!("{} {}/{}", kind(v), ns, name(v))
    }
}

/// Whether a kind is cluster-scoped.
pub fn cluster_scoped(kind: &str) -> bool {
    CLUSTER_SCOPED.contains(&kind)
}

/// Parses multi-document YAML (and `kind: List`); fills in the `default` namespace.
pub fn parse(text: &str, source: &str) -> Result<Vec<Object>> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| LabError::Apply {
            source_name: source.into(),
            object: format!("document {}", i + 1),
            reason: format!("invalid YAML: {e}"),
        })?;
        if value.is_null() {
            continue;
        }
        let items = if kind(&value) == "List" {
            value
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        } else {
            vec![value]
        };
        for mut value in items {
            let obj_desc = format!("document {}", i + 1);
            if kind(&value).is_empty() || name(&value).is_empty() {
                return Err(LabError::Apply {
                    source_name: source.into(),
                    object: obj_desc,
                    reason: "an object needs `kind` and `metadata.name`".into(),
                });
            }
            if !cluster_scoped(kind(&value)) && namespace(&value).is_empty() {
                value["metadata"]["namespace"] = json!("default");
            }
            out.push(Object {
                value,
                source: source.into(),
            });
        }
    }
    Ok(out)
}

/// Reads a file or every `.yaml`/`.yml`/`.json` file of a directory (sorted).
pub fn read_path(path: &Path) -> Result<Vec<Object>> {
    let mut files = Vec::new();
    if path.is_dir() {
        let rd = std::fs::read_dir(path).map_err(io_err(path))?;
        for e in rd.flatten() {
            let p = e.path();
            if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(io_err(&f))?;
        out.extend(parse(&text, &f.display().to_string())?);
    }
    Ok(out)
}

/// Apply order: namespaces and accounts first, workloads last (like Helm).
pub fn apply_rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "ServiceAccount" => 1,
        "ConfigMap" | "Secret" => 2,
        "Service" => 3,
        "Deployment" | "Pod" => 5,
        _ => 4,
    }
}

/// File of an object in `cluster/`: `<kind>-<ns>-<name>.yaml` (`<kind>-<name>.yaml` if
/// cluster-scoped), kind lower-cased.
pub fn file_name(kind: &str, ns: &str, name: &str) -> String {
    let kind = kind.to_ascii_lowercase();
    if ns.is_empty() {
        format!("{kind}-{name}.yaml")
    } else {
        format!("{kind}-{ns}-{name}.yaml")
    }
}

/// The cluster directory: reading and writing objects.
#[derive(Debug, Clone)]
pub struct Cluster {
    dir: PathBuf,
}

impl Cluster {
    /// The store in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
    /// Path of an object's file.
    pub fn path(&self, kind: &str, ns: &str, name: &str) -> PathBuf {
        self.dir.join(file_name(kind, ns, name))
    }
    /// Reads one object.
    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let text = std::fs::read_to_string(self.path(kind, ns, name)).ok()?;
        serde_yaml::from_str(&text).ok()
    }
    /// Writes one object (atomically: the control plane and the CNI agent watch the directory).
    pub fn put(&self, v: &Value) -> Result<()> {
        let path = self.path(kind(v), namespace(v), name(v));
        let text = serde_yaml::to_string(v).map_err(|e| LabError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        crate::sys::write_atomic(&path, text.as_bytes())
    }
    /// Deletes one object; false if it did not exist.
    pub fn remove(&self, kind: &str, ns: &str, name: &str) -> bool {
        std::fs::remove_file(self.path(kind, ns, name)).is_ok()
    }
    /// Every object (unreadable files are skipped).
    pub fn all(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        let mut paths: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"))
            .collect();
        paths.sort();
        for p in paths {
            if let Ok(text) = std::fs::read_to_string(&p)
                && let Ok(v) = serde_yaml::from_str::<Value>(&text)
            {
                out.push(v);
            }
        }
        out
    }
    /// Every object of a kind.
    pub fn of_kind(&self, k: &str) -> Vec<Value> {
        self.all().into_iter().filter(|v| kind(v) == k).collect()
    }
}

/// Labels of an object.
pub fn labels(v: &Value) -> BTreeMap<String, String> {
    v.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Applies `k=v` (set) or `k-` (remove) to an object's labels.
pub fn edit_label(v: &mut Value, edit: &str) -> Result<()> {
    if !v["metadata"]["labels"].is_object() {
        v["metadata"]["labels"] = json!({});
    }
    let labels = &mut v["metadata"]["labels"];
    if let Some(key) = edit.strip_suffix('-')
        && !key.contains('=')
    {
        if let Some(m) = labels.as_object_mut() {
            m.remove(key);
        }
        return Ok(());
    }
    match edit.split_once('=') {
        Some((k, val)) if !k.is_empty() => {
            labels[k] = json!(val);
            Ok(())
        }
        _ => Err(LabError::Invalid(format!(
            "label {edit:?} is neither `key=value` nor `key-`"
        ))),
    }
}

/// Whether `labels` match a Service-style selector (every pair equal; empty selects nothing).
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// What runs in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppKind {
    /// The httpbin-like server on a port.
    Httpbin(u16),
    /// The TCP echo server on a port.
    Echo(u16),
    /// Nothing (a client pod: the target of `exec`).
    Idle,
}

/// Images the lab understands, for error messages.
pub const SUPPORTED_IMAGES: &str = "anything containing `httpbin` (docker.io/kennethreitz/httpbin, docker.io/mccutchen/go-httpbin) → HTTP server on the containerPort (default 80); anything containing `echo` (istio/tcp-echo-server) → TCP echo on the containerPort (default 9000); anything containing `curl` or `sleep` (curlimages/curl) → no process";

/// Maps a container to a built-in app.
pub fn app_for(container: &Value) -> Option<AppKind> {
    let image = container
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    let port = container
        .pointer("/ports/0/containerPort")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok());
    if image.contains("httpbin") {
        Some(AppKind::Httpbin(port.unwrap_or(80)))
    } else if image.contains("echo") {
        Some(AppKind::Echo(port.unwrap_or(9000)))
    } else if image.contains("curl") || image.contains("sleep") {
        Some(AppKind::Idle)
    } else {
        None
    }
}

const HASH_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Kubernetes-style safe string of `len` characters from a number.
pub fn safe_string(mut n: u64, len: usize) -> String {
    let mut s = String::with_capacity(len);
    for _ in 0..len {
        s.push(HASH_ALPHABET[(n % HASH_ALPHABET.len() as u64) as usize] as char);
        n /= HASH_ALPHABET.len() as u64;
    }
    s
}

/// The pod-template-hash of a Deployment's template.
pub fn template_hash(deploy: &Value) -> String {
    let template = deploy
        .pointer("/spec/template")
        .cloned()
        .unwrap_or_default();
    let bytes = serde_json::to_vec(&template).unwrap_or_default();
    safe_string(crate::sys::fnv64(&bytes), 10)
}

/// Replica count of a Deployment (default 1).
pub fn replicas(deploy: &Value) -> usize {
    deploy
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .unwrap_or(1) as usize
}

/// A pod object for one replica of a Deployment (no uid, node or status yet).
pub fn pod_from_deployment(deploy: &Value, hash: &str, suffix: &str) -> Value {
    let dname = name(deploy);
    let ns = namespace(deploy);
    let template = deploy
        .pointer("/spec/template")
        .cloned()
        .unwrap_or_default();
    let mut meta = template
        .get("metadata")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    meta["labels"]["pod-template-hash"] = json!(hash);
    let rs = format!("{dname}-{hash}");
    meta["name"] = json!(format!("{rs}-{suffix}"));
    meta["namespace"] = json!(ns);
    meta["ownerReferences"] = json!([{
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": rs,
        "uid": format!("{:016x}", crate::sys::fnv64(format!("{ns}/{rs}").as_bytes())),
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
    })
}

/// A Service port: (protocol, port, target port resolved against a pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Service port.
    pub port: u16,
    /// `targetPort` as written (number or name).
    pub target: Value,
}

/// Ports of a Service.
pub fn service_ports(svc: &Value) -> Vec<ServicePort> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter_map(|p| {
                    let port = u16::try_from(p.get("port")?.as_u64()?).ok()?;
                    Some(ServicePort {
                        protocol: p
                            .get("protocol")
                            .and_then(Value::as_str)
                            .unwrap_or("TCP")
                            .to_ascii_lowercase(),
                        port,
                        target: p.get("targetPort").cloned().unwrap_or(json!(port)),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Resolves a target port (number, numeric string or container port name) on a pod.
pub fn resolve_target(target: &Value, pod: &Value) -> Option<u16> {
    if let Some(n) = target.as_u64() {
        return u16::try_from(n).ok();
    }
    let t = target.as_str()?;
    if let Ok(n) = t.parse() {
        return Some(n);
    }
    let containers = pod.pointer("/spec/containers")?.as_array()?;
    containers
        .iter()
        .filter_map(|c| c.get("ports")?.as_array())
        .flatten()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(t))
        .and_then(|p| u16::try_from(p.get("containerPort")?.as_u64()?).ok())
}

/// Whether a pod object is Ready with an IP.
pub fn pod_ready_ip(pod: &Value) -> Option<String> {
    let ready = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        });
    if !ready || pod.pointer("/metadata/deletionTimestamp").is_some() {
        return None;
    }
    pod.pointer("/status/podIP")
        .and_then(Value::as_str)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_doc_and_defaults_namespace() {
        let objs = parse(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: legacy}\n---\nkind: Service\nmetadata: {name: httpbin}\n---\n",
            "x.yaml",
        )
        .unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].namespace(), "");
        assert_eq!(objs[1].namespace(), "default");
        assert_eq!(
            file_name("Service", "default", "httpbin"),
            "service-default-httpbin.yaml"
        );
        let err = parse("kind: Service\n", "bad.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.yaml") && err.contains("metadata.name"),
            "{err}"
        );
    }

    #[test]
    fn labels_edit() {
        let mut v = json!({"metadata": {"name": "default"}});
        edit_label(&mut v, "istio.io/dataplane-mode=ambient").unwrap();
        assert_eq!(labels(&v)["istio.io/dataplane-mode"], "ambient");
        edit_label(&mut v, "istio.io/dataplane-mode-").unwrap();
        assert!(labels(&v).is_empty());
        assert!(edit_label(&mut v, "=x").is_err());
    }

    #[test]
    fn images_map_to_apps() {
        let c = |img: &str| json!({"image": img, "ports": [{"containerPort": 8080}]});
        assert_eq!(
            app_for(&c("docker.io/kennethreitz/httpbin")),
            Some(AppKind::Httpbin(8080))
        );
        assert_eq!(
            app_for(&json!({"image": "docker.io/mccutchen/go-httpbin"})),
            Some(AppKind::Httpbin(80))
        );
        assert_eq!(
            app_for(&json!({"image": "istio/tcp-echo-server:1.3"})),
            Some(AppKind::Echo(9000))
        );
        assert_eq!(
            app_for(&json!({"image": "curlimages/curl"})),
            Some(AppKind::Idle)
        );
        assert_eq!(app_for(&json!({"image": "nginx"})), None);
    }

    #[test]
    fn deployment_pods_carry_owner_and_hash() {
        let d = parse(
            "kind: Deployment\nmetadata: {name: httpbin}\nspec:\n  replicas: 2\n  template:\n    metadata: {labels: {app: httpbin}}\n    spec: {containers: [{name: c, image: httpbin, ports: [{name: http, containerPort: 80}]}]}\n",
            "d.yaml",
        )
        .unwrap()
        .remove(0)
        .value;
        let h = template_hash(&d);
        assert_eq!(h.len(), 10);
        let p = pod_from_deployment(&d, &h, "abcde");
        assert_eq!(name(&p), format!("httpbin-{h}-abcde"));
        assert_eq!(labels(&p)["pod-template-hash"], h);
        assert_eq!(
            p.pointer("/metadata/ownerReferences/0/name").unwrap(),
            &json!(format!("httpbin-{h}"))
        );
        assert_eq!(resolve_target(&json!("http"), &p), Some(80));
        assert_eq!(resolve_target(&json!(8080), &p), Some(8080));
        assert_eq!(replicas(&d), 2);
    }
}

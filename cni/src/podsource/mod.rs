//! Where the agent (and the plugin, in the lab) learns about pods and namespaces.
//!
//! One trait, [`PodSource`], with two implementations:
//! * [`dir::DirPodSource`] (`--pod-source dir:<path>`): a directory of Kubernetes YAML files
//!   (multi-document; other kinds ignored), polled every 250 ms. The redirection annotation is
//!   recorded by rewriting the pod's file atomically (temp file + rename), keeping the file's
//!   other documents;
//! * [`kube::KubePodSource`] (`--pod-source kube`): the Kubernetes API (pods of this node, all
//!   namespaces), the annotation written with a merge patch on `pods/status`.
//!
//! A source publishes whole [`Snapshot`]s on a `watch` channel; the agent compares intent
//! (selectors) with state (annotation) on every new snapshot.

pub mod dir;
pub mod kube;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_yaml::Value;
use tokio::sync::watch;

/// The parts of a Pod the data plane needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodMeta {
    /// `metadata.uid` (the lab may omit it: then `<namespace>/<name>`).
    pub uid: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (`default` when absent).
    pub namespace: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `spec.nodeName`.
    pub node_name: String,
    /// `spec.serviceAccountName` (`default` when absent).
    pub service_account: String,
    /// `status.phase`.
    pub phase: String,
    /// `status.podIPs` (or `status.podIP`).
    pub ips: Vec<IpAddr>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
}

impl PodMeta {
    /// `ambient.istio.io/redirection` value.
    pub fn redirection(&self) -> Option<&str> {
        self.annotations
            .get(crate::selectors::keys::REDIRECTION)
            .map(String::as_str)
    }

    /// Succeeded or Failed: never served again.
    pub fn is_terminal(&self) -> bool {
        self.phase == "Succeeded" || self.phase == "Failed"
    }

    /// Builds the model from a Pod object (YAML/JSON value); `None` if it is no Pod.
    pub fn from_value(v: &Value) -> Option<PodMeta> {
        if str_at(v, &["kind"]) != Some("Pod") {
            return None;
        }
        let name = str_at(v, &["metadata", "name"])?.to_owned();
        let namespace = str_at(v, &["metadata", "namespace"])
            .unwrap_or("default")
            .to_owned();
        let uid = str_at(v, &["metadata", "uid"])
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{namespace}/{name}"));
        let mut ips: Vec<IpAddr> = Vec::new();
        if let Some(Value::Sequence(list)) = at(v, &["status", "podIPs"]) {
            ips.extend(
                list.iter()
                    .filter_map(|e| str_at(e, &["ip"]))
                    .filter_map(|s| s.parse::<IpAddr>().ok()),
            );
        }
        if ips.is_empty()
            && let Some(ip) = str_at(v, &["status", "podIP"]).and_then(|s| s.parse().ok())
        {
            ips.push(ip);
        }
        Some(PodMeta {
            uid,
            name,
            namespace,
            labels: string_map(at(v, &["metadata", "labels"])),
            annotations: string_map(at(v, &["metadata", "annotations"])),
            host_network: matches!(at(v, &["spec", "hostNetwork"]), Some(Value::Bool(true))),
            node_name: str_at(v, &["spec", "nodeName"])
                .unwrap_or_default()
                .to_owned(),
            service_account: str_at(v, &["spec", "serviceAccountName"])
                .or_else(|| str_at(v, &["spec", "serviceAccount"]))
                .unwrap_or("default")
                .to_owned(),
            phase: str_at(v, &["status", "phase"])
                .unwrap_or_default()
                .to_owned(),
            ips,
            deleting: at(v, &["metadata", "deletionTimestamp"]).is_some_and(|d| !d.is_null()),
        })
    }
}

/// `(name, labels)` of a Namespace object, if `v` is one.
pub fn namespace_from_value(v: &Value) -> Option<(String, BTreeMap<String, String>)> {
    if str_at(v, &["kind"]) != Some("Namespace") {
        return None;
    }
    let name = str_at(v, &["metadata", "name"])?.to_owned();
    Some((name, string_map(at(v, &["metadata", "labels"]))))
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    let Some(Value::Mapping(m)) = v else {
        return BTreeMap::new();
    };
    m.iter()
        .filter_map(|(k, v)| {
            let k = k.as_str()?.to_owned();
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some((k, v))
        })
        .collect()
}

/// A pod with its namespace's labels, if found.
pub type PodLookup = Option<(PodMeta, BTreeMap<String, String>)>;

/// Everything a source knows at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Pods on this node, by UID.
    pub pods: BTreeMap<String, PodMeta>,
    /// Namespace labels, by namespace name.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl Snapshot {
    /// Labels of `ns` (empty if unknown).
    pub fn ns_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespaces.get(ns).cloned().unwrap_or_default()
    }

    /// Finds a pod by namespace and name.
    pub fn find(&self, namespace: &str, name: &str) -> Option<&PodMeta> {
        self.pods
            .values()
            .find(|p| p.namespace == namespace && p.name == name)
    }
}

/// Failures of a pod source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// File system error in the `dir:` source.
    #[error("pod source directory {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The pod is not (or no longer) known.
    #[error("pod {namespace}/{name} not found in the pod source")]
    NotFound {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A YAML file could not be parsed or written back.
    #[error("pod source file {path}: {reason}")]
    Yaml {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Kubernetes API error.
    #[error("Kubernetes API: {0}")]
    Kube(String),
}

/// A source of pods and namespaces for one node.
pub trait PodSource: Send + Sync + 'static {
    /// The latest snapshots; the source keeps it up to date until dropped.
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>>;

    /// Looks a pod up now (fresh read, not the last snapshot).
    fn get_pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<PodLookup, SourceError>>;

    /// Sets (`Some`) or removes (`None`) the `ambient.istio.io/redirection` annotation.
    fn set_redirection<'a>(
        &'a self,
        pod: &'a PodMeta,
        value: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), SourceError>>;
}

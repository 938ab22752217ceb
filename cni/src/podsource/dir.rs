//! `dir:<path>`: pods and namespaces from a directory of Kubernetes YAML files.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file is read as a multi-document YAML stream; `Pod`
//! and `Namespace` documents are used, other kinds ignored. Only pods whose `spec.nodeName`
//! is this node (or, when the node name is empty, every pod) are published. The directory is
//! polled every 250 ms and a new [`Snapshot`] is published when anything changed.
//!
//! The redirection annotation is written by rewriting the pod's file: parse all documents,
//! set or delete `metadata.annotations["ambient.istio.io/redirection"]` in the pod's document,
//! write a temporary file in the same directory and rename it over the original. Files that
//! disappear or do not parse are skipped (logged once per content change).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_yaml::Value;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{PodLookup, PodMeta, PodSource, Snapshot, SourceError, namespace_from_value};
use crate::selectors::keys;

/// Poll interval of the directory.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Parses every YAML document of `text`.
pub fn parse_docs(text: &str) -> Result<Vec<Value>, serde_yaml::Error> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(doc)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// One scan of the directory: the snapshot and the file each pod came from.
#[derive(Debug, Default)]
pub struct Scan {
    /// Pods (filtered by node) and namespaces.
    pub snapshot: Snapshot,
    /// Pod UID → file.
    pub files: BTreeMap<String, PathBuf>,
}

/// Reads the directory once. `node` empty ⇒ every pod.
pub fn scan_dir(dir: &Path, node: &str) -> Result<Scan, SourceError> {
    let rd = std::fs::read_dir(dir).map_err(|source| SourceError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.')
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
        })
        .collect();
    paths.sort();
    let mut scan = Scan::default();
    for path in paths {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // removed between listing and reading
        };
        let docs = match parse_docs(&text) {
            Ok(d) => d,
            Err(e) => {
                debug!(path = %path.display(), error = %e, "skipping unparsable pod source file");
                continue;
            }
        };
        for doc in &docs {
            if let Some(pod) = PodMeta::from_value(doc) {
                if node.is_empty() || pod.node_name == node {
                    scan.files.insert(pod.uid.clone(), path.clone());
                    scan.snapshot.pods.insert(pod.uid.clone(), pod);
                }
            } else if let Some((name, labels)) = namespace_from_value(doc) {
                scan.snapshot.namespaces.insert(name, labels);
            }
        }
    }
    Ok(scan)
}

/// Finds `namespace/name` in the directory (any node), with its namespace's labels.
pub fn lookup_pod(dir: &Path, namespace: &str, name: &str) -> Result<PodLookup, SourceError> {
    let scan = scan_dir(dir, "")?;
    Ok(scan.snapshot.find(namespace, name).cloned().map(|p| {
        let ns = scan.snapshot.ns_labels(namespace);
        (p, ns)
    }))
}

/// Sets or removes the redirection annotation of `namespace/name` in `file`, atomically.
pub fn write_annotation(
    file: &Path,
    namespace: &str,
    name: &str,
    value: Option<&str>,
) -> Result<(), SourceError> {
    let yaml_err = |reason: String| SourceError::Yaml {
        path: file.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(file).map_err(|source| SourceError::Io {
        path: file.display().to_string(),
        source,
    })?;
    let mut docs = parse_docs(&text).map_err(|e| yaml_err(e.to_string()))?;
    let mut found = false;
    for doc in docs.iter_mut() {
        let Some(pod) = PodMeta::from_value(doc) else {
            continue;
        };
        if pod.namespace != namespace || pod.name != name {
            continue;
        }
        found = true;
        let meta = doc
            .get_mut("metadata")
            .and_then(Value::as_mapping_mut)
            .ok_or_else(|| yaml_err("pod without metadata".into()))?;
        let key = Value::from("annotations");
        match value {
            Some(v) => {
                let ann = meta
                    .entry(key)
                    .or_insert_with(|| Value::Mapping(Default::default()));
                if !ann.is_mapping() {
                    *ann = Value::Mapping(Default::default());
                }
                ann.as_mapping_mut()
                    .expect("mapping")
                    .insert(Value::from(keys::REDIRECTION), Value::from(v));
            }
            None => {
                let empty = if let Some(ann) = meta.get_mut(&key).and_then(Value::as_mapping_mut) {
                    ann.remove(keys::REDIRECTION);
                    ann.is_empty()
                } else {
                    false
                };
                if empty {
                    meta.remove(&key);
                }
            }
        }
    }
    if !found {
        return Err(SourceError::NotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
    }
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(doc).map_err(|e| yaml_err(e.to_string()))?);
    }
    atomic_write(file, out.as_bytes())
}

/// Writes `bytes` to `path` via a temporary file in the same directory and a rename.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), SourceError> {
    let io = |source| SourceError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let base = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{base}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

/// The polling directory source.
#[derive(Debug)]
pub struct DirPodSource {
    dir: PathBuf,
    node: String,
    tx: watch::Sender<Arc<Snapshot>>,
    files: Arc<Mutex<BTreeMap<String, PathBuf>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DirPodSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DirPodSource {
    /// Scans `dir` once (so the first snapshot is complete) and starts polling.
    /// Must run inside a tokio runtime.
    pub fn start(dir: impl Into<PathBuf>, node: impl Into<String>) -> Result<Self, SourceError> {
        let dir = dir.into();
        let node = node.into();
        let first = scan_dir(&dir, &node)?;
        let files = Arc::new(Mutex::new(first.files));
        let (tx, _) = watch::channel(Arc::new(first.snapshot));
        let task = {
            let (dir, node, tx, files) = (dir.clone(), node.clone(), tx.clone(), files.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(POLL_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let (d, n) = (dir.clone(), node.clone());
                    let scan = match tokio::task::spawn_blocking(move || scan_dir(&d, &n)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            warn!(error = %e, "pod source scan failed");
                            continue;
                        }
                        Err(_) => continue,
                    };
                    *files.lock() = scan.files;
                    tx.send_if_modified(|cur| {
                        if **cur == scan.snapshot {
                            false
                        } else {
                            *cur = Arc::new(scan.snapshot);
                            true
                        }
                    });
                }
            })
        };
        Ok(DirPodSource {
            dir,
            node,
            tx,
            files,
            task,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl PodSource for DirPodSource {
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    fn get_pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<PodLookup, SourceError>> {
        let dir = self.dir.clone();
        let (ns, n) = (namespace.to_owned(), name.to_owned());
        async move {
            tokio::task::spawn_blocking(move || lookup_pod(&dir, &ns, &n))
                .await
                .unwrap_or(Ok(None))
        }
        .boxed()
    }

    fn set_redirection<'a>(
        &'a self,
        pod: &'a PodMeta,
        value: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), SourceError>> {
        async move {
            let file = match self.files.lock().get(&pod.uid).cloned() {
                Some(f) => f,
                None => {
                    // Not scanned yet (plugin-initiated add raced the poll): scan now.
                    let scan = scan_dir(&self.dir, &self.node)?;
                    let f = scan.files.get(&pod.uid).cloned();
                    f.ok_or_else(|| SourceError::NotFound {
                        namespace: pod.namespace.clone(),
                        name: pod.name.clone(),
                    })?
                }
            };
            let (ns, name, value) = (
                pod.namespace.clone(),
                pod.name.clone(),
                value.map(str::to_owned),
            );
            tokio::task::spawn_blocking(move || {
                write_annotation(&file, &ns, &name, value.as_deref())
            })
            .await
            .unwrap_or_else(|e| {
                Err(SourceError::Yaml {
                    path: String::new(),
                    reason: e.to_string(),
                })
            })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_round_trip_keeps_other_documents() {
        let dir = std::env::temp_dir().join(format!("cni-dir-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("p.yaml");
        std::fs::write(
            &f,
            "kind: Service\nmetadata: {name: s}\n---\nkind: Pod\nmetadata:\n  name: a\n  namespace: x\n  annotations: {other: keep}\nspec: {nodeName: n}\n",
        )
        .unwrap();
        write_annotation(&f, "x", "a", Some("enabled")).unwrap();
        let scan = scan_dir(&dir, "n").unwrap();
        let pod = scan.snapshot.find("x", "a").unwrap();
        assert_eq!(pod.uid, "x/a");
        assert_eq!(pod.redirection(), Some("enabled"));
        assert_eq!(pod.annotations["other"], "keep");
        write_annotation(&f, "x", "a", None).unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        assert_eq!(parse_docs(&text).unwrap().len(), 2);
        assert!(
            !text.contains("redirection") && text.contains("other: keep"),
            "{text}"
        );
        assert!(matches!(
            write_annotation(&f, "x", "missing", None),
            Err(SourceError::NotFound { .. })
        ));
        assert!(
            scan_dir(&dir, "other-node")
                .unwrap()
                .snapshot
                .pods
                .is_empty()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

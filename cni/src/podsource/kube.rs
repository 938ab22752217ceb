//! `--pod-source kube`: pods of this node and all namespaces from the Kubernetes API.
//!
//! Two watchers (pods with field selector `spec.nodeName=<node>`, all namespaces) feed one
//! table; each change publishes a new [`Snapshot`]. A watcher restart (`Init` … `InitDone`)
//! replaces that kind's objects wholesale. The annotation is written as a JSON merge patch on
//! the `pods/status` subresource (`{"metadata":{"annotations":{key: value | null}}}`), as
//! Istio's agent does. Objects are converted through their serialized form with the same
//! code as the `dir:` source ([`PodMeta::from_value`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::warn;

use super::{PodLookup, PodMeta, PodSource, Snapshot, SourceError, namespace_from_value};
use crate::selectors::keys;

/// The merge patch that sets (or, for `None`, removes) the redirection annotation.
pub fn redirection_patch(value: Option<&str>) -> serde_json::Value {
    serde_json::json!({"metadata": {"annotations": {keys::REDIRECTION: value}}})
}

/// Converts a Kubernetes object through its serialized form.
fn to_value<T: serde::Serialize>(obj: &T) -> Option<serde_yaml::Value> {
    serde_yaml::to_value(obj).ok()
}

/// The API-backed source.
pub struct KubePodSource {
    client: kube::Client,
    tx: watch::Sender<Arc<Snapshot>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for KubePodSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubePodSource").finish_non_exhaustive()
    }
}

impl Drop for KubePodSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl KubePodSource {
    /// Connects with the in-cluster config (or `KUBECONFIG`) and starts both watchers.
    pub async fn start(node: &str) -> Result<Self, SourceError> {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| SourceError::Kube(e.to_string()))?;
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        let state = Arc::new(Mutex::new(Snapshot::default()));
        let pods = {
            let (tx, state) = (tx.clone(), state.clone());
            let api: Api<Pod> = Api::all(client.clone());
            let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
            tokio::spawn(async move {
                let mut init: Option<BTreeMap<String, PodMeta>> = None;
                let mut stream = watcher(api, cfg).default_backoff().boxed();
                while let Some(ev) = stream.next().await {
                    let ev = match ev {
                        Ok(ev) => ev,
                        Err(e) => {
                            warn!(error = %e, "pod watch error");
                            continue;
                        }
                    };
                    let mut s = state.lock();
                    match ev {
                        watcher::Event::Init => init = Some(BTreeMap::new()),
                        watcher::Event::InitApply(p) => {
                            if let (Some(m), Some(p)) = (
                                init.as_mut(),
                                to_value(&p).and_then(|v| PodMeta::from_value(&v)),
                            ) {
                                m.insert(p.uid.clone(), p);
                            }
                        }
                        watcher::Event::InitDone => s.pods = init.take().unwrap_or_default(),
                        watcher::Event::Apply(p) => {
                            if let Some(p) = to_value(&p).and_then(|v| PodMeta::from_value(&v)) {
                                s.pods.insert(p.uid.clone(), p);
                            }
                        }
                        watcher::Event::Delete(p) => {
                            if let Some(uid) = p.metadata.uid {
                                s.pods.remove(&uid);
                            }
                        }
                    }
                    tx.send_replace(Arc::new(s.clone()));
                }
            })
        };
        let namespaces = {
            let (tx, state) = (tx.clone(), state.clone());
            let api: Api<Namespace> = Api::all(client.clone());
            tokio::spawn(async move {
                let mut init: Option<BTreeMap<String, BTreeMap<String, String>>> = None;
                let mut stream = watcher(api, watcher::Config::default())
                    .default_backoff()
                    .boxed();
                while let Some(ev) = stream.next().await {
                    let Ok(ev) = ev else { continue };
                    let mut s = state.lock();
                    let conv = |n: &Namespace| to_value(n).and_then(|v| namespace_from_value(&v));
                    match ev {
                        watcher::Event::Init => init = Some(BTreeMap::new()),
                        watcher::Event::InitApply(n) => {
                            if let (Some(m), Some((k, v))) = (init.as_mut(), conv(&n)) {
                                m.insert(k, v);
                            }
                        }
                        watcher::Event::InitDone => {
                            s.namespaces = init.take().unwrap_or_default();
                        }
                        watcher::Event::Apply(n) => {
                            if let Some((k, v)) = conv(&n) {
                                s.namespaces.insert(k, v);
                            }
                        }
                        watcher::Event::Delete(n) => {
                            if let Some(name) = n.metadata.name {
                                s.namespaces.remove(&name);
                            }
                        }
                    }
                    tx.send_replace(Arc::new(s.clone()));
                }
            })
        };
        Ok(KubePodSource {
            client,
            tx,
            tasks: vec![pods, namespaces],
        })
    }
}

impl PodSource for KubePodSource {
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    fn get_pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<PodLookup, SourceError>> {
        async move {
            let kerr = |e: kube::Error| SourceError::Kube(e.to_string());
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            let Some(pod) = pods.get_opt(name).await.map_err(kerr)? else {
                return Ok(None);
            };
            let nss: Api<Namespace> = Api::all(self.client.clone());
            let ns_labels = nss
                .get_opt(namespace)
                .await
                .map_err(kerr)?
                .and_then(|n| to_value(&n))
                .and_then(|v| namespace_from_value(&v))
                .map(|(_, l)| l)
                .unwrap_or_default();
            Ok(to_value(&pod)
                .and_then(|v| PodMeta::from_value(&v))
                .map(|p| (p, ns_labels)))
        }
        .boxed()
    }

    fn set_redirection<'a>(
        &'a self,
        pod: &'a PodMeta,
        value: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), SourceError>> {
        async move {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
            pods.patch_status(
                &pod.name,
                &PatchParams::default(),
                &Patch::Merge(redirection_patch(value)),
            )
            .await
            .map(|_| ())
            .map_err(|e| SourceError::Kube(e.to_string()))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_sets_and_clears() {
        assert_eq!(
            redirection_patch(Some("enabled")).to_string(),
            r#"{"metadata":{"annotations":{"ambient.istio.io/redirection":"enabled"}}}"#
        );
        assert_eq!(
            redirection_patch(None).to_string(),
            r#"{"metadata":{"annotations":{"ambient.istio.io/redirection":null}}}"#
        );
    }

    #[test]
    fn openapi_pod_converts() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "namespace": "ns", "uid": "u1",
                         "labels": {"istio.io/dataplane-mode": "ambient"}},
            "spec": {"nodeName": "n1", "containers": [], "serviceAccountName": "sa"},
            "status": {"podIPs": [{"ip": "10.0.0.5"}], "phase": "Running"}
        }))
        .unwrap();
        let meta = PodMeta::from_value(&to_value(&pod).unwrap()).unwrap();
        assert_eq!(meta.uid, "u1");
        assert_eq!(meta.node_name, "n1");
        assert_eq!(meta.service_account, "sa");
        assert_eq!(
            meta.ips,
            vec!["10.0.0.5".parse::<std::net::IpAddr>().unwrap()]
        );
    }
}

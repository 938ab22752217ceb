//! The node agent (`cni-agent`): enrols pods on this node in the mesh and hands their
//! network namespaces to ztunnel.
//!
//! AddPodToMesh (plugin `cmdadd`, or a label change on a running pod):
//! 1. open the pod's netns and put it in the cache (the cache is the ZDS snapshot and is
//!    persisted to `<run-dir>/pods.json` so a restarted agent can reopen the netns);
//! 2. install the in-pod rules ([`RuleInstaller::apply_pod`]);
//! 3. ZDS `add` (+ netns fd) to the newest ztunnel, wait for the ACK; failure ⇒ annotation
//!    `pending`, retryable error (the CNI ADD fails; label-driven enrolment is retried);
//! 4. add the pod IPs to the host probe set;
//! 5. annotation `ambient.istio.io/redirection: enabled`.
//!
//! RemovePodFromMesh is the reverse: probe set, in-pod rules (if the netns still exists and
//! the pod is not being deleted), ZDS `del` to all ztunnels, annotation removed, cache entry
//! dropped.
//!
//! The reconcile loop compares intent (selectors, [`crate::selectors::Enrollment`]) with state
//! (the cache, and for pods not in it, the annotation) on every source snapshot and retries
//! failures every [`RETRY_INTERVAL`]. A running pod that must now be enrolled (a label change)
//! but never went through our plugin is found by its IP ([`netns_scan`]). Startup adopts pods already annotated `enabled` (netns
//! from `pods.json`, else `<netns-dir>/<pod name>`), re-applies their rules if configured,
//! installs the host rules, syncs the probe sets, and only then starts the ZDS server, whose
//! snapshot replays the cache.

pub mod config;
pub mod http;
pub mod install;
pub mod netns_scan;
pub mod rules;
pub mod run;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use proto::istio::workload::zds::WorkloadInfo;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

pub use config::Config;
use rules::{RuleFailure, RuleInstaller};

use crate::podsource::{PodMeta, PodSource, Snapshot};
use crate::rules::{Backend, PodRuleConfig};
use crate::selectors::{Enrollment, keys};
use crate::zds_server::{SnapshotEntry, ZdsError, ZdsListener, ZdsServer};

/// Retry period of failed enrolments.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait between two netns scans for the same pod.
pub const MAX_SCAN_BACKOFF: Duration = Duration::from_secs(60);

/// Why an enrolment or release failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The netns could not be opened (not retryable).
    #[error("cannot open network namespace {path}: {source}")]
    Netns {
        /// Path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Rules failed (not retryable).
    #[error("installing redirection rules for pod {pod}: {source}")]
    Rules {
        /// `namespace/name`.
        pod: String,
        /// Why.
        source: RuleFailure,
    },
    /// ztunnel did not take the pod (retryable).
    #[error("handing pod {pod} to ztunnel: {source}")]
    Zds {
        /// `namespace/name`.
        pod: String,
        /// Why.
        source: ZdsError,
    },
    /// Host probe set update failed (retryable).
    #[error("adding pod {pod} to the host probe set: {source}")]
    Probe {
        /// `namespace/name`.
        pod: String,
        /// Why.
        source: RuleFailure,
    },
    /// The annotation could not be written (retryable).
    #[error("annotating pod {pod}: {source}")]
    Annotate {
        /// `namespace/name`.
        pod: String,
        /// Why.
        source: crate::podsource::SourceError,
    },
    /// The pod is unknown.
    #[error("pod {0} not found in the pod source")]
    PodNotFound(String),
}

impl AgentError {
    /// Whether retrying can help.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, AgentError::Netns { .. } | AgentError::Rules { .. })
    }
}

/// One enrolled (or pending) pod.
#[derive(Debug, Clone)]
pub struct CachedPod {
    /// The pod.
    pub pod: PodMeta,
    /// Its netns path (as given; the host prefix is applied when opening).
    pub netns_path: PathBuf,
    /// The open netns, when held.
    pub netns: Option<Arc<File>>,
    /// ztunnel ACKed and the annotation is `enabled`.
    pub enabled: bool,
}

/// `pods.json` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StateEntry {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// netns path.
    pub netns: PathBuf,
}

/// The agent's core; shared by the reconcile loop, the plugin server and the ZDS snapshot.
pub struct Agent {
    cfg: Config,
    enrollment: Enrollment,
    source: Arc<dyn PodSource>,
    rules: Arc<dyn RuleInstaller>,
    zds: Mutex<Option<ZdsServer>>,
    cache: Arc<Mutex<BTreeMap<String, CachedPod>>>,
    saved: Mutex<BTreeMap<String, StateEntry>>,
    op: tokio::sync::Mutex<()>,
    ready: AtomicBool,
    /// Pods whose netns a scan did not find: when to look again, and the current back-off.
    scan_backoff: Mutex<BTreeMap<String, (std::time::Instant, Duration)>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("pods", &self.cache.lock().len())
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent for `cfg` with these collaborators (nothing started yet).
    pub fn new(
        cfg: Config,
        source: Arc<dyn PodSource>,
        rules: Arc<dyn RuleInstaller>,
    ) -> Arc<Agent> {
        let saved = std::fs::read(cfg.state_file())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Arc::new(Agent {
            enrollment: cfg.enrollment(),
            cfg,
            source,
            rules,
            zds: Mutex::new(None),
            cache: Arc::new(Mutex::new(BTreeMap::new())),
            saved: Mutex::new(saved),
            op: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
            scan_backoff: Mutex::new(BTreeMap::new()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Startup done and the ZDS server listening.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Connected ztunnels.
    pub fn ztunnels_connected(&self) -> usize {
        self.zds.lock().as_ref().map_or(0, ZdsServer::connected)
    }

    /// The current cache (uid → pod).
    pub fn cached(&self) -> BTreeMap<String, CachedPod> {
        self.cache.lock().clone()
    }

    /// The ZDS snapshot: `add` + a dup of the netns for pods whose netns is held, else `keep`.
    pub fn zds_snapshot(&self) -> Vec<SnapshotEntry> {
        self.cache
            .lock()
            .iter()
            .map(|(uid, c)| SnapshotEntry {
                uid: uid.clone(),
                info: workload_info(&c.pod),
                netns: c
                    .netns
                    .as_ref()
                    .and_then(|f| std::os::fd::AsFd::as_fd(&**f).try_clone_to_owned().ok()),
            })
            .collect()
    }

    /// Startup: host rules, adoption of annotated pods, probe-set sync, then the ZDS server.
    /// Returns the listener to run.
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<ZdsListener> {
        std::fs::create_dir_all(&self.cfg.run_dir)?;
        let r = self.rules.clone();
        blocking(move || r.host_install()).await?;
        let snap = self.source.subscribe().borrow().clone();
        self.reconcile(&snap, true).await;
        let pods: Vec<(String, Vec<IpAddr>)> = self
            .cache
            .lock()
            .iter()
            .filter(|(_, c)| c.enabled)
            .map(|(u, c)| (u.clone(), c.pod.ips.clone()))
            .collect();
        let r = self.rules.clone();
        if let Err(e) = blocking(move || r.host_sync(&pods)).await {
            warn!(error = %e, "syncing the host probe sets failed");
        }
        let me = Arc::downgrade(self);
        let (server, listener) = ZdsServer::bind(
            &self.cfg.ztunnel_socket,
            Arc::new(move || me.upgrade().map(|a| a.zds_snapshot()).unwrap_or_default()),
        )?;
        *self.zds.lock() = Some(server);
        Ok(listener)
    }

    /// Marks the agent ready (after the listener runs).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Runs the reconcile loop forever.
    pub async fn run_reconcile(self: Arc<Self>) {
        let mut rx = self.source.subscribe();
        let mut retry = tokio::time::interval(RETRY_INTERVAL);
        loop {
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = retry.tick() => {}
            }
            let snap = rx.borrow_and_update().clone();
            self.reconcile(&snap, false).await;
        }
    }

    /// The ZDS server, once [`start`](Self::start) bound it.
    pub fn zds_server(&self) -> Option<ZdsServer> {
        self.zds()
    }

    fn zds(&self) -> Option<ZdsServer> {
        self.zds.lock().clone()
    }

    /// The pod's netns: from the saved state, `<netns-dir>/<pod name>`, or else found by the
    /// pod's IPs among the node's namespaces ([`netns_scan`]; a pod labelled after it started).
    async fn netns_candidate(&self, pod: &PodMeta) -> Option<PathBuf> {
        if let Some(s) = self.saved.lock().get(&pod.uid) {
            return Some(s.netns.clone());
        }
        let p = self.cfg.netns_dir.join(&pod.name);
        if p.exists() {
            return Some(p);
        }
        if pod.ips.is_empty() {
            return None;
        }
        // A scan enters every namespace on the node: after a miss, wait 1 s, 2 s, ... 60 s.
        let now = std::time::Instant::now();
        if let Some((next, _)) = self.scan_backoff.lock().get(&pod.uid)
            && now < *next
        {
            return None;
        }
        let (netns_dir, proc_dir) = (
            self.host_path(&self.cfg.netns_dir),
            self.host_path(Path::new("/proc")),
        );
        let prefix = self.cfg.host_prefix.clone();
        let ips = pod.ips.clone();
        let found = tokio::task::spawn_blocking(move || {
            netns_scan::find_by_ip(&ips, netns_scan::candidates(&netns_dir, &proc_dir))
        })
        .await
        .ok()
        .flatten();
        let Some(found) = found else {
            let mut backoff = self.scan_backoff.lock();
            let delay = backoff
                .get(&pod.uid)
                .map_or(RETRY_INTERVAL, |(_, d)| (*d * 2).min(MAX_SCAN_BACKOFF));
            backoff.insert(pod.uid.clone(), (now + delay, delay));
            debug!(pod = %format!("{}/{}", pod.namespace, pod.name), ?delay, "netns not found by IP; will look again");
            return None;
        };
        self.scan_backoff.lock().remove(&pod.uid);
        // Back to the path as the node sees it (add_pod prefixes it again).
        let logical = if prefix.as_os_str().is_empty() {
            found
        } else {
            found
                .strip_prefix(&prefix)
                .map(|p| Path::new("/").join(p))
                .unwrap_or(found)
        };
        info!(pod = %format!("{}/{}", pod.namespace, pod.name), netns = %logical.display(), "found the netns of a running pod by its IP");
        Some(logical)
    }

    /// One pass: enrol, adopt or release every pod as intent says.
    pub async fn reconcile(&self, snap: &Snapshot, startup: bool) {
        for pod in snap.pods.values() {
            let want = !pod.deleting
                && !pod.is_terminal()
                && self
                    .enrollment
                    .decide(pod, &snap.ns_labels(&pod.namespace))
                    .is_enroll();
            let cached = self.cache.lock().get(&pod.uid).map(|c| c.enabled);
            match (want, cached) {
                (true, Some(true)) => {}
                (true, _) => {
                    let Some(netns) = self.netns_candidate(pod).await else {
                        debug!(pod = %pod.name, "enrolment deferred: netns not known yet");
                        continue;
                    };
                    if startup && cached.is_none() && pod.redirection() == Some("enabled") {
                        self.adopt(pod, &netns, startup).await;
                    } else if let Err(e) = self.add_pod(pod, &netns).await {
                        warn!(pod = %format!("{}/{}", pod.namespace, pod.name), error = %e, "enrolment failed, will retry");
                    }
                }
                (false, Some(_)) => self.remove_pod(pod).await,
                (false, None) if pod.redirection().is_some() => self.remove_pod(pod).await,
                (false, None) => {}
            }
        }
        let gone: Vec<PodMeta> = self
            .cache
            .lock()
            .iter()
            .filter(|(uid, _)| !snap.pods.contains_key(*uid))
            .map(|(_, c)| PodMeta {
                deleting: true,
                ..c.pod.clone()
            })
            .collect();
        for pod in gone {
            self.remove_pod(&pod).await;
        }
        self.scan_backoff
            .lock()
            .retain(|uid, _| snap.pods.contains_key(uid));
    }

    /// A pod already annotated `enabled` (agent restart): reopen the netns, optionally
    /// re-apply its rules, cache it (the next ZDS snapshot names it).
    async fn adopt(&self, pod: &PodMeta, netns: &Path, reapply: bool) {
        let _g = self.op.lock().await;
        let file = File::open(self.host_path(netns)).ok().map(Arc::new);
        if file.is_some() && reapply && self.cfg.reconcile_pod_rules_on_startup {
            let (r, path, rc) = (
                self.rules.clone(),
                self.host_path(netns),
                self.pod_rules(pod),
            );
            if let Err(e) = blocking(move || r.apply_pod(&path, &rc)).await {
                warn!(pod = %pod.name, error = %e, "re-applying rules at startup failed");
            }
        }
        info!(pod = %format!("{}/{}", pod.namespace, pod.name), netns_held = file.is_some(), "adopted enrolled pod");
        self.insert(pod, netns, file, true);
    }

    fn host_path(&self, p: &Path) -> PathBuf {
        if self.cfg.host_prefix.as_os_str().is_empty() {
            p.to_owned()
        } else {
            self.cfg.host_prefix.join(p.strip_prefix("/").unwrap_or(p))
        }
    }

    fn insert(&self, pod: &PodMeta, netns: &Path, file: Option<Arc<File>>, enabled: bool) {
        self.cache.lock().insert(
            pod.uid.clone(),
            CachedPod {
                pod: pod.clone(),
                netns_path: netns.to_owned(),
                netns: file,
                enabled,
            },
        );
        self.persist();
    }

    fn persist(&self) {
        let state: BTreeMap<String, StateEntry> = self
            .cache
            .lock()
            .iter()
            .map(|(u, c)| {
                (
                    u.clone(),
                    StateEntry {
                        name: c.pod.name.clone(),
                        namespace: c.pod.namespace.clone(),
                        netns: c.netns_path.clone(),
                    },
                )
            })
            .collect();
        let bytes = serde_json::to_vec_pretty(&state).unwrap_or_default();
        if let Err(e) = crate::podsource::dir::atomic_write(&self.cfg.state_file(), &bytes) {
            warn!(error = %e, "writing the agent state file failed");
        }
        *self.saved.lock() = state;
    }

    /// The rules for `pod`: global settings with its annotations applied.
    pub fn pod_rules(&self, pod: &PodMeta) -> PodRuleConfig {
        let ann = |k: &str| pod.annotations.get(k).map(String::as_str);
        PodRuleConfig {
            backend: if self.cfg.native_nftables {
                Backend::Nftables
            } else {
                Backend::Iptables
            },
            ipv4: true,
            ipv6: self.cfg.ipv6,
            dns_capture: match ann(keys::DNS_CAPTURE) {
                Some("true") => true,
                Some("false") => false,
                _ => self.cfg.dns_capture,
            },
            bypass_inbound: ann(keys::BYPASS_INBOUND) == Some("true"),
            reroute_interfaces: ann(keys::REROUTE_INTERFACES)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// AddPodToMesh (see the module docs for the order).
    pub async fn add_pod(&self, pod: &PodMeta, netns: &Path) -> Result<(), AgentError> {
        let _g = self.op.lock().await;
        let name = format!("{}/{}", pod.namespace, pod.name);
        // 1. netns
        let path = self.host_path(netns);
        let file = Arc::new(File::open(&path).map_err(|source| AgentError::Netns {
            path: path.display().to_string(),
            source,
        })?);
        let was_enabled = self.cache.lock().get(&pod.uid).is_some_and(|c| c.enabled);
        self.insert(pod, netns, Some(file.clone()), was_enabled);
        // 2. rules
        let (r, p, rc) = (self.rules.clone(), path.clone(), self.pod_rules(pod));
        if let Err(source) = blocking(move || r.apply_pod(&p, &rc)).await {
            self.cache.lock().remove(&pod.uid);
            self.persist();
            return Err(AgentError::Rules { pod: name, source });
        }
        // 3. ZDS add to the newest ztunnel
        let zds_result = match self.zds() {
            Some(z) => z.add(&pod.uid, workload_info(pod), &*file).await,
            None => Err(ZdsError::NotConnected),
        };
        if let Err(source) = zds_result {
            if let Err(e) = self.source.set_redirection(pod, Some("pending")).await {
                debug!(pod = %name, error = %e, "annotating pending failed");
            }
            return Err(AgentError::Zds { pod: name, source });
        }
        // 4. probe set
        let (r, uid, ips) = (self.rules.clone(), pod.uid.clone(), pod.ips.clone());
        blocking(move || r.host_add_pod(&uid, &ips))
            .await
            .map_err(|source| AgentError::Probe {
                pod: name.clone(),
                source,
            })?;
        // 5. annotation
        self.source
            .set_redirection(pod, Some("enabled"))
            .await
            .map_err(|source| AgentError::Annotate {
                pod: name.clone(),
                source,
            })?;
        if let Some(c) = self.cache.lock().get_mut(&pod.uid) {
            c.enabled = true;
        }
        metrics::counter!("cni_pods_enrolled_total").increment(1);
        info!(pod = %name, uid = %pod.uid, "pod enrolled in the mesh");
        Ok(())
    }

    /// RemovePodFromMesh (best effort: every step runs, failures are logged).
    pub async fn remove_pod(&self, pod: &PodMeta) {
        let _g = self.op.lock().await;
        let name = format!("{}/{}", pod.namespace, pod.name);
        let cached = self.cache.lock().get(&pod.uid).cloned();
        // 1. probe set
        let (r, uid) = (self.rules.clone(), pod.uid.clone());
        if let Err(e) = blocking(move || r.host_remove_pod(&uid)).await {
            warn!(pod = %name, error = %e, "removing pod from the probe set failed");
        }
        // 2. in-pod rules, if the netns still exists and the pod is not going away
        if let Some(c) = &cached {
            let path = self.host_path(&c.netns_path);
            if !pod.deleting && path.exists() {
                let r = self.rules.clone();
                if let Err(e) = blocking(move || r.remove_pod(&path)).await {
                    warn!(pod = %name, error = %e, "removing in-pod rules failed");
                }
            }
        }
        // 3. ZDS del to all
        if let Some(z) = self.zds()
            && let Err(e) = z.del(&pod.uid).await
        {
            warn!(pod = %name, error = %e, "ZDS del failed");
        }
        // 4. annotation
        if pod.redirection().is_some() || cached.is_some() {
            match self.source.set_redirection(pod, None).await {
                Ok(()) => {}
                Err(e) if pod.deleting => {
                    debug!(pod = %name, error = %e, "unannotating a deleted pod")
                }
                Err(e) => {
                    warn!(pod = %name, error = %e, "removing the redirection annotation failed")
                }
            }
        }
        if self.cache.lock().remove(&pod.uid).is_some() {
            self.persist();
            info!(pod = %name, uid = %pod.uid, "pod removed from the mesh");
        }
    }

    /// The plugin's `cmdadd`: look the pod up (10 tries, 10 ms apart), check the selectors,
    /// enrol it with the netns from the request.
    pub async fn handle_cmdadd(&self, req: &CmdAdd) -> Result<(), AgentError> {
        let mut found = None;
        for _ in 0..10 {
            if let Ok(Some(p)) = self.source.get_pod(&req.pod_namespace, &req.pod_name).await {
                found = Some(p);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let Some((mut pod, ns_labels)) = found else {
            return Err(AgentError::PodNotFound(format!(
                "{}/{}",
                req.pod_namespace, req.pod_name
            )));
        };
        if !self.enrollment.decide(&pod, &ns_labels).is_enroll() {
            info!(pod = %pod.name, "cmdadd for a pod that is not ambient: nothing to do");
            return Ok(());
        }
        if pod.ips.is_empty() {
            pod.ips = req.ips();
        }
        self.add_pod(&pod, Path::new(&req.netns)).await
    }
}

/// `WorkloadInfo` for a pod.
pub fn workload_info(pod: &PodMeta) -> WorkloadInfo {
    WorkloadInfo {
        name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        service_account: pod.service_account.clone(),
    }
}

async fn blocking<F>(f: F) -> Result<(), RuleFailure>
where
    F: FnOnce() -> Result<(), RuleFailure> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(RuleFailure(format!("rule task failed: {e}"))))
}

/// The plugin's `/cmdadd` body (Istio's field names).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CmdAdd {
    /// `CNI_NETNS`.
    #[serde(rename = "Netns")]
    pub netns: String,
    /// Pod name.
    #[serde(rename = "PodName")]
    pub pod_name: String,
    /// Pod namespace.
    #[serde(rename = "PodNamespace")]
    pub pod_namespace: String,
    /// IPs from the previous plugin's result.
    #[serde(rename = "IPs", default)]
    pub ips: Vec<CmdAddIp>,
}

/// One IP of [`CmdAdd`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CmdAddIp {
    /// Interface index in the result, if any.
    #[serde(rename = "Interface", default)]
    pub interface: Option<i64>,
    /// Address.
    #[serde(rename = "Address")]
    pub address: CmdAddAddress,
    /// Gateway.
    #[serde(rename = "Gateway", default)]
    pub gateway: Option<String>,
}

/// `IPNet` as Go marshals it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CmdAddAddress {
    /// The address.
    #[serde(rename = "IP")]
    pub ip: String,
    /// Base64 mask bytes.
    #[serde(rename = "Mask", default)]
    pub mask: String,
}

impl CmdAdd {
    /// The parsed IPs.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.ips
            .iter()
            .filter_map(|i| i.address.ip.parse().ok())
            .collect()
    }
}

#[cfg(test)]
mod tests;

//! The workload proxy manager: turns ZDS requests into per-pod proxies.
//!
//! The manager owns one [`PodProxyHandle`] per enrolled pod and drives the app's
//! [`PodProxyFactory`]:
//!
//! | request | effect |
//! |---|---|
//! | `add` (new uid) | start the pod's proxy (listeners inside its netns); ACK once listening |
//! | `add` (known uid, same netns inode) | no-op ACK |
//! | `add` (known uid, other netns) | drain the old proxy, start a new one |
//! | `add` (pending uid) | retry the start now, with the new netns |
//! | start failure | NACK with the reason; the pod stays *pending* and is retried every [`ManagerConfig::pending_retry_interval`] (5 s) |
//! | `del` | drain the pod's proxy immediately, forget it (also when pending); ACK |
//! | `keep` | remember the uid as present (snapshot) |
//! | `snapshot_sent` | drain every proxy whose uid was not named (add/keep) since this connection started, drop unnamed pending pods; the snapshot is done |
//! | connection lost | not ready until the next `snapshot_sent` |
//! | shutdown | drain every proxy gracefully ([`ManagerConfig::shutdown_drain_timeout`]) |
//!
//! Removals (`del`, replacement, reconcile) drain with a zero grace period: the pod (or its
//! sandbox) is gone, so there is nothing to wait for. Readiness ([`WorkloadProxyManager::readiness`])
//! is `true` exactly when the current connection's `snapshot_sent` was processed and no pod is
//! pending. A fatal ZDS protocol error stops the manager: every proxy is drained and
//! [`WorkloadProxyManager::run`] returns the error.
//!
//! Metrics (Istio's names, no `istio_` prefix): gauges `workload_manager_active_proxy_count`,
//! `workload_manager_pending_proxy_count`; counters `workload_manager_proxies_started_total`,
//! `workload_manager_proxies_stopped_total`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::netns::{InPodSocketFactory, NetnsHandle, NetnsId};
use super::zds::{ZdsClient, ZdsConfig, ZdsError, ZdsEvent, ZdsRequest};

/// Gauge: pods with a running proxy.
pub const METRIC_ACTIVE: &str = "workload_manager_active_proxy_count";
/// Gauge: pods whose proxy failed to start and is being retried.
pub const METRIC_PENDING: &str = "workload_manager_pending_proxy_count";
/// Counter: proxies started.
pub const METRIC_STARTED: &str = "workload_manager_proxies_started_total";
/// Counter: proxies stopped (drain begun).
pub const METRIC_STOPPED: &str = "workload_manager_proxies_stopped_total";

/// Who a pod is, as the node agent told us.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    /// Kubernetes pod UID.
    pub uid: String,
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod service account (may be empty; WDS normalises it to `default`).
    pub service_account: String,
}

impl fmt::Display for PodInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ({})", self.namespace, self.name, self.uid)
    }
}

/// Drains a pod proxy within the given grace period; resolves once it is gone.
pub type DrainFn = Box<dyn FnOnce(Duration) -> BoxFuture<'static, ()> + Send>;

/// A running pod proxy, as far as the manager is concerned: something it can drain.
pub struct PodProxyHandle {
    drain: DrainFn,
}

impl fmt::Debug for PodProxyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodProxyHandle").finish_non_exhaustive()
    }
}

impl PodProxyHandle {
    /// Wraps the proxy's drain function: called once with the grace period (zero = close
    /// everything now).
    pub fn new<F>(drain: F) -> Self
    where
        F: FnOnce(Duration) -> BoxFuture<'static, ()> + Send + 'static,
    {
        PodProxyHandle {
            drain: Box::new(drain),
        }
    }

    /// Starts draining; the future resolves once the proxy is gone.
    pub fn drain(self, grace: Duration) -> BoxFuture<'static, ()> {
        (self.drain)(grace)
    }
}

/// Starts pod proxies; implemented by the app.
pub trait PodProxyFactory: Send + Sync + 'static {
    /// Starts the proxy for one pod: listeners inside its netns. Resolves once listening.
    fn start(
        &self,
        pod: PodInfo,
        sockets: Arc<InPodSocketFactory>,
    ) -> BoxFuture<'static, Result<PodProxyHandle, String>>;
}

/// Manager settings.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// The ZDS client.
    pub zds: ZdsConfig,
    /// `SO_MARK` for pod sockets (`PACKET_MARK`, 1337 in shared mode).
    pub packet_mark: Option<u32>,
    /// `SO_REUSEPORT` on in-pod listeners (`INPOD_PORT_REUSE`).
    pub reuse_port: bool,
    /// Retry interval of pods whose proxy failed to start (5 s).
    pub pending_retry_interval: Duration,
    /// Grace period of the drains at shutdown.
    pub shutdown_drain_timeout: Duration,
}

impl ManagerConfig {
    /// Istio's defaults for the socket at `uds_path`: mark 1337, port reuse, 5 s retries,
    /// 30 s shutdown drain.
    pub fn new(uds_path: impl Into<std::path::PathBuf>) -> Self {
        ManagerConfig {
            zds: ZdsConfig::new(uds_path),
            packet_mark: Some(1337),
            reuse_port: true,
            pending_retry_interval: Duration::from_secs(5),
            shutdown_drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the manager stopped.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The node agent violated the protocol.
    #[error("workload manager stopped: {0}")]
    Protocol(#[from] ZdsError),
    /// The ZDS client task ended unexpectedly.
    #[error("workload manager stopped: the ZDS client task ended unexpectedly")]
    ClientStopped,
}

/// Lifecycle phase of one pod proxy, for `/config_dump`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ProxyPhase {
    /// Listening.
    Up,
    /// Start failed; retried.
    Pending,
    /// Being drained.
    Draining,
}

/// One pod in `workloadState`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadProxyState {
    /// Phase.
    pub state: ProxyPhase,
    /// Last start error, when pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    /// The pod.
    pub info: PodInfo,
}

/// `workloadState` of `/config_dump`: per pod UID.
pub type WorkloadStateDump = BTreeMap<String, WorkloadProxyState>;

#[derive(Default)]
struct View {
    entries: WorkloadStateDump,
    draining: HashMap<u64, PodInfo>,
    next_drain_id: u64,
}

/// Read side of the manager's state (cheap to clone; usable after `run` consumed the manager).
#[derive(Clone, Default)]
pub struct WorkloadStateView {
    view: Arc<Mutex<View>>,
}

impl fmt::Debug for WorkloadStateView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadStateView").finish_non_exhaustive()
    }
}

impl WorkloadStateView {
    /// The current per-pod state; a pod both draining (old netns) and up shows as up.
    pub fn state(&self) -> WorkloadStateDump {
        let view = self.view.lock();
        let mut out = view.entries.clone();
        for pod in view.draining.values() {
            out.entry(pod.uid.clone())
                .or_insert_with(|| WorkloadProxyState {
                    state: ProxyPhase::Draining,
                    pending_reason: None,
                    info: pod.clone(),
                });
        }
        out
    }
}

struct Running {
    pod: PodInfo,
    netns: NetnsId,
    handle: PodProxyHandle,
}

struct Pending {
    pod: PodInfo,
    netns: NetnsHandle,
    reason: String,
}

/// The manager's mutable state, owned by the `run` task.
#[derive(Default)]
struct Inner {
    proxies: HashMap<String, Running>,
    pending: HashMap<String, Pending>,
    /// Uids named (add/keep) since this connection started.
    seen: HashSet<String>,
    snapshot_done: bool,
    drains: JoinSet<()>,
    next_retry: Option<Instant>,
}

/// Drives pod proxies from the ZDS stream. See the module docs.
pub struct WorkloadProxyManager {
    cfg: ManagerConfig,
    factory: Arc<dyn PodProxyFactory>,
    view: WorkloadStateView,
    ready: watch::Sender<bool>,
}

impl fmt::Debug for WorkloadProxyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadProxyManager")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl WorkloadProxyManager {
    /// A manager that will connect per `cfg` and start proxies with `factory`.
    pub fn new(cfg: ManagerConfig, factory: Arc<dyn PodProxyFactory>) -> Self {
        let (ready, _) = watch::channel(false);
        WorkloadProxyManager {
            cfg,
            factory,
            view: WorkloadStateView::default(),
            ready,
        }
    }

    /// Readiness: `true` once the snapshot was processed and no pod is pending.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// A handle on the per-pod state, for `/config_dump`'s `workloadState`.
    pub fn state_view(&self) -> WorkloadStateView {
        self.view.clone()
    }

    /// The current per-pod state.
    pub fn state(&self) -> WorkloadStateDump {
        self.view.state()
    }

    /// Runs until `shutdown` resolves (`Ok`) or a fatal protocol error (`Err`); in both cases
    /// every proxy is drained before returning, and readiness is `false`.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ManagerError> {
        let (tx, mut rx) = mpsc::channel(1);
        let client = tokio::spawn(ZdsClient::new(self.cfg.zds.clone()).run(tx));
        tokio::pin!(shutdown);
        let mut inner = Inner::default();
        self.publish(&inner);
        let result = loop {
            let retry_at = inner.next_retry;
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                event = rx.recv() => match event {
                    Some(ZdsEvent::Request { request, reply }) => {
                        let outcome = self.handle(&mut inner, request).await;
                        let _ = reply.send(outcome);
                    }
                    Some(ZdsEvent::Disconnected) => {
                        inner.snapshot_done = false;
                        inner.seen.clear();
                        self.publish(&inner);
                    }
                    Some(ZdsEvent::Fatal(e)) => break Err(ManagerError::Protocol(e)),
                    None => break Err(ManagerError::ClientStopped),
                },
                _ = sleep_until(retry_at), if retry_at.is_some() => {
                    self.retry_pending(&mut inner).await;
                }
                Some(_) = inner.drains.join_next(), if !inner.drains.is_empty() => {}
            }
        };
        client.abort();
        self.ready.send_replace(false);
        self.shutdown(&mut inner).await;
        result
    }

    async fn handle(&self, inner: &mut Inner, request: ZdsRequest) -> Result<(), String> {
        debug!(kind = request.kind(), "ZDS request");
        let outcome = match request {
            ZdsRequest::Add { pod, netns } => self.add(inner, pod, netns).await,
            ZdsRequest::Keep { uid } => {
                inner.seen.insert(uid);
                Ok(())
            }
            ZdsRequest::Del { uid } => {
                inner.seen.remove(&uid);
                if inner.pending.remove(&uid).is_some() {
                    info!(%uid, "removed pending pod");
                }
                if let Some(running) = inner.proxies.remove(&uid) {
                    info!(pod = %running.pod, "pod removed, draining its proxy");
                    self.drain_in_background(inner, running);
                }
                Ok(())
            }
            ZdsRequest::SnapshotSent => {
                let stale: Vec<String> = inner
                    .proxies
                    .keys()
                    .filter(|uid| !inner.seen.contains(*uid))
                    .cloned()
                    .collect();
                for uid in stale {
                    if let Some(running) = inner.proxies.remove(&uid) {
                        info!(pod = %running.pod, "pod not in the node agent's snapshot, draining its proxy");
                        self.drain_in_background(inner, running);
                    }
                }
                let seen = &inner.seen;
                inner.pending.retain(|uid, _| seen.contains(uid));
                inner.snapshot_done = true;
                info!(
                    active = inner.proxies.len(),
                    pending = inner.pending.len(),
                    "ZDS snapshot processed"
                );
                Ok(())
            }
        };
        self.publish(inner);
        outcome
    }

    async fn add(&self, inner: &mut Inner, pod: PodInfo, netns: NetnsHandle) -> Result<(), String> {
        inner.seen.insert(pod.uid.clone());
        if let Some(running) = inner.proxies.get(&pod.uid) {
            if running.netns == netns.id() {
                debug!(%pod, netns = %netns.id(), "duplicate add, proxy already running");
                return Ok(());
            }
            let running = inner.proxies.remove(&pod.uid).expect("present");
            info!(%pod, old = %running.netns, new = %netns.id(), "pod network namespace changed, replacing its proxy");
            self.drain_in_background(inner, running);
        }
        inner.pending.remove(&pod.uid);
        match self.start(inner, pod.clone(), netns.clone()).await {
            Ok(()) => Ok(()),
            Err(reason) => {
                warn!(%pod, %reason, "starting pod proxy failed; pending, will retry");
                inner.pending.insert(
                    pod.uid.clone(),
                    Pending {
                        pod,
                        netns,
                        reason: reason.clone(),
                    },
                );
                if inner.next_retry.is_none() {
                    inner.next_retry = Some(Instant::now() + self.cfg.pending_retry_interval);
                }
                Err(reason)
            }
        }
    }

    /// Starts a proxy and records it as running.
    async fn start(
        &self,
        inner: &mut Inner,
        pod: PodInfo,
        netns: NetnsHandle,
    ) -> Result<(), String> {
        let id = netns.id();
        let sockets = Arc::new(InPodSocketFactory::new(
            netns,
            self.cfg.packet_mark,
            self.cfg.reuse_port,
        ));
        let handle = self.factory.start(pod.clone(), sockets).await?;
        info!(%pod, netns = %id, "pod proxy started");
        metrics::counter!(METRIC_STARTED).increment(1);
        inner.proxies.insert(
            pod.uid.clone(),
            Running {
                pod,
                netns: id,
                handle,
            },
        );
        Ok(())
    }

    async fn retry_pending(&self, inner: &mut Inner) {
        inner.next_retry = None;
        let uids: Vec<String> = inner.pending.keys().cloned().collect();
        for uid in uids {
            let Some(p) = inner.pending.remove(&uid) else {
                continue;
            };
            match self.start(inner, p.pod.clone(), p.netns.clone()).await {
                Ok(()) => info!(pod = %p.pod, "pending pod proxy started on retry"),
                Err(reason) => {
                    debug!(pod = %p.pod, %reason, "pending pod proxy still failing");
                    inner.pending.insert(uid, Pending { reason, ..p });
                }
            }
        }
        if !inner.pending.is_empty() {
            inner.next_retry = Some(Instant::now() + self.cfg.pending_retry_interval);
        }
        self.publish(inner);
    }

    /// Drains a removed proxy immediately, tracking it as draining until done.
    fn drain_in_background(&self, inner: &mut Inner, running: Running) {
        metrics::counter!(METRIC_STOPPED).increment(1);
        let id = {
            let mut view = self.view.view.lock();
            let id = view.next_drain_id;
            view.next_drain_id += 1;
            view.draining.insert(id, running.pod);
            id
        };
        let drain = running.handle.drain(Duration::ZERO);
        let view = self.view.view.clone();
        inner.drains.spawn(async move {
            drain.await;
            view.lock().draining.remove(&id);
        });
    }

    /// Publishes gauges, the state view and readiness after a change.
    fn publish(&self, inner: &Inner) {
        metrics::gauge!(METRIC_ACTIVE).set(inner.proxies.len() as f64);
        metrics::gauge!(METRIC_PENDING).set(inner.pending.len() as f64);
        let mut entries = WorkloadStateDump::new();
        for (uid, r) in &inner.proxies {
            entries.insert(
                uid.clone(),
                WorkloadProxyState {
                    state: ProxyPhase::Up,
                    pending_reason: None,
                    info: r.pod.clone(),
                },
            );
        }
        for (uid, p) in &inner.pending {
            entries.insert(
                uid.clone(),
                WorkloadProxyState {
                    state: ProxyPhase::Pending,
                    pending_reason: Some(p.reason.clone()),
                    info: p.pod.clone(),
                },
            );
        }
        self.view.view.lock().entries = entries;
        let ready = inner.snapshot_done && inner.pending.is_empty();
        self.ready.send_if_modified(|r| {
            let changed = *r != ready;
            *r = ready;
            changed
        });
    }

    /// Drains everything gracefully.
    async fn shutdown(&self, inner: &mut Inner) {
        inner.pending.clear();
        inner.next_retry = None;
        let grace = self.cfg.shutdown_drain_timeout;
        let running: Vec<Running> = inner.proxies.drain().map(|(_, r)| r).collect();
        info!(count = running.len(), ?grace, "draining all pod proxies");
        for r in running {
            metrics::counter!(METRIC_STOPPED).increment(1);
            inner.drains.spawn(r.handle.drain(grace));
        }
        inner.snapshot_done = false;
        self.publish(inner);
        // The drains enforce `grace` themselves; the margin only guards against a stuck one.
        let all = async { while inner.drains.join_next().await.is_some() {} };
        if tokio::time::timeout(grace + Duration::from_secs(1), all)
            .await
            .is_err()
        {
            warn!("pod proxy drains did not finish in time; aborting them");
            inner.drains.abort_all();
        }
        self.view.view.lock().draining.clear();
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

//! The certificate manager: one certificate per workload identity, fetched from a CA on first
//! need, refreshed at half life in the background, dropped when no local workload needs it.
//!
//! * [`CertManager::certificate`] (also the [`hbone::CertificateSource`] impl) returns the
//!   current certificate, or waits for a RealTime fetch; if that fetch fails, the caller gets
//!   [`CertError::Unavailable`] with the reason (never an endless wait). While an identity is
//!   in failure backoff without a usable certificate, callers get the last error at once.
//!   [`CertManager::managed_certificate`] does the same for identities already managed only.
//! * [`CertManager::prefetch`] queues a Warmup fetch for a workload that appeared on the node;
//!   [`CertManager::forget`] drops the certificate and cancels its refresh.
//! * At most [`ManagerConfig::max_in_flight`] CSRs are in flight; queued requests start in
//!   priority order RealTime > Warmup > Background, first come first served within a priority.
//!   A request for an identity already queued or in flight joins it (and upgrades a queued
//!   request's priority).
//! * Refresh at `not_before + lifetime/2` ± [`ManagerConfig::refresh_jitter`] × lifetime; the
//!   old certificate stays in use until the new one arrives.
//! * Failures back off per identity (500 ms, ×2, jitter 0.2, at most 150 s); an unexpired
//!   certificate is kept, and a retry is never scheduled after its expiry.
//!
//! Time: the manager reads wall-clock time once at start and advances it with Tokio's clock
//! (never falling behind the wall clock), so tests with paused time see a consistent world
//! (`start_paused = true`).
//!
//! # Metrics
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `identity_csr_requests_total` | counter | `result` (`success`/`failure`), `priority` | CSRs sent to the CA |
//! | `identity_csr_duration_seconds` | histogram | `result` | CA round-trip time |
//! | `identity_csr_in_flight` | gauge | | CSRs currently in flight |
//! | `identity_certificates` | gauge | | identities holding a certificate |

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hbone::cert::BoxFuture;
use hbone::{CertError, CertificateSource, Identity, WorkloadCertificate};
use parking_lot::Mutex;
use rand::Rng;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::client::CaClientError;

/// Where certificates come from: the CA client in production, scripted in tests.
pub trait CertificateProvider: Send + Sync + 'static {
    /// Obtains a new certificate (with its key and roots) for `identity`.
    fn fetch<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> BoxFuture<'a, Result<WorkloadCertificate, CaClientError>>;
}

/// How urgent a fetch is. Lower sorts first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Priority {
    /// A connection is waiting for the certificate.
    RealTime,
    /// A workload appeared on this node.
    Warmup,
    /// Refresh or retry of a certificate nobody is waiting for.
    Background,
}

impl Priority {
    fn label(self) -> &'static str {
        match self {
            Priority::RealTime => "realtime",
            Priority::Warmup => "warmup",
            Priority::Background => "background",
        }
    }
}

/// Per-identity failure backoff.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Backoff {
    pub initial: Duration,
    pub multiplier: f64,
    /// Relative jitter: each delay is multiplied by a random factor in `[1-j, 1+j]`.
    pub jitter: f64,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            multiplier: 2.0,
            jitter: 0.2,
            max: Duration::from_secs(150),
        }
    }
}

impl Backoff {
    /// The delay before retry number `failures` (1 = after the first failure).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(64) as i32;
        let base = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        let base = base.min(self.max.as_secs_f64());
        let factor = if self.jitter > 0.0 {
            rand::rng().random_range(1.0 - self.jitter..=1.0 + self.jitter)
        } else {
            1.0
        };
        Duration::from_secs_f64((base * factor).min(self.max.as_secs_f64()).max(0.0))
    }
}

/// Tuning of the manager.
#[derive(Debug, Clone, Serialize)]
pub struct ManagerConfig {
    /// CSRs in flight at once.
    pub max_in_flight: usize,
    pub backoff: Backoff,
    /// Refresh time jitter, as a fraction of the certificate lifetime (0.05 = ±5 %).
    pub refresh_jitter: f64,
    /// Never refresh sooner than this after a certificate arrives (guards against CAs that
    /// issue certificates already past their half life).
    pub min_refresh_delay: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            max_in_flight: 8,
            backoff: Backoff::default(),
            refresh_jitter: 0.05,
            min_refresh_delay: Duration::from_secs(1),
        }
    }
}

/// Certificates for the workload identities on this node. Cheap to clone.
#[derive(Clone)]
pub struct CertManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.state.lock();
        f.debug_struct("CertManager")
            .field("identities", &st.entries.len())
            .field("in_flight", &st.in_flight)
            .field("queued", &st.queue.len())
            .finish()
    }
}

struct Inner {
    provider: Arc<dyn CertificateProvider>,
    config: ManagerConfig,
    clock: Clock,
    runtime: tokio::runtime::Handle,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<Identity, Entry>,
    /// Queued fetches: (priority, arrival) → identity.
    queue: BTreeMap<(Priority, u64), Identity>,
    next_seq: u64,
    in_flight: usize,
}

impl State {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetch {
    Idle,
    Queued { priority: Priority, seq: u64 },
    InFlight { priority: Priority },
}

struct Entry {
    /// Distinguishes this entry from an earlier one for the same identity (forget + reuse).
    generation: u64,
    cert: Option<Arc<WorkloadCertificate>>,
    last_error: Option<String>,
    failures: u32,
    fetch: Fetch,
    /// Next refresh/retry: when, and the timer task's token and handle.
    timer: Option<(SystemTime, u64, AbortHandle)>,
    /// Bumped after every completed attempt; dropped with the entry.
    done: watch::Sender<u64>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some((_, _, handle)) = self.timer.take() {
            handle.abort();
        }
    }
}

impl Entry {
    fn usable(&self, now: SystemTime) -> Option<&Arc<WorkloadCertificate>> {
        self.cert.as_ref().filter(|c| !c.is_expired_at(now))
    }

    fn state(&self, now: SystemTime) -> CertState {
        if self.usable(now).is_some() {
            CertState::Available
        } else if let Some(e) = &self.last_error {
            CertState::Unavailable(e.clone())
        } else if self.cert.is_some() {
            CertState::Unavailable("certificate expired".into())
        } else {
            CertState::Initializing
        }
    }
}

/// Wall-clock time advanced by Tokio's clock.
struct Clock {
    system: SystemTime,
    instant: tokio::time::Instant,
}

impl Clock {
    fn new() -> Self {
        Clock {
            system: SystemTime::now(),
            instant: tokio::time::Instant::now(),
        }
    }

    /// The later of the wall clock and the anchored clock: paused test time moves only the
    /// latter, while a host that was suspended (monotonic time stood still) is caught up by
    /// the former.
    fn now(&self) -> SystemTime {
        (self.system + self.instant.elapsed()).max(SystemTime::now())
    }
}

impl CertManager {
    /// A manager with default tuning. Must be called inside a Tokio runtime (its tasks run
    /// there).
    pub fn new(provider: Arc<dyn CertificateProvider>) -> Self {
        Self::with_config(provider, ManagerConfig::default())
    }

    /// A manager with the given tuning. Must be called inside a Tokio runtime.
    pub fn with_config(provider: Arc<dyn CertificateProvider>, mut config: ManagerConfig) -> Self {
        config.max_in_flight = config.max_in_flight.max(1);
        CertManager {
            inner: Arc::new(Inner {
                provider,
                config,
                clock: Clock::new(),
                runtime: tokio::runtime::Handle::current(),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Registers the metrics' descriptions with the installed recorder.
    pub fn describe_metrics() {
        metrics::describe_counter!(
            "identity_csr_requests_total",
            "CSRs sent to the CA, by result and priority"
        );
        metrics::describe_histogram!(
            "identity_csr_duration_seconds",
            metrics::Unit::Seconds,
            "CA round-trip time of a CSR"
        );
        metrics::describe_gauge!("identity_csr_in_flight", "CSRs currently in flight");
        metrics::describe_gauge!(
            "identity_certificates",
            "workload identities holding a certificate"
        );
    }

    /// The current certificate of `identity`, fetching it (RealTime) if there is none.
    pub async fn certificate(
        &self,
        identity: &Identity,
    ) -> Result<Arc<WorkloadCertificate>, CertError> {
        self.get(identity, true).await
    }

    /// Like [`CertManager::certificate`], but only for an identity already managed (prefetched
    /// and not forgotten): an unknown identity is an error instead of a new entry, so a caller
    /// that outlives its workload cannot bring a forgotten certificate back.
    pub async fn managed_certificate(
        &self,
        identity: &Identity,
    ) -> Result<Arc<WorkloadCertificate>, CertError> {
        self.get(identity, false).await
    }

    async fn get(
        &self,
        identity: &Identity,
        create: bool,
    ) -> Result<Arc<WorkloadCertificate>, CertError> {
        loop {
            let mut done = {
                let mut st = self.inner.state.lock();
                let now = self.inner.clock.now();
                if !create && !st.entries.contains_key(identity) {
                    return Err(CertError::Unavailable {
                        identity: identity.clone(),
                        reason: "no local workload uses this identity".into(),
                    });
                }
                let entry = self.inner.entry(&mut st, identity);
                if let Some(cert) = entry.usable(now) {
                    return Ok(cert.clone());
                }
                if entry.fetch == Fetch::Idle
                    && let Some(reason) = &entry.last_error
                {
                    return Err(CertError::Unavailable {
                        identity: identity.clone(),
                        reason: reason.clone(),
                    });
                }
                let done = entry.done.subscribe();
                self.inner.enqueue(&mut st, identity, Priority::RealTime);
                self.inner.pump(&mut st);
                done
            };
            if done.changed().await.is_err() {
                return Err(CertError::Unavailable {
                    identity: identity.clone(),
                    reason: "the identity was forgotten (its last local workload left)".into(),
                });
            }
        }
    }

    /// The certificate held for `identity`, if any and unexpired; never fetches.
    pub fn current(&self, identity: &Identity) -> Option<Arc<WorkloadCertificate>> {
        let st = self.inner.state.lock();
        let now = self.inner.clock.now();
        st.entries
            .get(identity)
            .and_then(|e| e.usable(now))
            .cloned()
    }

    /// Starts fetching a certificate for a workload that appeared on this node (Warmup), unless
    /// one is held, being fetched, or waiting for a retry.
    pub fn prefetch(&self, identity: &Identity) {
        let mut st = self.inner.state.lock();
        let now = self.inner.clock.now();
        let entry = self.inner.entry(&mut st, identity);
        if entry.usable(now).is_some() || entry.fetch != Fetch::Idle || entry.timer.is_some() {
            return;
        }
        self.inner.enqueue(&mut st, identity, Priority::Warmup);
        self.inner.pump(&mut st);
    }

    /// Queues a Background refresh of an identity already managed (for example after the
    /// trust roots rotated). Unknown identities are ignored.
    pub fn refresh(&self, identity: &Identity) {
        let mut st = self.inner.state.lock();
        if st.entries.contains_key(identity) {
            self.inner.enqueue(&mut st, identity, Priority::Background);
            self.inner.pump(&mut st);
        }
    }

    /// Drops the certificate of `identity` and cancels its refresh (the last workload with
    /// it left). Connections already established keep their TLS session.
    pub fn forget(&self, identity: &Identity) {
        let mut st = self.inner.state.lock();
        if let Some(entry) = st.entries.remove(identity) {
            if let Fetch::Queued { priority, seq } = entry.fetch {
                st.queue.remove(&(priority, seq));
            }
            drop(entry);
            tracing::debug!(%identity, "certificate forgotten");
        }
        self.inner.update_gauges(&st);
    }

    /// The identities currently managed.
    pub fn identities(&self) -> Vec<Identity> {
        let st = self.inner.state.lock();
        let mut ids: Vec<_> = st.entries.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// A debug view of every identity, sorted by identity.
    pub fn snapshot(&self) -> Vec<CertSnapshot> {
        let st = self.inner.state.lock();
        let now = self.inner.clock.now();
        let mut out: Vec<CertSnapshot> = st
            .entries
            .iter()
            .map(|(id, e)| {
                let cert = e.cert.as_deref();
                CertSnapshot {
                    identity: id.to_string(),
                    state: e.state(now),
                    cert_chain: cert
                        .map(|c| c.chain().iter().map(|d| CertInfo::from_der(d)).collect())
                        .unwrap_or_default(),
                    root_certs: cert
                        .map(|c| c.roots().iter().map(|d| CertInfo::from_der(d)).collect())
                        .unwrap_or_default(),
                    serial: cert.map(|c| c.serial().to_string()),
                    refresh_at: e.timer.as_ref().map(|(at, _, _)| *at),
                    fetching: match e.fetch {
                        Fetch::Idle => None,
                        Fetch::Queued { priority, .. } | Fetch::InFlight { priority } => {
                            Some(priority)
                        }
                    },
                    last_error: e.last_error.clone(),
                    consecutive_failures: e.failures,
                }
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }
}

impl CertificateSource for CertManager {
    fn certificate<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> BoxFuture<'a, Result<Arc<WorkloadCertificate>, CertError>> {
        Box::pin(CertManager::certificate(self, identity))
    }
}

impl Inner {
    fn entry<'s>(&self, st: &'s mut State, identity: &Identity) -> &'s mut Entry {
        if !st.entries.contains_key(identity) {
            let generation = st.seq();
            st.entries.insert(
                identity.clone(),
                Entry {
                    generation,
                    cert: None,
                    last_error: None,
                    failures: 0,
                    fetch: Fetch::Idle,
                    timer: None,
                    done: watch::Sender::new(0),
                },
            );
        }
        st.entries
            .get_mut(identity)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// Queues a fetch, or upgrades a queued one; joins one in flight.
    fn enqueue(&self, st: &mut State, identity: &Identity, priority: Priority) {
        let seq = st.seq();
        let Some(entry) = st.entries.get_mut(identity) else {
            return;
        };
        match entry.fetch {
            Fetch::InFlight { .. } => return,
            Fetch::Queued { priority: p, .. } if p <= priority => return,
            Fetch::Queued {
                priority: p,
                seq: old,
            } => {
                st.queue.remove(&(p, old));
            }
            Fetch::Idle => {}
        }
        entry.fetch = Fetch::Queued { priority, seq };
        st.queue.insert((priority, seq), identity.clone());
    }

    /// Starts queued fetches while there is room.
    fn pump(self: &Arc<Self>, st: &mut State) {
        while st.in_flight < self.config.max_in_flight {
            let Some(((priority, _), identity)) = st.queue.pop_first() else {
                break;
            };
            let Some(entry) = st.entries.get_mut(&identity) else {
                continue;
            };
            entry.fetch = Fetch::InFlight { priority };
            let generation = entry.generation;
            st.in_flight += 1;
            let guard = FetchGuard {
                inner: self.clone(),
                identity,
                generation,
                priority,
                started: tokio::time::Instant::now(),
                finished: false,
            };
            self.runtime.spawn(guard.run());
        }
        self.update_gauges(st);
    }

    /// Records the outcome of a fetch and schedules what comes next.
    fn finish(
        self: &Arc<Self>,
        identity: &Identity,
        generation: u64,
        priority: Priority,
        elapsed: Duration,
        result: Result<WorkloadCertificate, String>,
    ) {
        let label = if result.is_ok() { "success" } else { "failure" };
        metrics::counter!(
            "identity_csr_requests_total",
            "result" => label,
            "priority" => priority.label()
        )
        .increment(1);
        metrics::histogram!("identity_csr_duration_seconds", "result" => label)
            .record(elapsed.as_secs_f64());

        let mut st = self.state.lock();
        st.in_flight -= 1;
        let now = self.clock.now();
        let live = st
            .entries
            .get(identity)
            .is_some_and(|e| e.generation == generation);
        if live {
            let (at, next_priority) = {
                let Some(entry) = st.entries.get_mut(identity) else {
                    unreachable!("checked above")
                };
                entry.fetch = Fetch::Idle;
                match result {
                    Ok(cert) => {
                        tracing::info!(
                            %identity,
                            serial = cert.serial(),
                            ?priority,
                            "workload certificate received"
                        );
                        let at = self.refresh_time(&cert, now);
                        entry.cert = Some(Arc::new(cert));
                        entry.last_error = None;
                        entry.failures = 0;
                        (at, Priority::Background)
                    }
                    Err(reason) => {
                        entry.failures += 1;
                        let mut at = now + self.config.backoff.delay(entry.failures);
                        // Keep an unexpired certificate and retry no later than its expiry
                        // (strictly in the future, so a retry at expiry cannot spin).
                        let next = match entry.cert.as_ref().filter(|c| c.not_after() > now) {
                            Some(cert) => {
                                at = at.min(cert.not_after());
                                Priority::Background
                            }
                            None => Priority::Warmup,
                        };
                        tracing::warn!(
                            %identity,
                            error = %reason,
                            failures = entry.failures,
                            retry_in = ?at.duration_since(now).unwrap_or_default(),
                            kept_certificate = entry.usable(now).is_some(),
                            "workload certificate fetch failed"
                        );
                        entry.last_error = Some(reason);
                        (at, next)
                    }
                }
            };
            self.schedule(&mut st, identity, at, next_priority);
            if let Some(entry) = st.entries.get(identity) {
                entry.done.send_modify(|n| *n += 1);
            }
        }
        self.pump(&mut st);
    }

    /// Half life ± jitter, not sooner than the minimum delay, not after expiry.
    fn refresh_time(&self, cert: &WorkloadCertificate, now: SystemTime) -> SystemTime {
        let life = cert
            .not_after()
            .duration_since(cert.not_before())
            .unwrap_or_default();
        let j = self.config.refresh_jitter;
        let offset = if j > 0.0 {
            rand::rng().random_range(-j..=j)
        } else {
            0.0
        };
        let half = cert.refresh_at();
        let shift = life.mul_f64(offset.abs());
        let at = if offset >= 0.0 {
            half + shift
        } else {
            half - shift
        };
        at.max(now + self.config.min_refresh_delay)
            .min(cert.not_after().max(now))
    }

    /// Replaces the identity's timer with one that queues a fetch at `at`.
    fn schedule(
        self: &Arc<Self>,
        st: &mut State,
        identity: &Identity,
        at: SystemTime,
        priority: Priority,
    ) {
        let token = st.seq();
        let Some(entry) = st.entries.get_mut(identity) else {
            return;
        };
        if let Some((_, _, old)) = entry.timer.take() {
            old.abort();
        }
        let delay = at.duration_since(self.clock.now()).unwrap_or_default();
        let weak = Arc::downgrade(self);
        let id = identity.clone();
        let handle = self.runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(inner) = weak.upgrade() else { return };
            let mut st = inner.state.lock();
            let Some(entry) = st.entries.get_mut(&id) else {
                return;
            };
            if !matches!(entry.timer, Some((_, t, _)) if t == token) {
                return;
            }
            entry.timer = None;
            tracing::debug!(identity = %id, ?priority, "scheduled certificate fetch due");
            inner.enqueue(&mut st, &id, priority);
            inner.pump(&mut st);
        });
        entry.timer = Some((at, token, handle.abort_handle()));
    }

    fn update_gauges(&self, st: &State) {
        metrics::gauge!("identity_csr_in_flight").set(st.in_flight as f64);
        let held = st.entries.values().filter(|e| e.cert.is_some()).count();
        metrics::gauge!("identity_certificates").set(held as f64);
    }
}

/// Runs one fetch; if the task dies early (panic in the provider, runtime shutdown) the drop
/// still releases its slot and reports a failure, so the queue never stalls.
struct FetchGuard {
    inner: Arc<Inner>,
    identity: Identity,
    generation: u64,
    priority: Priority,
    started: tokio::time::Instant,
    finished: bool,
}

impl FetchGuard {
    async fn run(mut self) {
        let result = self.inner.provider.fetch(&self.identity).await;
        let result = match result {
            Ok(cert) => match cert.ensure_identity(&self.identity) {
                Err(e) => Err(e.to_string()),
                Ok(()) if cert.is_expired_at(self.inner.clock.now()) => Err(format!(
                    "the CA issued a certificate that expired at {}; check the clocks of \
                     this node and of the CA",
                    crate::time::rfc3339(cert.not_after())
                )),
                Ok(()) => Ok(cert),
            },
            Err(e) => Err(e.to_string()),
        };
        self.finished = true;
        self.inner.finish(
            &self.identity,
            self.generation,
            self.priority,
            self.started.elapsed(),
            result,
        );
    }
}

impl Drop for FetchGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.inner.finish(
                &self.identity,
                self.generation,
                self.priority,
                self.started.elapsed(),
                Err("the certificate fetch task ended without a result".into()),
            );
        }
    }
}

mod snapshot;

pub use snapshot::{CertInfo, CertSnapshot, CertState};

#[cfg(test)]
mod tests;

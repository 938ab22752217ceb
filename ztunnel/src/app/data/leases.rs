//! Which identities the local proxies present, and the certificates kept for them.
//!
//! * [`IdentityLeases`] counts, per identity, the proxy instances presenting it. The first
//!   lease prefetches the certificate; the last release forgets it, so it is no longer refreshed
//!   and no CSR for it reaches the CA (istiod refuses them once no pod with that service
//!   account runs on the node). Two pods with one service account share one certificate.
//! * [`ProxyIdentity`] is one instance's lease. The identity comes from the workload's
//!   `Workload` in the mesh state (its trust domain, namespace and service account, as Istio's
//!   ztunnel takes them from WDS); while the workload is unknown, `TRUST_DOMAIN` stands in for
//!   the trust domain. A task follows the state: when the `Workload` arrives or changes, the
//!   new identity is leased, the HBONE listener switched to it, then the old one released.
//!   Dropping the lease (after the instance drained) releases the identity.
//! * The instance gets its certificates from its [`WorkloadIdentity`], which serves only
//!   identities some local proxy leases and never adds one to the certificate manager: a
//!   connection that outlives its pod cannot bring a forgotten certificate back.
//!
//! Lock order: a [`WorkloadIdentity`]'s lock, then the leases' lock, then the certificate
//! manager's (prefetch and forget happen under the leases' lock, so a concurrent first lease
//! and last release of one identity cannot leave it leased but forgotten).

use std::collections::HashMap;
use std::sync::Arc;

use hbone::cert::BoxFuture;
use hbone::{CertError, CertificateSource, Identity, WorkloadCertificate};
use identity::manager::CertManager;
use parking_lot::Mutex;
use state::MeshState;
use tokio::task::AbortHandle;
use tracing::{debug, info};

use crate::proxy::{ServerIdentity, WorkloadInfo};

/// Per identity, how many local proxy instances present it.
pub(crate) struct IdentityLeases {
    certs: CertManager,
    counts: Mutex<HashMap<Identity, usize>>,
}

impl IdentityLeases {
    pub(crate) fn new(certs: CertManager) -> Arc<Self> {
        Arc::new(IdentityLeases {
            certs,
            counts: Mutex::new(HashMap::new()),
        })
    }

    fn acquire(&self, identity: &Identity) {
        let mut counts = self.counts.lock();
        let n = counts.entry(identity.clone()).or_default();
        *n += 1;
        if *n == 1 {
            debug!(%identity, "first local workload with this identity: fetching its certificate");
            self.certs.prefetch(identity);
        }
    }

    fn release(&self, identity: &Identity) {
        let mut counts = self.counts.lock();
        let Some(n) = counts.get_mut(identity) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            counts.remove(identity);
            self.certs.forget(identity);
            info!(%identity, "no local workload uses this identity any more: certificate dropped");
        }
    }

    fn leased(&self, identity: &Identity) -> bool {
        self.counts.lock().contains_key(identity)
    }
}

struct Held {
    /// The leased identity; `None` once released.
    current: Option<Identity>,
    /// The instance's HBONE listener, once it runs.
    server: Option<ServerIdentity>,
}

/// The identity one proxy instance presents, and its certificates.
pub(crate) struct WorkloadIdentity {
    leases: Arc<IdentityLeases>,
    state: Arc<MeshState>,
    /// Pod name, namespace and service account; the trust domain is the stand-in.
    workload: WorkloadInfo,
    held: Mutex<Held>,
}

impl WorkloadIdentity {
    /// The identity presented now (the stand-in once released, which cannot be observed while
    /// a [`ProxyIdentity`] lives).
    pub(crate) fn current(&self) -> Identity {
        self.held
            .lock()
            .current
            .clone()
            .unwrap_or_else(|| self.workload.identity())
    }

    /// Moves to the identity of the workload's `Workload` if it differs: leases the new one,
    /// switches the listener, releases the old one. Nothing once released, nor while the
    /// workload is unknown (the last identity stays).
    fn sync(&self) {
        let Some(resolved) = self.workload.resolve_identity(&self.state) else {
            return;
        };
        let mut held = self.held.lock();
        let Some(current) = held.current.clone() else {
            return;
        };
        if current == resolved {
            return;
        }
        self.leases.acquire(&resolved);
        if let Some(server) = &held.server {
            server.set(resolved.clone());
        }
        held.current = Some(resolved.clone());
        self.leases.release(&current);
        info!(workload = %self.workload, old = %current, new = %resolved, "workload identity changed");
    }

    fn release(&self) {
        let mut held = self.held.lock();
        held.server = None;
        if let Some(identity) = held.current.take() {
            self.leases.release(&identity);
        }
    }
}

impl CertificateSource for WorkloadIdentity {
    fn certificate<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> BoxFuture<'a, Result<Arc<WorkloadCertificate>, CertError>> {
        Box::pin(async move {
            if !self.leases.leased(identity) {
                // The `Workload` may have changed a moment ago: the connection saw it before
                // the follower did.
                self.sync();
            }
            self.leases.certs.managed_certificate(identity).await
        })
    }
}

/// One proxy instance's lease on its identity, following its `Workload`; dropping it releases
/// the identity.
pub(crate) struct ProxyIdentity {
    identity: Arc<WorkloadIdentity>,
    follower: AbortHandle,
}

impl ProxyIdentity {
    /// Resolves and leases the identity of `workload` (whose trust domain is the stand-in) and
    /// starts following the state. Must run inside a tokio runtime.
    pub(crate) fn lease(
        leases: &Arc<IdentityLeases>,
        state: Arc<MeshState>,
        workload: WorkloadInfo,
    ) -> Self {
        let mut changes = state.subscribe();
        let mut addresses = changes.borrow_and_update().addresses;
        let current = workload
            .resolve_identity(&state)
            .unwrap_or_else(|| workload.identity());
        leases.acquire(&current);
        let identity = Arc::new(WorkloadIdentity {
            leases: leases.clone(),
            state,
            workload,
            held: Mutex::new(Held {
                current: Some(current),
                server: None,
            }),
        });
        let following = identity.clone();
        let follower = tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let now = changes.borrow_and_update().addresses;
                if now != addresses {
                    addresses = now;
                    following.sync();
                }
            }
        })
        .abort_handle();
        ProxyIdentity { identity, follower }
    }

    /// The workload as the instance is started with: the trust domain of the leased identity.
    pub(crate) fn workload(&self) -> WorkloadInfo {
        WorkloadInfo {
            trust_domain: self.identity.current().trust_domain().to_string(),
            ..self.identity.workload.clone()
        }
    }

    /// Where the instance gets its certificates.
    pub(crate) fn certificates(&self) -> Arc<WorkloadIdentity> {
        self.identity.clone()
    }

    /// Hands over the started instance's listener; it presents the leased identity from now on.
    pub(crate) fn attach(&self, server: ServerIdentity) {
        let mut held = self.identity.held.lock();
        if let Some(current) = &held.current {
            server.set(current.clone());
        }
        held.server = Some(server);
    }

    /// Keeps the lease and the following for the rest of the process (dedicated mode: the one
    /// instance lives as long as ztunnel).
    pub(crate) fn keep(self) {
        let _kept = std::mem::ManuallyDrop::new(self);
    }
}

impl Drop for ProxyIdentity {
    fn drop(&mut self) {
        self.follower.abort();
        self.identity.release();
    }
}

#[cfg(test)]
mod tests;

//! Live connections of one proxy instance: counted for drain, closable all at once (end of the
//! drain period) or one by one (late policy rejection).
//!
//! Every proxied connection holds a [`Registration`] for its lifetime. Inbound connections
//! register the facts their authorization was decided on ([`AuthzSubject`]); after a mesh
//! state change [`Tracker::reauthorize`] evaluates them again and closes the ones now denied.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hbone::Identity;
use parking_lot::Mutex;
use state::{AuthzDecision, ConnectionInfo, MeshState};
use tokio::sync::{Notify, oneshot};

/// What an inbound connection was authorized on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzSubject {
    pub src_identity: Option<Identity>,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    pub dst_workload_uid: String,
}

/// Why the proxy closed a live connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Denied by the current policies (late rejection).
    Denied(String),
    /// The drain deadline passed.
    Drained,
}

struct Entry {
    authz: Option<AuthzSubject>,
    close: Option<oneshot::Sender<CloseReason>>,
}

/// The live connections of one proxy instance.
#[derive(Default)]
pub struct Tracker {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Entry>>,
    idle: Notify,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("live", &self.len())
            .finish()
    }
}

/// Held by a connection while it lives; `closed` resolves when the proxy wants it closed.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    tracker: Arc<Tracker>,
    pub closed: oneshot::Receiver<CloseReason>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = self.tracker.live.lock();
        live.remove(&self.id);
        if live.is_empty() {
            self.tracker.idle.notify_waiters();
        }
    }
}

impl Tracker {
    pub fn register(self: &Arc<Self>, authz: Option<AuthzSubject>) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.live.lock().insert(
            id,
            Entry {
                authz,
                close: Some(tx),
            },
        );
        Registration {
            id,
            tracker: self.clone(),
            closed: rx,
        }
    }

    pub fn len(&self) -> usize {
        self.live.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks every live connection to close.
    pub fn close_all(&self, reason: CloseReason) -> usize {
        let mut n = 0;
        for entry in self.live.lock().values_mut() {
            if let Some(tx) = entry.close.take() {
                n += usize::from(tx.send(reason.clone()).is_ok());
            }
        }
        n
    }

    /// Waits until no connection is live, at most `deadline`. True if idle.
    pub async fn wait_idle(&self, deadline: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.is_empty() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(deadline, wait).await.is_ok()
    }

    /// Re-evaluates the authorization of every registered inbound connection against the
    /// current state and closes the denied ones. Returns how many were closed.
    ///
    /// A connection whose destination workload disappeared is left alone: removal of the pod
    /// drains its proxy separately.
    pub fn reauthorize(&self, state: &MeshState) -> usize {
        let view = state.read();
        let mut closed = 0;
        for entry in self.live.lock().values_mut() {
            let Some(subject) = &entry.authz else {
                continue;
            };
            if entry.close.is_none() {
                continue;
            }
            let Some(workload) = view.workload_by_uid(&subject.dst_workload_uid) else {
                continue;
            };
            let info = ConnectionInfo {
                src_identity: subject.src_identity.clone(),
                src_ip: subject.src_ip,
                dst_ip: subject.dst_ip,
                dst_port: subject.dst_port,
                dst_workload: &workload,
            };
            if let AuthzDecision::Deny { reason } =
                state::authz::authorize_in(&view, &info).decision
                && let Some(tx) = entry.close.take()
            {
                tracing::debug!(src = %subject.src_ip, dst = %subject.dst_ip,
                    port = subject.dst_port, %reason, "closing connection denied by a policy change");
                closed += usize::from(tx.send(CloseReason::Denied(reason)).is_ok());
            }
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_registrations() {
        let t = Arc::new(Tracker::default());
        assert!(t.wait_idle(Duration::from_millis(1)).await);
        let r = t.register(None);
        assert!(!t.wait_idle(Duration::from_millis(20)).await);
        assert_eq!(t.close_all(CloseReason::Drained), 1);
        let mut r = r;
        assert_eq!((&mut r.closed).await.unwrap(), CloseReason::Drained);
        let waiter = {
            let t = t.clone();
            tokio::spawn(async move { t.wait_idle(Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        drop(r);
        assert!(waiter.await.unwrap());
        assert!(t.is_empty());
    }
}

//! The readiness registry and the `:15021/healthz/ready` server.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Method, StatusCode};
use meshcore::drain::DrainWatch;
use parking_lot::Mutex;

use super::{AdminError, Body, Server, bind, method_not_allowed, not_found, serve, text};
use crate::config::ListenAddress;

/// Which startup tasks are still pending. Clonable; all clones share the registry.
///
/// Each component [`register`](Self::register)s a named task and marks it ready when done
/// (`state manager`, `proxy`, `dns proxy`, `workload proxy manager`). A task can go back to
/// pending ([`ReadyTask::mark_pending`], e.g. when the ZDS connection is lost). ztunnel is ready
/// when no task is pending.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    inner: Arc<Mutex<Tasks>>,
}

#[derive(Debug, Default)]
struct Tasks {
    next_id: u64,
    /// id → (name, ready)
    tasks: BTreeMap<u64, (Arc<str>, bool)>,
}

impl Readiness {
    /// An empty registry (ready until something registers).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pending task named `name`. Several tasks may share a name; the name is pending
    /// while any of them is.
    pub fn register(&self, name: &str) -> ReadyTask {
        let name: Arc<str> = Arc::from(name);
        let mut inner = self.inner.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.tasks.insert(id, (name.clone(), false));
        ReadyTask {
            readiness: self.clone(),
            id,
            name,
        }
    }

    /// Names of the pending tasks, sorted, without duplicates.
    pub fn pending(&self) -> Vec<String> {
        let inner = self.inner.lock();
        let mut names: Vec<String> = inner
            .tasks
            .values()
            .filter(|(_, ready)| !ready)
            .map(|(name, _)| name.to_string())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Whether no task is pending.
    pub fn is_ready(&self) -> bool {
        self.inner.lock().tasks.values().all(|(_, ready)| *ready)
    }

    fn set(&self, id: u64, ready: bool) {
        if let Some(task) = self.inner.lock().tasks.get_mut(&id) {
            task.1 = ready;
        }
    }
}

/// One registered task. Dropping it when ready removes it; dropping it while pending leaves the
/// name pending for good: a component that gives up before it is ready keeps ztunnel not-ready
/// instead of claiming readiness it never reached.
#[derive(Debug)]
pub struct ReadyTask {
    readiness: Readiness,
    id: u64,
    name: Arc<str>,
}

impl ReadyTask {
    /// The task's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Marks the task done.
    pub fn mark_ready(&self) {
        self.readiness.set(self.id, true);
    }

    /// Marks the task pending again.
    pub fn mark_pending(&self) {
        self.readiness.set(self.id, false);
    }

    /// Whether this task is ready.
    pub fn is_ready(&self) -> bool {
        self.readiness
            .inner
            .lock()
            .tasks
            .get(&self.id)
            .is_some_and(|(_, ready)| *ready)
    }
}

impl Drop for ReadyTask {
    fn drop(&mut self) {
        let mut inner = self.readiness.inner.lock();
        if inner.tasks.get(&self.id).is_some_and(|(_, ready)| *ready) {
            inner.tasks.remove(&self.id);
        }
    }
}

/// Binds the readiness server and serves `GET /healthz/ready` until `watch` drains.
pub async fn start_readiness(
    addr: &ListenAddress,
    readiness: Readiness,
    watch: DrainWatch,
) -> Result<Server, AdminError> {
    let listeners = bind("readiness", addr).await?;
    Ok(serve("readiness", listeners, watch, move |req| {
        let readiness = readiness.clone();
        async move { handle(&readiness, req.method(), req.uri().path()) }
    }))
}

fn handle(readiness: &Readiness, method: &Method, path: &str) -> http::Response<Body> {
    if path != "/healthz/ready" {
        return not_found();
    }
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    let pending = readiness.pending();
    if pending.is_empty() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("not ready, pending: {}\n", pending.join(", ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_gate_readiness() {
        let readiness = Readiness::new();
        assert!(readiness.is_ready());
        let proxy = readiness.register("proxy");
        let state = readiness.register("state manager");
        let state2 = readiness.register("state manager");
        assert_eq!(readiness.pending(), vec!["proxy", "state manager"]);
        assert!(!readiness.is_ready());

        state.mark_ready();
        assert_eq!(readiness.pending(), vec!["proxy", "state manager"]);
        state2.mark_ready();
        proxy.mark_ready();
        assert!(readiness.is_ready() && proxy.is_ready());

        proxy.mark_pending();
        assert_eq!(readiness.pending(), vec!["proxy"]);
        assert_eq!(proxy.name(), "proxy");
        proxy.mark_ready();

        // Dropping a ready task removes it; dropping a pending one leaves it pending.
        drop(state);
        assert!(readiness.is_ready());
        let doomed = readiness.register("dns proxy");
        drop(doomed);
        assert_eq!(readiness.pending(), vec!["dns proxy"]);
    }

    #[test]
    fn handler_answers() {
        let readiness = Readiness::new();
        let task = readiness.register("proxy");
        let status = |m: &Method, p: &str| handle(&readiness, m, p).status();
        assert_eq!(
            status(&Method::GET, "/healthz/ready"),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            status(&Method::POST, "/healthz/ready"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(status(&Method::GET, "/other"), StatusCode::NOT_FOUND);
        task.mark_ready();
        assert_eq!(status(&Method::GET, "/healthz/ready"), StatusCode::OK);
    }
}

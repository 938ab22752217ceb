//! Shared helpers of the netns tests: named network namespaces, a tokio runtime on a thread
//! inside one, and a telemetry sink that records every event.
#![allow(dead_code)]

use std::fs::File;
use std::future::Future;
use std::process::Command;
use std::time::Duration;

use nix::sched::CloneFlags;
use parking_lot::Mutex;
use ztunnel::proxy::{
    ConnectionContext, DefaultTelemetry, Direction, EarlyFailure, Outcome, TelemetrySink,
};

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {cmd} (install iproute2/iptables, run as root): {e}")
    });
    assert!(
        out.status.success(),
        "`{cmd} {}` failed (these tests need root, iproute2 and iptables): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run("ip", &["netns", "add", name]);
        Netns { name: name.into() }
    }

    /// Runs a whitespace-separated command inside the namespace.
    pub fn exec(&self, cmd: &str) -> String {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend(cmd.split_whitespace());
        run("ip", &all)
    }

    /// `ip -n <ns> <cmd>`.
    pub fn ip(&self, cmd: &str) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend(cmd.split_whitespace());
        run("ip", &all)
    }
}

impl Netns {
    /// The namespace's file (what `setns` opens).
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs `f` on a new thread inside the namespace.
    pub fn thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns (needs root)");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A current-thread tokio runtime on a thread inside a namespace.
pub struct Node {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    pub fn new(ns: &Netns) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = ns.thread(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            tx.send(rt.handle().clone()).expect("send handle");
            rt.block_on(async {
                let _ = stopped.await;
            });
        });
        let handle = rx.recv().expect("node runtime started");
        Node {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Runs `f` inside the node's namespace.
    pub async fn run<F>(&self, f: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(f).await.expect("node task panicked")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Clone)]
pub enum Event {
    Opened(ConnectionContext),
    Closed(ConnectionContext, Outcome),
    Failed(EarlyFailure),
}

/// Records every telemetry event (and still emits the default metrics and access logs).
#[derive(Default)]
pub struct Recorder {
    pub events: Mutex<Vec<Event>>,
}

impl TelemetrySink for Recorder {
    fn opened(&self, ctx: &ConnectionContext) {
        DefaultTelemetry.opened(ctx);
        self.events.lock().push(Event::Opened(ctx.clone()));
    }
    fn closed(&self, ctx: &ConnectionContext, outcome: &Outcome) {
        DefaultTelemetry.closed(ctx, outcome);
        self.events
            .lock()
            .push(Event::Closed(ctx.clone(), outcome.clone()));
    }
    fn failed(&self, failure: &EarlyFailure) {
        DefaultTelemetry.failed(failure);
        self.events.lock().push(Event::Failed(failure.clone()));
    }
}

impl Recorder {
    /// Waits for the `n`-th (1-based) closed event.
    pub async fn closed(&self, n: usize) -> (ConnectionContext, Outcome) {
        for _ in 0..200 {
            let found = self
                .events
                .lock()
                .iter()
                .filter_map(|e| match e {
                    Event::Closed(c, o) => Some((c.clone(), o.clone())),
                    _ => None,
                })
                .nth(n - 1);
            if let Some(f) = found {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no closed event #{n}; events: {:#?}", self.events.lock());
    }

    pub async fn failed(&self, n: usize) -> EarlyFailure {
        for _ in 0..200 {
            let found = self
                .events
                .lock()
                .iter()
                .filter_map(|e| match e {
                    Event::Failed(f) => Some(f.clone()),
                    _ => None,
                })
                .nth(n - 1);
            if let Some(f) = found {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no failed event #{n}; events: {:#?}", self.events.lock());
    }

    pub fn count_opened(&self, direction: Direction) -> usize {
        self.events
            .lock()
            .iter()
            .filter(|e| matches!(e, Event::Opened(c) if c.direction == direction))
            .count()
    }
}

//! Graceful shutdown: a drain signal with a deadline, and the process signals that start it.
//!
//! One [`DrainTrigger`] (clonable: `main` holds one, the admin `/quitquitquit` handler another)
//! and any number of [`DrainWatch`]es (one per server or connection task). Starting a drain
//! publishes a [`Deadline`]: watchers stop accepting new work at once and must have finished
//! their existing work by the deadline, after which they close it forcefully.
//! [`DrainTrigger::drain`] waits until every watch has been dropped or the deadline passed.
//!
//! If every trigger is dropped without a drain having started, watchers see an immediate drain
//! (deadline "now"), so a forgotten trigger cannot leave servers running forever.
//!
//! [`ShutdownSignals`] turns SIGTERM/SIGINT into [`Shutdown`] values; a second SIGINT after the
//! first signal reports [`Shutdown::Forced`].

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio::time::Instant;

/// The moment by which drained work must be finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(Instant);

impl Deadline {
    /// A deadline `grace` from now.
    pub fn after(grace: Duration) -> Self {
        Self(Instant::now() + grace)
    }

    /// The deadline as a tokio instant.
    pub fn instant(&self) -> Instant {
        self.0
    }

    /// Time left until the deadline (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn is_reached(&self) -> bool {
        Instant::now() >= self.0
    }

    /// Resolves when the deadline is reached.
    pub async fn reached(self) {
        tokio::time::sleep_until(self.0).await;
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every watcher finished (dropped its [`DrainWatch`]) before the deadline.
    Complete,
    /// The deadline passed while `remaining` watchers were still alive.
    DeadlineExceeded { remaining: usize },
}

/// Creates a connected trigger/watch pair.
pub fn channel() -> (DrainTrigger, DrainWatch) {
    let (tx, rx) = watch::channel(None);
    (DrainTrigger { tx: Arc::new(tx) }, DrainWatch { rx })
}

/// Starts a drain. Clonable; all clones control the same drain.
#[derive(Debug, Clone)]
pub struct DrainTrigger {
    tx: Arc<watch::Sender<Option<Deadline>>>,
}

impl DrainTrigger {
    /// Starts draining with `grace` to finish. The first call decides the deadline; later calls
    /// return the deadline already in force.
    pub fn start_drain(&self, grace: Duration) -> Deadline {
        let mut deadline = Deadline::after(grace);
        self.tx.send_if_modified(|current| match current {
            Some(existing) => {
                deadline = *existing;
                false
            }
            None => {
                *current = Some(deadline);
                true
            }
        });
        deadline
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.tx.borrow().is_some()
    }

    /// A new watch on this drain.
    pub fn watch(&self) -> DrainWatch {
        DrainWatch {
            rx: self.tx.subscribe(),
        }
    }

    /// Starts draining (see [`start_drain`](Self::start_drain)) and waits until every
    /// [`DrainWatch`] has been dropped, or the deadline passed.
    pub async fn drain(&self, grace: Duration) -> DrainOutcome {
        let deadline = self.start_drain(grace);
        tokio::select! {
            () = self.tx.closed() => DrainOutcome::Complete,
            () = deadline.reached() => {
                let remaining = self.tx.receiver_count();
                if remaining == 0 {
                    DrainOutcome::Complete
                } else {
                    DrainOutcome::DeadlineExceeded { remaining }
                }
            }
        }
    }
}

/// Observes a drain. Clonable and cheap; hold it for as long as the work it guards runs, then
/// drop it so [`DrainTrigger::drain`] can finish early.
#[derive(Debug, Clone)]
pub struct DrainWatch {
    rx: watch::Receiver<Option<Deadline>>,
}

impl DrainWatch {
    /// Whether a drain has started (or every trigger is gone).
    pub fn is_draining(&self) -> bool {
        self.rx.borrow().is_some() || self.rx.has_changed().is_err()
    }

    /// The deadline, if a drain has started.
    pub fn deadline(&self) -> Option<Deadline> {
        *self.rx.borrow()
    }

    /// Resolves when the drain starts, with its deadline. If every trigger was dropped without
    /// draining, resolves at once with a deadline of "now".
    pub async fn wait_for_drain(&self) -> Deadline {
        let mut rx = self.rx.clone();
        let published = rx.wait_for(Option::is_some).await.map(|d| *d);
        match published {
            Ok(Some(deadline)) => deadline,
            Ok(None) => unreachable!("wait_for returned a value failing its predicate"),
            Err(_) => {
                // The sender is gone; it may still have published a deadline before dropping.
                let last = *rx.borrow();
                last.unwrap_or_else(|| Deadline::after(Duration::ZERO))
            }
        }
    }
}

/// What a process signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// SIGTERM: drain gracefully.
    Terminate,
    /// SIGINT: drain gracefully.
    Interrupt,
    /// A SIGINT after the first shutdown signal: stop now.
    Forced,
}

/// Listens for SIGTERM and SIGINT. Installing replaces the default "exit" action for both
/// signals for the rest of the process, so keep this alive (and keep calling
/// [`recv`](Self::recv)) to see a second, forcing SIGINT.
#[derive(Debug)]
pub struct ShutdownSignals {
    term: Signal,
    int: Signal,
    first_seen: bool,
}

impl ShutdownSignals {
    /// Installs the signal handlers. Must be called inside a tokio runtime.
    pub fn install() -> io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            first_seen: false,
        })
    }

    /// The next request: the first signal yields [`Shutdown::Terminate`] or
    /// [`Shutdown::Interrupt`]; after that, a SIGINT yields [`Shutdown::Forced`] (repeated
    /// SIGTERMs are ignored: a graceful shutdown is already under way).
    pub async fn recv(&mut self) -> Shutdown {
        loop {
            let got = tokio::select! {
                _ = self.term.recv() => Shutdown::Terminate,
                _ = self.int.recv() => Shutdown::Interrupt,
            };
            match (self.first_seen, got) {
                (false, first) => {
                    self.first_seen = true;
                    return first;
                }
                (true, Shutdown::Interrupt) => return Shutdown::Forced,
                (true, _) => continue,
            }
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT. To also catch a second, forcing SIGINT, use
/// [`ShutdownSignals`] and call [`recv`](ShutdownSignals::recv) again.
pub async fn shutdown_signal() -> io::Result<Shutdown> {
    Ok(ShutdownSignals::install()?.recv().await)
}

#[cfg(test)]
mod tests;

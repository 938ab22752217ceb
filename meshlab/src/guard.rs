//! Helpers for tests that run labs: a host-wide lock (the underlay addresses are fixed, so one
//! lab per host at a time) and a guard that tears its lab down when dropped, even on panic.

use std::fs::File;
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{LabError, Result, io_err};
use crate::lab::{Lab, LabConfig};

/// The lock file every lab-running test takes.
pub const HOST_LOCK: &str = "/run/meshlab-host.lock";

/// Holds the host-wide lab lock until dropped.
pub struct HostLock {
    _lock: Flock<File>,
}

impl std::fmt::Debug for HostLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostLock")
    }
}

/// Waits for the host-wide lock (tests of every crate that run labs should take it).
pub fn host_lock() -> Result<HostLock> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(HOST_LOCK)
        .map_err(io_err(HOST_LOCK))?;
    let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| LabError::Io {
        path: HOST_LOCK.into(),
        source: e.into(),
    })?;
    Ok(HostLock { _lock: lock })
}

/// A lab that is torn down when the guard is dropped; holds the host lock meanwhile.
#[derive(Debug)]
pub struct LabGuard {
    lab: Lab,
    state_dir: PathBuf,
    _host: HostLock,
}

impl LabGuard {
    /// Takes the host lock, removes any leftover lab in `cfg.state_dir`, and brings a lab up.
    pub fn up(cfg: LabConfig) -> Result<LabGuard> {
        let host = host_lock()?;
        let state_dir = cfg.state_dir.clone();
        let _ = Lab::down_from_state(&state_dir);
        let lab = Lab::up(cfg)?;
        Ok(LabGuard {
            lab,
            state_dir,
            _host: host,
        })
    }
}

impl std::ops::Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = Lab::down_from_state(&self.state_dir) {
            tracing::error!(
                "tearing down the lab in {} failed: {e}",
                self.state_dir.display()
            );
        }
    }
}

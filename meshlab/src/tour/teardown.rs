//! Who owns the demo's lab and who removes it: the host-wide lock, removal exactly once (at the
//! end of the tour, on a panic, or by the Ctrl-C handler, whichever comes first), and what the
//! tour says at the end (removed, or with `--keep` how to use and remove the lab).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{EXAMPLES_DIR, Tour, TourError, URL};
use crate::guard::{HOST_LOCK, HostLock, host_lock};
use crate::lab::{DownReport, Lab};

/// Set while this process holds the host lock and may have a lab in the state directory.
pub(super) static LAB_OWNED: AtomicBool = AtomicBool::new(false);
/// Serialises teardown between the tour and the interrupt handler.
static TEARDOWN: Mutex<()> = Mutex::new(());

/// Removes the lab if this process still owns it; `None` when another path already did.
pub(super) fn tear_down(state_dir: &Path) -> Option<crate::Result<DownReport>> {
    let _one_at_a_time = TEARDOWN.lock().unwrap_or_else(|e| e.into_inner());
    if !LAB_OWNED.swap(false, Ordering::SeqCst) {
        return None;
    }
    // Wait for a change in progress (pods being wired), so nothing is created after the
    // teardown; a missing state directory just means nothing was made yet.
    let layout = crate::state::Layout::new(state_dir);
    let _changes = crate::state::lock(&layout).ok();
    Some(Lab::down_from_state(state_dir))
}

/// On SIGINT or SIGTERM: remove the demo's lab (if it was built), then exit with status 130.
/// Call it once, before [`super::run`].
pub fn tear_down_on_interrupt(state_dir: PathBuf) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    // Registered here, so a signal that arrives before the thread runs is not lost.
    let (mut int, mut term) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    std::thread::Builder::new()
        .name("demo-interrupt".into())
        .spawn(move || {
            rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            });
            if LAB_OWNED.load(Ordering::SeqCst) {
                eprintln!("\nmeshlab demo: interrupted; removing the lab (a few seconds)");
            } else {
                eprintln!("\nmeshlab demo: interrupted before building a lab; nothing to remove");
            }
            match tear_down(&state_dir) {
                Some(Ok(r)) => eprintln!("meshlab demo: lab removed ({})", removed(&r)),
                Some(Err(e)) => eprintln!(
                    "meshlab demo: removing the lab failed: {e}\n  run: meshlab down --state-dir {}",
                    state_dir.display()
                ),
                None => {}
            }
            std::process::exit(130);
        })?;
    Ok(())
}

pub(super) fn removed(r: &DownReport) -> String {
    let n = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "{}, {}, {}, {}",
        n(r.processes, "process", "processes"),
        n(r.netns, "network namespace", "network namespaces"),
        n(r.links, "link", "links"),
        n(r.mounts, "mount", "mounts")
    )
}

/// Takes the host-wide lab lock, saying so when another lab makes us wait.
pub(super) fn take_host_lock(out: &mut impl Write) -> crate::Result<HostLock> {
    let busy = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(HOST_LOCK)
        .ok()
        .is_some_and(|f| {
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
        });
    if busy {
        let _ = writeln!(
            out,
            "Another lab is running on this host (a test or another demo); only one fits at a \
             time.\nWaiting for it to finish (lock {HOST_LOCK})...\n"
        );
        let _ = out.flush();
    }
    host_lock()
}

impl<W: Write> Tour<'_, W> {
    /// Removes the lab (or, with `keep`, says how to use and remove it).
    pub(super) fn finish(&mut self) -> Result<Option<DownReport>, TourError> {
        if self.lab.is_none() {
            return Ok(None);
        }
        let sd = self.cfg.state_dir.display().to_string();
        if self.cfg.keep {
            LAB_OWNED.store(false, Ordering::SeqCst);
            let ml = meshlab_command(&self.cfg.bin_dir);
            writeln!(
                self.out,
                "The lab is still up (--keep). Things to try:\n\
                 \x20 {ml} --state-dir {sd} get pods\n\
                 \x20 {ml} --state-dir {sd} exec sleep -- curl -sS {URL}\n\
                 \x20 {ml} --state-dir {sd} apply -f {EXAMPLES_DIR}/deny-all.yaml   (or delete -f)\n\
                 \x20 {ml} --state-dir {sd} logs ztunnel --node node1\n\
                 \x20 {ml} --state-dir {sd} status\n\
                 When done, remove it (before any lab test: only one lab fits on a host):\n\
                 \x20 {ml} --state-dir {sd} down"
            )?;
            return Ok(None);
        }
        write!(self.out, "Removing the lab... ")?;
        self.out.flush()?;
        match tear_down(&self.cfg.state_dir) {
            Some(Ok(r)) => {
                writeln!(self.out, "done ({}).", removed(&r))?;
                Ok(Some(r))
            }
            Some(Err(e)) => {
                writeln!(
                    self.out,
                    "failed: {e}\n  run: meshlab down --state-dir {sd}"
                )?;
                Err(self.lab_err(e))
            }
            None => Ok(None),
        }
    }
}

impl<W: Write> Drop for Tour<'_, W> {
    /// A panic between up and finish still removes the lab.
    fn drop(&mut self) {
        if self.lab.is_some() && !self.cfg.keep {
            let _ = tear_down(&self.cfg.state_dir);
        }
    }
}

/// How to call this meshlab: relative to the working directory when that is shorter.
fn meshlab_command(bin_dir: &Path) -> String {
    let exe = bin_dir.join("meshlab");
    std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or(exe)
        .display()
        .to_string()
}

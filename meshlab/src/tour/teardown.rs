//! Who owns the demo's lab and who removes it: the host-wide lock, removal exactly once (by
//! the tour or by the interrupt handler, whichever comes first), and Ctrl-C.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

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

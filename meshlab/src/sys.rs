//! Thin wrappers over the system tools the lab drives (`ip`, `nft`, `setsid`), the checks that
//! they exist, and detached process management (pid files with start times so a recycled pid is
//! never signalled).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{LabError, Result, io_err};

/// Tools every lab needs, with the Debian package providing them.
pub(crate) const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("setsid", "util-linux"),
    ("umount", "mount"),
];

/// Directory of the standard CNI plugins.
pub const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";

/// Fails with [`LabError::NotRoot`] unless the effective uid is 0.
pub fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

/// Finds `name` on PATH.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Checks the system tools (and `iptables` when that backend is used) and the CNI plugins.
pub fn require_tools(iptables: bool) -> Result<()> {
    let extra: &[(&str, &str)] = if iptables {
        &[("iptables", "iptables")]
    } else {
        &[]
    };
    for (tool, package) in TOOLS.iter().chain(extra) {
        if which(tool).is_none() {
            return Err(LabError::MissingTool {
                tool: (*tool).into(),
                package,
            });
        }
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        let p = Path::new(CNI_PLUGIN_DIR).join(plugin);
        if !p.is_file() {
            return Err(LabError::MissingTool {
                tool: p.display().to_string(),
                package: "containernetworking-plugins",
            });
        }
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command to completion (stdin from `input`), failing on a non-zero exit.
pub(crate) fn run_input(cmd: &mut Command, input: Option<&[u8]>) -> Result<Output> {
    let out = output_input(cmd, input)?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: describe(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// Runs a command to completion and returns its output whatever the exit status.
pub(crate) fn output_input(cmd: &mut Command, input: Option<&[u8]>) -> Result<Output> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| LabError::Command {
        cmd: describe(cmd),
        status: "not started".into(),
        stderr: e.to_string(),
    })?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        // A plugin that exits without reading its stdin is reported through its status.
        let _ = stdin.write_all(data);
    }
    child.wait_with_output().map_err(|e| LabError::Command {
        cmd: describe(cmd),
        status: "wait failed".into(),
        stderr: e.to_string(),
    })
}

/// Runs a command and returns its stdout, failing on a non-zero exit.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let out = run_input(cmd, None)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip <args>`.
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// A command that runs `prog` inside the named netns (with its /etc/netns files mounted).
pub(crate) fn in_netns(netns: &str, prog: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns]).arg(prog);
    c
}

/// Names of the existing named network namespaces.
pub(crate) fn netns_list() -> Vec<String> {
    let Ok(out) = ip(&["netns", "list"]) else {
        return Vec::new();
    };
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Names of the links in the root netns.
pub(crate) fn link_names() -> Vec<String> {
    let Ok(out) = ip(&["-o", "link", "show"]) else {
        return Vec::new();
    };
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// A process the lab started, as recorded in `pids/<name>.pid` and lab.json.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcRecord {
    /// `ztunnel-node0`, `app-default-httpbin-...`.
    pub name: String,
    /// Process id (also its process group and session id).
    pub pid: i32,
    /// Start time (clock ticks since boot) from /proc/<pid>/stat, against pid reuse.
    pub start_time: u64,
}

/// Start time of a process, if it exists.
pub(crate) fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let state = rest.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl ProcRecord {
    /// Whether this very process still runs.
    pub fn alive(&self) -> bool {
        proc_start_time(self.pid) == Some(self.start_time)
    }
}

/// Starts `cmd` detached in its own session (reparented to init, so it never becomes our
/// zombie), appending its output to `log`; records it in `pids/`.
pub(crate) fn spawn_detached(
    name: &str,
    cmd: &Command,
    log: &Path,
    pid_dir: &Path,
) -> Result<ProcRecord> {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("setsid \"$@\" </dev/null >>\"$MESHLAB_LOG\" 2>&1 & echo $!")
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env("MESHLAB_LOG", log);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    let out = run(&mut sh)?;
    let pid: i32 = out.trim().parse().map_err(|_| LabError::Command {
        cmd: describe(cmd),
        status: "no pid".into(),
        stderr: out.clone(),
    })?;
    let start_time = proc_start_time(pid).unwrap_or(0);
    let rec = ProcRecord {
        name: name.into(),
        pid,
        start_time,
    };
    let path = pid_dir.join(format!("{name}.pid"));
    std::fs::write(&path, serde_json::to_vec(&rec).unwrap_or_default()).map_err(io_err(path))?;
    Ok(rec)
}

/// Stops a recorded process and its process group: SIGTERM, then SIGKILL after `grace`.
pub(crate) fn stop(rec: &ProcRecord, grace: Duration) {
    if !rec.alive() {
        return;
    }
    let group = Pid::from_raw(-rec.pid);
    let _ = kill(group, Signal::SIGTERM);
    let _ = kill(Pid::from_raw(rec.pid), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while rec.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if rec.alive() {
        let _ = kill(group, Signal::SIGKILL);
        let _ = kill(Pid::from_raw(rec.pid), Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(2);
        while rec.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Kills every process living in a netns we created (leftovers of a crash).
pub(crate) fn kill_netns_pids(netns: &str) {
    let Ok(out) = ip(&["netns", "pids", netns]) else {
        return;
    };
    for pid in out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// The last `n` lines of a log file.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Random bytes from the kernel.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read;
    let mut buf = [0u8; N];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut buf);
    }
    buf
}

/// Hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// FNV-1a 64-bit hash (stable names; not for security).
pub(crate) fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Writes a file in place (keeps the inode, so bind mounts see the new content).
pub(crate) fn write_in_place(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).map_err(io_err(path))
}

/// Writes a file atomically (temp file + rename), for files other processes watch.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, data).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

//! What the benchmark reads from `/proc`: ztunnel's memory (VmRSS, VmHWM) and CPU time, the
//! host's busy time, and a sampler thread that records each ztunnel's largest RSS during a run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;

/// Linux reports `utime`/`stime` in USER_HZ ticks, 100 per second on every architecture we run.
const TICKS_PER_SEC: f64 = 100.0;

/// How often the sampler reads VmRSS.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// A `kB` field of `/proc/<pid>/status` (VmRSS, VmHWM), in bytes.
pub fn status_bytes(pid: i32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("{field} not in {path}"))?;
    let kib: u64 = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("{field} in {path}: {line:?}"))?;
    Ok(kib * 1024)
}

/// Resets VmHWM to the current RSS (`echo 5 > /proc/<pid>/clear_refs`), so a later VmHWM is
/// the peak of what follows.
pub fn reset_peak(pid: i32) -> anyhow::Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, b"5").with_context(|| format!("writing 5 to {path}"))
}

/// Threads of a process.
pub fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// User + system CPU seconds of a process (all its threads, dead ones included).
pub fn cpu_secs(pid: i32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("no ')' in {path}"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<f64> {
        Ok(f.get(i)
            .with_context(|| format!("{path}: too few fields"))?
            .parse::<u64>()
            .with_context(|| format!("{path}: field {}", i + 3))? as f64)
    };
    Ok((tick(11)? + tick(12)?) / TICKS_PER_SEC)
}

/// Busy and total jiffies of all CPUs (`/proc/stat`; idle and iowait are not busy).
pub fn host_jiffies() -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    // user nice system idle iowait irq softirq steal (guest times are inside user/nice).
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// CPU use over one measured interval.
#[derive(Debug, Clone, Copy)]
pub struct CpuDelta {
    /// Share of the whole machine that was busy, % (100 = every CPU busy).
    pub host_busy_pct: f64,
    /// CPU time of all ztunnels over the wall time, % of one CPU.
    pub ztunnel_pct: f64,
}

/// Samples every ztunnel's RSS until stopped, and measures CPU between start and stop.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<u64>>,
    pids: Vec<i32>,
    cpu0: f64,
    host0: (u64, u64),
    started: std::time::Instant,
}

impl Sampler {
    pub fn start(pids: &[i32]) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, watched) = (stop.clone(), pids.to_vec());
        let thread = std::thread::spawn(move || {
            let mut peak = vec![0u64; watched.len()];
            loop {
                for (p, &pid) in peak.iter_mut().zip(&watched) {
                    *p = (*p).max(status_bytes(pid, "VmRSS").unwrap_or(0));
                }
                if flag.load(Ordering::Relaxed) {
                    return peak;
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        Ok(Sampler {
            stop,
            thread,
            pids: pids.to_vec(),
            cpu0: total_cpu(pids)?,
            host0: host_jiffies()?,
            started: std::time::Instant::now(),
        })
    }

    /// Stops sampling: the largest RSS seen per ztunnel (bytes) and the CPU use.
    pub fn finish(self) -> anyhow::Result<(Vec<u64>, CpuDelta)> {
        let wall = self.started.elapsed().as_secs_f64();
        let cpu = total_cpu(&self.pids)? - self.cpu0;
        let host = host_jiffies()?;
        self.stop.store(true, Ordering::Relaxed);
        let peak = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("RSS sampler panicked"))?;
        let (busy, total) = (host.0 - self.host0.0, host.1 - self.host0.1);
        Ok((
            peak,
            CpuDelta {
                host_busy_pct: 100.0 * busy as f64 / total.max(1) as f64,
                ztunnel_pct: 100.0 * cpu / wall,
            },
        ))
    }
}

fn total_cpu(pids: &[i32]) -> anyhow::Result<f64> {
    pids.iter().map(|&p| cpu_secs(p)).sum()
}

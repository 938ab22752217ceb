//! Per-thread CPU accounting from `/proc/<pid>/task/<tid>/schedstat` (nanoseconds on a CPU,
//! nanoseconds runnable but waiting for one). The client and server each run on one thread,
//! so this tells which side is the bottleneck, what each side costs per byte, round trip or
//! connection, and how much other load on the machine got in the way.

use std::ops::Sub;
use std::path::PathBuf;
use std::time::Duration;

/// One thread's scheduler statistics file.
#[derive(Debug, Clone)]
pub struct ThreadClock {
    path: PathBuf,
}

/// Time a thread spent running, and runnable but waiting for a CPU.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sched {
    pub run: Duration,
    pub wait: Duration,
}

impl Sub for Sched {
    type Output = Sched;
    fn sub(self, earlier: Sched) -> Sched {
        Sched {
            run: self.run.saturating_sub(earlier.run),
            wait: self.wait.saturating_sub(earlier.wait),
        }
    }
}

impl ThreadClock {
    /// The calling thread's clock; `None` where the kernel does not expose schedstat.
    pub fn current() -> Option<Self> {
        let link = std::fs::read_link("/proc/thread-self").ok()?;
        let clock = ThreadClock {
            path: PathBuf::from("/proc").join(link).join("schedstat"),
        };
        clock.read().map(|_| clock)
    }

    pub fn read(&self) -> Option<Sched> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let mut fields = text.split_whitespace().map(str::parse::<u64>);
        let run = fields.next()?.ok()?;
        let wait = fields.next()?.ok()?;
        Some(Sched {
            run: Duration::from_nanos(run),
            wait: Duration::from_nanos(wait),
        })
    }
}

/// The client's and the server's clocks.
#[derive(Debug, Clone, Default)]
pub struct Clocks {
    pub client: Option<ThreadClock>,
    pub server: Option<ThreadClock>,
}

/// A reading of both threads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    client: Option<Sched>,
    server: Option<Sched>,
}

/// CPU used by each side over a measured interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    pub client: Option<Sched>,
    pub server: Option<Sched>,
}

impl Clocks {
    pub fn read(&self) -> Reading {
        Reading {
            client: self.client.as_ref().and_then(ThreadClock::read),
            server: self.server.as_ref().and_then(ThreadClock::read),
        }
    }
}

impl Reading {
    /// CPU used since `earlier`.
    pub fn since(self, earlier: Reading) -> CpuUse {
        let diff = |a: Option<Sched>, b: Option<Sched>| Some(a? - b?);
        CpuUse {
            client: diff(self.client, earlier.client),
            server: diff(self.server, earlier.server),
        }
    }
}

impl CpuUse {
    /// Time either thread was runnable but had no CPU: other load on the machine.
    pub fn waited(&self) -> Duration {
        self.client.map_or(Duration::ZERO, |s| s.wait)
            + self.server.map_or(Duration::ZERO, |s| s.wait)
    }
}

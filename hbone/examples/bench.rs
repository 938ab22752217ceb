//! HBONE benchmark: plain TCP, plain mutual TLS and HBONE side by side, in one run, on
//! loopback.
//!
//! Metrics, each on a fresh connection per transport:
//! * (A) single-stream throughput: push N bytes (default 2 GiB) to a server that discards
//!   them and acknowledges the total; time until the acknowledgement;
//! * (B) request/response latency: sequential 1 KiB echo round trips on one connection;
//! * (C) new-connection setup rate: full handshakes one after the other (TCP; TCP+TLS;
//!   TCP+TLS+HTTP/2+CONNECT→200 through a fresh `hbone::Pool`), each closed afterwards.
//!
//! Method: the server runs on its own OS thread with its own single-threaded tokio runtime,
//! the client on the main thread with another, so they behave like two processes on the two
//! cores. Transports are measured back to back and their order alternates between
//! repetitions (TCP/TLS/HBONE, then HBONE/TLS/TCP, ...). The report gives the median of the
//! repetitions and the ratios HBONE/TLS, HBONE/TCP and TLS/TCP; absolute numbers on shared
//! VMs are noisy, ratios within one run are what to compare.
//!
//! Each timed interval also reads both threads' scheduler clocks (`/proc/.../schedstat`):
//! how busy each side was during the transfer (the one near 100% is the bottleneck), CPU per
//! round trip and per connection, and how long the threads waited for a CPU because of other
//! load (reported as "CPU contention"; the run is flagged when it is noticeable). On an idle
//! VM a halted vCPU takes tens of µs to wake, which dominates round-trip times; compare the
//! CPU-per-round-trip rows for the tunnels' own cost.
//!
//! Run with `make bench-hbone` (options: `make bench-hbone ARGS="--help"`). `--quick` is a
//! seconds-long smoke run. The report is printed and saved under `bench-results/`.

#[path = "bench/client.rs"]
mod client;
#[path = "bench/cpu.rs"]
mod cpu;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/server.rs"]
mod server;
#[path = "bench/streams.rs"]
mod streams;
#[path = "bench/tls.rs"]
mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use tokio::sync::Semaphore;

use crate::report::{Results, Row};

/// Goal: HBONE single-stream throughput at least this fraction of plain TLS.
pub const GOAL_THROUGHPUT_VS_TLS: f64 = 0.85;
/// Goal: HBONE p99 round-trip latency at most this multiple of plain TLS.
pub const GOAL_P99_VS_TLS: f64 = 1.2;

/// Pause between two measurements, so one connection's teardown does not overlap the next.
const SETTLE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Transport {
    Tcp,
    Tls,
    Hbone,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Tcp, Transport::Tls, Transport::Hbone];

    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Hbone => "HBONE",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Hbone => "hbone",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Throughput,
    Latency,
    Connect,
}

impl Metric {
    const ALL: [Metric; 3] = [Metric::Throughput, Metric::Latency, Metric::Connect];

    fn key(self) -> &'static str {
        match self {
            Metric::Throughput => "throughput",
            Metric::Latency => "latency",
            Metric::Connect => "connect",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub bytes: u64,
    pub reps: usize,
    pub pings: usize,
    pub warmup: usize,
    pub ping_size: usize,
    pub connect_time: Duration,
    pub transports: Vec<Transport>,
    pub metrics: Vec<Metric>,
    pub out: Option<PathBuf>,
    /// HTTP/2 windows and frame size, on both ends (default: the library's).
    pub h2: hbone::H2Settings,
}

const USAGE: &str = "\
HBONE benchmark: plain TCP vs. plain mutual TLS vs. HBONE on loopback, side by side.

usage: cargo run --release -p hbone --example bench -- [options]
       make bench-hbone ARGS=\"[options]\"

options:
  --quick              smoke run: 64MiB, 1 rep, 500 pings, 0.2 s of connects
  --bytes SIZE         bytes per throughput run (default 2GiB; K/M/G suffixes are binary)
  --reps N             repetitions, transport order alternating (default 3)
  --pings N            recorded 1 KiB round trips per latency run (default 20000)
  --warmup N           unrecorded round trips before those (default 1000)
  --ping-size SIZE     bytes per round trip (default 1KiB)
  --connect-secs S     seconds of back-to-back connection setups per run (default 2)
  --transports LIST    comma-separated subset of tcp,tls,hbone (default all)
  --metrics LIST       comma-separated subset of throughput,latency,connect (default all)
  --frame-size SIZE    HBONE: SETTINGS_MAX_FRAME_SIZE on both ends (default 1MiB)
  --stream-window SIZE HBONE: per-stream window on both ends (default 4MiB)
  --conn-window SIZE   HBONE: connection window on both ends (default 16MiB)
  --out DIR            where to save the report (default <workspace>/bench-results)
  --no-save            print only
  -h, --help           this text

RUST_LOG=hbone=debug shows the library's logs on stderr.";

impl Options {
    fn defaults(quick: bool) -> Self {
        let out = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../bench-results"));
        Options {
            quick,
            bytes: if quick { 64 << 20 } else { 2 << 30 },
            reps: if quick { 1 } else { 3 },
            pings: if quick { 500 } else { 20_000 },
            warmup: if quick { 50 } else { 1_000 },
            ping_size: 1024,
            connect_time: Duration::from_millis(if quick { 200 } else { 2_000 }),
            transports: Transport::ALL.to_vec(),
            metrics: Metric::ALL.to_vec(),
            out: Some(out),
            h2: hbone::H2Settings::default(),
        }
    }

    /// `None` when help was asked for.
    fn parse(args: Vec<String>) -> anyhow::Result<Option<Self>> {
        let mut opts = Options::defaults(args.iter().any(|a| a == "--quick"));
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .with_context(|| format!("{arg} needs a value (see --help)"))
            };
            match arg.as_str() {
                "-h" | "--help" => return Ok(None),
                "--quick" => {}
                "--no-save" => opts.out = None,
                "--bytes" => opts.bytes = parse_size(&value()?)?,
                "--reps" => opts.reps = value()?.parse().context("--reps")?,
                "--pings" => opts.pings = value()?.parse().context("--pings")?,
                "--warmup" => opts.warmup = value()?.parse().context("--warmup")?,
                "--ping-size" => opts.ping_size = parse_size(&value()?)? as usize,
                "--connect-secs" => {
                    let secs: f64 = value()?.parse().context("--connect-secs")?;
                    opts.connect_time =
                        Duration::try_from_secs_f64(secs).context("--connect-secs")?;
                }
                "--transports" => {
                    opts.transports = parse_list(&value()?, &Transport::ALL, |t| t.key())?;
                }
                "--metrics" => opts.metrics = parse_list(&value()?, &Metric::ALL, |m| m.key())?,
                "--out" => opts.out = Some(PathBuf::from(value()?)),
                "--frame-size" => opts.h2.frame_size = parse_u32(&value()?)?,
                "--stream-window" => opts.h2.stream_window = parse_u32(&value()?)?,
                "--conn-window" => opts.h2.connection_window = parse_u32(&value()?)?,
                other => bail!("unknown option {other:?} (see --help)"),
            }
        }
        if opts.reps == 0 || opts.pings == 0 || opts.bytes == 0 || opts.ping_size == 0 {
            bail!("--reps, --pings, --bytes and --ping-size must be positive");
        }
        Ok(Some(opts))
    }
}

/// `2G`, `512MiB`, `1k`, `4096`: binary multiples.
fn parse_size(s: &str) -> anyhow::Result<u64> {
    let lower = s.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let shift = match &lower[digits.len()..] {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        other => bail!("unknown size suffix {other:?} in {s:?}"),
    };
    let n: u64 = digits.parse().with_context(|| format!("size {s:?}"))?;
    n.checked_mul(1 << shift)
        .with_context(|| format!("size {s:?} is too large"))
}

fn parse_u32(s: &str) -> anyhow::Result<u32> {
    u32::try_from(parse_size(s)?).with_context(|| format!("{s:?} does not fit in 32 bits"))
}

fn parse_list<T: Copy>(
    s: &str,
    all: &[T],
    key: impl Fn(T) -> &'static str,
) -> anyhow::Result<Vec<T>> {
    let mut picked = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some(item) = all.iter().copied().find(|&i| key(i) == part) else {
            let known: Vec<_> = all.iter().map(|&i| key(i)).collect();
            bail!(
                "unknown item {part:?}; expected some of {}",
                known.join(",")
            );
        };
        picked.push(item);
    }
    if picked.is_empty() {
        bail!("empty list {s:?}");
    }
    Ok(picked)
}

/// Transport order for repetition `rep`: forward, backward, forward, ...
fn order(rep: usize, transports: &[Transport]) -> Vec<Transport> {
    let mut order = transports.to_vec();
    if rep % 2 == 1 {
        order.reverse();
    }
    order
}

/// The 1-minute load average, to flag runs on a busy machine.
fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn main() -> anyhow::Result<()> {
    let Some(opts) = Options::parse(std::env::args().skip(1).collect())? else {
        println!("{USAGE}");
        return Ok(());
    };
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; run with --release for meaningful numbers");
    }
    let certs = server::Certs::new();
    let handshakes = Arc::new(Semaphore::new(0));
    let server_settings = hbone::ServerSettings {
        h2: opts.h2.clone(),
        ..hbone::ServerSettings::default()
    };
    let server = server::start(&certs, handshakes.clone(), server_settings)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(run(&opts, &certs, &server, handshakes));
    drop(runtime);
    server.stop();
    let results = outcome?;
    let text = report::render(&opts, &results);
    println!("{text}");
    if let Some(dir) = &opts.out {
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mode = if opts.quick { "-quick" } else { "" };
        let path = dir.join(format!("hbone-bench-{stamp}{mode}.txt"));
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&path, &text))
            .with_context(|| format!("saving the report to {}", path.display()))?;
        let shown = std::fs::canonicalize(&path).unwrap_or(path);
        eprintln!("report saved to {}", shown.display());
    }
    Ok(())
}

async fn run(
    opts: &Options,
    certs: &server::Certs,
    server: &server::ServerThread,
    handshakes: Arc<Semaphore>,
) -> anyhow::Result<Results> {
    let clocks = cpu::Clocks {
        client: cpu::ThreadClock::current(),
        server: server.clock.clone(),
    };
    let client_settings = hbone::ClientSettings {
        h2: opts.h2.clone(),
        ..hbone::ClientSettings::default()
    };
    let client = client::Client::new(certs, server.addrs, handshakes, clocks, client_settings)?;
    let tls_params = client.describe_tls().await.context("plain TLS probe")?;
    let mut results = Results::new(tls_params, load_average());
    for rep in 0..opts.reps {
        let order = order(rep, &opts.transports);
        let names: Vec<_> = order.iter().map(|t| t.name()).collect();
        eprintln!("rep {}/{}: {}", rep + 1, opts.reps, names.join(" -> "));
        for &metric in &opts.metrics {
            for &t in &order {
                tokio::time::sleep(SETTLE).await;
                measure(opts, &client, &mut results, metric, t)
                    .await
                    .with_context(|| format!("{} {}", t.name(), metric.key()))?;
            }
        }
        results.orders.push(order);
    }
    tokio::time::sleep(SETTLE).await;
    results.leftover_hbone_connections = server.hbone.active_connections();
    results.load_after = load_average();
    Ok(results)
}

async fn measure(
    opts: &Options,
    client: &client::Client,
    results: &mut Results,
    metric: Metric,
    t: Transport,
) -> anyhow::Result<()> {
    // Share of the interval a thread was busy; CPU time per operation in µs.
    let busy = |run: Option<cpu::Sched>, wall: Duration| {
        run.map(|s| 100.0 * s.run.as_secs_f64() / wall.as_secs_f64())
    };
    let per_op = |run: Option<cpu::Sched>, n: usize| {
        run.map(|s| s.run.as_secs_f64() * 1e6 / n.max(1) as f64)
    };
    let show = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
    match metric {
        Metric::Throughput => {
            let run = client.throughput(t, opts.bytes).await?;
            let gbps = opts.bytes as f64 * 8.0 / run.elapsed.as_secs_f64() / 1e9;
            let (c, s) = (
                busy(run.cpu.client, run.elapsed),
                busy(run.cpu.server, run.elapsed),
            );
            eprintln!(
                "  throughput {:<5} {gbps:8.2} Gbit/s ({:.2?}; busy: client {}%, server {}%)",
                t.name(),
                run.elapsed,
                show(c),
                show(s)
            );
            results.push(Row::Throughput, t, gbps);
            results.push_opt(Row::ThroughputClientBusy, t, c);
            results.push_opt(Row::ThroughputServerBusy, t, s);
            results.account(run.elapsed, &run.cpu);
        }
        Metric::Latency => {
            let mut run = client
                .latency(t, opts.pings, opts.warmup, opts.ping_size)
                .await?;
            let stats = report::LatencyStats::new(&mut run.samples);
            let n = run.samples.len();
            let (c, s) = (per_op(run.cpu.client, n), per_op(run.cpu.server, n));
            eprintln!(
                "  latency    {:<5} p50 {:7.1} µs  p99 {:7.1} µs  p99.9 {:7.1} µs  mean {:7.1} µs  (CPU/round trip: client {} µs, server {} µs)",
                t.name(),
                stats.p50,
                stats.p99,
                stats.p999,
                stats.mean,
                show(c),
                show(s)
            );
            results.push(Row::P50, t, stats.p50);
            results.push(Row::P99, t, stats.p99);
            results.push(Row::P999, t, stats.p999);
            results.push(Row::Mean, t, stats.mean);
            results.push_opt(Row::LatencyClientCpu, t, c);
            results.push_opt(Row::LatencyServerCpu, t, s);
            results.account(run.elapsed, &run.cpu);
        }
        Metric::Connect => {
            let mut run = client.connect_rate(t, opts.connect_time).await?;
            let stats = report::LatencyStats::new(&mut run.setups);
            let n = run.setups.len();
            let (c, s) = (per_op(run.cpu.client, n), per_op(run.cpu.server, n));
            eprintln!(
                "  connect    {:<5} {:8.0} connections/s ({n} timed)  setup p50 {:7.1} µs  p99 {:7.1} µs  (CPU/connection: client {} µs, server {} µs)",
                t.name(),
                run.rate,
                stats.p50,
                stats.p99,
                show(c),
                show(s)
            );
            results.push(Row::ConnectRate, t, run.rate);
            results.push(Row::SetupP50, t, stats.p50);
            results.push_opt(Row::ConnectClientCpu, t, c);
            results.push_opt(Row::ConnectServerCpu, t, s);
            results.account(run.elapsed, &run.cpu);
        }
    }
    Ok(())
}

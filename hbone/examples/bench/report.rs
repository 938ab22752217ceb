//! Statistics and the printed report: a table of medians with ratios, the per-repetition
//! values, the goals, and one `RESULT` line per metric for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::cpu::CpuUse;
use crate::{GOAL_P99_VS_TLS, GOAL_THROUGHPUT_VS_TLS, Metric, Options, Transport};

/// One line of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Row {
    Throughput,
    ThroughputClientBusy,
    ThroughputServerBusy,
    P50,
    P99,
    P999,
    Mean,
    LatencyClientCpu,
    LatencyServerCpu,
    ConnectRate,
    SetupP50,
    ConnectClientCpu,
    ConnectServerCpu,
}

impl Row {
    const ALL: [Row; 13] = [
        Row::Throughput,
        Row::ThroughputClientBusy,
        Row::ThroughputServerBusy,
        Row::P50,
        Row::P99,
        Row::P999,
        Row::Mean,
        Row::LatencyClientCpu,
        Row::LatencyServerCpu,
        Row::ConnectRate,
        Row::SetupP50,
        Row::ConnectClientCpu,
        Row::ConnectServerCpu,
    ];

    fn label(self) -> &'static str {
        match self {
            Row::Throughput => "throughput Gbit/s ↑",
            Row::ThroughputClientBusy => "  client CPU busy %",
            Row::ThroughputServerBusy => "  server CPU busy %",
            Row::P50 => "latency p50 µs ↓",
            Row::P99 => "latency p99 µs ↓",
            Row::P999 => "latency p99.9 µs ↓",
            Row::Mean => "latency mean µs ↓",
            Row::LatencyClientCpu => "  client CPU µs/RT ↓",
            Row::LatencyServerCpu => "  server CPU µs/RT ↓",
            Row::ConnectRate => "connections/s ↑",
            Row::SetupP50 => "  setup time p50 µs ↓",
            Row::ConnectClientCpu => "  client CPU µs/conn ↓",
            Row::ConnectServerCpu => "  server CPU µs/conn ↓",
        }
    }

    /// Name and unit in the `RESULT` lines.
    fn key(self) -> (&'static str, &'static str) {
        match self {
            Row::Throughput => ("throughput", "gbps"),
            Row::ThroughputClientBusy => ("throughput_client_busy", "pct"),
            Row::ThroughputServerBusy => ("throughput_server_busy", "pct"),
            Row::P50 => ("latency_p50", "us"),
            Row::P99 => ("latency_p99", "us"),
            Row::P999 => ("latency_p999", "us"),
            Row::Mean => ("latency_mean", "us"),
            Row::LatencyClientCpu => ("latency_client_cpu", "us"),
            Row::LatencyServerCpu => ("latency_server_cpu", "us"),
            Row::ConnectRate => ("connect_rate", "per_s"),
            Row::SetupP50 => ("setup_p50", "us"),
            Row::ConnectClientCpu => ("connect_client_cpu", "us"),
            Row::ConnectServerCpu => ("connect_server_cpu", "us"),
        }
    }

    fn decimals(self) -> usize {
        match self {
            Row::Throughput | Row::LatencyClientCpu | Row::LatencyServerCpu => 2,
            Row::ConnectRate | Row::ThroughputClientBusy | Row::ThroughputServerBusy => 0,
            _ => 1,
        }
    }
}

/// Everything measured in one run.
#[derive(Debug, Default)]
pub struct Results {
    samples: BTreeMap<(Row, Transport), Vec<f64>>,
    /// Transport order of each repetition.
    pub orders: Vec<Vec<Transport>>,
    pub tls_params: String,
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
    /// HBONE connections the server still held at the end (0 when every client closed).
    pub leftover_hbone_connections: usize,
    /// Wall time of all timed intervals.
    measured: Duration,
    /// Time the client or server thread was runnable but had no CPU during those intervals.
    waited: Duration,
}

impl Results {
    pub fn new(tls_params: String, load_before: Option<f64>) -> Self {
        Results {
            tls_params,
            load_before,
            ..Results::default()
        }
    }

    pub fn push(&mut self, row: Row, t: Transport, value: f64) {
        self.samples.entry((row, t)).or_default().push(value);
    }

    pub fn push_opt(&mut self, row: Row, t: Transport, value: Option<f64>) {
        if let Some(v) = value {
            self.push(row, t, v);
        }
    }

    /// Adds a timed interval to the contention tally.
    pub fn account(&mut self, wall: Duration, cpu: &CpuUse) {
        self.measured += wall;
        self.waited += cpu.waited();
    }

    fn values(&self, row: Row, t: Transport) -> &[f64] {
        self.samples.get(&(row, t)).map_or(&[], Vec::as_slice)
    }

    fn median(&self, row: Row, t: Transport) -> Option<f64> {
        median(self.values(row, t))
    }

    fn ratio(&self, row: Row, a: Transport, b: Transport) -> Option<f64> {
        Some(self.median(row, a)? / self.median(row, b)?)
    }
}

fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// Round-trip statistics in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct LatencyStats {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub mean: f64,
}

impl LatencyStats {
    /// Sorts `samples` and takes nearest-rank percentiles (NaN when there are none).
    pub fn new(samples: &mut [Duration]) -> Self {
        if samples.is_empty() {
            return LatencyStats {
                p50: f64::NAN,
                p99: f64::NAN,
                p999: f64::NAN,
                mean: f64::NAN,
            };
        }
        samples.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let rank = |q: f64| {
            let i = (q * samples.len() as f64).ceil() as usize;
            us(samples[i.clamp(1, samples.len()) - 1])
        };
        let total: Duration = samples.iter().sum();
        LatencyStats {
            p50: rank(0.50),
            p99: rank(0.99),
            p999: rank(0.999),
            mean: us(total) / samples.len() as f64,
        }
    }
}

const RATIOS: [(Transport, Transport); 3] = [
    (Transport::Hbone, Transport::Tls),
    (Transport::Hbone, Transport::Tcp),
    (Transport::Tls, Transport::Tcp),
];

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn h2_is_default(h2: &hbone::H2Settings) -> bool {
    let d = hbone::H2Settings::default();
    (h2.stream_window, h2.connection_window, h2.frame_size)
        == (d.stream_window, d.connection_window, d.frame_size)
}

/// The whole report, as printed and saved.
pub fn render(opts: &Options, r: &Results) -> String {
    let mut out = String::new();
    let o = &mut out;
    let _ = writeln!(
        o,
        "== HBONE benchmark: plain TCP vs. plain mutual TLS vs. HBONE, loopback =="
    );
    let _ = writeln!(
        o,
        "mode: {}; {} repetition(s), transport order alternating per repetition",
        if opts.quick {
            "QUICK (smoke test, numbers not meaningful)"
        } else {
            "full"
        },
        opts.reps
    );
    let _ = writeln!(
        o,
        "client and server: separate OS threads, one single-threaded tokio runtime each"
    );
    if opts.metrics.contains(&Metric::Throughput) {
        let _ = writeln!(
            o,
            "(A) throughput: {} per run, one connection/stream, until the server acknowledges",
            size(opts.bytes)
        );
    }
    if opts.metrics.contains(&Metric::Latency) {
        let _ = writeln!(
            o,
            "(B) latency: {} sequential echo round trips of {} after {} warm-up",
            opts.pings,
            size(opts.ping_size as u64),
            opts.warmup
        );
    }
    if opts.metrics.contains(&Metric::Connect) {
        let _ = writeln!(
            o,
            "(C) setup rate: back-to-back fresh connections for {:.1} s (TCP connect; +TLS handshake; +HTTP/2 + CONNECT -> 200 on a fresh Pool), each closed",
            opts.connect_time.as_secs_f64()
        );
    }
    let _ = writeln!(
        o,
        "plain TLS: {} (ECDSA P-256 certificates, mutual auth, no resumption)",
        r.tls_params
    );
    let h2 = &opts.h2;
    let _ = writeln!(
        o,
        "HBONE: hbone::Pool -> hbone::Server; HTTP/2 stream window {}, connection window {}, max frame {}{}",
        size(h2.stream_window.into()),
        size(h2.connection_window.into()),
        size(h2.frame_size.into()),
        if h2_is_default(h2) {
            " (library defaults)"
        } else {
            " (NOT the defaults)"
        }
    );
    let load = |l: Option<f64>| fmt_opt(l, 2);
    let _ = writeln!(
        o,
        "load average (1 min): {} before, {} after",
        load(r.load_before),
        load(r.load_after)
    );
    let waited = if r.measured.is_zero() {
        0.0
    } else {
        100.0 * r.waited.as_secs_f64() / r.measured.as_secs_f64()
    };
    let _ = writeln!(
        o,
        "CPU contention: client+server threads waited {:.0} ms for a CPU over {:.1} s timed ({waited:.1}%)",
        r.waited.as_secs_f64() * 1e3,
        r.measured.as_secs_f64()
    );
    // A few % is normal here even when idle: kernel threads (softirq, kworkers) share the
    // two vCPUs with the benchmark's two threads.
    if r.load_before.is_some_and(|l| l > 0.5) || waited > 5.0 {
        let _ = writeln!(
            o,
            "WARNING: the machine was busy; absolute numbers and tails are unreliable"
        );
    }
    if r.leftover_hbone_connections > 0 {
        let _ = writeln!(
            o,
            "note: the HBONE server still held {} connection(s) at the end",
            r.leftover_hbone_connections
        );
    }

    let rows: Vec<Row> = Row::ALL
        .into_iter()
        .filter(|&row| Transport::ALL.iter().any(|&t| !r.values(row, t).is_empty()))
        .collect();
    let _ = writeln!(o);
    let _ = write!(o, "{:<24}", format!("median of {}", r.orders.len()));
    for t in Transport::ALL {
        let _ = write!(o, "{:>10}", t.name());
    }
    for (a, b) in RATIOS {
        let _ = write!(o, "{:>11}", format!("{}/{}", a.name(), b.name()));
    }
    let _ = writeln!(o);
    for &row in &rows {
        let _ = write!(o, "{:<24}", row.label());
        for t in Transport::ALL {
            let _ = write!(o, "{:>10}", fmt_opt(r.median(row, t), row.decimals()));
        }
        for (a, b) in RATIOS {
            let _ = write!(o, "{:>11}", fmt_opt(r.ratio(row, a, b), 3));
        }
        let _ = writeln!(o);
    }

    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "per repetition (HBONE/TLS of that repetition in brackets):"
    );
    for &row in &rows {
        let _ = write!(o, "{:<24}", row.label());
        for rep in 0..r.orders.len() {
            let get = |t| r.values(row, t).get(rep).copied();
            let cells: Vec<String> = Transport::ALL
                .iter()
                .filter_map(|&t| get(t).map(|v| format!("{} {v:.*}", t.key(), row.decimals())))
                .collect();
            let paired = match (get(Transport::Hbone), get(Transport::Tls)) {
                (Some(h), Some(t)) => format!(" [{:.3}]", h / t),
                _ => String::new(),
            };
            let _ = write!(o, " | {}{paired}", cells.join(" "));
        }
        let _ = writeln!(o);
    }

    let _ = writeln!(o);
    let goals = [
        ("throughput", Row::Throughput, ">=", GOAL_THROUGHPUT_VS_TLS),
        ("latency p99", Row::P99, "<=", GOAL_P99_VS_TLS),
    ];
    let mut result_goals = Vec::new();
    for (name, row, cmp, target) in goals {
        let Some(ratio) = r.ratio(row, Transport::Hbone, Transport::Tls) else {
            continue;
        };
        let pass = if cmp == ">=" {
            ratio >= target
        } else {
            ratio <= target
        };
        let status = if pass { "PASS" } else { "FAIL" };
        let _ = writeln!(
            o,
            "GOAL {name}: HBONE {cmp} {target:.2} x plain TLS -> HBONE/TLS = {ratio:.3}  {status}"
        );
        let bound = if cmp == ">=" {
            "target_min"
        } else {
            "target_max"
        };
        let (key, _) = row.key();
        result_goals.push(format!(
            "RESULT goal_{key} hbone_over_tls={ratio:.3} {bound}={target:.2} status={status}"
        ));
    }

    let _ = writeln!(o);
    for &row in &rows {
        let (key, unit) = row.key();
        let _ = write!(o, "RESULT {key}");
        for t in Transport::ALL {
            if let Some(v) = r.median(row, t) {
                let _ = write!(o, " {}_{unit}={v:.*}", t.key(), row.decimals().max(1));
            }
        }
        for (a, b) in RATIOS {
            if let Some(v) = r.ratio(row, a, b) {
                let _ = write!(o, " {}_over_{}={v:.3}", a.key(), b.key());
            }
        }
        let _ = writeln!(o);
    }
    for line in result_goals {
        let _ = writeln!(o, "{line}");
    }
    out
}

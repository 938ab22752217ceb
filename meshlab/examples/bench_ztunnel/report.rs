//! Statistics and the printed report: medians per path, the mesh/direct ratio and each
//! repetition's ratio, ztunnel memory, the goal, and one `RESULT` line per row for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::json;

use crate::{GOAL_RSS_BYTES, GOAL_THROUGHPUT, Options, Path};

/// One line of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Row {
    Tput1,
    Tput1Retrans,
    TputN,
    Rr1Rate,
    Rr1P50,
    Rr1P99,
    RrNRate,
    RrNP50,
    RrNP99,
    ConnRate,
    ConnP50,
    ConnP99,
    /// ztunnel CPU (% of one CPU) and host busy (%) during each test.
    ZtCpu(Test),
    HostBusy(Test),
}

/// The measurements, in run order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Test {
    Tput1,
    TputN,
    Rr1,
    RrN,
    Conn,
}

impl Test {
    pub const ALL: [Test; 5] = [Test::Tput1, Test::TputN, Test::Rr1, Test::RrN, Test::Conn];

    pub fn key(self) -> &'static str {
        match self {
            Test::Tput1 => "tput",
            Test::TputN => "tput-parallel",
            Test::Rr1 => "rr1",
            Test::RrN => "rr",
            Test::Conn => "conn",
        }
    }

    fn rows(self) -> &'static [Row] {
        match self {
            Test::Tput1 => &[Row::Tput1, Row::Tput1Retrans],
            Test::TputN => &[Row::TputN],
            Test::Rr1 => &[Row::Rr1Rate, Row::Rr1P50, Row::Rr1P99],
            Test::RrN => &[Row::RrNRate, Row::RrNP50, Row::RrNP99],
            Test::Conn => &[Row::ConnRate, Row::ConnP50, Row::ConnP99],
        }
    }
}

impl Row {
    fn label(self, o: &Options) -> String {
        let (s, c, k) = (o.streams, o.connections, o.conn_connections);
        match self {
            Row::Tput1 => "throughput, 1 stream, Gbit/s ↑".into(),
            Row::Tput1Retrans => "  TCP retransmits".into(),
            Row::TputN => format!("throughput, {s} streams, Gbit/s ↑"),
            Row::Rr1Rate => "HTTP 1 conn, requests/s ↑".into(),
            Row::Rr1P50 => "  latency p50 µs ↓".into(),
            Row::Rr1P99 => "  latency p99 µs ↓".into(),
            Row::RrNRate => format!("HTTP {c} conns, requests/s ↑"),
            Row::RrNP50 => "  latency p50 µs ↓".into(),
            Row::RrNP99 => "  latency p99 µs ↓".into(),
            Row::ConnRate => format!("new connections/s ({k} at once) ↑"),
            Row::ConnP50 => "  connect+request p50 µs ↓".into(),
            Row::ConnP99 => "  connect+request p99 µs ↓".into(),
            Row::ZtCpu(_) => "  ztunnels' CPU, % of 1 CPU".into(),
            Row::HostBusy(_) => "  host CPUs busy %".into(),
        }
    }

    fn key(self) -> String {
        match self {
            Row::Tput1 => "tput_gbps".into(),
            Row::Tput1Retrans => "tput_retransmits".into(),
            Row::TputN => "tput_parallel_gbps".into(),
            Row::Rr1Rate => "rr1_rps".into(),
            Row::Rr1P50 => "rr1_p50_us".into(),
            Row::Rr1P99 => "rr1_p99_us".into(),
            Row::RrNRate => "rr_rps".into(),
            Row::RrNP50 => "rr_p50_us".into(),
            Row::RrNP99 => "rr_p99_us".into(),
            Row::ConnRate => "conn_per_s".into(),
            Row::ConnP50 => "conn_p50_us".into(),
            Row::ConnP99 => "conn_p99_us".into(),
            Row::ZtCpu(t) => format!("{}_ztunnel_cpu_pct", t.key().replace('-', "_")),
            Row::HostBusy(t) => format!("{}_host_busy_pct", t.key().replace('-', "_")),
        }
    }

    fn decimals(self) -> usize {
        match self {
            Row::Tput1 | Row::TputN => 2,
            _ => 0,
        }
    }
}

/// Memory of one ztunnel, bytes.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Memory {
    pub node: String,
    pub threads: usize,
    /// VmRSS after the pods were enrolled, before any traffic.
    pub idle: u64,
    /// VmHWM at the end (reset to the RSS just before the first measurement).
    pub peak: u64,
    /// Largest sampled VmRSS during each test (mesh runs).
    pub per_test: BTreeMap<String, u64>,
    /// VmRSS after all the load, once it settled.
    pub after: u64,
}

/// Everything measured in one run.
#[derive(Debug, Default)]
pub struct Results {
    samples: BTreeMap<(Row, Path), Vec<f64>>,
    pub orders: Vec<[Path; 2]>,
    pub memory: Vec<Memory>,
    /// Problems seen (wire checks, errors reported by the tools).
    pub warnings: Vec<String>,
    pub load: Vec<(String, Option<f64>)>,
}

impl Results {
    pub fn push(&mut self, row: Row, p: Path, v: f64) {
        self.samples.entry((row, p)).or_default().push(v);
    }

    fn values(&self, row: Row, p: Path) -> &[f64] {
        self.samples.get(&(row, p)).map_or(&[], Vec::as_slice)
    }

    fn median(&self, row: Row, p: Path) -> Option<f64> {
        median(self.values(row, p))
    }

    fn ratio(&self, row: Row) -> Option<f64> {
        let d = self.median(row, Path::Direct)?;
        if d <= 0.0 {
            return None;
        }
        Some(self.median(row, Path::Mesh)? / d)
    }

    /// Per-repetition mesh/direct ratios.
    fn rep_ratios(&self, row: Row) -> Vec<f64> {
        let (m, d) = (self.values(row, Path::Mesh), self.values(row, Path::Direct));
        m.iter()
            .zip(d)
            .filter(|&(_, &d)| d > 0.0)
            .map(|(m, d)| m / d)
            .collect()
    }

    fn peak_rss(&self) -> Option<u64> {
        self.memory.iter().map(|m| m.peak).max()
    }

    /// (throughput met, RSS met), when measured.
    pub fn goals(&self) -> (Option<bool>, Option<bool>) {
        (
            self.ratio(Row::Tput1).map(|r| r >= GOAL_THROUGHPUT),
            self.peak_rss().map(|b| b <= GOAL_RSS_BYTES),
        )
    }

    pub fn to_json(&self, o: &Options) -> serde_json::Value {
        let rows: serde_json::Map<_, _> = self
            .samples
            .keys()
            .map(|(r, _)| *r)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|r| {
                let v = json!({
                    "direct": self.values(r, Path::Direct),
                    "mesh": self.values(r, Path::Mesh),
                    "direct_median": self.median(r, Path::Direct),
                    "mesh_median": self.median(r, Path::Mesh),
                    "ratio": self.ratio(r),
                });
                (r.key(), v)
            })
            .collect();
        let (tput, rss) = self.goals();
        json!({
            "options": o.describe(),
            "orders": self.orders.iter().map(|o| o.map(Path::name)).collect::<Vec<_>>(),
            "rows": rows,
            "memory": self.memory,
            "load_average": self.load,
            "warnings": self.warnings,
            "goal": {"throughput_ratio_min": GOAL_THROUGHPUT, "rss_max_bytes": GOAL_RSS_BYTES,
                     "throughput_met": tput, "rss_met": rss},
        })
    }
}

fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB ({:.1} MB)", b as f64 / 1048576.0, b as f64 / 1e6)
}

fn fmt(v: Option<f64>, d: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.d$}"))
}

pub fn render(o: &Options, r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "ztunnel in the lab vs. direct pod-to-pod TCP (client on node0, server on node1)\n\
         {}\n",
        o.describe_line()
    );
    let _ = writeln!(
        s,
        "{:<36} {:>10} {:>10} {:>12}  per rep (mesh/direct)",
        "metric", "direct", "mesh", "mesh/direct"
    );
    for t in &o.tests {
        for &row in t.rows().iter().chain(&[Row::ZtCpu(*t), Row::HostBusy(*t)]) {
            let d = row.decimals();
            let reps: Vec<String> = r
                .rep_ratios(row)
                .iter()
                .map(|x| format!("{x:.3}"))
                .collect();
            let show_ratio = !matches!(row, Row::ZtCpu(_) | Row::HostBusy(_) | Row::Tput1Retrans);
            let _ = writeln!(
                s,
                "{:<36} {:>10} {:>10} {:>12}  {}",
                row.label(o),
                fmt(r.median(row, Path::Direct), d),
                fmt(r.median(row, Path::Mesh), d),
                if show_ratio {
                    fmt(r.ratio(row), 3)
                } else {
                    String::new()
                },
                if show_ratio {
                    reps.join(", ")
                } else {
                    String::new()
                },
            );
        }
    }
    let _ = writeln!(
        s,
        "\nztunnel memory (VmRSS; peak = VmHWM over all the load):"
    );
    for m in &r.memory {
        let per: Vec<String> = m
            .per_test
            .iter()
            .map(|(k, v)| format!("{k} {:.1}", *v as f64 / 1048576.0))
            .collect();
        let _ = writeln!(
            s,
            "  {} ({} threads): idle {}, peak {}, after load {}\n    max during each test, MiB: {}",
            m.node,
            m.threads,
            mib(m.idle),
            mib(m.peak),
            mib(m.after),
            per.join(", ")
        );
    }
    let (tput, rss) = r.goals();
    let verdict = |g: Option<bool>| match g {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "not measured",
    };
    let _ = writeln!(
        s,
        "\ngoal: single-stream throughput ≥ {GOAL_THROUGHPUT}× direct: {} ({}); \
         ztunnel RSS ≤ {} at peak: {} ({})",
        verdict(tput),
        fmt(r.ratio(Row::Tput1), 3),
        mib(GOAL_RSS_BYTES),
        verdict(rss),
        r.peak_rss().map_or_else(|| "-".into(), mib),
    );
    let loads: Vec<String> = r
        .load
        .iter()
        .map(|(k, v)| format!("{k} {}", fmt(*v, 2)))
        .collect();
    let _ = writeln!(s, "load average (1 min): {}", loads.join(", "));
    let orders: Vec<String> = r
        .orders
        .iter()
        .map(|o| format!("{}→{}", o[0].name(), o[1].name()))
        .collect();
    let _ = writeln!(s, "order per repetition: {}", orders.join(", "));
    for w in &r.warnings {
        let _ = writeln!(s, "WARNING: {w}");
    }
    s.push('\n');
    for (row, p) in r.samples.keys() {
        if *p == Path::Mesh {
            let _ = writeln!(
                s,
                "RESULT {} direct={} mesh={} ratio={}",
                row.key(),
                fmt(r.median(*row, Path::Direct), 3),
                fmt(r.median(*row, Path::Mesh), 3),
                fmt(r.ratio(*row), 4)
            );
        }
    }
    s
}

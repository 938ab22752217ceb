//! ztunnel benchmark: the mesh path against direct pod-to-pod TCP, side by side in one run, in
//! a two-node lab (`meshlab`).
//!
//! Two namespaces hold the same pair of pods: a client (`curlimages/curl`) pinned to node0 and a
//! server (`docker.io/kennethreitz/httpbin`) pinned to node1, in whose netns the benchmark starts
//! `iperf3 -s` (port 5201) and its own HTTP server (`--serve-http`, port 8080; see
//! `bench_ztunnel/http.rs`). In `bench-mesh` (labelled `istio.io/dataplane-mode=ambient`) a
//! connection goes client → node0's ztunnel (in-pod redirection) → HBONE (HTTP/2 CONNECT in
//! mutual TLS, port 15008) → node1's ztunnel → server; in `bench-direct` it is plain TCP over
//! the same bridges and underlay. Before measuring, and after every run, the lab's wire counters
//! check that mesh traffic crossed the nodes as HBONE only and direct traffic not at all.
//!
//! Tests, each on both paths, the order of the paths alternating between repetitions:
//! * `tput`: `iperf3 -c <server pod IP> -t S` (one stream), Gbit/s received;
//! * `tput-parallel`: the same with `-P 4`;
//! * `rr1`: `wrk -c1` on `GET /get`: requests/s and latency p50/p99 of one busy connection;
//! * `rr`: `wrk -c16`: the same with 16 connections;
//! * `conn`: `wrk -c8 -H 'Connection: close'`: every request on a new connection.
//!
//! During each run the benchmark samples every ztunnel's VmRSS and its CPU time and the host's
//! busy time; ztunnel's VmHWM is reset after the pods are enrolled so its final value is the
//! peak under load. The report gives medians, mesh/direct ratios (per repetition too), memory,
//! and the goal: single-stream throughput ≥ 0.5× direct with every ztunnel ≤ 22 MB RSS.
//!
//! Everything shares the host's CPUs (2 on our VMs): clients, servers, both ztunnels and the
//! kernel's forwarding. The mesh/direct ratio is therefore mostly ztunnel's CPU cost per byte
//! or per request. Needs root; waits for the host-wide lab lock; the lab is torn down at the
//! end, on error and on Ctrl-C.
//!
//! Run with `make bench-ztunnel` (options: `make bench-ztunnel ARGS="--help"`). The report is
//! printed and saved under `bench-results/` (text and JSON).

#[path = "bench_ztunnel/http.rs"]
mod http;
#[path = "bench_ztunnel/load.rs"]
mod load;
#[path = "bench_ztunnel/procfs.rs"]
mod procfs;
#[path = "bench_ztunnel/report.rs"]
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use meshlab::manifests::{app, namespace};
use meshlab::{Backend, Lab, LabConfig, LabGuard, WireCounts};
use serde_json::json;

use crate::load::{PodServer, WrkScript};
use crate::procfs::Sampler;
use crate::report::{Memory, Results, Row, Test};

/// Goal: mesh single-stream throughput at least this fraction of direct.
pub const GOAL_THROUGHPUT: f64 = 0.5;
/// Goal: peak RSS of every ztunnel (22 MB, decimal: the stricter reading).
pub const GOAL_RSS_BYTES: u64 = 22_000_000;

const MESH_NS: &str = "bench-mesh";
const DIRECT_NS: &str = "bench-direct";
const CLIENT_NODE: &str = "node0";
const SERVER_NODE: &str = "node1";
/// Pause between runs, so one run's connections are gone before the next starts.
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    Direct,
    Mesh,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Mesh => "mesh",
        }
    }

    fn namespace(self) -> &'static str {
        match self {
            Path::Direct => DIRECT_NS,
            Path::Mesh => MESH_NS,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub reps: usize,
    pub secs: u64,
    pub streams: usize,
    pub connections: usize,
    pub conn_connections: usize,
    pub tests: Vec<Test>,
    /// Request-response tests against the lab's httpbin app instead of [`http`].
    pub httpbin: bool,
    pub backend: Backend,
    pub ztunnel_env: Vec<(String, String)>,
    /// `ZTUNNEL_WORKER_THREADS` for both ztunnels; `None` keeps ztunnel's own default.
    pub worker_threads: Option<String>,
    pub state_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub out: Option<PathBuf>,
}

const USAGE: &str = "\
ztunnel benchmark: mesh (client → ztunnel → HBONE → ztunnel → server) vs. direct pod-to-pod
TCP in a two-node lab, side by side. Needs root and release builds of the workspace binaries.

usage: make bench-ztunnel ARGS=\"[options]\"
       cargo run --release -p meshlab --example bench_ztunnel -- [options]

options:
  --quick              smoke run: 1 repetition of 1 s per test
  --reps N             repetitions, path order alternating (default 3)
  --seconds S          seconds per test and path (default 5)
  --streams N          parallel iperf3 streams of tput-parallel (default 4)
  --connections N      wrk connections of the rr test (default 16)
  --conn-connections N wrk connections of the conn test (default 8)
  --tests LIST         comma-separated subset of tput,tput-parallel,rr1,rr,conn (default all)
  --httpbin            HTTP tests against the lab's httpbin app (port 80), not the bench's
                       own server (port 8080; see bench_ztunnel/http.rs for why)
  --backend B          redirection backend: iptables (default) or nftables
  --worker-threads N   ZTUNNEL_WORKER_THREADS of each ztunnel (default 1, the setup of the
                       reference figure for Istio's ztunnel); `default` keeps ztunnel's own
                       default (2 here)
  --ztunnel-env K=V    extra ztunnel environment (repeatable), e.g. HTTP2_FRAME_SIZE=65536
  --state-dir DIR      the lab's state directory (default /tmp/meshlab-bench)
  --bin-dir DIR        the workspace binaries (default MESHLAB_BIN_DIR, else target/release)
  --out DIR            where to save the report (default <workspace>/bench-results)
  --no-save            print only
  -h, --help           this text";

impl Options {
    fn defaults(quick: bool) -> Self {
        Options {
            quick,
            reps: if quick { 1 } else { 3 },
            secs: if quick { 1 } else { 5 },
            streams: 4,
            connections: 16,
            conn_connections: 8,
            tests: Test::ALL.to_vec(),
            httpbin: false,
            backend: Backend::Iptables,
            ztunnel_env: Vec::new(),
            worker_threads: Some("1".into()),
            state_dir: PathBuf::from("/tmp/meshlab-bench"),
            bin_dir: default_bin_dir(),
            out: Some(PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../bench-results"
            ))),
        }
    }

    /// `None` when help was asked for.
    fn parse(args: Vec<String>) -> anyhow::Result<Option<Self>> {
        let mut o = Options::defaults(args.iter().any(|a| a == "--quick"));
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .with_context(|| format!("{arg} needs a value (see --help)"))
            };
            match arg.as_str() {
                "-h" | "--help" => return Ok(None),
                "--quick" => {}
                "--no-save" => o.out = None,
                "--httpbin" => o.httpbin = true,
                "--reps" => o.reps = value()?.parse().context("--reps")?,
                "--seconds" => o.secs = value()?.parse().context("--seconds")?,
                "--streams" => o.streams = value()?.parse().context("--streams")?,
                "--connections" => o.connections = value()?.parse().context("--connections")?,
                "--conn-connections" => {
                    o.conn_connections = value()?.parse().context("--conn-connections")?;
                }
                "--tests" => o.tests = parse_tests(&value()?)?,
                "--backend" => o.backend = value()?.parse().map_err(anyhow::Error::msg)?,
                "--ztunnel-env" => {
                    let kv = value()?;
                    let (k, v) = kv
                        .split_once('=')
                        .with_context(|| format!("--ztunnel-env {kv:?}: expected KEY=VALUE"))?;
                    o.ztunnel_env.push((k.into(), v.into()));
                }
                "--worker-threads" => {
                    let v = value()?;
                    o.worker_threads = match v.as_str() {
                        "default" => None,
                        n if n.parse::<usize>().is_ok_and(|n| n > 0) => Some(v),
                        _ => {
                            bail!("--worker-threads {v:?}: expected a positive count or `default`")
                        }
                    };
                }
                "--state-dir" => o.state_dir = value()?.into(),
                "--bin-dir" => o.bin_dir = value()?.into(),
                "--out" => o.out = Some(value()?.into()),
                other => bail!("unknown option {other:?} (see --help)"),
            }
        }
        if o.reps == 0 || o.secs == 0 || o.streams == 0 || o.connections == 0 {
            bail!("--reps, --seconds, --streams and --connections must be positive");
        }
        if o.conn_connections == 0 {
            bail!("--conn-connections must be positive");
        }
        let threads_set = o
            .ztunnel_env
            .iter()
            .any(|(k, _)| k == "ZTUNNEL_WORKER_THREADS");
        if let (Some(n), false) = (&o.worker_threads, threads_set) {
            o.ztunnel_env
                .push(("ZTUNNEL_WORKER_THREADS".into(), n.clone()));
        }
        Ok(Some(o))
    }

    pub fn describe(&self) -> serde_json::Value {
        json!({
            "quick": self.quick, "reps": self.reps, "seconds": self.secs,
            "streams": self.streams, "connections": self.connections,
            "conn_connections": self.conn_connections,
            "tests": self.tests.iter().map(|t| t.key()).collect::<Vec<_>>(),
            "http_server": if self.httpbin { "httpbin app" } else { "bench --serve-http" },
            "backend": self.backend.to_string(),
            "ztunnel_env": self.ztunnel_env,
            "cpus": std::thread::available_parallelism().map_or(0, usize::from),
        })
    }

    pub fn http_port(&self) -> u16 {
        if self.httpbin {
            load::HTTPBIN_PORT
        } else {
            http::PORT
        }
    }

    pub fn describe_line(&self) -> String {
        let env: Vec<String> = self
            .ztunnel_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "{} repetition(s) × {} s per test and path, backend {}, HTTP server {}, {} CPUs{}{}",
            self.reps,
            self.secs,
            self.backend,
            if self.httpbin { "httpbin app" } else { "bench" },
            std::thread::available_parallelism().map_or(0, usize::from),
            if env.is_empty() { "" } else { ", ztunnel env " },
            env.join(" "),
        )
    }
}

fn parse_tests(s: &str) -> anyhow::Result<Vec<Test>> {
    let mut picked = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some(t) = Test::ALL.iter().copied().find(|t| t.key() == part) else {
            let known: Vec<_> = Test::ALL.iter().map(|t| t.key()).collect();
            bail!(
                "unknown test {part:?}; expected some of {}",
                known.join(",")
            );
        };
        picked.push(t);
    }
    if picked.is_empty() {
        bail!("empty --tests list {s:?}");
    }
    Ok(picked)
}

/// `MESHLAB_BIN_DIR`, else the directory above this example (`target/release/examples/..`).
fn default_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MESHLAB_BIN_DIR") {
        return d.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("examples" | "deps") => dir
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or(dir),
        _ => dir,
    }
}

/// One client/server pair.
#[derive(Debug, Clone)]
struct Pair {
    ns: &'static str,
    client: String,
    server_ip: String,
    server_netns: String,
}

/// What the runs need.
struct Bench<'a> {
    lab: &'a Lab,
    opts: &'a Options,
    mesh: Pair,
    direct: Pair,
    /// (node, pid) of every ztunnel.
    ztunnels: Vec<(String, i32)>,
    script: WrkScript,
    interrupted: Arc<AtomicBool>,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, port] = args.as_slice()
        && flag == "--serve-http"
    {
        return http::serve(port.parse().context("--serve-http PORT")?);
    }
    let Some(opts) = Options::parse(args)? else {
        println!("{USAGE}");
        return Ok(());
    };
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if let Some(b) = meshlab::missing_binary(&opts.bin_dir) {
        bail!(
            "{b} is not built in {}: run `cargo build --release --locked --workspace --bins` \
             (make bench-ztunnel does) or pass --bin-dir",
            opts.bin_dir.display()
        );
    }
    let charts = meshlab::chart::chart_dir(&opts.bin_dir);
    if !charts.join("ztunnel.json").is_file() {
        eprintln!(
            "warning: no rendered charts in {}: ztunnel runs with the lab's built-in environment, \
             not the chart's (run `make charts-check` first)",
            charts.display()
        );
    }
    if opts.bin_dir.ends_with("debug") {
        eprintln!("warning: debug binaries; use release builds for meaningful numbers");
    }
    let interrupted = catch_interrupt();
    let mut results = Results::default();
    results.load.push(("before".into(), procfs::load_average()));
    eprintln!(
        "bringing up a 2-node lab in {} (waits while another lab holds {})",
        opts.state_dir.display(),
        meshlab::guard::HOST_LOCK
    );
    let lab = LabGuard::up(LabConfig {
        nodes: 2,
        backend: opts.backend,
        state_dir: opts.state_dir.clone(),
        bin_dir: opts.bin_dir.clone(),
        ztunnel_env: opts.ztunnel_env.clone(),
    })
    .context("meshlab up")?;
    let outcome = run(&lab, &opts, interrupted, &mut results);
    if outcome.is_err() {
        // The lab and its logs go away with the guard: show their ends first.
        for node in [CLIENT_NODE, SERVER_NODE] {
            let log = lab.logs("ztunnel", Some(node)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            eprintln!(
                "--- last lines of ztunnel on {node} ---\n{}",
                tail.join("\n")
            );
        }
    }
    eprintln!("tearing the lab down");
    drop(lab);
    outcome?;
    let text = report::render(&opts, &results);
    println!("{text}");
    if let Some(dir) = &opts.out {
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mode = if opts.quick { "-quick" } else { "" };
        let base = dir.join(format!("ztunnel-bench-{stamp}{mode}"));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(&results.to_json(&opts))?;
        for (ext, body) in [("txt", &text), ("json", &json)] {
            let path = base.with_extension(ext);
            std::fs::write(&path, body).with_context(|| format!("saving {}", path.display()))?;
        }
        let shown = std::fs::canonicalize(dir).unwrap_or(dir.clone());
        eprintln!(
            "report saved to {}/{}.{{txt,json}}",
            shown.display(),
            base.file_name().unwrap_or_default().to_string_lossy()
        );
    }
    Ok(())
}

/// Ctrl-C sets the flag instead of killing us (the tools in the pods get it and stop), so the
/// lab is torn down by the guard.
fn catch_interrupt() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            while tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: stopping and tearing the lab down");
                set.store(true, Ordering::SeqCst);
            }
        });
    });
    flag
}

fn run(
    lab: &Lab,
    opts: &Options,
    interrupted: Arc<AtomicBool>,
    results: &mut Results,
) -> anyhow::Result<()> {
    if !lab.enrolment_available()? {
        bail!("the lab runs without the CNI agent or plugin: build the cni crate");
    }
    let (mesh, direct) = deploy(lab)?;
    let ztunnels = [CLIENT_NODE, SERVER_NODE]
        .iter()
        .map(|n| {
            let pid = lab.pid("ztunnel", Some(n))?;
            pid.map(|p| (n.to_string(), p))
                .with_context(|| format!("ztunnel on {n} is not running"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (node, pid) in &ztunnels {
        results.memory.push(Memory {
            node: node.clone(),
            threads: procfs::threads(*pid),
            idle: procfs::status_bytes(*pid, "VmRSS")?,
            ..Memory::default()
        });
    }
    let exe = std::env::current_exe()?.display().to_string();
    let mut servers = Vec::new();
    for p in [&mesh, &direct] {
        servers.push(PodServer::iperf(&p.server_netns)?);
        if !opts.httpbin {
            let argv = [exe.clone(), "--serve-http".into(), http::PORT.to_string()];
            servers.push(PodServer::start(&p.server_netns, &argv, http::PORT)?);
        }
    }
    let bench = Bench {
        lab,
        opts,
        mesh,
        direct,
        ztunnels,
        script: WrkScript::write()?,
        interrupted,
    };
    for path in [Path::Mesh, Path::Direct] {
        bench.wait_path(path)?;
    }
    for (_, pid) in &bench.ztunnels {
        procfs::reset_peak(*pid)?;
    }
    for rep in 0..opts.reps {
        let order = if rep % 2 == 0 {
            [Path::Direct, Path::Mesh]
        } else {
            [Path::Mesh, Path::Direct]
        };
        results
            .load
            .push((format!("rep {}", rep + 1), procfs::load_average()));
        eprintln!(
            "rep {}/{}: {} then {} (load {})",
            rep + 1,
            opts.reps,
            order[0].name(),
            order[1].name(),
            procfs::load_average().map_or("-".into(), |l| format!("{l:.2}"))
        );
        for &test in &opts.tests {
            for &path in &order {
                std::thread::sleep(SETTLE);
                bench
                    .measure(results, test, path)
                    .with_context(|| format!("{} {}", path.name(), test.key()))?;
            }
        }
        results.orders.push(order);
    }
    results.load.push(("end".into(), procfs::load_average()));
    std::thread::sleep(Duration::from_secs(2));
    for (m, (_, pid)) in results.memory.iter_mut().zip(&bench.ztunnels) {
        m.peak = procfs::status_bytes(*pid, "VmHWM")?;
        m.after = procfs::status_bytes(*pid, "VmRSS")?;
    }
    Ok(())
}

/// The two namespaces and their pods; waits until they run (and the mesh pair is enrolled).
fn deploy(lab: &Lab) -> anyhow::Result<(Pair, Pair)> {
    eprintln!(
        "deploying client ({CLIENT_NODE}) and server ({SERVER_NODE}) in {MESH_NS} and {DIRECT_NS}"
    );
    let mut yaml = String::new();
    for path in [Path::Mesh, Path::Direct] {
        let ns = path.namespace();
        let labels: &[(&str, &str)] = if path == Path::Mesh {
            &[("istio.io/dataplane-mode", "ambient")]
        } else {
            &[]
        };
        let server = "docker.io/kennethreitz/httpbin";
        yaml.push_str(&format!(
            "{}---\n{}---\n{}---\n",
            namespace(ns, labels),
            app(ns, "client", "curlimages/curl", CLIENT_NODE, None),
            app(ns, "server", server, SERVER_NODE, None),
        ));
    }
    lab.apply_yaml(&yaml).context("applying the bench pods")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pods = lab.pods()?;
        let find = |path: Path, app: &str| {
            pods.iter().find(|p| {
                p.namespace == path.namespace()
                    && p.name.starts_with(&format!("{app}-"))
                    && p.phase == "Running"
                    && p.ip.is_some()
                    && (path == Path::Direct || p.enrolment.as_deref() == Some("enabled"))
            })
        };
        let pair = |path: Path| -> Option<Pair> {
            let (c, s) = (find(path, "client")?, find(path, "server")?);
            Some(Pair {
                ns: path.namespace(),
                client: c.name.clone(),
                server_ip: s.ip.clone()?,
                server_netns: s.netns.clone(),
            })
        };
        if let (Some(m), Some(d)) = (pair(Path::Mesh), pair(Path::Direct)) {
            // wrk's short connections may leave TIME_WAIT sockets on the client side: let
            // connect() reuse them, on both paths alike.
            for p in [&m, &d] {
                let out = lab.exec(
                    &p.client,
                    p.ns,
                    &["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"],
                )?;
                if !out.status.success() {
                    bail!(
                        "sysctl in {}: {}",
                        p.client,
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            return Ok((m, d));
        }
        if Instant::now() > deadline {
            bail!("the bench pods are not running (and enrolled) after 60 s: {pods:#?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// HBONE bytes a direct run may see: the mesh pair's idle pooled HBONE connection exchanges
/// keepalives meanwhile (a few hundred bytes per run).
const IDLE_HBONE_BYTES: u64 = 16 * 1024;

/// Whether the wire counters of a run show the expected path: HBONE only for the mesh, no
/// HBONE data for direct traffic.
fn wire_ok(path: Path, w: &WireCounts) -> bool {
    match path {
        Path::Mesh => w.only_hbone(),
        Path::Direct => w.hbone_bytes <= IDLE_HBONE_BYTES && w.other_tcp_packets > 0,
    }
}

impl Bench<'_> {
    fn pair(&self, path: Path) -> &Pair {
        match path {
            Path::Direct => &self.direct,
            Path::Mesh => &self.mesh,
        }
    }

    /// Polls an HTTP request until it succeeds over the expected path (the mesh needs both
    /// ztunnels to know the pods first, or the client's would pass the traffic through).
    fn wait_path(&self, path: Path) -> anyhow::Result<()> {
        let p = self.pair(path);
        let url = format!("http://{}:{}/get", p.server_ip, self.opts.http_port());
        let argv = [
            "curl",
            "-sS",
            "-m",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ];
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.lab.wire_reset()?;
            let out = self.lab.exec(&p.client, p.ns, &argv)?;
            let wire = self.lab.wire_counts()?;
            let last = format!(
                "curl exit {:?}, status {:?}, {}; wire: {wire}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            if out.status.success() && out.stdout == b"200" && wire_ok(path, &wire) {
                eprintln!("{} path ready: {wire}", path.name());
                return Ok(());
            }
            if Instant::now() > deadline || self.interrupted.load(Ordering::SeqCst) {
                bail!("{} path not ready after 60 s: {last}", path.name());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn measure(&self, results: &mut Results, test: Test, path: Path) -> anyhow::Result<()> {
        if self.interrupted.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        let (o, p) = (self.opts, self.pair(path));
        let ip = p.server_ip.as_str();
        let (script, http) = (self.script.path(), (ip, o.http_port()));
        let argv = match test {
            Test::Tput1 => load::iperf_argv(ip, o.secs, 1),
            Test::TputN => load::iperf_argv(ip, o.secs, o.streams),
            Test::Rr1 => load::wrk_argv(script, http, o.secs, 1, false),
            Test::RrN => load::wrk_argv(script, http, o.secs, o.connections, false),
            Test::Conn => load::wrk_argv(script, http, o.secs, o.conn_connections, true),
        };
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let pids: Vec<i32> = self.ztunnels.iter().map(|(_, pid)| *pid).collect();
        self.lab.wire_reset()?;
        let sampler = Sampler::start(&pids)?;
        let out = self.lab.exec(&p.client, p.ns, &argv)?;
        let (peaks, cpu) = sampler.finish()?;
        let wire = self.lab.wire_counts()?;
        if !out.status.success() {
            bail!(
                "`{}` in {}/{} failed ({}): {}{}",
                argv.join(" "),
                p.ns,
                p.client,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        let tag = format!("{:<14} {:<6}", test.key(), path.name());
        match test {
            Test::Tput1 | Test::TputN => {
                let r = load::parse_iperf(&out.stdout)?;
                let row = if test == Test::Tput1 {
                    Row::Tput1
                } else {
                    Row::TputN
                };
                results.push(row, path, r.gbps);
                if test == Test::Tput1 {
                    results.push(Row::Tput1Retrans, path, r.retransmits as f64);
                }
                eprint!(
                    "  {tag} {:7.2} Gbit/s ({} retransmits)",
                    r.gbps, r.retransmits
                );
            }
            Test::Rr1 | Test::RrN | Test::Conn => {
                let r = load::parse_wrk(&out.stdout)?;
                let rows = match test {
                    Test::Rr1 => [Row::Rr1Rate, Row::Rr1P50, Row::Rr1P99],
                    Test::RrN => [Row::RrNRate, Row::RrNP50, Row::RrNP99],
                    _ => [Row::ConnRate, Row::ConnP50, Row::ConnP99],
                };
                results.push(rows[0], path, r.requests_per_sec);
                results.push(rows[1], path, r.p50_us);
                results.push(rows[2], path, r.p99_us);
                eprint!(
                    "  {tag} {:7.0} req/s  p50 {:6.0} µs  p99 {:6.0} µs",
                    r.requests_per_sec, r.p50_us, r.p99_us
                );
                if r.errors > 0 {
                    results.warnings.push(format!(
                        "{tag}: wrk counted {} errors in {} requests",
                        r.errors, r.requests
                    ));
                }
            }
        }
        results.push(Row::ZtCpu(test), path, cpu.ztunnel_pct);
        results.push(Row::HostBusy(test), path, cpu.host_busy_pct);
        let rss: Vec<String> = peaks
            .iter()
            .map(|b| format!("{:.1}", *b as f64 / 1048576.0))
            .collect();
        eprintln!(
            "  (ztunnels {:.0}% CPU, RSS {} MiB; host {:.0}% busy)",
            cpu.ztunnel_pct,
            rss.join("/"),
            cpu.host_busy_pct
        );
        if path == Path::Mesh {
            for (m, b) in results.memory.iter_mut().zip(&peaks) {
                let e = m.per_test.entry(test.key().into()).or_default();
                *e = (*e).max(*b);
            }
        }
        if !wire_ok(path, &wire) {
            results
                .warnings
                .push(format!("{tag}: unexpected wire counts: {wire}"));
        }
        Ok(())
    }
}

//! The load generators, run inside the client pod with `Lab::exec` (`iperf3`, `wrk`), the
//! `iperf3` server run inside the server pod, and the parsers of their reports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// Port of the iperf3 servers.
pub const IPERF_PORT: u16 = 5201;
/// Port of the lab's httpbin app (`docker.io/kennethreitz/httpbin`).
pub const HTTPBIN_PORT: u16 = 80;

/// wrk script: one machine-readable line with the exact latency percentiles (µs).
const WRK_SCRIPT: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {\"requests\":%d,\"duration_us\":%d,\"errors\":%d,\"p50\":%d,\"p90\":%d,\"p99\":%d,\"max\":%d,\"mean\":%.1f}\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"#;

/// A server process inside a pod's netns (iperf3, or this example serving HTTP), killed on
/// drop.
pub struct PodServer {
    child: Child,
}

impl PodServer {
    /// Starts `argv` in `netns` and waits until something listens on `port` there.
    pub fn start(netns: &str, argv: &[String], port: u16) -> anyhow::Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {argv:?} in {netns}"))?;
        let server = PodServer { child };
        let filter = format!("sport = :{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("ip")
                .args(["netns", "exec", netns, "ss", "-Hltn", &filter])
                .output()
                .context("ss")?;
            if !out.stdout.is_empty() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("{argv:?} in {netns} is not listening on {port} after 10 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `iperf3 -s` on [`IPERF_PORT`].
    pub fn iperf(netns: &str) -> anyhow::Result<Self> {
        let argv = ["iperf3", "-s", "-p", &IPERF_PORT.to_string()].map(String::from);
        Self::start(netns, &argv, IPERF_PORT)
    }
}

impl Drop for PodServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the wrk script to a private file (removed on drop).
pub struct WrkScript(PathBuf);

impl WrkScript {
    pub fn write() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("bench-ztunnel-{}.lua", std::process::id()));
        std::fs::write(&path, WRK_SCRIPT).with_context(|| format!("writing {}", path.display()))?;
        Ok(WrkScript(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WrkScript {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// argv of a single- or multi-stream iperf3 client run (JSON report).
pub fn iperf_argv(ip: &str, secs: u64, streams: usize) -> Vec<String> {
    let mut v: Vec<String> = ["timeout", &(secs + 30).to_string(), "iperf3", "-c", ip]
        .map(String::from)
        .to_vec();
    v.extend(
        [
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
            "--connect-timeout",
            "5000",
        ]
        .map(String::from),
    );
    v
}

/// What an iperf3 run measured.
#[derive(Debug, Clone, Copy)]
pub struct Iperf {
    /// Received by the server, Gbit/s.
    pub gbps: f64,
    /// TCP retransmissions of the sender (all streams).
    pub retransmits: u64,
}

pub fn parse_iperf(stdout: &[u8]) -> anyhow::Result<Iperf> {
    let v: Value = serde_json::from_slice(stdout).context("iperf3 -J output is not JSON")?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("iperf3: {e}");
    }
    let bps = v
        .pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .context("iperf3 report has no end.sum_received.bits_per_second")?;
    Ok(Iperf {
        gbps: bps / 1e9,
        retransmits: v
            .pointer("/end/sum_sent/retransmits")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    })
}

/// argv of a wrk run: `conns` connections on one thread; `close` sends `Connection: close`
/// so that every request opens a new connection.
pub fn wrk_argv(
    script: &Path,
    (ip, port): (&str, u16),
    secs: u64,
    conns: usize,
    close: bool,
) -> Vec<String> {
    let mut v: Vec<String> = ["timeout", &(secs + 30).to_string(), "wrk", "-t1"]
        .map(String::from)
        .to_vec();
    v.push(format!("-c{conns}"));
    v.push(format!("-d{secs}s"));
    v.extend(["--timeout".into(), "5s".into(), "-s".into()]);
    v.push(script.display().to_string());
    if close {
        v.extend(["-H".into(), "Connection: close".into()]);
    }
    v.push(format!("http://{ip}:{port}/get"));
    v
}

/// What a wrk run measured.
#[derive(Debug, Clone, Copy)]
pub struct Wrk {
    pub requests_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
    pub requests: u64,
}

pub fn parse_wrk(stdout: &[u8]) -> anyhow::Result<Wrk> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("BENCHJSON "))
        .with_context(|| format!("no BENCHJSON line in wrk output: {text}"))?;
    let v: Value = serde_json::from_str(line).with_context(|| format!("wrk line {line:?}"))?;
    let num = |k: &str| -> anyhow::Result<f64> {
        v.get(k)
            .and_then(Value::as_f64)
            .with_context(|| format!("wrk line has no {k}: {line}"))
    };
    let requests = num("requests")?;
    let secs = num("duration_us")? / 1e6;
    if requests < 1.0 || secs <= 0.0 {
        bail!("wrk completed no request: {text}");
    }
    Ok(Wrk {
        requests_per_sec: requests / secs,
        p50_us: num("p50")?,
        p99_us: num("p99")?,
        errors: num("errors")? as u64,
        requests: requests as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reports() {
        let i = parse_iperf(
            br#"{"end":{"sum_sent":{"retransmits":3},"sum_received":{"bits_per_second":4.5e9}}}"#,
        )
        .unwrap();
        assert!((i.gbps - 4.5).abs() < 1e-9 && i.retransmits == 3);
        assert!(parse_iperf(br#"{"error":"unable to connect"}"#).is_err());
        let w = parse_wrk(b"Running 1s test\nBENCHJSON {\"requests\":2000,\"duration_us\":2000000,\"errors\":1,\"p50\":90,\"p90\":120,\"p99\":300,\"max\":900,\"mean\":95.5}\n").unwrap();
        assert_eq!(w.requests_per_sec, 1000.0);
        assert_eq!((w.p50_us, w.p99_us, w.errors), (90.0, 300.0, 1));
    }
}

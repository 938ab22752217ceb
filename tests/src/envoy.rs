//! A real Envoy as a child process, for interop tests.
//!
//! [`Envoy::start`] writes the bootstrap into the instance's [`TempDir`], runs
//! `$ENVOY_BIN -c bootstrap.json --use-dynamic-base-id --concurrency 1 -l <level>` (so several
//! run at once; the hot-restart shared memory is removed again on drop) with the
//! admin interface on `127.0.0.1:0` (`--admin-address-path` says where it bound), waits until
//! admin `/ready` answers 200, and reads the ports its listeners bound (all listeners use port
//! 0) from admin `/listeners?format=json`.
//!
//! The guard kills Envoy when dropped. When the test is failing (the thread is panicking), it
//! first prints Envoy's log, its bootstrap and every access log in its directory, so a failure
//! shows what Envoy saw.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::TempDir;

/// Longest Envoy may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `$ENVOY_BIN --version` once per test binary; panics (fails the test) when Envoy is
/// missing or does not run. Returns the version line.
pub fn envoy_version() -> &'static str {
    static VERSION: OnceLock<Result<String, String>> = OnceLock::new();
    let result = VERSION.get_or_init(|| {
        let bin = mesh_testing::envoy_bin();
        let out = Command::new(&bin)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run {} --version: {e}", bin.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || !text.contains("version:") {
            return Err(format!(
                "{} --version failed ({}): {}{}",
                bin.display(),
                out.status,
                text,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(text)
    });
    match result {
        Ok(v) => v,
        Err(e) => panic!("{e}; run `make setup`, then export ENVOY_BIN=$(scripts/envoy-path.sh)"),
    }
}

/// Options for one Envoy instance.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// `-l`: the log level (default `warning`; `ENVOY_LOG_LEVEL` overrides it for debugging).
    pub log_level: String,
    /// `--component-log-level`, e.g. `connection:debug,http2:debug`.
    pub component_log_level: Option<String>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            log_level: std::env::var("ENVOY_LOG_LEVEL").unwrap_or_else(|_| "warning".into()),
            component_log_level: std::env::var("ENVOY_COMPONENT_LOG_LEVEL").ok(),
        }
    }
}

/// A running Envoy; killed on drop.
pub struct Envoy {
    name: String,
    child: Child,
    admin: SocketAddr,
    listeners: BTreeMap<String, SocketAddr>,
    log_path: PathBuf,
    base_id_path: PathBuf,
    // Last: removed after the process is gone.
    dir: TempDir,
}

impl std::fmt::Debug for Envoy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envoy")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("admin", &self.admin)
            .field("listeners", &self.listeners)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Envoy {
    /// Starts Envoy with `bootstrap` (an Envoy v3 `Bootstrap` as JSON; an `admin` section is
    /// added when missing) and waits until it is ready.
    pub async fn start(name: &str, dir: TempDir, bootstrap: Value) -> anyhow::Result<Envoy> {
        Envoy::start_with(name, dir, bootstrap, EnvoyOptions::default()).await
    }

    pub async fn start_with(
        name: &str,
        dir: TempDir,
        mut bootstrap: Value,
        options: EnvoyOptions,
    ) -> anyhow::Result<Envoy> {
        envoy_version();
        if bootstrap.get("admin").is_none() {
            bootstrap["admin"] = json!({ "address": crate::config::socket_address(
                "127.0.0.1:0".parse().expect("literal address"))
            });
        }
        if bootstrap.get("overload_manager").is_none() {
            // A connection limit, which also keeps Envoy from warning about not having one.
            bootstrap["overload_manager"] = json!({ "resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": 10000,
                },
            }]});
        }
        if bootstrap.get("node").is_none() {
            bootstrap["node"] = json!({ "id": name, "cluster": "mesh-tests" });
        }
        let config = dir.write("bootstrap.json", &serde_json::to_string_pretty(&bootstrap)?);
        let admin_path = dir.path().join("admin-address.txt");
        let base_id_path = dir.path().join("base-id.txt");
        let log_path = dir.path().join("envoy.log");
        let log = File::create(&log_path).context("create envoy.log")?;
        let mut cmd = Command::new(mesh_testing::envoy_bin());
        cmd.arg("-c")
            .arg(&config)
            .arg("--use-dynamic-base-id")
            .arg("--base-id-path")
            .arg(&base_id_path)
            .arg("--concurrency")
            .arg("1")
            .arg("-l")
            .arg(&options.log_level)
            .arg("--admin-address-path")
            .arg(&admin_path)
            // Access logs reach their files within 50 ms instead of 10 s.
            .arg("--file-flush-interval-msec")
            .arg("50")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(components) = &options.component_log_level {
            cmd.arg("--component-log-level").arg(components);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", mesh_testing::envoy_bin().display()))?;
        let mut envoy = Envoy {
            name: name.to_string(),
            child,
            // Replaced once admin is up.
            admin: "127.0.0.1:0".parse().expect("literal address"),
            listeners: BTreeMap::new(),
            log_path,
            base_id_path,
            dir,
        };
        if let Err(e) = envoy.wait_ready(&admin_path).await {
            bail!(
                "envoy {name} did not become ready: {e:#}\n--- envoy log ---\n{}",
                envoy.log()
            );
        }
        Ok(envoy)
    }

    async fn wait_ready(&mut self, admin_path: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        // 1. The admin address file appears once admin is listening.
        loop {
            self.check_alive()?;
            if let Ok(text) = std::fs::read_to_string(admin_path)
                && let Ok(addr) = text.trim().parse::<SocketAddr>()
            {
                self.admin = addr;
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "no admin address in {} after {READY_TIMEOUT:?}",
                    admin_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // 2. /ready answers 200 once the listeners are up and the workers started.
        loop {
            self.check_alive()?;
            if let Ok((200, _)) = self.admin_get("/ready").await {
                break;
            }
            if Instant::now() > deadline {
                bail!("admin /ready did not answer 200 within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // 3. Where the listeners bound.
        let (status, body) = self.admin_get("/listeners?format=json").await?;
        if status != 200 {
            bail!("admin /listeners answered {status}: {body}");
        }
        let parsed: Value = serde_json::from_str(&body).context("parse /listeners")?;
        for l in parsed["listener_statuses"].as_array().into_iter().flatten() {
            let name = l["name"].as_str().unwrap_or_default().to_string();
            let sa = &l["local_address"]["socket_address"];
            let ip = sa["address"].as_str().unwrap_or_default();
            let port = sa["port_value"].as_u64().unwrap_or_default();
            let addr: SocketAddr = format!("{ip}:{port}")
                .parse()
                .or_else(|_| format!("[{ip}]:{port}").parse())
                .with_context(|| format!("listener {name} address in {body}"))?;
            if port == 0 {
                bail!("listener {name} reports port 0: {body}");
            }
            self.listeners.insert(name, addr);
        }
        Ok(())
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("envoy exited with {status}");
        }
        Ok(())
    }

    /// The name given at start (also the node id).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instance's directory (bootstrap, certificates, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Where the listener called `name` is bound. Panics when there is no such listener.
    pub fn listener(&self, name: &str) -> SocketAddr {
        *self.listeners.get(name).unwrap_or_else(|| {
            panic!(
                "envoy {} has no listener {name}: {:?}",
                self.name, self.listeners
            )
        })
    }

    /// Everything Envoy wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// GET on the admin interface: (status, body).
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let fut = async {
            let mut tcp = TcpStream::connect(self.admin).await?;
            let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
            tcp.write_all(req.as_bytes()).await?;
            let mut raw = Vec::new();
            tcp.read_to_end(&mut raw).await?;
            anyhow::Ok(raw)
        };
        let raw = tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .context("admin request timed out")??;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("malformed admin response: {text}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status in {head}"))?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        Ok((status, body))
    }

    /// All counters and gauges (admin `/stats`), by name.
    pub async fn stats(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let (status, body) = self.admin_get("/stats").await?;
        if status != 200 {
            bail!("admin /stats answered {status}");
        }
        Ok(body
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect())
    }

    /// One counter or gauge; 0 when Envoy does not (yet) have it.
    pub async fn stat(&self, name: &str) -> u64 {
        self.stats()
            .await
            .expect("read envoy stats")
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until the JSON access log `file` (in this instance's directory) holds at least
    /// `count` entries and returns them all.
    pub async fn access_log(&self, file: &str, count: usize) -> Vec<Value> {
        let path = self.dir.path().join(file);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let entries: Vec<Value> = std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("access log line {l}: {e}"))
                })
                .collect();
            if entries.len() >= count {
                return entries;
            }
            assert!(
                Instant::now() < deadline,
                "access log {} has {} entries, expected {count}",
                path.display(),
                entries.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn dump(&self) {
        eprintln!(
            "===== envoy {} (pid {}, dir {}) =====",
            self.name,
            self.child.id(),
            self.dir.path().display()
        );
        eprintln!("--- bootstrap ---");
        eprintln!(
            "{}",
            std::fs::read_to_string(self.dir.path().join("bootstrap.json")).unwrap_or_default()
        );
        eprintln!("--- log ---\n{}", self.log());
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for entry in entries.flatten() {
                let path = entry.path();
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                if name.ends_with(".access.log") {
                    eprintln!(
                        "--- {name} ---\n{}",
                        std::fs::read_to_string(&path).unwrap_or_default()
                    );
                }
            }
        }
        eprintln!("===== end of envoy {} =====", self.name);
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_shared_memory(&self.base_id_path);
        if std::thread::panicking() {
            self.dump();
        }
    }
}

/// A killed Envoy leaves its hot-restart shared memory behind as
/// `/dev/shm/envoy_shared_memory_<base id × 10 + restart epoch>`; remove it.
fn remove_shared_memory(base_id_path: &Path) {
    let Some(base_id) = std::fs::read_to_string(base_id_path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    else {
        return;
    };
    let prefix = format!("envoy_shared_memory_{base_id}");
    let Ok(entries) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(epoch) = name.strip_prefix(&prefix)
            && epoch.len() == 1
            && epoch.bytes().all(|b| b.is_ascii_digit())
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

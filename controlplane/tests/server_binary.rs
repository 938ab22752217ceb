//! The `controlplane` binary end to end: `token`, and `serve` over TLS (root from the state
//! directory, server name `istiod.istio-system.svc`) with a watched config directory.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use controlplane::state_dir::StateDir;
use controlplane::status::StatusReport;
use controlplane::tokens::{LocalTokens, TokenAuthenticator};
use proto::istio::v1::auth::IstioCertificateRequest;
use support::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const BIN: &str = env!("CARGO_BIN_EXE_controlplane");

fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sample")
}

/// Kills the server if the test fails half-way.
struct Server {
    child: Child,
    state: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(config: &Path, state: &Path) -> Server {
        let child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .arg("--state-dir")
            .arg(state)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Server {
            child,
            state: state.to_owned(),
        }
    }

    fn status(&self) -> Option<StatusReport> {
        let bytes = std::fs::read(self.state.join("status.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Waits for `status.json` to satisfy `f`.
    async fn wait_status(&self, what: &str, f: impl Fn(&StatusReport) -> bool) -> StatusReport {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.status()
                && f(&s)
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "status never showed {what}: {:?}",
                self.status()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn token_command_prints_a_verifiable_token() {
    let state = temp_dir("bin-token");
    let out = Command::new(BIN)
        .args([
            "token",
            "--namespace",
            "istio-system",
            "--service-account",
            "ztunnel",
            "--node",
            "node-a",
            "--ttl",
            "1h",
            "--state-dir",
        ])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.trim();
    assert_eq!(stdout.lines().count(), 1);
    let tokens = LocalTokens::load_or_create(&StateDir::open(&state).unwrap()).unwrap();
    let caller = tokens.authenticate(token).unwrap();
    assert_eq!(caller.ns_sa(), "istio-system/ztunnel");
    assert_eq!(caller.node.as_deref(), Some("node-a"));

    let bad = Command::new(BIN)
        .args([
            "token",
            "--namespace",
            "x",
            "--service-account",
            "y",
            "--ttl",
            "soon",
            "--state-dir",
        ])
        .arg(&state)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    std::fs::remove_dir_all(state).unwrap();
}

#[test]
fn status_without_a_server_says_so() {
    let state = temp_dir("bin-status");
    let out = Command::new(BIN)
        .args(["status", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `controlplane serve"));
    std::fs::remove_dir_all(state).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_tls_follows_the_config_directory() {
    let root = temp_dir("bin-serve");
    let (config, state) = (root.join("config"), root.join("state"));
    copy_dir(&sample_dir(), &config);
    let mut server = Server::start(&config, &state);
    let report = server
        .wait_status("listen address", |s| s.serving && s.listen.is_some())
        .await;
    let listen = report.listen.clone().unwrap();
    assert_eq!(report.snapshot_resources[ADDR], 3, "{report:?}");
    assert_eq!(report.snapshot_resources[AUTHZ], 1, "{report:?}");

    let root_pem = std::fs::read_to_string(state.join("root-cert.pem")).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&root_pem))
        .domain_name("istiod.istio-system.svc");
    let channel = Channel::from_shared(format!("https://{listen}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let tokens = LocalTokens::load_or_create(&StateDir::open(&state).unwrap()).unwrap();
    let token = tokens
        .mint(&controlplane::tokens::TokenRequest::new(
            "istio-system",
            "ztunnel",
        ))
        .unwrap();

    let mut s = XdsStream::ztunnel(channel.clone(), &token).await.unwrap();
    let a = s.recv().await;
    assert_eq!(
        names(&a),
        [
            "Kubernetes//Pod/default/httpbin-7f9c6d8b5-fghij",
            "Kubernetes//Pod/default/sleep-6d5f8b7c9-abcde",
            "default/httpbin.default.svc.cluster.local"
        ]
    );
    let z = s.recv().await;
    assert_eq!(names(&z), ["default/httpbin-allow-sleep"]);
    s.send(ack(ADDR, &a.nonce)).await;
    s.send(ack(AUTHZ, &z.nonce)).await;

    // `controlplane status` shows the proxy SYNCED.
    server
        .wait_status("a synced proxy", |s| {
            s.proxies.len() == 1
                && s.proxies[0]
                    .types
                    .values()
                    .all(|t| t.state == controlplane::status::SyncState::Synced)
        })
        .await;
    let out = Command::new(BIN)
        .args(["status", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with(ZTUNNEL_NODE))
        .unwrap_or_else(|| panic!("no row for the proxy: {table}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[row.len() - 2..], ["SYNCED", "SYNCED"], "{table}");

    // The CA answers on the same TLS port.
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let mut ca = proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient::new(channel);
    let sleep_token = tokens
        .mint(&controlplane::tokens::TokenRequest::new("default", "sleep"))
        .unwrap();
    let chain = ca
        .create_certificate(with_token(
            IstioCertificateRequest {
                csr,
                validity_duration: 3600,
                metadata: None,
            },
            Some(&sleep_token),
        ))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert_eq!(chain.last().unwrap(), &root_pem);

    // A new pod reaches the client within a second or so.
    let extra = config.join("extra.yaml");
    let edited = Instant::now();
    std::fs::write(
        &extra,
        std::fs::read_to_string(config.join("sleep.yaml"))
            .unwrap()
            .replace("sleep-6d5f8b7c9-abcde", "sleep-2")
            .replace("10.244.1.5", "10.244.1.9"),
    )
    .unwrap();
    let pushed = s.recv().await;
    let took = edited.elapsed();
    assert_eq!(names(&pushed), ["Kubernetes//Pod/default/sleep-2"]);
    assert!(pushed.removed_resources.is_empty());
    assert!(
        took < Duration::from_secs(2),
        "edit took {took:?} to arrive"
    );
    eprintln!("edit reached the client after {took:?}");

    // An invalid file is reported and the rest keeps being served.
    std::fs::write(
        config.join("broken.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: [oops\n",
    )
    .unwrap();
    server
        .wait_status("the broken file", |s| {
            s.config_errors.iter().any(|e| e.contains("broken.yaml"))
        })
        .await;
    s.silent_for(Duration::from_millis(500)).await;
    std::fs::remove_file(config.join("broken.yaml")).unwrap();

    // Deleting the object removes it.
    let deleted = Instant::now();
    std::fs::remove_file(&extra).unwrap();
    let removed = s.recv().await;
    assert!(removed.resources.is_empty());
    assert_eq!(
        removed.removed_resources,
        ["Kubernetes//Pod/default/sleep-2"]
    );
    assert!(deleted.elapsed() < Duration::from_secs(2));

    // Deleting the policy file removes the policy. httpbin's workload listed the policy, so it
    // changes too, and Address is pushed before Authorization.
    std::fs::remove_file(config.join("policy.yaml")).unwrap();
    let changed = s.recv().await;
    assert_eq!(changed.type_url, ADDR);
    assert_eq!(
        names(&changed),
        ["Kubernetes//Pod/default/httpbin-7f9c6d8b5-fghij"]
    );
    let removed = s.recv().await;
    assert_eq!(removed.type_url, AUTHZ);
    assert_eq!(removed.removed_resources, ["default/httpbin-allow-sleep"]);

    // SIGTERM: streams end, the process exits cleanly and says it is not serving.
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let end = tokio::time::timeout(Duration::from_secs(10), s.rx.message())
        .await
        .expect("stream did not end on shutdown");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = server.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(!server.status().unwrap().serving);
    drop(server);
    std::fs::remove_dir_all(root).unwrap();
}

//! Our own delta xDS client (`xds` crate) against the `controlplane` binary over TLS, exactly
//! as a node proxy would connect: workloads, services and policies arrive; edits to the YAML
//! directory arrive within a second as incremental updates; deleting an object removes it.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use controlplane::state_dir::StateDir;
use controlplane::status::StatusReport;
use controlplane::tokens::{LocalTokens, TokenRequest};
use parking_lot::Mutex;
use proto::istio::security::Authorization;
use proto::istio::workload::Address;
use proto::istio::workload::address::Type as AddressType;
use support::temp_dir;
use xds::{NodeIdentity, ProxyType, Rejected, RootCert, TokenSource, Update, XdsClient, XdsConfig};

const BIN: &str = env!("CARGO_BIN_EXE_controlplane");
const ADDR: &str = proto::ADDRESS_TYPE_URL;
const AUTHZ: &str = proto::AUTHORIZATION_TYPE_URL;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every update batch a handler received, and the resulting state.
#[derive(Default)]
struct Recorder<T> {
    state: Mutex<BTreeMap<String, T>>,
    batches: Mutex<Vec<(Instant, Vec<String>)>>,
}

impl<T: Clone> Recorder<T> {
    fn apply(&self, updates: Vec<Update<T>>) -> Vec<Rejected> {
        let mut state = self.state.lock();
        let mut names = Vec::new();
        for u in updates {
            match u {
                Update::Upsert(r) => {
                    names.push(format!("+{}", r.name));
                    state.insert(r.name, r.resource);
                }
                Update::Remove(name) => {
                    names.push(format!("-{name}"));
                    state.remove(&name);
                }
            }
        }
        self.batches.lock().push((Instant::now(), names));
        Vec::new()
    }

    fn names(&self) -> Vec<String> {
        self.state.lock().keys().cloned().collect()
    }

    /// Waits until a batch after `since` satisfies `f`; returns it and when it arrived.
    async fn wait_batch(
        &self,
        since: Instant,
        what: &str,
        f: impl Fn(&[String]) -> bool,
    ) -> (Instant, Vec<String>) {
        let deadline = since + Duration::from_secs(10);
        loop {
            if let Some(found) = self
                .batches
                .lock()
                .iter()
                .find(|(at, names)| *at >= since && f(names))
                .cloned()
            {
                return found;
            }
            assert!(Instant::now() < deadline, "never received {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sample")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

async fn listen_address(state: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(bytes) = std::fs::read(state.join("status.json"))
            && let Ok(report) = serde_json::from_slice::<StatusReport>(&bytes)
            && report.serving
            && let Some(listen) = report.listen
        {
            return listen;
        }
        assert!(Instant::now() < deadline, "controlplane never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const NEW_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: extra
  namespace: default
  labels: {app: extra}
spec:
  serviceAccountName: sleep
  nodeName: node-a
status:
  podIP: 10.244.1.99
  conditions: [{type: Ready, status: "True"}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_client_follows_the_control_plane_incrementally() {
    let root = temp_dir("xds-client-e2e");
    let (config, state) = (root.join("config"), root.join("state"));
    copy_dir(&sample_dir(), &config);
    let _server = Server(
        Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let listen = listen_address(&state).await;
    let token = LocalTokens::load_or_create(&StateDir::open(&state).unwrap())
        .unwrap()
        .mint(&TokenRequest::new("istio-system", "ztunnel"))
        .unwrap();

    let node = NodeIdentity::new(
        ProxyType::Ztunnel,
        vec!["10.244.1.2".parse().unwrap()],
        "ztunnel-abcde",
        "istio-system",
        "node-a",
    );
    let mut cfg = XdsConfig::new(format!("https://{listen}"), node);
    cfg.root_cert = Some(RootCert::File(state.join("root-cert.pem")));
    cfg.server_name = Some("istiod.istio-system.svc".into());
    cfg.token = TokenSource::Literal(token);
    cfg.cluster_id = Some("Kubernetes".into());
    cfg.wildcard_types = vec![ADDR.into(), AUTHZ.into()];

    let addresses: Arc<Recorder<Address>> = Arc::default();
    let policies: Arc<Recorder<Authorization>> = Arc::default();
    let (a, p) = (addresses.clone(), policies.clone());
    let (client, task) = XdsClient::builder(cfg)
        .handler::<Address, _>(ADDR, move |u: Vec<Update<Address>>| a.apply(u))
        .handler::<Authorization, _>(AUTHZ, move |u: Vec<Update<Authorization>>| p.apply(u))
        .build()
        .unwrap();
    tokio::spawn(task.run());
    tokio::time::timeout(Duration::from_secs(20), client.ready())
        .await
        .expect("client becomes ready against the control plane");

    // The initial state: both pods, the service, the policy, with istiod's names.
    assert_eq!(
        addresses.names(),
        [
            "Kubernetes//Pod/default/httpbin-7f9c6d8b5-fghij",
            "Kubernetes//Pod/default/sleep-6d5f8b7c9-abcde",
            "default/httpbin.default.svc.cluster.local",
        ]
    );
    assert_eq!(policies.names(), ["default/httpbin-allow-sleep"]);
    let sleep = addresses.state.lock()["Kubernetes//Pod/default/sleep-6d5f8b7c9-abcde"].clone();
    let Some(AddressType::Workload(w)) = sleep.r#type else {
        panic!("sleep is not a workload: {sleep:?}");
    };
    assert_eq!(w.service_account, "sleep");
    assert_eq!(w.node, "node-a");

    // A new object reaches the client within a second, as one incremental update.
    let since = Instant::now();
    std::fs::write(config.join("extra.yaml"), NEW_POD).unwrap();
    let (at, batch) = addresses
        .wait_batch(since, "the new pod", |n| {
            n.contains(&"+Kubernetes//Pod/default/extra".to_string())
        })
        .await;
    assert!(at - since < Duration::from_secs(1), "took {:?}", at - since);
    assert_eq!(
        batch,
        ["+Kubernetes//Pod/default/extra"],
        "only the change is sent"
    );

    // Deleting the policy removes it from the client.
    let since = Instant::now();
    std::fs::remove_file(config.join("policy.yaml")).unwrap();
    let (at, batch) = policies
        .wait_batch(since, "the policy removal", |n| {
            n.contains(&"-default/httpbin-allow-sleep".to_string())
        })
        .await;
    assert!(at - since < Duration::from_secs(1), "took {:?}", at - since);
    assert_eq!(batch, ["-default/httpbin-allow-sleep"]);
    assert!(policies.names().is_empty());

    // And deleting the pod file removes the workload.
    let since = Instant::now();
    std::fs::remove_file(config.join("extra.yaml")).unwrap();
    addresses
        .wait_batch(since, "the pod removal", |n| {
            n == ["-Kubernetes//Pod/default/extra"]
        })
        .await;
    assert!(!addresses.names().iter().any(|n| n.contains("extra")));

    let dump = client.dump();
    let json = serde_json::to_value(&dump).unwrap();
    assert!(
        json.to_string().contains("httpbin"),
        "debug dump lists resources"
    );
    client.shutdown();
    let _ = std::fs::remove_dir_all(root);
}

//! Lab tests in real network namespaces. They need root and FAIL when they cannot set up;
//! they take a host-wide lock (one lab per host) and always tear down through a Drop guard.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use meshlab::{Backend, Lab, LabConfig};

const APPS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sleep, namespace: legacy}
---
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: legacy, labels: {app: httpbin}}
spec:
  ports: [{name: http, port: 8000, targetPort: 80}]
  selector: {app: httpbin}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: httpbin, namespace: legacy}
spec:
  replicas: 1
  selector: {matchLabels: {app: httpbin, version: v1}}
  template:
    metadata: {labels: {app: httpbin, version: v1}}
    spec:
      serviceAccountName: httpbin
      containers:
      - {name: httpbin, image: docker.io/kennethreitz/httpbin, ports: [{containerPort: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleep, namespace: legacy}
spec:
  replicas: 1
  selector: {matchLabels: {app: sleep}}
  template:
    metadata: {labels: {app: sleep}}
    spec:
      serviceAccountName: sleep
      containers:
      - {name: sleep, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
"#;

/// Holds the host-wide test lock and tears the lab down on drop (also on panic).
struct Guard {
    state_dir: PathBuf,
    _lock: meshlab::HostLock,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = Lab::down_from_state(&self.state_dir) {
            eprintln!("teardown of {} failed: {e}", self.state_dir.display());
        }
    }
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_meshlab"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn guard(name: &str) -> Guard {
    assert!(
        nix::unistd::geteuid().is_root(),
        "netns tests need root (network namespaces, bridges, nftables)"
    );
    let lock = meshlab::host_lock().expect("host lock");
    let state_dir = PathBuf::from(format!("/tmp/meshlab-test-{name}-{}", std::process::id()));
    let _ = Lab::down_from_state(&state_dir);
    Guard {
        state_dir,
        _lock: lock,
    }
}

fn config(g: &Guard, nodes: usize) -> LabConfig {
    config_with(g, nodes, Backend::Iptables)
}

fn config_with(g: &Guard, nodes: usize, backend: Backend) -> LabConfig {
    LabConfig {
        nodes,
        backend,
        state_dir: g.state_dir.clone(),
        bin_dir: bin_dir(),
        ztunnel_env: Vec::new(),
    }
}

fn curl_code(lab: &Lab, pod: &str, ns: &str, url: &str) -> String {
    let c = lab.curl(pod, ns, url, &[]).expect("exec");
    format!("{}{}", c.code, c.stderr)
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect(cmd);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts nothing of a lab is left on the host.
fn assert_clean(state_dir: &Path, pids: &[i32]) {
    let netns = sh("ip netns list");
    assert!(
        !netns.lines().any(|l| l.starts_with("ml-")),
        "namespaces left: {netns}"
    );
    let links = sh("ip -o link show");
    assert!(
        !links
            .lines()
            .any(|l| l.contains(": mlbr0") || l.contains(": ml-")),
        "links left: {links}"
    );
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("");
        assert!(
            stat.is_empty() || state == "Z" || state == "X",
            "process {pid} still runs: {stat}"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts
            .lines()
            .any(|l| l.contains("/netns/ml-") || l.contains(state_dir.to_str().unwrap())),
        "mounts left"
    );
    let rules = sh("nft list ruleset; iptables-save 2>/dev/null");
    assert!(
        !rules.contains("mlbr0") && !rules.contains("meshlab") && !rules.contains("10.96.1."),
        "root netns rules left: {rules}"
    );
    assert!(
        !state_dir.exists(),
        "state dir left: {}",
        state_dir.display()
    );
    let etc = sh("ls /etc/netns 2>/dev/null");
    assert!(
        !etc.lines().any(|l| l.starts_with("ml-")),
        "/etc/netns left: {etc}"
    );
}

fn lab_pids(state_dir: &Path) -> Vec<i32> {
    let text = std::fs::read_to_string(state_dir.join("lab.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["processes"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p["pid"].as_i64().unwrap() as i32)
        .collect()
}

#[test]
fn netns_service_via_kube_proxy_and_hosts() {
    let g = guard("svc");
    let lab = Lab::up(config(&g, 2)).expect("lab up");
    // A second lab on the same host is refused with a hint.
    let other = LabConfig {
        state_dir: g.state_dir.with_extension("second"),
        ..config(&g, 1)
    };
    // Cleaning up a second state directory (as a test guard does) leaves the running lab
    // alone, and starting there is refused with the running lab's directory in the hint.
    Lab::down_from_state(&other.state_dir).unwrap();
    assert!(
        sh("ip link show mlbr0").contains("mlbr0"),
        "the running lab's network survives"
    );
    let err = Lab::up(other).unwrap_err().to_string();
    assert!(
        err.contains("already in use")
            && err.contains(&format!(
                "meshlab down --state-dir {}",
                g.state_dir.display()
            )),
        "{err}"
    );
    lab.apply_yaml(APPS).expect("apply");
    let pods = lab.pods().unwrap();
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert_ne!(
        pods[0].node, pods[1].node,
        "round-robin placement: {pods:?}"
    );
    assert!(pods.iter().all(|p| p.phase == "Running" && p.ip.is_some()));
    assert_eq!(
        curl_code(&lab, "sleep", "legacy", "http://httpbin:8000/get"),
        "200"
    );
    let body = lab
        .exec(
            "sleep",
            "legacy",
            &[
                "curl",
                "-sS",
                "-m",
                "5",
                "http://httpbin.legacy.svc.cluster.local:8000/",
            ],
        )
        .unwrap();
    let body = String::from_utf8_lossy(&body.stdout);
    assert!(
        body.starts_with("httpbin-") && body.contains("version=v1"),
        "{body}"
    );
    let svcs = lab.services().unwrap();
    assert_eq!(svcs[0].ports[0].endpoints.len(), 1, "{svcs:?}");
    // Objects that cannot be applied name the file, the object and the reason.
    let err = lab
        .apply_yaml("kind: Pod\nmetadata: {name: web, namespace: legacy}\nspec: {containers: [{name: c, image: nginx}]}\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Pod legacy/web")
            && err.contains("unsupported image")
            && err.contains("httpbin"),
        "{err}"
    );
    let err = lab
        .apply_yaml("kind: Service\nmetadata: {name: s, namespace: nope}\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("namespace \"nope\" does not exist"), "{err}");
    // Scaling to zero leaves the VIP without endpoints: connections are refused.
    lab.delete("Deployment", "legacy", "httpbin").unwrap();
    let code = curl_code(&lab, "sleep", "legacy", "http://httpbin:8000/get");
    assert!(code.starts_with("000"), "{code}");
}

#[test]
fn netns_up_apply_exec_down_three_times_leaves_nothing() {
    let g = guard("cycle");
    for round in 0..3 {
        let lab = Lab::up(config(&g, 2)).unwrap_or_else(|e| panic!("round {round}: up: {e}"));
        lab.apply_yaml(APPS).unwrap();
        assert_eq!(
            curl_code(&lab, "sleep", "legacy", "http://httpbin:8000/status/200"),
            "200",
            "round {round}"
        );
        let pids = lab_pids(&g.state_dir);
        assert!(pids.len() >= 4, "{pids:?}");
        lab.down().unwrap();
        assert_clean(&g.state_dir, &pids);
    }
}

#[test]
fn netns_lab_guard_tears_down_on_drop() {
    let state_dir = PathBuf::from(format!("/tmp/meshlab-test-guard-{}", std::process::id()));
    let pids = {
        let lab = meshlab::LabGuard::up(LabConfig {
            nodes: 1,
            backend: Backend::Iptables,
            state_dir: state_dir.clone(),
            bin_dir: bin_dir(),
            ztunnel_env: Vec::new(),
        })
        .expect("lab up");
        assert_eq!(lab.nodes().unwrap().len(), 1);
        lab_pids(&state_dir)
    };
    assert_clean(&state_dir, &pids);
}

#[test]
fn netns_down_from_state_after_killing_up() {
    let g = guard("crash");
    let mut up = Command::new(env!("CARGO_BIN_EXE_meshlab"))
        .args(["up", "--nodes", "2", "--state-dir"])
        .arg(&g.state_dir)
        .env("MESHLAB_BIN_DIR", bin_dir())
        .spawn()
        .unwrap();
    let marker = g.state_dir.join("pids").join("controlplane.pid");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(marker.exists(), "up never started the control plane");
    let _ = up.kill();
    let _ = up.wait();
    let pids = lab_pids(&g.state_dir);
    Lab::down_from_state(&g.state_dir).unwrap();
    assert_clean(&g.state_dir, &pids);
}

#[test]
fn netns_ztunnel_ready_on_every_node() {
    let g = guard("ready");
    for b in ["ztunnel", "cni-agent"] {
        assert!(
            bin_dir().join(b).is_file(),
            "build {b} first: cargo build -p ztunnel -p cni"
        );
    }
    let lab = Lab::up(config(&g, 2)).expect("lab up");
    assert!(
        lab.enrolment_available().unwrap(),
        "cni-agent/ambient-cni are stubs"
    );
    for node in lab.nodes().unwrap() {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            let out = lab
                .node_exec(
                    &node.name,
                    &[
                        "curl",
                        "-s",
                        "-m",
                        "2",
                        "http://127.0.0.1:15021/healthz/ready",
                    ],
                )
                .unwrap();
            last = String::from_utf8_lossy(&out.stdout).into_owned();
            if last == "ready\n" {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(
            last,
            "ready\n",
            "ztunnel on {} not ready; log:\n{}",
            node.name,
            lab.logs("ztunnel", Some(&node.name)).unwrap_or_default()
        );
    }
    // The control plane lists both proxies (its status file is refreshed periodically).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = String::new();
    while Instant::now() < deadline {
        status = lab.status().unwrap();
        if status.contains("ztunnel-node0") && status.contains("ztunnel-node1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        status.contains("ztunnel-node0") && status.contains("ztunnel-node1"),
        "{status}"
    );
}

#[test]
fn netns_ambient_namespace_enrols_pods_and_traffic_flows() {
    ambient_enrolment(Backend::Iptables);
}

#[test]
fn netns_ambient_enrolment_with_nftables_backend() {
    ambient_enrolment(Backend::Nftables);
}

fn ambient_enrolment(backend: Backend) {
    let g = guard(&format!("ambient-{backend}"));
    let lab = Lab::up(config_with(&g, 2, backend)).expect("lab up");
    assert!(
        lab.enrolment_available().unwrap(),
        "cni-agent/ambient-cni are stubs"
    );
    lab.label("ns", "", "default", "istio.io/dataplane-mode=ambient")
        .unwrap();
    lab.apply_yaml(&APPS.replace("namespace: legacy", "namespace: default"))
        .unwrap();
    let pods = lab.pods().unwrap();
    assert!(
        pods.iter()
            .all(|p| p.enrolment.as_deref() == Some("enabled")),
        "{pods:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut code = String::new();
    while Instant::now() < deadline {
        code = curl_code(&lab, "sleep", "default", "http://httpbin:8000/get");
        if code == "200" {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        code,
        "200",
        "ztunnel logs:\n{}",
        lab.logs("ztunnel", Some("node1")).unwrap_or_default()
    );
}

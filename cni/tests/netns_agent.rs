//! The agent with the REAL redirection rules: a pod network namespace (`ip netns`) is enrolled
//! by a namespace label change and released again. Host probe rules are installed in a
//! separate "node" namespace so the test machine's own netfilter is never touched.
//! Needs root; fails loudly otherwise.

mod common;

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cni::agent::rules::{RuleFailure, RuleInstaller};
use cni::agent::{Agent, Config};
use cni::podsource::dir::DirPodSource;
use cni::rules::{Backend, HostProbeRules, PodRuleConfig};
use common::{ScriptedZtunnel, temp_dir};
use meshcore::env::MapEnv;

fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        assert!(nix::unistd::geteuid().is_root(), "netns tests need root");
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run("ip", &["netns", "add", name]);
        let ns = Netns(name.into());
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }
    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.0)
    }
    fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.0];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Real pod rules; host rules run on a thread inside the node namespace.
struct NodeNsRules {
    node: PathBuf,
    host: Arc<HostProbeRules>,
}

impl NodeNsRules {
    fn in_node<T: Send + 'static>(
        &self,
        f: impl FnOnce(&HostProbeRules) -> T + Send + 'static,
    ) -> T {
        let file = File::open(&self.node).expect("open node netns");
        let host = self.host.clone();
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f(&host)
        })
        .join()
        .expect("node thread")
    }
}

fn fail(e: cni::rules::RulesError) -> RuleFailure {
    RuleFailure(e.to_string())
}

impl RuleInstaller for NodeNsRules {
    fn apply_pod(&self, netns: &Path, cfg: &PodRuleConfig) -> Result<(), RuleFailure> {
        cni::rules::apply_pod_rules(netns, cfg).map_err(fail)
    }
    fn remove_pod(&self, netns: &Path) -> Result<(), RuleFailure> {
        cni::rules::remove_pod_rules(netns).map_err(fail)
    }
    fn host_install(&self) -> Result<(), RuleFailure> {
        self.in_node(|h| h.install()).map_err(fail)
    }
    fn host_add_pod(&self, uid: &str, ips: &[IpAddr]) -> Result<(), RuleFailure> {
        let (uid, ips) = (uid.to_owned(), ips.to_vec());
        self.in_node(move |h| h.add_pod(&uid, &ips)).map_err(fail)
    }
    fn host_remove_pod(&self, uid: &str) -> Result<(), RuleFailure> {
        let uid = uid.to_owned();
        self.in_node(move |h| h.remove_pod(&uid)).map_err(fail)
    }
    fn host_sync(&self, pods: &[(String, Vec<IpAddr>)]) -> Result<(), RuleFailure> {
        let pods = pods.to_vec();
        self.in_node(move |h| h.sync(&pods)).map_err(fail)
    }
    fn host_uninstall(&self) -> Result<(), RuleFailure> {
        self.in_node(|h| h.uninstall()).map_err(fail)
    }
}

fn annotation(file: &Path) -> Option<String> {
    let docs = cni::podsource::dir::parse_docs(&std::fs::read_to_string(file).unwrap()).unwrap();
    cni::podsource::PodMeta::from_value(&docs[0])
        .unwrap()
        .redirection()
        .map(str::to_owned)
}

async fn wait_for(file: &Path, want: Option<&str>) {
    for _ in 0..100 {
        if annotation(file).as_deref() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("annotation never became {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_agent_enrols_and_releases_a_real_pod_namespace() {
    let pid = std::process::id();
    let node = Netns::new(&format!("cniagent-node-{pid}"));
    let pod = Netns::new(&format!("cniagent-pod-{pid}"));
    pod.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    pod.exec(&["ip", "addr", "add", "10.77.0.5/24", "dev", "eth0"]);
    pod.exec(&["ip", "link", "set", "eth0", "up"]);

    let root = temp_dir("netns-agent");
    let (pods, run_dir) = (root.join("pods"), root.join("run"));
    std::fs::create_dir_all(&pods).unwrap();
    std::fs::write(
        pods.join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    )
    .unwrap();
    let pod_file = pods.join("pod.yaml");
    std::fs::write(
        &pod_file,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: shop, uid: u-netns}}\nspec: {{nodeName: n1}}\nstatus: {{phase: Running, podIP: 10.77.0.5}}\n",
            pod.0
        ),
    )
    .unwrap();
    let args: Vec<String> = [
        "--node-name".to_string(),
        "n1".into(),
        "--pod-source".into(),
        format!("dir:{}", pods.display()),
        "--run-dir".into(),
        run_dir.display().to_string(),
        "--ztunnel-socket".into(),
        run_dir.join("ztunnel.sock").display().to_string(),
    ]
    .to_vec();
    let cfg = Config::from_args(&args, &MapEnv::new().with("AMBIENT_IPV6", "false")).unwrap();
    let rules = Arc::new(NodeNsRules {
        node: node.path(),
        host: Arc::new(HostProbeRules::new(Backend::Iptables)),
    });
    let source = Arc::new(DirPodSource::start(&pods, "n1").unwrap());
    let agent = Agent::new(cfg, source, rules);
    let listener = agent
        .start()
        .await
        .expect("agent start (host rules in the node netns)");
    tokio::spawn(listener.run(agent.zds_server().unwrap()));
    tokio::spawn(agent.clone().run_reconcile());
    let sock = run_dir.join("ztunnel.sock");
    std::thread::spawn(move || {
        let c = ScriptedZtunnel::connect(&sock);
        c.hello();
        while c.recv().is_some() {
            c.ack("");
        }
    });

    assert!(!cni::rules::pod_rules_present(&pod.path()).unwrap());
    std::fs::write(
        pods.join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n",
    )
    .unwrap();
    wait_for(&pod_file, Some("enabled")).await;
    assert!(
        cni::rules::pod_rules_present(&pod.path()).unwrap(),
        "in-pod rules installed"
    );
    let nat = pod.exec(&["iptables-save", "-t", "nat"]);
    assert!(nat.contains("--to-ports 15006"), "{nat}");
    let set = node.exec(&["ipset", "list", "istio-inpod-probes-v4"]);
    assert!(set.contains("10.77.0.5"), "probe set: {set}");

    std::fs::write(
        pods.join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    )
    .unwrap();
    wait_for(&pod_file, None).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !cni::rules::pod_rules_present(&pod.path()).unwrap(),
        "in-pod rules removed"
    );
    let set = node.exec(&["ipset", "list", "istio-inpod-probes-v4"]);
    assert!(!set.contains("10.77.0.5"), "probe set: {set}");
    let _ = std::fs::remove_dir_all(&root);
}

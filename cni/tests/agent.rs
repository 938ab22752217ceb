//! The node agent with a recording fake [`RuleInstaller`], a `dir:` pod source in a temp dir
//! and a scripted ztunnel: enrolment order, label-driven enrol/release, restart
//! reconcile, the annotation in the YAML file, and `cmdadd` through the real plugin binary.

mod common;

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cni::agent::rules::{RuleFailure, RuleInstaller};
use cni::agent::{Agent, Config, http};
use cni::podsource::dir::DirPodSource;
use cni::rules::PodRuleConfig;
use common::{Req, ScriptedZtunnel, temp_dir};
use meshcore::env::MapEnv;
use parking_lot::Mutex;

type Log = Arc<Mutex<Vec<String>>>;

struct FakeRules(Log);

impl RuleInstaller for FakeRules {
    fn apply_pod(&self, netns: &Path, cfg: &PodRuleConfig) -> Result<(), RuleFailure> {
        self.0
            .lock()
            .push(format!("apply:{}:dns={}", netns.display(), cfg.dns_capture));
        Ok(())
    }
    fn remove_pod(&self, netns: &Path) -> Result<(), RuleFailure> {
        self.0.lock().push(format!("remove:{}", netns.display()));
        Ok(())
    }
    fn host_install(&self) -> Result<(), RuleFailure> {
        self.0.lock().push("host_install".into());
        Ok(())
    }
    fn host_add_pod(&self, uid: &str, ips: &[IpAddr]) -> Result<(), RuleFailure> {
        self.0.lock().push(format!("host_add:{uid}:{ips:?}"));
        Ok(())
    }
    fn host_remove_pod(&self, uid: &str) -> Result<(), RuleFailure> {
        self.0.lock().push(format!("host_remove:{uid}"));
        Ok(())
    }
    fn host_sync(&self, pods: &[(String, Vec<IpAddr>)]) -> Result<(), RuleFailure> {
        let uids: Vec<&str> = pods.iter().map(|p| p.0.as_str()).collect();
        self.0.lock().push(format!("host_sync:{}", uids.join(",")));
        Ok(())
    }
    fn host_uninstall(&self) -> Result<(), RuleFailure> {
        self.0.lock().push("host_uninstall".into());
        Ok(())
    }
}

struct Lab {
    root: PathBuf,
    pods: PathBuf,
    netns: PathBuf,
    run: PathBuf,
    log: Log,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let root = temp_dir(tag);
        let (pods, netns, run) = (root.join("pods"), root.join("netns"), root.join("run"));
        for d in [&pods, &netns, &run] {
            std::fs::create_dir_all(d).unwrap();
        }
        Lab {
            root,
            pods,
            netns,
            run,
            log: Arc::default(),
        }
    }

    fn config(&self) -> Config {
        let args: Vec<String> = [
            "--node-name",
            "n1",
            "--pod-source",
            &format!("dir:{}", self.pods.display()),
            "--run-dir",
            &self.run.display().to_string(),
            "--ztunnel-socket",
            &self.run.join("ztunnel.sock").display().to_string(),
            "--netns-dir",
            &self.netns.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Config::from_args(&args, &MapEnv::new()).unwrap()
    }

    fn write_ns(&self, ns: &str, ambient: bool) {
        let labels = if ambient {
            "{istio.io/dataplane-mode: ambient}"
        } else {
            "{}"
        };
        std::fs::write(
            self.pods.join(format!("ns-{ns}.yaml")),
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {labels}\n"
            ),
        )
        .unwrap();
    }

    fn pod_file(&self, name: &str) -> PathBuf {
        self.pods.join(format!("pod-{name}.yaml"))
    }

    fn write_pod(&self, ns: &str, name: &str, labels: &str, annotations: &str) {
        std::fs::write(
            self.pod_file(name),
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: keep-me, namespace: {ns}}}\n---\n\
                 apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  uid: uid-{name}\n  labels: {labels}\n  annotations: {annotations}\n\
                 spec:\n  nodeName: n1\n  serviceAccountName: sa-{name}\nstatus:\n  phase: Running\n  podIP: 10.9.0.7\n"
            ),
        )
        .unwrap();
    }

    /// A stand-in netns (any openable file works for the fake rules and fd passing).
    fn make_netns(&self, name: &str) -> PathBuf {
        let p = self.netns.join(name);
        std::fs::write(&p, b"").unwrap();
        p
    }

    fn annotation(&self, name: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.pod_file(name)).unwrap();
        let docs = cni::podsource::dir::parse_docs(&text).unwrap();
        assert_eq!(docs.len(), 2, "other objects in the file are kept");
        let pod = cni::podsource::PodMeta::from_value(&docs[1]).unwrap();
        pod.redirection().map(str::to_owned)
    }

    async fn wait_annotation(&self, name: &str, want: Option<&str>) {
        for _ in 0..100 {
            if self.annotation(name).as_deref() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "annotation of {name} never became {want:?}; log: {:?}",
            self.log.lock()
        );
    }

    async fn start_agent(&self) -> Arc<Agent> {
        let source = Arc::new(DirPodSource::start(&self.pods, "n1").unwrap());
        let agent = Agent::new(self.config(), source, Arc::new(FakeRules(self.log.clone())));
        let listener = agent.start().await.unwrap();
        tokio::spawn(listener.run(agent.zds_server().unwrap()));
        let sock = agent.config().plugin_socket();
        let _ = std::fs::remove_file(&sock);
        let pl = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(http::run_plugin_server(pl, agent.clone()));
        tokio::spawn(agent.clone().run_reconcile());
        agent.set_ready();
        agent
    }

    /// A ztunnel that acks everything and logs what it got; returns the snapshot.
    fn connect_ztunnel(&self) -> std::sync::mpsc::Receiver<Vec<Req>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (path, log) = (self.run.join("ztunnel.sock"), self.log.clone());
        std::thread::spawn(move || {
            let c = ScriptedZtunnel::connect(&path);
            c.hello();
            let _ = tx.send(c.take_snapshot());
            while let Some((r, fds)) = c.recv() {
                log.lock().push(match r {
                    Req::Add(uid, _) => format!("zds_add:{uid}:fds={}", fds.len()),
                    Req::Del(uid) => format!("zds_del:{uid}"),
                    other => format!("zds_other:{other:?}"),
                });
                c.ack("");
            }
        });
        rx
    }

    fn index(&self, prefix: &str) -> usize {
        let log = self.log.lock();
        log.iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} not in log {log:?}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_label_enrols_then_releases_in_order() {
    let lab = Lab::new("agent-labels");
    lab.write_ns("shop", false);
    lab.write_pod("shop", "web", "{}", "{}");
    let netns = lab.make_netns("web");
    let _agent = lab.start_agent().await;
    let snap = lab
        .connect_ztunnel()
        .recv_timeout(Duration::from_secs(5))
        .unwrap();
    assert!(snap.is_empty());

    lab.write_ns("shop", true);
    lab.wait_annotation("web", Some("enabled")).await;
    let apply = lab.index(&format!("apply:{}", netns.display()));
    let add = lab.index("zds_add:uid-web:fds=1");
    let probe = lab.index("host_add:uid-web:[10.9.0.7]");
    assert!(apply < add && add < probe, "{:?}", lab.log.lock());
    let state = std::fs::read_to_string(lab.run.join("pods.json")).unwrap();
    assert!(state.contains(&netns.display().to_string()), "{state}");

    lab.write_ns("shop", false);
    lab.wait_annotation("web", None).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let unprobe = lab.index("host_remove:uid-web");
    let unrule = lab.index(&format!("remove:{}", netns.display()));
    let del = lab.index("zds_del:uid-web");
    assert!(unprobe < unrule && unrule < del, "{:?}", lab.log.lock());
    // Pod label opt-in enrols again; opt-out label releases.
    lab.write_pod("shop", "web", "{istio.io/dataplane-mode: ambient}", "{}");
    lab.wait_annotation("web", Some("enabled")).await;
    lab.write_pod(
        "shop",
        "web",
        "{istio.io/dataplane-mode: none}",
        "{ambient.istio.io/redirection: enabled}",
    );
    lab.wait_annotation("web", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_adopts_annotated_pods_and_replays_them_to_ztunnel() {
    let lab = Lab::new("agent-restart");
    lab.write_ns("shop", true);
    lab.write_pod(
        "shop",
        "db",
        "{}",
        "{ambient.istio.io/redirection: enabled, ambient.istio.io/dns-capture: 'false'}",
    );
    let netns = lab.make_netns("db");
    let agent = lab.start_agent().await;
    assert_eq!(agent.cached().len(), 1);
    {
        let log = lab.log.lock().clone();
        assert_eq!(
            log,
            vec![
                "host_install".to_string(),
                format!("apply:{}:dns=false", netns.display()),
                "host_sync:uid-db".to_string(),
            ]
        );
    }
    let snap = lab
        .connect_ztunnel()
        .recv_timeout(Duration::from_secs(5))
        .unwrap();
    assert_eq!(snap, vec![Req::Add("uid-db".into(), 1)]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !lab.log.lock().iter().any(|l| l.starts_with("zds_add")),
        "no duplicate add after adoption: {:?}",
        lab.log.lock()
    );
    assert_eq!(lab.annotation("db").as_deref(), Some("enabled"));
}

fn plugin_add(run: &Path, pods: &Path, ns: &str, name: &str, netns: &Path) -> (i32, String) {
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s","type":"ambient-cni","cni_agent_run_dir":"{}","pod_source_dir":"{}","prevResult":{{"cniVersion":"1.0.0","ips":[{{"address":"10.9.0.7/16"}}]}}}}"#,
        run.display(),
        pods.display()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_ambient-cni"))
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_cmdadd_fails_without_ztunnel_then_succeeds() {
    let lab = Lab::new("agent-cmdadd");
    lab.write_ns("shop", false);
    lab.write_pod("shop", "api", "{istio.io/dataplane-mode: ambient}", "{}");
    // The netns is only known through the CNI request (not in the netns dir).
    let netns = lab.root.join("cni-netns-api");
    std::fs::write(&netns, b"").unwrap();
    let _agent = lab.start_agent().await;

    let (run, pods, n) = (lab.run.clone(), lab.pods.clone(), netns.clone());
    let (code, out) =
        tokio::task::spawn_blocking(move || plugin_add(&run, &pods, "shop", "api", &n))
            .await
            .unwrap();
    assert_ne!(code, 0, "no ztunnel: ADD must fail: {out}");
    assert!(out.contains("ztunnel"), "{out}");
    lab.wait_annotation("api", Some("pending")).await;

    let snap = lab
        .connect_ztunnel()
        .recv_timeout(Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        snap,
        vec![Req::Add("uid-api".into(), 1)],
        "pending pod is in the snapshot"
    );
    // The reconcile loop retries and finishes the enrolment.
    lab.wait_annotation("api", Some("enabled")).await;

    let (run, pods, n) = (lab.run.clone(), lab.pods.clone(), netns.clone());
    let (code, out) =
        tokio::task::spawn_blocking(move || plugin_add(&run, &pods, "shop", "api", &n))
            .await
            .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("10.9.0.7/16"),
        "prevResult passed through: {out}"
    );
}

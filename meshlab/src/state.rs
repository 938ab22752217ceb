//! The lab's record of everything it created (`lab.json`), the state directory layout, and the
//! lock that serialises changes made by several `meshlab` processes.
//!
//! Every resource is recorded *before* it is created, so `down` after a crash finds it.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result, io_err};
use crate::sys::ProcRecord;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/run/meshlab";

/// The netfilter backend the CNI agent uses for in-pod redirection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `iptables-restore` (Istio's default).
    #[default]
    Iptables,
    /// Native nftables (`NATIVE_NFTABLES=true`).
    Nftables,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "iptables" => Ok(Self::Iptables),
            "nftables" => Ok(Self::Nftables),
            _ => Err(format!("unknown backend {s:?} (use iptables or nftables)")),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
        })
    }
}

/// One node: a netns with a veth into the underlay bridge and its own pod bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// `node0`, `node1`...
    pub name: String,
    /// Position (0-based); decides the addresses.
    pub index: usize,
    /// `ml-<name>`.
    pub netns: String,
    /// Root-side end of the veth (`ml-<name>`).
    pub host_veth: String,
    /// 10.99.0.(10+index).
    pub underlay_ip: String,
    /// 10.244.<index>.0/24.
    pub pod_cidr: String,
}

/// One pod: a netns wired by the CNI chain, maybe running built-in apps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodState {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// metadata.uid.
    pub uid: String,
    /// Node name.
    pub node: String,
    /// Pod netns name.
    pub netns: String,
    /// CNI container id.
    pub container_id: String,
    /// Address from host-local IPAM, once the CNI ADD succeeded.
    pub ip: Option<String>,
    /// The Deployment owning the pod, if any.
    pub deployment: Option<String>,
    /// Its pod-template-hash.
    pub template_hash: Option<String>,
    /// Names of the app processes (keys of [`LabState::processes`]).
    pub apps: Vec<String>,
    /// Whether the ambient CNI plugin ran in the chain (so DEL must run it too).
    pub ambient_cni: bool,
}

/// Everything the lab created; `lab.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LabState {
    /// Directory of the project's binaries.
    pub bin_dir: PathBuf,
    /// Redirection backend.
    pub backend: Backend,
    /// Nodes.
    pub nodes: Vec<NodeState>,
    /// Pods by `ns/name`.
    pub pods: BTreeMap<String, PodState>,
    /// Processes by name.
    pub processes: BTreeMap<String, ProcRecord>,
    /// Network namespaces created (nodes and pods).
    pub netns: Vec<String>,
    /// Links created in the root netns.
    pub links: Vec<String>,
    /// `/etc/netns/<name>` directories created.
    pub etc_netns: Vec<PathBuf>,
    /// Round-robin cursor for pod placement.
    pub next_node: usize,
    /// Whether the CNI agent runs (a real binary was found).
    pub cni_agent: bool,
    /// Whether the ambient CNI plugin is chained.
    pub ambient_cni: bool,
    /// Set once `up` finished.
    pub ready: bool,
    /// Extra ztunnel environment from [`crate::LabConfig::ztunnel_env`].
    #[serde(default)]
    pub ztunnel_env: Vec<(String, String)>,
}

/// Paths inside a state directory.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The state directory.
    pub root: PathBuf,
}

impl Layout {
    /// Layout of `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// `cluster/`: the Kubernetes objects, one per file.
    pub fn cluster(&self) -> PathBuf {
        self.root.join("cluster")
    }
    /// `pids/`.
    pub fn pids(&self) -> PathBuf {
        self.root.join("pids")
    }
    /// `logs/`.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// `logs/<component>-<node>.log` (`logs/<component>.log` without a node).
    pub fn log(&self, component: &str, node: Option<&str>) -> PathBuf {
        match node {
            Some(n) => self.logs().join(format!("{component}-{n}.log")),
            None => self.logs().join(format!("{component}.log")),
        }
    }
    /// `nodes/<node>/`.
    pub fn node(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node)
    }
    /// The control plane's own state directory.
    pub fn controlplane(&self) -> PathBuf {
        self.root.join("controlplane")
    }
    /// `run/`: readiness files of the apps.
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    /// `lab.json`.
    pub fn lab_json(&self) -> PathBuf {
        self.root.join("lab.json")
    }
    /// `netns`: names of the namespaces created, one a line.
    pub fn netns_list(&self) -> PathBuf {
        self.root.join("netns")
    }
    fn lock(&self) -> PathBuf {
        self.root.join("lock")
    }
}

/// Reads lab.json.
pub fn load(layout: &Layout) -> Result<LabState> {
    let path = layout.lab_json();
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LabError::NotUp(layout.root.clone()));
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    serde_json::from_slice(&data).map_err(|e| LabError::Corrupt {
        path,
        reason: e.to_string(),
    })
}

/// Writes lab.json (atomically) and the plain netns list.
pub fn save(layout: &Layout, state: &LabState) -> Result<()> {
    let data = serde_json::to_vec_pretty(state).map_err(|e| LabError::Corrupt {
        path: layout.lab_json(),
        reason: e.to_string(),
    })?;
    crate::sys::write_atomic(&layout.lab_json(), &data)?;
    let mut names = state.netns.join("\n");
    names.push('\n');
    crate::sys::write_atomic(&layout.netns_list(), names.as_bytes())
}

/// Exclusive lock on the state directory, held while the lab is changed.
pub struct StateLock {
    _lock: Flock<File>,
}

impl std::fmt::Debug for StateLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateLock")
    }
}

/// Takes the lock (blocking).
pub fn lock(layout: &Layout) -> Result<StateLock> {
    let path = layout.lock();
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| LabError::Io {
        path,
        source: e.into(),
    })?;
    Ok(StateLock { _lock: lock })
}

/// Creates a directory and its parents.
pub(crate) fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(io_err(path))
}

//! # meshlab
//!
//! The local lab: nodes and pods as network namespaces, the local control plane, and on every
//! node the CNI agent and ztunnel, started like their DaemonSets would be. It runs the other
//! apps as processes (found next to its own executable, or in `MESHLAB_BIN_DIR`) and never links
//! them; it depends on no other project crate.
//!
//! * [`Lab::up`] builds the underlay bridge `mlbr0` (10.99.0.1/24, the control plane listens on
//!   10.99.0.1:15012), one netns `ml-node<i>` per node (10.99.0.(10+i), pod CIDR
//!   10.244.<i>.0/24 on a `cni0` bridge made by the real `bridge` CNI plugin), and starts
//!   `controlplane serve` (root netns), `cni-agent` and `ztunnel` (each node netns).
//! * [`Lab::apply_yaml`] writes objects to `<state>/cluster/` (one per file, watched by the
//!   control plane and the CNI agents), turns Deployments into pods, wires each pod with the CNI
//!   chain like kubelet (bridge + host-local, then `ambient-cni`), starts the built-in apps that
//!   replace container images (`meshlab app httpbin|echo`), and re-syncs the kube-proxy and DNS
//!   equivalents (see [`services`]).
//! * [`Lab::down`] / [`Lab::down_from_state`] remove every process, netns, link, mount and file
//!   the lab made, from `lab.json`, `pids/` and the `ml-` prefix.
//!
//! * [`tour::run`] is `meshlab demo`: a guided, self-checking tour of ambient mode on a
//!   two-node lab (the YAML it applies is in `meshlab/examples/demo/`).
//!
//! Tests use [`LabGuard::up`] (host-wide lock + teardown on drop):
//!
//! ```no_run
//! let lab = meshlab::LabGuard::up(meshlab::LabConfig {
//!     state_dir: "/tmp/my-test-lab".into(),
//!     ..Default::default()
//! })?;
//! lab.label("ns", "", "default", "istio.io/dataplane-mode=ambient")?;
//! lab.apply_yaml("...")?;
//! let out = lab.exec("sleep", "default", &["curl", "-sS", "http://httpbin:8000/get"])?;
//! # Ok::<(), meshlab::LabError>(())
//! ```
//!
//! The API is synchronous (it shells out to `ip`, `nft` and the CNI plugins); changes are
//! serialised by a lock file, so several `meshlab` processes may share a lab. Only one lab runs
//! per host (the underlay addresses are fixed).

pub mod apps;
pub mod chart;
pub mod curl;
pub mod dns;
pub mod error;
pub mod guard;
pub mod manifests;
pub mod objects;
pub mod pods;
pub mod prom;
pub mod services;
pub mod state;
pub mod sys;
pub mod topology;
pub mod tour;
pub mod wire;

mod lab;

pub use curl::Curl;
pub use error::{LabError, Result};
pub use guard::{HostLock, LabGuard, host_lock};
pub use lab::{DownReport, Lab, LabConfig, NodeInfo, PodInfo};
pub use services::ServiceView;
pub use state::{Backend, DEFAULT_STATE_DIR};
pub use wire::WireCounts;

/// The workspace binaries a lab runs, looked for in [`LabConfig::bin_dir`].
pub const BINARIES: [&str; 5] = [
    "controlplane",
    "ztunnel",
    "cni-agent",
    "ambient-cni",
    "meshlab",
];

/// The first of [`BINARIES`] that is not built in `dir`.
pub fn missing_binary(dir: &std::path::Path) -> Option<&'static str> {
    BINARIES.into_iter().find(|b| !dir.join(b).is_file())
}

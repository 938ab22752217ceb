//! The lab's network and its long-running components.
//!
//! ```text
//! root netns: mlbr0 10.99.0.1/24 ── controlplane (xDS + CA on 10.99.0.1:15012),
//!                                    cluster DNS (10.99.0.1:53, see crate::dns)
//!   │ veth ml-node<i> ⇄ eth0 in netns ml-node<i> (10.99.0.(10+i)/24)
//!   │   ml-node<i>: cni0 10.244.<i>.1/24 (made by the bridge CNI plugin), ztunnel, cni-agent,
//!   │               routes to every other node's 10.244.<j>.0/24 via 10.99.0.(10+j)
//!   │   pods: netns ml-<node>-<ns>-<pod>, eth0 on cni0, default route via 10.244.<i>.1
//! ```

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result, io_err};
use crate::state::{Backend, LabState, Layout, NodeState, mkdir, save};
use crate::sys::{self, ip, run};

/// The underlay bridge in the root netns.
pub const BRIDGE: &str = "mlbr0";
/// Prefix of every netns and root-side link the lab creates.
pub const PREFIX: &str = "ml-";
/// The control plane's address on the underlay.
pub const CP_IP: &str = "10.99.0.1";
/// The control plane's gRPC port.
pub const CP_PORT: u16 = 15012;
/// Name the control plane's serving certificate carries.
pub const CP_SAN: &str = "istiod.istio-system.svc";
/// The pod bridge inside each node.
pub const POD_BRIDGE: &str = "cni0";
/// Longest netns name we create.
const NETNS_MAX: usize = 60;

/// Node name for an index.
pub fn node_name(i: usize) -> String {
    format!("node{i}")
}

/// A node's addresses.
pub fn node_state(i: usize) -> NodeState {
    let name = node_name(i);
    NodeState {
        netns: format!("{PREFIX}{name}"),
        host_veth: format!("{PREFIX}{name}"),
        underlay_ip: format!("10.99.0.{}", 10 + i),
        pod_cidr: format!("10.244.{i}.0/24"),
        index: i,
        name,
    }
}

/// Netns name of a pod: `ml-<node>-<ns>-<pod>`, shortened with a hash when too long.
pub fn pod_netns(node: &str, ns: &str, pod: &str) -> String {
    let full = format!("{PREFIX}{node}-{ns}-{pod}");
    if full.len() <= NETNS_MAX {
        return full;
    }
    let hash = format!("{:08x}", sys::fnv64(full.as_bytes()) as u32);
    format!("{}-{hash}", &full[..NETNS_MAX - 9])
}

/// Where the project's binaries are: `MESHLAB_BIN_DIR`, else next to the running executable
/// (or its parent when that is cargo's `deps/`).
pub fn default_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MESHLAB_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().and_then(|n| n.to_str()) == Some("deps")
        && let Some(p) = dir.parent()
    {
        return p.to_path_buf();
    }
    dir
}

/// Path of a required binary.
pub fn binary(bin_dir: &Path, name: &str, package: &'static str) -> Result<PathBuf> {
    let p = bin_dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(LabError::MissingBinary {
            name: name.into(),
            dir: bin_dir.to_path_buf(),
            package,
        })
    }
}

/// Whether the CNI agent binary is a real implementation (answers `--help` with its flags).
pub fn cni_agent_usable(bin_dir: &Path) -> bool {
    let p = bin_dir.join("cni-agent");
    p.is_file()
        && sys::output_input(Command::new(&p).arg("--help"), None).is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--node-name")
        })
}

/// Whether the ambient CNI plugin is a real implementation (answers `CNI_COMMAND=VERSION`).
pub fn ambient_cni_usable(bin_dir: &Path) -> bool {
    let p = bin_dir.join("ambient-cni");
    p.is_file()
        && sys::output_input(
            Command::new(&p).env("CNI_COMMAND", "VERSION"),
            Some(br#"{"cniVersion":"1.0.0"}"#),
        )
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("supportedVersions")
        })
}

/// Names the state directory of the lab that holds the underlay (written by `up`, removed by
/// `down`), so that no other lab tears down its network by mistake.
pub const ACTIVE_MARKER: &str = "/run/meshlab-active";

/// The state directory of another lab that is running (its control plane is alive), if any.
pub fn other_active_lab(own: &Path) -> Option<PathBuf> {
    let dir = PathBuf::from(std::fs::read_to_string(ACTIVE_MARKER).ok()?.trim());
    let same = |a: &Path, b: &Path| {
        a == b
            || (a.canonicalize().ok().is_some() && a.canonicalize().ok() == b.canonicalize().ok())
    };
    if same(&dir, own) {
        return None;
    }
    let st = crate::state::load(&Layout::new(&dir)).ok()?;
    st.processes
        .get("controlplane")
        .filter(|r| r.alive())
        .map(|_| dir)
}

/// Refuses to start when another lab (or something else) holds the underlay.
pub fn check_free(layout: &Layout) -> Result<()> {
    if let Some(other) = other_active_lab(&layout.root) {
        return Err(LabError::InUse {
            what: format!("the lab network (a lab is running in {})", other.display()),
            hint: format!(
                "one lab per host: run `meshlab down --state-dir {}` first",
                other.display()
            ),
        });
    }
    if layout.lab_json().exists() {
        return Err(LabError::InUse {
            what: format!("state directory {}", layout.root.display()),
            hint: "a lab is already up there; run `meshlab down` first".into(),
        });
    }
    if sys::link_names().iter().any(|l| l == BRIDGE) {
        return Err(LabError::InUse {
            what: format!("bridge {BRIDGE}"),
            hint: "another lab is running; run `meshlab down --state-dir <its dir>` (or `ip link del mlbr0`)".into(),
        });
    }
    let addrs = ip(&["-4", "-o", "addr", "show"])?;
    if addrs.contains(" 10.99.0.") {
        return Err(LabError::InUse {
            what: "address range 10.99.0.0/24".into(),
            hint: "another interface already uses it; remove that address first".into(),
        });
    }
    Ok(())
}

/// Creates the underlay bridge (recorded first).
pub fn create_bridge(layout: &Layout, st: &mut LabState) -> Result<()> {
    st.links.push(BRIDGE.into());
    save(layout, st)?;
    ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{CP_IP}/24"), "dev", BRIDGE])?;
    ip(&["link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// Creates a node netns, its veth and routes (recorded first).
pub fn create_node(
    layout: &Layout,
    st: &mut LabState,
    node: &NodeState,
    all: &[NodeState],
) -> Result<()> {
    st.netns.push(node.netns.clone());
    st.links.push(node.host_veth.clone());
    st.nodes.push(node.clone());
    save(layout, st)?;
    mkdir(&layout.node(&node.name))?;
    ip(&["netns", "add", &node.netns])?;
    let ns = node.netns.as_str();
    ip(&[
        "link",
        "add",
        &node.host_veth,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns,
    ])?;
    ip(&["link", "set", &node.host_veth, "master", BRIDGE, "up"])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{}/24", node.underlay_ip),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", ns, "route", "add", "default", "via", CP_IP])?;
    for other in all.iter().filter(|o| o.name != node.name) {
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            &other.pod_cidr,
            "via",
            &other.underlay_ip,
        ])?;
    }
    run(sys::in_netns(ns, "sysctl").args(["-qw", "net.ipv4.ip_forward=1"]))?;
    crate::wire::install(ns)?;
    // What the node's processes (ztunnel: DNS forwarding, on-demand resolution) resolve with.
    let etc = crate::services::etc_dir(ns);
    st.etc_netns.push(etc.clone());
    save(layout, st)?;
    mkdir(&etc)?;
    sys::write_in_place(
        &etc.join("resolv.conf"),
        format!("nameserver {CP_IP}\nsearch {}\n", crate::dns::DOMAIN).as_bytes(),
    )?;
    // The root netns reaches pods through their node (routes vanish with the bridge).
    ip(&[
        "route",
        "add",
        &node.pod_cidr,
        "via",
        &node.underlay_ip,
        "dev",
        BRIDGE,
    ])?;
    Ok(())
}

/// Polls `f` until it returns true.
pub(crate) fn wait_for(
    what: &str,
    secs: u64,
    log: &Path,
    proc: Option<&sys::ProcRecord>,
    mut f: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return Ok(());
        }
        if let Some(p) = proc
            && !p.alive()
        {
            return Err(LabError::Exited {
                what: what.into(),
                log: log.to_path_buf(),
                tail: sys::tail(log, 20),
            });
        }
        if Instant::now() > deadline {
            return Err(LabError::Timeout {
                what: what.into(),
                secs,
                log: log.to_path_buf(),
                tail: sys::tail(log, 20),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts the control plane in the root netns and waits until it accepts connections.
pub fn start_controlplane(layout: &Layout, st: &mut LabState) -> Result<()> {
    let bin = binary(&st.bin_dir, "controlplane", "controlplane")?;
    let cp_dir = layout.controlplane();
    mkdir(&cp_dir)?;
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--config")
        .arg(layout.cluster())
        .arg("--state-dir")
        .arg(&cp_dir)
        .args(["--listen", &format!("{CP_IP}:{CP_PORT}"), "--san", CP_SAN]);
    let log = layout.log("controlplane", None);
    let rec = sys::spawn_detached("controlplane", &cmd, &log, &layout.pids())?;
    st.processes.insert(rec.name.clone(), rec.clone());
    save(layout, st)?;
    let addr: SocketAddr = format!("{CP_IP}:{CP_PORT}")
        .parse()
        .map_err(|_| LabError::Invalid("bad address".into()))?;
    let root = cp_dir.join("root-cert.pem");
    wait_for(
        "the control plane (10.99.0.1:15012)",
        60,
        &log,
        Some(&rec),
        || root.exists() && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
    )
}

/// Starts the cluster DNS on `10.99.0.1:53` (see [`crate::dns`]) with an empty zone (the
/// lab fills it as Services and pods come) and waits until it answers.
pub fn start_cluster_dns(layout: &Layout, st: &mut LabState) -> Result<()> {
    let bin = binary(&st.bin_dir, "meshlab", "meshlab")?;
    let zone = crate::dns::zone_path(layout);
    crate::dns::write_zone(layout, &crate::dns::Zone::new())?;
    let listen = format!("{CP_IP}:53");
    let mut cmd = Command::new(bin);
    cmd.args(["cluster-dns", "--listen", &listen, "--zone"])
        .arg(&zone);
    let log = layout.log("cluster-dns", None);
    let rec = sys::spawn_detached("cluster-dns", &cmd, &log, &layout.pids())?;
    st.processes.insert(rec.name.clone(), rec.clone());
    save(layout, st)?;
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| LabError::Invalid("bad address".into()))?;
    wait_for(
        "the cluster DNS (10.99.0.1:53)",
        20,
        &log,
        Some(&rec),
        || crate::dns::answers(addr),
    )
}

/// Waits until a node's ztunnel answers `ready` on :15021 (needs `curl`; skipped without it).
pub fn wait_ztunnel_ready(layout: &Layout, node: &NodeState, secs: u64) -> Result<()> {
    if sys::which("curl").is_none() {
        tracing::warn!("curl not installed: not waiting for ztunnel readiness");
        return Ok(());
    }
    let log = layout.log("ztunnel", Some(&node.name));
    wait_for(
        &format!(
            "ztunnel on {} to be ready (:15021/healthz/ready)",
            node.name
        ),
        secs,
        &log,
        None,
        || {
            sys::output_input(
                sys::in_netns(&node.netns, "curl").args([
                    "-s",
                    "-m",
                    "1",
                    "http://127.0.0.1:15021/healthz/ready",
                ]),
                None,
            )
            .is_ok_and(|o| o.stdout == b"ready\n")
        },
    )
}

/// Everything ztunnel's environment is built from.
#[derive(Debug, Clone)]
pub struct ZtunnelEnvInput<'a> {
    /// The node.
    pub node: &'a NodeState,
    /// ZDS socket path.
    pub zds_socket: PathBuf,
    /// Root certificate of the control plane.
    pub root_cert: PathBuf,
    /// File holding ztunnel's service-account token.
    pub token_file: PathBuf,
}

/// The lab's part of ztunnel's environment: what the kubelet fills in and what points into the
/// lab. It goes on top of the rendered chart's environment (see [`crate::chart`]).
pub fn ztunnel_env(i: &ZtunnelEnvInput<'_>) -> Vec<(String, String)> {
    let cp = format!("https://{CP_IP}:{CP_PORT}");
    let root = i.root_cert.display().to_string();
    [
        ("PROXY_MODE", "shared".to_string()),
        ("INPOD_UDS", i.zds_socket.display().to_string()),
        ("XDS_ADDRESS", cp.clone()),
        ("CA_ADDRESS", cp),
        ("XDS_ROOT_CA", root.clone()),
        ("CA_ROOT_CA", root),
        ("AUTH_TOKEN", i.token_file.display().to_string()),
        ("ALT_XDS_HOSTNAME", CP_SAN.to_string()),
        ("ALT_CA_HOSTNAME", CP_SAN.to_string()),
        ("NODE_NAME", i.node.name.clone()),
        ("POD_NAME", format!("ztunnel-{}", i.node.name)),
        ("POD_NAMESPACE", "istio-system".to_string()),
        ("SERVICE_ACCOUNT", "ztunnel".to_string()),
        ("INSTANCE_IP", i.node.underlay_ip.clone()),
        ("CLUSTER_ID", "Kubernetes".to_string()),
        ("RUST_LOG", "info".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The chart's environment for a container, or `None` with a warning naming the command that
/// produces it (the lab then runs with its built-in environment only).
fn chart_env_or_warn(
    bin_dir: &Path,
    chart: &str,
    container: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    let env = crate::chart::env(bin_dir, chart, container);
    if env.is_none() {
        tracing::warn!(
            chart,
            dir = %crate::chart::chart_dir(bin_dir).display(),
            "no rendered chart found (run `make charts-check`); using the lab's built-in environment"
        );
    }
    env
}

/// The CNI agent's environment.
pub fn cni_agent_env(backend: Backend) -> Vec<(String, String)> {
    [
        ("AMBIENT_ENABLED", "true"),
        ("AMBIENT_DNS_CAPTURE", "true"),
        ("AMBIENT_IPV6", "false"),
        (
            "NATIVE_NFTABLES",
            if backend == Backend::Nftables {
                "true"
            } else {
                "false"
            },
        ),
        ("EXCLUDE_NAMESPACES", "kube-system"),
        ("POD_NAMESPACE", "istio-system"),
        ("RUST_LOG", "info"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The node agent's run directory (holds `pluginevent.sock`).
pub fn agent_run_dir(layout: &Layout, node: &str) -> PathBuf {
    layout.node(node).join("cni-agent")
}

/// ZDS socket of a node.
pub fn zds_socket(layout: &Layout, node: &str) -> PathBuf {
    layout.node(node).join("ztunnel.sock")
}

/// Starts a node's CNI agent (when built) and ztunnel inside the node netns.
pub fn start_node_components(layout: &Layout, st: &mut LabState, node: &NodeState) -> Result<()> {
    if st.cni_agent {
        start_cni_agent(layout, st, node)?;
    } else {
        tracing::warn!(node = %node.name, "cni-agent not built (or a stub): pods are not enrolled");
    }
    start_ztunnel(layout, st, node)
}

/// Starts a node's CNI agent and waits for its ZDS socket.
pub fn start_cni_agent(layout: &Layout, st: &mut LabState, node: &NodeState) -> Result<()> {
    let run_dir = agent_run_dir(layout, &node.name);
    mkdir(&run_dir)?;
    let zds = zds_socket(layout, &node.name);
    // A restarted agent makes a new socket; wait for that one, not the old file.
    let _ = std::fs::remove_file(&zds);
    let mut cmd = sys::in_netns(&node.netns, st.bin_dir.join("cni-agent"));
    cmd.args(["--node-name", &node.name])
        .arg("--pod-source")
        .arg(format!("dir:{}", layout.cluster().display()))
        .arg("--run-dir")
        .arg(&run_dir)
        .arg("--ztunnel-socket")
        .arg(&zds)
        .envs(crate::chart::merge(
            chart_env_or_warn(&st.bin_dir, "cni", "cni-agent"),
            cni_agent_env(st.backend),
        ));
    let log = layout.log("cni-agent", Some(&node.name));
    let rec = sys::spawn_detached(
        &format!("cni-agent-{}", node.name),
        &cmd,
        &log,
        &layout.pids(),
    )?;
    st.processes.insert(rec.name.clone(), rec.clone());
    save(layout, st)?;
    wait_for("the CNI agent's ZDS socket", 30, &log, Some(&rec), || {
        zds.exists()
    })
}

/// Starts a node's ztunnel with a fresh token (does not wait for readiness).
pub fn start_ztunnel(layout: &Layout, st: &mut LabState, node: &NodeState) -> Result<()> {
    let ztunnel = binary(&st.bin_dir, "ztunnel", "ztunnel")?;
    let cp = binary(&st.bin_dir, "controlplane", "controlplane")?;
    let dir = layout.node(&node.name);
    mkdir(&dir)?;
    let token = run(Command::new(&cp)
        .args([
            "token",
            "--namespace",
            "istio-system",
            "--service-account",
            "ztunnel",
            "--node",
            &node.name,
        ])
        .arg("--state-dir")
        .arg(layout.controlplane()))?;
    let token_file = dir.join("ztunnel-token");
    std::fs::write(&token_file, token.trim()).map_err(io_err(&token_file))?;
    let mut env = ztunnel_env(&ZtunnelEnvInput {
        node,
        zds_socket: zds_socket(layout, &node.name),
        root_cert: layout.controlplane().join("root-cert.pem"),
        token_file,
    });
    env.extend(st.ztunnel_env.iter().cloned());
    let env = crate::chart::merge(
        chart_env_or_warn(&st.bin_dir, "ztunnel", "istio-proxy"),
        env,
    );
    let mut cmd = sys::in_netns(&node.netns, ztunnel);
    cmd.envs(env);
    let log = layout.log("ztunnel", Some(&node.name));
    let rec = sys::spawn_detached(
        &format!("ztunnel-{}", node.name),
        &cmd,
        &log,
        &layout.pids(),
    )?;
    st.processes.insert(rec.name.clone(), rec);
    save(layout, st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_netns_names_stay_short_and_distinct() {
        assert_eq!(
            pod_netns("node0", "default", "sleep-abc"),
            "ml-node0-default-sleep-abc"
        );
        let long = "x".repeat(70);
        let a = pod_netns("node0", "default", &format!("{long}a"));
        let b = pod_netns("node0", "default", &format!("{long}b"));
        assert!(a.len() <= 60 && b.len() <= 60);
        assert_ne!(a, b);
    }

    #[test]
    fn node_addresses() {
        let n = node_state(1);
        assert_eq!(
            (
                n.netns.as_str(),
                n.underlay_ip.as_str(),
                n.pod_cidr.as_str()
            ),
            ("ml-node1", "10.99.0.11", "10.244.1.0/24")
        );
    }

    #[test]
    fn ztunnel_env_has_the_contract() {
        let n = node_state(0);
        let env = ztunnel_env(&ZtunnelEnvInput {
            node: &n,
            zds_socket: "/s/z.sock".into(),
            root_cert: "/s/root.pem".into(),
            token_file: "/s/t".into(),
        });
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("XDS_ADDRESS"), Some("https://10.99.0.1:15012"));
        assert_eq!(get("INPOD_UDS"), Some("/s/z.sock"));
        assert_eq!(get("POD_NAME"), Some("ztunnel-node0"));
        assert_eq!(get("INSTANCE_IP"), Some("10.99.0.10"));
        assert_eq!(get("ALT_CA_HOSTNAME"), Some(CP_SAN));
    }
}

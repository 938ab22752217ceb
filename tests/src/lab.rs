//! Support for the end-to-end tests that run the whole mesh in a [`meshlab`] lab.
//!
//! * [`start`]: a lab (host-wide lock, torn down on drop even when the test panics) built from
//!   the binaries next to the test executable (`target/debug`), failing loudly when one is
//!   missing or when not root;
//! * [`curl`]: `curl` run inside a pod ([`Curl`]: exit code, HTTP status, body, error text);
//! * [`wait_until`]: bounded polling with a description for the failure message;
//! * fixtures: the Istio samples the scenarios use, placed on chosen nodes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use meshlab::manifests::{app, namespace, sleep_and_httpbin};
pub use meshlab::{Backend, Curl, Lab, LabConfig, LabGuard, WireCounts, prom};

/// Polls `f` every 200 ms until it returns `Ok`, failing after `secs` with `what` and the
/// last `Err` value seen.
#[track_caller]
pub fn wait_until<T, S: std::fmt::Debug>(
    what: &str,
    secs: u64,
    mut f: impl FnMut() -> Result<T, S>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "{what}: not reached within {secs} s; last: {last:?}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The directory with `controlplane`, `ztunnel`, `cni-agent`, `ambient-cni` and `meshlab`:
/// `MESHLAB_BIN_DIR`, or the cargo target directory this test runs from.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MESHLAB_BIN_DIR") {
        return d.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test executable inside a target directory")
        .to_path_buf();
    if let Some(b) = meshlab::missing_binary(&dir) {
        panic!(
            "{b} is not built in {}: run `cargo build --workspace --bins` first (make test does)",
            dir.display()
        );
    }
    dir
}

/// Brings up a lab of `nodes` nodes with `backend`, and extra ztunnel environment.
pub fn start_with(name: &str, nodes: usize, backend: Backend, env: &[(&str, &str)]) -> LabGuard {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the end-to-end tests need root (network namespaces, bridges, nftables)"
    );
    let cfg = LabConfig {
        nodes,
        backend,
        state_dir: PathBuf::from(format!("/tmp/mesh-e2e-{name}-{}", std::process::id())),
        bin_dir: bin_dir(),
        ztunnel_env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let lab = LabGuard::up(cfg).unwrap_or_else(|e| panic!("meshlab up failed: {e}"));
    assert!(
        lab.enrolment_available().expect("lab state"),
        "the lab runs without the CNI agent or plugin: build the cni crate"
    );
    lab
}

/// A two-node lab.
pub fn start(name: &str, backend: Backend) -> LabGuard {
    start_with(name, 2, backend, &[])
}

/// Runs `curl -sS -m 5 URL` (plus `extra` arguments) in a pod ([`Lab::curl`]).
pub fn curl(lab: &Lab, pod: &str, ns: &str, url: &str, extra: &[&str]) -> Curl {
    lab.curl(pod, ns, url, extra)
        .unwrap_or_else(|e| panic!("exec curl in {ns}/{pod}: {e}"))
}

/// `GET http://httpbin.default:8000/delay/<secs>` from `default/sleep`, run in the background
/// (`curl -m 30`): a long request in flight while a test changes something under it.
pub fn slow_request(lab: &Lab, secs: u32) -> std::thread::JoinHandle<Curl> {
    let lab = lab.clone();
    std::thread::spawn(move || {
        let url = format!("http://httpbin.default:8000/delay/{secs}");
        curl(&lab, "sleep", "default", &url, &["-m", "30"])
    })
}

/// Polls `curl` until `want` holds for its result (bounded by `secs`); returns that result.
#[track_caller]
pub fn curl_until(
    lab: &Lab,
    (pod, ns): (&str, &str),
    url: &str,
    secs: u64,
    what: &str,
    want: impl Fn(&Curl) -> bool,
) -> Curl {
    wait_until(what, secs, || {
        let c = curl(lab, pod, ns, url, &[]);
        if want(&c) { Ok(c) } else { Err(c) }
    })
}

/// Sums a metric over every node's ztunnel, for the samples with all of `labels`.
pub fn ztunnel_metric(lab: &Lab, name: &str, labels: &[(&str, &str)]) -> f64 {
    lab.nodes()
        .expect("nodes")
        .iter()
        .map(|n| {
            let samples = lab
                .ztunnel_metrics(&n.name)
                .unwrap_or_else(|e| panic!("metrics of ztunnel on {}: {e}", n.name));
            prom::sum(&samples, name, labels)
        })
        .sum()
}

/// Every ztunnel log, for failure messages.
pub fn ztunnel_logs(lab: &Lab) -> String {
    lab.nodes()
        .expect("nodes")
        .iter()
        .map(|n| {
            format!(
                "--- ztunnel on {} ---\n{}",
                n.name,
                lab.logs("ztunnel", Some(&n.name)).unwrap_or_default()
            )
        })
        .collect()
}

/// Generates one `#[test]` per redirection backend for a scenario `fn(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod iptables {
            $(#[test] fn $scenario() { super::$scenario($crate::lab::Backend::Iptables) })*
        }
        mod nftables {
            $(#[test] fn $scenario() { super::$scenario($crate::lab::Backend::Nftables) })*
        }
    };
}

/// Sends one DNS `A` query for `name` to `server` from inside the network namespace `netns`
/// (as a pod's resolver would) and returns the addresses of the answer. The socket is made on
/// a thread that enters the namespace and then ends.
pub fn dns_query_a(
    netns: &str,
    server: std::net::SocketAddr,
    name: &str,
) -> std::io::Result<Vec<std::net::Ipv4Addr>> {
    let path = PathBuf::from("/var/run/netns").join(netns);
    let name = name.to_string();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path)?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
        sock.set_read_timeout(Some(Duration::from_secs(3)))?;
        let id: u16 = 0x5a5a;
        let mut q = Vec::new();
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, one question
        for label in name.trim_end_matches('.').split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
        sock.send_to(&q, server)?;
        let mut buf = [0u8; 1500];
        let (n, _) = sock.recv_from(&mut buf)?;
        parse_a_answers(&buf[..n], id)
            .ok_or_else(|| std::io::Error::other(format!("malformed DNS reply: {:?}", &buf[..n])))
    })
    .join()
    .map_err(|_| std::io::Error::other("DNS query thread panicked"))?
}

/// The `A` records of a DNS reply with the given id (`None` when it does not parse).
fn parse_a_answers(m: &[u8], id: u16) -> Option<Vec<std::net::Ipv4Addr>> {
    let u16_at = |i: usize| Some(u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?]));
    if u16_at(0)? != id {
        return None;
    }
    let (qd, an) = (u16_at(4)?, u16_at(6)?);
    let skip_name = |mut i: usize| -> Option<usize> {
        loop {
            let len = *m.get(i)?;
            if len & 0xc0 == 0xc0 {
                return Some(i + 2);
            }
            if len == 0 {
                return Some(i + 1);
            }
            i += 1 + len as usize;
        }
    };
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(i)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        i = skip_name(i)?;
        let (ty, len) = (u16_at(i)?, u16_at(i + 8)? as usize);
        let data = m.get(i + 10..i + 10 + len)?;
        if ty == 1 && len == 4 {
            out.push(std::net::Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += 10 + len;
    }
    Some(out)
}

/// A pod's network namespace name (the first pod whose name starts with `prefix` in `ns`).
pub fn pod_netns(lab: &Lab, ns: &str, prefix: &str) -> String {
    pod_info(lab, ns, prefix).netns
}

/// A pod (the first whose name starts with `prefix` in `ns`).
pub fn pod_info(lab: &Lab, ns: &str, prefix: &str) -> meshlab::PodInfo {
    lab.pods()
        .expect("pods")
        .into_iter()
        .find(|p| p.namespace == ns && p.name.starts_with(prefix))
        .unwrap_or_else(|| panic!("no pod {prefix}* in {ns}"))
}

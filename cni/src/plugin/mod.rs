//! The chained CNI plugin (`ambient-cni`).
//!
//! [`run`] takes the environment and stdin and returns what to print and the exit code; the
//! binary only does I/O around it (and catches panics). Commands:
//!
//! | command | behaviour |
//! |---|---|
//! | `ADD` | skip rules (no pod name/namespace in `CNI_ARGS`, the agent's own `istio-cni-node-*` pods, excluded namespaces, `ambient_enabled: false`); otherwise look the pod and its namespace up (the `pod_source_dir` YAML directory in the lab, the API via `<cni_agent_run_dir>/istio-cni-kubeconfig` otherwise) and, when the enablement selectors match, `POST /cmdadd` to the agent over `<cni_agent_run_dir>/pluginevent.sock` (5 s). Agent unreachable or non-200 ⇒ ADD fails (fail closed). A failed lookup (1 retry after 1 s; 30 with `enable_ambient_detection_retry`, then failure) means "not ambient". Success prints `prevResult` byte for byte (or an empty result of the requested version) |
//! | `DEL`, `CHECK` (≥ 0.4.0), `GC`, `STATUS` (≥ 1.1.0) | success, no output |
//! | `VERSION` | the supported versions |
//!
//! Errors are CNI error objects on stdout (`cniVersion`, `code`, `msg`, `details`) with exit
//! code 1: 1 incompatible version, 4 bad environment, 6 undecodable stdin, 7 invalid config,
//! 11 try again later (agent failure), 999 internal.

pub mod json;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshcore::env::EnvSource;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::agent::{CmdAdd, CmdAddAddress, CmdAddIp};
use crate::podsource::{PodLookup, PodMeta};
use crate::selectors::{self, EnablementSelector, Enrollment};

/// CNI spec versions this plugin accepts.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Timeout of the agent request.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

/// CNI error codes used.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// Internal error.
    pub const INTERNAL: u32 = 999;
}

/// What the binary prints and its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Text for stdout (may be empty).
    pub stdout: String,
    /// Exit code.
    pub exit_code: i32,
}

/// A CNI error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    /// Spec error code.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Details.
    pub details: String,
}

impl CniError {
    /// An error with `code`.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error as the plugin's output.
    pub fn output(&self, version: &str) -> Output {
        Output {
            stdout: json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details})
                .to_string(),
            exit_code: 1,
        }
    }
}

/// The plugin's stdin.
#[derive(Debug, Clone, Deserialize)]
pub struct PluginConf {
    /// Requested spec version.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Network name.
    #[serde(default)]
    pub name: String,
    /// Plugin type.
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// Log level (`info` default; `debug` logs the decision to stderr).
    #[serde(default)]
    pub plugin_log_level: Option<String>,
    /// The agent's run directory.
    #[serde(default = "default_run_dir")]
    pub cni_agent_run_dir: PathBuf,
    /// Ambient on at all.
    #[serde(default = "yes")]
    pub ambient_enabled: bool,
    /// Enablement selectors (default: Istio's two).
    #[serde(default)]
    pub enablement_selectors: Option<Vec<EnablementSelector>>,
    /// Never-captured namespaces.
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
    /// The agent's namespace.
    #[serde(default = "default_system_ns")]
    pub pod_namespace: String,
    /// nftables mode (the agent decides; accepted for compatibility).
    #[serde(default)]
    pub native_nftables: bool,
    /// Keep retrying pod lookups (30 × 1 s) and fail ADD if they never succeed.
    #[serde(default)]
    pub enable_ambient_detection_retry: bool,
    /// Lab extension: directory of pod/namespace YAML used instead of the API.
    #[serde(default)]
    pub pod_source_dir: Option<PathBuf>,
    /// The previous plugin's result.
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
}

fn default_run_dir() -> PathBuf {
    "/var/run/istio-cni".into()
}
fn default_system_ns() -> String {
    "istio-system".into()
}
fn yes() -> bool {
    true
}

/// `vMAJ.MIN.PATCH` as a comparable tuple.
fn version_tuple(v: &str) -> (u32, u32, u32) {
    let mut it = v.split('.').map(|p| p.parse().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

/// Parses `CNI_ARGS` (`K=V;K=V`).
pub fn parse_cni_args(s: &str) -> BTreeMap<String, String> {
    s.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Parses and validates stdin.
pub fn parse_conf(stdin: &[u8]) -> Result<(PluginConf, String), CniError> {
    let text = std::str::from_utf8(stdin)
        .map_err(|e| CniError::new(code::DECODE, "stdin is not UTF-8", e.to_string()))?;
    let conf: PluginConf = serde_json::from_str(text).map_err(|e| {
        CniError::new(
            code::DECODE,
            "failed to decode the network configuration",
            e.to_string(),
        )
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!(
                "cniVersion {:?} is not one of {}",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    if let Some(s) = &conf.enablement_selectors {
        selectors::validate_all(s).map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                "invalid enablement_selectors",
                e.to_string(),
            )
        })?;
    }
    Ok((conf, text.to_owned()))
}

/// The empty result of `version` (used when there is no `prevResult`).
pub fn empty_result(version: &str) -> Value {
    if version_tuple(version) >= (1, 0, 0) {
        json!({"cniVersion": version})
    } else {
        json!({"cniVersion": version, "ips": [], "dns": {}})
    }
}

/// Runs one invocation.
pub fn run(env: &dyn EnvSource, stdin: &[u8]) -> Output {
    let fallback = "1.1.0";
    let Some(command) = env.get("CNI_COMMAND").filter(|c| !c.is_empty()) else {
        return CniError::new(
            code::INVALID_ENV,
            "CNI_COMMAND is not set",
            "set CNI_COMMAND to ADD, DEL, CHECK, GC, STATUS or VERSION",
        )
        .output(fallback);
    };
    if command == "VERSION" {
        let v = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| {
                v.get("cniVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
            .unwrap_or_else(|| fallback.to_owned());
        return Output {
            stdout: json!({"cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS}).to_string(),
            exit_code: 0,
        };
    }
    if !matches!(command.as_str(), "ADD" | "DEL" | "CHECK" | "GC" | "STATUS") {
        return CniError::new(
            code::INVALID_ENV,
            "unknown CNI_COMMAND",
            format!("{command:?} is not ADD, DEL, CHECK, GC, STATUS or VERSION"),
        )
        .output(fallback);
    }
    let (conf, text) = match parse_conf(stdin) {
        Ok(c) => c,
        Err(e) => {
            let v = serde_json::from_slice::<Value>(stdin)
                .ok()
                .and_then(|v| {
                    v.get("cniVersion")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| fallback.to_owned());
            return e.output(&v);
        }
    };
    let version = conf.cni_version.clone();
    let ok_empty = Output {
        stdout: String::new(),
        exit_code: 0,
    };
    let needs = |min: (u32, u32, u32), what: &str| -> Option<Output> {
        (version_tuple(&version) < min).then(|| {
            CniError::new(
                code::INCOMPATIBLE_VERSION,
                "incompatible CNI version",
                format!(
                    "{what} needs cniVersion {}.{}.{} or later",
                    min.0, min.1, min.2
                ),
            )
            .output(&version)
        })
    };
    match command.as_str() {
        "DEL" => ok_empty,
        "CHECK" => needs((0, 4, 0), "CHECK").unwrap_or(ok_empty),
        "GC" | "STATUS" => needs((1, 1, 0), &command).unwrap_or(ok_empty),
        _ => match cmd_add(env, &conf) {
            Ok(()) => Output {
                stdout: json::raw_field(&text, "prevResult")
                    .filter(|r| *r != "null")
                    .map(str::to_owned)
                    .unwrap_or_else(|| empty_result(&version).to_string()),
                exit_code: 0,
            },
            Err(e) => e.output(&version),
        },
    }
}

fn debug_log(conf: &PluginConf, msg: &str) {
    if conf.plugin_log_level.as_deref() == Some("debug") {
        eprintln!("ambient-cni: {msg}");
    }
}

/// ADD: decide, then ask the agent.
fn cmd_add(env: &dyn EnvSource, conf: &PluginConf) -> Result<(), CniError> {
    let netns = env
        .get("CNI_NETNS")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                "CNI_NETNS is not set",
                "ADD needs the pod's network namespace path",
            )
        })?;
    if !conf.ambient_enabled {
        return Ok(());
    }
    let args = parse_cni_args(&env.get("CNI_ARGS").unwrap_or_default());
    let (Some(name), Some(namespace)) = (
        args.get("K8S_POD_NAME").filter(|v| !v.is_empty()),
        args.get("K8S_POD_NAMESPACE").filter(|v| !v.is_empty()),
    ) else {
        debug_log(
            conf,
            "no K8S_POD_NAME/K8S_POD_NAMESPACE: not a Kubernetes pod, skipping",
        );
        return Ok(());
    };
    if namespace == &conf.pod_namespace && name.starts_with("istio-cni-node-") {
        return Ok(());
    }
    if conf.exclude_namespaces.contains(namespace) {
        return Ok(());
    }
    let enrollment = Enrollment {
        selectors: conf
            .enablement_selectors
            .clone()
            .unwrap_or_else(selectors::default_selectors),
        exclude_namespaces: conf.exclude_namespaces.clone(),
        system_namespace: conf.pod_namespace.clone(),
    };
    let tries = if conf.enable_ambient_detection_retry {
        30
    } else {
        2
    };
    let mut found = None;
    let mut last_err = String::from("pod not found");
    for i in 0..tries {
        if i > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        match lookup(conf, namespace, name) {
            Ok(Some(p)) => {
                found = Some(p);
                break;
            }
            Ok(None) => last_err = format!("pod {namespace}/{name} not found"),
            Err(e) => last_err = e,
        }
    }
    let Some((pod, ns_labels)) = found else {
        if conf.enable_ambient_detection_retry {
            return Err(CniError::new(
                code::TRY_AGAIN,
                "cannot determine whether the pod is ambient",
                last_err,
            ));
        }
        debug_log(
            conf,
            &format!("{last_err}; treating the pod as not ambient"),
        );
        return Ok(());
    };
    let decision = enrollment.decide(&pod, &ns_labels);
    debug_log(conf, &format!("pod {namespace}/{name}: {decision:?}"));
    if !decision.is_enroll() {
        return Ok(());
    }
    let body = CmdAdd {
        netns,
        pod_name: name.clone(),
        pod_namespace: namespace.clone(),
        ips: prev_result_ips(conf.prev_result.as_ref()),
    };
    let sock = conf.cni_agent_run_dir.join("pluginevent.sock");
    post_cmdadd(&sock, &body).map_err(|e| {
        CniError::new(
            code::TRY_AGAIN,
            format!("ambient pod {namespace}/{name} could not be added to the mesh"),
            e,
        )
    })
}

/// Pod + namespace labels, from the YAML directory or the API.
fn lookup(conf: &PluginConf, namespace: &str, name: &str) -> Result<PodLookup, String> {
    match &conf.pod_source_dir {
        Some(dir) => {
            crate::podsource::dir::lookup_pod(dir, namespace, name).map_err(|e| e.to_string())
        }
        None => kube_lookup(
            &conf.cni_agent_run_dir.join("istio-cni-kubeconfig"),
            namespace,
            name,
        ),
    }
}

fn kube_lookup(kubeconfig: &Path, namespace: &str, name: &str) -> Result<PodLookup, String> {
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let client = kube::Client::try_from(cfg).map_err(|e| e.to_string())?;
        let get = async {
            let pod = kube::Api::<Pod>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?;
            let ns = kube::Api::<Namespace>::all(client)
                .get_opt(namespace)
                .await
                .map_err(|e| e.to_string())?;
            let to = |v: &dyn erased::Ser| v.value();
            let pod = pod
                .as_ref()
                .and_then(|p| to(p))
                .and_then(|v| PodMeta::from_value(&v));
            let labels = ns
                .as_ref()
                .and_then(|n| to(n))
                .and_then(|v| crate::podsource::namespace_from_value(&v))
                .map(|(_, l)| l)
                .unwrap_or_default();
            Ok(pod.map(|p| (p, labels)))
        };
        tokio::time::timeout(Duration::from_secs(5), get)
            .await
            .map_err(|_| "Kubernetes API timed out".to_string())?
    })
}

mod erased {
    /// Serialize to a YAML value through a trait object.
    pub trait Ser {
        fn value(&self) -> Option<serde_yaml::Value>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn value(&self) -> Option<serde_yaml::Value> {
            serde_yaml::to_value(self).ok()
        }
    }
}

/// IPs of a CNI result (any version) in Istio's `cmdadd` form.
pub fn prev_result_ips(prev: Option<&Value>) -> Vec<CmdAddIp> {
    let Some(list) = prev.and_then(|p| p.get("ips")).and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            let addr = e.get("address")?.as_str()?;
            let (ip, prefix) = addr.split_once('/').unwrap_or((addr, ""));
            let ipaddr: IpAddr = ip.parse().ok()?;
            let bits: u32 = if ipaddr.is_ipv4() { 32 } else { 128 };
            let prefix: u32 = prefix.parse().unwrap_or(bits).min(bits);
            let mask: Vec<u8> = (0..bits / 8)
                .map(|i| {
                    let start = i * 8;
                    let ones = prefix.saturating_sub(start).min(8);
                    (0xffu16 << (8 - ones)) as u8
                })
                .collect();
            Some(CmdAddIp {
                interface: e.get("interface").and_then(Value::as_i64),
                address: CmdAddAddress {
                    ip: ip.to_owned(),
                    mask: json::base64(&mask),
                },
                gateway: e.get("gateway").and_then(Value::as_str).map(str::to_owned),
            })
        })
        .collect()
}

/// `POST http://unix/cmdadd` over `sock` (HTTP/1.1, 5 s timeouts); Ok on 200.
pub fn post_cmdadd(sock: &Path, body: &CmdAdd) -> Result<(), String> {
    let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let mut s = UnixStream::connect(sock).map_err(|e| {
        format!(
            "cannot reach the CNI agent at {}: {e} (is the istio-cni node agent running?)",
            sock.display()
        )
    })?;
    s.set_read_timeout(Some(AGENT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(AGENT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST /cmdadd HTTP/1.1\r\nHost: unix\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(&body))
        .map_err(|e| format!("sending to the CNI agent: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .map_err(|e| format!("reading the CNI agent's answer: {e}"))?;
    let text = String::from_utf8_lossy(&resp);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "the CNI agent sent no HTTP status".to_string())?;
    if status == 200 {
        Ok(())
    } else {
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.trim())
            .unwrap_or("");
        Err(format!("the CNI agent answered {status}: {body}"))
    }
}

#[cfg(test)]
mod tests;

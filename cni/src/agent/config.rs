//! The node agent's configuration: flags override environment variables (names as Istio's
//! `istio-cni-config` ConfigMap keys where one exists).

use std::net::SocketAddr;
use std::path::PathBuf;

use meshcore::env::EnvSource;
use serde::Serialize;

use crate::selectors::{self, EnablementSelector};

/// Environment variable names.
pub mod env {
    /// Node this agent serves.
    pub const NODE_NAME: &str = "NODE_NAME";
    /// The agent's own namespace (the mesh system namespace).
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    /// The agent's own pod name (named in its startup log line).
    pub const POD_NAME: &str = "POD_NAME";
    /// Log filter (`info` by default), as `tracing_subscriber`'s env filter.
    pub const RUST_LOG: &str = "RUST_LOG";
    /// `plain` (default) or `json` log lines.
    pub const LOG_FORMAT: &str = "LOG_FORMAT";
    /// Capture DNS in enrolled pods.
    pub const AMBIENT_DNS_CAPTURE: &str = "AMBIENT_DNS_CAPTURE";
    /// Install IPv6 rules.
    pub const AMBIENT_IPV6: &str = "AMBIENT_IPV6";
    /// nftables instead of iptables.
    pub const NATIVE_NFTABLES: &str = "NATIVE_NFTABLES";
    /// Comma-separated namespaces never captured.
    pub const EXCLUDE_NAMESPACES: &str = "EXCLUDE_NAMESPACES";
    /// YAML list of `{podSelector, namespaceSelector}`.
    pub const AMBIENT_ENABLEMENT_SELECTOR: &str = "AMBIENT_ENABLEMENT_SELECTOR";
    /// Re-apply in-pod rules of already enrolled pods at startup.
    pub const AMBIENT_RECONCILE_POD_RULES_ON_STARTUP: &str =
        "AMBIENT_RECONCILE_POD_RULES_ON_STARTUP";
    /// `dir:<path>` or `kube` (our extension; flag `--pod-source`).
    pub const POD_SOURCE: &str = "POD_SOURCE";
    /// Run directory (`--run-dir`).
    pub const CNI_AGENT_RUN_DIR: &str = "CNI_AGENT_RUN_DIR";
    /// ZDS socket (`--ztunnel-socket`).
    pub const ZTUNNEL_UDS_ADDRESS: &str = "ZTUNNEL_UDS_ADDRESS";
}

/// Where pods come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PodSourceSpec {
    /// A directory of YAML files.
    Dir(PathBuf),
    /// The Kubernetes API.
    Kube,
}

/// `--install` settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstallConfig {
    /// Where the plugin binary is copied.
    pub cni_bin_dir: PathBuf,
    /// Where the primary conflist lives.
    pub cni_conf_dir: PathBuf,
}

/// Everything the agent needs; printed at startup.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    /// `--node-name` / `NODE_NAME`.
    pub node_name: String,
    /// `--pod-source`.
    pub pod_source: PodSourceSpec,
    /// `--run-dir` (holds `pluginevent.sock`, `pods.json`).
    pub run_dir: PathBuf,
    /// `--ztunnel-socket`.
    pub ztunnel_socket: PathBuf,
    /// `AMBIENT_DNS_CAPTURE`.
    pub dns_capture: bool,
    /// `AMBIENT_IPV6`.
    pub ipv6: bool,
    /// `NATIVE_NFTABLES`.
    pub native_nftables: bool,
    /// `EXCLUDE_NAMESPACES`.
    pub exclude_namespaces: Vec<String>,
    /// `AMBIENT_ENABLEMENT_SELECTOR`.
    pub enablement_selectors: Vec<EnablementSelector>,
    /// `AMBIENT_RECONCILE_POD_RULES_ON_STARTUP`.
    pub reconcile_pod_rules_on_startup: bool,
    /// `POD_NAMESPACE` (default `istio-system`).
    pub system_namespace: String,
    /// `--readiness-addr` (`/readyz`, `/healthz`).
    pub readiness_addr: SocketAddr,
    /// `--metrics-addr` (`/metrics`).
    pub metrics_addr: SocketAddr,
    /// `--netns-dir`: where running pods' netns are looked up (`<dir>/<pod name>`).
    pub netns_dir: PathBuf,
    /// `--host-prefix`: prepended to netns paths (default `/host` with `kube`, none with `dir:`).
    pub host_prefix: PathBuf,
    /// `--install` mode.
    pub install: Option<InstallConfig>,
}

/// Bad flags or environment.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag or variable has an invalid value.
    #[error("{name}: invalid value {value:?}: {reason}")]
    Invalid {
        /// Flag or variable.
        name: String,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// Unknown flag.
    #[error("unknown flag {0:?} (see --help)")]
    UnknownFlag(String),
    /// A required setting is missing.
    #[error("{0} is required")]
    Missing(&'static str),
}

fn invalid(name: &str, value: &str, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_owned(),
        value: value.to_owned(),
        reason: reason.to_string(),
    }
}

fn parse_bool(env: &dyn EnvSource, name: &str, default: bool) -> Result<bool, ConfigError> {
    match env.get(name) {
        None => Ok(default),
        Some(v) if v.is_empty() => Ok(default),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(invalid(name, &v, "expected true or false")),
        },
    }
}

fn parse_addr(name: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    let full = if v.starts_with(':') {
        format!("[::]{v}")
    } else {
        v.to_owned()
    };
    full.parse().map_err(|e| invalid(name, v, e))
}

/// Parses `dir:<path>` or `kube`.
pub fn parse_pod_source(v: &str) -> Result<PodSourceSpec, ConfigError> {
    if v == "kube" {
        Ok(PodSourceSpec::Kube)
    } else if let Some(p) = v.strip_prefix("dir:").filter(|p| !p.is_empty()) {
        Ok(PodSourceSpec::Dir(PathBuf::from(p)))
    } else {
        Err(invalid("--pod-source", v, "expected dir:<path> or kube"))
    }
}

/// Usage text.
pub const USAGE: &str = "cni-agent [--node-name N] [--pod-source dir:/path|kube] [--run-dir DIR] \
[--ztunnel-socket PATH] [--readiness-addr ADDR] [--metrics-addr ADDR] [--netns-dir DIR] \
[--host-prefix DIR] [--install [--cni-bin-dir DIR] [--cni-conf-dir DIR]]";

impl Config {
    /// Every environment variable the agent reads.
    pub fn env_names() -> &'static [&'static str] {
        &[
            env::NODE_NAME,
            env::POD_NAMESPACE,
            env::POD_NAME,
            env::RUST_LOG,
            env::LOG_FORMAT,
            env::AMBIENT_DNS_CAPTURE,
            env::AMBIENT_IPV6,
            env::NATIVE_NFTABLES,
            env::EXCLUDE_NAMESPACES,
            env::AMBIENT_ENABLEMENT_SELECTOR,
            env::AMBIENT_RECONCILE_POD_RULES_ON_STARTUP,
            env::POD_SOURCE,
            env::CNI_AGENT_RUN_DIR,
            env::ZTUNNEL_UDS_ADDRESS,
        ]
    }

    /// Builds the config from `args` (without the program name) and `env`.
    pub fn from_args(args: &[String], env: &dyn EnvSource) -> Result<Config, ConfigError> {
        let get = |n: &str| env.get(n).filter(|v| !v.is_empty());
        let selectors = match get(env::AMBIENT_ENABLEMENT_SELECTOR) {
            None => selectors::default_selectors(),
            Some(v) => selectors::parse_selectors(&v)
                .map_err(|e| invalid(env::AMBIENT_ENABLEMENT_SELECTOR, &v, e))?,
        };
        let pod_source = match get(env::POD_SOURCE) {
            Some(v) => Some(parse_pod_source(&v)?),
            None => None,
        };
        let mut cfg = Config {
            node_name: get(env::NODE_NAME).unwrap_or_default(),
            pod_source: pod_source.unwrap_or(PodSourceSpec::Kube),
            run_dir: get(env::CNI_AGENT_RUN_DIR)
                .unwrap_or_else(|| "/var/run/istio-cni".into())
                .into(),
            ztunnel_socket: get(env::ZTUNNEL_UDS_ADDRESS)
                .unwrap_or_else(|| "/var/run/ztunnel/ztunnel.sock".into())
                .into(),
            dns_capture: parse_bool(env, env::AMBIENT_DNS_CAPTURE, true)?,
            ipv6: parse_bool(env, env::AMBIENT_IPV6, true)?,
            native_nftables: parse_bool(env, env::NATIVE_NFTABLES, false)?,
            exclude_namespaces: get(env::EXCLUDE_NAMESPACES)
                .unwrap_or_else(|| "kube-system".into())
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            enablement_selectors: selectors,
            reconcile_pod_rules_on_startup: parse_bool(
                env,
                env::AMBIENT_RECONCILE_POD_RULES_ON_STARTUP,
                true,
            )?,
            system_namespace: get(env::POD_NAMESPACE).unwrap_or_else(|| "istio-system".into()),
            readiness_addr: parse_addr("--readiness-addr", ":8000")?,
            metrics_addr: parse_addr("--metrics-addr", ":15014")?,
            netns_dir: "/var/run/netns".into(),
            host_prefix: PathBuf::new(),
            install: None,
        };
        let mut install = false;
        let mut host_prefix = None;
        let mut bin_dir = PathBuf::from("/host/opt/cni/bin");
        let mut conf_dir = PathBuf::from("/host/etc/cni/net.d");
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (flag.as_str(), None),
            };
            if name == "--install" {
                install = true;
                continue;
            }
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next().cloned())
                    .ok_or_else(|| invalid(name, "", "missing value"))
            };
            match name {
                "--node-name" => cfg.node_name = value()?,
                "--pod-source" => cfg.pod_source = parse_pod_source(&value()?)?,
                "--run-dir" => cfg.run_dir = value()?.into(),
                "--ztunnel-socket" => cfg.ztunnel_socket = value()?.into(),
                "--readiness-addr" => cfg.readiness_addr = parse_addr(name, &value()?)?,
                "--metrics-addr" => cfg.metrics_addr = parse_addr(name, &value()?)?,
                "--netns-dir" => cfg.netns_dir = value()?.into(),
                "--host-prefix" => host_prefix = Some(PathBuf::from(value()?)),
                "--cni-bin-dir" => bin_dir = value()?.into(),
                "--cni-conf-dir" => conf_dir = value()?.into(),
                other => return Err(ConfigError::UnknownFlag(other.to_owned())),
            }
        }
        // In Kubernetes the host's /var/run/netns is mounted under /host.
        cfg.host_prefix = host_prefix.unwrap_or_else(|| match cfg.pod_source {
            PodSourceSpec::Kube => PathBuf::from("/host"),
            PodSourceSpec::Dir(_) => PathBuf::new(),
        });
        if install {
            cfg.install = Some(InstallConfig {
                cni_bin_dir: bin_dir,
                cni_conf_dir: conf_dir,
            });
        }
        if cfg.node_name.is_empty() && cfg.pod_source == PodSourceSpec::Kube {
            return Err(ConfigError::Missing("--node-name / NODE_NAME"));
        }
        Ok(cfg)
    }

    /// The enrollment rules derived from this config.
    pub fn enrollment(&self) -> selectors::Enrollment {
        selectors::Enrollment {
            selectors: self.enablement_selectors.clone(),
            exclude_namespaces: self.exclude_namespaces.clone(),
            system_namespace: self.system_namespace.clone(),
        }
    }

    /// `<run-dir>/pluginevent.sock`.
    pub fn plugin_socket(&self) -> PathBuf {
        self.run_dir.join("pluginevent.sock")
    }

    /// `<run-dir>/pods.json`.
    pub fn state_file(&self) -> PathBuf {
        self.run_dir.join("pods.json")
    }
}

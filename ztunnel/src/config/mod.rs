//! The environment-variable contract of Istio's ztunnel, read into one typed [`Config`].
//!
//! [`Config::from_env`] reads every variable listed in [`vars`] (names, defaults and meanings as
//! Istio's ztunnel has them), validates them, and fails with a [`ConfigError`] that names the
//! variable, the bad value and what is accepted. The result serializes (camelCase, secrets
//! redacted) for the startup print and `/config_dump`.
//!
//! Values set to the empty string count as unset, except `XDS_ADDRESS`/`CA_ADDRESS` (empty
//! disables the service) and `ISTIO_META_DNS_CAPTURE` (anything but `true` turns the DNS proxy
//! off). Non-fatal findings (an ignored variable, invalid `ISTIO_METAJSON_*`) are collected in
//! [`Config::warnings`] for the caller to log once tracing is up.

mod parse;
mod sources;
mod threads;
mod types;
pub mod vars;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshcore::env::EnvSource;
use meshcore::telemetry::LogFormat;
use serde::Serialize;

pub use parse::ConfigError;
pub use types::{
    AuthToken, ControlPlaneEndpoint, Headers, Http2Config, ListenAddress, LocalXds, ProxyMode,
    RootCert, SocketConfig, WorkloadInfo,
};

use parse::{Reader, Result};

pub const DEFAULT_ADMIN_PORT: u16 = 15000;
pub const DEFAULT_STATS_PORT: u16 = 15020;
pub const DEFAULT_READINESS_PORT: u16 = 15021;
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
pub const INBOUND_HBONE_PORT: u16 = 15008;
pub const DNS_PROXY_PORT: u16 = 15053;
pub const SOCKS5_PORT: u16 = 15080;
/// `SO_MARK` on pod sockets in shared mode unless `PACKET_MARK` says otherwise.
pub const DEFAULT_SHARED_PACKET_MARK: u32 = 1337;
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub const DEFAULT_INPOD_UDS: &str = "/var/run/ztunnel/ztunnel.sock";
/// Relative to the working directory (`/` in the image).
pub const DEFAULT_ROOT_CERT: &str = "var/run/secrets/istio/root-cert.pem";
/// Relative to the working directory; used only if the file exists.
pub const DEFAULT_TOKEN: &str = "var/run/secrets/tokens/istio-token";
/// Relative to the working directory; `defaultConfig` is merged under `PROXY_CONFIG`.
pub const MESH_CONFIG: &str = "etc/istio/config/mesh";
const ISTIOD_IN_CLUSTER: &str = "https://istiod.istio-system.svc:15012";
const ISTIOD_LOCAL: &str = "https://localhost:15012";
const NODE_ID_DEFAULT_IP: &str = "1.1.1.1";

/// Facts about the host that configuration depends on; injectable for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Directory that relative defaults (`./var/run/...`, `./etc/istio/...`) resolve against.
    pub base_dir: PathBuf,
    /// Logical CPUs of the machine.
    pub cpus: usize,
}

impl Host {
    /// The running process: working directory `.`, the available parallelism.
    pub fn current() -> Self {
        Self {
            base_dir: PathBuf::from("."),
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

/// Everything ztunnel is configured with. See the module docs and [`vars`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub proxy_mode: ProxyMode,
    /// The workload served in dedicated mode.
    pub proxy_workload_info: Option<WorkloadInfo>,
    /// Run the proxy listeners (`ENABLE_PROXY`).
    pub proxy: bool,
    /// Run the DNS proxy (`ISTIO_META_DNS_CAPTURE`).
    pub dns_proxy: bool,
    pub dns_proxy_addr: ListenAddress,
    /// `127.0.0.1:15080` when `UNSTABLE_ENABLE_SOCKS5=true`.
    pub socks5_addr: Option<SocketAddr>,
    pub ipv6_enabled: bool,
    pub admin_addr: ListenAddress,
    pub stats_addr: ListenAddress,
    pub readiness_addr: ListenAddress,
    pub inpod_uds: PathBuf,
    pub inpod_port_reuse: bool,
    pub packet_mark: Option<u32>,
    /// `ENABLE_ORIG_SRC`: `None` = best effort, `Some(true)` = required, `Some(false)` = never.
    pub require_original_source: Option<bool>,
    pub xds: ControlPlaneEndpoint,
    pub ca: ControlPlaneEndpoint,
    pub xds_on_demand: bool,
    pub local_xds: Option<LocalXds>,
    pub auth: AuthToken,
    #[serde(with = "meshcore::duration::as_string")]
    pub secret_ttl: Duration,
    pub cluster_id: String,
    pub cluster_domain: String,
    pub network: String,
    pub trust_domain: String,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub service_account: Option<String>,
    /// ztunnel's own workload, when `POD_NAME`, `POD_NAMESPACE` and `SERVICE_ACCOUNT` are set.
    pub self_workload: Option<WorkloadInfo>,
    pub node_name: Option<String>,
    pub instance_ip: Option<IpAddr>,
    pub prefered_service_namespace: Option<String>,
    pub worker_threads: usize,
    pub pool_max_streams_per_conn: u16,
    #[serde(with = "meshcore::duration::as_string")]
    pub pool_unused_release_timeout: Duration,
    pub http2: Http2Config,
    /// How long draining connections get before they are closed.
    #[serde(with = "meshcore::duration::as_string")]
    pub termination_deadline: Duration,
    pub socket: SocketConfig,
    pub localhost_app_tunnel: bool,
    pub enable_response_baggage: bool,
    pub crl_path: Option<PathBuf>,
    pub tls12_enabled: bool,
    pub authz_policy_info_logging: bool,
    pub log_format: LogFormat,
    /// `RUST_LOG`, without the always-prepended `hickory_server::server=off`.
    pub log_filter: String,
    /// ProxyConfig `proxyMetadata` plus `ISTIO_META_*` (prefix stripped).
    pub proxy_metadata: BTreeMap<String, String>,
    /// `ztunnel~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`.
    pub node_id: String,
    pub node_metadata: BTreeMap<String, serde_json::Value>,
    /// `ISTIO_META_ISTIO_VERSION`.
    pub istio_version: Option<String>,
    /// Non-fatal findings to log at startup.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads the configuration of the running process.
    pub fn from_process_env() -> Result<Self> {
        Self::from_env(&meshcore::env::ProcessEnv)
    }

    /// Reads the configuration from `env`, resolving relative defaults against the working
    /// directory.
    pub fn from_env(env: &dyn EnvSource) -> Result<Self> {
        Self::from_env_on(env, &Host::current())
    }

    /// Every environment variable read by name (see [`vars::ALL`]).
    pub fn env_names() -> &'static [&'static str] {
        vars::ALL
    }

    /// Every prefix whose variables are read as a family (see [`vars::PREFIXES`]).
    pub fn env_prefixes() -> &'static [&'static str] {
        vars::PREFIXES
    }

    /// Ports that connections must never be proxied to (loops through ztunnel itself).
    pub fn illegal_ports(&self) -> Vec<u16> {
        let mut ports = vec![OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, INBOUND_HBONE_PORT];
        if let Some(socks5) = self.socks5_addr {
            ports.push(socks5.port());
        }
        ports
    }

    /// Reads the configuration from `env` on `host`.
    pub fn from_env_on(env: &dyn EnvSource, host: &Host) -> Result<Self> {
        let r = Reader { env };
        let mut warnings = Vec::new();
        let base = &host.base_dir;
        let pc = sources::proxy_config(&r, &base.join(MESH_CONFIG))?;

        let proxy_mode = r.choice(
            vars::PROXY_MODE,
            ProxyMode::Shared,
            &[
                ("shared", ProxyMode::Shared),
                ("dedicated", ProxyMode::Dedicated),
            ],
        )?;
        let proxy_workload_info = match (proxy_mode, r.string(vars::PROXY_WORKLOAD_INFO)) {
            (ProxyMode::Dedicated, Some(v)) => Some(workload_info(&v)?),
            (ProxyMode::Dedicated, None) => {
                return Err(ConfigError::Missing {
                    name: vars::PROXY_WORKLOAD_INFO.into(),
                    when: "when PROXY_MODE=dedicated (format `namespace/name/serviceAccount`)"
                        .into(),
                });
            }
            (ProxyMode::Shared, Some(_)) => {
                warnings.push(format!(
                    "{} is ignored in shared mode",
                    vars::PROXY_WORKLOAD_INFO
                ));
                None
            }
            (ProxyMode::Shared, None) => None,
        };

        let ipv6_enabled = r.bool(vars::IPV6_ENABLED, true)?;
        let dns_proxy = pc
            .proxy_metadata
            .get("DNS_CAPTURE")
            .is_none_or(|v| v.trim().eq_ignore_ascii_case("true"));
        let dns_proxy_addr = match pc.proxy_metadata.get("DNS_PROXY_ADDR") {
            Some(v) => listen_address(vars::ISTIO_META_DNS_PROXY_ADDR, v, ipv6_enabled)?,
            None => ListenAddress::Localhost {
                port: DNS_PROXY_PORT,
                ipv6: ipv6_enabled,
            },
        };
        let socks5_addr = r
            .bool(vars::UNSTABLE_ENABLE_SOCKS5, false)?
            .then(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), SOCKS5_PORT));

        let packet_mark = match r.string(vars::PACKET_MARK) {
            Some(v) => Some(packet_mark(&v)?),
            None if proxy_mode == ProxyMode::Shared => Some(DEFAULT_SHARED_PACKET_MARK),
            None => None,
        };

        let default_istiod = if r.raw(vars::KUBERNETES_SERVICE_HOST).is_some() {
            ISTIOD_IN_CLUSTER
        } else {
            ISTIOD_LOCAL
        };
        let xds_address = match r.raw(vars::XDS_ADDRESS) {
            Some(v) => control_plane_address(vars::XDS_ADDRESS, &v)?,
            None => match pc.discovery_address.as_deref() {
                Some(v) => control_plane_address("PROXY_CONFIG discoveryAddress", v)?,
                None => Some(default_istiod.to_owned()),
            },
        };
        let ca_address = match r.raw(vars::CA_ADDRESS) {
            Some(v) => control_plane_address(vars::CA_ADDRESS, &v)?,
            None => Some(default_istiod.to_owned()),
        };
        if r.bool(vars::FAKE_CA, false)? {
            return Err(ConfigError::Unsupported {
                name: vars::FAKE_CA.into(),
                value: r.string_or(vars::FAKE_CA, ""),
                reason: "there is no built-in test CA; point CA_ADDRESS at a CA (istiod)".into(),
            });
        }
        let default_root = base.join(DEFAULT_ROOT_CERT);
        let xds = ControlPlaneEndpoint {
            address: xds_address,
            root_cert: root_cert(&r, vars::XDS_ROOT_CA, &default_root, &mut warnings),
            alt_hostname: r.string(vars::ALT_XDS_HOSTNAME),
            headers: sources::headers(&r, vars::XDS_HEADER_PREFIX)?,
        };
        let ca = ControlPlaneEndpoint {
            address: ca_address,
            root_cert: root_cert(&r, vars::CA_ROOT_CA, &default_root, &mut warnings),
            alt_hostname: r.string(vars::ALT_CA_HOSTNAME),
            headers: sources::headers(&r, vars::CA_HEADER_PREFIX)?,
        };
        let auth = match r.string(vars::AUTH_TOKEN) {
            Some(v) if Path::new(&v).is_file() => AuthToken::File(PathBuf::from(v)),
            Some(v) => AuthToken::Literal(v),
            None => {
                let default = base.join(DEFAULT_TOKEN);
                if default.is_file() {
                    AuthToken::File(default)
                } else {
                    AuthToken::None
                }
            }
        };

        let local_xds = match (r.string(vars::LOCAL_XDS_PATH), r.string(vars::LOCAL_XDS)) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Conflict(format!(
                    "only one of {} and {} may be set",
                    vars::LOCAL_XDS_PATH,
                    vars::LOCAL_XDS
                )));
            }
            (Some(path), None) => Some(LocalXds::File(path.into())),
            (None, Some(yaml)) => Some(LocalXds::Inline(yaml)),
            (None, None) => None,
        };
        let xds_on_demand = r.bool(vars::XDS_ON_DEMAND, false)?;

        let cluster_id = r
            .string(vars::ISTIO_META_CLUSTER_ID)
            .or_else(|| r.string(vars::CLUSTER_ID))
            .unwrap_or_else(|| DEFAULT_CLUSTER_ID.to_owned());
        let pod_name = r.string(vars::POD_NAME);
        let pod_namespace = r.string(vars::POD_NAMESPACE);
        let service_account = r.string(vars::SERVICE_ACCOUNT);
        let self_workload = match (&pod_namespace, &pod_name, &service_account) {
            (Some(namespace), Some(name), Some(sa)) => Some(WorkloadInfo {
                namespace: namespace.clone(),
                name: name.clone(),
                service_account: sa.clone(),
            }),
            _ => None,
        };
        let node_name = r.string(vars::NODE_NAME);
        let instance_ip = r
            .string(vars::INSTANCE_IP)
            .map(|v| {
                v.parse::<IpAddr>()
                    .map_err(|_| ConfigError::invalid(vars::INSTANCE_IP, v, "an IP address"))
            })
            .transpose()?;
        let ip_text =
            instance_ip.map_or_else(|| NODE_ID_DEFAULT_IP.to_owned(), |ip| ip.to_string());
        let ns = pod_namespace.clone().unwrap_or_default();
        let node_id = format!(
            "ztunnel~{ip_text}~{}.{ns}~{ns}.svc.cluster.local",
            pod_name.clone().unwrap_or_default()
        );
        let node_metadata = sources::node_metadata(
            &r,
            &pc.proxy_metadata,
            &[
                ("NAME", pod_name.clone()),
                ("NAMESPACE", pod_namespace.clone()),
                ("INSTANCE_IPS", Some(ip_text)),
                ("NODE_NAME", node_name.clone()),
            ],
            &mut warnings,
        );

        let termination_deadline = match r.opt_duration(vars::CONNECTION_TERMINATION_DEADLINE)? {
            Some(d) => d,
            None => match r.opt_int::<u64>(vars::TERMINATION_GRACE_PERIOD_SECONDS, 0, u64::MAX)? {
                // Leave a margin before the kubelet's SIGKILL: 5 s, or 1 s for short periods.
                Some(grace) if grace > 10 => Duration::from_secs(grace - 5),
                Some(grace) => Duration::from_secs(grace.saturating_sub(1).max(1)),
                None => Duration::from_secs(5),
            },
        };

        let log_filter = r.string_or(vars::RUST_LOG, "info");
        meshcore::telemetry::validate_startup_filter(&log_filter).map_err(|e| {
            ConfigError::invalid(
                vars::RUST_LOG,
                log_filter.clone(),
                format!("a tracing filter such as `info` or `info,hbone=debug` ({e})"),
            )
        })?;

        let compliance = r.string(vars::COMPLIANCE_POLICY);
        match compliance.as_deref() {
            None => {}
            Some(v) if v.eq_ignore_ascii_case("pqc") => {
                return Err(ConfigError::Unsupported {
                    name: vars::COMPLIANCE_POLICY.into(),
                    value: v.to_owned(),
                    reason: "the post-quantum key exchange X25519MLKEM768 is not available in \
                             this build's crypto provider (ring)"
                        .into(),
                });
            }
            Some(v) => {
                return Err(ConfigError::invalid(
                    vars::COMPLIANCE_POLICY,
                    v,
                    "unset or `pqc`",
                ));
            }
        }

        let config = Config {
            proxy_mode,
            proxy_workload_info,
            proxy: r.bool(vars::ENABLE_PROXY, true)?,
            dns_proxy,
            dns_proxy_addr,
            socks5_addr,
            ipv6_enabled,
            admin_addr: ListenAddress::Localhost {
                port: pc.proxy_admin_port.unwrap_or(DEFAULT_ADMIN_PORT),
                ipv6: ipv6_enabled,
            },
            stats_addr: ListenAddress::Unspecified {
                port: pc.stats_port.unwrap_or(DEFAULT_STATS_PORT),
                ipv6: ipv6_enabled,
            },
            readiness_addr: ListenAddress::Unspecified {
                port: DEFAULT_READINESS_PORT,
                ipv6: ipv6_enabled,
            },
            inpod_uds: PathBuf::from(r.string_or(vars::INPOD_UDS, DEFAULT_INPOD_UDS)),
            inpod_port_reuse: r.bool(vars::INPOD_PORT_REUSE, true)?,
            packet_mark,
            require_original_source: r.opt_bool(vars::ENABLE_ORIG_SRC)?,
            xds,
            ca,
            xds_on_demand,
            local_xds,
            auth,
            secret_ttl: positive(&r, vars::SECRET_TTL, Duration::from_secs(24 * 3600))?,
            cluster_id,
            cluster_domain: r.string_or(vars::CLUSTER_DOMAIN, DEFAULT_CLUSTER_DOMAIN),
            network: r.string_or(vars::NETWORK, ""),
            trust_domain: r.string_or(vars::TRUST_DOMAIN, DEFAULT_TRUST_DOMAIN),
            pod_name,
            pod_namespace,
            service_account,
            self_workload,
            node_name,
            instance_ip,
            prefered_service_namespace: r.string(vars::PREFERED_SERVICE_NAMESPACE),
            worker_threads: threads::worker_threads(&r, pc.concurrency, host.cpus)?,
            pool_max_streams_per_conn: r.int(
                vars::POOL_MAX_STREAMS_PER_CONNECTION,
                100,
                1,
                u16::MAX,
            )?,
            pool_unused_release_timeout: r
                .duration(vars::POOL_UNUSED_RELEASE_TIMEOUT, Duration::from_secs(300))?,
            http2: Http2Config {
                // HTTP/2 limits: windows up to 2^31-1, frames 2^14..2^24-1.
                stream_window_size: r.int(
                    vars::HTTP2_STREAM_WINDOW_SIZE,
                    4 * 1024 * 1024,
                    1,
                    i32::MAX as u32,
                )?,
                connection_window_size: r.int(
                    vars::HTTP2_CONNECTION_WINDOW_SIZE,
                    16 * 1024 * 1024,
                    1,
                    i32::MAX as u32,
                )?,
                frame_size: r.int(vars::HTTP2_FRAME_SIZE, 1024 * 1024, 16_384, 16_777_215)?,
            },
            termination_deadline,
            socket: SocketConfig {
                keepalive_enabled: r.bool(vars::KEEPALIVE_ENABLED, true)?,
                keepalive_time: positive(&r, vars::KEEPALIVE_TIME, Duration::from_secs(180))?,
                keepalive_interval: positive(
                    &r,
                    vars::KEEPALIVE_INTERVAL,
                    Duration::from_secs(180),
                )?,
                keepalive_retries: r.int(vars::KEEPALIVE_RETRIES, 9, 1, u32::MAX)?,
                user_timeout_enabled: r.bool(vars::USER_TIMEOUT_ENABLED, false)?,
            },
            localhost_app_tunnel: r.bool(vars::LOCALHOST_APP_TUNNEL, true)?,
            enable_response_baggage: r.bool(vars::ENABLE_RESPONSE_BAGGAGE, true)?,
            crl_path: r.string(vars::CRL_PATH).map(PathBuf::from),
            tls12_enabled: r.bool(vars::TLS12_ENABLED, false)?,
            authz_policy_info_logging: r.bool(vars::AUTHZ_POLICY_INFO_LOGGING, false)?,
            log_format: r.choice(
                vars::LOG_FORMAT,
                LogFormat::Plain,
                &[("plain", LogFormat::Plain), ("json", LogFormat::Json)],
            )?,
            log_filter,
            istio_version: r.string(vars::ISTIO_META_ISTIO_VERSION),
            proxy_metadata: pc.proxy_metadata,
            node_id,
            node_metadata,
            warnings,
        };
        config.validate()
    }

    fn validate(self) -> Result<Self> {
        if self.xds_on_demand && self.dns_proxy {
            return Err(ConfigError::Conflict(format!(
                "{}=true cannot be combined with the DNS proxy: set {}=false to use on-demand xDS",
                vars::XDS_ON_DEMAND,
                vars::ISTIO_META_DNS_CAPTURE
            )));
        }
        if !self.proxy && !self.dns_proxy {
            return Err(ConfigError::Conflict(format!(
                "nothing to run: {}=false and the DNS proxy is off ({})",
                vars::ENABLE_PROXY,
                vars::ISTIO_META_DNS_CAPTURE
            )));
        }
        Ok(self)
    }
}

fn positive(r: &Reader<'_>, name: &str, default: Duration) -> Result<Duration> {
    match r.duration(name, default)? {
        Duration::ZERO => Err(ConfigError::invalid(
            name,
            r.string_or(name, ""),
            "a duration above zero such as `24h` or `180s`",
        )),
        d => Ok(d),
    }
}

fn workload_info(v: &str) -> Result<WorkloadInfo> {
    match v.split('/').collect::<Vec<_>>().as_slice() {
        [ns, name, sa] if !ns.is_empty() && !name.is_empty() && !sa.is_empty() => {
            Ok(WorkloadInfo {
                namespace: (*ns).to_owned(),
                name: (*name).to_owned(),
                service_account: (*sa).to_owned(),
            })
        }
        _ => Err(ConfigError::invalid(
            vars::PROXY_WORKLOAD_INFO,
            v,
            "`namespace/name/serviceAccount`",
        )),
    }
}

fn packet_mark(v: &str) -> Result<u32> {
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.map_err(|_| {
        ConfigError::invalid(
            vars::PACKET_MARK,
            v,
            "a 32-bit mark, decimal (`1337`) or hex (`0x539`)",
        )
    })
}

/// `localhost:<port>` or `<ip>:<port>`.
fn listen_address(name: &str, v: &str, ipv6: bool) -> Result<ListenAddress> {
    let bad = || ConfigError::invalid(name, v, "`localhost:<port>` or `<ip>:<port>`");
    match v.trim().strip_prefix("localhost:") {
        Some(port) => Ok(ListenAddress::Localhost {
            port: port.parse().map_err(|_| bad())?,
            ipv6,
        }),
        None => v
            .trim()
            .parse()
            .map(ListenAddress::Exact)
            .map_err(|_| bad()),
    }
}

/// Empty disables; a value without a scheme gets `https://`; must be an http(s) URI with a host.
fn control_plane_address(name: &str, v: &str) -> Result<Option<String>> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    let full = if v.contains("://") {
        v.to_owned()
    } else {
        format!("https://{v}")
    };
    let valid = full.parse::<http::Uri>().is_ok_and(|uri| {
        let (Some(authority), Some(host)) = (uri.authority(), uri.host()) else {
            return false;
        };
        // `http::Uri` accepts any port text; require a number when a port is given.
        let host_port = authority.as_str().rsplit('@').next().unwrap_or_default();
        let port_ok = match host_port.strip_prefix(host) {
            Some("") => true,
            Some(port) => port
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok()),
            None => false,
        };
        matches!(uri.scheme_str(), Some("https" | "http")) && !host.is_empty() && port_ok
    });
    if valid {
        Ok(Some(full))
    } else {
        Err(ConfigError::invalid(
            name,
            v,
            "an address such as `istiod.istio-system.svc:15012` or `https://host:port`, or empty to disable",
        ))
    }
}

/// A file path, inline PEM, or `SYSTEM`. A path that does not exist yet is kept as a file (the
/// root certificate is mounted from a ConfigMap and watched), with a warning.
fn root_cert(r: &Reader<'_>, name: &str, default: &Path, warnings: &mut Vec<String>) -> RootCert {
    let Some(v) = r.string(name) else {
        return RootCert::File(default.to_owned());
    };
    if v == "SYSTEM" {
        RootCert::System
    } else if v.contains("-----BEGIN") {
        RootCert::Inline(v)
    } else {
        if !Path::new(&v).exists() {
            warnings.push(format!(
                "{name}={v}: the file does not exist (yet); it will be read when it appears"
            ));
        }
        RootCert::File(PathBuf::from(v))
    }
}

//! The small value types that make up [`Config`](super::Config).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

const REDACTED: &str = "<redacted>";

/// How ztunnel finds the workloads it proxies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    /// One ztunnel per node; pods are handed over by the CNI agent (ZDS) and proxied from
    /// listeners inside each pod's network namespace.
    #[default]
    Shared,
    /// One workload, given by `PROXY_WORKLOAD_INFO`, proxied from host sockets.
    Dedicated,
}

/// A workload named by `namespace/name/serviceAccount`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadInfo {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
}

/// Where a server listens. Displayed (and serialized) as `localhost:15000`, `[::]:15020`,
/// `0.0.0.0:15021` or an explicit `ip:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddress {
    /// `127.0.0.1`, plus `::1` when `ipv6` (binding `::1` is best effort: IPv6 may be off on lo).
    Localhost { port: u16, ipv6: bool },
    /// The wildcard address: `[::]` when `ipv6` (falling back to `0.0.0.0` if the host has no
    /// IPv6), else `0.0.0.0`.
    Unspecified { port: u16, ipv6: bool },
    /// Exactly this address.
    Exact(SocketAddr),
}

impl ListenAddress {
    /// The port.
    pub fn port(&self) -> u16 {
        match *self {
            Self::Localhost { port, .. } | Self::Unspecified { port, .. } => port,
            Self::Exact(addr) => addr.port(),
        }
    }

    /// The same address with another port (tests bind port 0).
    #[must_use]
    pub fn with_port(self, port: u16) -> Self {
        match self {
            Self::Localhost { ipv6, .. } => Self::Localhost { port, ipv6 },
            Self::Unspecified { ipv6, .. } => Self::Unspecified { port, ipv6 },
            Self::Exact(addr) => Self::Exact(SocketAddr::new(addr.ip(), port)),
        }
    }

    /// The addresses to try, in order: for `Localhost` every one should be bound (the IPv6 one
    /// best effort); for `Unspecified` the first that binds wins.
    pub fn candidates(&self) -> Vec<SocketAddr> {
        let v4 = |ip: Ipv4Addr, port| SocketAddr::new(IpAddr::V4(ip), port);
        let v6 = |ip: Ipv6Addr, port| SocketAddr::new(IpAddr::V6(ip), port);
        match *self {
            Self::Localhost { port, ipv6 } => {
                let mut out = vec![v4(Ipv4Addr::LOCALHOST, port)];
                if ipv6 {
                    out.push(v6(Ipv6Addr::LOCALHOST, port));
                }
                out
            }
            Self::Unspecified { port, ipv6 } => {
                let mut out = Vec::with_capacity(2);
                if ipv6 {
                    out.push(v6(Ipv6Addr::UNSPECIFIED, port));
                }
                out.push(v4(Ipv4Addr::UNSPECIFIED, port));
                out
            }
            Self::Exact(addr) => vec![addr],
        }
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Localhost { port, .. } => write!(f, "localhost:{port}"),
            Self::Unspecified { port, ipv6: true } => write!(f, "[::]:{port}"),
            Self::Unspecified { port, ipv6: false } => write!(f, "0.0.0.0:{port}"),
            Self::Exact(addr) => write!(f, "{addr}"),
        }
    }
}

impl Serialize for ListenAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The root certificates that verify istiod's (or the CA's) serving certificate.
#[derive(Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file, re-read when it changes (it may not exist yet at startup).
    File(PathBuf),
    /// PEM given inline in the variable.
    Inline(String),
    /// The operating system's trust store (`SYSTEM`).
    System,
}

impl fmt::Debug for RootCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "File({})", path.display()),
            Self::Inline(pem) => write!(f, "Inline({} bytes)", pem.len()),
            Self::System => f.write_str("System"),
        }
    }
}

impl Serialize for RootCert {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::File(path) => s.collect_str(&format_args!("file:{}", path.display())),
            Self::Inline(pem) => s.collect_str(&format_args!("inline PEM ({} bytes)", pem.len())),
            Self::System => s.serialize_str("SYSTEM"),
        }
    }
}

/// The bearer token sent to istiod.
#[derive(Clone, PartialEq, Eq)]
pub enum AuthToken {
    /// No token (no `AUTH_TOKEN` and no default token file).
    None,
    /// A token file, re-read for every request (projected tokens rotate).
    File(PathBuf),
    /// A literal token. Never printed.
    Literal(String),
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::File(path) => write!(f, "File({})", path.display()),
            Self::Literal(_) => write!(f, "Literal({REDACTED})"),
        }
    }
}

impl Serialize for AuthToken {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::None => s.serialize_none(),
            Self::File(path) => s.collect_str(&format_args!("file:{}", path.display())),
            Self::Literal(_) => s.collect_str(&format_args!("literal:{REDACTED}")),
        }
    }
}

/// Extra gRPC metadata (`XDS_HEADER_*` / `CA_HEADER_*`): lower-case names, ASCII values.
/// Values are redacted when printed (they often carry credentials).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// `(name, value)` pairs, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, _)| (k, REDACTED)))
            .finish()
    }
}

impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, _)| (k, REDACTED)))
    }
}

/// How to reach istiod for one service (xDS or CA).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneEndpoint {
    /// `https://host:port`; `None` disables the service.
    pub address: Option<String>,
    pub root_cert: RootCert,
    /// TLS server name to verify instead of the address's host.
    pub alt_hostname: Option<String>,
    pub headers: Headers,
}

/// Static workload configuration (`LOCAL_XDS_PATH` / `LOCAL_XDS`), read once at startup.
#[derive(Clone, PartialEq, Eq)]
pub enum LocalXds {
    File(PathBuf),
    Inline(String),
}

impl fmt::Debug for LocalXds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "File({})", path.display()),
            Self::Inline(yaml) => write!(f, "Inline({} bytes)", yaml.len()),
        }
    }
}

impl Serialize for LocalXds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::File(path) => s.collect_str(&format_args!("file:{}", path.display())),
            Self::Inline(yaml) => {
                s.collect_str(&format_args!("inline YAML ({} bytes)", yaml.len()))
            }
        }
    }
}

/// TCP keepalive and user-timeout settings for proxied sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SocketConfig {
    pub keepalive_enabled: bool,
    #[serde(with = "meshcore::duration::as_string")]
    pub keepalive_time: Duration,
    #[serde(with = "meshcore::duration::as_string")]
    pub keepalive_interval: Duration,
    pub keepalive_retries: u32,
    /// Set `TCP_USER_TIMEOUT = time + retries × interval`.
    pub user_timeout_enabled: bool,
}

/// HBONE HTTP/2 flow-control settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Http2Config {
    pub stream_window_size: u32,
    pub connection_window_size: u32,
    pub frame_size: u32,
}

//! Envoy v3 configuration fragments (JSON) for HBONE, shaped like what istiod generates for
//! waypoints: `connect_originate` (a `tcp_proxy` tunnelling each TCP connection as an HTTP/2
//! CONNECT stream inside mutual TLS) and `connect_terminate` (an HTTP/2 listener that
//! terminates CONNECT and forwards the payload as TCP).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::TempDir;

const TLS_CONTEXT_UPSTREAM: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const TLS_CONTEXT_DOWNSTREAM: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const HTTP_PROTOCOL_OPTIONS: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const FILE_ACCESS_LOG: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";

/// `config.core.v3.Address` for a socket address.
pub fn socket_address(addr: SocketAddr) -> Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

/// An Envoy `Bootstrap` with static listeners and clusters.
pub fn bootstrap(listeners: Vec<Value>, clusters: Vec<Value>) -> Value {
    json!({ "static_resources": { "listeners": listeners, "clusters": clusters } })
}

/// A workload identity's certificate files, as Envoy reads them.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// Leaf followed by intermediates.
    pub chain: PathBuf,
    pub key: PathBuf,
    /// The roots to trust.
    pub roots: PathBuf,
}

impl CertFiles {
    /// Writes `leaf` into `dir` as `<name>.crt`, `<name>.key` and `<name>-roots.crt`.
    pub fn write(dir: &TempDir, name: &str, leaf: &mesh_testing::Leaf) -> CertFiles {
        CertFiles {
            chain: dir.write(&format!("{name}.crt"), &leaf.chain_pem),
            key: dir.write(&format!("{name}.key"), &leaf.key_pem),
            roots: dir.write(&format!("{name}-roots.crt"), &leaf.roots_pem),
        }
    }
}

/// How the peer's SPIFFE id (URI SAN) must look.
#[derive(Debug, Clone)]
pub enum SanMatch {
    /// Exactly one of these ids.
    Exact(Vec<String>),
    /// Starting with one of these prefixes (e.g. `spiffe://cluster.local/`).
    Prefix(Vec<String>),
}

impl SanMatch {
    fn matchers(&self) -> Value {
        let (kind, values) = match self {
            SanMatch::Exact(v) => ("exact", v),
            SanMatch::Prefix(v) => ("prefix", v),
        };
        values
            .iter()
            .map(|v| json!({ "san_type": "URI", "matcher": { kind: v } }))
            .collect()
    }
}

/// `CommonTlsContext` of the HBONE profile: TLS 1.3 only, ALPN `h2`, our certificate, the
/// peer validated against `certs.roots` and `peer`.
pub fn hbone_common_tls(certs: &CertFiles, peer: &SanMatch) -> Value {
    json!({
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_3",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
        "alpn_protocols": ["h2"],
        "tls_certificates": [{
            "certificate_chain": { "filename": certs.chain },
            "private_key": { "filename": certs.key },
        }],
        "validation_context": {
            "trusted_ca": { "filename": certs.roots },
            "match_typed_subject_alt_names": peer.matchers(),
        },
    })
}

/// Upstream (client side) TLS transport socket for HBONE. No SNI, like istiod's
/// `connect_originate` cluster.
pub fn hbone_upstream_tls(certs: &CertFiles, peer: &SanMatch) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS_CONTEXT_UPSTREAM,
            "common_tls_context": hbone_common_tls(certs, peer),
        },
    })
}

/// Downstream (server side) TLS transport socket for HBONE: client certificate required.
pub fn hbone_downstream_tls(certs: &CertFiles, peer: &SanMatch) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS_CONTEXT_DOWNSTREAM,
            "require_client_certificate": true,
            "common_tls_context": hbone_common_tls(certs, peer),
        },
    })
}

/// A STATIC cluster with one endpoint.
pub fn static_cluster(name: &str, endpoint: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket_address(endpoint) } }] }],
        },
    })
}

/// A cluster speaking HTTP/2 inside `tls` to an HBONE server (istiod's `connect_originate`,
/// with a static endpoint instead of ORIGINAL_DST).
pub fn hbone_cluster(name: &str, endpoint: SocketAddr, tls: Value) -> Value {
    let mut cluster = static_cluster(name, endpoint);
    cluster["transport_socket"] = tls;
    cluster["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": HTTP_PROTOCOL_OPTIONS,
            "explicit_http_config": { "http2_protocol_options": {} },
        },
    });
    cluster
}

/// A file access log writing one JSON object per line (`fields`: name → command operator,
/// e.g. `"%UPSTREAM_PEER_URI_SAN%"`).
pub fn json_access_log(path: PathBuf, fields: Value) -> Value {
    json!({
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": FILE_ACCESS_LOG,
            "path": path,
            "log_format": { "json_format": fields },
        },
    })
}

/// A plain TCP listener on `127.0.0.1:0` whose `tcp_proxy` tunnels every connection as an
/// HTTP/2 CONNECT to `hostname` through `cluster` (an [`hbone_cluster`]).
///
/// `headers` are added to the CONNECT request (values may use command operators such as
/// `%DOWNSTREAM_REMOTE_ADDRESS%`).
pub fn connect_originate_listener(
    name: &str,
    cluster: &str,
    hostname: &str,
    headers: &[(&str, &str)],
    access_log: Option<Value>,
) -> Value {
    let headers_to_add: Vec<Value> = headers
        .iter()
        .map(|(k, v)| json!({ "header": { "key": k, "value": v } }))
        .collect();
    let mut tcp_proxy = json!({
        "@type": TCP_PROXY,
        "stat_prefix": name,
        "cluster": cluster,
        "tunneling_config": { "hostname": hostname, "headers_to_add": headers_to_add },
    });
    if let Some(log) = access_log {
        tcp_proxy["access_log"] = json!([log]);
    }
    json!({
        "name": name,
        "stat_prefix": name,
        "address": socket_address("127.0.0.1:0".parse().expect("literal address")),
        "filter_chains": [{
            "filters": [{ "name": "envoy.filters.network.tcp_proxy", "typed_config": tcp_proxy }],
        }],
    })
}

/// An HBONE server listener on `127.0.0.1:0` (istiod's `connect_terminate`): mutual TLS
/// (`tls`, an [`hbone_downstream_tls`]), HTTP/2 only with `allow_connect`, and each CONNECT
/// forwarded as raw TCP to the cluster that `routes` gives for its `:authority`
/// (authority → cluster). Other authorities get 404.
pub fn connect_terminate_listener(
    name: &str,
    tls: Value,
    routes: &[(&str, &str)],
    access_log: Option<Value>,
) -> Value {
    let virtual_hosts: Vec<Value> = routes
        .iter()
        .map(|(authority, cluster)| {
            json!({
                "name": authority,
                "domains": [authority],
                "routes": [{
                    "match": { "connect_matcher": {} },
                    "route": {
                        "cluster": cluster,
                        "upgrade_configs": [{ "upgrade_type": "CONNECT", "connect_config": {} }],
                    },
                }],
            })
        })
        .collect();
    let mut hcm = json!({
        "@type": HCM,
        "stat_prefix": name,
        "codec_type": "HTTP2",
        "http2_protocol_options": { "allow_connect": true },
        "upgrade_configs": [{ "upgrade_type": "CONNECT" }],
        "route_config": { "name": name, "virtual_hosts": virtual_hosts },
        "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": { "@type": ROUTER } }],
    });
    if let Some(log) = access_log {
        hcm["access_log"] = json!([log]);
    }
    json!({
        "name": name,
        "stat_prefix": name,
        "address": socket_address("127.0.0.1:0".parse().expect("literal address")),
        "filter_chains": [{
            "transport_socket": tls,
            "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm }],
        }],
    })
}

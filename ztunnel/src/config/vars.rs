//! Names of every environment variable ztunnel reads, one constant each.
//!
//! [`ALL`] lists them (and [`PREFIXES`] the prefix families) so the Helm chart's tests can check
//! that chart and binary agree. A test in `tests/config_vars.rs` checks that every constant in
//! this file is listed in [`ALL`].

pub const PROXY_MODE: &str = "PROXY_MODE";
pub const PROXY_WORKLOAD_INFO: &str = "PROXY_WORKLOAD_INFO";
pub const INPOD_UDS: &str = "INPOD_UDS";
pub const INPOD_PORT_REUSE: &str = "INPOD_PORT_REUSE";
/// Legacy; set by older charts. Accepted and ignored.
pub const INPOD_ENABLED: &str = "INPOD_ENABLED";
pub const PACKET_MARK: &str = "PACKET_MARK";
pub const ENABLE_ORIG_SRC: &str = "ENABLE_ORIG_SRC";
pub const ENABLE_PROXY: &str = "ENABLE_PROXY";
pub const XDS_ADDRESS: &str = "XDS_ADDRESS";
pub const CA_ADDRESS: &str = "CA_ADDRESS";
pub const XDS_ROOT_CA: &str = "XDS_ROOT_CA";
pub const CA_ROOT_CA: &str = "CA_ROOT_CA";
pub const ALT_XDS_HOSTNAME: &str = "ALT_XDS_HOSTNAME";
pub const ALT_CA_HOSTNAME: &str = "ALT_CA_HOSTNAME";
pub const AUTH_TOKEN: &str = "AUTH_TOKEN";
pub const ISTIO_META_CLUSTER_ID: &str = "ISTIO_META_CLUSTER_ID";
pub const CLUSTER_ID: &str = "CLUSTER_ID";
pub const CLUSTER_DOMAIN: &str = "CLUSTER_DOMAIN";
pub const NETWORK: &str = "NETWORK";
pub const TRUST_DOMAIN: &str = "TRUST_DOMAIN";
pub const POD_NAME: &str = "POD_NAME";
pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
pub const SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";
pub const NODE_NAME: &str = "NODE_NAME";
pub const INSTANCE_IP: &str = "INSTANCE_IP";
pub const SECRET_TTL: &str = "SECRET_TTL";
pub const FAKE_CA: &str = "FAKE_CA";
pub const LOCAL_XDS_PATH: &str = "LOCAL_XDS_PATH";
pub const LOCAL_XDS: &str = "LOCAL_XDS";
pub const XDS_ON_DEMAND: &str = "XDS_ON_DEMAND";
/// Spelled as Istio spells it.
pub const PREFERED_SERVICE_NAMESPACE: &str = "PREFERED_SERVICE_NAMESPACE";
pub const ZTUNNEL_WORKER_THREADS: &str = "ZTUNNEL_WORKER_THREADS";
pub const ZTUNNEL_CPU_LIMIT: &str = "ZTUNNEL_CPU_LIMIT";
pub const ZTUNNEL_RESOURCE_CPU_LIMIT: &str = "ZTUNNEL_RESOURCE_CPU_LIMIT";
pub const ZTUNNEL_RESOURCE_CPU_REQUEST: &str = "ZTUNNEL_RESOURCE_CPU_REQUEST";
pub const POOL_MAX_STREAMS_PER_CONNECTION: &str = "POOL_MAX_STREAMS_PER_CONNECTION";
pub const POOL_UNUSED_RELEASE_TIMEOUT: &str = "POOL_UNUSED_RELEASE_TIMEOUT";
pub const HTTP2_STREAM_WINDOW_SIZE: &str = "HTTP2_STREAM_WINDOW_SIZE";
pub const HTTP2_CONNECTION_WINDOW_SIZE: &str = "HTTP2_CONNECTION_WINDOW_SIZE";
pub const HTTP2_FRAME_SIZE: &str = "HTTP2_FRAME_SIZE";
pub const CONNECTION_TERMINATION_DEADLINE: &str = "CONNECTION_TERMINATION_DEADLINE";
pub const TERMINATION_GRACE_PERIOD_SECONDS: &str = "TERMINATION_GRACE_PERIOD_SECONDS";
pub const KEEPALIVE_TIME: &str = "KEEPALIVE_TIME";
pub const KEEPALIVE_INTERVAL: &str = "KEEPALIVE_INTERVAL";
pub const KEEPALIVE_RETRIES: &str = "KEEPALIVE_RETRIES";
pub const KEEPALIVE_ENABLED: &str = "KEEPALIVE_ENABLED";
pub const USER_TIMEOUT_ENABLED: &str = "USER_TIMEOUT_ENABLED";
pub const IPV6_ENABLED: &str = "IPV6_ENABLED";
pub const ISTIO_META_DNS_CAPTURE: &str = "ISTIO_META_DNS_CAPTURE";
pub const ISTIO_META_DNS_PROXY_ADDR: &str = "ISTIO_META_DNS_PROXY_ADDR";
pub const UNSTABLE_ENABLE_SOCKS5: &str = "UNSTABLE_ENABLE_SOCKS5";
pub const LOCALHOST_APP_TUNNEL: &str = "LOCALHOST_APP_TUNNEL";
pub const ENABLE_RESPONSE_BAGGAGE: &str = "ENABLE_RESPONSE_BAGGAGE";
pub const CRL_PATH: &str = "CRL_PATH";
pub const TLS12_ENABLED: &str = "TLS12_ENABLED";
pub const COMPLIANCE_POLICY: &str = "COMPLIANCE_POLICY";
pub const AUTHZ_POLICY_INFO_LOGGING: &str = "AUTHZ_POLICY_INFO_LOGGING";
pub const LOG_FORMAT: &str = "LOG_FORMAT";
pub const RUST_LOG: &str = "RUST_LOG";
/// Read by the Rust runtime itself (panic backtraces); listed because the chart sets it.
pub const RUST_BACKTRACE: &str = "RUST_BACKTRACE";
pub const PROXY_CONFIG: &str = "PROXY_CONFIG";
pub const ISTIO_META_ISTIO_VERSION: &str = "ISTIO_META_ISTIO_VERSION";
pub const KUBERNETES_SERVICE_HOST: &str = "KUBERNETES_SERVICE_HOST";

/// `ISTIO_META_<K>`: node metadata `<K>` (string).
pub const ISTIO_META_PREFIX: &str = "ISTIO_META_";
/// `ISTIO_METAJSON_<K>`: node metadata `<K>` (parsed JSON).
pub const ISTIO_METAJSON_PREFIX: &str = "ISTIO_METAJSON_";
/// `XDS_HEADER_<name>`: extra gRPC metadata on xDS calls.
pub const XDS_HEADER_PREFIX: &str = "XDS_HEADER_";
/// `CA_HEADER_<name>`: extra gRPC metadata on CA calls.
pub const CA_HEADER_PREFIX: &str = "CA_HEADER_";

/// Every variable read by name.
pub const ALL: &[&str] = &[
    PROXY_MODE,
    PROXY_WORKLOAD_INFO,
    INPOD_UDS,
    INPOD_PORT_REUSE,
    INPOD_ENABLED,
    PACKET_MARK,
    ENABLE_ORIG_SRC,
    ENABLE_PROXY,
    XDS_ADDRESS,
    CA_ADDRESS,
    XDS_ROOT_CA,
    CA_ROOT_CA,
    ALT_XDS_HOSTNAME,
    ALT_CA_HOSTNAME,
    AUTH_TOKEN,
    ISTIO_META_CLUSTER_ID,
    CLUSTER_ID,
    CLUSTER_DOMAIN,
    NETWORK,
    TRUST_DOMAIN,
    POD_NAME,
    POD_NAMESPACE,
    SERVICE_ACCOUNT,
    NODE_NAME,
    INSTANCE_IP,
    SECRET_TTL,
    FAKE_CA,
    LOCAL_XDS_PATH,
    LOCAL_XDS,
    XDS_ON_DEMAND,
    PREFERED_SERVICE_NAMESPACE,
    ZTUNNEL_WORKER_THREADS,
    ZTUNNEL_CPU_LIMIT,
    ZTUNNEL_RESOURCE_CPU_LIMIT,
    ZTUNNEL_RESOURCE_CPU_REQUEST,
    POOL_MAX_STREAMS_PER_CONNECTION,
    POOL_UNUSED_RELEASE_TIMEOUT,
    HTTP2_STREAM_WINDOW_SIZE,
    HTTP2_CONNECTION_WINDOW_SIZE,
    HTTP2_FRAME_SIZE,
    CONNECTION_TERMINATION_DEADLINE,
    TERMINATION_GRACE_PERIOD_SECONDS,
    KEEPALIVE_TIME,
    KEEPALIVE_INTERVAL,
    KEEPALIVE_RETRIES,
    KEEPALIVE_ENABLED,
    USER_TIMEOUT_ENABLED,
    IPV6_ENABLED,
    ISTIO_META_DNS_CAPTURE,
    ISTIO_META_DNS_PROXY_ADDR,
    UNSTABLE_ENABLE_SOCKS5,
    LOCALHOST_APP_TUNNEL,
    ENABLE_RESPONSE_BAGGAGE,
    CRL_PATH,
    TLS12_ENABLED,
    COMPLIANCE_POLICY,
    AUTHZ_POLICY_INFO_LOGGING,
    LOG_FORMAT,
    RUST_LOG,
    RUST_BACKTRACE,
    PROXY_CONFIG,
    ISTIO_META_ISTIO_VERSION,
    KUBERNETES_SERVICE_HOST,
];

/// Every prefix whose variables are read as a family.
pub const PREFIXES: &[&str] = &[
    ISTIO_META_PREFIX,
    ISTIO_METAJSON_PREFIX,
    XDS_HEADER_PREFIX,
    CA_HEADER_PREFIX,
];

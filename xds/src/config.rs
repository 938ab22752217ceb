//! What the client connects to, how it authenticates, who it says it is and
//! which types it subscribes to.
//!
//! Environment parsing (`XDS_ADDRESS`, `ISTIO_META_*`, ...) is the caller's
//! job; this module only offers [`metadata_from_env`] and
//! [`TokenSource::from_env_value`] so that every proxy applies the same rules.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use proto::envoy::config::core::v3::Node;
use serde::Serialize;

/// Default HTTP/2 PING interval on the xDS connection (ztunnel: 30 s).
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Default time to wait for a PING acknowledgement (ztunnel: 10 s).
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default TCP connect timeout (ztunnel: 5 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default limit on one decoded response (ztunnel: 200 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 200 * 1024 * 1024;
/// Default time a new stream may take to answer every wildcard subscription.
pub const DEFAULT_INITIAL_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time [`crate::XdsClient::demand`] waits for an on-demand resource.
pub const DEFAULT_DEMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// The domain suffix Istio's ztunnel always puts in its node id.
pub const DEFAULT_DOMAIN_SUFFIX: &str = "svc.cluster.local";

/// Everything the ADS client needs. Printed at startup (tokens are redacted).
#[derive(Clone, Debug, Serialize)]
pub struct XdsConfig {
    /// `https://host:port` (istiod: port 15012). `http://` is accepted for
    /// plaintext test and local control planes.
    pub address: String,
    /// Roots to verify the server with; required for `https://`.
    pub root_cert: Option<RootCert>,
    /// Name checked against the server certificate instead of the address
    /// host (`ALT_XDS_HOSTNAME`).
    pub server_name: Option<String>,
    /// Bearer token sent as `authorization` on every stream.
    pub token: TokenSource,
    /// Sent as the `clusterid` header (istiod picks the cluster for token
    /// review with it).
    pub cluster_id: Option<String>,
    /// Extra gRPC metadata (`XDS_HEADER_<name>`), sent on every stream.
    pub headers: Vec<(String, String)>,
    /// Who this proxy is.
    pub node: NodeIdentity,
    /// Node metadata beyond `NAME`/`NAMESPACE`/`INSTANCE_IPS`/`NODE_NAME`
    /// (see [`metadata_from_env`]). Caller entries win over the built-in keys.
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Types subscribed as wildcard, in the order their initial requests are
    /// sent (ztunnel: Address, then Authorization).
    pub wildcard_types: Vec<String>,
    /// Types subscribed name by name ([`crate::XdsClient::subscribe`]).
    pub on_demand_types: Vec<String>,
    /// Channel tuning.
    pub timeouts: Timeouts,
}

/// Connection tuning; the defaults are ztunnel's.
#[derive(Clone, Debug, Serialize)]
pub struct Timeouts {
    /// TCP connect timeout.
    pub connect: Duration,
    /// HTTP/2 PING interval (also while idle).
    pub keepalive_interval: Duration,
    /// A PING not acknowledged within this fails the connection, which ends
    /// the stream with an error and triggers a reconnect.
    pub keepalive_timeout: Duration,
    /// TCP keepalive: idle time, probe interval, probe count (300 s / 75 s / 9).
    pub tcp_keepalive: Duration,
    /// See [`Timeouts::tcp_keepalive`].
    pub tcp_keepalive_interval: Duration,
    /// See [`Timeouts::tcp_keepalive`].
    pub tcp_keepalive_retries: u32,
    /// Largest decoded response accepted.
    pub max_message_size: usize,
    /// A new stream that has not answered every wildcard subscription within
    /// this is treated as stalled and reconnected (istiod always answers a
    /// wildcard subscription, even with no resources).
    pub initial_response: Duration,
    /// How long [`crate::XdsClient::demand`] waits by default.
    pub demand: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            tcp_keepalive: Duration::from_secs(300),
            tcp_keepalive_interval: Duration::from_secs(75),
            tcp_keepalive_retries: 9,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            initial_response: DEFAULT_INITIAL_RESPONSE_TIMEOUT,
            demand: DEFAULT_DEMAND_TIMEOUT,
        }
    }
}

impl XdsConfig {
    /// A config with ztunnel's defaults for everything but the address and
    /// node; no types, no token, no root.
    pub fn new(address: impl Into<String>, node: NodeIdentity) -> Self {
        XdsConfig {
            address: address.into(),
            root_cert: None,
            server_name: None,
            token: TokenSource::None,
            cluster_id: None,
            headers: Vec::new(),
            node,
            metadata: BTreeMap::new(),
            wildcard_types: Vec::new(),
            on_demand_types: Vec::new(),
            timeouts: Timeouts::default(),
        }
    }

    /// The `Node` sent on the first request of every type.
    pub fn node_proto(&self) -> Node {
        let mut fields = BTreeMap::new();
        let node = &self.node;
        let builtin = [
            ("NAME", node.pod_name.clone()),
            ("NAMESPACE", node.pod_namespace.clone()),
            ("INSTANCE_IPS", node.instance_ips()),
            ("NODE_NAME", node.node_name.clone()),
        ];
        for (k, v) in builtin {
            fields.insert(k.to_string(), json_to_value(serde_json::Value::String(v)));
        }
        for (k, v) in &self.metadata {
            fields.insert(k.clone(), json_to_value(v.clone()));
        }
        Node {
            id: node.node_id(),
            metadata: Some(prost_types::Struct {
                fields: fields.into_iter().collect(),
            }),
            ..Default::default()
        }
    }
}

pub use identity::source::{RootCert, TokenSource};

/// The node-id type prefix istiod uses to tell proxies apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ProxyType {
    /// `ztunnel`
    Ztunnel,
    /// `waypoint`
    Waypoint,
    /// `agentgateway`
    Agentgateway,
    /// `sidecar`
    Sidecar,
    /// `router`
    Router,
}

impl ProxyType {
    /// The prefix of the node id.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyType::Ztunnel => "ztunnel",
            ProxyType::Waypoint => "waypoint",
            ProxyType::Agentgateway => "agentgateway",
            ProxyType::Sidecar => "sidecar",
            ProxyType::Router => "router",
        }
    }
}

impl fmt::Display for ProxyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parts of the node id and the built-in metadata keys.
#[derive(Clone, Debug, Serialize)]
pub struct NodeIdentity {
    /// Node id prefix.
    pub proxy_type: ProxyType,
    /// The proxy's IPs; the first goes into the node id, all of them
    /// (comma-separated) into `INSTANCE_IPS`. Empty ⇒ `1.1.1.1`, as ztunnel.
    pub ips: Vec<IpAddr>,
    /// `POD_NAME` → metadata `NAME`.
    pub pod_name: String,
    /// `POD_NAMESPACE` → metadata `NAMESPACE` (istiod checks it against the
    /// token's namespace).
    pub pod_namespace: String,
    /// `NODE_NAME` → metadata `NODE_NAME`.
    pub node_name: String,
    /// Suffix of the last node-id part, `<ns>.<suffix>`
    /// ([`DEFAULT_DOMAIN_SUFFIX`]).
    pub domain_suffix: String,
}

impl NodeIdentity {
    /// A node identity with the default domain suffix.
    pub fn new(
        proxy_type: ProxyType,
        ips: Vec<IpAddr>,
        pod_name: impl Into<String>,
        pod_namespace: impl Into<String>,
        node_name: impl Into<String>,
    ) -> Self {
        NodeIdentity {
            proxy_type,
            ips,
            pod_name: pod_name.into(),
            pod_namespace: pod_namespace.into(),
            node_name: node_name.into(),
            domain_suffix: DEFAULT_DOMAIN_SUFFIX.to_string(),
        }
    }

    /// `<type>~<ip>~<pod>.<ns>~<ns>.<suffix>`, the form istiod parses.
    pub fn node_id(&self) -> String {
        let ip = self
            .ips
            .first()
            .map_or_else(|| "1.1.1.1".to_string(), IpAddr::to_string);
        let ns = &self.pod_namespace;
        format!(
            "{}~{ip}~{}.{ns}~{ns}.{}",
            self.proxy_type, self.pod_name, self.domain_suffix
        )
    }

    /// The `INSTANCE_IPS` metadata value.
    pub fn instance_ips(&self) -> String {
        if self.ips.is_empty() {
            return "1.1.1.1".to_string();
        }
        let ips: Vec<String> = self.ips.iter().map(IpAddr::to_string).collect();
        ips.join(",")
    }
}

/// Env prefix whose variables become string metadata.
pub const META_PREFIX: &str = "ISTIO_META_";
/// Env prefix whose variables become JSON metadata.
pub const METAJSON_PREFIX: &str = "ISTIO_METAJSON_";

/// Node metadata from environment-like pairs: `ISTIO_META_<K>=v` gives key
/// `<K>` with string `v`; `ISTIO_METAJSON_<K>=json` gives `<K>` with the parsed
/// JSON (invalid JSON is skipped with a warning). Other pairs are ignored.
/// When both forms name the same key the JSON one wins.
pub fn metadata_from_env<I, K, V>(vars: I) -> BTreeMap<String, serde_json::Value>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut plain = BTreeMap::new();
    let mut json = BTreeMap::new();
    for (k, v) in vars {
        let (k, v) = (k.as_ref(), v.as_ref());
        if let Some(key) = k.strip_prefix(METAJSON_PREFIX) {
            if key.is_empty() {
                continue;
            }
            match serde_json::from_str::<serde_json::Value>(v) {
                Ok(value) => {
                    json.insert(key.to_string(), value);
                }
                Err(e) => {
                    tracing::warn!(variable = k, error = %e, "skipping node metadata that is not valid JSON");
                }
            }
        } else if let Some(key) = k.strip_prefix(META_PREFIX)
            && !key.is_empty()
        {
            plain.insert(key.to_string(), serde_json::Value::String(v.to_string()));
        }
    }
    plain.extend(json);
    plain
}

/// Converts JSON into a protobuf `Value` (numbers become doubles).
pub fn json_to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.into_iter().map(|(k, v)| (k, json_to_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::value::Kind;

    fn node() -> NodeIdentity {
        NodeIdentity::new(
            ProxyType::Ztunnel,
            vec!["10.244.1.7".parse().unwrap()],
            "ztunnel-x2k9",
            "istio-system",
            "node-a",
        )
    }

    #[test]
    fn node_id_format() {
        let table = [
            (
                node(),
                "ztunnel~10.244.1.7~ztunnel-x2k9.istio-system~istio-system.svc.cluster.local",
            ),
            (
                NodeIdentity {
                    proxy_type: ProxyType::Waypoint,
                    ips: vec![],
                    pod_name: "waypoint-5d8".into(),
                    pod_namespace: "shop".into(),
                    node_name: String::new(),
                    domain_suffix: "svc.example.org".into(),
                },
                "waypoint~1.1.1.1~waypoint-5d8.shop~shop.svc.example.org",
            ),
            (
                NodeIdentity::new(
                    ProxyType::Agentgateway,
                    vec!["fd00::1".parse().unwrap()],
                    "gw",
                    "shop",
                    "n",
                ),
                "agentgateway~fd00::1~gw.shop~shop.svc.cluster.local",
            ),
        ];
        for (n, want) in table {
            assert_eq!(n.node_id(), want);
        }
    }

    #[test]
    fn node_metadata_has_builtin_and_caller_keys() {
        let mut n = node();
        n.ips.push("10.244.1.8".parse().unwrap());
        let mut cfg = XdsConfig::new("https://istiod:15012", n);
        cfg.metadata
            .insert("ISTIO_VERSION".into(), serde_json::json!("1.27.0"));
        cfg.metadata
            .insert("NAME".into(), serde_json::json!("override"));
        let node = cfg.node_proto();
        let md = node.metadata.unwrap().fields;
        let s = |k: &str| match md.get(k).and_then(|v| v.kind.clone()) {
            Some(Kind::StringValue(s)) => s,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(s("NAME"), "override");
        assert_eq!(s("NAMESPACE"), "istio-system");
        assert_eq!(s("INSTANCE_IPS"), "10.244.1.7,10.244.1.8");
        assert_eq!(s("NODE_NAME"), "node-a");
        assert_eq!(s("ISTIO_VERSION"), "1.27.0");
    }

    #[test]
    fn metadata_from_env_strips_and_parses() {
        let md = metadata_from_env([
            ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
            ("ISTIO_META_DNS_CAPTURE", "true"),
            ("ISTIO_METAJSON_LABELS", r#"{"app":"cart","n":2}"#),
            ("ISTIO_METAJSON_BROKEN", "{not json"),
            ("ISTIO_META_", "empty key"),
            ("PATH", "/usr/bin"),
        ]);
        let want: BTreeMap<String, serde_json::Value> = [
            ("CLUSTER_ID".to_string(), serde_json::json!("Kubernetes")),
            ("DNS_CAPTURE".to_string(), serde_json::json!("true")),
            (
                "LABELS".to_string(),
                serde_json::json!({"app": "cart", "n": 2}),
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(md, want);
    }

    #[test]
    fn json_values_convert() {
        let v = json_to_value(serde_json::json!({"a": [1, true, null, "x"]}));
        let Some(Kind::StructValue(s)) = v.kind else {
            panic!("not a struct")
        };
        let Some(Kind::ListValue(l)) = s.fields["a"].kind.clone() else {
            panic!("not a list")
        };
        let kinds: Vec<_> = l.values.into_iter().map(|v| v.kind.unwrap()).collect();
        assert_eq!(
            kinds,
            vec![
                Kind::NumberValue(1.0),
                Kind::BoolValue(true),
                Kind::NullValue(0),
                Kind::StringValue("x".into())
            ]
        );
    }

    #[test]
    fn token_source_rules_and_redaction() {
        let dir = std::env::temp_dir().join(format!("xds-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "abc").unwrap();
        assert!(matches!(
            TokenSource::from_env_value(file.to_str().unwrap()),
            TokenSource::File(_)
        ));
        assert!(matches!(
            TokenSource::from_env_value("eyJhbGciOi"),
            TokenSource::Literal(_)
        ));
        assert!(matches!(TokenSource::from_env_value(""), TokenSource::None));
        let lit = TokenSource::Literal("secret".into());
        assert!(!format!("{lit:?}").contains("secret"));
        assert!(!serde_json::to_string(&lit).unwrap().contains("secret"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}

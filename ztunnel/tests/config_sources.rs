//! Config values that come from files, YAML, prefixed families and the startup print.

use std::path::{Path, PathBuf};

use meshcore::env::MapEnv;
use ztunnel::config::{AuthToken, Config, ConfigError, Host, RootCert, vars};

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("ztunnel-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_in(dir: &Path, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_env_on(
        &MapEnv::from_iter(pairs.iter().copied()),
        &Host {
            base_dir: dir.to_owned(),
            cpus: 4,
        },
    )
}

fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    load_in(Path::new("/nonexistent/ztunnel-config-test"), pairs)
}

#[test]
fn auth_token_sources() {
    let dir = Scratch::new("token");
    // Nothing set, default file absent.
    assert_eq!(load_in(&dir.0, &[]).unwrap().auth, AuthToken::None);
    // Default file present.
    let default = dir.write("var/run/secrets/tokens/istio-token", "jwt");
    assert_eq!(load_in(&dir.0, &[]).unwrap().auth, AuthToken::File(default));
    // An existing path, or a literal token.
    let custom = dir.write("custom-token", "jwt");
    let custom_str = custom.to_str().unwrap();
    assert_eq!(
        load_in(&dir.0, &[(vars::AUTH_TOKEN, custom_str)])
            .unwrap()
            .auth,
        AuthToken::File(custom.clone())
    );
    let literal = load_in(&dir.0, &[(vars::AUTH_TOKEN, "eyJhbGciOi.t0kenbody.sig")]).unwrap();
    assert_eq!(
        literal.auth,
        AuthToken::Literal("eyJhbGciOi.t0kenbody.sig".into())
    );
    // Never printed.
    let json = serde_json::to_string(&literal).unwrap();
    assert!(!json.contains("t0kenbody"), "{json}");
    assert!(json.contains("\"auth\":\"literal:<redacted>\""), "{json}");
    assert!(!format!("{literal:?}").contains("t0kenbody"));
}

#[test]
fn root_cert_sources() {
    let dir = Scratch::new("root");
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let file = dir.write("roots.pem", pem);
    let file_str = file.to_str().unwrap();
    let c = load_in(
        &dir.0,
        &[(vars::XDS_ROOT_CA, "SYSTEM"), (vars::CA_ROOT_CA, pem)],
    )
    .unwrap();
    assert_eq!(c.xds.root_cert, RootCert::System);
    assert_eq!(c.ca.root_cert, RootCert::Inline(pem.trim().to_owned()));
    let c = load_in(&dir.0, &[(vars::XDS_ROOT_CA, file_str)]).unwrap();
    assert_eq!(c.xds.root_cert, RootCert::File(file.clone()));
    assert!(c.warnings.is_empty());
    // A missing file stays a file (it is watched) but is reported.
    let c = load_in(&dir.0, &[(vars::CA_ROOT_CA, "/missing/root.pem")]).unwrap();
    assert_eq!(c.ca.root_cert, RootCert::File("/missing/root.pem".into()));
    assert_eq!(
        c.warnings,
        vec![
            "CA_ROOT_CA=/missing/root.pem: the file does not exist (yet); it will be read when it appears"
        ]
    );
    let json = serde_json::to_value(load_in(&dir.0, &[(vars::CA_ROOT_CA, pem)]).unwrap()).unwrap();
    assert_eq!(
        json["ca"]["rootCert"],
        format!("inline PEM ({} bytes)", pem.trim().len())
    );
    assert_eq!(
        json["xds"]["rootCert"],
        format!(
            "file:{}",
            dir.0.join("var/run/secrets/istio/root-cert.pem").display()
        )
    );
}

#[test]
fn proxy_config_merges_over_mesh_config() {
    let dir = Scratch::new("proxyconfig");
    dir.write(
        "etc/istio/config/mesh",
        "defaultConfig:\n  discoveryAddress: istiod-mesh.istio-system.svc:15012\n  statsPort: 15888\n  \
         proxyAdminPort: 15099\n  proxyMetadata:\n    FOO: foo\n    ISTIO_META_FOOBAR: from-mesh\n\
         trustDomain: ignored.example\n",
    );
    let c = load_in(&dir.0, &[]).unwrap();
    assert_eq!(
        c.xds.address.as_deref(),
        Some("https://istiod-mesh.istio-system.svc:15012")
    );
    assert_eq!(
        c.ca.address.as_deref(),
        Some("https://localhost:15012"),
        "CA ignores discoveryAddress"
    );
    assert_eq!(c.stats_addr.port(), 15888);
    assert_eq!(c.admin_addr.port(), 15099);
    assert_eq!(c.readiness_addr.port(), 15021);
    assert_eq!(c.proxy_metadata["FOO"], "foo");
    assert_eq!(c.proxy_metadata["FOOBAR"], "from-mesh");

    let pc = r#"{"discoveryAddress": "istiod-rev0.istio-system-2:15012", "proxyAdminPort": 15999,
        "proxyMetadata": {"ISTIO_META_BAR": "bar", "ISTIO_META_FOOBAR": "from-env", "NO_PREFIX": "np"},
        "tracing": {"zipkin": {"address": "x:9411"}}}"#;
    let c = load_in(
        &dir.0,
        &[
            (vars::PROXY_CONFIG, pc),
            ("ISTIO_META_INCLUDE_THIS", "from-var"),
            ("ISTIO_META_BAR", "var-wins"),
            ("NOT_INCLUDED", "x"),
        ],
    )
    .unwrap();
    assert_eq!(
        c.xds.address.as_deref(),
        Some("https://istiod-rev0.istio-system-2:15012")
    );
    assert_eq!(c.admin_addr.port(), 15999);
    assert_eq!(c.stats_addr.port(), 15888, "mesh config value kept");
    assert_eq!(c.proxy_metadata["FOO"], "foo");
    assert_eq!(c.proxy_metadata["FOOBAR"], "from-env");
    assert_eq!(c.proxy_metadata["NO_PREFIX"], "np");
    assert_eq!(c.proxy_metadata["INCLUDE_THIS"], "from-var");
    assert_eq!(c.proxy_metadata["BAR"], "var-wins");
    assert!(!c.proxy_metadata.contains_key("NOT_INCLUDED"));
    // XDS_ADDRESS beats discoveryAddress, even when empty (xDS off).
    let c = load_in(&dir.0, &[(vars::PROXY_CONFIG, pc), (vars::XDS_ADDRESS, "")]).unwrap();
    assert_eq!(c.xds.address, None);
    // DNS settings may come from proxyMetadata.
    let c = load(&[(
        vars::PROXY_CONFIG,
        "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"false\"\n  DNS_PROXY_ADDR: 127.0.0.1:5353\n",
    )])
    .unwrap();
    assert!(!c.dns_proxy);
    assert_eq!(c.dns_proxy_addr.to_string(), "127.0.0.1:5353");
}

#[test]
fn invalid_proxy_config() {
    let msg = load(&[(vars::PROXY_CONFIG, "proxyAdminPort: [1")])
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("PROXY_CONFIG is not a valid ProxyConfig: "),
        "{msg}"
    );
    let msg = load(&[(vars::PROXY_CONFIG, "statsPort: 99999")])
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("PROXY_CONFIG is not a valid ProxyConfig: "),
        "{msg}"
    );
    let dir = Scratch::new("badmesh");
    dir.write("etc/istio/config/mesh", "defaultConfig: [oops");
    let msg = load_in(&dir.0, &[]).unwrap_err().to_string();
    assert!(msg.starts_with("mesh config "), "{msg}");
    assert!(
        msg.contains("etc/istio/config/mesh is not a valid ProxyConfig"),
        "{msg}"
    );
    // Empty PROXY_CONFIG and an empty mesh file are fine.
    let dir = Scratch::new("emptymesh");
    dir.write("etc/istio/config/mesh", "");
    assert!(load_in(&dir.0, &[(vars::PROXY_CONFIG, "")]).is_ok());
    assert!(load_in(&dir.0, &[(vars::PROXY_CONFIG, "null")]).is_ok());
}

#[test]
fn node_metadata() {
    let c = load(&[
        (vars::POD_NAME, "ztunnel-1"),
        (vars::POD_NAMESPACE, "istio-system"),
        (vars::NODE_NAME, "node-a"),
        (vars::INSTANCE_IP, "10.0.0.9"),
        (vars::ISTIO_META_ISTIO_VERSION, "1.28.0"),
        ("ISTIO_META_ENABLE_HBONE", "true"),
        ("ISTIO_METAJSON_LABELS", r#"{"app":"ztunnel","tier":1}"#),
        ("ISTIO_METAJSON_BROKEN", "{not json"),
        ("ISTIO_META_NAME", "overridden-by-pod-name"),
    ])
    .unwrap();
    let m = &c.node_metadata;
    assert_eq!(m["NAME"], "ztunnel-1");
    assert_eq!(m["NAMESPACE"], "istio-system");
    assert_eq!(m["INSTANCE_IPS"], "10.0.0.9");
    assert_eq!(m["NODE_NAME"], "node-a");
    assert_eq!(m["ISTIO_VERSION"], "1.28.0");
    assert_eq!(m["ENABLE_HBONE"], "true");
    assert_eq!(
        m["LABELS"],
        serde_json::json!({"app": "ztunnel", "tier": 1})
    );
    assert!(!m.contains_key("BROKEN"));
    assert_eq!(c.warnings.len(), 1);
    assert!(
        c.warnings[0].starts_with(
            "ISTIO_METAJSON_BROKEN is not valid JSON and was left out of the node metadata"
        ),
        "{:?}",
        c.warnings
    );
    assert_eq!(c.istio_version.as_deref(), Some("1.28.0"));
}

#[test]
fn header_families() {
    let c = load(&[
        ("XDS_HEADER_X_FOO", "foo"),
        ("XDS_HEADER_Authorization-Extra", "Bearer s3cret"),
        ("CA_HEADER_X-BAZ", "baz"),
    ])
    .unwrap();
    let xds: Vec<_> = c.xds.headers.iter().collect();
    assert_eq!(
        xds,
        vec![("authorization-extra", "Bearer s3cret"), ("x_foo", "foo")]
    );
    let ca: Vec<_> = c.ca.headers.iter().collect();
    assert_eq!(ca, vec![("x-baz", "baz")]);
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["xds"]["headers"]["authorization-extra"], "<redacted>");
    assert!(!json.to_string().contains("s3cret"));
    assert!(!format!("{c:?}").contains("s3cret"));

    for (name, value, expected) in [
        ("XDS_HEADER_BAD NAME", "v", "a header name after the prefix"),
        ("CA_HEADER_DATA-BIN", "v", "a header name after the prefix"),
        (
            "XDS_HEADER_X",
            "line\nbreak",
            "a header value of visible ASCII characters",
        ),
        (
            "CA_HEADER_X",
            "héllo",
            "a header value of visible ASCII characters",
        ),
    ] {
        let msg = load(&[(name, value)]).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!(
                "{name}=<redacted> is not valid: expected {expected}"
            )),
            "{msg}"
        );
    }
}

#[test]
fn startup_print_is_camel_case_json() {
    let c = load(&[
        (vars::SECRET_TTL, "12h"),
        (vars::POD_NAME, "z"),
        (vars::POD_NAMESPACE, "ns"),
        (vars::SERVICE_ACCOUNT, "sa"),
        (vars::LOCAL_XDS, "workloads: []"),
    ])
    .unwrap();
    let pretty = serde_json::to_string_pretty(&c).unwrap();
    let v: serde_json::Value = serde_json::from_str(&pretty).unwrap();
    assert_eq!(v["proxyMode"], "shared");
    assert_eq!(v["secretTtl"], "12h");
    assert_eq!(v["terminationDeadline"], "5s");
    assert_eq!(v["poolUnusedReleaseTimeout"], "5m");
    assert_eq!(v["socket"]["keepaliveTime"], "3m");
    assert_eq!(v["adminAddr"], "localhost:15000");
    assert_eq!(v["statsAddr"], "[::]:15020");
    assert_eq!(v["http2"]["frameSize"], 1_048_576);
    assert_eq!(v["logFormat"], "plain");
    assert_eq!(v["selfWorkload"]["serviceAccount"], "sa");
    assert_eq!(v["localXds"], "inline YAML (13 bytes)");
    assert_eq!(v["auth"], serde_json::Value::Null);
    assert!(v.get("warnings").is_none());
}

/// Every `pub const` name in `vars.rs` is in `Config::env_names()` (and vice versa), so the
/// list the Helm chart test checks against cannot drift from the code.
#[test]
fn env_names_lists_every_constant() {
    let source = include_str!("../src/config/vars.rs");
    let mut declared: Vec<&str> = source
        .lines()
        .filter_map(|l| l.strip_prefix("pub const "))
        .filter(|l| l.contains(": &str = \""))
        .map(|l| l.split('"').nth(1).unwrap())
        .filter(|name| !name.ends_with('_'))
        .collect();
    declared.sort_unstable();
    let mut listed = Config::env_names().to_vec();
    listed.sort_unstable();
    assert_eq!(declared, listed);
    assert!(declared.len() > 60, "{}", declared.len());
    let mut dedup = listed.clone();
    dedup.dedup();
    assert_eq!(dedup, listed, "duplicates in env_names()");
    assert_eq!(
        Config::env_prefixes(),
        &[
            "ISTIO_META_",
            "ISTIO_METAJSON_",
            "XDS_HEADER_",
            "CA_HEADER_"
        ]
    );
    // Every name in the contract's table is present.
    for name in [
        "PROXY_MODE",
        "PROXY_WORKLOAD_INFO",
        "INPOD_UDS",
        "INPOD_PORT_REUSE",
        "INPOD_ENABLED",
        "PACKET_MARK",
        "ENABLE_ORIG_SRC",
        "ENABLE_PROXY",
        "XDS_ADDRESS",
        "CA_ADDRESS",
        "XDS_ROOT_CA",
        "CA_ROOT_CA",
        "ALT_XDS_HOSTNAME",
        "ALT_CA_HOSTNAME",
        "AUTH_TOKEN",
        "ISTIO_META_CLUSTER_ID",
        "CLUSTER_ID",
        "CLUSTER_DOMAIN",
        "NETWORK",
        "TRUST_DOMAIN",
        "POD_NAME",
        "POD_NAMESPACE",
        "SERVICE_ACCOUNT",
        "NODE_NAME",
        "INSTANCE_IP",
        "SECRET_TTL",
        "FAKE_CA",
        "LOCAL_XDS_PATH",
        "LOCAL_XDS",
        "XDS_ON_DEMAND",
        "PREFERED_SERVICE_NAMESPACE",
        "ZTUNNEL_WORKER_THREADS",
        "ZTUNNEL_CPU_LIMIT",
        "ZTUNNEL_RESOURCE_CPU_LIMIT",
        "ZTUNNEL_RESOURCE_CPU_REQUEST",
        "POOL_MAX_STREAMS_PER_CONNECTION",
        "POOL_UNUSED_RELEASE_TIMEOUT",
        "HTTP2_STREAM_WINDOW_SIZE",
        "HTTP2_CONNECTION_WINDOW_SIZE",
        "HTTP2_FRAME_SIZE",
        "CONNECTION_TERMINATION_DEADLINE",
        "TERMINATION_GRACE_PERIOD_SECONDS",
        "KEEPALIVE_TIME",
        "KEEPALIVE_INTERVAL",
        "KEEPALIVE_RETRIES",
        "KEEPALIVE_ENABLED",
        "USER_TIMEOUT_ENABLED",
        "IPV6_ENABLED",
        "ISTIO_META_DNS_CAPTURE",
        "ISTIO_META_DNS_PROXY_ADDR",
        "UNSTABLE_ENABLE_SOCKS5",
        "LOCALHOST_APP_TUNNEL",
        "ENABLE_RESPONSE_BAGGAGE",
        "CRL_PATH",
        "TLS12_ENABLED",
        "COMPLIANCE_POLICY",
        "AUTHZ_POLICY_INFO_LOGGING",
        "LOG_FORMAT",
        "RUST_LOG",
        "RUST_BACKTRACE",
        "PROXY_CONFIG",
        "ISTIO_META_ISTIO_VERSION",
        "KUBERNETES_SERVICE_HOST",
    ] {
        assert!(Config::env_names().contains(&name), "{name}");
    }
}

#[test]
fn process_env_loads() {
    // Whatever the test runner's environment holds, reading it must not panic; a CI machine
    // normally has none of the variables set, so it succeeds.
    if std::env::vars().all(|(k, _)| !Config::env_names().contains(&k.as_str())) {
        Config::from_process_env().unwrap();
    }
}

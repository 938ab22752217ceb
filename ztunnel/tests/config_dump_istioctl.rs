//! `/config_dump` must parse as `istioctl ztunnel-config` parses Istio's ztunnel dump.
//!
//! The structs below mirror istioctl's Go `configdump` types for ztunnel (field names as its
//! JSON tags spell them, the same Go types; unknown keys ignored, missing ones zero, as Go's
//! `encoding/json` does). The dump comes from the real admin server over a socket, built from
//! a real state (xDS protos), a real certificate manager and a static config.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hbone::Identity;
use hbone::cert::BoxFuture;
use identity::CaClientError;
use identity::manager::{CertManager, CertificateProvider};
use mesh_testing::TestCa;
use meshcore::drain;
use meshcore::telemetry::{LogFormat, build_tracing};
use proto::istio::security as sec;
use proto::istio::workload as pb;
use serde::Deserialize;
use state::MeshState;
use ztunnel::admin::{self, AdminState, DumpSources};

mod admin_support;
use ztunnel::config::{Config, LocalXds};
use ztunnel::inpod::WorkloadStateView;

// ---- istioctl's types (istioctl/pkg/util/configdump for ztunnel), as Go decodes them ----

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ZtunnelDump {
    workloads: Vec<ZtunnelWorkload>,
    services: Vec<ZtunnelService>,
    policies: Vec<ZtunnelPolicy>,
    certificates: Vec<CertsDump>,
    #[serde(rename = "workloadState")]
    workload_state: HashMap<String, WorkloadState>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Locality {
    region: String,
    zone: String,
    subzone: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ZtunnelWorkload {
    uid: String,
    #[serde(rename = "workloadIps")]
    workload_ips: Vec<String>,
    waypoint: Option<GatewayAddress>,
    #[serde(rename = "networkGateway")]
    network_gateway: Option<GatewayAddress>,
    protocol: String,
    name: String,
    namespace: String,
    #[serde(rename = "serviceAccount")]
    service_account: String,
    #[serde(rename = "workloadName")]
    workload_name: String,
    #[serde(rename = "workloadType")]
    workload_type: String,
    #[serde(rename = "canonicalName")]
    canonical_name: String,
    #[serde(rename = "canonicalRevision")]
    canonical_revision: String,
    #[serde(rename = "clusterId")]
    cluster_id: String,
    #[serde(rename = "trustDomain")]
    trust_domain: String,
    locality: Locality,
    node: String,
    network: String,
    status: String,
    hostname: String,
    capacity: u32,
    #[serde(rename = "applicationTunnel")]
    application_tunnel: ApplicationTunnel,
    #[serde(rename = "authorizationPolicies")]
    authorization_policies: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ApplicationTunnel {
    protocol: String,
    port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GatewayAddress {
    destination: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LoadBalancer {
    mode: String,
    #[serde(rename = "routingPreferences")]
    routing_preferences: Vec<String>,
    #[serde(rename = "healthPolicy")]
    health_policy: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ZtunnelEndpoint {
    #[serde(rename = "workloadUid")]
    workload_uid: String,
    service: String,
    address: String,
    port: HashMap<u16, u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ZtunnelService {
    name: String,
    namespace: String,
    hostname: String,
    #[serde(rename = "vips")]
    addresses: Vec<String>,
    ports: HashMap<String, i64>,
    #[serde(rename = "loadBalancer")]
    load_balancer: Option<LoadBalancer>,
    waypoint: Option<GatewayAddress>,
    endpoints: HashMap<String, Option<ZtunnelEndpoint>>,
    #[serde(rename = "subjectAltNames")]
    subject_alt_names: Vec<String>,
    #[serde(rename = "ipFamilies")]
    ip_families: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PolicyMatch {
    namespaces: Vec<StringMatch>,
    #[serde(rename = "notNamespaces")]
    not_namespaces: Vec<StringMatch>,
    principals: Vec<StringMatch>,
    #[serde(rename = "notPrincipals")]
    not_principals: Vec<StringMatch>,
    #[serde(rename = "sourceIps")]
    source_ips: Vec<String>,
    #[serde(rename = "notSourceIps")]
    not_source_ips: Vec<String>,
    #[serde(rename = "destinationIps")]
    destination_ips: Vec<String>,
    #[serde(rename = "notDestinationIps")]
    not_destination_ips: Vec<String>,
    #[serde(rename = "destinationPorts")]
    destination_ports: Vec<u16>,
    #[serde(rename = "notDestinationPorts")]
    not_destination_ports: Vec<u16>,
    #[serde(rename = "serviceAccounts")]
    service_accounts: Vec<ServiceAccountMatch>,
    #[serde(rename = "notServiceAccounts")]
    not_service_accounts: Vec<ServiceAccountMatch>,
}

/// Go: `Exact, Suffix, Prefix string; Presence any`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StringMatch {
    #[serde(rename = "Exact")]
    exact: String,
    #[serde(rename = "Suffix")]
    suffix: String,
    #[serde(rename = "Prefix")]
    prefix: String,
    #[serde(rename = "Presence")]
    presence: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ServiceAccountMatch {
    namespace: String,
    #[serde(rename = "serviceAccount")]
    service_account: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ZtunnelPolicy {
    name: String,
    namespace: String,
    scope: String,
    action: String,
    rules: Vec<Vec<Vec<Option<PolicyMatch>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CertsDump {
    identity: String,
    state: String,
    #[serde(rename = "certChain")]
    cert_chain: Vec<Option<Cert>>,
    #[serde(rename = "rootCerts")]
    root_cert: Vec<Option<Cert>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Cert {
    pem: String,
    #[serde(rename = "serialNumber")]
    serial_number: String,
    #[serde(rename = "validFrom")]
    valid_from: String,
    #[serde(rename = "expirationTime")]
    expiration_time: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WorkloadState {
    state: String,
    connections: WorkloadConnections,
    info: WorkloadInfo,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WorkloadConnections {
    inbound: Vec<Connection>,
    outbound: Vec<Connection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WorkloadInfo {
    name: String,
    namespace: String,
    #[serde(rename = "trustDomain")]
    trust_domain: String,
    #[serde(rename = "serviceAccount")]
    service_account: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Connection {
    src: String,
    #[serde(rename = "originalDst")]
    original_dst: String,
    #[serde(rename = "actualDst")]
    actual_dst: String,
    protocol: String,
}

// ---- the mesh ----

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const BROKEN: &str = "spiffe://cluster.local/ns/default/sa/broken";
const SLEEP_UID: &str = "Kubernetes//Pod/default/sleep-1";
const ORPHAN_UID: &str = "Kubernetes//Pod/default/orphan-1";
const HTTPBIN: &str = "default/httpbin.default.svc.cluster.local";
const LATER: &str = "default/later.default.svc.cluster.local";

fn ip_bytes(s: &str) -> Vec<u8> {
    match s.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn ports(list: &[(u32, u32)]) -> pb::PortList {
    pb::PortList {
        ports: list
            .iter()
            .map(|(s, t)| pb::Port {
                service_port: *s,
                target_port: *t,
                ..Default::default()
            })
            .collect(),
    }
}

fn string_match(m: sec::string_match::MatchType) -> sec::StringMatch {
    sec::StringMatch {
        match_type: Some(m),
    }
}

fn mesh() -> Arc<MeshState> {
    let state = Arc::new(MeshState::default());
    let sleep = pb::Workload {
        uid: SLEEP_UID.into(),
        name: "sleep-1".into(),
        namespace: "default".into(),
        addresses: vec![ip_bytes("10.0.0.5"), ip_bytes("fd00::5")],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        trust_domain: "cluster.local".into(),
        service_account: "sleep".into(),
        node: "node-a".into(),
        workload_name: "sleep".into(),
        canonical_name: "sleep".into(),
        canonical_revision: "v1".into(),
        waypoint: Some(pb::GatewayAddress {
            destination: Some(pb::gateway_address::Destination::Hostname(
                pb::NamespacedHostname {
                    namespace: "default".into(),
                    hostname: "waypoint.default.svc.cluster.local".into(),
                },
            )),
            hbone_mtls_port: 15008,
        }),
        locality: Some(pb::Locality {
            region: "r1".into(),
            zone: "z1".into(),
            subzone: String::new(),
        }),
        authorization_policies: vec!["default/allow-sleep".into()],
        services: [(HTTPBIN.to_string(), ports(&[(8000, 80)]))].into(),
        ..Default::default()
    };
    // Names a service the state does not hold: Istio shows it under `stagedServices`.
    let orphan = pb::Workload {
        uid: ORPHAN_UID.into(),
        name: "orphan-1".into(),
        namespace: "default".into(),
        addresses: vec![ip_bytes("10.0.0.6")],
        status: pb::WorkloadStatus::Unhealthy as i32,
        services: [(LATER.to_string(), ports(&[(90, 9090)]))].into(),
        ..Default::default()
    };
    let httpbin = pb::Service {
        name: "httpbin".into(),
        namespace: "default".into(),
        hostname: "httpbin.default.svc.cluster.local".into(),
        addresses: vec![pb::NetworkAddress {
            network: String::new(),
            address: ip_bytes("10.96.0.10"),
            length: None,
        }],
        ports: ports(&[(8000, 80)]).ports,
        subject_alt_names: vec!["spiffe://cluster.local/ns/default/sa/httpbin".into()],
        load_balancing: Some(pb::LoadBalancing {
            routing_preference: vec![pb::load_balancing::Scope::Region as i32],
            mode: pb::load_balancing::Mode::Failover as i32,
            ..Default::default()
        }),
        ip_families: pb::IpFamilies::Dual as i32,
        ..Default::default()
    };
    for (name, address) in [
        (SLEEP_UID.to_string(), pb::address::Type::Workload(sleep)),
        (ORPHAN_UID.to_string(), pb::address::Type::Workload(orphan)),
        (HTTPBIN.to_string(), pb::address::Type::Service(httpbin)),
    ] {
        state
            .upsert_address(
                &name,
                pb::Address {
                    r#type: Some(address),
                },
            )
            .unwrap();
    }

    use sec::string_match::MatchType;
    // What the control plane sends for a STRICT PeerAuthentication.
    let strict = sec::Authorization {
        name: "istio_converted_static_strict".into(),
        namespace: "istio-system".into(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: sec::Action::Deny as i32,
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause {
                matches: vec![sec::Match {
                    not_principals: vec![string_match(MatchType::Presence(()))],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    let allow = sec::Authorization {
        name: "allow-sleep".into(),
        namespace: "default".into(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: sec::Action::Allow as i32,
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause {
                matches: vec![sec::Match {
                    principals: vec![
                        string_match(MatchType::Exact("cluster.local/ns/default/sa/ui".into())),
                        string_match(MatchType::Suffix("/sa/admin".into())),
                    ],
                    namespaces: vec![string_match(MatchType::Prefix("team-".into()))],
                    source_ips: vec![sec::Address {
                        address: ip_bytes("10.1.0.0"),
                        length: 16,
                    }],
                    destination_ports: vec![80],
                    service_accounts: vec![sec::ServiceAccountMatch {
                        namespace: "default".into(),
                        service_account: "ui".into(),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    state
        .upsert_policy("istio-system/istio_converted_static_strict", strict)
        .unwrap();
    state.upsert_policy("default/allow-sleep", allow).unwrap();
    state
}

/// Certificates from a test CA for `SLEEP`; an unreachable CA for everyone else.
struct Ca(TestCa);

impl CertificateProvider for Ca {
    fn fetch<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> BoxFuture<'a, Result<hbone::WorkloadCertificate, CaClientError>> {
        Box::pin(async move {
            if identity.to_string() == SLEEP {
                Ok(self.0.issue(SLEEP).workload_cert())
            } else {
                Err(CaClientError::Unreachable {
                    address: "istiod.istio-system.svc:15012".into(),
                    reason: "connection refused".into(),
                })
            }
        })
    }
}

const STATIC_YAML: &str = "\
workloads:
- uid: static-1
  name: local
  namespace: default
  workloadIps: [\"127.0.0.2\"]
  serviceAccount: local
  trustDomain: cluster.local
  services:
    default/local.default.svc.cluster.local: {80: 8080}
policies:
- name: strict
  namespace: default
  scope: Namespace
  action: Deny
  dryRun: false
  rules:
  - - - notPrincipals: [!Presence []]
";

fn config() -> Config {
    admin_support::config(&[("ISTIO_META_ISTIO_VERSION", "1.28.0")])
}

/// The body of a `GET` that must answer 200.
async fn get(addr: SocketAddr, target: &str) -> String {
    let (status, head, body) = admin_support::send_raw(addr, "GET", target, &[]).await;
    assert_eq!(status, 200, "{head}");
    String::from_utf8(body).expect("a text body")
}

/// The dump as served on the admin port.
async fn served_dump() -> String {
    let certs = CertManager::new(Arc::new(Ca(TestCa::new("golden-ca"))));
    certs
        .certificate(&Identity::parse(SLEEP).unwrap())
        .await
        .unwrap();
    let err = certs
        .certificate(&Identity::parse(BROKEN).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("connection refused"), "{err}");
    let sources = DumpSources {
        state: mesh(),
        certs,
        xds: None,
        workload_state: Some(WorkloadStateView::default()),
        local_xds: Some(LocalXds::Inline(STATIC_YAML.into())),
    };
    let (trigger, watch) = drain::channel();
    let (_dispatch, log) = build_tracing(LogFormat::Plain, "info", std::io::sink).unwrap();
    let server = admin::start_admin(
        AdminState {
            config: Arc::new(config()),
            config_dump: sources.into_provider(),
            log,
            drain: trigger.clone(),
        },
        watch,
    )
    .await
    .unwrap();
    let body = get(server.local_addrs()[0], "/config_dump").await;
    trigger.start_drain(Duration::ZERO);
    server.wait().await;
    body
}

/// Like Go's `time.Parse(time.RFC3339, s)` for the `Z` form we write; seconds since the epoch.
fn rfc3339(s: &str) -> i64 {
    let b = s.as_bytes();
    assert!(
        b.len() == 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[19] == b'Z',
        "{s:?} is not RFC 3339"
    );
    let n = |r: std::ops::Range<usize>| -> i64 { s[r].parse().unwrap() };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}

#[tokio::test]
async fn config_dump_parses_as_istioctl_parses_it() {
    let body = served_dump().await;
    let dump: ZtunnelDump = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("istioctl could not parse the dump: {e}\n{body}"));

    // Workloads.
    assert_eq!(dump.workloads.len(), 2);
    let sleep = dump.workloads.iter().find(|w| w.uid == SLEEP_UID).unwrap();
    assert_eq!(sleep.workload_ips, ["10.0.0.5", "fd00::5"]);
    assert_eq!(sleep.name, "sleep-1");
    assert_eq!(sleep.namespace, "default");
    assert_eq!(sleep.service_account, "sleep");
    assert_eq!(sleep.trust_domain, "cluster.local");
    assert_eq!(sleep.protocol, "HBONE");
    assert_eq!(sleep.node, "node-a");
    assert_eq!(sleep.cluster_id, "Kubernetes");
    assert_eq!(sleep.status, "Healthy");
    assert_eq!(sleep.workload_name, "sleep");
    assert_eq!(sleep.workload_type, "deployment");
    assert_eq!(
        (
            sleep.canonical_name.as_str(),
            sleep.canonical_revision.as_str()
        ),
        ("sleep", "v1")
    );
    assert_eq!(
        sleep.waypoint.as_ref().unwrap().destination,
        "default/waypoint.default.svc.cluster.local"
    );
    assert!(sleep.network_gateway.is_none());
    assert_eq!(
        (sleep.locality.region.as_str(), sleep.locality.zone.as_str()),
        ("r1", "z1")
    );
    assert_eq!(sleep.locality.subzone, "");
    assert_eq!(sleep.capacity, 1);
    assert_eq!(sleep.authorization_policies, ["default/allow-sleep"]);
    assert_eq!(sleep.network, "");
    assert_eq!(sleep.hostname, "");
    assert_eq!(sleep.application_tunnel.protocol, "");
    assert_eq!(sleep.application_tunnel.port, None);
    let orphan = dump.workloads.iter().find(|w| w.uid == ORPHAN_UID).unwrap();
    assert_eq!(orphan.protocol, "TCP");
    assert_eq!(orphan.status, "Unhealthy");
    assert_eq!(orphan.service_account, "default");

    // Services.
    assert_eq!(dump.services.len(), 1);
    let httpbin = &dump.services[0];
    assert_eq!(
        (httpbin.name.as_str(), httpbin.namespace.as_str()),
        ("httpbin", "default")
    );
    assert_eq!(httpbin.hostname, "httpbin.default.svc.cluster.local");
    assert_eq!(httpbin.addresses, ["/10.96.0.10"]);
    assert_eq!(httpbin.ports, HashMap::from([("8000".to_string(), 80)]));
    assert_eq!(httpbin.ip_families, "Dual");
    assert_eq!(
        httpbin.subject_alt_names,
        ["spiffe://cluster.local/ns/default/sa/httpbin"]
    );
    assert!(httpbin.waypoint.is_none());
    let lb = httpbin.load_balancer.as_ref().unwrap();
    assert_eq!(lb.mode, "Failover");
    assert_eq!(lb.routing_preferences, ["Region"]);
    assert_eq!(lb.health_policy, "OnlyHealthy");
    let ep = httpbin.endpoints[SLEEP_UID].as_ref().unwrap();
    assert_eq!(ep.workload_uid, SLEEP_UID);
    assert_eq!(ep.service, HTTPBIN);
    assert_eq!(ep.port, HashMap::from([(8000, 80)]));
    assert_eq!(ep.address, "");

    // Policies: the converted STRICT policy carries `{"Presence": []}`.
    assert_eq!(dump.policies.len(), 2);
    let strict = dump
        .policies
        .iter()
        .find(|p| p.name == "istio_converted_static_strict")
        .unwrap();
    assert_eq!(
        (
            strict.namespace.as_str(),
            strict.scope.as_str(),
            strict.action.as_str()
        ),
        ("istio-system", "WorkloadSelector", "Deny")
    );
    let m = strict.rules[0][0][0].as_ref().unwrap();
    assert_eq!(m.not_principals.len(), 1);
    assert_eq!(m.not_principals[0].presence, Some(serde_json::json!([])));
    assert_eq!(m.not_principals[0].exact, "");
    let allow = dump
        .policies
        .iter()
        .find(|p| p.name == "allow-sleep")
        .unwrap();
    assert_eq!(allow.action, "Allow");
    let m = allow.rules[0][0][0].as_ref().unwrap();
    assert_eq!(m.principals[0].exact, "cluster.local/ns/default/sa/ui");
    assert_eq!(m.principals[1].suffix, "/sa/admin");
    assert!(m.principals.iter().all(|p| p.presence.is_none()));
    assert_eq!(m.namespaces[0].prefix, "team-");
    assert_eq!(m.source_ips, ["10.1.0.0/16"]);
    assert_eq!(m.destination_ports, [80]);
    assert_eq!(m.service_accounts[0].namespace, "default");
    assert_eq!(m.service_accounts[0].service_account, "ui");
    assert!(m.not_namespaces.is_empty() && m.not_principals.is_empty());
    assert!(m.not_source_ips.is_empty() && m.destination_ips.is_empty());
    assert!(m.not_destination_ips.is_empty() && m.not_destination_ports.is_empty());
    assert!(m.not_service_accounts.is_empty());

    // Certificates, sorted by identity.
    let ids: Vec<&str> = dump
        .certificates
        .iter()
        .map(|c| c.identity.as_str())
        .collect();
    assert_eq!(ids, [BROKEN, SLEEP]);
    let broken = &dump.certificates[0];
    assert!(
        broken.state.starts_with("Unavailable: ") && broken.state.contains("connection refused"),
        "{}",
        broken.state
    );
    assert!(broken.cert_chain.is_empty() && broken.root_cert.is_empty());
    let available = &dump.certificates[1];
    assert_eq!(available.state, "Available");
    assert_eq!(available.cert_chain.len(), 1, "the leaf (no intermediates)");
    assert_eq!(available.root_cert.len(), 1);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for cert in available.cert_chain.iter().chain(&available.root_cert) {
        let cert = cert.as_ref().unwrap();
        // istioctl: `big.Int.SetString(serialNumber, 10)`, `time.Parse(time.RFC3339, …)`.
        assert!(
            !cert.serial_number.is_empty()
                && cert.serial_number.bytes().all(|b| b.is_ascii_digit()),
            "{cert:?}"
        );
        assert!(rfc3339(&cert.valid_from) < now && now < rfc3339(&cert.expiration_time));
        // base64 of "-----BEGIN CERTIFICATE-----".
        assert!(
            cert.pem.starts_with("LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t"),
            "{cert:?}"
        );
    }

    // No pod proxies here; the map parses.
    assert!(dump.workload_state.is_empty());
}

#[tokio::test]
async fn config_dump_keeps_istios_other_keys_and_ours() {
    let body = served_dump().await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    for key in [
        "workloads",
        "services",
        "policies",
        "stagedServices",
        "staticConfig",
        "certificates",
        "workloadState",
        "config",
        "version",
    ] {
        assert!(v.get(key).is_some(), "{key} missing: {body}");
    }
    let sleep = v["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["uid"] == SLEEP_UID)
        .unwrap();
    assert_eq!(sleep["networkMode"], "Standard");
    assert_eq!(sleep["services"], serde_json::json!([HTTPBIN]));
    assert!(sleep.get("addresses").is_none() && sleep.get("identity").is_none());

    // The endpoint of a service the state does not hold yet.
    assert_eq!(
        v["stagedServices"],
        serde_json::json!({LATER: {ORPHAN_UID: {
            "workloadUid": ORPHAN_UID, "service": LATER, "port": {"90": 9090}, "status": "Unhealthy"
        }}})
    );
    assert_eq!(
        v["services"][0]["endpoints"][SLEEP_UID]["status"],
        "Healthy"
    );

    // The static config, in the same shapes.
    let st = &v["staticConfig"];
    assert!(st.get("error").is_none(), "{st}");
    assert_eq!(
        st["workloads"][0]["workloadIps"],
        serde_json::json!(["127.0.0.2"])
    );
    assert_eq!(st["workloads"][0]["serviceAccount"], "local");
    assert_eq!(
        st["workloads"][0]["services"]["default/local.default.svc.cluster.local"]["80"],
        8080
    );
    assert_eq!(
        st["policies"][0]["rules"][0][0][0]["notPrincipals"][0],
        serde_json::json!({"Presence": []})
    );
    assert_eq!(st["services"], serde_json::json!([]));

    // Our own details stay (istioctl ignores them): the hex serial CRLs take, retries.
    let sleep_cert = v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["identity"] == SLEEP)
        .unwrap();
    let hex = sleep_cert["serial"].as_str().unwrap();
    assert!(
        !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{hex}"
    );
    assert!(sleep_cert["refreshAt"].as_str().unwrap().ends_with('Z'));
    let broken = v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["identity"] == BROKEN)
        .unwrap();
    assert!(
        broken["lastError"]
            .as_str()
            .unwrap()
            .contains("connection refused")
    );
    assert_eq!(broken["consecutiveFailures"], 1);
    assert_eq!(v["version"]["istioVersion"], "1.28.0");
}

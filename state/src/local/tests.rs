use super::*;
use crate::authz::{ConnectionInfo, authorize};
use crate::testutil::ip;

/// The example of ztunnel-contract.md §4, verbatim.
const CONTRACT_EXAMPLE: &str = r#"
workloads:
- uid: Kubernetes//Pod/shop/cart-0
  name: cart-0
  namespace: shop
  serviceAccount: cart
  trustDomain: cluster.local
  workloadIps: ["10.20.0.11"]
  protocol: HBONE
  node: node-a
  canonicalName: cart
  workloadName: cart
  workloadType: deployment
  services:
    "shop/cart.shop.svc.cluster.local": {8080: 9090}
- uid: Kubernetes//Pod/shop/ui-0
  name: ui-0
  namespace: shop
  serviceAccount: ui
  trustDomain: cluster.local
  workloadIps: ["10.20.0.12"]
  protocol: HBONE
  node: node-b
  services: {}
services:
- name: cart
  namespace: shop
  hostname: cart.shop.svc.cluster.local
  vips: ["/10.96.5.5"]
  ports: {8080: 9090}
  canonical: true
policies:
- name: only-ui
  namespace: shop
  scope: Namespace
  action: Allow
  dryRun: false
  rules:
  - - - principals: [!Exact cluster.local/ns/shop/sa/ui]
    - - destinationPorts: [9090]
"#;

#[test]
fn contract_example_loads() {
    let state = MeshState::default();
    let r = load(&state, CONTRACT_EXAMPLE).unwrap();
    assert_eq!(r.to_string(), "2 workloads, 1 services, 1 policies");
    let v = state.read();
    let cart = v.workload_by_ip("", ip("10.20.0.11")).unwrap();
    assert_eq!(cart.uid, "Kubernetes//Pod/shop/cart-0");
    assert_eq!(cart.protocol, TunnelProtocol::Hbone);
    assert_eq!(cart.workload_type, WorkloadType::Deployment);
    assert_eq!(
        cart.identity.to_string(),
        "spiffe://cluster.local/ns/shop/sa/cart"
    );
    assert_eq!(
        cart.services["shop/cart.shop.svc.cluster.local"][&8080],
        9090
    );
    let svc = v.service_by_vip("", ip("10.96.5.5"), "shop").unwrap();
    assert!(svc.canonical);
    assert_eq!(svc.ports[&8080], 9090);
    assert_eq!(v.endpoints(&svc.key()).len(), 1);
    let pol = v.policy("shop/only-ui").unwrap();
    assert_eq!(pol.rules.len(), 1);
    assert_eq!(pol.rules[0].len(), 2, "two clauses");
    assert_eq!(
        pol.rules[0][0][0].principals,
        vec![StringMatch::Exact("cluster.local/ns/shop/sa/ui".into())]
    );
    assert_eq!(pol.rules[0][1][0].destination_ports, vec![9090]);
    drop(v);

    // The policy does what it says: ui on 9090 allowed, anyone else or another port denied.
    let check = |who: &str, port: u16| {
        let c = ConnectionInfo {
            src_identity: Some(hbone::Identity::new("cluster.local", "shop", who)),
            src_ip: ip("10.20.0.12"),
            dst_ip: ip("10.20.0.11"),
            dst_port: port,
            dst_workload: &cart,
        };
        authorize(&state, &c).decision.is_allowed()
    };
    assert!(check("ui", 9090));
    assert!(!check("ui", 8080));
    assert!(!check("other", 9090));
}

#[test]
fn every_field() {
    let yaml = r#"
workloads:
- workloadIps: ["10.0.0.5", "fd00::5"]
  namespace: shop
  name: full
  services: {"shop/a.shop.svc.cluster.local": {80: 0}}
  serviceAccount: sa
  trustDomain: td.example
  network: net1
  node: n1
  hostname: full.example
  clusterId: c1
  protocol: TCP
  networkMode: HostNetwork
  status: Unhealthy
  workloadName: full
  workloadType: cronjob
  canonicalName: full
  canonicalRevision: v2
  waypoint: {destination: "shop/wp.shop.svc.cluster.local", hboneMtlsPort: 15008}
  networkGateway: {destination: "net1/172.16.0.1", hboneMtlsPort: 15009}
  nativeTunnel: true
  applicationTunnel: {protocol: PROXY, port: 15088}
  authorizationPolicies: ["shop/sel"]
  locality: {region: r, zone: z, subzone: s}
  capacity: 3
services:
- name: a
  namespace: shop
  hostname: a.shop.svc.cluster.local
  vips: ["net1/10.96.0.1", "/fd00::a"]
  ports: {80: 0, 443: 8443}
  cidrVips: [{network: net1, cidr: "10.97.0.0/16"}]
  subjectAltNames: ["spiffe://td.example/ns/shop/sa/a"]
  waypoint: {destination: "/10.96.9.9", hboneMtlsPort: 15008}
  weightedWaypoints: [{destination: {destination: "shop/wp", hboneMtlsPort: 15008}, weight: 2}]
  loadBalancer: {routingPreferences: [Network, Region, Zone, Subzone, Node, Cluster], mode: Failover, healthPolicy: AllowAll}
  ipFamilies: IPv6
  canonical: false
  visibility: Namespace
policies:
- name: sel
  namespace: shop
  scope: WorkloadSelector
  action: Deny
  dryRun: true
  rules:
  - - - namespaces: [!Prefix sh]
        notNamespaces: [!Suffix op]
        principals: [!Presence []]
        notPrincipals: [!Exact x]
        serviceAccounts: [{namespace: shop, serviceAccount: a}]
        notServiceAccounts: [{namespace: shop, serviceAccount: b}]
        sourceIps: ["10.0.0.0/8"]
        notSourceIps: ["10.1.0.0/16"]
        destinationIps: ["fd00::/8"]
        notDestinationIps: ["fd00::1/128"]
        destinationPorts: [1, 2]
        notDestinationPorts: [3]
"#;
    let r = LocalConfig::parse(yaml).unwrap().into_resources().unwrap();
    let w = &r.workloads[0];
    assert_eq!(
        w.uid, "c1//Pod/shop/full",
        "uid derived from clusterId/namespace/name"
    );
    assert_eq!(w.identity.to_string(), "spiffe://td.example/ns/shop/sa/sa");
    assert_eq!(w.network_mode, NetworkMode::HostNetwork);
    assert_eq!(w.status, HealthStatus::Unhealthy);
    assert_eq!(w.workload_type, WorkloadType::Cronjob);
    assert_eq!(
        w.waypoint.as_ref().unwrap().destination.to_string(),
        "shop/wp.shop.svc.cluster.local"
    );
    assert!(matches!(
        w.network_gateway.as_ref().unwrap().destination,
        GatewayDestination::Address(_)
    ));
    assert_eq!(w.application_tunnel.unwrap().port, Some(15088));
    assert_eq!(w.locality.subzone, "s");
    assert_eq!(w.capacity, 3);
    let s = &r.services[0];
    assert_eq!(s.vips[1].to_string(), "/fd00::a");
    assert_eq!(s.cidr_vips[0].cidr.to_string(), "10.97.0.0/16");
    assert!(matches!(
        s.waypoint.as_ref().unwrap().destination,
        GatewayDestination::Address(_)
    ));
    assert_eq!(
        s.load_balancer.as_ref().unwrap().routing_preferences.len(),
        6
    );
    assert_eq!(s.ip_families, Some(IpFamilies::IPv6));
    assert_eq!(s.visibility, Visibility::Namespace);
    let p = &r.policies[0];
    assert!(p.dry_run);
    let m = &p.rules[0][0][0];
    assert_eq!(m.principals, vec![StringMatch::Presence]);
    assert_eq!(m.namespaces, vec![StringMatch::Prefix("sh".into())]);
    assert_eq!(m.not_destination_ips[0].prefix(), 128);
    assert_eq!(m.destination_ports, vec![1, 2]);

    // The dump of what was loaded uses the same enum names as the input.
    let state = MeshState::default();
    load(&state, yaml).unwrap();
    let dump = state.config_dump();
    assert_eq!(dump["workloads"][0]["networkMode"], "HostNetwork");
    assert_eq!(dump["workloads"][0]["workloadType"], "cronjob");
    assert_eq!(dump["services"][0]["loadBalancer"]["mode"], "Failover");
    assert_eq!(
        dump["policies"][0]["rules"][0][0][0]["principals"][0],
        serde_json::json!({"Presence": []})
    );
    assert_eq!(
        dump["policies"][0]["rules"][0][0][0]["namespaces"][0],
        serde_json::json!({"Prefix": "sh"})
    );
}

fn err(yaml: &str) -> String {
    LocalConfig::parse(yaml)
        .and_then(LocalConfig::into_resources)
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

const POLICY_HEAD: &str =
    "policies:\n- name: p\n  namespace: ns\n  scope: Global\n  action: Deny\n";

#[test]
fn rejections() {
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown top-level key",
            "workloads: []\nextra: 1\n".into(),
            vec!["unknown field `extra`", "line 2"],
        ),
        (
            "unknown workload key",
            "workloads:\n- workloadIps: []\n  namespace: a\n  services: {}\n  podName: x\n".into(),
            vec!["workloads[0]", "unknown field `podName`", "line 5"],
        ),
        (
            "map-form StringMatch",
            format!("{POLICY_HEAD}  dryRun: false\n  rules:\n  - - - principals: [{{Exact: x}}]\n"),
            vec!["single-key map form is not accepted", "policies[0].rules[0][0][0].principals", "line 8"],
        ),
        (
            "unknown tag",
            format!("{POLICY_HEAD}  dryRun: false\n  rules:\n  - - - principals: [!Regex x]\n"),
            vec!["unknown StringMatch tag !Regex"],
        ),
        (
            "missing dryRun",
            format!("{POLICY_HEAD}  rules: []\n"),
            vec!["missing field `dryRun`"],
        ),
        (
            "missing services on a workload",
            "workloads:\n- workloadIps: [\"10.0.0.1\"]\n  namespace: a\n".into(),
            vec!["missing field `services`"],
        ),
        (
            "bad VIP address",
            "services:\n- {name: a, namespace: b, hostname: c, vips: [\"10.96.0.1\"], ports: {}}\n".into(),
            vec!["services[0].vips", "<network>/<ip>"],
        ),
        (
            "bad workload IP",
            "workloads:\n- workloadIps: [\"10.0.0.300\"]\n  namespace: a\n  services: {}\n".into(),
            vec!["workloads[0].workloadIps[0]"],
        ),
        (
            "case-sensitive enum",
            "workloads:\n- workloadIps: []\n  namespace: a\n  services: {}\n  protocol: hbone\n".into(),
            vec!["unknown variant `hbone`", "TCP", "HBONE"],
        ),
        (
            "upper-case workload type",
            "workloads:\n- workloadIps: []\n  namespace: a\n  services: {}\n  workloadType: Deployment\n".into(),
            vec!["unknown variant `Deployment`"],
        ),
        (
            "gateway needs both keys",
            "workloads:\n- workloadIps: []\n  namespace: a\n  services: {}\n  waypoint: {destination: \"a/b\"}\n".into(),
            vec!["missing field `hboneMtlsPort`"],
        ),
        (
            "locality needs all keys",
            "workloads:\n- workloadIps: []\n  namespace: a\n  services: {}\n  locality: {region: r}\n".into(),
            vec!["missing field `zone`"],
        ),
        (
            "CIDR without prefix",
            format!("{POLICY_HEAD}  dryRun: false\n  rules:\n  - - - sourceIps: [\"10.0.0.1\"]\n"),
            vec!["needs a prefix length"],
        ),
        (
            "CIDR prefix too long",
            format!("{POLICY_HEAD}  dryRun: false\n  rules:\n  - - - sourceIps: [\"10.0.0.0/40\"]\n"),
            vec!["prefix length 40"],
        ),
        (
            "port out of range",
            "services:\n- {name: a, namespace: b, hostname: c, vips: [], ports: {70000: 1}}\n".into(),
            vec!["services[0].ports"],
        ),
        (
            "bad identity",
            "workloads:\n- workloadIps: []\n  namespace: a\n  serviceAccount: \"x y\"\n  services: {}\n".into(),
            vec!["workloads[0]", "not a valid SPIFFE identity"],
        ),
        (
            "duplicate uid",
            "workloads:\n- {uid: u, workloadIps: [], namespace: a, services: {}}\n- {uid: u, workloadIps: [], namespace: a, services: {}}\n".into(),
            vec!["workloads[1]", "duplicate key \"u\""],
        ),
        (
            "bad service key in a workload",
            "workloads:\n- {workloadIps: [], namespace: a, services: {nohost: {}}}\n".into(),
            vec!["workloads[0]", "<namespace>/<hostname>"],
        ),
    ];
    for (name, yaml, wants) in cases {
        let msg = err(&yaml);
        for want in wants {
            assert!(msg.contains(want), "{name}: {want:?} not in {msg:?}");
        }
    }
}

#[test]
fn tags_parse_every_string_match_kind() {
    let yaml = format!(
        "{POLICY_HEAD}  dryRun: false\n  rules:\n  - - - principals: [!Exact a, !Prefix b, !Suffix c, !Presence []]\n"
    );
    let r = LocalConfig::parse(&yaml).unwrap().into_resources().unwrap();
    assert_eq!(
        r.policies[0].rules[0][0][0].principals,
        vec![
            StringMatch::Exact("a".into()),
            StringMatch::Prefix("b".into()),
            StringMatch::Suffix("c".into()),
            StringMatch::Presence,
        ]
    );
    // The model serializes with the same names: YAML tags here, single-key maps in JSON.
    assert_eq!(
        serde_yaml::to_string(&r.policies[0].rules[0][0][0].principals).unwrap(),
        "- !Exact a\n- !Prefix b\n- !Suffix c\n- !Presence []\n"
    );
}

#[test]
fn errors_leave_the_state_untouched_and_empty_config_is_fine() {
    let state = MeshState::default();
    let bad = format!("{CONTRACT_EXAMPLE}\nextra: true\n");
    assert!(load(&state, &bad).is_err());
    assert_eq!(state.read().workload_count(), 0);
    assert_eq!(
        load(&state, "{}").unwrap().to_string(),
        "0 workloads, 0 services, 0 policies"
    );
}

#[test]
fn uid_fallbacks() {
    let yaml = "workloads:\n- {workloadIps: [\"10.0.0.9\"], namespace: a, services: {}}\n- {workloadIps: [], namespace: a, services: {}}\n";
    let r = LocalConfig::parse(yaml).unwrap().into_resources().unwrap();
    assert_eq!(r.workloads[0].uid, "Kubernetes//static/a/10.0.0.9");
    assert_eq!(r.workloads[1].uid, "Kubernetes//static/a/1");
}

#[test]
fn load_file_reports_missing_files() {
    let state = MeshState::default();
    let e = load_file(&state, Path::new("/nonexistent/ztunnel-local.yaml")).unwrap_err();
    assert!(
        e.to_string().contains("/nonexistent/ztunnel-local.yaml"),
        "{e}"
    );
}

//! Test support: fixture loading and a readable, serializable view of a [`Snapshot`].
//!
//! prost types do not implement `Serialize`, so the view converts them into JSON values:
//! IPs as strings, enums by name, string matches as `exact:x` / `prefix:x` / `suffix:x` /
//! `presence`. Scalar fields are shown only when they differ from their default, except the
//! enums that matter on the wire (tunnel protocol, status, type, network mode, scope, action,
//! IP families), which are always shown.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use controlplane::Snapshot;
use controlplane::k8s::{Cluster, Loaded};
use controlplane::translate::{Diagnostic, TranslateOptions, translate_with_diagnostics};
use proto::istio::security::{self as sec, string_match::MatchType};
use proto::istio::workload::{self as wl, address};
use serde_json::{Map, Value, json};

/// `insta::assert_yaml_snapshot!` storing snapshots in `tests/snapshots/` (insta's default
/// would be next to the calling file, `tests/translate/snapshots/`).
macro_rules! assert_snapshot {
    ($($arg:tt)*) => {{
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path("../snapshots");
        settings.bind(|| insta::assert_yaml_snapshot!($($arg)*));
    }};
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/translate")
}

/// Loads `tests/fixtures/translate/<name>.yaml`, failing on any load error.
pub fn load(name: &str) -> Cluster {
    let path = fixtures_dir().join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let Loaded { cluster, report } = Cluster::from_yaml_str(&text);
    assert!(
        report.errors.is_empty(),
        "{name}: load errors: {:#?}",
        report.errors
    );
    cluster
}

/// Translates a fixture with default options.
pub fn translate(name: &str) -> (Snapshot, Vec<Diagnostic>) {
    translate_with(name, &TranslateOptions::default())
}

pub fn translate_with(name: &str, options: &TranslateOptions) -> (Snapshot, Vec<Diagnostic>) {
    translate_with_diagnostics(&load(name), options)
}

/// The view of a fixture's translation, with diagnostics, for `assert_yaml_snapshot!`.
pub fn view_of(name: &str) -> Value {
    let (snapshot, diags) = translate(name);
    with_diagnostics(view(&snapshot), &diags)
}

pub fn with_diagnostics(mut v: Value, diags: &[Diagnostic]) -> Value {
    if !diags.is_empty() {
        let d: Vec<Value> = diags
            .iter()
            .map(|d| json!(format!("{} {}: {}", d.kind, d.object, d.finding)))
            .collect();
        v["diagnostics"] = Value::Array(d);
    }
    v
}

/// The whole snapshot, split by resource kind, keyed by xDS resource name.
pub fn view(s: &Snapshot) -> Value {
    let mut workloads = Map::new();
    let mut services = Map::new();
    for (name, addr) in &s.addresses {
        match &addr.r#type {
            Some(address::Type::Workload(w)) => {
                workloads.insert(name.clone(), workload(w));
            }
            Some(address::Type::Service(svc)) => {
                services.insert(name.clone(), service(svc));
            }
            None => panic!("address {name} has no type"),
        }
    }
    let authorizations: Map<String, Value> = s
        .authorizations
        .iter()
        .map(|(k, a)| (k.clone(), authorization(a)))
        .collect();
    json!({
        "workloads": workloads,
        "services": services,
        "authorizations": authorizations,
    })
}

/// Inserts `v` unless it is the default (empty string/list/map, false, null).
fn put(m: &mut Map<String, Value>, k: &str, v: Value) {
    let empty = match &v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(_) => false,
    };
    if !empty {
        m.insert(k.to_owned(), v);
    }
}

pub fn ip(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap()).to_string(),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).unwrap()).to_string(),
        n => panic!("IP with {n} bytes"),
    }
}

fn name_of<E: TryFrom<i32>>(v: i32, f: impl Fn(E) -> &'static str) -> Value {
    match E::try_from(v) {
        Ok(e) => json!(f(e)),
        Err(_) => json!(format!("INVALID({v})")),
    }
}

fn ports(ports: &[wl::Port]) -> Value {
    ports
        .iter()
        .map(|p| {
            let mut m = Map::new();
            m.insert("service_port".into(), json!(p.service_port));
            m.insert("target_port".into(), json!(p.target_port));
            if p.app_protocol != 0 {
                m.insert(
                    "app_protocol".into(),
                    name_of(p.app_protocol, |e: wl::AppProtocol| e.as_str_name()),
                );
            }
            Value::Object(m)
        })
        .collect()
}

fn workload(w: &wl::Workload) -> Value {
    let mut m = Map::new();
    put(&mut m, "uid", json!(w.uid));
    put(&mut m, "name", json!(w.name));
    put(&mut m, "namespace", json!(w.namespace));
    put(
        &mut m,
        "addresses",
        w.addresses.iter().map(|a| json!(ip(a))).collect(),
    );
    put(&mut m, "hostname", json!(w.hostname));
    put(&mut m, "network", json!(w.network));
    m.insert(
        "tunnel_protocol".into(),
        name_of(w.tunnel_protocol, |e: wl::TunnelProtocol| e.as_str_name()),
    );
    put(&mut m, "native_tunnel", json!(w.native_tunnel));
    put(&mut m, "trust_domain", json!(w.trust_domain));
    put(&mut m, "service_account", json!(w.service_account));
    put(&mut m, "waypoint", opt_debug(&w.waypoint));
    put(&mut m, "network_gateway", opt_debug(&w.network_gateway));
    put(&mut m, "node", json!(w.node));
    put(&mut m, "canonical_name", json!(w.canonical_name));
    put(&mut m, "canonical_revision", json!(w.canonical_revision));
    m.insert(
        "workload_type".into(),
        name_of(w.workload_type, |e: wl::WorkloadType| e.as_str_name()),
    );
    put(&mut m, "workload_name", json!(w.workload_name));
    put(
        &mut m,
        "application_tunnel",
        opt_debug(&w.application_tunnel),
    );
    let services: BTreeMap<&String, Value> = w
        .services
        .iter()
        .map(|(k, pl)| (k, ports(&pl.ports)))
        .collect();
    put(&mut m, "services", json!(services));
    put(
        &mut m,
        "authorization_policies",
        json!(w.authorization_policies),
    );
    m.insert(
        "status".into(),
        name_of(w.status, |e: wl::WorkloadStatus| e.as_str_name()),
    );
    put(&mut m, "cluster_id", json!(w.cluster_id));
    put(&mut m, "locality", opt_debug(&w.locality));
    m.insert(
        "network_mode".into(),
        name_of(w.network_mode, |e: wl::NetworkMode| e.as_str_name()),
    );
    put(
        &mut m,
        "extensions",
        json!(
            w.extensions
                .iter()
                .map(|e| e.name.clone())
                .collect::<Vec<_>>()
        ),
    );
    put(
        &mut m,
        "capacity",
        w.capacity.map_or(Value::Null, |c| json!(c)),
    );
    Value::Object(m)
}

fn opt_debug<T: std::fmt::Debug>(v: &Option<T>) -> Value {
    v.as_ref().map_or(Value::Null, |v| json!(format!("{v:?}")))
}

fn service(s: &wl::Service) -> Value {
    let mut m = Map::new();
    put(&mut m, "name", json!(s.name));
    put(&mut m, "namespace", json!(s.namespace));
    put(&mut m, "hostname", json!(s.hostname));
    put(
        &mut m,
        "addresses",
        s.addresses
            .iter()
            .map(|a| {
                let mut t = format!("{}/{}", a.network, ip(&a.address));
                if let Some(l) = a.length {
                    t.push_str(&format!("/{l}"));
                }
                json!(t)
            })
            .collect(),
    );
    put(&mut m, "ports", ports(&s.ports));
    put(&mut m, "subject_alt_names", json!(s.subject_alt_names));
    put(&mut m, "waypoint", opt_debug(&s.waypoint));
    if let Some(lb) = &s.load_balancing {
        let prefs: Vec<Value> = lb
            .routing_preference
            .iter()
            .map(|p| name_of(*p, |e: wl::load_balancing::Scope| e.as_str_name()))
            .collect();
        m.insert(
            "load_balancing".into(),
            json!({
                "routing_preference": prefs,
                "mode": name_of(lb.mode, |e: wl::load_balancing::Mode| e.as_str_name()),
                "health_policy": name_of(lb.health_policy, |e: wl::load_balancing::HealthPolicy| e.as_str_name()),
            }),
        );
    }
    m.insert(
        "ip_families".into(),
        name_of(s.ip_families, |e: wl::IpFamilies| e.as_str_name()),
    );
    put(&mut m, "canonical", json!(s.canonical));
    put(
        &mut m,
        "ingress_use_waypoint",
        json!(s.ingress_use_waypoint),
    );
    put(
        &mut m,
        "weighted_waypoints",
        json!(
            s.weighted_waypoints
                .iter()
                .map(|w| format!("{w:?}"))
                .collect::<Vec<_>>()
        ),
    );
    put(
        &mut m,
        "extensions",
        json!(
            s.extensions
                .iter()
                .map(|e| e.name.clone())
                .collect::<Vec<_>>()
        ),
    );
    if s.visibility != 0 {
        m.insert(
            "visibility".into(),
            name_of(s.visibility, |e: wl::service::Visibility| e.as_str_name()),
        );
    }
    Value::Object(m)
}

fn authorization(a: &sec::Authorization) -> Value {
    let mut m = Map::new();
    put(&mut m, "name", json!(a.name));
    put(&mut m, "namespace", json!(a.namespace));
    m.insert(
        "scope".into(),
        name_of(a.scope, |e: sec::Scope| e.as_str_name()),
    );
    m.insert(
        "action".into(),
        name_of(a.action, |e: sec::Action| e.as_str_name()),
    );
    put(&mut m, "dry_run", json!(a.dry_run));
    // Rules are always shown: zero rules and a rule with zero clauses mean different things.
    let rules: Vec<Value> = a
        .rules
        .iter()
        .map(|r| {
            let clauses: Vec<Value> = r
                .clauses
                .iter()
                .map(|c| json!({ "matches": c.matches.iter().map(match_view).collect::<Vec<_>>() }))
                .collect();
            json!({ "clauses": clauses })
        })
        .collect();
    m.insert("rules".into(), Value::Array(rules));
    Value::Object(m)
}

pub fn string_match(s: &sec::StringMatch) -> String {
    match &s.match_type {
        Some(MatchType::Exact(v)) => format!("exact:{v}"),
        Some(MatchType::Prefix(v)) => format!("prefix:{v}"),
        Some(MatchType::Suffix(v)) => format!("suffix:{v}"),
        Some(MatchType::Presence(())) => "presence".to_owned(),
        None => "NONE".to_owned(),
    }
}

fn match_view(mt: &sec::Match) -> Value {
    let sm = |v: &[sec::StringMatch]| json!(v.iter().map(string_match).collect::<Vec<_>>());
    let addrs = |v: &[sec::Address]| {
        json!(
            v.iter()
                .map(|a| format!("{}/{}", ip(&a.address), a.length))
                .collect::<Vec<_>>()
        )
    };
    let sas = |v: &[sec::ServiceAccountMatch]| {
        json!(
            v.iter()
                .map(|s| format!("{}/{}", s.namespace, s.service_account))
                .collect::<Vec<_>>()
        )
    };
    let mut m = Map::new();
    put(&mut m, "namespaces", sm(&mt.namespaces));
    put(&mut m, "not_namespaces", sm(&mt.not_namespaces));
    put(&mut m, "principals", sm(&mt.principals));
    put(&mut m, "not_principals", sm(&mt.not_principals));
    put(&mut m, "source_ips", addrs(&mt.source_ips));
    put(&mut m, "not_source_ips", addrs(&mt.not_source_ips));
    put(&mut m, "destination_ips", addrs(&mt.destination_ips));
    put(
        &mut m,
        "not_destination_ips",
        addrs(&mt.not_destination_ips),
    );
    put(&mut m, "destination_ports", json!(mt.destination_ports));
    put(
        &mut m,
        "not_destination_ports",
        json!(mt.not_destination_ports),
    );
    put(&mut m, "service_accounts", sas(&mt.service_accounts));
    put(
        &mut m,
        "not_service_accounts",
        sas(&mt.not_service_accounts),
    );
    assert!(mt.extensions.is_empty());
    Value::Object(m)
}

/// The workload with this uid.
pub fn workload_of<'a>(s: &'a Snapshot, uid: &str) -> &'a wl::Workload {
    match s.addresses.get(uid).and_then(|a| a.r#type.as_ref()) {
        Some(address::Type::Workload(w)) => w,
        other => panic!("{uid}: not a workload: {other:?}"),
    }
}

/// The service with this resource name.
pub fn service_of<'a>(s: &'a Snapshot, name: &str) -> &'a wl::Service {
    match s.addresses.get(name).and_then(|a| a.r#type.as_ref()) {
        Some(address::Type::Service(svc)) => svc,
        other => panic!("{name}: not a service: {other:?}"),
    }
}

//! The application's part of `/config_dump`, in the shape of Istio's ztunnel, which
//! `istioctl ztunnel-config` parses (its Go `configdump` types for ztunnel).
//!
//! | key | content |
//! |---|---|
//! | `workloads` | list; `workloadIps`, `serviceAccount`, `trustDomain`, `services` as `ns/hostname` keys, … |
//! | `services` | list; `endpoints` keyed by workload uid: `{workloadUid, service, port, status}` |
//! | `policies` | list; string matches externally tagged (`{"Presence": []}`) |
//! | `stagedServices` | `ns/hostname` → uid → endpoint, for services workloads name but the state lacks |
//! | `certificates` | list of `{identity, state, certChain, rootCerts}` (see [`CertSnapshot`]) |
//! | `staticConfig` | the `LOCAL_XDS_PATH` / `LOCAL_XDS` content as loaded now, else empty lists |
//! | `workloadState` | shared mode: pod uid → `{state, info}` (when the data plane provides it) |
//! | `xds` | our own: the xDS client's streams, types and resource versions |
//!
//! The admin server adds `config` and `version`. Keys beyond Istio's are only added where
//! `istioctl` ignores them (Go's JSON decoding skips unknown fields); every key `istioctl` knows
//! has the type it expects.
//!
//! The state crate serializes its model for this dump; this module only reshapes what differs
//! from Istio (workload addresses and identity, endpoints, staged services). The
//! `LOCAL_XDS_PATH` format is parsed by the state crate's own types and is not affected.
//!
//! [`CertSnapshot`]: identity::CertSnapshot

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use identity::CertManager;
use serde_json::{Map, Value, json};
use state::MeshState;
use state::local::LocalConfig;

use super::ConfigDumpProvider;
use crate::config::LocalXds;
use crate::inpod::WorkloadStateView;

/// Where the dump's content comes from.
#[derive(Clone)]
pub struct DumpSources {
    /// Workloads, services and policies.
    pub state: Arc<MeshState>,
    /// `certificates`.
    pub certs: CertManager,
    /// `xds` (absent with a static config or without a control plane).
    pub xds: Option<xds::XdsClient>,
    /// `workloadState` (shared mode).
    pub workload_state: Option<WorkloadStateView>,
    /// `staticConfig`.
    pub local_xds: Option<LocalXds>,
}

impl std::fmt::Debug for DumpSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DumpSources")
            .field("certs", &self.certs)
            .field("xds", &self.xds.is_some())
            .field("workload_state", &self.workload_state.is_some())
            .field("local_xds", &self.local_xds)
            .finish_non_exhaustive()
    }
}

impl DumpSources {
    /// The dump (without `config` and `version`, which the admin server adds).
    pub fn dump(&self) -> Value {
        let mut out = mesh_state(self.state.config_dump());
        out.insert(
            "certificates".into(),
            serde_json::to_value(self.certs.snapshot()).unwrap_or_else(unserializable),
        );
        out.insert(
            "staticConfig".into(),
            static_config(self.local_xds.as_ref()),
        );
        if let Some(view) = &self.workload_state {
            out.insert(
                "workloadState".into(),
                serde_json::to_value(view.state()).unwrap_or_else(unserializable),
            );
        }
        if let Some(xds) = &self.xds {
            out.insert(
                "xds".into(),
                serde_json::to_value(xds.dump()).unwrap_or_else(unserializable),
            );
        }
        Value::Object(out)
    }

    /// The provider the admin server calls on every `GET /config_dump`.
    pub fn into_provider(self) -> ConfigDumpProvider {
        Arc::new(move || self.dump())
    }
}

fn unserializable(e: serde_json::Error) -> Value {
    Value::String(format!("could not be serialized: {e}"))
}

/// Reshapes [`MeshState::config_dump`] (`workloads`, `services` with their `endpoints` port
/// maps, `policies`) into Istio's keys, adding `stagedServices`.
pub fn mesh_state(state_dump: Value) -> Map<String, Value> {
    let mut dump = match state_dump {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let workloads = take_list(&mut dump, "workloads");
    let services = take_list(&mut dump, "services");
    let policies = take_list(&mut dump, "policies");

    let statuses: HashMap<String, Value> = workloads
        .iter()
        .filter_map(|w| Some((str_field(w, "uid")?.to_owned(), w.get("status")?.clone())))
        .collect();
    let known: BTreeSet<String> = services
        .iter()
        .filter_map(|s| {
            Some(format!(
                "{}/{}",
                str_field(s, "namespace")?,
                str_field(s, "hostname")?
            ))
        })
        .collect();

    // Endpoints of services the state does not hold (yet): Istio keeps them "staged".
    let mut staged: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for w in &workloads {
        let (Some(uid), Some(Value::Object(backed))) = (str_field(w, "uid"), w.get("services"))
        else {
            continue;
        };
        for (key, ports) in backed.iter().filter(|(key, _)| !known.contains(*key)) {
            staged
                .entry(key.clone())
                .or_default()
                .insert(uid.to_owned(), endpoint(uid, key, ports, &statuses));
        }
    }

    let workloads = workloads
        .into_iter()
        .map(|w| Value::Object(workload(w, false)))
        .collect();
    let services = services
        .into_iter()
        .map(|s| Value::Object(service(s, &statuses)))
        .collect();
    dump.insert("workloads".into(), Value::Array(workloads));
    dump.insert("services".into(), Value::Array(services));
    dump.insert(
        "policies".into(),
        Value::Array(policies.into_iter().map(Value::Object).collect()),
    );
    dump.insert(
        "stagedServices".into(),
        serde_json::to_value(staged).unwrap_or_else(unserializable),
    );
    dump
}

/// `staticConfig`: the static configuration as it reads now (Istio re-reads the file too),
/// in the same shapes as the live state; empty lists without one, plus `error` when it no
/// longer loads.
pub fn static_config(local: Option<&LocalXds>) -> Value {
    let mut out = json!({"workloads": [], "services": [], "policies": []});
    let Some(local) = local else {
        return out;
    };
    let loaded = match local {
        LocalXds::File(path) => LocalConfig::read(path),
        LocalXds::Inline(yaml) => LocalConfig::parse(yaml),
    }
    .and_then(LocalConfig::into_resources);
    match loaded {
        Ok(r) => {
            let workloads = objects(serde_json::to_value(&r.workloads).unwrap_or_default())
                .into_iter()
                .map(|w| Value::Object(workload(w, true)))
                .collect();
            out["workloads"] = Value::Array(workloads);
            out["services"] = serde_json::to_value(&r.services).unwrap_or_else(unserializable);
            out["policies"] = serde_json::to_value(&r.policies).unwrap_or_else(unserializable);
        }
        Err(e) => out["error"] = Value::String(e.to_string()),
    }
    out
}

/// One workload: `addresses` → `workloadIps`, `identity` → `trustDomain` + `serviceAccount`,
/// `services` → its `ns/hostname` keys (the port maps are in the services' `endpoints`), an
/// empty `locality` left out. `port_maps` keeps `services` as the port-map object (the
/// `LOCAL_XDS_PATH` form, for `staticConfig`).
fn workload(mut w: Map<String, Value>, port_maps: bool) -> Map<String, Value> {
    if let Some(ips) = w.remove("addresses") {
        w.insert("workloadIps".into(), ips);
    }
    if let Some(Value::String(id)) = w.remove("identity") {
        match hbone::Identity::parse(&id) {
            Ok(parsed) => {
                w.insert("trustDomain".into(), parsed.trust_domain().into());
                w.insert("serviceAccount".into(), parsed.service_account().into());
            }
            Err(_) => {
                w.insert("identity".into(), Value::String(id));
            }
        }
    }
    if !port_maps && let Some(Value::Object(services)) = w.remove("services") {
        let keys = services
            .into_iter()
            .map(|(k, _)| Value::String(k))
            .collect();
        w.insert("services".into(), Value::Array(keys));
    }
    let empty_locality = w
        .get("locality")
        .and_then(Value::as_object)
        .is_some_and(|l| l.values().all(|v| v.as_str().is_some_and(str::is_empty)));
    if empty_locality {
        w.remove("locality");
    }
    w
}

/// One service: `endpoints` (uid → port map) become Istio's endpoint objects.
fn service(mut s: Map<String, Value>, statuses: &HashMap<String, Value>) -> Map<String, Value> {
    let key = format!(
        "{}/{}",
        str_field(&s, "namespace").unwrap_or_default(),
        str_field(&s, "hostname").unwrap_or_default()
    );
    let endpoints = match s.remove("endpoints") {
        Some(Value::Object(eps)) => eps
            .iter()
            .map(|(uid, ports)| (uid.clone(), endpoint(uid, &key, ports, statuses)))
            .collect(),
        _ => Map::new(),
    };
    s.insert("endpoints".into(), Value::Object(endpoints));
    s
}

/// Istio's endpoint: `{workloadUid, service, port: {servicePort: targetPort}, status}`.
fn endpoint(uid: &str, service: &str, ports: &Value, statuses: &HashMap<String, Value>) -> Value {
    json!({
        "workloadUid": uid,
        "service": service,
        "port": ports,
        "status": statuses.get(uid).cloned().unwrap_or_else(|| "Healthy".into()),
    })
}

fn take_list(dump: &mut Map<String, Value>, key: &str) -> Vec<Map<String, Value>> {
    dump.remove(key).map(objects).unwrap_or_default()
}

/// The objects of a JSON list (anything else: none).
fn objects(list: Value) -> Vec<Map<String, Value>> {
    match list {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|i| match i {
                Value::Object(m) => Some(m),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn str_field<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_get_istios_keys() {
        let w = json!({
            "uid": "u", "addresses": ["10.0.0.1"], "namespace": "ns",
            "identity": "spiffe://td.local/ns/ns/sa/sa1",
            "services": {"ns/s.ns.svc.cluster.local": {"80": 8080}},
            "locality": {"region": "", "zone": "", "subzone": ""},
        });
        let Value::Object(w) = w else { unreachable!() };
        let out = workload(w.clone(), false);
        assert_eq!(out["workloadIps"], json!(["10.0.0.1"]));
        assert_eq!(out["trustDomain"], "td.local");
        assert_eq!(out["serviceAccount"], "sa1");
        assert_eq!(out["services"], json!(["ns/s.ns.svc.cluster.local"]));
        assert!(!out.contains_key("addresses") && !out.contains_key("identity"));
        assert!(!out.contains_key("locality"), "empty locality left out");
        let local = workload(w, true);
        assert_eq!(local["services"]["ns/s.ns.svc.cluster.local"]["80"], 8080);
    }

    #[test]
    fn endpoints_of_unknown_services_are_staged() {
        let state = json!({
            "workloads": [
                {"uid": "a", "status": "Unhealthy", "services": {
                    "ns/known": {"80": 8080}, "ns/later": {"90": 0}}},
            ],
            "services": [
                {"namespace": "ns", "hostname": "known", "endpoints": {"a": {"80": 8080}}},
            ],
            "policies": [],
        });
        let out = mesh_state(state);
        assert_eq!(
            out["services"][0]["endpoints"]["a"],
            json!({"workloadUid": "a", "service": "ns/known", "port": {"80": 8080}, "status": "Unhealthy"})
        );
        assert_eq!(
            out["stagedServices"],
            json!({"ns/later": {"a": {"workloadUid": "a", "service": "ns/later", "port": {"90": 0}, "status": "Unhealthy"}}})
        );
    }

    #[test]
    fn static_config_without_a_file_is_empty_and_reports_errors() {
        assert_eq!(
            static_config(None),
            json!({"workloads": [], "services": [], "policies": []})
        );
        let bad = static_config(Some(&LocalXds::Inline("workloads: 1\n".into())));
        assert!(
            bad["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{bad}"
        );
        assert_eq!(bad["workloads"], json!([]));
    }
}

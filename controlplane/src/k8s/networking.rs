//! Istio networking resources (`networking.istio.io/v1`, `v1beta1`, `v1alpha3`) as plain serde
//! structs: `ServiceEntry`, with the fields istiod reads for ztunnel.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

/// `networking.istio.io` `ServiceEntry`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntry {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The entry.
    #[serde(default)]
    pub spec: ServiceEntrySpec,
}

/// `ServiceEntry.spec`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    /// Host names (one service each); may hold a leading wildcard.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs (or CIDRs) of the hosts; none means istiod allocates one per host.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Ports of the hosts.
    #[serde(default)]
    pub ports: Vec<ServiceEntryPort>,
    /// `MESH_EXTERNAL` (default) or `MESH_INTERNAL`.
    #[serde(default)]
    pub location: Option<String>,
    /// `NONE` (default), `STATIC`, `DNS` or `DNS_ROUND_ROBIN`.
    #[serde(default)]
    pub resolution: Resolution,
    /// Inline endpoints.
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntrySpec>,
    /// Pods (and WorkloadEntries) that serve the hosts, by label.
    #[serde(default)]
    pub workload_selector: Option<SelectorLabels>,
    /// Identities the endpoints may present.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// `ServiceEntry.spec.resolution`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Traffic goes to the address the client asked for.
    #[default]
    None,
    /// The endpoints' addresses are IPs.
    Static,
    /// The endpoints (or the hosts) are names resolved when connecting.
    Dns,
    /// As `DNS`, one connection per resolved address.
    DnsRoundRobin,
}

/// `ServiceEntry.spec.ports[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntryPort {
    /// Port the hosts are addressed on.
    pub number: u32,
    /// `HTTP`, `TCP`, `TLS`...
    #[serde(default)]
    pub protocol: Option<String>,
    /// Name, keyed by the endpoints' `ports`.
    #[serde(default)]
    pub name: String,
    /// Port on the endpoints (default: `number`).
    #[serde(default)]
    pub target_port: Option<u32>,
}

/// An inline endpoint (the spec of a `WorkloadEntry`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntrySpec {
    /// IP or DNS name (empty: only with a network, reached through its gateway).
    #[serde(default)]
    pub address: String,
    /// Port name → endpoint port.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Network of the endpoint.
    #[serde(default)]
    pub network: String,
    /// `region/zone/subzone`.
    #[serde(default)]
    pub locality: String,
    /// Load-balancing weight.
    #[serde(default)]
    pub weight: Option<u32>,
    /// Service account of the endpoint (its identity when it is in the mesh).
    #[serde(default)]
    pub service_account: String,
}

/// `workloadSelector`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SelectorLabels {
    /// Labels a workload must carry.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

//! The static configuration format of `LOCAL_XDS_PATH` / `LOCAL_XDS` (used instead of xDS).
//!
//! YAML with camelCase keys; unknown keys are rejected; top-level `workloads`, `services`,
//! `policies` (each optional). Enum strings are case-sensitive and are the names the model
//! serializes with (`TCP`/`HBONE`, `Standard`/`HostNetwork`, `Healthy`/`Unhealthy`, lower-case
//! workload types, `Global`/`Namespace`/`WorkloadSelector`, `Allow`/`Deny`, ...). StringMatch
//! values are YAML tags (`!Exact x`, `!Prefix x`, `!Suffix x`, `!Presence []`); the single-key
//! map form (`{Exact: x}`) is rejected. Addresses are `<network>/<ip>` (`/10.0.0.1` for the
//! default network); a gateway `destination` is `<network>/<ip>` when the part after `/` is an
//! IP, else `<namespace>/<hostname>`. Policy CIDRs need an explicit prefix length.
//!
//! Required keys: workloads `workloadIps`, `namespace`, `services` (may be `{}`); services
//! `name`, `namespace`, `hostname`, `vips`, `ports`; policies `name`, `namespace`, `scope`,
//! `action`, `dryRun`. Defaults: `protocol: TCP`, `networkMode: Standard`, `status: Healthy`,
//! `capacity: 1`, trust domain `cluster.local` / service account `default` (as for xDS),
//! `clusterId: Kubernetes`. A workload without `uid` gets `<clusterId>//Pod/<namespace>/<name>`
//! (or `<clusterId>//static/<namespace>/<first IP>` without a name); duplicate uids, service keys
//! or policy keys are errors.
//!
//! Syntax errors carry serde_yaml's document path and line/column; semantic errors name the
//! entry (`workloads[2]`) and field.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::model::{
    ApplicationTunnel, ApplicationTunnelProtocol, Cidr, ConversionError, GatewayAddress,
    GatewayDestination, HealthStatus, IpFamilies, LoadBalancer, LoadBalancerHealthPolicy,
    LoadBalancerMode, LoadBalancerScope, Locality, Match, NetworkAddress, NetworkCidr, NetworkMode,
    Policy, PolicyAction, PolicyScope, PortMap, Service, ServiceAccountMatch, StringMatch,
    TunnelProtocol, Visibility, WeightedWaypoint, Workload, WorkloadType,
};
use crate::store::MeshState;

#[cfg(test)]
mod tests;

/// Why a static configuration was not loaded (nothing is applied on error).
#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    #[error("reading static config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Syntax, type, unknown-key or missing-key error; the message has the document path and
    /// line/column.
    #[error("static config: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("static config {entry}: {source}")]
    Invalid {
        entry: String,
        #[source]
        source: ConversionError,
    },
    #[error("static config {entry}: duplicate key {key:?}")]
    Duplicate { entry: String, key: String },
}

/// A parsed static configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalConfig {
    #[serde(default)]
    pub workloads: Vec<LocalWorkload>,
    #[serde(default)]
    pub services: Vec<LocalService>,
    #[serde(default)]
    pub policies: Vec<LocalPolicy>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalWorkload {
    pub workload_ips: Vec<IpAddr>,
    pub namespace: String,
    pub services: BTreeMap<String, PortMap>,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub service_account: String,
    #[serde(default)]
    pub trust_domain: String,
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub cluster_id: String,
    #[serde(default)]
    pub protocol: TunnelProtocol,
    #[serde(default)]
    pub network_mode: NetworkMode,
    #[serde(default)]
    pub status: HealthStatus,
    #[serde(default)]
    pub workload_name: String,
    #[serde(default)]
    pub workload_type: WorkloadType,
    #[serde(default)]
    pub canonical_name: String,
    #[serde(default)]
    pub canonical_revision: String,
    #[serde(default)]
    pub waypoint: Option<LocalGateway>,
    #[serde(default)]
    pub network_gateway: Option<LocalGateway>,
    #[serde(default)]
    pub native_tunnel: bool,
    #[serde(default)]
    pub application_tunnel: Option<LocalApplicationTunnel>,
    #[serde(default)]
    pub authorization_policies: Vec<String>,
    #[serde(default)]
    pub locality: Option<LocalLocality>,
    #[serde(default)]
    pub capacity: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalGateway {
    pub destination: GatewayDestination,
    pub hbone_mtls_port: u16,
}

impl From<LocalGateway> for GatewayAddress {
    fn from(g: LocalGateway) -> Self {
        GatewayAddress {
            destination: g.destination,
            hbone_mtls_port: g.hbone_mtls_port,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalApplicationTunnel {
    pub protocol: ApplicationTunnelProtocol,
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalLocality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalService {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<NetworkAddress>,
    pub ports: PortMap,
    #[serde(default)]
    pub cidr_vips: Vec<LocalCidrVip>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub waypoint: Option<LocalGateway>,
    #[serde(default)]
    pub weighted_waypoints: Vec<LocalWeightedWaypoint>,
    #[serde(default)]
    pub load_balancer: Option<LocalLoadBalancer>,
    #[serde(default)]
    pub ip_families: Option<IpFamilies>,
    #[serde(default)]
    pub canonical: bool,
    #[serde(default)]
    pub visibility: Visibility,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalCidrVip {
    #[serde(default)]
    pub network: String,
    pub cidr: PrefixedCidr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalWeightedWaypoint {
    pub destination: LocalGateway,
    pub weight: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalLoadBalancer {
    pub routing_preferences: Vec<LoadBalancerScope>,
    pub mode: LoadBalancerMode,
    pub health_policy: LoadBalancerHealthPolicy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalPolicy {
    pub name: String,
    pub namespace: String,
    pub scope: PolicyScope,
    pub action: PolicyAction,
    pub dry_run: bool,
    #[serde(default)]
    pub rules: Vec<Vec<Vec<LocalMatch>>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalMatch {
    #[serde(default)]
    pub namespaces: Vec<LocalStringMatch>,
    #[serde(default)]
    pub not_namespaces: Vec<LocalStringMatch>,
    #[serde(default)]
    pub principals: Vec<LocalStringMatch>,
    #[serde(default)]
    pub not_principals: Vec<LocalStringMatch>,
    #[serde(default)]
    pub service_accounts: Vec<LocalServiceAccount>,
    #[serde(default)]
    pub not_service_accounts: Vec<LocalServiceAccount>,
    #[serde(default)]
    pub source_ips: Vec<PrefixedCidr>,
    #[serde(default)]
    pub not_source_ips: Vec<PrefixedCidr>,
    #[serde(default)]
    pub destination_ips: Vec<PrefixedCidr>,
    #[serde(default)]
    pub not_destination_ips: Vec<PrefixedCidr>,
    #[serde(default)]
    pub destination_ports: Vec<u16>,
    #[serde(default)]
    pub not_destination_ports: Vec<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalServiceAccount {
    pub namespace: String,
    pub service_account: String,
}

/// A StringMatch written as a YAML tag: `!Exact x`, `!Prefix x`, `!Suffix x`, `!Presence []`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalStringMatch(pub StringMatch);

impl<'de> Deserialize<'de> for LocalStringMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde_yaml::Value;
        const EXPECTED: &str =
            "a tagged StringMatch: !Exact <s>, !Prefix <s>, !Suffix <s> or !Presence []";
        let Value::Tagged(tagged) = Value::deserialize(d)? else {
            return Err(de::Error::custom(format!(
                "expected {EXPECTED} (the single-key map form is not accepted)"
            )));
        };
        let text = |v: Value| match v {
            Value::String(s) => Ok(s),
            other => Err(de::Error::custom(format!(
                "StringMatch {} needs a string, got {other:?}",
                tagged.tag
            ))),
        };
        let m = if tagged.tag == "Exact" {
            StringMatch::Exact(text(tagged.value.clone())?)
        } else if tagged.tag == "Prefix" {
            StringMatch::Prefix(text(tagged.value.clone())?)
        } else if tagged.tag == "Suffix" {
            StringMatch::Suffix(text(tagged.value.clone())?)
        } else if tagged.tag == "Presence" {
            match &tagged.value {
                Value::Sequence(s) if s.is_empty() => StringMatch::Presence,
                Value::Null => StringMatch::Presence,
                other => {
                    return Err(de::Error::custom(format!(
                        "StringMatch !Presence takes [] , got {other:?}"
                    )));
                }
            }
        } else {
            return Err(de::Error::custom(format!(
                "unknown StringMatch tag {}; expected {EXPECTED}",
                tagged.tag
            )));
        };
        Ok(LocalStringMatch(m))
    }
}

/// A CIDR string that must carry an explicit prefix length (`10.0.0.1/32`, not `10.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixedCidr(pub Cidr);

impl<'de> Deserialize<'de> for PrefixedCidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if !s.contains('/') {
            return Err(de::Error::custom(format!(
                "{s:?} needs a prefix length (e.g. {s}/32)"
            )));
        }
        s.parse().map(PrefixedCidr).map_err(de::Error::custom)
    }
}

/// The converted contents of a static config.
#[derive(Debug, Clone, Default)]
pub struct StaticResources {
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub policies: Vec<Policy>,
}

impl fmt::Display for StaticResources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} workloads, {} services, {} policies",
            self.workloads.len(),
            self.services.len(),
            self.policies.len()
        )
    }
}

impl LocalConfig {
    /// Parses the YAML text.
    pub fn parse(yaml: &str) -> Result<Self, LocalConfigError> {
        Ok(serde_yaml::from_str(yaml)?)
    }

    /// Reads and parses a file.
    pub fn read(path: &Path) -> Result<Self, LocalConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| LocalConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Converts every entry into the model, checking identities and duplicate keys.
    pub fn into_resources(self) -> Result<StaticResources, LocalConfigError> {
        let mut out = StaticResources::default();
        let mut seen = HashSet::new();
        for (i, w) in self.workloads.into_iter().enumerate() {
            let entry = format!("workloads[{i}]");
            let wl = convert_workload(w, i).map_err(|source| LocalConfigError::Invalid {
                entry: entry.clone(),
                source,
            })?;
            if !seen.insert(("w", wl.uid.clone())) {
                return Err(LocalConfigError::Duplicate { entry, key: wl.uid });
            }
            out.workloads.push(wl);
        }
        for (i, s) in self.services.into_iter().enumerate() {
            let entry = format!("services[{i}]");
            let svc = convert_service(s).map_err(|source| LocalConfigError::Invalid {
                entry: entry.clone(),
                source,
            })?;
            if !seen.insert(("s", svc.key())) {
                return Err(LocalConfigError::Duplicate {
                    entry,
                    key: svc.key(),
                });
            }
            out.services.push(svc);
        }
        for (i, p) in self.policies.into_iter().enumerate() {
            let entry = format!("policies[{i}]");
            let pol = convert_policy(p).map_err(|source| LocalConfigError::Invalid {
                entry: entry.clone(),
                source,
            })?;
            if !seen.insert(("p", pol.key())) {
                return Err(LocalConfigError::Duplicate {
                    entry,
                    key: pol.key(),
                });
            }
            out.policies.push(pol);
        }
        Ok(out)
    }
}

/// Parses `yaml` and loads it into `state`. All-or-nothing: on error nothing is inserted.
pub fn load(state: &MeshState, yaml: &str) -> Result<StaticResources, LocalConfigError> {
    let resources = LocalConfig::parse(yaml)?.into_resources()?;
    apply(state, &resources);
    Ok(resources)
}

/// Reads `path` (`LOCAL_XDS_PATH`) and loads it into `state`.
pub fn load_file(state: &MeshState, path: &Path) -> Result<StaticResources, LocalConfigError> {
    let resources = LocalConfig::read(path)?.into_resources()?;
    apply(state, &resources);
    Ok(resources)
}

fn apply(state: &MeshState, r: &StaticResources) {
    for w in &r.workloads {
        state.insert_workload(&w.uid.clone(), w.clone());
    }
    for s in &r.services {
        state.insert_service(&s.key(), s.clone());
    }
    for p in &r.policies {
        state.insert_policy(&p.key(), p.clone());
    }
}

fn convert_workload(w: LocalWorkload, index: usize) -> Result<Workload, ConversionError> {
    if w.namespace.is_empty() {
        return Err(ConversionError::Missing {
            field: "namespace".into(),
        });
    }
    let identity =
        crate::model::workload_identity(&w.trust_domain, &w.namespace, &w.service_account)?;
    let cluster_id = if w.cluster_id.is_empty() {
        crate::model::DEFAULT_CLUSTER_ID.to_string()
    } else {
        w.cluster_id
    };
    let uid = if !w.uid.is_empty() {
        w.uid
    } else if !w.name.is_empty() {
        format!("{cluster_id}//Pod/{}/{}", w.namespace, w.name)
    } else {
        match w.workload_ips.first() {
            Some(ip) => format!("{cluster_id}//static/{}/{ip}", w.namespace),
            None => format!("{cluster_id}//static/{}/{index}", w.namespace),
        }
    };
    for key in w.services.keys() {
        if key
            .split_once('/')
            .is_none_or(|(ns, host)| ns.is_empty() || host.is_empty())
        {
            return Err(ConversionError::Invalid {
                field: format!("services[{key:?}]"),
                reason: "service key must be <namespace>/<hostname>".into(),
            });
        }
    }
    Ok(Workload {
        uid,
        name: w.name,
        namespace: w.namespace,
        addresses: w.workload_ips,
        hostname: w.hostname,
        network: w.network,
        protocol: w.protocol,
        identity,
        waypoint: w.waypoint.map(Into::into),
        network_gateway: w.network_gateway.map(Into::into),
        node: w.node,
        canonical_name: w.canonical_name,
        canonical_revision: w.canonical_revision,
        workload_type: w.workload_type,
        workload_name: w.workload_name,
        native_tunnel: w.native_tunnel,
        application_tunnel: w.application_tunnel.map(|t| ApplicationTunnel {
            protocol: t.protocol,
            port: t.port.filter(|p| *p != 0),
        }),
        authorization_policies: w.authorization_policies,
        status: w.status,
        cluster_id,
        services: w.services,
        locality: w
            .locality
            .map(|l| Locality {
                region: l.region,
                zone: l.zone,
                subzone: l.subzone,
            })
            .unwrap_or_default(),
        network_mode: w.network_mode,
        capacity: w.capacity.unwrap_or(1),
    })
}

fn convert_service(s: LocalService) -> Result<Service, ConversionError> {
    for (field, value) in [("namespace", &s.namespace), ("hostname", &s.hostname)] {
        if value.is_empty() {
            return Err(ConversionError::Missing {
                field: field.into(),
            });
        }
    }
    Ok(Service {
        name: s.name,
        namespace: s.namespace,
        hostname: s.hostname,
        vips: s.vips,
        cidr_vips: s
            .cidr_vips
            .into_iter()
            .map(|c| NetworkCidr {
                network: c.network,
                cidr: c.cidr.0,
            })
            .collect(),
        ports: s.ports,
        subject_alt_names: s.subject_alt_names,
        waypoint: s.waypoint.map(Into::into),
        weighted_waypoints: s
            .weighted_waypoints
            .into_iter()
            .map(|w| WeightedWaypoint {
                destination: w.destination.into(),
                weight: w.weight,
            })
            .collect(),
        load_balancer: s.load_balancer.map(|lb| LoadBalancer {
            routing_preferences: lb.routing_preferences,
            mode: lb.mode,
            health_policy: lb.health_policy,
        }),
        ip_families: s.ip_families,
        canonical: s.canonical,
        visibility: s.visibility,
    })
}

fn convert_policy(p: LocalPolicy) -> Result<Policy, ConversionError> {
    if p.name.is_empty() {
        return Err(ConversionError::Missing {
            field: "name".into(),
        });
    }
    let strings = |v: Vec<LocalStringMatch>| v.into_iter().map(|s| s.0).collect();
    let cidrs = |v: Vec<PrefixedCidr>| v.into_iter().map(|c| c.0).collect();
    let sas = |v: Vec<LocalServiceAccount>| {
        v.into_iter()
            .map(|s| ServiceAccountMatch {
                namespace: s.namespace,
                service_account: s.service_account,
            })
            .collect()
    };
    let rules = p
        .rules
        .into_iter()
        .map(|rule| {
            rule.into_iter()
                .map(|clause| {
                    clause
                        .into_iter()
                        .map(|m| Match {
                            namespaces: strings(m.namespaces),
                            not_namespaces: strings(m.not_namespaces),
                            principals: strings(m.principals),
                            not_principals: strings(m.not_principals),
                            service_accounts: sas(m.service_accounts),
                            not_service_accounts: sas(m.not_service_accounts),
                            source_ips: cidrs(m.source_ips),
                            not_source_ips: cidrs(m.not_source_ips),
                            destination_ips: cidrs(m.destination_ips),
                            not_destination_ips: cidrs(m.not_destination_ips),
                            destination_ports: m.destination_ports,
                            not_destination_ports: m.not_destination_ports,
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    Ok(Policy {
        name: p.name,
        namespace: p.namespace,
        scope: p.scope,
        action: p.action,
        dry_run: p.dry_run,
        rules,
    })
}

//! `Workload`: one addressable endpoint (a pod, a WorkloadEntry, a ServiceEntry endpoint).

use std::collections::BTreeMap;
use std::net::IpAddr;

use hbone::Identity;
use proto::istio::workload as pb;
use serde::{Deserialize, Serialize};

use super::common::{GatewayAddress, serialize_identity};
use super::{ConversionError, convert};

/// Cluster id assumed when the control plane leaves it empty.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// Service port → target port of one workload for one service (`0` = not known).
pub type PortMap = BTreeMap<u16, u16>;

/// How peers must connect to a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum TunnelProtocol {
    /// Plain TCP to `<ip>:<port>`.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// HBONE to `<ip>:15008`.
    #[serde(rename = "HBONE")]
    Hbone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum NetworkMode {
    #[default]
    Standard,
    /// The workload shares the node's IP: it must never be looked up by IP.
    HostNetwork,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum HealthStatus {
    #[default]
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadType {
    #[default]
    Deployment,
    Cronjob,
    Pod,
    Job,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ApplicationTunnelProtocol {
    #[default]
    #[serde(rename = "NONE")]
    None,
    /// PROXY protocol v2 in front of the application bytes.
    #[serde(rename = "PROXY")]
    Proxy,
}

/// The workload wants its inbound traffic wrapped (e.g. PROXY protocol for a waypoint sandwich).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationTunnel {
    pub protocol: ApplicationTunnelProtocol,
    /// Port to deliver to; `None` keeps the original port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// Topology of a workload. Empty strings are "unknown" and compare equal to each other, as in
/// Istio's ztunnel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }
}

/// A workload as the proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// Primary key (xDS resource name), e.g. `Kubernetes//Pod/shop/cart-0`.
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub addresses: Vec<IpAddr>,
    /// DNS name for workloads without addresses (ServiceEntry `DNS` endpoints).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    pub network: String,
    pub protocol: TunnelProtocol,
    /// `spiffe://<td>/ns/<ns>/sa/<sa>`, with `cluster.local` / `default` for empty parts.
    #[serde(serialize_with = "serialize_identity")]
    pub identity: Identity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<GatewayAddress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_gateway: Option<GatewayAddress>,
    pub node: String,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub workload_type: WorkloadType,
    pub workload_name: String,
    pub native_tunnel: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_tunnel: Option<ApplicationTunnel>,
    /// Keys (`ns/name`) of selector-scoped policies that apply to this workload.
    pub authorization_policies: Vec<String>,
    pub status: HealthStatus,
    pub cluster_id: String,
    /// `ns/hostname` of each service this workload backs → its port map for that service.
    pub services: BTreeMap<String, PortMap>,
    pub locality: Locality,
    pub network_mode: NetworkMode,
    /// Load-balancing weight (default 1; 0 = never picked).
    pub capacity: u32,
}

impl Workload {
    pub fn is_healthy(&self) -> bool {
        self.status == HealthStatus::Healthy
    }

    pub fn service_account(&self) -> &str {
        self.identity.service_account()
    }

    pub fn trust_domain(&self) -> &str {
        self.identity.trust_domain()
    }
}

impl TryFrom<pb::Workload> for Workload {
    type Error = ConversionError;

    fn try_from(w: pb::Workload) -> Result<Self, Self::Error> {
        Workload::try_from(&w)
    }
}

impl TryFrom<&pb::Workload> for Workload {
    type Error = ConversionError;

    fn try_from(w: &pb::Workload) -> Result<Self, Self::Error> {
        convert::required("workload.uid", &w.uid)?;
        convert::required("workload.namespace", &w.namespace)?;
        let addresses = w
            .addresses
            .iter()
            .enumerate()
            .map(|(i, a)| convert::ip(|| format!("workload.addresses[{i}]"), a))
            .collect::<Result<Vec<_>, _>>()?;

        let protocol = match convert::enumeration::<pb::TunnelProtocol>(
            "workload.tunnelProtocol",
            "TunnelProtocol",
            w.tunnel_protocol,
        )? {
            pb::TunnelProtocol::None => TunnelProtocol::Tcp,
            pb::TunnelProtocol::Hbone => TunnelProtocol::Hbone,
            pb::TunnelProtocol::LegacyIstioMtls => {
                return Err(ConversionError::Unsupported {
                    field: "workload.tunnelProtocol".into(),
                    value: "LEGACY_ISTIO_MTLS",
                });
            }
        };

        let identity = workload_identity(&w.trust_domain, &w.namespace, &w.service_account)?;

        let waypoint = w
            .waypoint
            .as_ref()
            .map(|g| GatewayAddress::from_proto("workload.waypoint", g))
            .transpose()?;
        let network_gateway = w
            .network_gateway
            .as_ref()
            .map(|g| GatewayAddress::from_proto("workload.networkGateway", g))
            .transpose()?;

        let workload_type = match convert::enumeration::<pb::WorkloadType>(
            "workload.workloadType",
            "WorkloadType",
            w.workload_type,
        )? {
            pb::WorkloadType::Deployment => WorkloadType::Deployment,
            pb::WorkloadType::Cronjob => WorkloadType::Cronjob,
            pb::WorkloadType::Pod => WorkloadType::Pod,
            pb::WorkloadType::Job => WorkloadType::Job,
        };

        let application_tunnel = w
            .application_tunnel
            .as_ref()
            .map(|t| -> Result<_, ConversionError> {
                let protocol = match convert::enumeration::<pb::application_tunnel::Protocol>(
                    "workload.applicationTunnel.protocol",
                    "ApplicationTunnel.Protocol",
                    t.protocol,
                )? {
                    pb::application_tunnel::Protocol::None => ApplicationTunnelProtocol::None,
                    pb::application_tunnel::Protocol::Proxy => ApplicationTunnelProtocol::Proxy,
                };
                let port = convert::port(|| "workload.applicationTunnel.port".into(), t.port)?;
                Ok(ApplicationTunnel {
                    protocol,
                    port: (port != 0).then_some(port),
                })
            })
            .transpose()?;

        let status = match convert::enumeration::<pb::WorkloadStatus>(
            "workload.status",
            "WorkloadStatus",
            w.status,
        )? {
            pb::WorkloadStatus::Healthy => HealthStatus::Healthy,
            pb::WorkloadStatus::Unhealthy => HealthStatus::Unhealthy,
        };

        let network_mode = match convert::enumeration::<pb::NetworkMode>(
            "workload.networkMode",
            "NetworkMode",
            w.network_mode,
        )? {
            pb::NetworkMode::Standard => NetworkMode::Standard,
            pb::NetworkMode::HostNetwork => NetworkMode::HostNetwork,
        };

        let mut services = BTreeMap::new();
        for (key, list) in &w.services {
            if key
                .split_once('/')
                .is_none_or(|(ns, host)| ns.is_empty() || host.is_empty())
            {
                return Err(ConversionError::Invalid {
                    field: format!("workload.services[{key:?}]"),
                    reason: "service key must be <namespace>/<hostname>".into(),
                });
            }
            services.insert(
                key.clone(),
                port_list(&format!("workload.services[{key:?}]"), &list.ports)?,
            );
        }

        let locality = w
            .locality
            .as_ref()
            .map(|l| Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                subzone: l.subzone.clone(),
            })
            .unwrap_or_default();

        Ok(Workload {
            uid: w.uid.clone(),
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            addresses,
            hostname: w.hostname.clone(),
            network: w.network.clone(),
            protocol,
            identity,
            waypoint,
            network_gateway,
            node: w.node.clone(),
            canonical_name: w.canonical_name.clone(),
            canonical_revision: w.canonical_revision.clone(),
            workload_type,
            workload_name: w.workload_name.clone(),
            native_tunnel: w.native_tunnel,
            application_tunnel,
            authorization_policies: w.authorization_policies.clone(),
            status,
            cluster_id: if w.cluster_id.is_empty() {
                DEFAULT_CLUSTER_ID.to_string()
            } else {
                w.cluster_id.clone()
            },
            services,
            locality,
            network_mode,
            capacity: w.capacity.unwrap_or(1),
        })
    }
}

/// Builds the workload identity with the mesh defaults and checks that the result is a valid
/// SPIFFE id (so a namespace like `a/b` is rejected instead of minting a bogus identity).
pub(crate) fn workload_identity(
    trust_domain: &str,
    namespace: &str,
    service_account: &str,
) -> Result<Identity, ConversionError> {
    let id = Identity::new(trust_domain, namespace, service_account);
    Identity::parse(&id.to_string()).map_err(|source| ConversionError::BadIdentity {
        field: "workload.{trustDomain,namespace,serviceAccount}".into(),
        source,
    })
}

/// Converts a proto port list into a service-port → target-port map.
pub(crate) fn port_list(field: &str, ports: &[pb::Port]) -> Result<PortMap, ConversionError> {
    let mut out = PortMap::new();
    for (i, p) in ports.iter().enumerate() {
        let sp = convert::port(|| format!("{field}.ports[{i}].servicePort"), p.service_port)?;
        let tp = convert::port(|| format!("{field}.ports[{i}].targetPort"), p.target_port)?;
        out.insert(sp, tp);
    }
    Ok(out)
}

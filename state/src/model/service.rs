//! `Service`: a named set of endpoints reachable through VIPs.

use proto::istio::workload as pb;
use serde::{Deserialize, Serialize};

use super::common::{Cidr, GatewayAddress, NamespacedHostname, NetworkAddress};
use super::workload::{PortMap, port_list};
use super::{ConversionError, convert};

/// A locality dimension used to rank endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LoadBalancerScope {
    Region,
    Zone,
    Subzone,
    Node,
    Cluster,
    Network,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum LoadBalancerMode {
    /// No ranking: every candidate endpoint is eligible (proto `UNSPECIFIED_MODE`).
    #[default]
    Standard,
    /// Only endpoints matching every routing preference.
    Strict,
    /// Prefer the best-ranked endpoints, fall back to worse ones.
    Failover,
    /// No endpoint selection: connect to the original destination.
    Passthrough,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum LoadBalancerHealthPolicy {
    #[default]
    OnlyHealthy,
    AllowAll,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    pub routing_preferences: Vec<LoadBalancerScope>,
    pub mode: LoadBalancerMode,
    pub health_policy: LoadBalancerHealthPolicy,
}

/// Which address families a service's endpoints should be reached on (absent = automatic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpFamilies {
    Dual,
    IPv4,
    IPv6,
}

impl IpFamilies {
    /// Whether an endpoint address of this family may be used.
    pub fn accepts(self, ip: std::net::IpAddr) -> bool {
        match self {
            IpFamilies::Dual => true,
            IpFamilies::IPv4 => ip.is_ipv4(),
            IpFamilies::IPv6 => ip.is_ipv6(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Visibility {
    #[default]
    Public,
    /// Resolvable only by clients in the service's namespace.
    Namespace,
}

/// A VIP range on a network (ServiceEntry CIDR addresses).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct NetworkCidr {
    pub network: String,
    pub cidr: Cidr,
}

/// One of several waypoints, chosen per connection by weight.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct WeightedWaypoint {
    pub destination: GatewayAddress,
    pub weight: u32,
}

/// A service as the proxy sees it. Its endpoints are not stored here: they come from the
/// workloads' `services` maps (see [`crate::MeshView::endpoints`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<NetworkAddress>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cidr_vips: Vec<NetworkCidr>,
    /// Service port → target port (`0` = named port, resolved per endpoint).
    pub ports: PortMap,
    pub subject_alt_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<GatewayAddress>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub weighted_waypoints: Vec<WeightedWaypoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_families: Option<IpFamilies>,
    pub canonical: bool,
    pub visibility: Visibility,
}

impl Service {
    /// The store key, `<namespace>/<hostname>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }

    pub fn namespaced_hostname(&self) -> NamespacedHostname {
        NamespacedHostname::new(&self.namespace, &self.hostname)
    }

    /// Whether a client in `client_namespace` may resolve this service.
    pub fn visible_to(&self, client_namespace: &str) -> bool {
        match self.visibility {
            Visibility::Public => true,
            Visibility::Namespace => self.namespace == client_namespace,
        }
    }

    /// The parseable `subject_alt_names` (unparseable ones are ignored).
    pub fn sans(&self) -> impl Iterator<Item = hbone::Identity> + '_ {
        self.subject_alt_names
            .iter()
            .filter_map(|s| hbone::Identity::parse(s).ok())
    }

    pub fn health_policy(&self) -> LoadBalancerHealthPolicy {
        self.load_balancer
            .as_ref()
            .map(|lb| lb.health_policy)
            .unwrap_or_default()
    }

    pub fn lb_mode(&self) -> LoadBalancerMode {
        self.load_balancer
            .as_ref()
            .map(|lb| lb.mode)
            .unwrap_or_default()
    }
}

impl TryFrom<pb::Service> for Service {
    type Error = ConversionError;
    fn try_from(s: pb::Service) -> Result<Self, Self::Error> {
        Service::try_from(&s)
    }
}

impl TryFrom<&pb::Service> for Service {
    type Error = ConversionError;

    fn try_from(s: &pb::Service) -> Result<Self, Self::Error> {
        convert::required("service.namespace", &s.namespace)?;
        convert::required("service.hostname", &s.hostname)?;

        let mut vips = Vec::new();
        let mut cidr_vips = Vec::new();
        for (i, a) in s.addresses.iter().enumerate() {
            let field = || format!("service.addresses[{i}]");
            let ip = convert::ip(|| format!("{}.address", field()), &a.address)?;
            match a.length {
                None => vips.push(NetworkAddress::new(&a.network, ip)),
                Some(len) => {
                    let cidr = Cidr::from_parts(|| format!("{}.length", field()), &a.address, len)?;
                    if cidr == Cidr::host(ip) {
                        vips.push(NetworkAddress::new(&a.network, ip));
                    } else {
                        cidr_vips.push(NetworkCidr {
                            network: a.network.clone(),
                            cidr,
                        });
                    }
                }
            }
        }

        let ports = port_list("service", &s.ports)?;

        let waypoint = s
            .waypoint
            .as_ref()
            .map(|g| GatewayAddress::from_proto("service.waypoint", g))
            .transpose()?;

        let weighted_waypoints = s
            .weighted_waypoints
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let field = format!("service.weightedWaypoints[{i}].destination");
                let destination = w
                    .destination
                    .as_ref()
                    .ok_or_else(|| ConversionError::Missing {
                        field: field.clone(),
                    })
                    .and_then(|g| GatewayAddress::from_proto(&field, g))?;
                Ok(WeightedWaypoint {
                    destination,
                    weight: w.weight,
                })
            })
            .collect::<Result<Vec<_>, ConversionError>>()?;

        let load_balancer = s.load_balancing.as_ref().map(load_balancer).transpose()?;

        let ip_families = match convert::enumeration::<pb::IpFamilies>(
            "service.ipFamilies",
            "IPFamilies",
            s.ip_families,
        )? {
            pb::IpFamilies::Automatic => None,
            pb::IpFamilies::Ipv4Only => Some(IpFamilies::IPv4),
            pb::IpFamilies::Ipv6Only => Some(IpFamilies::IPv6),
            pb::IpFamilies::Dual => Some(IpFamilies::Dual),
        };

        let visibility = match convert::enumeration::<pb::service::Visibility>(
            "service.visibility",
            "Service.Visibility",
            s.visibility,
        )? {
            pb::service::Visibility::Public => Visibility::Public,
            pb::service::Visibility::Namespace => Visibility::Namespace,
        };

        Ok(Service {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            hostname: s.hostname.clone(),
            vips,
            cidr_vips,
            ports,
            subject_alt_names: s.subject_alt_names.clone(),
            waypoint,
            weighted_waypoints,
            load_balancer,
            ip_families,
            canonical: s.canonical,
            visibility,
        })
    }
}

fn load_balancer(lb: &pb::LoadBalancing) -> Result<LoadBalancer, ConversionError> {
    use pb::load_balancing::{HealthPolicy, Mode, Scope};
    let routing_preferences = lb
        .routing_preference
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let field = format!("service.loadBalancing.routingPreference[{i}]");
            match convert::enumeration::<Scope>(&field, "LoadBalancing.Scope", *v)? {
                Scope::Region => Ok(LoadBalancerScope::Region),
                Scope::Zone => Ok(LoadBalancerScope::Zone),
                Scope::Subzone => Ok(LoadBalancerScope::Subzone),
                Scope::Node => Ok(LoadBalancerScope::Node),
                Scope::Cluster => Ok(LoadBalancerScope::Cluster),
                Scope::Network => Ok(LoadBalancerScope::Network),
                Scope::UnspecifiedScope => Err(ConversionError::Unsupported {
                    field,
                    value: "UNSPECIFIED_SCOPE",
                }),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mode = match convert::enumeration::<Mode>(
        "service.loadBalancing.mode",
        "LoadBalancing.Mode",
        lb.mode,
    )? {
        Mode::UnspecifiedMode => LoadBalancerMode::Standard,
        Mode::Strict => LoadBalancerMode::Strict,
        Mode::Failover => LoadBalancerMode::Failover,
        Mode::Passthrough => LoadBalancerMode::Passthrough,
    };
    let health_policy = match convert::enumeration::<HealthPolicy>(
        "service.loadBalancing.healthPolicy",
        "LoadBalancing.HealthPolicy",
        lb.health_policy,
    )? {
        HealthPolicy::OnlyHealthy => LoadBalancerHealthPolicy::OnlyHealthy,
        HealthPolicy::AllowAll => LoadBalancerHealthPolicy::AllowAll,
    };
    Ok(LoadBalancer {
        routing_preferences,
        mode,
        health_policy,
    })
}

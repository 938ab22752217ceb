//! Kubernetes Service → `istio.workload.Service`.
//!
//! | Service | Workload API |
//! |---|---|
//! | `metadata.name/namespace` | `name`, `namespace`, `hostname` = `<name>.<ns>.svc.<suffix>` |
//! | `spec.clusterIPs` (else `clusterIP`), minus `None` | `addresses` (tagged with the network) |
//! | `spec.ports[]` | `ports`: `service_port`, numeric `target_port` (0 when named), `app_protocol` |
//! | `spec.ipFamilies` | `ip_families`: 2 ⇒ `DUAL`, `IPv4` ⇒ `IPV4_ONLY`, `IPv6` ⇒ `IPV6_ONLY` |
//! | `internalTrafficPolicy: Local` | `load_balancing` `[NODE]` `STRICT` |
//! | traffic distribution `PreferClose`/`PreferSameZone` | `[NETWORK, REGION, ZONE]` `FAILOVER` |
//! | traffic distribution `PreferSameNode` | `[NETWORK, REGION, ZONE, SUBZONE, NODE]` `FAILOVER` |
//! | `publishNotReadyAddresses: true` | `health_policy: ALLOW_ALL` (alone or added) |
//!
//! Traffic distribution is `spec.trafficDistribution`, else the annotation
//! `networking.istio.io/traffic-distribution`; `internalTrafficPolicy: Local` overrides it.
//! `canonical` is always true for Kubernetes Services. `ExternalName` Services are not sent.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proto::istio::workload::{
    self as wl, AppProtocol, IpFamilies, LoadBalancing, NetworkAddress, Port, load_balancing,
};

use super::{Context, TranslateError};

/// Annotation istiod accepts in place of `spec.trafficDistribution`.
pub const TRAFFIC_DISTRIBUTION_ANNOTATION: &str = "networking.istio.io/traffic-distribution";

/// Translates one Service; `Ok(None)` when istiod does not send it (`ExternalName`).
pub(crate) fn convert(
    svc: &Service,
    ctx: &Context<'_>,
) -> Result<Option<wl::Service>, TranslateError> {
    let spec = svc.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(None);
    }
    let name = svc.metadata.name.clone().unwrap_or_default();
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();

    let ips = cluster_ips(&spec)
        .into_iter()
        .map(|ip| {
            ip.parse::<IpAddr>()
                .map_err(|_| TranslateError::InvalidClusterIp(ip.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let addresses = ips
        .iter()
        .map(|ip| NetworkAddress {
            network: ctx.network.clone(),
            address: ip_bytes(*ip),
            length: None,
        })
        .collect();

    let ports = spec.ports.iter().flatten().map(service_port).collect();

    Ok(Some(wl::Service {
        hostname: hostname(&name, &namespace, &ctx.options.domain_suffix),
        name,
        namespace,
        addresses,
        ports,
        load_balancing: load_balancing(svc),
        ip_families: ip_families(spec.ip_families.as_deref(), &ips) as i32,
        canonical: true,
        ..Default::default()
    }))
}

/// `<name>.<namespace>.svc.<suffix>`.
pub fn hostname(name: &str, namespace: &str, domain_suffix: &str) -> String {
    format!("{name}.{namespace}.svc.{domain_suffix}")
}

/// Raw bytes of an IP: 4 for IPv4, 16 for IPv6.
pub(crate) fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// `clusterIPs`, else `clusterIP`, without empty values and `None` (headless).
fn cluster_ips(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Vec<String> {
    let ips = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.clone(),
        _ => spec.cluster_ip.iter().cloned().collect(),
    };
    ips.into_iter()
        .filter(|ip| !ip.is_empty() && ip != "None")
        .collect()
}

/// The declared families; without them (no API server defaulting), the families of the VIPs.
pub(crate) fn ip_families(declared: Option<&[String]>, ips: &[IpAddr]) -> IpFamilies {
    match declared {
        Some([_, _]) => IpFamilies::Dual,
        Some([f]) if f == "IPv4" => IpFamilies::Ipv4Only,
        Some([_]) => IpFamilies::Ipv6Only,
        Some(_) => IpFamilies::Automatic,
        None => {
            let v4 = ips.iter().any(IpAddr::is_ipv4);
            let v6 = ips.iter().any(IpAddr::is_ipv6);
            match (v4, v6) {
                (true, true) => IpFamilies::Dual,
                (true, false) => IpFamilies::Ipv4Only,
                (false, true) => IpFamilies::Ipv6Only,
                (false, false) => IpFamilies::Automatic,
            }
        }
    }
}

fn service_port(p: &ServicePort) -> Port {
    let port = u32::try_from(p.port).unwrap_or_default();
    let target_port = match &p.target_port {
        None => port,
        Some(IntOrString::Int(t)) => u32::try_from(*t).unwrap_or_default(),
        Some(IntOrString::String(_)) => 0,
    };
    Port {
        service_port: port,
        target_port,
        app_protocol: app_protocol(p) as i32,
    }
}

/// Protocol selection as istiod's `ConvertProtocol`, reduced to what the Workload API carries:
/// UDP is never HTTP; `appProtocol` wins over the port name; the name (or value) is matched by
/// its prefix before the first `-`, case-insensitively. Only HTTP, HTTP2 and gRPC are sent;
/// everything else (TCP, TLS, HTTPS, gRPC-Web, Mongo, ...) is `UNKNOWN`, as istiod sends it.
fn app_protocol(p: &ServicePort) -> AppProtocol {
    if p.protocol.as_deref() == Some("UDP") {
        return AppProtocol::Unknown;
    }
    let name = match p.app_protocol.as_deref() {
        Some("kubernetes.io/h2c") => return AppProtocol::Http2,
        Some("kubernetes.io/ws") => return AppProtocol::Http11,
        Some("kubernetes.io/wss") => return AppProtocol::Unknown,
        Some(a) => a,
        None => p.name.as_deref().unwrap_or_default(),
    };
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("grpc-web") {
        return AppProtocol::Unknown;
    }
    let prefix = lower.split('-').next().unwrap_or_default();
    match prefix {
        "http" => AppProtocol::Http11,
        "http2" => AppProtocol::Http2,
        "grpc" => AppProtocol::Grpc,
        _ => AppProtocol::Unknown,
    }
}

fn load_balancing(svc: &Service) -> Option<LoadBalancing> {
    use load_balancing::{HealthPolicy, Mode, Scope};

    let spec = svc.spec.as_ref()?;
    let distribution = spec.traffic_distribution.clone().or_else(|| {
        svc.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TRAFFIC_DISTRIBUTION_ANNOTATION))
            .cloned()
    });
    let scopes = |s: &[Scope]| s.iter().map(|s| *s as i32).collect::<Vec<_>>();
    let mut lb = match distribution
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("preferclose" | "prefersamezone") => Some(LoadBalancing {
            routing_preference: scopes(&[Scope::Network, Scope::Region, Scope::Zone]),
            mode: Mode::Failover as i32,
            health_policy: HealthPolicy::OnlyHealthy as i32,
        }),
        Some("prefersamenode") => Some(LoadBalancing {
            routing_preference: scopes(&[
                Scope::Network,
                Scope::Region,
                Scope::Zone,
                Scope::Subzone,
                Scope::Node,
            ]),
            mode: Mode::Failover as i32,
            health_policy: HealthPolicy::OnlyHealthy as i32,
        }),
        _ => None,
    };
    if spec.internal_traffic_policy.as_deref() == Some("Local") {
        lb = Some(LoadBalancing {
            routing_preference: scopes(&[Scope::Node]),
            mode: Mode::Strict as i32,
            health_policy: HealthPolicy::OnlyHealthy as i32,
        });
    }
    if spec.publish_not_ready_addresses == Some(true) {
        lb.get_or_insert_with(LoadBalancing::default).health_policy = HealthPolicy::AllowAll as i32;
    }
    lb
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: Option<&str>, app: Option<&str>, proto: Option<&str>) -> ServicePort {
        ServicePort {
            name: name.map(str::to_owned),
            app_protocol: app.map(str::to_owned),
            protocol: proto.map(str::to_owned),
            port: 80,
            ..Default::default()
        }
    }

    #[test]
    fn app_protocol_table() {
        let cases = [
            (Some("http"), None, None, AppProtocol::Http11),
            (Some("http-web"), None, None, AppProtocol::Http11),
            (Some("HTTP-web"), None, None, AppProtocol::Http11),
            (Some("httpweb"), None, None, AppProtocol::Unknown),
            (Some("http2"), None, None, AppProtocol::Http2),
            (Some("grpc"), None, None, AppProtocol::Grpc),
            (Some("grpc-api"), None, None, AppProtocol::Grpc),
            (Some("grpc-web"), None, None, AppProtocol::Unknown),
            (Some("tcp"), None, None, AppProtocol::Unknown),
            (Some("tls"), None, None, AppProtocol::Unknown),
            (Some("https"), None, None, AppProtocol::Unknown),
            (Some("tcp"), Some("http"), None, AppProtocol::Http11),
            (Some("http"), Some("tcp"), None, AppProtocol::Unknown),
            (None, Some("kubernetes.io/h2c"), None, AppProtocol::Http2),
            (None, Some("kubernetes.io/ws"), None, AppProtocol::Http11),
            (Some("http"), None, Some("UDP"), AppProtocol::Unknown),
            (None, None, None, AppProtocol::Unknown),
        ];
        for (name, app, proto, want) in cases {
            assert_eq!(
                app_protocol(&port(name, app, proto)),
                want,
                "{name:?} {app:?} {proto:?}"
            );
        }
    }

    #[test]
    fn ip_family_table() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            ip_families(Some(&s(&["IPv4", "IPv6"])), &[]),
            IpFamilies::Dual
        );
        assert_eq!(
            ip_families(Some(&s(&["IPv4"])), &[v6]),
            IpFamilies::Ipv4Only
        );
        assert_eq!(ip_families(Some(&s(&["IPv6"])), &[]), IpFamilies::Ipv6Only);
        assert_eq!(ip_families(None, &[v4]), IpFamilies::Ipv4Only);
        assert_eq!(ip_families(None, &[v4, v6]), IpFamilies::Dual);
        assert_eq!(ip_families(None, &[]), IpFamilies::Automatic);
    }
}

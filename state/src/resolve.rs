//! Outbound destination selection: decide what to do with a connection captured on 15001.
//!
//! [`resolve_outbound`] is pure (a mesh view, the source workload, the original destination and
//! an injected RNG in; a [`Decision`] out), following Istio ztunnel's algorithm:
//!
//! 1. loopback destination on an illegal port (15001/15006/15008) ⇒ [`Decision::Refused`];
//! 2. service VIP (exact, then CIDR; client namespace, preferred namespace, canonical, first;
//!    visibility honoured): a service waypoint (`weightedWaypoints` sampled by weight, else
//!    `waypoint`) ⇒ [`Decision::ViaWaypoint`] with `:authority` = the original destination;
//!    mode `Passthrough` ⇒ [`Decision::Passthrough`]; port not declared or no eligible endpoint
//!    ⇒ [`Decision::NoHealthyUpstream`]; else an endpoint picked by [`crate::lb`];
//! 3. workload IP ⇒ that workload, port unchanged; if it has a waypoint and the source is not
//!    that waypoint ⇒ [`Decision::ViaWaypoint`];
//!    a waypoint whose chosen instance is on another network behind a gateway ⇒
//!    [`Decision::ViaNetworkGateway`] with the addressed service's hostname (inner identities:
//!    the waypoint service's SANs; without a service to name ⇒ [`Decision::UnknownWaypoint`]);
//! 4. the chosen upstream: on another network behind a gateway ⇒
//!    [`Decision::ViaNetworkGateway`]; an address of the right family (the original IP if the
//!    workload owns it) else its hostname ⇒ [`Decision::NeedsDns`]; HBONE ⇒ [`Decision::Hbone`]
//!    to `<ip>:15008` with the expected identities; plain ⇒ [`Decision::Tcp`];
//! 5. nothing found ⇒ [`Decision::Passthrough`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hbone::Identity;
use rand::Rng;
use rand::seq::IndexedRandom;

use crate::lb;
use crate::model::{
    GatewayAddress, GatewayDestination, IpFamilies, LoadBalancerMode, Service, TunnelProtocol,
    Workload,
};
use crate::store::MeshView;

#[cfg(test)]
mod tests;

/// The HBONE port every workload accepts tunnels on.
pub const HBONE_PORT: u16 = 15008;

/// Ports a connection to loopback must never be proxied to (the proxy's own listeners).
pub const ILLEGAL_PORTS: [u16; 3] = [15001, 15006, HBONE_PORT];

/// What the destination is, for metrics labels and access logs (`destination_service*` from the
/// service, `destination_workload`, canonical names, principal, cluster from the workload).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationInfo {
    /// The service the client addressed (by VIP), if any.
    pub service: Option<Arc<Service>>,
    /// The workload the connection goes to (for waypoints: the final workload if addressed
    /// directly, `None` when addressed by VIP).
    pub workload: Option<Arc<Workload>>,
}

/// A resolved waypoint or network gateway instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayTarget {
    pub workload: Arc<Workload>,
    /// The gateway's service when it was addressed by hostname or VIP.
    pub service: Option<Arc<Service>>,
    /// `<gateway ip>:<hbone_mtls_port>`.
    pub hbone_addr: SocketAddr,
    /// Gateway workload identity + gateway service SANs.
    pub expected_identities: Vec<Identity>,
}

/// What to do with an outbound connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Never proxy (loopback destination on one of the proxy's own ports).
    Refused { reason: String },
    /// Unknown destination (or a `Passthrough` service): plain TCP to the original destination.
    Passthrough { target: SocketAddr },
    /// A service VIP with no usable endpoint: close the connection.
    NoHealthyUpstream { service: Arc<Service>, port: u16 },
    /// The waypoint named by the service or workload could not be resolved: close.
    UnknownWaypoint { waypoint: GatewayAddress },
    /// HBONE to a waypoint with `:authority` = the original destination.
    ViaWaypoint {
        waypoint: GatewayAddress,
        gateway: GatewayTarget,
        authority: SocketAddr,
        dest: DestinationInfo,
    },
    /// Double HBONE through the upstream's network gateway: outer tunnel to `gateway`, inner
    /// `:authority` = `authority` (`<service hostname>:<service port>`), inner expected
    /// identities = the service's SANs only.
    ViaNetworkGateway {
        gateway: GatewayTarget,
        authority: String,
        inner_expected_identities: Vec<Identity>,
        dest: DestinationInfo,
    },
    /// The upstream has no usable IP: resolve `hostname` on demand, then connect to `port`.
    NeedsDns {
        hostname: String,
        port: u16,
        dest: DestinationInfo,
    },
    /// HBONE: TCP to `hbone_addr`, CONNECT `target`, verify one of `expected_identities`.
    Hbone {
        target: SocketAddr,
        hbone_addr: SocketAddr,
        expected_identities: Vec<Identity>,
        dest: DestinationInfo,
    },
    /// Plain TCP to `target`.
    Tcp {
        target: SocketAddr,
        dest: DestinationInfo,
    },
}

/// Decides how to handle a connection from `source` to the original destination `dst`.
pub fn resolve_outbound<R: Rng + ?Sized>(
    view: &MeshView<'_>,
    source: &Workload,
    dst: SocketAddr,
    rng: &mut R,
) -> Decision {
    if dst.ip().is_loopback() && ILLEGAL_PORTS.contains(&dst.port()) {
        return Decision::Refused {
            reason: format!("{dst} is a loopback address on a proxy port"),
        };
    }

    if let Some(svc) = view.service_by_vip(&source.network, dst.ip(), &source.namespace) {
        if let Some(waypoint) = service_waypoint(&svc, rng) {
            let dest = DestinationInfo {
                service: Some(svc.clone()),
                workload: None,
            };
            return via_waypoint(view, source, waypoint, dst, dest, rng);
        }
        if svc.lb_mode() == LoadBalancerMode::Passthrough {
            return Decision::Passthrough { target: dst };
        }
        if !svc.ports.contains_key(&dst.port()) {
            return Decision::NoHealthyUpstream {
                service: svc,
                port: dst.port(),
            };
        }
        let endpoints = view.endpoint_workloads(&svc.key());
        let Some(picked) = lb::pick_endpoint(source, &svc, dst.port(), &endpoints, rng) else {
            return Decision::NoHealthyUpstream {
                service: svc,
                port: dst.port(),
            };
        };
        return upstream(
            view,
            source,
            picked.workload,
            Some(svc),
            dst,
            picked.target_port,
            rng,
        );
    }

    if let Some(wl) = view.workload_by_ip(&source.network, dst.ip()) {
        if let Some(waypoint) = &wl.waypoint
            && !source_is_waypoint(view, source, waypoint)
        {
            let dest = DestinationInfo {
                service: None,
                workload: Some(wl.clone()),
            };
            return via_waypoint(view, source, waypoint.clone(), dst, dest, rng);
        }
        return upstream(view, source, wl, None, dst, dst.port(), rng);
    }

    Decision::Passthrough { target: dst }
}

/// The service's waypoint for this connection: weighted choice among `weighted_waypoints`
/// (weight 0 never chosen), else `waypoint`.
pub fn service_waypoint<R: Rng + ?Sized>(svc: &Service, rng: &mut R) -> Option<GatewayAddress> {
    if !svc.weighted_waypoints.is_empty()
        && let Ok(w) = svc.weighted_waypoints.choose_weighted(rng, |w| w.weight)
    {
        return Some(w.destination.clone());
    }
    svc.waypoint.clone()
}

fn via_waypoint<R: Rng + ?Sized>(
    view: &MeshView<'_>,
    source: &Workload,
    waypoint: GatewayAddress,
    authority: SocketAddr,
    dest: DestinationInfo,
    rng: &mut R,
) -> Decision {
    let Some((wp_svc, instance)) = pick_gateway_instance(view, source, &waypoint, rng) else {
        return Decision::UnknownWaypoint { waypoint };
    };
    // A waypoint instance on another network is reached through that network's gateway, by the
    // hostname of the service the client addressed (as Istio does; a workload-addressed
    // destination has no hostname to give the gateway).
    if instance.network != source.network
        && let Some(gw) = &instance.network_gateway
    {
        let Some(service) = &dest.service else {
            return Decision::UnknownWaypoint { waypoint };
        };
        let authority = format!("{}:{}", service.hostname, authority.port());
        let inner_expected_identities = wp_svc.iter().flat_map(|s| s.sans()).collect();
        return match resolve_gateway(view, source, gw, rng) {
            Some(gateway) => Decision::ViaNetworkGateway {
                gateway,
                authority,
                inner_expected_identities,
                dest,
            },
            None => Decision::UnknownWaypoint {
                waypoint: gw.clone(),
            },
        };
    }
    match gateway_target(wp_svc, instance, &waypoint) {
        Some(gateway) => Decision::ViaWaypoint {
            waypoint,
            gateway,
            authority,
            dest,
        },
        None => Decision::UnknownWaypoint { waypoint },
    }
}

/// The final step for a chosen upstream workload.
fn upstream<R: Rng + ?Sized>(
    view: &MeshView<'_>,
    source: &Workload,
    wl: Arc<Workload>,
    svc: Option<Arc<Service>>,
    dst: SocketAddr,
    port: u16,
    rng: &mut R,
) -> Decision {
    let sans: Vec<Identity> = svc.iter().flat_map(|s| s.sans()).collect();
    let dest = DestinationInfo {
        service: svc.clone(),
        workload: Some(wl.clone()),
    };

    if wl.network != source.network
        && let Some(gw) = &wl.network_gateway
    {
        let authority = match &svc {
            Some(s) => format!("{}:{}", s.hostname, dst.port()),
            None => dst.to_string(),
        };
        return match resolve_gateway(view, source, gw, rng) {
            Some(gateway) => Decision::ViaNetworkGateway {
                gateway,
                authority,
                inner_expected_identities: sans,
                dest,
            },
            None => Decision::UnknownWaypoint {
                waypoint: gw.clone(),
            },
        };
    }

    let families = svc.as_ref().and_then(|s| s.ip_families);
    let Some(ip) = pick_ip(&wl, dst.ip(), families) else {
        if !wl.hostname.is_empty() {
            return Decision::NeedsDns {
                hostname: wl.hostname.clone(),
                port,
                dest,
            };
        }
        return match svc {
            Some(service) => Decision::NoHealthyUpstream {
                service,
                port: dst.port(),
            },
            None => Decision::Passthrough { target: dst },
        };
    };

    connect_to(&wl, sans, ip, port, dest)
}

/// The decision for a [`Decision::NeedsDns`] once the hostname resolved to `ip`: as for a
/// workload with that address (HBONE to `<ip>:15008` expecting the workload's and the service's
/// identities, or plain TCP to `<ip>:<port>`).
pub fn resolved(ip: IpAddr, port: u16, dest: DestinationInfo) -> Option<Decision> {
    let wl = dest.workload.clone()?;
    let sans = dest.service.iter().flat_map(|s| s.sans()).collect();
    Some(connect_to(&wl, sans, ip, port, dest))
}

fn connect_to(
    wl: &Workload,
    sans: Vec<Identity>,
    ip: IpAddr,
    port: u16,
    dest: DestinationInfo,
) -> Decision {
    let target = SocketAddr::new(ip, port);
    match wl.protocol {
        TunnelProtocol::Hbone => {
            let mut expected_identities = vec![wl.identity.clone()];
            expected_identities.extend(sans.into_iter().filter(|s| *s != wl.identity));
            Decision::Hbone {
                target,
                hbone_addr: SocketAddr::new(ip, HBONE_PORT),
                expected_identities,
                dest,
            }
        }
        TunnelProtocol::Tcp => Decision::Tcp { target, dest },
    }
}

/// The address to dial on `wl`: the original IP if the workload owns it, else its first address
/// of the same family, else its first address; each filtered by the service's IP families.
pub fn pick_ip(wl: &Workload, original: IpAddr, families: Option<IpFamilies>) -> Option<IpAddr> {
    let ok = |ip: &IpAddr| families.is_none_or(|f| f.accepts(*ip));
    if wl.addresses.contains(&original) && ok(&original) {
        return Some(original);
    }
    wl.addresses
        .iter()
        .find(|ip| ip.is_ipv4() == original.is_ipv4() && ok(ip))
        .or_else(|| wl.addresses.iter().find(|ip| ok(ip)))
        .copied()
}

/// Every workload that may serve a gateway address (all endpoints of a gateway service, or the
/// single workload it names).
pub fn gateway_workloads(
    view: &MeshView<'_>,
    source: &Workload,
    gw: &GatewayAddress,
) -> (Option<Arc<Service>>, Vec<Arc<Workload>>) {
    match &gw.destination {
        GatewayDestination::Hostname(h) => {
            if let Some(svc) = view.service(&h.namespace, &h.hostname) {
                let wls = view
                    .endpoint_workloads(&svc.key())
                    .into_iter()
                    .map(|(w, _)| w)
                    .collect();
                return (Some(svc), wls);
            }
            let wls = view.workloads_by_hostname(&h.namespace, &h.hostname);
            (None, wls)
        }
        GatewayDestination::Address(a) => {
            if let Some(svc) = view.service_by_vip(&a.network, a.address, &source.namespace) {
                let wls = view
                    .endpoint_workloads(&svc.key())
                    .into_iter()
                    .map(|(w, _)| w)
                    .collect();
                return (Some(svc), wls);
            }
            let wls = view
                .workload_by_ip(&a.network, a.address)
                .into_iter()
                .collect();
            (None, wls)
        }
    }
}

/// Resolves a waypoint or network gateway to one instance: a gateway service is load-balanced
/// with "service port" = `hbone_mtls_port`; a workload is used directly.
pub fn resolve_gateway<R: Rng + ?Sized>(
    view: &MeshView<'_>,
    source: &Workload,
    gw: &GatewayAddress,
    rng: &mut R,
) -> Option<GatewayTarget> {
    let (svc, workload) = pick_gateway_instance(view, source, gw, rng)?;
    gateway_target(svc, workload, gw)
}

/// One instance of a waypoint or gateway (with its service when addressed through one).
fn pick_gateway_instance<R: Rng + ?Sized>(
    view: &MeshView<'_>,
    source: &Workload,
    gw: &GatewayAddress,
    rng: &mut R,
) -> Option<(Option<Arc<Service>>, Arc<Workload>)> {
    let (svc, workloads) = gateway_workloads(view, source, gw);
    let workload = match &svc {
        Some(svc) => {
            let endpoints = view.endpoint_workloads(&svc.key());
            lb::pick_endpoint(source, svc, gw.hbone_mtls_port, &endpoints, rng)?.workload
        }
        None => workloads.into_iter().next()?,
    };
    Some((svc, workload))
}

/// The dial target and expected identities of a chosen instance.
fn gateway_target(
    svc: Option<Arc<Service>>,
    workload: Arc<Workload>,
    gw: &GatewayAddress,
) -> Option<GatewayTarget> {
    let families = svc.as_ref().and_then(|s| s.ip_families);
    let ip = match &gw.destination {
        GatewayDestination::Address(a) => pick_ip(&workload, a.address, families)?,
        GatewayDestination::Hostname(_) => {
            let first = *workload.addresses.first()?;
            pick_ip(&workload, first, families)?
        }
    };
    let mut expected_identities = vec![workload.identity.clone()];
    if let Some(svc) = &svc {
        expected_identities.extend(svc.sans().filter(|s| *s != workload.identity));
    }
    Some(GatewayTarget {
        workload,
        service: svc,
        hbone_addr: SocketAddr::new(ip, gw.hbone_mtls_port),
        expected_identities,
    })
}

/// Whether `source` is one of the workloads behind `waypoint` (same identity and sharing an
/// IP), in which case traffic it sends must not be looped back through the waypoint.
pub fn source_is_waypoint(
    view: &MeshView<'_>,
    source: &Workload,
    waypoint: &GatewayAddress,
) -> bool {
    let (_, workloads) = gateway_workloads(view, source, waypoint);
    workloads.iter().any(|w| {
        w.identity == source.identity && w.addresses.iter().any(|ip| source.addresses.contains(ip))
    })
}

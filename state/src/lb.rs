//! Endpoint selection for a service (pure functions; the RNG is injected).
//!
//! [`pick_endpoint`] follows Istio ztunnel's order:
//! 1. health: unhealthy endpoints are dropped unless the service's health policy is `AllowAll`;
//! 2. reachability: endpoints with neither an IP nor a hostname are dropped unless they sit on
//!    another network behind a network gateway;
//! 3. port: the target port is the endpoint's own mapping for the service port, else the
//!    service's target port, else (endpoint with an application tunnel) the service port;
//!    endpoints left without a target port (named port `0` not mapped) are dropped;
//! 4. locality ([`rank`]), for `Strict` and `Failover` modes only: `Strict` drops endpoints
//!    that do not match every routing preference; then only the best rank is kept;
//! 5. a random pick weighted by `capacity` (0 = never picked).

use std::sync::Arc;

use rand::Rng;
use rand::seq::IndexedRandom;

use crate::model::{
    LoadBalancerHealthPolicy, LoadBalancerMode, LoadBalancerScope, PortMap, Service, Workload,
};

#[cfg(test)]
mod tests;

/// The endpoint chosen for a connection and the port to reach it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked {
    pub workload: Arc<Workload>,
    pub target_port: u16,
}

/// The target port of one endpoint for `service_port`, or `None` if it has none.
pub fn target_port(
    service: &Service,
    service_port: u16,
    workload: &Workload,
    endpoint_ports: &PortMap,
) -> Option<u16> {
    endpoint_ports
        .get(&service_port)
        .copied()
        .filter(|p| *p != 0)
        .or_else(|| {
            service
                .ports
                .get(&service_port)
                .copied()
                .filter(|p| *p != 0)
        })
        .or_else(|| workload.application_tunnel.map(|_| service_port))
}

/// Locality rank of `endpoint` seen from `source` under `preferences`, and whether every
/// preference matched.
///
/// The walk counts consecutive matching scopes from the first and stops at the first mismatch.
/// Special case when the first scope is `Network`: a network match adds `len − 1` (at least 1)
/// and a network mismatch does not stop the walk, so same-network endpoints are preferred
/// without making locality meaningless across networks.
pub fn rank(
    preferences: &[LoadBalancerScope],
    source: &Workload,
    endpoint: &Workload,
) -> (usize, bool) {
    let mut rank = 0;
    let mut all = true;
    let mut walking = true;
    for (i, scope) in preferences.iter().enumerate() {
        let matched = scope_matches(*scope, source, endpoint);
        all &= matched;
        if i == 0 && *scope == LoadBalancerScope::Network {
            if matched {
                rank += (preferences.len() - 1).max(1);
            }
            continue;
        }
        if walking {
            if matched {
                rank += 1;
            } else {
                walking = false;
            }
        }
    }
    (rank, all)
}

fn scope_matches(scope: LoadBalancerScope, a: &Workload, b: &Workload) -> bool {
    match scope {
        LoadBalancerScope::Region => a.locality.region == b.locality.region,
        LoadBalancerScope::Zone => a.locality.zone == b.locality.zone,
        LoadBalancerScope::Subzone => a.locality.subzone == b.locality.subzone,
        LoadBalancerScope::Node => a.node == b.node,
        LoadBalancerScope::Cluster => a.cluster_id == b.cluster_id,
        LoadBalancerScope::Network => a.network == b.network,
    }
}

/// The endpoints eligible for `service_port` after health, reachability, port and locality
/// filtering (steps 1–4), each with its target port. Deterministic; [`pick_endpoint`] adds the
/// weighted random choice.
pub fn candidates(
    source: &Workload,
    service: &Service,
    service_port: u16,
    endpoints: &[(Arc<Workload>, PortMap)],
) -> Vec<Picked> {
    let allow_unhealthy = service.health_policy() == LoadBalancerHealthPolicy::AllowAll;
    let eligible = endpoints.iter().filter_map(|(w, ports)| {
        if !allow_unhealthy && !w.is_healthy() {
            return None;
        }
        let addressable = !w.addresses.is_empty() || !w.hostname.is_empty();
        let behind_gateway = w.network != source.network && w.network_gateway.is_some();
        if !addressable && !behind_gateway {
            return None;
        }
        let target_port = target_port(service, service_port, w, ports)?;
        Some(Picked {
            workload: w.clone(),
            target_port,
        })
    });

    let lb = service.load_balancer.as_ref();
    match lb.map(|lb| lb.mode) {
        Some(LoadBalancerMode::Strict | LoadBalancerMode::Failover) => {
            let lb = lb.expect("mode came from it");
            let ranked: Vec<(usize, Picked)> = eligible
                .filter_map(|p| {
                    let (r, all) = rank(&lb.routing_preferences, source, &p.workload);
                    (lb.mode != LoadBalancerMode::Strict || all).then_some((r, p))
                })
                .collect();
            let best = ranked.iter().map(|(r, _)| *r).max().unwrap_or(0);
            ranked
                .into_iter()
                .filter(|(r, _)| *r == best)
                .map(|(_, p)| p)
                .collect()
        }
        _ => eligible.collect(),
    }
}

/// Picks one endpoint of `service` for `service_port`, or `None` when nothing is eligible.
pub fn pick_endpoint<R: Rng + ?Sized>(
    source: &Workload,
    service: &Service,
    service_port: u16,
    endpoints: &[(Arc<Workload>, PortMap)],
    rng: &mut R,
) -> Option<Picked> {
    let options = candidates(source, service, service_port, endpoints);
    options
        .choose_weighted(rng, |p| p.workload.capacity)
        .ok()
        .cloned()
}

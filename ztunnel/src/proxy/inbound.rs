//! Inbound HBONE (15008): one CONNECT stream per proxied connection.
//!
//! The `hbone` server has already verified the client certificate (trust domain), the method
//! (400) and the authority syntax (400). Per stream, [`decide_inbound`] applies the remaining
//! checks in Istio's order without I/O:
//!
//! 1. the connection must have arrived on an address of the local workload (503);
//! 2. destination validation: the authority IP must be that address, unless the workload has
//!    an application tunnel or the authority IP is a service/workload whose waypoint is the
//!    local workload (400);
//! 3. port resolution (hostname authority: the service's port map, 503 if unknown) and the
//!    illegal-port check (503);
//! 4. RBAC with the peer identity, the HBONE peer's IP as source and the target port (401).
//!
//! Then [`handle`] connects to `<local ip>:<port>` with the client's IP as source when allowed
//! (503 on failure), answers 200 (with the destination's `baggage` when enabled), and copies.
//! A workload with a PROXY application tunnel is reached as [`super::app_tunnel`] decides,
//! with the PROXY v2 header written before the payload.
//! Request baggage is only used for telemetry, when the source is not found by IP.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use hbone::headers::RequestMeta;
use hbone::{Authority, Identity, InboundRequest};
use state::model::GatewayAddress;
use state::{AuthzDecision, ConnectionInfo, MeshView, Service, Workload};
use tracing::{Instrument, debug, info};

use super::app_tunnel::{self, AppTunnel};
use super::error::ProxyError;
use super::io::{ByteCounts, Counted, Side};
use super::telemetry::{ConnectionContext, Direction, PeerInfo, SecurityPolicy, ServiceInfo};
use super::tracker::AuthzSubject;
use super::{ProxyCtx, baggage_of, close_requested};
use crate::socket::canonical;

/// The facts of one CONNECT stream that the decision depends on.
#[derive(Debug, Clone)]
pub struct InboundFacts<'a> {
    pub peer_identity: Option<&'a Identity>,
    /// The HBONE connection's peer (canonical).
    pub peer: SocketAddr,
    /// The address the HBONE connection arrived on (canonical).
    pub local: SocketAddr,
    pub authority: &'a Authority,
}

/// What to do with an inbound stream that passed the early checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundPlan {
    /// `<local ip>:<target port>`.
    pub upstream: SocketAddr,
    /// The service named by a hostname authority.
    pub service: Option<Arc<Service>>,
    /// What authorization was (and will again be) evaluated on.
    pub subject: AuthzSubject,
    /// `Some(reason)` when RBAC denies (401, flag `DENY`).
    pub denied: Option<String>,
}

/// Applies the checks of the module docs. `Err` = rejected before authorization (logged as
/// `connection failed`, answered with [`ProxyError::http_status`]).
pub fn decide_inbound(
    view: &MeshView<'_>,
    local: &Workload,
    network: &str,
    illegal_ports: &[u16],
    facts: &InboundFacts<'_>,
) -> Result<InboundPlan, ProxyError> {
    let local_ip = facts.local.ip();
    if !local.addresses.contains(&local_ip) {
        return Err(ProxyError::NotLocal {
            ip: local_ip,
            uid: local.uid.clone(),
        });
    }
    let (port, service) = match facts.authority {
        Authority::Socket(addr) => {
            let target_ip = addr.ip();
            let valid = target_ip == local_ip
                || local.application_tunnel.is_some()
                || waypoint_is_local(view, local, network, target_ip);
            if !valid {
                return Err(ProxyError::BadDestination {
                    authority: facts.authority.to_string(),
                    local: local_ip,
                });
            }
            (addr.port(), None)
        }
        Authority::Host { host, port } => {
            let unresolved = || ProxyError::UnresolvedTarget {
                authority: facts.authority.to_string(),
            };
            let svc = view
                .service_by_hostname(host, &local.namespace)
                .ok_or_else(unresolved)?;
            let target = target_port(local, &svc, *port).ok_or_else(unresolved)?;
            (target, Some(svc))
        }
    };
    let upstream = SocketAddr::new(local_ip, port);
    if illegal_ports.contains(&port) {
        return Err(ProxyError::IllegalPort { dst: upstream });
    }
    let subject = AuthzSubject {
        src_identity: facts.peer_identity.cloned(),
        src_ip: facts.peer.ip(),
        dst_ip: local_ip,
        dst_port: port,
        dst_workload_uid: local.uid.clone(),
    };
    let denied = authorize(view, local, &subject);
    Ok(InboundPlan {
        upstream,
        service,
        subject,
        denied,
    })
}

/// RBAC for `subject` against `local`'s policies: `Some(reason)` when denied.
pub fn authorize(view: &MeshView<'_>, local: &Workload, subject: &AuthzSubject) -> Option<String> {
    let info = ConnectionInfo {
        src_identity: subject.src_identity.clone(),
        src_ip: subject.src_ip,
        dst_ip: subject.dst_ip,
        dst_port: subject.dst_port,
        dst_workload: local,
    };
    match state::authz::authorize_in(view, &info).decision {
        AuthzDecision::Allow => None,
        AuthzDecision::Deny { reason } => Some(reason),
    }
}

/// The target port for service port `port` of `svc` on `local`: the workload's own mapping,
/// else the service's numeric target port.
fn target_port(local: &Workload, svc: &Service, port: u16) -> Option<u16> {
    let own = local
        .services
        .get(&svc.key())
        .and_then(|m| m.get(&port))
        .copied()
        .filter(|p| *p != 0);
    own.or_else(|| svc.ports.get(&port).copied().filter(|p| *p != 0))
}

/// Whether `ip` is a service or workload whose waypoint is the local workload.
fn waypoint_is_local(view: &MeshView<'_>, local: &Workload, network: &str, ip: IpAddr) -> bool {
    let is_local = |gw: &GatewayAddress| {
        state::resolve::gateway_workloads(view, local, gw)
            .1
            .iter()
            .any(|w| w.uid == local.uid)
    };
    if let Some(svc) = view.service_by_vip(network, ip, &local.namespace) {
        return svc.waypoint.iter().any(is_local)
            || svc
                .weighted_waypoints
                .iter()
                .any(|w| is_local(&w.destination));
    }
    view.workload_by_ip(network, ip)
        .is_some_and(|w| w.waypoint.as_ref().is_some_and(is_local))
}

/// The service an inbound connection is attributed to: the `forwarded` `host=` among the local
/// workload's services, else the first whose target port is `port`.
pub fn inbound_service(
    view: &MeshView<'_>,
    local: &Workload,
    host: Option<&str>,
    port: u16,
) -> Option<Arc<Service>> {
    let services = view.services_of(local);
    if let Some(host) = host
        && let Some(s) = services.iter().find(|s| s.hostname == host)
    {
        return Some(s.clone());
    }
    services.into_iter().find(|s| {
        s.ports
            .keys()
            .any(|p| target_port(local, s, *p) == Some(port))
    })
}

/// The telemetry context of an inbound HBONE stream.
pub fn inbound_context(
    view: &MeshView<'_>,
    local: &Workload,
    network: &str,
    response_baggage: bool,
    facts: &InboundFacts<'_>,
    meta: &RequestMeta,
    plan: &InboundPlan,
) -> ConnectionContext {
    let same_network = meta
        .forwarded_network
        .as_deref()
        .is_none_or(|n| n.eq_ignore_ascii_case(network));
    let source = same_network
        .then(|| view.workload_by_ip(network, facts.peer.ip()))
        .flatten()
        .map(|w| PeerInfo::from(&*w))
        .or_else(|| {
            response_baggage
                .then(|| meta.baggage.as_ref().map(PeerInfo::from))
                .flatten()
        });
    let host = meta.forwarded.as_ref().and_then(|f| f.host.as_deref());
    let service = plan
        .service
        .clone()
        .or_else(|| inbound_service(view, local, host, plan.upstream.port()));
    ConnectionContext {
        direction: Direction::Inbound,
        src_addr: facts.peer,
        dst_addr: facts.local,
        hbone_target: Some(facts.authority.to_string()),
        source,
        source_identity: facts.peer_identity.cloned(),
        destination: Some(PeerInfo::from(local)),
        destination_identity: Some(local.identity.clone()),
        destination_service: service.as_deref().map(ServiceInfo::from),
        security: SecurityPolicy::MutualTls,
    }
}

/// The `hbone::Handler` body: one CONNECT stream.
pub(crate) fn handle(
    ctx: Arc<ProxyCtx>,
    req: InboundRequest,
) -> impl Future<Output = ()> + Send + 'static {
    let span = tracing::debug_span!("inbound", peer = %canonical(req.peer_addr),
        authority = %req.authority);
    handle_stream(ctx, req).instrument(span)
}

async fn handle_stream(ctx: Arc<ProxyCtx>, req: InboundRequest) {
    let started = Instant::now();
    let peer = canonical(req.peer_addr);
    let local_addr = canonical(req.local_addr);
    let local = match ctx.local_workload().await {
        Ok(w) => w,
        Err(e) => {
            ctx.failed(Direction::Inbound, peer, Some(local_addr), &e);
            req.reject(e.http_status());
            return;
        }
    };
    let meta = RequestMeta::from_headers(&req.headers);
    let facts = InboundFacts {
        peer_identity: Some(&req.peer_identity),
        peer,
        local: local_addr,
        authority: &req.authority,
    };
    let decided = {
        let view = ctx.state.read();
        let s = &ctx.settings;
        decide_inbound(&view, &local, &s.network, &s.illegal_ports, &facts).map(|plan| {
            let tunnel =
                app_tunnel::decide(&local, &s.network, s.localhost_app_tunnel, &facts, &plan);
            let conn = inbound_context(
                &view,
                &local,
                &s.network,
                s.response_baggage,
                &facts,
                &meta,
                &plan,
            );
            (plan, tunnel, conn)
        })
    };
    let (plan, tunnel, conn) = match decided {
        Ok(d) => d,
        Err(e) => {
            ctx.failed(Direction::Inbound, peer, Some(local_addr), &e);
            req.reject(e.http_status());
            return;
        }
    };
    log_authz(&ctx, &plan);
    ctx.telemetry.opened(&conn);
    let counts = ByteCounts::default();
    if let Some(reason) = plan.denied {
        let e = ProxyError::Denied { reason };
        req.reject(e.http_status());
        ctx.closed(&conn, started, &counts, &Err(e));
        return;
    }
    let mut reg = ctx.tracker.register(Some(plan.subject.clone()));
    let counts = Arc::new(counts);
    let result = tokio::select! {
        r = proxy(&ctx, req, &plan, tunnel, &local, &counts) => r,
        e = close_requested(&mut reg) => Err(e),
    };
    ctx.closed(&conn, started, &counts, &result);
}

fn log_authz(ctx: &ProxyCtx, plan: &InboundPlan) {
    let s = &plan.subject;
    let decision = plan.denied.as_deref().unwrap_or("allow");
    if ctx.settings.authz_info_logging {
        info!(src = %s.src_ip, identity = ?s.src_identity, port = s.dst_port, decision,
            "authorization decision");
    } else {
        debug!(src = %s.src_ip, identity = ?s.src_identity, port = s.dst_port, decision,
            "authorization decision");
    }
}

async fn proxy(
    ctx: &ProxyCtx,
    req: InboundRequest,
    plan: &InboundPlan,
    tunnel: Option<AppTunnel>,
    local: &Workload,
    counts: &Arc<ByteCounts>,
) -> Result<(), ProxyError> {
    let target = tunnel.as_ref().map_or(plan.upstream, |t| t.upstream);
    // An application tunnel to the app's loopback is made from our own loopback address.
    let connected = if tunnel.is_some() && target.ip().is_loopback() {
        ctx.connector.connect(target).await
    } else {
        ctx.connector.connect_as(target, plan.subject.src_ip).await
    };
    let upstream = match connected {
        Ok(s) => s,
        Err(e) => {
            req.reject(e.http_status());
            return Err(e);
        }
    };
    let mut headers = http::HeaderMap::new();
    if ctx.settings.response_baggage
        && let Some(v) = baggage_of(local).to_header_value()
    {
        headers.insert(http::header::HeaderName::from_static("baggage"), v);
    }
    let stream = req
        .accept(headers)
        .map_err(|e| ProxyError::Respond(e.to_string()))?;
    let mut upstream = upstream;
    if let Some(t) = &tunnel {
        use tokio::io::AsyncWriteExt;
        upstream
            .write_all(&t.header.encode())
            .await
            .map_err(ProxyError::Io)?;
    }
    let (r, w) = upstream.split();
    hbone::copy_bidirectional(
        Counted::new(r, counts.clone(), Side::Server),
        Counted::new(w, counts.clone(), Side::Server),
        stream,
    )
    .await
    .map_err(ProxyError::Io)?;
    Ok(())
}

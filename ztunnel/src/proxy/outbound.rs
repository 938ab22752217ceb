//! Outbound (15001): connections the application opened, captured by the redirect rules.
//!
//! The decision is made by [`state::resolve_outbound`]; [`plan_outbound`] turns it into an
//! [`OutboundPlan`] (what to dial, with which headers and expected identities, and the
//! telemetry context) without I/O, and [`connect_request`] builds the HBONE request. Then
//! [`handle`] does the I/O.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hbone::headers::{Forwarded, TraceParent, X_FORWARDED_NETWORK, apply_request_headers};
use hbone::{ConnectRequest, Identity};
use state::{Decision, DestinationInfo, Workload};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::debug;

use super::error::ProxyError;
use super::io::{ByteCounts, Counted, Side, close_gracefully};
use super::telemetry::{ConnectionContext, Direction, PeerInfo, SecurityPolicy, ServiceInfo};
use super::{ProxyCtx, baggage_of, close_requested};
use crate::socket::canonical;

/// How to carry one outbound connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundRoute {
    /// Plain TCP to `target` (passthrough, or a non-HBONE workload).
    Tcp { target: SocketAddr },
    /// An HBONE tunnel.
    Hbone {
        /// `<ip>:15008` of the destination (or its waypoint).
        hbone_addr: SocketAddr,
        /// The CONNECT `:authority`.
        authority: String,
        /// Identities the server may present.
        expected: Vec<Identity>,
        /// `host=` of the `forwarded` header (the service the client addressed).
        forwarded_host: Option<String>,
    },
    /// Double HBONE through the network gateway of the upstream's network.
    DoubleHbone {
        /// `<gateway ip>:<hbone_mtls_port>`.
        gateway_addr: SocketAddr,
        /// `<service hostname>:<service port>`, on both CONNECTs.
        authority: String,
        /// The gateway's identities (outer handshake).
        gateway_expected: Vec<Identity>,
        /// The service's SANs (inner handshake, with the final hop).
        expected: Vec<Identity>,
        forwarded_host: Option<String>,
    },
    /// Close the application's connection.
    Fail(OutboundFailure),
}

/// Why an outbound connection is closed without being proxied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundFailure {
    /// A loopback destination on one of our own ports (logged as `connection failed`).
    Refused {
        dst: SocketAddr,
    },
    NoHealthyUpstream {
        service: String,
        port: u16,
    },
    UnknownWaypoint {
        waypoint: String,
    },
    /// The upstream is known only by hostname, and on-demand DNS gave no address.
    Dns {
        hostname: String,
        reason: String,
    },
}

impl From<OutboundFailure> for ProxyError {
    fn from(f: OutboundFailure) -> Self {
        match f {
            OutboundFailure::Refused { dst } => ProxyError::IllegalPort { dst },
            OutboundFailure::NoHealthyUpstream { service, port } => {
                ProxyError::NoHealthyUpstream { service, port }
            }
            OutboundFailure::UnknownWaypoint { waypoint } => ProxyError::UnknownWaypoint(waypoint),
            OutboundFailure::Dns { hostname, reason } => {
                ProxyError::OnDemandDns { hostname, reason }
            }
        }
    }
}

/// What to do with one outbound connection, decided before any I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundPlan {
    pub route: OutboundRoute,
    pub ctx: ConnectionContext,
}

/// Turns the state's decision into a plan. `client` is the application's address, `dst` the
/// original destination.
pub fn plan_outbound(
    decision: Decision,
    source: &Workload,
    client: SocketAddr,
    dst: SocketAddr,
) -> OutboundPlan {
    let mut ctx = ConnectionContext {
        direction: Direction::Outbound,
        src_addr: client,
        dst_addr: dst,
        hbone_target: None,
        source: Some(PeerInfo::from(source)),
        source_identity: None,
        destination: None,
        destination_identity: None,
        destination_service: None,
        security: SecurityPolicy::Unknown,
    };
    let describe = |ctx: &mut ConnectionContext, dest: &DestinationInfo| {
        ctx.destination = dest.workload.as_deref().map(PeerInfo::from);
        ctx.destination_service = dest.service.as_deref().map(ServiceInfo::from);
    };
    // Telemetry of a tunnel to `hbone_addr` reaching `dest`; returns the `forwarded` host.
    let tunnel = |ctx: &mut ConnectionContext,
                  dest: &DestinationInfo,
                  hbone_addr: SocketAddr,
                  authority: &str| {
        describe(ctx, dest);
        ctx.dst_addr = hbone_addr;
        ctx.hbone_target = Some(authority.to_string());
        ctx.source_identity = Some(source.identity.clone());
        ctx.destination_identity = dest.workload.as_ref().map(|w| w.identity.clone());
        ctx.security = SecurityPolicy::MutualTls;
        dest.service.as_ref().map(|s| s.hostname.clone())
    };
    let hbone = |ctx: &mut ConnectionContext,
                 dest: &DestinationInfo,
                 hbone_addr: SocketAddr,
                 authority: String,
                 expected: Vec<Identity>| {
        let forwarded_host = tunnel(ctx, dest, hbone_addr, &authority);
        OutboundRoute::Hbone {
            hbone_addr,
            authority,
            expected,
            forwarded_host,
        }
    };
    let route = match decision {
        Decision::Refused { .. } => OutboundRoute::Fail(OutboundFailure::Refused { dst }),
        Decision::Passthrough { target } => {
            ctx.dst_addr = target;
            OutboundRoute::Tcp { target }
        }
        Decision::NoHealthyUpstream { service, port } => {
            ctx.destination_service = Some(ServiceInfo::from(&*service));
            OutboundRoute::Fail(OutboundFailure::NoHealthyUpstream {
                service: service.hostname.clone(),
                port,
            })
        }
        Decision::UnknownWaypoint { waypoint } => {
            OutboundRoute::Fail(OutboundFailure::UnknownWaypoint {
                waypoint: waypoint.destination.to_string(),
            })
        }
        Decision::ViaWaypoint {
            gateway,
            authority,
            dest,
            ..
        } => hbone(
            &mut ctx,
            &dest,
            gateway.hbone_addr,
            authority.to_string(),
            gateway.expected_identities,
        ),
        Decision::ViaNetworkGateway {
            gateway,
            authority,
            inner_expected_identities,
            dest,
        } => {
            // As Istio reports it: the destination is the gateway (the hop we reach), the
            // service is the one the client addressed.
            let reached = DestinationInfo {
                service: dest.service,
                workload: Some(gateway.workload.clone()),
            };
            let forwarded_host = tunnel(&mut ctx, &reached, gateway.hbone_addr, &authority);
            OutboundRoute::DoubleHbone {
                gateway_addr: gateway.hbone_addr,
                authority,
                gateway_expected: gateway.expected_identities,
                expected: inner_expected_identities,
                forwarded_host,
            }
        }
        // `handle_to` resolves these first; one still here did not resolve.
        Decision::NeedsDns { hostname, dest, .. } => {
            describe(&mut ctx, &dest);
            OutboundRoute::Fail(OutboundFailure::Dns {
                hostname,
                reason: "not resolved".into(),
            })
        }
        Decision::Hbone {
            target,
            hbone_addr,
            expected_identities,
            dest,
        } => hbone(
            &mut ctx,
            &dest,
            hbone_addr,
            target.to_string(),
            expected_identities,
        ),
        Decision::Tcp { target, dest } => {
            describe(&mut ctx, &dest);
            ctx.dst_addr = target;
            OutboundRoute::Tcp { target }
        }
    };
    OutboundPlan { route, ctx }
}

/// The HBONE request for an [`OutboundRoute::Hbone`]: our workload's identity, `forwarded`
/// with the client address (and the service host), the source's `baggage`, a random
/// `traceparent`. The pool key includes the client IP.
pub fn connect_request(
    source: &Workload,
    client: SocketAddr,
    hbone_addr: SocketAddr,
    authority: String,
    expected: Vec<Identity>,
    forwarded_host: Option<&str>,
) -> ConnectRequest {
    let mut forwarded = Forwarded::new(client);
    if let Some(host) = forwarded_host {
        forwarded = forwarded.with_host(host);
    }
    let mut headers = http::HeaderMap::new();
    apply_request_headers(
        &mut headers,
        Some(&forwarded),
        Some(&baggage_of(source)),
        Some(&TraceParent::random()),
    );
    ConnectRequest {
        source: source.identity.clone(),
        expected,
        destination: hbone_addr,
        source_ip: Some(client.ip()),
        authority,
        headers,
    }
}

/// Accepts until `stop` turns true.
pub(crate) async fn serve(ctx: Arc<ProxyCtx>, listener: TcpListener, stop: watch::Receiver<bool>) {
    super::accept_loop(ctx, listener, stop, "outbound", handle).await;
}

/// Proxies one accepted outbound connection.
pub(crate) async fn handle(ctx: Arc<ProxyCtx>, tcp: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    let client = canonical(peer);
    let Some(dst) = super::captured_destination(&ctx, &tcp, client, Direction::Outbound) else {
        return;
    };
    handle_to(ctx, tcp, client, dst, started).await;
}

/// Proxies an outbound connection from `client` to `dst` (captured, or asked for over SOCKS5).
pub(crate) async fn handle_to(
    ctx: Arc<ProxyCtx>,
    tcp: TcpStream,
    client: SocketAddr,
    dst: SocketAddr,
    started: Instant,
) {
    if dst.ip().is_loopback() && ctx.settings.illegal_ports.contains(&dst.port()) {
        ctx.failed(
            Direction::Outbound,
            client,
            Some(dst),
            &ProxyError::IllegalPort { dst },
        );
        return;
    }
    let source = match ctx.local_workload().await {
        Ok(w) => w,
        Err(e) => {
            ctx.failed(Direction::Outbound, client, Some(dst), &e);
            return;
        }
    };
    let decision = {
        let view = ctx.state.read();
        state::resolve_outbound(&view, &source, dst, &mut rand::rng())
    };
    debug!(%dst, ?decision, "outbound decision");
    let (decision, dns_error) = resolve_hostname(&ctx, &source, decision, dst).await;
    let OutboundPlan {
        mut route,
        ctx: conn,
    } = plan_outbound(decision, &source, client, dst);
    if let (Some(error), OutboundRoute::Fail(OutboundFailure::Dns { reason, .. })) =
        (dns_error, &mut route)
    {
        *reason = error;
    }
    if let OutboundRoute::Fail(f @ OutboundFailure::Refused { .. }) = route {
        ctx.failed(Direction::Outbound, client, Some(dst), &f.into());
        return;
    }
    ctx.telemetry.opened(&conn);
    let mut reg = ctx.tracker.register(None);
    let counts = Arc::new(ByteCounts::default());
    let result = tokio::select! {
        r = proxy(&ctx, route, &source, client, tcp, &counts) => r,
        e = close_requested(&mut reg) => Err(e),
    };
    ctx.closed(&conn, started, &counts, &result);
}

/// Turns a [`Decision::NeedsDns`] into the decision for the resolved address (on-demand DNS,
/// counted in `istio_on_demand_dns_total`); other decisions pass through. On failure the
/// decision stays and the reason is returned.
async fn resolve_hostname(
    ctx: &ProxyCtx,
    source: &Workload,
    decision: Decision,
    dst: SocketAddr,
) -> (Decision, Option<String>) {
    let Decision::NeedsDns {
        hostname,
        port,
        dest,
    } = decision
    else {
        return (decision, None);
    };
    ctx.telemetry.on_demand_dns(source, &hostname);
    let resolved = ctx
        .settings
        .resolver
        .resolve(ctx.connector.sockets.as_ref(), &hostname)
        .await;
    let error = match resolved {
        Ok(ips) => match crate::dns::ondemand::pick(&ips, dst.ip())
            .and_then(|ip| state::resolved(ip, port, dest.clone()))
        {
            Some(decision) => {
                debug!(%hostname, ?decision, "on-demand DNS resolved the upstream");
                return (decision, None);
            }
            None => "no usable address".to_string(),
        },
        Err(e) => e.to_string(),
    };
    (
        Decision::NeedsDns {
            hostname,
            port,
            dest,
        },
        Some(error),
    )
}

async fn proxy(
    ctx: &ProxyCtx,
    route: OutboundRoute,
    source: &Workload,
    client: SocketAddr,
    tcp: TcpStream,
    counts: &Arc<ByteCounts>,
) -> Result<(), ProxyError> {
    match route {
        OutboundRoute::Fail(f) => Err(f.into()),
        OutboundRoute::Tcp { target } => {
            let mut upstream = ctx.connector.connect(target).await?;
            let mut downstream = Counted::new(tcp, counts.clone(), Side::Client);
            tokio::io::copy_bidirectional(&mut downstream, &mut upstream)
                .await
                .map_err(ProxyError::Io)?;
            close_gracefully(downstream.get_ref());
            Ok(())
        }
        OutboundRoute::Hbone {
            hbone_addr,
            authority,
            expected,
            forwarded_host,
        } => {
            let request = connect_request(
                source,
                client,
                hbone_addr,
                authority,
                expected,
                forwarded_host.as_deref(),
            );
            let tunnel = ctx.pool.connect(request).await?;
            copy_to_tunnel(tcp, tunnel, counts).await
        }
        OutboundRoute::DoubleHbone {
            gateway_addr,
            authority,
            gateway_expected,
            expected,
            forwarded_host,
        } => {
            let outer = connect_request(
                source,
                client,
                gateway_addr,
                authority,
                gateway_expected,
                forwarded_host.as_deref(),
            );
            let inner = inner_request(&outer, &source.network, expected);
            // Boxed: a rare path whose nested handshakes would otherwise double the size of
            // every outbound connection's future.
            let tunnel = Box::pin(ctx.pool.connect_double(outer, inner)).await?;
            copy_to_tunnel(tcp, tunnel, counts).await
        }
    }
}

/// The inner CONNECT of double HBONE: the outer request's headers plus
/// `x-forwarded-network: <our network>` (so the destination does not look our address up in its
/// own network), verified against `expected`.
pub fn inner_request(
    outer: &ConnectRequest,
    network: &str,
    expected: Vec<Identity>,
) -> hbone::InnerRequest {
    let mut headers = outer.headers.clone();
    if !network.is_empty()
        && let Ok(value) = http::HeaderValue::from_str(network)
    {
        headers.insert(X_FORWARDED_NETWORK, value);
    }
    hbone::InnerRequest { expected, headers }
}

async fn copy_to_tunnel(
    mut tcp: TcpStream,
    tunnel: hbone::Tunnel,
    counts: &Arc<ByteCounts>,
) -> Result<(), ProxyError> {
    let (r, w) = tcp.split();
    hbone::copy_bidirectional(
        Counted::new(r, counts.clone(), Side::Client),
        Counted::new(w, counts.clone(), Side::Client),
        tunnel.stream,
    )
    .await
    .map_err(ProxyError::Io)?;
    close_gracefully(&tcp);
    Ok(())
}

//! Plaintext inbound (15006): connections from outside the mesh, redirected to us.
//!
//! Original destination (REDIRECT: `SO_ORIGINAL_DST`; TPROXY: the local address) → illegal
//! port ⇒ drop → the local workload must own the destination IP → RBAC with **no** identity
//! (so a STRICT policy denies) ⇒ close → connect with the client's source IP → copy.
//! Telemetry: `connection_security_policy="unknown"`, source workload looked up by IP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use state::{MeshView, Workload};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::debug;

use super::error::ProxyError;
use super::inbound::{authorize, inbound_service};
use super::io::{ByteCounts, Counted, Side, close_gracefully};
use super::telemetry::{ConnectionContext, Direction, PeerInfo, SecurityPolicy, ServiceInfo};
use super::tracker::AuthzSubject;
use super::{ProxyCtx, close_requested};
use crate::socket::canonical;

/// What to do with a plaintext inbound connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaintextPlan {
    /// The original destination (the application).
    pub upstream: SocketAddr,
    pub subject: AuthzSubject,
    /// `Some(reason)` when RBAC denies.
    pub denied: Option<String>,
    pub ctx: ConnectionContext,
}

/// Decides about a plaintext connection from `client` to the original destination `dst`.
pub fn decide_plaintext(
    view: &MeshView<'_>,
    local: &Workload,
    network: &str,
    illegal_ports: &[u16],
    client: SocketAddr,
    dst: SocketAddr,
) -> Result<PlaintextPlan, ProxyError> {
    if illegal_ports.contains(&dst.port()) {
        return Err(ProxyError::IllegalPort { dst });
    }
    if !local.addresses.contains(&dst.ip()) {
        return Err(ProxyError::NotLocal {
            ip: dst.ip(),
            uid: local.uid.clone(),
        });
    }
    let subject = AuthzSubject {
        src_identity: None,
        src_ip: client.ip(),
        dst_ip: dst.ip(),
        dst_port: dst.port(),
        dst_workload_uid: local.uid.clone(),
    };
    let denied = authorize(view, local, &subject);
    let ctx = ConnectionContext {
        direction: Direction::Inbound,
        src_addr: client,
        dst_addr: dst,
        hbone_target: None,
        source: view
            .workload_by_ip(network, client.ip())
            .map(|w| PeerInfo::from(&*w)),
        source_identity: None,
        destination: Some(PeerInfo::from(local)),
        destination_identity: None,
        destination_service: inbound_service(view, local, None, dst.port())
            .as_deref()
            .map(ServiceInfo::from),
        security: SecurityPolicy::Unknown,
    };
    Ok(PlaintextPlan {
        upstream: dst,
        subject,
        denied,
        ctx,
    })
}

/// Accepts until `stop` turns true.
pub(crate) async fn serve(ctx: Arc<ProxyCtx>, listener: TcpListener, stop: watch::Receiver<bool>) {
    super::accept_loop(ctx, listener, stop, "inbound_plaintext", handle).await;
}

pub(crate) async fn handle(ctx: Arc<ProxyCtx>, tcp: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    let client = canonical(peer);
    let Some(dst) = super::captured_destination(&ctx, &tcp, client, Direction::Inbound) else {
        return;
    };
    if ctx.settings.illegal_ports.contains(&dst.port()) {
        ctx.failed(
            Direction::Inbound,
            client,
            Some(dst),
            &ProxyError::IllegalPort { dst },
        );
        return;
    }
    let local = match ctx.local_workload().await {
        Ok(w) => w,
        Err(e) => {
            ctx.failed(Direction::Inbound, client, Some(dst), &e);
            return;
        }
    };
    let decided = {
        let view = ctx.state.read();
        let s = &ctx.settings;
        decide_plaintext(&view, &local, &s.network, &s.illegal_ports, client, dst)
    };
    let plan = match decided {
        Ok(p) => p,
        Err(e) => {
            ctx.failed(Direction::Inbound, client, Some(dst), &e);
            return;
        }
    };
    ctx.telemetry.opened(&plan.ctx);
    let counts = Arc::new(ByteCounts::default());
    if let Some(reason) = plan.denied {
        debug!(%reason, "plaintext connection denied");
        ctx.closed(
            &plan.ctx,
            started,
            &counts,
            &Err(ProxyError::Denied { reason }),
        );
        return;
    }
    let mut reg = ctx.tracker.register(Some(plan.subject.clone()));
    let result = tokio::select! {
        r = async {
            let mut upstream = ctx.connector.connect_as(plan.upstream, client.ip()).await?;
            let mut downstream = Counted::new(tcp, counts.clone(), Side::Client);
            tokio::io::copy_bidirectional(&mut downstream, &mut upstream)
                .await
                .map_err(ProxyError::Io)?;
            close_gracefully(downstream.get_ref());
            Ok(())
        } => r,
        e = close_requested(&mut reg) => Err(e),
    };
    ctx.closed(&plan.ctx, started, &counts, &result);
}

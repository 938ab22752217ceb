//! The data path of one proxy instance: outbound capture (15001), HBONE inbound (15008) and
//! plaintext inbound (15006) for one workload, with Istio's L4 telemetry.
//!
//! One instance serves one workload: in shared (in-pod) mode one per enrolled pod, its sockets
//! created inside the pod's network namespace by the pod's [`SocketFactory`]; in dedicated mode
//! one for the configured workload with [`crate::socket::HostSocketFactory`].
//!
//! How a connection flows (decide, then do):
//! * **outbound** ([`outbound`]): accept → original destination → [`state::resolve_outbound`]
//!   → [`outbound::plan_outbound`] (a plain [`outbound::OutboundPlan`]: where to connect, which
//!   identities to expect, the telemetry context) → plain TCP or an HBONE tunnel from the pool
//!   → byte copy;
//! * **inbound HBONE** ([`inbound`]): the `hbone` server verifies mTLS; per CONNECT stream
//!   [`inbound::decide_inbound`] applies the checks in Istio's order (local workload 503,
//!   destination validation 400, illegal port 503, RBAC 401) → upstream connect to
//!   `<local ip>:<port>` with the client's source IP when allowed (503 on failure) → 200 →
//!   copy;
//! * **plaintext inbound** ([`plaintext`]): original destination → illegal port drop → local
//!   workload → RBAC without identity → connect with the client's source → copy.
//!
//! Every proxied connection is registered in a [`tracker::Tracker`]: drain waits for them and
//! closes what is left at the deadline; after any mesh state change the inbound ones are
//! authorized again and the now-denied ones closed (late rejection, flag `DENY`).
//!
//! Failures are classified once ([`error::ProxyError`]) into the response flag and HBONE
//! status; [`telemetry`] turns a connection's context into metrics labels and access logs.
//!
//! Inputs are plain structs ([`ProxyInputs`]); the app maps its config onto them.

pub mod app_tunnel;
pub mod error;
pub mod inbound;
pub mod io;
pub mod outbound;
pub mod plaintext;
pub mod socks5;
pub mod telemetry;
pub mod tracker;

#[cfg(test)]
mod ondemand_tests;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbone::Identity;
use hbone::headers::{Baggage, WorkloadType as BaggageType};
use parking_lot::Mutex;
use state::model::WorkloadType;
use state::{MeshState, Workload};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, info, warn};

pub use error::ProxyError;
pub use io::OrigSrc;
pub use telemetry::{
    ConnectionContext, DefaultTelemetry, Direction, EarlyFailure, Outcome, PeerInfo, ResponseFlag,
    SecurityPolicy, ServiceInfo, TelemetrySink,
};

use crate::socket::{SocketFactory, TcpSettings};
use io::{ByteCounts, Connector, FactoryDialer};
use tracker::{CloseReason, Registration, Tracker};

/// Istio's outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;
/// Istio's plaintext inbound capture port.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// The HBONE port.
pub const HBONE_PORT: u16 = hbone::HBONE_PORT;
/// The SOCKS5 port (illegal as a target when SOCKS5 is enabled).
pub const SOCKS5_PORT: u16 = 15080;

/// Which workload an instance serves: looked up in the mesh state by pod name, namespace and
/// service account (`PROXY_WORKLOAD_INFO` in dedicated mode, the ZDS announcement in shared
/// mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadInfo {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// Trust domain of the identity the HBONE listener presents when the instance starts. The
    /// app resolves it from the workload's `Workload` ([`WorkloadInfo::resolve_identity`]) and
    /// falls back to `TRUST_DOMAIN` (default `cluster.local`) while the workload is unknown;
    /// it switches the listener later with [`ProxyHandle::server_identity`].
    pub trust_domain: String,
}

impl WorkloadInfo {
    /// The identity built from these fields: `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn identity(&self) -> Identity {
        Identity::new(&self.trust_domain, &self.namespace, &self.service_account)
    }

    /// The identity of this workload's `Workload` in the mesh state (its trust domain,
    /// namespace and service account, as the control plane sent them), if it is known.
    pub fn resolve_identity(&self, state: &MeshState) -> Option<Identity> {
        self.find(state).map(|w| w.identity.clone())
    }

    /// This workload's `Workload` in the mesh state (matched by pod name, namespace and
    /// service account), if it is known.
    pub fn find(&self, state: &MeshState) -> Option<Arc<Workload>> {
        state
            .read()
            .workloads_by_pod(&self.name, &self.namespace, &self.service_account)
            .into_iter()
            .next()
    }
}

impl std::fmt::Display for WorkloadInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} (sa {})",
            self.namespace, self.name, self.service_account
        )
    }
}

/// Listener ports (0 = any free port, for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub outbound: u16,
    pub inbound_plaintext: u16,
    pub hbone: u16,
    /// SOCKS5 on `127.0.0.1` (`UNSTABLE_ENABLE_SOCKS5`); off by default.
    pub socks5: Option<u16>,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            outbound: OUTBOUND_PORT,
            inbound_plaintext: INBOUND_PLAINTEXT_PORT,
            hbone: HBONE_PORT,
            socks5: None,
        }
    }
}

/// The config flags the data path reads (the app maps `Config` onto this).
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// `IPV6_ENABLED`: listeners bind `[::]` (dual stack) instead of `0.0.0.0`.
    pub ipv6: bool,
    pub ports: Ports,
    /// Ports never proxied to: loopback destinations outbound, any target inbound.
    /// {15001, 15006, 15008} (+15080 with SOCKS5).
    pub illegal_ports: Vec<u16>,
    /// `ENABLE_ORIG_SRC`.
    pub orig_src: OrigSrc,
    /// Keepalive / user timeout (`KEEPALIVE_*`, `USER_TIMEOUT_ENABLED`).
    pub tcp: TcpSettings,
    /// Upstream application connect timeout (10 s).
    pub connect_timeout: Duration,
    /// `CONNECTION_TERMINATION_DEADLINE`: what [`ProxyHandle::shutdown`] gives connections.
    pub termination_deadline: Duration,
    /// `ENABLE_RESPONSE_BAGGAGE`: read request baggage, send the destination's in the 200.
    pub response_baggage: bool,
    /// `AUTHZ_POLICY_INFO_LOGGING`: authorization decisions at INFO instead of DEBUG.
    pub authz_info_logging: bool,
    /// `NETWORK`: this node's network (workload lookups by IP).
    pub network: String,
    /// `LOCALHOST_APP_TUNNEL`: application tunnels (PROXY protocol) go to loopback.
    pub localhost_app_tunnel: bool,
    /// How long a connection waits for the local workload to appear in the state (5 s).
    pub workload_wait: Duration,
    /// The HBONE client pool (`POOL_*`, `HTTP2_*`).
    pub pool: hbone::ClientSettings,
    /// The HBONE server on 15008.
    pub server: hbone::ServerSettings,
    /// On-demand DNS of upstreams known only by hostname (node-wide cache).
    pub resolver: Arc<crate::dns::OnDemandResolver>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            ipv6: true,
            ports: Ports::default(),
            illegal_ports: vec![OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT],
            orig_src: OrigSrc::Auto,
            tcp: TcpSettings::default(),
            connect_timeout: Duration::from_secs(10),
            termination_deadline: Duration::from_secs(5),
            response_baggage: true,
            authz_info_logging: false,
            network: String::new(),
            localhost_app_tunnel: true,
            workload_wait: Duration::from_secs(5),
            pool: hbone::ClientSettings::default(),
            server: hbone::ServerSettings::default(),
            resolver: Arc::new(crate::dns::OnDemandResolver::new(
                Vec::new(),
                true,
                crate::dns::ForwardSettings::default(),
            )),
        }
    }
}

/// Everything one proxy instance needs.
pub struct ProxyInputs {
    pub state: Arc<MeshState>,
    /// Certificates by identity (the `CertManager`).
    pub certs: Arc<dyn hbone::CertificateSource>,
    /// Creates every socket of the instance (listeners, upstream connects, HBONE dials).
    pub sockets: Arc<dyn SocketFactory>,
    pub workload: WorkloadInfo,
    pub settings: ProxySettings,
    /// Metrics and access logs ([`DefaultTelemetry`] in production).
    pub telemetry: Arc<dyn TelemetrySink>,
}

impl std::fmt::Debug for ProxyInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyInputs")
            .field("workload", &self.workload)
            .field("settings", &self.settings)
            .finish()
    }
}

/// Why a proxy instance could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}; is another proxy bound to it?")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "ENABLE_ORIG_SRC=true but IP_TRANSPARENT could not be set on {addr}; does the proxy have CAP_NET_ADMIN?"
    )]
    Transparent { addr: SocketAddr },
    #[error("Proxy::start must run inside a tokio runtime")]
    NoRuntime,
}

/// State shared by the listeners and connections of one instance.
pub(crate) struct ProxyCtx {
    pub(crate) state: Arc<MeshState>,
    pub(crate) settings: ProxySettings,
    pub(crate) workload: WorkloadInfo,
    pub(crate) telemetry: Arc<dyn TelemetrySink>,
    pub(crate) pool: hbone::Pool,
    pub(crate) connector: Connector,
    pub(crate) tracker: Arc<Tracker>,
    /// (addresses generation, workload) of the last successful local-workload lookup.
    local: Mutex<Option<(u64, Arc<Workload>)>>,
}

impl ProxyCtx {
    pub(crate) fn new(
        state: Arc<MeshState>,
        settings: ProxySettings,
        workload: WorkloadInfo,
        telemetry: Arc<dyn TelemetrySink>,
        pool: hbone::Pool,
        connector: Connector,
    ) -> Self {
        ProxyCtx {
            state,
            settings,
            workload,
            telemetry,
            pool,
            connector,
            tracker: Arc::new(Tracker::default()),
            local: Mutex::new(None),
        }
    }

    /// The local workload, waiting up to `workload_wait` for it to appear in the state.
    pub(crate) async fn local_workload(&self) -> Result<Arc<Workload>, ProxyError> {
        let mut changes = self.state.subscribe();
        let deadline = tokio::time::Instant::now() + self.settings.workload_wait;
        loop {
            let generation = changes.borrow_and_update().addresses;
            if let Some(w) = self.lookup_local(generation) {
                return Ok(w);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    return Err(ProxyError::UnknownLocalWorkload {
                        workload: self.workload.to_string(),
                        waited: self.settings.workload_wait,
                    });
                }
            }
        }
    }

    fn lookup_local(&self, generation: u64) -> Option<Arc<Workload>> {
        let mut cached = self.local.lock();
        if let Some((g, w)) = cached.as_ref()
            && *g == generation
        {
            return Some(w.clone());
        }
        let w = self.workload.find(&self.state)?;
        *cached = Some((generation, w.clone()));
        Some(w)
    }

    pub(crate) fn failed(
        &self,
        direction: Direction,
        src_addr: SocketAddr,
        dst_addr: Option<SocketAddr>,
        error: &ProxyError,
    ) {
        self.telemetry.failed(&EarlyFailure {
            direction,
            src_addr,
            dst_addr,
            error: error.to_string(),
        });
    }

    /// Reports the end of an opened connection.
    pub(crate) fn closed(
        &self,
        ctx: &ConnectionContext,
        started: Instant,
        counts: &ByteCounts,
        result: &Result<(), ProxyError>,
    ) {
        let (client_to_server, server_to_client) = counts.get();
        let (flag, error) = match result {
            Ok(()) => (ResponseFlag::None, None),
            Err(e) => (e.response_flag(), Some(e.to_string())),
        };
        self.telemetry.closed(
            ctx,
            &Outcome {
                client_to_server,
                server_to_client,
                duration: started.elapsed(),
                flag,
                error,
            },
        );
    }
}

/// Resolves when the proxy asks this connection to close.
pub(crate) async fn close_requested(reg: &mut Registration) -> ProxyError {
    match (&mut reg.closed).await {
        Ok(CloseReason::Denied(reason)) => ProxyError::LateDenied { reason },
        Ok(CloseReason::Drained) => ProxyError::Drained,
        Err(_) => std::future::pending().await,
    }
}

/// Resolves once the instance is stopping.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Accepts connections until the instance stops, running `handle` for each in its own task
/// under its own span.
pub(crate) async fn accept_loop<F, Fut>(
    ctx: Arc<ProxyCtx>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
    listener_name: &'static str,
    handle: F,
) where
    F: Fn(Arc<ProxyCtx>, tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    io::reset_on_drop(&tcp);
                    let span = tracing::debug_span!(
                        "connection",
                        listener = listener_name,
                        src = %crate::socket::canonical(peer)
                    );
                    tokio::spawn(handle(ctx.clone(), tcp, peer).instrument(span));
                }
                Err(e) => {
                    tracing::warn!(listener = listener_name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = stopped(&mut stop) => return,
        }
    }
}

/// The first steps for a captured connection: socket options, then its original destination.
/// A destination that cannot be read is reported as a failure and `None` returned.
pub(crate) fn captured_destination(
    ctx: &ProxyCtx,
    tcp: &tokio::net::TcpStream,
    client: SocketAddr,
    direction: Direction,
) -> Option<SocketAddr> {
    if let Err(e) = ctx.settings.tcp.apply(tcp) {
        tracing::debug!(error = %e, "could not set socket options on accepted connection");
    }
    match crate::socket::original_dst(tcp) {
        Ok(dst) => Some(dst),
        Err(e) => {
            ctx.failed(direction, client, None, &ProxyError::OriginalDst(e));
            None
        }
    }
}

/// The `baggage` describing a workload (outbound requests; inbound 200 responses).
pub fn baggage_of(w: &Workload) -> Baggage {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Baggage {
        cluster_id: opt(&w.cluster_id),
        namespace: opt(&w.namespace),
        workload_name: opt(&w.workload_name),
        workload_type: Some(match w.workload_type {
            WorkloadType::Deployment => BaggageType::Deployment,
            WorkloadType::Cronjob => BaggageType::CronJob,
            WorkloadType::Pod => BaggageType::Pod,
            WorkloadType::Job => BaggageType::Job,
        }),
        service_name: opt(&w.canonical_name),
        service_version: opt(&w.canonical_revision),
        region: opt(&w.locality.region),
        zone: opt(&w.locality.zone),
    }
}

/// A running proxy instance.
pub struct Proxy;

/// The identity an instance's HBONE listener presents: new connections get the certificate of
/// the identity set last, and accept clients of its trust domain. Cheap to clone.
#[derive(Clone)]
pub struct ServerIdentity(hbone::Server);

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ServerIdentity")
            .field(&self.0.identity())
            .finish()
    }
}

impl ServerIdentity {
    /// Presents `identity` to new connections; established ones keep their session.
    pub fn set(&self, identity: Identity) {
        self.0.set_identity(identity);
    }
}

/// Controls a running instance; dropping it stops the listeners and closes connections
/// abruptly (use [`ProxyHandle::drain`] for a graceful stop).
pub struct ProxyHandle {
    ctx: Arc<ProxyCtx>,
    server: hbone::Server,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    outbound_addr: SocketAddr,
    inbound_plaintext_addr: SocketAddr,
    hbone_addr: SocketAddr,
    socks5_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for ProxyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHandle")
            .field("workload", &self.ctx.workload)
            .field("outbound", &self.outbound_addr)
            .field("inbound_plaintext", &self.inbound_plaintext_addr)
            .field("hbone", &self.hbone_addr)
            .field("live_connections", &self.ctx.tracker.len())
            .finish()
    }
}

impl Proxy {
    /// Binds 15001, 15006 and 15008 through the instance's socket factory and starts serving.
    /// Must be called inside a tokio runtime; the instance's tasks run on it.
    pub fn start(inputs: ProxyInputs) -> Result<ProxyHandle, StartError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StartError::NoRuntime);
        }
        let ProxyInputs {
            state,
            certs,
            sockets,
            workload,
            mut settings,
            telemetry,
        } = inputs;
        let ip: IpAddr = if settings.ipv6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let transparent = settings.orig_src != OrigSrc::Never;
        let bind = |what: &'static str, port: u16| {
            let addr = SocketAddr::new(ip, port);
            let listener = sockets
                .tcp_listener(addr, transparent)
                .map_err(|source| StartError::Bind { what, addr, source })?;
            if settings.orig_src == OrigSrc::Required
                && !crate::socket::is_transparent(&listener).unwrap_or(false)
            {
                return Err(StartError::Transparent { addr });
            }
            Ok(listener)
        };
        let outbound = bind("outbound", settings.ports.outbound)?;
        let plaintext = bind("inbound plaintext", settings.ports.inbound_plaintext)?;
        let hbone_listener = bind("inbound HBONE", settings.ports.hbone)?;
        let socks5 = match settings.ports.socks5 {
            Some(port) => {
                let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
                let listener =
                    sockets
                        .tcp_listener(addr, false)
                        .map_err(|source| StartError::Bind {
                            what: "SOCKS5",
                            addr,
                            source,
                        })?;
                Some(listener)
            }
            None => None,
        };
        let local = |l: &tokio::net::TcpListener| {
            l.local_addr().map_err(|source| StartError::Bind {
                what: "local address",
                addr: SocketAddr::new(ip, 0),
                source,
            })
        };
        let (outbound_addr, inbound_plaintext_addr, hbone_addr) = (
            local(&outbound)?,
            local(&plaintext)?,
            local(&hbone_listener)?,
        );
        let socks5_addr = socks5.as_ref().map(local).transpose()?;

        let connector = Connector {
            sockets,
            tcp: settings.tcp,
            timeout: settings.connect_timeout,
            orig_src: settings.orig_src,
        };
        let pool = hbone::Pool::new(
            settings.pool.clone(),
            certs.clone(),
            Arc::new(FactoryDialer(connector.clone())),
        );
        // Our actual ports are never a target either (they differ from the standard ones only
        // when bound to port 0, e.g. in tests): a connection to them would loop.
        let own = [outbound_addr, inbound_plaintext_addr, hbone_addr];
        for port in own.iter().chain(&socks5_addr).map(|a| a.port()) {
            if !settings.illegal_ports.contains(&port) {
                settings.illegal_ports.push(port);
            }
        }
        let identity = workload.identity();
        let ctx = Arc::new(ProxyCtx::new(
            state, settings, workload, telemetry, pool, connector,
        ));
        let handler_ctx = ctx.clone();
        let server = hbone::Server::new(
            ctx.settings.server.clone(),
            identity,
            certs,
            move |req: hbone::InboundRequest| inbound::handle(handler_ctx.clone(), req),
        );
        let (stop, _) = watch::channel(false);
        let span = tracing::info_span!("proxy", workload = %ctx.workload);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(
            outbound::serve(ctx.clone(), outbound, stop.subscribe()).instrument(span.clone()),
        ));
        tasks.push(tokio::spawn(
            plaintext::serve(ctx.clone(), plaintext, stop.subscribe()).instrument(span.clone()),
        ));
        let hbone_server = server.clone();
        tasks.push(tokio::spawn(
            async move { hbone_server.serve(hbone_listener).await }.instrument(span.clone()),
        ));
        if let Some(listener) = socks5 {
            tasks.push(tokio::spawn(
                socks5::serve(ctx.clone(), listener, stop.subscribe()).instrument(span.clone()),
            ));
        }
        tasks.push(tokio::spawn(
            watch_policies(ctx.clone(), stop.subscribe()).instrument(span),
        ));
        info!(workload = %ctx.workload, %outbound_addr, %inbound_plaintext_addr, %hbone_addr,
            "proxy listening");
        Ok(ProxyHandle {
            ctx,
            server,
            stop,
            tasks,
            outbound_addr,
            inbound_plaintext_addr,
            hbone_addr,
            socks5_addr,
        })
    }
}

/// Re-authorizes live inbound connections after every state change (policies, or workloads,
/// whose policy lists may have changed).
async fn watch_policies(ctx: Arc<ProxyCtx>, mut stop: watch::Receiver<bool>) {
    let mut changes = ctx.state.subscribe();
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            () = stopped(&mut stop) => return,
        }
        let closed = ctx.tracker.reauthorize(&ctx.state);
        if closed > 0 {
            info!(closed, "closed connections denied after a policy change");
        }
    }
}

impl ProxyHandle {
    /// Where the outbound listener is bound (15001).
    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound_addr
    }

    /// Where the plaintext inbound listener is bound (15006).
    pub fn inbound_plaintext_addr(&self) -> SocketAddr {
        self.inbound_plaintext_addr
    }

    /// Where the SOCKS5 listener is bound (15080), when enabled.
    pub fn socks5_addr(&self) -> Option<SocketAddr> {
        self.socks5_addr
    }

    /// Where the HBONE listener is bound (15008).
    pub fn hbone_addr(&self) -> SocketAddr {
        self.hbone_addr
    }

    /// The identity the HBONE listener presents.
    pub fn identity(&self) -> Identity {
        self.server.identity()
    }

    /// Switches the identity the HBONE listener presents (usable after the drain too).
    pub fn server_identity(&self) -> ServerIdentity {
        ServerIdentity(self.server.clone())
    }

    /// Connections being proxied right now (all directions).
    pub fn live_connections(&self) -> usize {
        self.ctx.tracker.len()
    }

    /// Authorizes every live inbound connection again and closes those now denied (done
    /// automatically after each state change). Returns how many were closed.
    pub fn reauthorize(&self) -> usize {
        self.ctx.tracker.reauthorize(&self.ctx.state)
    }

    /// Graceful stop with the configured `CONNECTION_TERMINATION_DEADLINE`.
    pub async fn shutdown(self) {
        let deadline = self.ctx.settings.termination_deadline;
        self.drain(deadline).await;
    }

    /// Stops accepting, sends GOAWAY on HBONE connections, waits up to `deadline` for live
    /// connections to finish, then closes the rest.
    pub async fn drain(self, deadline: Duration) {
        self.stop.send_replace(true);
        let started = Instant::now();
        let (_, idle) = tokio::join!(
            self.server.drain(deadline),
            self.ctx.tracker.wait_idle(deadline)
        );
        if !idle {
            let n = self.ctx.tracker.close_all(CloseReason::Drained);
            warn!(
                closed = n,
                ?deadline,
                "drain deadline reached; closing remaining connections"
            );
            // Give the connections a moment to report themselves.
            self.ctx.tracker.wait_idle(Duration::from_millis(500)).await;
        }
        info!(elapsed = ?started.elapsed(), "proxy drained");
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        self.ctx.tracker.close_all(CloseReason::Drained);
        for t in &self.tasks {
            t.abort();
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            let server = self.server.clone();
            tokio::spawn(async move { server.drain(Duration::ZERO).await });
        }
    }
}

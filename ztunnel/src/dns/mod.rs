//! The DNS proxy of one proxy instance (port 15053, UDP and TCP; contract §8).
//!
//! In shared mode one [`DnsServer`] runs per enrolled pod, its listeners created inside the pod's
//! network namespace by the pod's [`SocketFactory`] (the CNI rules redirect the pod's port-53
//! traffic to it); in dedicated mode one runs with [`crate::socket::HostSocketFactory`].
//!
//! Each query goes through: parse (an unparseable query gets `FORMERR` when its ID is readable
//! and is dropped otherwise) → [`decide`] (pure: authoritative answer, empty `NOERROR`, or
//! forward; see that module for the name rules) → answer from the mesh state with TTL 30 s and
//! a CNAME to the canonical name ([`response`]), or relay to the upstream resolvers of ztunnel's
//! own `/etc/resolv.conf` ([`forward`], `SERVFAIL` when none answers) → reply, truncated with
//! `TC` to the client's UDP size on UDP. TCP uses the usual 2-byte length framing, serves
//! several queries per connection in order, and closes a connection idle for 5 s.
//!
//! Istio's DNS metrics are recorded per query ([`metrics`]).
//!
//! What it must not do: hold the mesh-state read guard across an `.await` (the decision is taken
//! synchronously on a snapshot), or create a socket other than through the instance's factory.

pub mod decide;
pub mod forward;
pub mod metrics;
pub mod ondemand;
pub mod resolv;
pub mod response;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use state::MeshState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, warn};

use crate::proxy::WorkloadInfo;
use crate::socket::SocketFactory;

pub use decide::{Answer, Decision, SearchContext, decide};
pub use forward::{ForwardError, ForwardSettings};
pub use metrics::{DnsMetrics, SourceLabels, Transport};
pub use ondemand::{OnDemandError, OnDemandResolver};
pub use resolv::{RESOLV_CONF, resolv_conf_nameservers};

/// The DNS proxy port.
pub const DNS_PORT: u16 = 15053;

/// How long a TCP client may take to send a query (and an idle TCP connection stays open).
pub const TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// Queries (UDP) and connections (TCP) handled at once per instance; more are dropped.
pub const MAX_IN_FLIGHT: usize = 1024;

/// The default listen addresses (contract §1): `127.0.0.1:15053`, plus `[::1]:15053` when IPv6
/// is enabled.
pub fn default_bind(ipv6: bool) -> Vec<SocketAddr> {
    let mut out = vec![SocketAddr::new(Ipv4Addr::LOCALHOST.into(), DNS_PORT)];
    if ipv6 {
        out.push(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), DNS_PORT));
    }
    out
}

/// What a DNS proxy instance needs.
pub struct DnsInputs {
    pub state: Arc<MeshState>,
    /// The instance's socket factory (the pod's, in shared mode): listeners and upstream sockets.
    pub sockets: Arc<dyn SocketFactory>,
    /// Listen addresses, UDP and TCP on each ([`default_bind`] or `ISTIO_META_DNS_PROXY_ADDR`).
    /// An IPv6 loopback address that cannot be bound (IPv6 disabled on `lo`) is skipped with a
    /// warning. Port 0 picks a free port, the same for UDP and TCP ([`DnsHandle::addrs`]).
    pub bind: Vec<SocketAddr>,
    /// The client pod's namespace (search domains, `NAMESPACE` visibility).
    pub client_namespace: String,
    /// The cluster domain, `cluster.local` by default.
    pub cluster_domain: String,
    /// Upstream resolvers ([`resolv_conf_nameservers`] of [`RESOLV_CONF`]).
    pub upstreams: Vec<SocketAddr>,
    /// Whose queries these are, for the metrics' `source_*` labels.
    pub source: DnsClient,
    pub forward: ForwardSettings,
}

/// The workload a DNS proxy instance answers for (the metrics' `source_*` labels).
#[derive(Debug, Clone)]
pub enum DnsClient {
    /// Labels known up front (tests, or no workload).
    Fixed(SourceLabels),
    /// A pod: its `Workload` is looked up at each query (it may arrive after the proxy
    /// starts, or change); `unknown` labels while there is none.
    Pod(WorkloadInfo),
}

impl DnsClient {
    fn labels(&self, state: &MeshState) -> SourceLabels {
        match self {
            DnsClient::Fixed(l) => l.clone(),
            DnsClient::Pod(workload) => workload
                .find(state)
                .map(|w| SourceLabels {
                    canonical_service: w.canonical_name.clone(),
                    canonical_revision: w.canonical_revision.clone(),
                })
                .unwrap_or_default(),
        }
    }
}

/// Why the DNS proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(
        "cannot bind the DNS proxy on {addr}/{transport}: {source}; is another proxy bound to it?"
    )]
    Bind {
        addr: SocketAddr,
        transport: &'static str,
        source: io::Error,
    },
    #[error("the DNS proxy has no address to listen on (DnsInputs::bind is empty or unusable)")]
    NoListeners,
    #[error("cannot read the resolver configuration {path}: {source}")]
    ResolvConf { path: String, source: io::Error },
    #[error("DnsServer::start must run inside a tokio runtime")]
    NoRuntime,
}

/// Starts DNS proxy instances.
#[derive(Debug)]
pub struct DnsServer;

/// A running DNS proxy. Dropping it stops it too (without waiting).
#[derive(Debug)]
pub struct DnsHandle {
    addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsHandle {
    /// The addresses actually listened on (UDP and TCP share each).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops accepting, closes the listeners and open TCP connections (queries being
    /// forwarded still get their answer), and waits for the listeners to be closed.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

struct Ctx {
    state: Arc<MeshState>,
    sockets: Arc<dyn SocketFactory>,
    search: SearchContext,
    upstreams: Vec<SocketAddr>,
    forward: ForwardSettings,
    client: DnsClient,
    in_flight: Arc<Semaphore>,
}

impl DnsServer {
    /// Binds the listeners and starts serving. Must be called inside a tokio runtime.
    pub fn start(inputs: DnsInputs) -> Result<DnsHandle, DnsError> {
        tokio::runtime::Handle::try_current().map_err(|_| DnsError::NoRuntime)?;
        if inputs.upstreams.is_empty() {
            warn!("the DNS proxy has no upstream resolvers: names outside the mesh get SERVFAIL");
        }
        let mut bound = Vec::new();
        for &addr in &inputs.bind {
            match bind_pair(inputs.sockets.as_ref(), addr) {
                Ok(pair) => bound.push(pair),
                Err(DnsError::Bind { source, .. })
                    if is_v6_loopback(addr.ip())
                        && source.kind() == io::ErrorKind::AddrNotAvailable =>
                {
                    warn!(%addr, "IPv6 is not available on the loopback interface; DNS proxy \
                                  listens on IPv4 only");
                }
                Err(e) => return Err(e),
            }
        }
        if bound.is_empty() {
            return Err(DnsError::NoListeners);
        }
        let ctx = Arc::new(Ctx {
            state: inputs.state,
            sockets: inputs.sockets,
            search: SearchContext::new(&inputs.client_namespace, &inputs.cluster_domain),
            upstreams: inputs.upstreams,
            forward: inputs.forward,
            client: inputs.source,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        });
        let (stop, _) = watch::channel(false);
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for (addr, udp, tcp) in bound {
            addrs.push(addr);
            debug!(%addr, "DNS proxy listening (udp, tcp)");
            tasks.push(tokio::spawn(serve_udp(
                ctx.clone(),
                Arc::new(udp),
                stop.subscribe(),
            )));
            tasks.push(tokio::spawn(serve_tcp(ctx.clone(), tcp, stop.subscribe())));
        }
        Ok(DnsHandle { addrs, stop, tasks })
    }
}

fn is_v6_loopback(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.is_loopback())
}

/// UDP then TCP on the same address (with port 0: the port UDP got).
fn bind_pair(
    sockets: &dyn SocketFactory,
    addr: SocketAddr,
) -> Result<(SocketAddr, UdpSocket, TcpListener), DnsError> {
    let bind_err = |transport, source| DnsError::Bind {
        addr,
        transport,
        source,
    };
    // With port 0 the port UDP picked may be taken for TCP: try a few.
    let attempts = if addr.port() == 0 { 8 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = sockets.udp_bind(addr).map_err(|e| bind_err("udp", e))?;
        let local = udp.local_addr().map_err(|e| bind_err("udp", e))?;
        match sockets.tcp_listener(local, false) {
            Ok(tcp) => return Ok((local, udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(bind_err(
        "tcp",
        last.unwrap_or_else(|| io::Error::other("no attempt made")),
    ))
}

/// Waits until the handle stops us (or is dropped).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

async fn serve_udp(ctx: Arc<Ctx>, sock: Arc<UdpSocket>, mut stop: watch::Receiver<bool>) {
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let (n, peer) = tokio::select! {
            _ = stopped(&mut stop) => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "DNS UDP receive failed");
                    continue;
                }
            },
        };
        let Ok(permit) = ctx.in_flight.clone().try_acquire_owned() else {
            debug!(%peer, "too many DNS queries in flight; dropping one");
            continue;
        };
        let query = buf[..n].to_vec();
        let (ctx, sock) = (ctx.clone(), sock.clone());
        let span = tracing::debug_span!("dns", %peer, transport = "udp");
        tokio::spawn(
            async move {
                if let Some(resp) = ctx.handle(&query, Transport::Udp).await
                    && let Err(e) = sock.send_to(&resp, peer).await
                {
                    debug!(error = %e, "cannot send the DNS answer");
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
}

async fn serve_tcp(ctx: Arc<Ctx>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stopped(&mut stop) => return,
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "DNS TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = ctx.in_flight.clone().try_acquire_owned() else {
            debug!(%peer, "too many DNS queries in flight; closing a TCP connection");
            continue;
        };
        let ctx = ctx.clone();
        let stop = stop.clone();
        let span = tracing::debug_span!("dns", %peer, transport = "tcp");
        tokio::spawn(
            async move {
                serve_tcp_conn(&ctx, stream, stop).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

async fn serve_tcp_conn(ctx: &Ctx, mut stream: TcpStream, mut stop: watch::Receiver<bool>) {
    loop {
        let query = tokio::select! {
            _ = stopped(&mut stop) => return,
            r = tokio::time::timeout(TCP_TIMEOUT, read_frame(&mut stream)) => match r {
                Ok(Ok(Some(q))) => q,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    debug!(error = %e, "DNS TCP read failed");
                    return;
                }
                Err(_) => {
                    debug!("DNS TCP connection idle or too slow; closing it");
                    return;
                }
            },
        };
        let Some(resp) = ctx.handle(&query, Transport::Tcp).await else {
            return;
        };
        let Ok(len) = u16::try_from(resp.len()) else {
            debug!("DNS answer too large for TCP framing; closing");
            return;
        };
        let mut frame = Vec::with_capacity(resp.len() + 2);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&resp);
        if let Err(e) = stream.write_all(&frame).await {
            debug!(error = %e, "cannot send the DNS answer");
            return;
        }
    }
}

/// One length-prefixed message; `None` on a clean end of stream between messages.
async fn read_frame(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

impl Ctx {
    /// The answer to one query message, or `None` to send nothing.
    async fn handle(&self, bytes: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let msg = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "malformed DNS query");
                return response::formerr_raw(bytes);
            }
        };
        if msg.metadata.message_type != MessageType::Query {
            debug!("ignoring a DNS response sent to the proxy");
            return None;
        }
        let qtype = msg
            .queries
            .first()
            .map(|q| q.query_type().to_string())
            .unwrap_or_else(|| "unknown".to_string());
        let metrics = DnsMetrics::new(&self.client.labels(&self.state));
        metrics.request(&qtype, transport);
        let limit = match transport {
            Transport::Udp => Some(response::udp_limit(&msg)),
            Transport::Tcp => None,
        };
        let decision = {
            let view = self.state.read();
            decide(&view, &self.search, &msg)
        };
        match decision {
            Decision::Answer(a) => {
                debug!(query = ?msg.queries.first(), ips = ?a.ips, cname = ?a.cname,
                    "answering from the mesh");
                response::encode(response::answer(&msg, &a), limit)
            }
            Decision::FormErr => {
                response::encode(response::error(&msg, ResponseCode::FormErr), limit)
            }
            Decision::Forward => {
                let started = Instant::now();
                let result = forward::forward(
                    self.sockets.as_ref(),
                    &self.upstreams,
                    self.forward,
                    bytes,
                    msg.metadata.id,
                    transport == Transport::Tcp,
                )
                .await;
                metrics.upstream(&qtype, transport, started.elapsed(), result.is_err());
                match result {
                    Ok(resp) => match limit {
                        Some(limit) if resp.len() > limit => match Message::from_vec(&resp) {
                            Ok(m) => response::encode(m, Some(limit)),
                            Err(_) => response::encode(
                                response::error(&msg, ResponseCode::ServFail),
                                Some(limit),
                            ),
                        },
                        _ => Some(resp),
                    },
                    Err(e) => {
                        debug!(query = ?msg.queries.first(), error = %e, "forwarding failed");
                        response::encode(response::error(&msg, ResponseCode::ServFail), limit)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proto::istio::workload as pb;

    use super::*;

    #[test]
    fn a_pods_labels_follow_its_workload() {
        let state = MeshState::default();
        let client = DnsClient::Pod(WorkloadInfo {
            name: "cart-0".into(),
            namespace: "shop".into(),
            service_account: "cart".into(),
            trust_domain: "cluster.local".into(),
        });
        assert_eq!(
            client.labels(&state),
            SourceLabels::default(),
            "unknown until the Workload arrives"
        );
        let w = state::Workload::try_from(pb::Workload {
            uid: "Kubernetes//Pod/shop/cart-0".into(),
            name: "cart-0".into(),
            namespace: "shop".into(),
            service_account: "cart".into(),
            canonical_name: "cart".into(),
            canonical_revision: "v2".into(),
            addresses: vec![vec![10, 0, 0, 1]],
            ..Default::default()
        })
        .unwrap();
        state.insert_workload("Kubernetes//Pod/shop/cart-0", w);
        assert_eq!(
            client.labels(&state),
            SourceLabels {
                canonical_service: "cart".into(),
                canonical_revision: "v2".into(),
            }
        );
    }
}

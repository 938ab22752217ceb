//! L4 telemetry: Istio's TCP metrics and the `access` log, both derived from one
//! [`ConnectionContext`] so that they always agree.
//!
//! * [`traffic_labels`] builds the exact label set (names and order of Istio's ztunnel,
//!   contract §10) as a pure function, table-tested below;
//! * [`TelemetrySink`] is where the proxy reports connection events; [`DefaultTelemetry`]
//!   records them with the `metrics` crate and writes the access log on tracing target
//!   `access` (contract §11); tests inject their own sink;
//! * bytes are counted as they flow (so a connection closed by drain or late rejection still
//!   reports what it moved) and the byte counters are incremented **at close**, like the
//!   connection counters. Istio's `istio_tcp_received_bytes_total` is client→server,
//!   `istio_tcp_sent_bytes_total` server→client, for both reporters.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use hbone::Identity;
use hbone::headers::Baggage;
use state::Workload;

/// Metric names (final Prometheus names; the exporter does not add a second `_total`).
pub const TCP_OPENED: &str = "istio_tcp_connections_opened_total";
pub const TCP_CLOSED: &str = "istio_tcp_connections_closed_total";
pub const TCP_FAILED: &str = "istio_tcp_connections_failed_total";
pub const TCP_RECEIVED_BYTES: &str = "istio_tcp_received_bytes_total";
pub const TCP_SENT_BYTES: &str = "istio_tcp_sent_bytes_total";
pub const TCP_SOCKETS_OPEN: &str = "istio_tcp_sockets_open";
pub const ON_DEMAND_DNS: &str = "istio_on_demand_dns_total";

/// The tracing target of access logs.
pub const ACCESS_TARGET: &str = "access";

const UNKNOWN: &str = "unknown";

/// Which way the connection goes, from this proxy's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Captured on 15001; we are the source proxy (`reporter="source"`).
    Outbound,
    /// Arrived on 15008 or 15006; we are the destination proxy (`reporter="destination"`).
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }

    /// The `reporter` label.
    pub fn reporter(self) -> &'static str {
        match self {
            Direction::Outbound => "source",
            Direction::Inbound => "destination",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `connection_security_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    MutualTls,
    Unknown,
}

impl SecurityPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::MutualTls => "mutual_tls",
            SecurityPolicy::Unknown => "unknown",
        }
    }
}

/// Istio's `response_flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ResponseFlag {
    /// `-`
    #[default]
    None,
    /// Authorization policy denied the connection.
    Deny,
    /// Upstream connect failed, or a generic failure.
    Connect,
    TlsFailure,
    H2HandshakeFailure,
    /// Timed out dialing 15008 (a NetworkPolicy may block it).
    NetworkPolicy,
    /// No certificate for the source identity.
    IdentityError,
    CertRevoked,
}

impl ResponseFlag {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::None => "-",
            ResponseFlag::Deny => "DENY",
            ResponseFlag::Connect => "CONNECT",
            ResponseFlag::TlsFailure => "TLS_FAILURE",
            ResponseFlag::H2HandshakeFailure => "H2_HANDSHAKE_FAILURE",
            ResponseFlag::NetworkPolicy => "NETWORK_POLICY",
            ResponseFlag::IdentityError => "IDENTITY_ERROR",
            ResponseFlag::CertRevoked => "CERT_REVOKED",
        }
    }

    /// The flag of an HBONE client error (the hbone crate classifies its own failures).
    pub fn from_hbone(e: &hbone::Error) -> Self {
        match e.response_flag() {
            "DENY" => ResponseFlag::Deny,
            "TLS_FAILURE" => ResponseFlag::TlsFailure,
            "H2_HANDSHAKE_FAILURE" => ResponseFlag::H2HandshakeFailure,
            "NETWORK_POLICY" => ResponseFlag::NetworkPolicy,
            "IDENTITY_ERROR" => ResponseFlag::IdentityError,
            "CERT_REVOKED" => ResponseFlag::CertRevoked,
            "-" => ResponseFlag::None,
            _ => ResponseFlag::Connect,
        }
    }
}

impl fmt::Display for ResponseFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What telemetry needs to know about one side of a connection (from a workload in the mesh
/// state, or from request baggage). Empty strings are unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// Pod name (access logs prefer it).
    pub name: String,
    /// `workload_name` (metrics `*_workload`).
    pub workload_name: String,
    pub namespace: String,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub cluster_id: String,
    pub region: String,
    pub zone: String,
}

impl From<&Workload> for PeerInfo {
    fn from(w: &Workload) -> Self {
        PeerInfo {
            name: w.name.clone(),
            workload_name: w.workload_name.clone(),
            namespace: w.namespace.clone(),
            canonical_name: w.canonical_name.clone(),
            canonical_revision: w.canonical_revision.clone(),
            cluster_id: w.cluster_id.clone(),
            region: w.locality.region.clone(),
            zone: w.locality.zone.clone(),
        }
    }
}

impl From<&Baggage> for PeerInfo {
    fn from(b: &Baggage) -> Self {
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        PeerInfo {
            name: String::new(),
            workload_name: s(&b.workload_name),
            namespace: s(&b.namespace),
            canonical_name: s(&b.service_name),
            canonical_revision: s(&b.service_version),
            cluster_id: s(&b.cluster_id),
            region: s(&b.region),
            zone: s(&b.zone),
        }
    }
}

impl PeerInfo {
    /// The name access logs show: the pod name, else the canonical service.
    pub fn display_name(&self) -> &str {
        if self.name.is_empty() {
            &self.canonical_name
        } else {
            &self.name
        }
    }

    fn has_locality(&self) -> bool {
        !self.region.is_empty() || !self.zone.is_empty()
    }
}

/// The service a connection is attributed to (`destination_service*`, `dst.service`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    pub hostname: String,
    pub namespace: String,
    pub name: String,
}

impl From<&state::Service> for ServiceInfo {
    fn from(s: &state::Service) -> Self {
        ServiceInfo {
            hostname: s.hostname.clone(),
            namespace: s.namespace.clone(),
            name: s.name.clone(),
        }
    }
}

/// Everything known about a connection once it is classified: the single source of metrics
/// labels and access-log fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionContext {
    pub direction: Direction,
    /// `src.addr`: the application client (outbound) or the HBONE / plaintext peer (inbound).
    pub src_addr: SocketAddr,
    /// `dst.addr`: where we connect (outbound: the upstream, `<ip>:15008` for HBONE) or where
    /// the connection arrived (inbound HBONE: `<podIP>:15008`; plaintext: the original dst).
    pub dst_addr: SocketAddr,
    /// `dst.hbone_addr`: the CONNECT authority, when HBONE is involved.
    pub hbone_target: Option<String>,
    pub source: Option<PeerInfo>,
    /// A verified mTLS identity (outbound HBONE: our own; inbound: the peer's).
    pub source_identity: Option<Identity>,
    pub destination: Option<PeerInfo>,
    /// Only when mTLS is used.
    pub destination_identity: Option<Identity>,
    pub destination_service: Option<ServiceInfo>,
    pub security: SecurityPolicy,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Client → server bytes (`istio_tcp_received_bytes_total`).
    pub client_to_server: u64,
    /// Server → client bytes (`istio_tcp_sent_bytes_total`).
    pub server_to_client: u64,
    pub duration: Duration,
    pub flag: ResponseFlag,
    /// Set when the connection failed (logged at ERROR).
    pub error: Option<String>,
}

/// A connection rejected before a [`ConnectionContext`] existed (illegal port, unknown local
/// workload, TLS-level refusal...): logged as `connection failed`, not counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlyFailure {
    pub direction: Direction,
    pub src_addr: SocketAddr,
    pub dst_addr: Option<SocketAddr>,
    pub error: String,
}

/// Receives connection events. Implementations must be cheap: they run on the data path.
pub trait TelemetrySink: Send + Sync + 'static {
    /// A connection was classified and is about to be proxied.
    fn opened(&self, ctx: &ConnectionContext);
    /// A connection that was [`opened`](Self::opened) ended (successfully or not).
    fn closed(&self, ctx: &ConnectionContext, outcome: &Outcome);
    /// A connection was rejected before it could be classified.
    fn failed(&self, failure: &EarlyFailure);
    /// `source` connects to an upstream known only by `hostname`, which is looked up now.
    fn on_demand_dns(&self, source: &Workload, hostname: &str) {
        let _ = (source, hostname);
    }
}

/// Istio's metrics (through the `metrics` crate's global recorder) plus the access log.
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultTelemetry;

impl DefaultTelemetry {
    /// Registers descriptions of the metrics with the installed recorder.
    pub fn describe() {
        metrics::describe_counter!(TCP_OPENED, "The total number of TCP connections opened");
        metrics::describe_counter!(TCP_CLOSED, "The total number of TCP connections closed");
        metrics::describe_counter!(
            TCP_FAILED,
            "The total number of TCP connections that failed to establish (unstable)"
        );
        metrics::describe_counter!(
            TCP_RECEIVED_BYTES,
            "The size of total bytes received during request in case of a TCP connection"
        );
        metrics::describe_counter!(
            TCP_SENT_BYTES,
            "The size of total bytes sent during response in case of a TCP connection"
        );
        metrics::describe_gauge!(
            TCP_SOCKETS_OPEN,
            "The current number of open TCP sockets (unstable)"
        );
        metrics::describe_counter!(
            ON_DEMAND_DNS,
            "The total number of requests that used on-demand DNS (unstable)"
        );
    }
}

fn to_metric_labels(labels: Vec<(&'static str, String)>) -> Vec<metrics::Label> {
    labels
        .into_iter()
        .map(|(k, v)| metrics::Label::new(k, v))
        .collect()
}

impl TelemetrySink for DefaultTelemetry {
    fn opened(&self, ctx: &ConnectionContext) {
        let labels = to_metric_labels(traffic_labels(ctx, ResponseFlag::None));
        metrics::counter!(TCP_OPENED, labels).increment(1);
        metrics::gauge!(TCP_SOCKETS_OPEN, "reporter" => ctx.direction.reporter()).increment(1.0);
        log_opened(ctx);
    }

    fn closed(&self, ctx: &ConnectionContext, outcome: &Outcome) {
        let labels = to_metric_labels(traffic_labels(ctx, outcome.flag));
        metrics::counter!(TCP_CLOSED, labels.clone()).increment(1);
        if outcome.flag != ResponseFlag::None {
            metrics::counter!(TCP_FAILED, labels.clone()).increment(1);
        }
        metrics::counter!(TCP_RECEIVED_BYTES, labels.clone()).increment(outcome.client_to_server);
        metrics::counter!(TCP_SENT_BYTES, labels).increment(outcome.server_to_client);
        metrics::gauge!(TCP_SOCKETS_OPEN, "reporter" => ctx.direction.reporter()).decrement(1.0);
        log_closed(ctx, outcome);
    }

    fn failed(&self, failure: &EarlyFailure) {
        log_failed(failure);
    }

    fn on_demand_dns(&self, source: &Workload, hostname: &str) {
        metrics::counter!(
            ON_DEMAND_DNS,
            to_metric_labels(on_demand_dns_labels(source, hostname))
        )
        .increment(1);
    }
}

/// The labels of `istio_on_demand_dns_total`, in Istio's order.
pub fn on_demand_dns_labels(source: &Workload, hostname: &str) -> Vec<(&'static str, String)> {
    let mut labels = source_labels(&PeerInfo::from(source), source.identity.to_string());
    labels.push(("hostname", hostname.to_string()));
    labels
}

/// The `source_*` labels shared by the traffic and on-demand DNS metrics, in Istio's order.
fn source_labels(src: &PeerInfo, principal: String) -> Vec<(&'static str, String)> {
    vec![
        ("source_workload", or_unknown(&src.workload_name)),
        ("source_canonical_service", or_unknown(&src.canonical_name)),
        (
            "source_canonical_revision",
            or_unknown(&src.canonical_revision),
        ),
        ("source_workload_namespace", or_unknown(&src.namespace)),
        ("source_principal", principal),
        ("source_app", or_unknown(&src.canonical_name)),
        ("source_version", or_unknown(&src.canonical_revision)),
        ("source_cluster", or_unknown(&src.cluster_id)),
    ]
}

fn or_unknown(v: &str) -> String {
    if v.is_empty() {
        UNKNOWN.to_string()
    } else {
        v.to_string()
    }
}

/// Istio's traffic labels, in emission order (contract §10). Missing values are `unknown`;
/// the four locality labels are appended only when either side has a locality.
pub fn traffic_labels(ctx: &ConnectionContext, flag: ResponseFlag) -> Vec<(&'static str, String)> {
    let empty = PeerInfo::default();
    let src = ctx.source.as_ref().unwrap_or(&empty);
    let dst = ctx.destination.as_ref().unwrap_or(&empty);
    let principal = |id: &Option<Identity>| {
        id.as_ref()
            .map_or_else(|| UNKNOWN.to_string(), ToString::to_string)
    };
    let svc = ctx.destination_service.as_ref();
    let svc_field = |f: fn(&ServiceInfo) -> &str| or_unknown(svc.map_or("", f));
    let mut labels = vec![("reporter", ctx.direction.reporter().to_string())];
    labels.extend(source_labels(src, principal(&ctx.source_identity)));
    labels.extend([
        ("destination_service", svc_field(|s| &s.hostname)),
        ("destination_service_namespace", svc_field(|s| &s.namespace)),
        ("destination_service_name", svc_field(|s| &s.name)),
        ("destination_workload", or_unknown(&dst.workload_name)),
        (
            "destination_canonical_service",
            or_unknown(&dst.canonical_name),
        ),
        (
            "destination_canonical_revision",
            or_unknown(&dst.canonical_revision),
        ),
        ("destination_workload_namespace", or_unknown(&dst.namespace)),
        (
            "destination_principal",
            principal(&ctx.destination_identity),
        ),
        ("destination_app", or_unknown(&dst.canonical_name)),
        ("destination_version", or_unknown(&dst.canonical_revision)),
        ("destination_cluster", or_unknown(&dst.cluster_id)),
        ("request_protocol", "tcp".to_string()),
        ("response_flags", flag.as_str().to_string()),
        (
            "connection_security_policy",
            ctx.security.as_str().to_string(),
        ),
    ]);
    if src.has_locality() || dst.has_locality() {
        labels.extend([
            ("source_region", or_unknown(&src.region)),
            ("source_zone", or_unknown(&src.zone)),
            ("destination_region", or_unknown(&dst.region)),
            ("destination_zone", or_unknown(&dst.zone)),
        ]);
    }
    labels
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Emits one access-log event with the common connection fields.
macro_rules! access_event {
    ($level:expr, $ctx:expr, $($rest:tt)*) => {{
        let ctx: &ConnectionContext = $ctx;
        let src = ctx.source.as_ref();
        let dst = ctx.destination.as_ref();
        tracing::event!(
            target: "access",
            $level,
            src.addr = %ctx.src_addr,
            src.workload = src.and_then(|p| non_empty(p.display_name())),
            src.namespace = src.and_then(|p| non_empty(&p.namespace)),
            src.identity = ctx.source_identity.as_ref().map(tracing::field::display),
            src.cluster = src.and_then(|p| non_empty(&p.cluster_id)),
            dst.addr = %ctx.dst_addr,
            dst.hbone_addr = ctx.hbone_target.as_deref(),
            dst.service = ctx.destination_service.as_ref().map(|s| s.hostname.as_str()),
            dst.workload = dst.and_then(|p| non_empty(p.display_name())),
            dst.namespace = dst.and_then(|p| non_empty(&p.namespace)),
            dst.identity = ctx.destination_identity.as_ref().map(tracing::field::display),
            dst.cluster = dst.and_then(|p| non_empty(&p.cluster_id)),
            direction = ctx.direction.as_str(),
            $($rest)*
        )
    }};
}

/// `connection opened` (DEBUG).
pub fn log_opened(ctx: &ConnectionContext) {
    access_event!(tracing::Level::DEBUG, ctx, "connection opened");
}

/// `connection complete` (INFO, or ERROR with `error=`).
pub fn log_closed(ctx: &ConnectionContext, outcome: &Outcome) {
    // Outbound: bytes_sent = client→server; inbound: what we sent to the HBONE peer.
    let (sent, recv) = match ctx.direction {
        Direction::Outbound => (outcome.client_to_server, outcome.server_to_client),
        Direction::Inbound => (outcome.server_to_client, outcome.client_to_server),
    };
    let duration = format!("{}ms", outcome.duration.as_millis());
    match &outcome.error {
        None => access_event!(
            tracing::Level::INFO,
            ctx,
            bytes_sent = sent,
            bytes_recv = recv,
            duration = %duration,
            "connection complete"
        ),
        Some(error) => access_event!(
            tracing::Level::ERROR,
            ctx,
            bytes_sent = sent,
            bytes_recv = recv,
            duration = %duration,
            error = %error,
            "connection complete"
        ),
    }
}

/// `connection failed` (WARN).
pub fn log_failed(f: &EarlyFailure) {
    tracing::event!(
        target: "access",
        tracing::Level::WARN,
        src.addr = %f.src_addr,
        dst.addr = f.dst_addr.map(tracing::field::display),
        direction = f.direction.as_str(),
        error = %f.error,
        "connection failed"
    );
}

#[cfg(test)]
mod tests;

//! `controlplane serve`: everything wired together.
//!
//! 1. Opens the state directory; loads the CA (`--ca-plugin-dir`, else `<state>/ca/`, created
//!    on first start) and writes its root to `<state>/root-cert.pem`; loads or creates the token
//!    signing key.
//! 2. Issues the gRPC serving certificate from the CA: DNS SANs `istiod.istio-system.svc`,
//!    `istiod.istio-system.svc.cluster.local`, `localhost`, the `--san` values, and the listen
//!    IP (loopback addresses when listening on an unspecified address).
//! 3. Loads the config directory with the translator and publishes the [`Snapshot`] on a
//!    watch channel; polls the directory every 250 ms (path, mtime and size of every file)
//!    and re-translates on change. Bad files or objects are logged (file, object, reason) and
//!    skipped; the rest keeps being served. An unreadable directory keeps the last snapshot.
//! 4. Serves the xDS and CA services on one TLS port, and rewrites `<state>/status.json`
//!    whenever the status changes.
//! 5. On the shutdown signal: stops the watcher (which ends every xDS stream), lets the gRPC
//!    server finish within [`SHUTDOWN_GRACE`], and writes a final status with `serving: false`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proto::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateServiceServer;
use serde::Serialize;
use std::convert::Infallible;
use std::task::{Context, Poll};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::transport::{Identity as TlsIdentity, Server, ServerTlsConfig};

use crate::Snapshot;
use crate::ca_server::{CaConfig, CaServer, DEFAULT_CERT_TTL, SnapshotPods};
use crate::state_dir::{StateDir, StateDirError};
use crate::status::StatusRegistry;
use crate::tokens::{LocalTokens, TokenError};
use crate::translate::TranslateOptions;
use crate::xds_server::XdsServer;

/// DNS names always in the serving certificate (what clients use as server name).
pub const SERVING_DNS_NAMES: [&str; 3] = [
    "istiod.istio-system.svc",
    "istiod.istio-system.svc.cluster.local",
    "localhost",
];
/// How often the config directory is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How long in-flight RPCs get after the shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Lifetime of the serving certificate (issued anew at every start).
const SERVING_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Everything `serve` needs; printed at startup.
#[derive(Debug, Clone, Serialize)]
pub struct ServeConfig {
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub trust_domain: String,
    pub cluster_id: String,
    pub trusted_node_agents: Vec<String>,
    #[serde(serialize_with = "seconds")]
    pub max_cert_ttl: Duration,
    pub sans: Vec<String>,
    pub ca_plugin_dir: Option<PathBuf>,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}s", d.as_secs()))
}

impl From<crate::cli::ServeArgs> for ServeConfig {
    fn from(a: crate::cli::ServeArgs) -> Self {
        ServeConfig {
            config_dir: a.config_dir,
            state_dir: a.state_dir,
            listen: a.listen,
            trust_domain: a.trust_domain,
            cluster_id: a.cluster_id,
            trusted_node_agents: a.trusted_node_agents,
            max_cert_ttl: a.max_cert_ttl,
            sans: a.sans,
            ca_plugin_dir: a.ca_plugin_dir,
        }
    }
}

/// Why `serve` could not start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error("CA: {0}")]
    Ca(#[from] identity::CaError),
    #[error("token signing key: {0}")]
    Tokens(#[from] TokenError),
    #[error("config directory {}: {reason}", .dir.display())]
    Config { dir: PathBuf, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("gRPC server: {0}")]
    Grpc(String),
}

/// Loads and translates a config directory; returns the snapshot and the problems found
/// (one line each: file, object, reason).
pub fn load_snapshot(
    dir: &Path,
    options: &TranslateOptions,
) -> Result<(Snapshot, Vec<String>), ServeError> {
    let loaded = crate::k8s::load_dir(dir).map_err(|e| ServeError::Config {
        dir: dir.to_owned(),
        reason: e.to_string(),
    })?;
    let mut problems: Vec<String> = loaded.report.errors.iter().map(|e| e.to_string()).collect();
    let (mut snapshot, diagnostics) =
        crate::translate::translate_with_diagnostics(&loaded.cluster, options);
    for pod in loaded.cluster.pods.values() {
        let Some(spec) = &pod.spec else { continue };
        let Some(node) = spec.node_name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let sa = spec
            .service_account_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        snapshot
            .pod_placement
            .entry(node.to_string())
            .or_default()
            .insert((namespace, sa));
    }
    problems.extend(
        diagnostics
            .iter()
            .map(|d| format!("{} {}: {}", d.kind, d.object, d.finding)),
    );
    Ok((snapshot, problems))
}

/// The SANs of the serving certificate.
pub fn serving_sans(listen: SocketAddr, extra: &[String]) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns: Vec<String> = SERVING_DNS_NAMES.iter().map(|s| s.to_string()).collect();
    let mut ips = Vec::new();
    if listen.ip().is_unspecified() {
        ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        ips.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
    } else {
        ips.push(listen.ip());
    }
    for san in extra {
        match san.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) if !dns.contains(san) => dns.push(san.clone()),
            Err(_) => {}
        }
    }
    (dns, ips)
}

fn snapshot_sizes(s: &Snapshot) -> BTreeMap<String, usize> {
    BTreeMap::from([
        (proto::ADDRESS_TYPE_URL.to_string(), s.addresses.len()),
        (
            proto::AUTHORIZATION_TYPE_URL.to_string(),
            s.authorizations.len(),
        ),
    ])
}

fn log_problems(problems: &[String]) {
    for p in problems {
        tracing::warn!(problem = %p, "config object skipped or translated with a caveat");
    }
}

/// Runs the control plane until `shutdown` completes. The bound address (useful with port 0)
/// is logged and written to `status.json` (`listen`).
pub async fn run(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "starting");
    let state = StateDir::open(&config.state_dir)?;
    let signer = match &config.ca_plugin_dir {
        Some(dir) => identity::CaSigner::from_plugged(dir)?,
        None => {
            let dir = state.ca_dir();
            std::fs::create_dir_all(&dir).map_err(|source| StateDirError::Create {
                path: dir.clone(),
                source,
            })?;
            identity::CaSigner::load_or_create(&dir)?
        }
    };
    state.write_atomic(&state.root_cert(), signer.root_pem().as_bytes(), false)?;
    let tokens = Arc::new(LocalTokens::load_or_create(&state)?);

    let (dns, ips) = serving_sans(config.listen, &config.sans);
    let serving = signer.issue_serving_cert(&dns, &ips, SERVING_CERT_TTL)?;
    let tls = ServerTlsConfig::new().identity(TlsIdentity::from_pem(
        serving.chain_pem.as_bytes(),
        serving.key_pem.as_bytes(),
    ));

    let options = TranslateOptions {
        cluster_id: config.cluster_id.clone(),
        trust_domain: config.trust_domain.clone(),
        ..TranslateOptions::default()
    };
    let status = StatusRegistry::new();
    let (snapshot, problems) = load_snapshot(&config.config_dir, &options)?;
    log_problems(&problems);
    tracing::info!(
        addresses = snapshot.addresses.len(),
        authorizations = snapshot.authorizations.len(),
        "translated the config directory"
    );
    status.set_snapshot(snapshot_sizes(&snapshot), problems);
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(snapshot));

    let xds = XdsServer::new(snapshot_rx.clone(), tokens.clone(), status.clone());
    let ca = CaServer::new(
        CaConfig {
            trust_domain: config.trust_domain.clone(),
            trusted_node_agents: config.trusted_node_agents.clone(),
            default_ttl: DEFAULT_CERT_TTL.min(config.max_cert_ttl),
            max_ttl: config.max_cert_ttl,
        },
        Arc::new(signer),
        tokens,
        Arc::new(SnapshotPods(snapshot_rx)),
    );

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;
    status.set_listen(local.to_string());
    status.set_serving(true);
    tracing::info!(listen = %local, root = %state.root_cert().display(), "serving xDS and the CA");

    let (stop_tx, stop_rx) = watch::channel(false);
    let watcher = tokio::spawn(watch_config(
        config.config_dir.clone(),
        options,
        snapshot_tx,
        status.clone(),
        stop_rx.clone(),
    ));
    let writer = tokio::spawn(write_status(state.clone(), status.clone(), stop_rx.clone()));

    let server = Server::builder()
        .tls_config(tls)
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .serve_with_incoming_shutdown(
            Routes::new(xds, ca),
            TcpListenerStream::new(listener),
            async move {
                shutdown.await;
                tracing::info!("shutting down");
                let _ = stop_tx.send(true);
            },
        );
    tokio::pin!(server);
    let mut stopping = stop_rx.clone();
    let result = tokio::select! {
        r = &mut server => r.map_err(|e| ServeError::Grpc(e.to_string())),
        () = async {
            let _ = stopping.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
            Ok(())
        }
    };
    let _ = watcher.await;
    let _ = writer.await;
    status.set_serving(false);
    write_report(&state, &status);
    tracing::info!("stopped");
    result
}

/// Both gRPC services on one server, dispatched by path (tonic's own router needs axum).
#[derive(Clone)]
pub struct Routes {
    xds: AggregatedDiscoveryServiceServer<XdsServer>,
    ca: IstioCertificateServiceServer<CaServer>,
}

impl Routes {
    pub fn new(xds: XdsServer, ca: CaServer) -> Self {
        Routes {
            xds: xds.into_service(),
            ca: ca.into_service(),
        }
    }
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes").finish_non_exhaustive()
    }
}

impl Service<http::Request<Body>> for Routes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The generated services are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        if path.starts_with(XDS_PREFIX) {
            self.xds.call(request)
        } else if path.starts_with(CA_PREFIX) {
            self.ca.call(request)
        } else {
            let status = tonic::Status::unimplemented(format!(
                "{path}: this control plane serves only {XDS_PREFIX}* and {CA_PREFIX}*"
            ));
            Box::pin(std::future::ready(Ok(status.into_http())))
        }
    }
}

const XDS_PREFIX: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/";
const CA_PREFIX: &str = "/istio.v1.auth.IstioCertificateService/";

/// `(path, mtime, size)` of every file below `dir`, sorted.
type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn fingerprint(dir: &Path) -> std::io::Result<Fingerprint> {
    fn walk(dir: &Path, out: &mut Fingerprint, top: bool) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if top => return Err(e),
            Err(_) => return Ok(()),
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            // Follows symlinks, as loading does.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                walk(&path, out, false)?;
            } else {
                out.push((path, meta.modified().ok(), meta.len()));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, &mut out, true)?;
    out.sort();
    Ok(out)
}

async fn watch_config(
    dir: PathBuf,
    options: TranslateOptions,
    snapshots: watch::Sender<Arc<Snapshot>>,
    status: StatusRegistry,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = fingerprint(&dir).ok();
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = interval.tick() => {}
        }
        let current = match fingerprint(&dir) {
            Ok(f) => Some(f),
            Err(e) => {
                if last.is_some() {
                    tracing::warn!(dir = %dir.display(), error = %e, "config directory unreadable; keeping the last configuration");
                }
                None
            }
        };
        if current.is_none() || current == last {
            last = current.or(last);
            continue;
        }
        last = current;
        let (d, o) = (dir.clone(), options.clone());
        let loaded = tokio::task::spawn_blocking(move || load_snapshot(&d, &o)).await;
        let (snapshot, problems) = match loaded {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reload failed; keeping the last configuration");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "reload task failed");
                continue;
            }
        };
        log_problems(&problems);
        status.set_snapshot(snapshot_sizes(&snapshot), problems);
        let changed = snapshots.send_if_modified(|current| {
            if **current == snapshot {
                false
            } else {
                *current = Arc::new(snapshot);
                true
            }
        });
        if changed {
            let s = snapshots.borrow();
            tracing::info!(
                addresses = s.addresses.len(),
                authorizations = s.authorizations.len(),
                "config changed; pushing"
            );
        }
    }
    // Dropping `snapshots` here ends every xDS stream.
}

fn write_report(state: &StateDir, status: &StatusRegistry) {
    let report = status.report();
    match serde_json::to_vec_pretty(&report) {
        Ok(json) => {
            if let Err(e) = state.write_atomic(&state.status(), &json, false) {
                tracing::warn!(error = %e, "cannot write the status file");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot encode the status"),
    }
}

async fn write_status(state: StateDir, status: StatusRegistry, mut stop: watch::Receiver<bool>) {
    let mut changes = status.subscribe();
    loop {
        changes.mark_unchanged();
        write_report(&state, &status);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            r = changes.changed() => if r.is_err() { break },
        }
        // Coalesce bursts (a push to many proxies) into one write.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_include_listen_and_extra() {
        let (dns, ips) = serving_sans(
            "0.0.0.0:15012".parse().unwrap(),
            &["cp.example".into(), "10.1.2.3".into(), "localhost".into()],
        );
        assert_eq!(
            dns,
            [
                "istiod.istio-system.svc",
                "istiod.istio-system.svc.cluster.local",
                "localhost",
                "cp.example"
            ]
        );
        assert!(ips.contains(&"127.0.0.1".parse().unwrap()));
        assert!(ips.contains(&"10.1.2.3".parse().unwrap()));
        let (_, ips) = serving_sans("10.0.0.1:15012".parse().unwrap(), &[]);
        assert_eq!(ips, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn fingerprint_sees_edits() {
        let dir = std::env::temp_dir().join(format!("cp-fp-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.yaml"), "a").unwrap();
        std::fs::write(dir.join(".hidden"), "x").unwrap();
        let f1 = fingerprint(&dir).unwrap();
        assert_eq!(f1.len(), 1);
        std::fs::write(dir.join("sub/b.yaml"), "b").unwrap();
        let f2 = fingerprint(&dir).unwrap();
        assert_eq!(f2.len(), 2);
        std::fs::write(dir.join("a.yaml"), "aa").unwrap();
        assert_ne!(fingerprint(&dir).unwrap(), f2);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(fingerprint(&dir).is_err());
    }
}

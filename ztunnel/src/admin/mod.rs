//! ztunnel's three local HTTP/1.1 servers:
//!
//! * **admin** ([`start_admin`], default `localhost:15000`): `/` index, `/config_dump` (in
//!   Istio's shape, see [`dump`]), `/logging`, `/quitquitquit`, `/debug/pprof/profile` (CPU
//!   profiles, [`pprof`]);
//! * **stats** ([`start_stats`], default `[::]:15020`): `/metrics` and `/stats/prometheus`;
//! * **readiness** ([`start_readiness`], default `[::]:15021`): `GET /healthz/ready`, driven by
//!   the [`Readiness`] registry.
//!
//! Each start function binds first (returning an [`AdminError`] naming the server and address)
//! and then serves in a background task until the [`DrainWatch`] drains: listeners close at
//! once, open connections are shut down gracefully and closed at the drain deadline.

mod api;
pub mod dump;
mod pprof;
mod readiness;
mod runtime_metrics;
mod stats;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshcore::drain::DrainWatch;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::ListenAddress;

pub use api::{AdminState, ConfigDumpProvider, start_admin, version_info};
pub use dump::DumpSources;
pub use readiness::{Readiness, ReadyTask, start_readiness};
pub use stats::start_stats;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{server} listener {addr}: {}", describe(.source))]
    Bind {
        server: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
}

fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => "address in use".to_owned(),
        io::ErrorKind::AddrNotAvailable => "address not available on this host".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    }
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    name: &'static str,
    addrs: Vec<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Which server this is (`admin`, `stats`, `readiness`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The addresses actually bound (ports resolved when 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Resolves once the server stopped accepting and every connection finished or was closed
    /// at the drain deadline.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// The body type every handler answers with.
pub(crate) type Body = Full<Bytes>;

pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub(crate) fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed: use {allow}\n"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, http::HeaderValue::from_static(allow));
    resp
}

pub(crate) fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not found\n")
}

fn unavailable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::AddrNotAvailable | io::ErrorKind::Unsupported
    ) || e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT)
}

/// Binds `addr` as [`ListenAddress::candidates`] describes: every localhost address (IPv6 best
/// effort, same port as IPv4 when 0 was asked for), the first wildcard that works, or exactly
/// the given address.
pub(crate) async fn bind(
    server: &'static str,
    addr: &ListenAddress,
) -> Result<Vec<TcpListener>, AdminError> {
    let bind_one = |a: SocketAddr| async move {
        TcpListener::bind(a)
            .await
            .map_err(|source| AdminError::Bind {
                server,
                addr: a,
                source,
            })
    };
    let candidates = addr.candidates();
    match addr {
        ListenAddress::Exact(_) => Ok(vec![bind_one(candidates[0]).await?]),
        ListenAddress::Localhost { .. } => {
            let v4 = bind_one(candidates[0]).await?;
            let port = v4.local_addr().map_or(addr.port(), |a| a.port());
            let mut out = vec![v4];
            for mut extra in candidates.into_iter().skip(1) {
                extra.set_port(port);
                match bind_one(extra).await {
                    Ok(l) => out.push(l),
                    Err(AdminError::Bind { source, .. }) if unavailable(&source) => {
                        tracing::debug!(%extra, "{server}: IPv6 loopback unavailable, skipped");
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        }
        ListenAddress::Unspecified { .. } => {
            let (last, first) = candidates.split_last().expect("at least one candidate");
            for candidate in first {
                match bind_one(*candidate).await {
                    Ok(l) => return Ok(vec![l]),
                    Err(AdminError::Bind { source, .. }) if unavailable(&source) => {
                        tracing::debug!(%candidate, "{server}: IPv6 unavailable, falling back");
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(vec![bind_one(*last).await?])
        }
    }
}

/// Serves `handler` on `listeners` until `watch` drains.
pub(crate) fn serve<H, F>(
    name: &'static str,
    listeners: Vec<TcpListener>,
    watch: DrainWatch,
    handler: H,
) -> Server
where
    H: Fn(http::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let addrs = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect::<Vec<_>>();
    tracing::info!(addrs = ?addrs, "{name} server listening");
    let task = tokio::spawn(async move {
        let mut accept_loops = JoinSet::new();
        for listener in listeners {
            accept_loops.spawn(accept_loop(name, listener, watch.clone(), handler.clone()));
        }
        drop(watch);
        while accept_loops.join_next().await.is_some() {}
        tracing::debug!("{name} server stopped");
    });
    Server { name, addrs, task }
}

/// Accepts until the drain starts, then waits for its connections to finish.
async fn accept_loop<H, F>(name: &'static str, listener: TcpListener, watch: DrainWatch, handler: H)
where
    H: Fn(http::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = watch.wait_for_drain() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, handler.clone(), watch.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{name} server: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    drop(watch);
    while connections.join_next().await.is_some() {}
}

async fn connection<H, F>(stream: tokio::net::TcpStream, handler: H, watch: DrainWatch)
where
    H: Fn(http::Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let service = service_fn(move |req| {
        let fut = handler(req);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        deadline = watch.wait_for_drain() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout_at(deadline.instant(), conn).await;
        }
    }
}

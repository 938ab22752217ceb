//! The agent's HTTP endpoints: the plugin event server on `<run-dir>/pluginevent.sock`
//! (`POST /cmdadd`: 200 ok, 400 invalid body, 500 enrolment failure with the reason in the
//! body), readiness (`/readyz`, `/healthz`) and Prometheus metrics (`/metrics`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshcore::telemetry::Prometheus;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

use super::{Agent, CmdAdd};

/// Largest accepted request body.
const MAX_BODY: usize = 64 * 1024;

fn reply(code: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    r
}

/// Serves one connection with `handler`.
pub fn serve_conn<IO, H, F>(io: IO, handler: H)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Method, String, Bytes) -> F + Send + Sync + Clone + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        let svc = service_fn(move |req: Request<Incoming>| {
            let handler = handler.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => {
                        return Ok::<_, Infallible>(reply(
                            StatusCode::BAD_REQUEST,
                            "body unreadable or too large",
                        ));
                    }
                };
                Ok(handler(parts.method, parts.uri.path().to_owned(), body).await)
            }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), svc)
            .await
        {
            debug!(error = %e, "HTTP connection error");
        }
    });
}

/// Handles one plugin request.
pub async fn plugin_request(
    agent: Arc<Agent>,
    method: Method,
    path: String,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let resp = if method != Method::POST || path != "/cmdadd" {
        reply(StatusCode::NOT_FOUND, "unknown endpoint (POST /cmdadd)")
    } else {
        match serde_json::from_slice::<CmdAdd>(&body) {
            Err(e) => reply(StatusCode::BAD_REQUEST, format!("invalid cmdadd body: {e}")),
            Ok(req)
                if req.pod_name.is_empty()
                    || req.pod_namespace.is_empty()
                    || req.netns.is_empty() =>
            {
                reply(
                    StatusCode::BAD_REQUEST,
                    "cmdadd needs Netns, PodName and PodNamespace",
                )
            }
            Ok(req) => match agent.handle_cmdadd(&req).await {
                Ok(()) => reply(StatusCode::OK, ""),
                Err(e) => {
                    warn!(pod = %req.pod_name, namespace = %req.pod_namespace, error = %e, "cmdadd failed");
                    reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                }
            },
        }
    };
    metrics::counter!("cni_plugin_requests_total", "code" => resp.status().as_u16().to_string())
        .increment(1);
    resp
}

/// Accepts plugin connections on `listener` forever.
pub async fn run_plugin_server(listener: tokio::net::UnixListener, agent: Arc<Agent>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let agent = agent.clone();
                serve_conn(stream, move |m, p, b| {
                    plugin_request(agent.clone(), m, p, b)
                });
            }
            Err(e) => warn!(error = %e, "plugin socket accept failed"),
        }
    }
}

/// Readiness, liveness and metrics on `listener`.
pub async fn run_status_server(
    listener: tokio::net::TcpListener,
    agent: Arc<Agent>,
    prom: Option<Prometheus>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (agent, prom) = (agent.clone(), prom.clone());
        serve_conn(stream, move |_m, path, _b| {
            let (agent, prom) = (agent.clone(), prom.clone());
            async move {
                match path.as_str() {
                    "/healthz" => reply(StatusCode::OK, "ok\n"),
                    "/readyz" if agent.is_ready() => reply(StatusCode::OK, "ready\n"),
                    "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
                    "/metrics" => match &prom {
                        Some(p) => {
                            metrics::gauge!("ztunnel_connected")
                                .set(agent.ztunnels_connected() as f64);
                            let mut r = reply(StatusCode::OK, p.render());
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static(Prometheus::CONTENT_TYPE),
                            );
                            r
                        }
                        None => reply(StatusCode::NOT_FOUND, "metrics disabled\n"),
                    },
                    _ => reply(StatusCode::NOT_FOUND, "not found\n"),
                }
            }
        });
    }
}

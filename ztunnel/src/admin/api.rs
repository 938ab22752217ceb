//! The admin server (`localhost:15000`).

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use meshcore::drain::{DrainTrigger, DrainWatch};
use meshcore::telemetry::LogHandle;

use super::{AdminError, Body, Server, bind, method_not_allowed, not_found, serve, text};
use crate::config::Config;

/// Produces the application's part of `/config_dump` (workloads, services, policies,
/// certificates…): a JSON object; the admin server adds `config` and `version`.
pub type ConfigDumpProvider = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// What the admin endpoints act on.
#[derive(Clone)]
pub struct AdminState {
    /// The effective configuration (`config` in `/config_dump`; the drain deadline).
    pub config: Arc<Config>,
    pub config_dump: ConfigDumpProvider,
    /// Run-time log level control for `/logging`.
    pub log: LogHandle,
    /// Started by `/quitquitquit` with the configured termination deadline.
    pub drain: DrainTrigger,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("log", &self.log)
            .field("drain", &self.drain)
            .finish_non_exhaustive()
    }
}

/// `version` in `/config_dump`.
pub fn version_info(config: &Config) -> serde_json::Value {
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "istioVersion": config.istio_version.as_deref().unwrap_or("unknown"),
        "buildProfile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

/// Binds the admin server and serves it until `watch` drains.
pub async fn start_admin(state: AdminState, watch: DrainWatch) -> Result<Server, AdminError> {
    let listeners = bind("admin", &state.config.admin_addr).await?;
    let state = Arc::new(state);
    Ok(serve("admin", listeners, watch, move |req| {
        let state = state.clone();
        async move {
            let path = req.uri().path();
            if path == "/debug/pprof" || path.starts_with("/debug/pprof/") {
                return super::pprof::handle(path, req.method(), req.uri().query()).await;
            }
            handle(&state, &req)
        }
    }))
}

const INDEX: &str = "<!DOCTYPE html>
<html><head><title>ztunnel admin</title></head><body>
<h1>ztunnel admin</h1>
<ul>
<li><a href=\"/config_dump\">/config_dump</a>: configuration and state (GET)</li>
<li>/logging: show or change log levels (POST; <code>?level=debug</code>,
<code>?level=hbone=trace,access=info</code>, <code>?reset</code>)</li>
<li>/quitquitquit: drain and exit (POST)</li>
<li>/debug/pprof/profile: CPU profile in pprof format (GET; <code>?seconds=10&amp;frequency=100</code>)</li>
<li>:15020/metrics, :15020/stats/prometheus: Prometheus metrics</li>
<li>:15021/healthz/ready: readiness</li>
</ul>
</body></html>
";

fn handle(state: &AdminState, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let method = req.method();
    match path {
        "/" => only(method, Method::GET, "GET", || {
            let mut resp = text(StatusCode::OK, INDEX);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        }),
        "/config_dump" => only(method, Method::GET, "GET", || config_dump(state)),
        "/logging" => only(method, Method::POST, "POST", || {
            logging(&state.log, req.uri().query())
        }),
        "/quitquitquit" => only(method, Method::POST, "POST", || {
            let deadline = state.drain.start_drain(state.config.termination_deadline);
            tracing::info!(
                remaining = ?deadline.remaining(),
                "shutdown requested through the admin API"
            );
            text(StatusCode::OK, "shutdown now\n")
        }),
        _ => not_found(),
    }
}

fn only(
    method: &Method,
    allowed: Method,
    allow: &'static str,
    f: impl FnOnce() -> Response<Body>,
) -> Response<Body> {
    if *method == allowed {
        f()
    } else {
        method_not_allowed(allow)
    }
}

fn config_dump(state: &AdminState) -> Response<Body> {
    let mut dump = match (state.config_dump)() {
        serde_json::Value::Object(map) => map,
        serde_json::Value::Null => serde_json::Map::new(),
        other => {
            let mut map = serde_json::Map::new();
            map.insert("state".to_owned(), other);
            map
        }
    };
    let config = serde_json::to_value(&*state.config).unwrap_or_else(|e| {
        serde_json::Value::String(format!("config could not be serialized: {e}"))
    });
    dump.insert("config".to_owned(), config);
    dump.insert("version".to_owned(), version_info(&state.config));
    match serde_json::to_vec_pretty(&serde_json::Value::Object(dump)) {
        Ok(body) => {
            let mut resp = text(StatusCode::OK, body);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("config dump could not be serialized: {e}\n"),
        ),
    }
}

/// `?level=<spec>` merges the spec, `?reset` restores the startup filter, no query reports.
fn logging(log: &LogHandle, query: Option<&str>) -> Response<Body> {
    let mut level = None;
    let mut reset = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (percent_decode(key).as_deref(), percent_decode(value)) {
            (Some("level"), Some(value)) => level = Some(value),
            (Some("reset"), _) => reset = true,
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown or malformed parameter {pair:?}: use `level=<spec>` or `reset`\n"
                    ),
                );
            }
        }
    }
    let result = match (reset, level) {
        (true, Some(_)) => {
            return text(
                StatusCode::BAD_REQUEST,
                "use either `level` or `reset`, not both\n",
            );
        }
        (true, None) => log.reset(),
        (false, Some(spec)) => log.set(&spec),
        (false, None) => Ok(log.current()),
    };
    match result {
        Ok(current) => text(StatusCode::OK, format!("current log level is {current}\n")),
        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// Decodes `%XX` escapes and `+` (space) of a query component; `None` if malformed.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_query_components() {
        assert_eq!(
            percent_decode("hbone%3Ddebug").as_deref(),
            Some("hbone=debug")
        );
        assert_eq!(percent_decode("a%2Cb+c").as_deref(), Some("a,b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
    }
}

//! The Prometheus server (`:15020/metrics`, `:15020/stats/prometheus`): Prometheus text, or
//! OpenMetrics text when the scrape's `Accept` asks for it.

use http::{Method, StatusCode, header};
use meshcore::drain::DrainWatch;
use meshcore::telemetry::{ExpositionFormat, Prometheus, to_openmetrics};

use super::{AdminError, Server, bind, method_not_allowed, not_found, serve, text};
use crate::config::ListenAddress;

/// Sets `istio_build{component="ztunnel",tag=<istio_version or "unknown">} 1`, binds the stats
/// server and serves the metrics recorded through `prometheus` until `watch` drains.
pub async fn start_stats(
    addr: &ListenAddress,
    prometheus: Prometheus,
    istio_version: Option<&str>,
    watch: DrainWatch,
) -> Result<Server, AdminError> {
    let listeners = bind("stats", addr).await?;
    metrics::gauge!(
        "istio_build",
        "component" => "ztunnel",
        "tag" => istio_version.unwrap_or("unknown").to_owned()
    )
    .set(1.0);
    Ok(serve("stats", listeners, watch, move |req| {
        let prometheus = prometheus.clone();
        async move {
            match req.uri().path() {
                "/metrics" | "/stats/prometheus" => {}
                _ => return not_found(),
            }
            if req.method() != Method::GET {
                return method_not_allowed("GET");
            }
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let format = ExpositionFormat::negotiate(accept);
            let mut body = prometheus.render();
            body.push_str(&super::runtime_metrics::render(
                &tokio::runtime::Handle::current().metrics(),
            ));
            if format == ExpositionFormat::OpenMetrics {
                body = to_openmetrics(&body);
            }
            let mut resp = text(StatusCode::OK, body);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(format.content_type()),
            );
            resp
        }
    }))
}

//! The process-wide Prometheus recorder.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use parking_lot::Mutex;

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "another metrics recorder is already installed in this process; the Prometheus exporter \
         must be installed before anything else sets a global `metrics` recorder"
    )]
    ForeignRecorder,
}

/// The handle of the recorder installed by [`Prometheus::install_with`], if any.
static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Renders the metrics recorded through the `metrics` facade as Prometheus text.
#[derive(Debug, Clone)]
pub struct Prometheus {
    handle: PrometheusHandle,
}

impl Prometheus {
    /// `Content-Type` of [`render`](Self::render)'s output.
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    /// Installs a recorder with default settings as the global `metrics` recorder.
    /// See [`install_with`](Self::install_with).
    pub fn install() -> Result<Self, MetricsError> {
        Self::install_with(PrometheusBuilder::new())
    }

    /// Builds a recorder from `builder` (histogram buckets, global labels…) and installs it as
    /// the global `metrics` recorder.
    ///
    /// Idempotent: if this function already installed a recorder in this process, that one is
    /// returned and `builder` is ignored (so tests and restarted components can call it freely).
    /// Fails only if some other code installed a different global recorder first.
    pub fn install_with(builder: PrometheusBuilder) -> Result<Self, MetricsError> {
        let mut installed = INSTALLED.lock();
        if let Some(handle) = installed.as_ref() {
            return Ok(Self {
                handle: handle.clone(),
            });
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).map_err(|_| MetricsError::ForeignRecorder)?;
        *installed = Some(handle.clone());
        Ok(Self { handle })
    }

    /// A recorder that is *not* installed globally, with its renderer; for tests that scope it
    /// with `metrics::with_local_recorder`.
    pub fn unregistered(builder: PrometheusBuilder) -> (PrometheusRecorder, Self) {
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        (recorder, Self { handle })
    }

    /// The Prometheus text exposition of every metric recorded so far. Runs the recorder's
    /// upkeep first (bounded histogram memory), so no background task is needed.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }

    /// The underlying exporter handle.
    pub fn handle(&self) -> &PrometheusHandle {
        &self.handle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_recorder_renders_text_format() {
        let (recorder, prom) = Prometheus::unregistered(PrometheusBuilder::new());
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("demo_requests_total", "code" => "200").increment(3);
            metrics::gauge!("demo_build", "tag" => "1.2.3").set(1.0);
        });
        let text = prom.render();
        assert!(
            text.contains("demo_requests_total{code=\"200\"} 3"),
            "{text}"
        );
        assert!(text.contains("demo_build{tag=\"1.2.3\"} 1"), "{text}");
        assert!(
            text.contains("# TYPE demo_requests_total counter"),
            "{text}"
        );
    }

    /// One test touches the global recorder: install twice, record through the facade.
    #[test]
    fn global_install_is_idempotent() {
        let a = Prometheus::install().unwrap();
        let b = Prometheus::install_with(PrometheusBuilder::new()).unwrap();
        metrics::counter!("meshcore_global_test_total").increment(1);
        assert!(a.render().contains("meshcore_global_test_total 1"));
        assert!(b.render().contains("meshcore_global_test_total 1"));
    }
}

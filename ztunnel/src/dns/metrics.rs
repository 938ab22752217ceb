//! Istio's DNS metrics (contract §10), recorded through the `metrics` facade.
//!
//! Every metric carries `request_query_type` (`A`, `AAAA`, ... of the first question),
//! `request_protocol` (`udp`/`tcp`), `source_canonical_service` and
//! `source_canonical_revision` (`unknown` when empty).

use std::time::Duration;

use metrics::Label;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

pub const REQUESTS: &str = "istio_dns_requests_total";
pub const UPSTREAM_REQUESTS: &str = "istio_dns_upstream_requests_total";
pub const UPSTREAM_FAILURES: &str = "istio_dns_upstream_failures_total";
pub const UPSTREAM_DURATION: &str = "istio_dns_upstream_request_duration_seconds";

/// Buckets of [`UPSTREAM_DURATION`] (seconds).
pub const UPSTREAM_DURATION_BUCKETS: [f64; 6] = [0.0005, 0.001, 0.01, 0.1, 1.0, 5.0];

/// The transport a query arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// The client workload's labels (`canonical_name` and `canonical_revision` of its workload).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceLabels {
    pub canonical_service: String,
    pub canonical_revision: String,
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "unknown".to_string()
    } else {
        s.to_string()
    }
}

/// Records the DNS metrics of one proxy instance.
#[derive(Debug, Clone)]
pub struct DnsMetrics {
    service: String,
    revision: String,
}

impl DnsMetrics {
    pub fn new(source: &SourceLabels) -> Self {
        DnsMetrics {
            service: or_unknown(&source.canonical_service),
            revision: or_unknown(&source.canonical_revision),
        }
    }

    fn labels(&self, query_type: &str, transport: Transport) -> Vec<Label> {
        vec![
            Label::new("request_query_type", query_type.to_string()),
            Label::new("request_protocol", transport.as_str()),
            Label::new("source_canonical_service", self.service.clone()),
            Label::new("source_canonical_revision", self.revision.clone()),
        ]
    }

    /// A query was received (counted once, however it is answered).
    pub fn request(&self, query_type: &str, transport: Transport) {
        metrics::counter!(REQUESTS, self.labels(query_type, transport)).increment(1);
    }

    /// A query was forwarded upstream; `failed` when no upstream answered (SERVFAIL sent).
    pub fn upstream(&self, query_type: &str, transport: Transport, took: Duration, failed: bool) {
        let labels = self.labels(query_type, transport);
        metrics::counter!(UPSTREAM_REQUESTS, labels.clone()).increment(1);
        if failed {
            metrics::counter!(UPSTREAM_FAILURES, labels.clone()).increment(1);
        }
        metrics::histogram!(UPSTREAM_DURATION, labels).record(took.as_secs_f64());
    }

    /// Registers the descriptions with the installed recorder.
    pub fn describe() {
        metrics::describe_counter!(REQUESTS, "Total number of DNS requests.");
        metrics::describe_counter!(
            UPSTREAM_REQUESTS,
            "Total number of DNS requests forwarded to upstream."
        );
        metrics::describe_counter!(UPSTREAM_FAILURES, "Total number of DNS upstream failures.");
        metrics::describe_histogram!(
            UPSTREAM_DURATION,
            metrics::Unit::Seconds,
            "Total time in seconds it takes to get a response from the upstream DNS server."
        );
    }
}

/// Adds Istio's buckets for [`UPSTREAM_DURATION`] to an exporter builder (call before
/// installing it).
pub fn with_buckets(builder: PrometheusBuilder) -> Result<PrometheusBuilder, BuildError> {
    builder.set_buckets_for_metric(
        Matcher::Full(UPSTREAM_DURATION.to_string()),
        &UPSTREAM_DURATION_BUCKETS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_with_istio_labels_and_buckets() {
        let builder = with_buckets(PrometheusBuilder::new()).unwrap();
        let (recorder, prom) = meshcore::telemetry::Prometheus::unregistered(builder);
        metrics::with_local_recorder(&recorder, || {
            let m = DnsMetrics::new(&SourceLabels {
                canonical_service: "cart".into(),
                canonical_revision: String::new(),
            });
            m.request("A", Transport::Udp);
            m.upstream("AAAA", Transport::Tcp, Duration::from_millis(3), true);
        });
        let text = prom.render();
        assert!(
            text.contains(
                "istio_dns_requests_total{request_query_type=\"A\",request_protocol=\"udp\",\
                 source_canonical_service=\"cart\",source_canonical_revision=\"unknown\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("istio_dns_upstream_failures_total{request_query_type=\"AAAA\""));
        assert!(text.contains("istio_dns_upstream_requests_total{request_query_type=\"AAAA\""));
        assert!(
            text.contains("istio_dns_upstream_request_duration_seconds_bucket{request_query_type=\"AAAA\",request_protocol=\"tcp\",source_canonical_service=\"cart\",source_canonical_revision=\"unknown\",le=\"0.01\"} 1"),
            "{text}"
        );
    }
}

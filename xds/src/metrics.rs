//! The client's metrics, with Istio's names, through the `metrics` facade
//! (the proxy installs the exporter).

use crate::backoff::TerminationReason;

/// Counter of responses received, label `url` (type URL).
pub const MESSAGE_TOTAL: &str = "istio_xds_message_total";
/// Counter of encoded response bytes received, label `url`.
pub const MESSAGE_BYTES_TOTAL: &str = "istio_xds_message_bytes_total";
/// Counter of stream terminations, label `reason`
/// (`ConnectionError`, `Error`, `Reconnect`, `Complete`).
pub const CONNECTION_TERMINATIONS_TOTAL: &str = "istio_xds_connection_terminations_total";

pub(crate) fn message(type_url: &str, bytes: usize) {
    let url = type_url.to_string();
    metrics::counter!(MESSAGE_TOTAL, "url" => url.clone()).increment(1);
    metrics::counter!(MESSAGE_BYTES_TOTAL, "url" => url).increment(bytes as u64);
}

pub(crate) fn termination(reason: TerminationReason) {
    metrics::counter!(CONNECTION_TERMINATIONS_TOTAL, "reason" => reason.as_str()).increment(1);
}

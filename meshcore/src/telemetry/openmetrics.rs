//! OpenMetrics 1.0 text exposition, negotiated through `Accept` as Prometheus scrapers do.
//!
//! The recorder renders the Prometheus text format 0.0.4; [`to_openmetrics`] rewrites it:
//! counter families lose their `_total` suffix in `# TYPE`/`# HELP` (samples keep it), a counter
//! whose name lacks `_total` is declared `unknown` (OpenMetrics requires the suffix), quotes in
//! help texts are escaped, blank lines are dropped, and `# EOF` ends the exposition.

/// The two exposition formats a scrape can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpositionFormat {
    /// Prometheus text format 0.0.4 (the default).
    Prometheus,
    /// OpenMetrics text format 1.0.0.
    OpenMetrics,
}

impl ExpositionFormat {
    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format for a request's `Accept` header: OpenMetrics when it is asked for with a
    /// quality at least that of plain text (Prometheus sends
    /// `application/openmetrics-text;version=1.0.0;q=0.5,...,text/plain;version=0.0.4;q=0.3`),
    /// else the Prometheus text format.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let mut openmetrics = 0.0_f32;
        let mut text = 0.0_f32;
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }
}

/// Rewrites a Prometheus 0.0.4 text exposition as OpenMetrics 1.0.0 text.
pub fn to_openmetrics(prometheus: &str) -> String {
    let mut out = String::with_capacity(prometheus.len() + 64);
    // `# HELP` comes before `# TYPE`; it is written once the family's name is known.
    let mut pending_help: Option<(&str, &str)> = None;
    for line in prometheus.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, pending_help.take(), None);
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name, help));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (family, kind) = match kind.trim() {
                "counter" => match name.strip_suffix("_total") {
                    Some(family) => (family, "counter"),
                    None => (name, "unknown"),
                },
                "untyped" => (name, "unknown"),
                other => (name, other),
            };
            let help = pending_help.take();
            if let Some((help_name, _)) = help
                && help_name != name
            {
                flush_help(&mut out, help, None);
                write_type(&mut out, family, kind);
            } else {
                write_type(&mut out, family, kind);
                flush_help(&mut out, help, Some(family));
            }
            continue;
        }
        if line.starts_with('#') {
            // Other comments are not allowed in OpenMetrics.
            continue;
        }
        flush_help(&mut out, pending_help.take(), None);
        push_sample(&mut out, line);
        out.push('\n');
    }
    flush_help(&mut out, pending_help.take(), None);
    out.push_str("# EOF\n");
    out
}

/// Writes a sample line, with integral `le`/`quantile` bounds in OpenMetrics' canonical float
/// form (`le="1"` becomes `le="1.0"`), so that every exposer's buckets line up.
fn push_sample(out: &mut String, line: &str) {
    let mut rest = line;
    for key in ["le=\"", "quantile=\""] {
        // The label starts the set or follows a comma (`role="1"` is not `le`; inside a
        // value, a quote is always escaped, so `le="` cannot appear there).
        let Some(at) = ['{', ',']
            .iter()
            .filter_map(|sep| rest.find(&format!("{sep}{key}")))
            .min()
            .map(|i| i + 1 + key.len())
        else {
            continue;
        };
        let Some(len) = rest[at..].find('"') else {
            continue;
        };
        let value = &rest[at..at + len];
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&rest[..at + len]);
            out.push_str(".0");
            rest = &rest[at + len..];
        }
    }
    out.push_str(rest);
}

fn write_type(out: &mut String, family: &str, kind: &str) {
    out.push_str("# TYPE ");
    out.push_str(family);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

/// Writes a `# HELP` line under `family` (or its own name), escaping `"` as OpenMetrics needs
/// (backslashes and newlines are already escaped in the Prometheus format).
fn flush_help(out: &mut String, help: Option<(&str, &str)>, family: Option<&str>) {
    let Some((name, text)) = help else {
        return;
    };
    out.push_str("# HELP ");
    out.push_str(family.unwrap_or(name));
    out.push(' ');
    out.push_str(&text.replace('"', "\\\""));
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_scrapers_preference() {
        use ExpositionFormat::*;
        for (accept, want) in [
            (None, Prometheus),
            (Some("*/*"), Prometheus),
            (Some("text/plain"), Prometheus),
            (Some("application/openmetrics-text"), OpenMetrics),
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;q=0.5,\
                     application/openmetrics-text;version=0.0.1;q=0.4,\
                     text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                OpenMetrics,
            ),
            (
                Some("text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.5"),
                Prometheus,
            ),
            (Some("application/openmetrics-text;q=0"), Prometheus),
            (
                Some("Application/OpenMetrics-Text; Version=1.0.0"),
                OpenMetrics,
            ),
            (Some("application/json"), Prometheus),
        ] {
            assert_eq!(ExpositionFormat::negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn rewrites_families_for_openmetrics() {
        let prom = "# HELP istio_tcp_sent_bytes_total Bytes \"sent\" to the peer.\n\
                    # TYPE istio_tcp_sent_bytes_total counter\n\
                    istio_tcp_sent_bytes_total{reporter=\"source\"} 42\n\
                    \n\
                    # TYPE odd_counter counter\n\
                    odd_counter{role=\"1\"} 1\n\
                    \n\
                    # TYPE istio_build gauge\n\
                    istio_build{component=\"ztunnel\",tag=\"1.28\"} 1\n\
                    \n\
                    # TYPE lat histogram\n\
                    lat_bucket{le=\"0.5\"} 1\n\
                    lat_bucket{le=\"5\",x=\"1\"} 2\n\
                    lat_bucket{le=\"+Inf\"} 2\n\
                    lat_sum 1.5\n\
                    lat_count 2\n\
                    # TYPE q summary\n\
                    q{quantile=\"0\"} 1\n\
                    q{quantile=\"0.99\"} 1\n";
        let om = to_openmetrics(prom);
        assert_eq!(
            om,
            "# TYPE istio_tcp_sent_bytes counter\n\
             # HELP istio_tcp_sent_bytes Bytes \\\"sent\\\" to the peer.\n\
             istio_tcp_sent_bytes_total{reporter=\"source\"} 42\n\
             # TYPE odd_counter unknown\n\
             odd_counter{role=\"1\"} 1\n\
             # TYPE istio_build gauge\n\
             istio_build{component=\"ztunnel\",tag=\"1.28\"} 1\n\
             # TYPE lat histogram\n\
             lat_bucket{le=\"0.5\"} 1\n\
             lat_bucket{le=\"5.0\",x=\"1\"} 2\n\
             lat_bucket{le=\"+Inf\"} 2\n\
             lat_sum 1.5\n\
             lat_count 2\n\
             # TYPE q summary\n\
             q{quantile=\"0.0\"} 1\n\
             q{quantile=\"0.99\"} 1\n\
             # EOF\n"
        );
        assert_eq!(to_openmetrics(""), "# EOF\n");
    }
}

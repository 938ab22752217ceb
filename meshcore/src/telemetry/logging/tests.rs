use std::io;
use std::sync::Arc;

use parking_lot::Mutex;
use tracing_subscriber::fmt::MakeWriter;

use super::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock())).unwrap()
    }
}

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

fn capture(format: LogFormat, filter: &str) -> (Dispatch, LogHandle, Capture) {
    let out = Capture::default();
    let (dispatch, handle) = build_tracing(format, filter, out.clone()).unwrap();
    (dispatch, handle, out)
}

#[test]
fn level_specs_are_validated() {
    assert_eq!(validate_level_spec("debug").unwrap(), vec!["debug"]);
    assert_eq!(
        validate_level_spec(" INFO , hbone=Trace,a::b-c.d=off ").unwrap(),
        vec!["info", "hbone=trace", "a::b-c.d=off"]
    );
    let cases = [
        ("", "empty"),
        (" , ", "empty"),
        (
            "verbose",
            "unknown level \"verbose\", expected one of off, error, warn, info, debug, trace",
        ),
        ("hbone=loud", "unknown level \"loud\""),
        ("=debug", "invalid target \"\""),
        ("a b=debug", "invalid target \"a b\""),
        ("x[span]=debug", "invalid target"),
    ];
    for (spec, want) in cases {
        let err = validate_level_spec(spec).unwrap_err().to_string();
        assert!(err.contains(want), "{spec:?}: {err}");
        assert!(
            err.starts_with(&format!("invalid log level {spec:?}")),
            "{err}"
        );
    }
}

#[test]
fn startup_filter_accepts_env_filter_syntax() {
    validate_startup_filter("info,hbone[conn]=debug").unwrap();
    validate_startup_filter("").unwrap();
    assert!(validate_startup_filter("info,=nonsense=x").is_err());
}

#[test]
fn log_format_parses() {
    assert_eq!("plain".parse::<LogFormat>(), Ok(LogFormat::Plain));
    assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
    assert_eq!(
        "xml".parse::<LogFormat>().unwrap_err().to_string(),
        "invalid log format \"xml\": expected `plain` or `json`"
    );
    assert_eq!(LogFormat::Json.to_string(), "json");
}

#[test]
fn handle_sets_merges_and_resets() {
    let (dispatch, handle, out) = capture(LogFormat::Plain, "info");
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::debug!(target: "hbone", "hidden");
        assert_eq!(out.take(), "");

        assert_eq!(handle.set("hbone=debug").unwrap(), "info,hbone=debug");
        tracing::debug!(target: "hbone", "shown");
        tracing::debug!(target: "other", "still hidden");
        let text = out.take();
        assert!(
            text.contains("shown") && !text.contains("still hidden"),
            "{text}"
        );

        // A bare level replaces the default; target directives stay.
        assert_eq!(handle.set("warn").unwrap(), "warn,hbone=debug");
        assert_eq!(handle.set("hbone=trace").unwrap(), "warn,hbone=trace");
        assert_eq!(handle.current(), "warn,hbone=trace");
        tracing::info!(target: "other", "now hidden");
        assert_eq!(out.take(), "");

        // Invalid specs change nothing.
        assert!(handle.set("loud").is_err());
        assert_eq!(handle.current(), "warn,hbone=trace");

        assert_eq!(handle.reset().unwrap(), "info");
        tracing::info!(target: "other", "visible again");
        assert!(out.take().contains("visible again"));
    });
}

#[test]
fn hickory_server_is_always_silenced() {
    let (dispatch, handle, out) = capture(LogFormat::Plain, "trace");
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::error!(target: "hickory_server::server", "noise");
        handle.set("trace").unwrap();
        tracing::error!(target: "hickory_server::server", "noise");
        tracing::error!(target: "hickory_server::other", "kept");
    });
    let text = out.take();
    assert!(!text.contains("noise") && text.contains("kept"), "{text}");
}

#[test]
fn plain_lines_follow_istio_layout() {
    let (dispatch, _handle, out) = capture(LogFormat::Plain, "info");
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info!(target: "access", direction = "inbound", src.addr = "10.0.0.1:5000", "connection complete");
        let span = tracing::info_span!("conn", id = 7);
        span.in_scope(|| tracing::warn!("in span"));
    });
    let text = out.take();
    let mut lines = text.lines();
    let first: Vec<&str> = lines.next().unwrap().split('\t').collect();
    assert_eq!(first.len(), 4, "{first:?}");
    assert!(
        first[0].ends_with('Z') && first[0].contains('T'),
        "{first:?}"
    );
    assert_eq!(first[1], "info");
    assert_eq!(first[2], "access");
    assert_eq!(
        first[3],
        "connection complete direction=\"inbound\" src.addr=\"10.0.0.1:5000\""
    );
    let second: Vec<&str> = lines.next().unwrap().split('\t').collect();
    assert_eq!(second[1], "warn");
    assert_eq!(second[3], "conn{id=7}:");
    assert_eq!(second[4], "in span");
}

#[test]
fn json_lines_are_flat_objects() {
    let (dispatch, _handle, out) = capture(LogFormat::Json, "info");
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info!(target: "access", bytes_sent = 12u64, src.addr = "10.0.0.1:5000", "connection complete");
    });
    let text = out.take();
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["target"], "access");
    assert_eq!(v["message"], "connection complete");
    assert_eq!(v["src.addr"], "10.0.0.1:5000");
    assert_eq!(v["bytes_sent"], 12);
}

#[test]
fn handle_reports_a_dropped_subscriber() {
    let (dispatch, handle, _out) = capture(LogFormat::Plain, "info");
    drop(dispatch);
    assert_eq!(handle.set("debug"), Err(LogError::SubscriberGone));
    assert_eq!(handle.current(), "info");
}

#[test]
fn init_installs_once() {
    // The only test in this binary that touches the global dispatcher.
    let handle = init_tracing(LogFormat::Plain, "warn").unwrap();
    assert_eq!(handle.current(), "warn");
    assert_eq!(
        init_tracing(LogFormat::Json, "info").unwrap_err(),
        LogError::AlreadyInstalled
    );
    assert!(init_tracing(LogFormat::Json, "=x=").is_err());
}

//! `/debug/pprof/*` on the admin server: CPU profiles in pprof's protobuf format.
//!
//! `GET /debug/pprof/profile?seconds=N&frequency=F` samples every thread of the process with
//! `SIGPROF` at `F` Hz (1–1000, default 100) for `N` seconds (1–300, default 10) and answers with
//! a `perftools.profiles.Profile` message, which `go tool pprof` and `pprof` read as is. One
//! profile runs at a time; a second request meanwhile gets 409. A client that hangs up stops
//! the sampling.
//!
//! Heap profiles need jemalloc's profiler, which this build does not link (it uses the system
//! allocator), so `/debug/pprof/heap*` answers 501 saying so.

use std::time::Duration;

use http::{Method, Response, StatusCode, header};
use pprof::protos::Message as _;

use super::{Body, method_not_allowed, not_found, text};

/// The accepted and default values of the query parameters, as Istio's ztunnel.
const SECONDS: (u64, u64, u64) = (1, 300, 10);
const FREQUENCY: (u64, u64, u64) = (1, 1000, 100);
/// Frames from these libraries are not unwound from a signal handler (their unwind info is
/// unreliable or the unwinder could deadlock inside them).
const BLOCKLIST: [&str; 4] = ["libc", "libgcc", "pthread", "vdso"];

/// What a profile request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProfileRequest {
    pub seconds: u64,
    pub frequency: u64,
}

/// Parses `seconds` and `frequency`; an unknown parameter or a value out of range is an error
/// message for a 400 answer.
pub(super) fn parse_query(query: Option<&str>) -> Result<ProfileRequest, String> {
    let mut req = ProfileRequest {
        seconds: SECONDS.2,
        frequency: FREQUENCY.2,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let ((min, max, _), slot) = match key {
            "seconds" => (SECONDS, &mut req.seconds),
            "frequency" => (FREQUENCY, &mut req.frequency),
            _ => {
                return Err(format!(
                    "unknown parameter {key:?}: use `seconds` ({}-{}) and `frequency` ({}-{} Hz)",
                    SECONDS.0, SECONDS.1, FREQUENCY.0, FREQUENCY.1
                ));
            }
        };
        *slot = value
            .parse::<u64>()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| format!("{key}={value:?} is invalid: an integer from {min} to {max}"))?;
    }
    Ok(req)
}

/// Answers every `/debug/pprof/...` path.
pub(super) async fn handle(path: &str, method: &Method, query: Option<&str>) -> Response<Body> {
    match path.trim_end_matches('/') {
        "/debug/pprof/profile" => {
            if *method != Method::GET {
                return method_not_allowed("GET");
            }
            match parse_query(query) {
                Ok(req) => profile(req).await,
                Err(msg) => text(StatusCode::BAD_REQUEST, format!("{msg}\n")),
            }
        }
        "/debug/pprof/heap" | "/debug/pprof/heap/profiling" => text(
            StatusCode::NOT_IMPLEMENTED,
            "heap profiles need jemalloc's profiler, which this build does not use (it runs on \
             the system allocator); /debug/pprof/profile gives CPU profiles\n",
        ),
        _ => not_found(),
    }
}

async fn profile(req: ProfileRequest) -> Response<Body> {
    let frequency = i32::try_from(req.frequency).expect("at most 1000");
    let guard = match pprof::ProfilerGuardBuilder::default()
        .frequency(frequency)
        .blocklist(&BLOCKLIST)
        .build()
    {
        Ok(guard) => guard,
        Err(pprof::Error::Running) => {
            return text(
                StatusCode::CONFLICT,
                "a CPU profile is already being taken; retry when it is done\n",
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "CPU profiler could not start");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the CPU profiler could not start: {e}\n"),
            );
        }
    };
    tracing::info!(
        seconds = req.seconds,
        frequency = req.frequency,
        "CPU profile started through the admin API"
    );
    tokio::time::sleep(Duration::from_secs(req.seconds)).await;
    // Symbolizing the samples takes a while; keep it off the async threads.
    let encoded = tokio::task::spawn_blocking(move || {
        let report = guard.report().build()?;
        drop(guard);
        report.pprof().map(|p| p.encode_to_vec())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| e.to_string()));
    match encoded {
        Ok(body) => {
            let mut resp = text(StatusCode::OK, body);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/octet-stream"),
            );
            resp.headers_mut().insert(
                header::CONTENT_DISPOSITION,
                http::HeaderValue::from_static("attachment; filename=\"profile.pb\""),
            );
            resp
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the CPU profile could not be built: {e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_ranges_are_istios() {
        assert_eq!(
            parse_query(None),
            Ok(ProfileRequest {
                seconds: 10,
                frequency: 100
            })
        );
        assert_eq!(
            parse_query(Some("seconds=300&frequency=1")),
            Ok(ProfileRequest {
                seconds: 300,
                frequency: 1
            })
        );
        assert_eq!(parse_query(Some("frequency=1000")).unwrap().frequency, 1000);
    }

    #[test]
    fn bad_values_name_the_parameter_and_the_range() {
        for (query, needle) in [
            (
                "seconds=0",
                "seconds=\"0\" is invalid: an integer from 1 to 300",
            ),
            ("seconds=301", "from 1 to 300"),
            ("seconds=", "seconds=\"\" is invalid"),
            (
                "frequency=1001",
                "frequency=\"1001\" is invalid: an integer from 1 to 1000",
            ),
            ("frequency=-5", "frequency=\"-5\""),
            ("seconds=2.5", "seconds=\"2.5\""),
            ("rate=10", "unknown parameter \"rate\""),
        ] {
            let err = parse_query(Some(query)).expect_err(query);
            assert!(err.contains(needle), "{query}: {err}");
        }
    }
}

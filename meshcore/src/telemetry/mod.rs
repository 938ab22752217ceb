//! Telemetry setup shared by the binaries.
//!
//! * [`init_tracing`]: installs the global `tracing` subscriber, plain text (Istio's
//!   `<time>\t<level>\t<target>\t<message> key=value…` layout) or JSON, behind a reloadable
//!   filter. The returned [`LogHandle`] changes the filter at run time (the admin `/logging`
//!   endpoint) with [`LogHandle::set`], [`LogHandle::reset`] and [`LogHandle::current`].
//! * [`Prometheus`]: installs the process-wide `metrics` recorder once and renders the
//!   Prometheus text exposition format for the `/metrics` endpoint.

mod logging;
mod openmetrics;
mod prometheus;

pub use logging::{
    LOG_LEVELS, LogError, LogFormat, LogHandle, build_tracing, init_tracing, validate_level_spec,
    validate_startup_filter,
};
pub use openmetrics::{ExpositionFormat, to_openmetrics};
pub use prometheus::{MetricsError, Prometheus};

//! `tracing` setup with a filter that can be changed at run time.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use parking_lot::Mutex;
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// Always-on directive: the DNS server library logs every malformed packet at ERROR.
const ALWAYS_PREPENDED: &str = "hickory_server::server=off";

/// The level names accepted by [`LogHandle::set`].
pub const LOG_LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// Errors from logging setup and run-time level changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("invalid log format {0:?}: expected `plain` or `json`")]
    InvalidFormat(String),
    #[error("invalid log level {spec:?}: {reason}")]
    InvalidSpec { spec: String, reason: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
    #[error("the tracing subscriber this handle controls is gone")]
    SubscriberGone,
}

/// Output format of the log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `<RFC 3339 time>\t<level>\t<target>\t<message> key=value ...`
    #[default]
    Plain,
    /// One JSON object per line, event fields flattened to the top level.
    Json,
}

impl FromStr for LogFormat {
    type Err = LogError;
    fn from_str(s: &str) -> Result<Self, LogError> {
        match s.to_ascii_lowercase().as_str() {
            "plain" => Ok(Self::Plain),
            "json" => Ok(Self::Json),
            _ => Err(LogError::InvalidFormat(s.to_owned())),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Plain => "plain",
            Self::Json => "json",
        })
    }
}

fn invalid(spec: &str, reason: impl Into<String>) -> LogError {
    LogError::InvalidSpec {
        spec: spec.to_owned(),
        reason: reason.into(),
    }
}

/// Checks a run-time level spec: comma-separated `level` or `target=level` items, levels from
/// [`LOG_LEVELS`] (case-insensitive). Returns the normalised items (lower-case levels).
pub fn validate_level_spec(spec: &str) -> Result<Vec<String>, LogError> {
    let items: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        return Err(invalid(spec, "empty"));
    }
    let level_ok = |level: &str| {
        let lower = level.to_ascii_lowercase();
        if LOG_LEVELS.contains(&lower.as_str()) {
            Ok(lower)
        } else {
            Err(invalid(
                spec,
                format!(
                    "unknown level {level:?}, expected one of {}",
                    LOG_LEVELS.join(", ")
                ),
            ))
        }
    };
    items
        .into_iter()
        .map(|item| match item.split_once('=') {
            None => level_ok(item),
            Some((target, level)) => {
                let target_ok = !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'));
                if !target_ok {
                    return Err(invalid(spec, format!("invalid target {target:?}")));
                }
                Ok(format!("{target}={}", level_ok(level)?))
            }
        })
        .collect()
}

/// Checks a startup filter (`RUST_LOG`): any `tracing_subscriber::EnvFilter` directive syntax.
pub fn validate_startup_filter(spec: &str) -> Result<(), LogError> {
    make_filter(spec).map(drop)
}

fn make_filter(spec: &str) -> Result<EnvFilter, LogError> {
    let full = if spec.trim().is_empty() {
        ALWAYS_PREPENDED.to_owned()
    } else {
        format!("{ALWAYS_PREPENDED},{spec}")
    };
    EnvFilter::builder()
        .parse(&full)
        .map_err(|e| invalid(spec, e.to_string()))
}

/// The part of a directive that identifies what it applies to (empty for the default level).
fn directive_key(directive: &str) -> &str {
    directive.rsplit_once('=').map_or("", |(key, _)| key)
}

/// Controls the level filter of a subscriber built by [`build_tracing`] / [`init_tracing`].
#[derive(Clone)]
pub struct LogHandle {
    inner: Arc<Inner>,
}

struct Inner {
    reload: reload::Handle<EnvFilter, Registry>,
    default: String,
    current: Mutex<String>,
}

impl fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogHandle")
            .field("default", &self.inner.default)
            .field("current", &*self.inner.current.lock())
            .finish()
    }
}

impl LogHandle {
    /// The filter in force (without the always-prepended directive).
    pub fn current(&self) -> String {
        self.inner.current.lock().clone()
    }

    /// Merges `spec` (see [`validate_level_spec`]) into the current filter: a bare level replaces
    /// the default level, `target=level` replaces that target's directive or adds it. Returns
    /// the resulting filter.
    pub fn set(&self, spec: &str) -> Result<String, LogError> {
        let updates = validate_level_spec(spec)?;
        let mut current = self.inner.current.lock();
        let mut directives: Vec<String> = current
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        for update in updates {
            let key = directive_key(&update).to_owned();
            directives.retain(|d| directive_key(d) != key);
            if key.is_empty() {
                directives.insert(0, update);
            } else {
                directives.push(update);
            }
        }
        let merged = directives.join(",");
        self.apply(&merged)?;
        *current = merged.clone();
        Ok(merged)
    }

    /// Restores the filter the subscriber started with. Returns it.
    pub fn reset(&self) -> Result<String, LogError> {
        let mut current = self.inner.current.lock();
        self.apply(&self.inner.default)?;
        *current = self.inner.default.clone();
        Ok(current.clone())
    }

    fn apply(&self, spec: &str) -> Result<(), LogError> {
        let filter = make_filter(spec)?;
        self.inner
            .reload
            .reload(filter)
            .map_err(|_| LogError::SubscriberGone)
    }
}

/// Builds a subscriber writing to `writer` without installing it; keep the [`Dispatch`] alive
/// for as long as the [`LogHandle`] should work (e.g. `tracing::dispatcher::with_default` in
/// tests). `filter` uses `EnvFilter` syntax; `hickory_server::server=off` is always prepended.
pub fn build_tracing<W>(
    format: LogFormat,
    filter: &str,
    writer: W,
) -> Result<(Dispatch, LogHandle), LogError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (filter_layer, reload) = reload::Layer::new(make_filter(filter)?);
    let output = match format {
        LogFormat::Plain => tracing_subscriber::fmt::layer()
            .event_format(PlainFormat)
            .with_ansi(false)
            .with_writer(writer)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(writer)
            .boxed(),
    };
    let subscriber = Registry::default().with(filter_layer).with(output);
    let handle = LogHandle {
        inner: Arc::new(Inner {
            reload,
            default: filter.trim().to_owned(),
            current: Mutex::new(filter.trim().to_owned()),
        }),
    };
    Ok((Dispatch::new(subscriber), handle))
}

/// Installs the global subscriber writing to stdout. Call once, early in `main`.
pub fn init_tracing(format: LogFormat, filter: &str) -> Result<LogHandle, LogError> {
    let (dispatch, handle) = build_tracing(format, filter, std::io::stdout)?;
    tracing::dispatcher::set_global_default(dispatch).map_err(|_| LogError::AlreadyInstalled)?;
    Ok(handle)
}

/// Istio's plain layout: `<time>\t<level>\t<target>\t<spans:>\t<message> key=value ...`
/// (the span part only when the event happened inside spans).
struct PlainFormat;

impl<S, N> FormatEvent<S, N> for PlainFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        SystemTime.format_time(&mut writer)?;
        let level = meta.level().as_str().to_ascii_lowercase();
        write!(writer, "\t{level}\t{}\t", meta.target())?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{}", span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(writer, "{{{fields}}}")?;
                }
                writer.write_char(':')?;
            }
            writer.write_char('\t')?;
        }
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests;

//! Typed reads of environment variables, and the error every bad value becomes.

use std::str::FromStr;
use std::time::Duration;

use meshcore::env::EnvSource;

/// Why the configuration could not be built. Every message names the variable and, for a bad
/// value, the value and what would have been accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not parse.
    #[error("{name}={value} is not valid: expected {expected}")]
    Invalid {
        name: String,
        value: String,
        expected: String,
    },
    /// A valid value asking for something this build does not do.
    #[error("{name}={value} is not supported by this build: {reason}")]
    Unsupported {
        name: String,
        value: String,
        reason: String,
    },
    /// A variable that must be set in this configuration.
    #[error("{name} must be set {when}")]
    Missing { name: String, when: String },
    /// Settings that cannot be combined.
    #[error("{0}")]
    Conflict(String),
    /// `PROXY_CONFIG` or the mesh config file is not valid YAML ProxyConfig.
    #[error("{source_name} is not a valid ProxyConfig: {reason}")]
    ProxyConfig { source_name: String, reason: String },
}

impl ConfigError {
    pub(crate) fn invalid(
        name: impl Into<String>,
        value: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            name: name.into(),
            value: value.into(),
            expected: expected.into(),
        }
    }
}

pub(crate) type Result<T> = std::result::Result<T, ConfigError>;

/// Reads variables from an [`EnvSource`]. Unless stated otherwise, a variable set to the empty
/// string counts as unset (Helm renders unset values as `""`).
pub(crate) struct Reader<'a> {
    pub(crate) env: &'a dyn EnvSource,
}

impl Reader<'_> {
    /// The raw value, `Some("")` included.
    pub(crate) fn raw(&self, name: &str) -> Option<String> {
        self.env.get(name)
    }

    /// The trimmed value, `None` when unset or empty.
    pub(crate) fn string(&self, name: &str) -> Option<String> {
        self.env
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    pub(crate) fn string_or(&self, name: &str, default: &str) -> String {
        self.string(name).unwrap_or_else(|| default.to_owned())
    }

    pub(crate) fn opt_bool(&self, name: &str) -> Result<Option<bool>> {
        self.string(name)
            .map(|v| match v.to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(ConfigError::invalid(name, v, "`true` or `false`")),
            })
            .transpose()
    }

    pub(crate) fn bool(&self, name: &str, default: bool) -> Result<bool> {
        Ok(self.opt_bool(name)?.unwrap_or(default))
    }

    /// Parses an integer in `[min, max]`.
    pub(crate) fn opt_int<T>(&self, name: &str, min: T, max: T) -> Result<Option<T>>
    where
        T: FromStr + PartialOrd + Copy + std::fmt::Display,
    {
        self.string(name)
            .map(|v| match v.parse::<T>() {
                Ok(n) if n >= min && n <= max => Ok(n),
                _ => Err(ConfigError::invalid(
                    name,
                    v,
                    format!("an integer from {min} to {max}"),
                )),
            })
            .transpose()
    }

    pub(crate) fn int<T>(&self, name: &str, default: T, min: T, max: T) -> Result<T>
    where
        T: FromStr + PartialOrd + Copy + std::fmt::Display,
    {
        Ok(self.opt_int(name, min, max)?.unwrap_or(default))
    }

    /// A Go-style duration (`24h`, `1m30s`) or a plain number of seconds.
    pub(crate) fn opt_duration(&self, name: &str) -> Result<Option<Duration>> {
        self.string(name)
            .map(|v| {
                meshcore::duration::parse_lenient(&v).map_err(|_| {
                    ConfigError::invalid(
                        name,
                        v,
                        "a duration such as `24h`, `5m`, `1m30s`, `500ms` or a number of seconds",
                    )
                })
            })
            .transpose()
    }

    pub(crate) fn duration(&self, name: &str, default: Duration) -> Result<Duration> {
        Ok(self.opt_duration(name)?.unwrap_or(default))
    }

    /// A value from a fixed set of words (case-insensitive); `choices` pairs words with values.
    pub(crate) fn choice<T: Copy>(
        &self,
        name: &str,
        default: T,
        choices: &[(&str, T)],
    ) -> Result<T> {
        let Some(v) = self.string(name) else {
            return Ok(default);
        };
        choices
            .iter()
            .find(|(word, _)| word.eq_ignore_ascii_case(&v))
            .map(|(_, value)| *value)
            .ok_or_else(|| {
                let words: Vec<String> = choices.iter().map(|(w, _)| format!("`{w}`")).collect();
                let expected = match words.as_slice() {
                    [one] => one.clone(),
                    [init @ .., last] => format!("{} or {last}", init.join(", ")),
                    [] => String::from("nothing"),
                };
                ConfigError::invalid(name, v, expected)
            })
    }
}

/// A Kubernetes CPU quantity (`2`, `1.5`, `500m`) in cores.
pub(crate) fn cpu_quantity(name: &str, value: &str) -> Result<f64> {
    let bad = || ConfigError::invalid(name, value, "a CPU quantity such as `2`, `1.5` or `500m`");
    let v = value.trim();
    let (number, scale) = match v.strip_suffix('m') {
        Some(milli) => (milli, 1000.0),
        None => (v, 1.0),
    };
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let cores = number.parse::<f64>().map_err(|_| bad())? / scale;
    if cores.is_finite() {
        Ok(cores)
    } else {
        Err(bad())
    }
}

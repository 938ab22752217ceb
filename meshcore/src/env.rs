//! Where configuration values come from.
//!
//! Binaries read their settings through [`EnvSource`] rather than calling `std::env` directly, so
//! tests can hand in a [`MapEnv`] (no `std::env::set_var`, which is racy across test threads and
//! `unsafe` since edition 2024) while production uses [`ProcessEnv`].

use std::collections::BTreeMap;

/// A read-only view of environment variables.
pub trait EnvSource: Send + Sync {
    /// The value of `name`, or `None` when it is unset (or not valid UTF-8).
    fn get(&self, name: &str) -> Option<String>;

    /// Every variable, as `(name, value)` pairs (order unspecified).
    fn vars(&self) -> Vec<(String, String)>;

    /// Every variable whose name starts with `prefix`, with the prefix stripped, sorted by name.
    /// Variables whose remaining name is empty are left out.
    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .vars()
            .into_iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(prefix)
                    .filter(|rest| !rest.is_empty())
                    .map(|rest| (rest.to_owned(), v))
            })
            .collect();
        out.sort();
        out
    }
}

/// The real process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var_os(name).and_then(|v| v.into_string().ok())
    }

    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    }
}

/// A fixed set of variables, for tests.
///
/// ```
/// use meshcore::env::{EnvSource, MapEnv};
/// let env = MapEnv::from_iter([("PROXY_MODE", "dedicated")]);
/// assert_eq!(env.get("PROXY_MODE").as_deref(), Some("dedicated"));
/// assert_eq!(env.get("UNSET"), None);
/// ```
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MapEnv {
    vars: BTreeMap<String, String>,
}

impl MapEnv {
    /// An empty environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the environment with `name` set to `value` (replacing an earlier value).
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set(name, value);
        self
    }

    /// Sets `name` to `value`.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(name.into(), value.into());
    }

    /// Unsets `name`.
    pub fn remove(&mut self, name: &str) {
        self.vars.remove(name);
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for MapEnv {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self {
            vars: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

impl EnvSource for MapEnv {
    fn get(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    fn vars(&self) -> Vec<(String, String)> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_env_get_set_remove() {
        let mut env = MapEnv::new().with("A", "1").with("A", "2").with("B", "");
        assert_eq!(env.get("A").as_deref(), Some("2"));
        assert_eq!(env.get("B").as_deref(), Some(""));
        env.remove("A");
        assert_eq!(env.get("A"), None);
        assert_eq!(env.vars(), vec![("B".to_owned(), String::new())]);
    }

    #[test]
    fn prefix_strips_sorts_and_skips_bare_prefix() {
        let env = MapEnv::from_iter([
            ("ISTIO_META_Z", "z"),
            ("ISTIO_META_A", "a"),
            ("ISTIO_META_", "bare"),
            ("OTHER", "x"),
        ]);
        assert_eq!(
            env.with_prefix("ISTIO_META_"),
            vec![("A".into(), "a".into()), ("Z".into(), "z".into())]
        );
    }

    #[test]
    fn process_env_sees_the_process() {
        // PATH is set for every test runner we use; read-only, so no set_var race.
        let env = ProcessEnv;
        let path = env.get("PATH");
        assert!(path.is_some());
        assert!(
            env.vars()
                .iter()
                .any(|(k, v)| k == "PATH" && Some(v) == path.as_ref())
        );
        assert_eq!(env.get("MESHCORE_SURELY_UNSET_VARIABLE_42"), None);
    }
}

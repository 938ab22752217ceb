//! Settings that come from more than one variable: `PROXY_CONFIG` merged over the mesh config
//! file, node metadata (`ISTIO_META_*`, `ISTIO_METAJSON_*`), and header families.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::parse::{ConfigError, Reader, Result};
use super::types::Headers;
use super::vars;

/// The subset of Istio's `ProxyConfig` that ztunnel honours. Unknown fields are ignored (the
/// same document configures Envoy sidecars).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProxyConfig {
    pub discovery_address: Option<String>,
    pub proxy_admin_port: Option<u16>,
    pub stats_port: Option<u16>,
    pub concurrency: Option<u32>,
    #[serde(default)]
    pub proxy_metadata: BTreeMap<String, String>,
}

impl ProxyConfig {
    /// `other`'s fields win where set; metadata maps are merged.
    fn merge(mut self, other: ProxyConfig) -> Self {
        self.discovery_address = other.discovery_address.or(self.discovery_address);
        self.proxy_admin_port = other.proxy_admin_port.or(self.proxy_admin_port);
        self.stats_port = other.stats_port.or(self.stats_port);
        self.concurrency = other.concurrency.or(self.concurrency);
        self.proxy_metadata.extend(other.proxy_metadata);
        self
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeshConfig {
    default_config: Option<ProxyConfig>,
}

fn yaml_error(source_name: impl Into<String>, e: impl std::fmt::Display) -> ConfigError {
    ConfigError::ProxyConfig {
        source_name: source_name.into(),
        reason: e.to_string(),
    }
}

/// `defaultConfig` of the mesh config file (if it exists), then `PROXY_CONFIG` over it; the
/// `ISTIO_META_` prefix is stripped from metadata keys, and every `ISTIO_META_*` variable is
/// added on top (variables win).
pub(crate) fn proxy_config(r: &Reader<'_>, mesh_config_path: &Path) -> Result<ProxyConfig> {
    let mesh_name = format!("mesh config {}", mesh_config_path.display());
    let from_mesh = match std::fs::read_to_string(mesh_config_path) {
        Ok(text) if text.trim().is_empty() => None,
        Ok(text) => {
            serde_yaml::from_str::<MeshConfig>(&text)
                .map_err(|e| yaml_error(&mesh_name, e))?
                .default_config
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(yaml_error(&mesh_name, e)),
    };
    let from_env = match r.string(vars::PROXY_CONFIG) {
        Some(text) => serde_yaml::from_str::<Option<ProxyConfig>>(&text)
            .map_err(|e| yaml_error(vars::PROXY_CONFIG, e))?,
        None => None,
    };
    let mut pc = [from_mesh, from_env]
        .into_iter()
        .flatten()
        .fold(ProxyConfig::default(), ProxyConfig::merge);
    pc.proxy_metadata = pc
        .proxy_metadata
        .into_iter()
        .map(|(k, v)| match k.strip_prefix(vars::ISTIO_META_PREFIX) {
            Some(stripped) => (stripped.to_owned(), v),
            None => (k, v),
        })
        .collect();
    pc.proxy_metadata
        .extend(r.env.with_prefix(vars::ISTIO_META_PREFIX));
    Ok(pc)
}

/// Node metadata sent to istiod: `proxy_metadata` (strings), then `ISTIO_METAJSON_*` values
/// parsed as JSON (invalid ones are skipped with a warning), then the identity keys
/// (`NAME`, `NAMESPACE`, `INSTANCE_IPS`, `NODE_NAME`), which always win.
pub(crate) fn node_metadata(
    r: &Reader<'_>,
    proxy_metadata: &BTreeMap<String, String>,
    identity: &[(&str, Option<String>)],
    warnings: &mut Vec<String>,
) -> BTreeMap<String, serde_json::Value> {
    let mut out: BTreeMap<String, serde_json::Value> = proxy_metadata
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    for (key, raw) in r.env.with_prefix(vars::ISTIO_METAJSON_PREFIX) {
        match serde_json::from_str::<serde_json::Value>(&raw) {
            Ok(value) => {
                out.insert(key, value);
            }
            Err(e) => warnings.push(format!(
                "{}{key} is not valid JSON and was left out of the node metadata: {e}",
                vars::ISTIO_METAJSON_PREFIX
            )),
        }
    }
    for (key, value) in identity {
        if let Some(value) = value {
            out.insert((*key).to_owned(), serde_json::Value::String(value.clone()));
        }
    }
    out
}

/// `<prefix><NAME>=value` variables as gRPC metadata: names lower-cased and checked as HTTP
/// header names (binary `-bin` keys are refused), values checked as visible ASCII.
pub(crate) fn headers(r: &Reader<'_>, prefix: &str) -> Result<Headers> {
    let mut out = Vec::new();
    for (key, value) in r.env.with_prefix(prefix) {
        let var = format!("{prefix}{key}");
        let name = key.to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.ends_with("-bin") {
            return Err(ConfigError::invalid(
                var,
                "<redacted>",
                "a header name after the prefix made of letters, digits, `-` or `_` \
                 (and not ending in `-bin`)",
            ));
        }
        if http::HeaderValue::from_str(&value).is_err() || !value.is_ascii() {
            return Err(ConfigError::invalid(
                var,
                "<redacted>",
                "a header value of visible ASCII characters",
            ));
        }
        out.push((name, value));
    }
    out.sort();
    Ok(Headers(out))
}

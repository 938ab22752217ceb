//! `--install`: copy the plugin binary into the host's CNI bin dir and keep our entry as the
//! last plugin of the primary conflist (the lexically first `*.conflist`/`*.conf`; a `.conf`
//! is converted to a `.conflist`). The conf dir is polled every second and the entry
//! re-inserted if the file was rewritten; [`Installer::uninstall`] removes it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tracing::{info, warn};

use super::config::InstallConfig;
use crate::podsource::dir::atomic_write;

/// Our plugin type/binary name.
pub const PLUGIN_TYPE: &str = "ambient-cni";

/// Our conflist entry.
pub fn plugin_entry() -> Value {
    json!({
        "type": PLUGIN_TYPE,
        "name": PLUGIN_TYPE,
        "cni_agent_run_dir": "/var/run/istio-cni",
        "ambient_enabled": true,
        "exclude_namespaces": ["kube-system"],
        "pod_namespace": "istio-system",
        "plugin_log_level": "info"
    })
}

/// The primary config file of `dir`, if any.
pub fn primary_conf(dir: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf")
            )
        })
        .collect();
    files.sort();
    files.into_iter().next()
}

/// `conf` with our entry as the last plugin (as a conflist); `None` if already so.
pub fn with_entry(conf: &Value) -> Option<Value> {
    let mut list = if conf.get("plugins").is_some() {
        conf.clone()
    } else {
        let mut single = conf.clone();
        let obj = single.as_object_mut()?;
        let version = obj.get("cniVersion").cloned().unwrap_or(json!("0.3.1"));
        let name = obj.get("name").cloned().unwrap_or(json!("k8s-pod-network"));
        json!({"cniVersion": version, "name": name, "plugins": [single]})
    };
    let plugins = list.get_mut("plugins")?.as_array_mut()?;
    let is_ours = |p: &Value| p.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE);
    if plugins.last().is_some_and(is_ours) && plugins.iter().filter(|p| is_ours(p)).count() == 1 {
        return None;
    }
    plugins.retain(|p| !is_ours(p));
    plugins.push(plugin_entry());
    Some(list)
}

/// `conf` without our entry; `None` if absent.
pub fn without_entry(conf: &Value) -> Option<Value> {
    let mut c = conf.clone();
    let plugins = c.get_mut("plugins")?.as_array_mut()?;
    let before = plugins.len();
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    (plugins.len() != before).then_some(c)
}

fn ensure(cfg: &InstallConfig) -> Result<(), String> {
    let Some(path) = primary_conf(&cfg.cni_conf_dir) else {
        return Ok(()); // no primary CNI yet
    };
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    let conf: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(updated) = with_entry(&conf) {
        let target = path.with_extension("conflist");
        let bytes = serde_json::to_vec_pretty(&updated).map_err(|e| e.to_string())?;
        atomic_write(&target, &bytes).map_err(|e| e.to_string())?;
        if target != path {
            let _ = std::fs::remove_file(&path);
        }
        info!(file = %target.display(), "inserted ambient-cni into the primary CNI config");
    }
    Ok(())
}

/// The running installer.
#[derive(Debug)]
pub struct Installer {
    cfg: InstallConfig,
    task: tokio::task::JoinHandle<()>,
}

impl Installer {
    /// Copies the binary and starts keeping the conflist entry.
    pub fn start(cfg: InstallConfig) -> anyhow::Result<Self> {
        let me = std::env::current_exe()?;
        let src = me.with_file_name(PLUGIN_TYPE);
        std::fs::create_dir_all(&cfg.cni_bin_dir)?;
        let dst = cfg.cni_bin_dir.join(PLUGIN_TYPE);
        let tmp = cfg.cni_bin_dir.join(format!(".{PLUGIN_TYPE}.tmp"));
        std::fs::copy(&src, &tmp)?;
        std::fs::rename(&tmp, &dst)?;
        let c = cfg.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Err(e) = ensure(&c) {
                    warn!(error = %e, "keeping the CNI config entry failed");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Ok(Installer { cfg, task })
    }

    /// Stops watching and removes our entry.
    pub fn uninstall(self) {
        self.task.abort();
        if let Some(path) = primary_conf(&self.cfg.cni_conf_dir)
            && let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(conf) = serde_json::from_str::<Value>(&text)
            && let Some(updated) = without_entry(&conf)
            && let Ok(bytes) = serde_json::to_vec_pretty(&updated)
        {
            let _ = atomic_write(&path, &bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_is_converted_and_entry_kept_last() {
        let conf = json!({"cniVersion": "0.3.1", "name": "net", "type": "bridge"});
        let l = with_entry(&conf).unwrap();
        let plugins = l["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 2);
        assert_eq!(plugins[0]["type"], "bridge");
        assert_eq!(plugins[1]["type"], PLUGIN_TYPE);
        assert!(with_entry(&l).is_none(), "idempotent");
        let moved =
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": [plugin_entry(), {"type": "x"}]});
        let fixed = with_entry(&moved).unwrap();
        assert_eq!(fixed["plugins"][1]["type"], PLUGIN_TYPE);
        assert_eq!(fixed["plugins"].as_array().unwrap().len(), 2);
        let removed = without_entry(&fixed).unwrap();
        assert_eq!(removed["plugins"].as_array().unwrap().len(), 1);
        assert!(without_entry(&removed).is_none());
    }
}

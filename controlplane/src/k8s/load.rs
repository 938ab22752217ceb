//! Reading files: directory walk, multi-document YAML, `kind: List` expansion.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Cluster, LoadError, LoadErrorReason, Loaded, Parsed};

/// The directory given to [`load_dir`] could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read manifest directory {}: {source}", path.display())]
pub struct LoadDirError {
    /// The directory.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// File extensions that are read; everything else in the directory is skipped.
const EXTENSIONS: &[&str] = &["yaml", "yml", "json"];

/// Loads every `.yaml`, `.yml` and `.json` file under `dir` (recursively, in path order;
/// entries whose name starts with `.` are skipped, which also skips the `..data` links of a
/// mounted ConfigMap).
///
/// Fails only when `dir` itself cannot be read; problems with single files or objects are in
/// [`LoadReport::errors`](super::LoadReport::errors).
pub fn load_dir(dir: &Path) -> Result<Loaded, LoadDirError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadDirError {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    let mut loaded = Loaded::default();
    walk(dir, entries, &mut files, &mut loaded);
    files.sort();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => add_yaml(&mut loaded, &file, &text),
            Err(e) => loaded.report.errors.push(file_error(&file, e)),
        }
    }
    Ok(loaded)
}

fn file_error(path: &Path, e: std::io::Error) -> LoadError {
    LoadError {
        file: path.to_path_buf(),
        index: None,
        kind: None,
        name: None,
        reason: LoadErrorReason::Io(e.to_string()),
    }
}

fn walk(dir: &Path, entries: std::fs::ReadDir, files: &mut Vec<PathBuf>, loaded: &mut Loaded) {
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                loaded.report.errors.push(file_error(dir, e));
                continue;
            }
        };
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        // Follow symlinks: a mounted ConfigMap's visible files are links.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            match std::fs::read_dir(&path) {
                Ok(sub) => walk(&path, sub, files, loaded),
                Err(e) => loaded.report.errors.push(file_error(&path, e)),
            }
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            files.push(path);
        }
    }
}

/// Adds every document of one file (JSON is read as YAML, of which it is a subset).
pub(super) fn add_yaml(loaded: &mut Loaded, file: &Path, text: &str) {
    loaded.report.files += 1;
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                loaded.report.errors.push(LoadError {
                    file: file.to_path_buf(),
                    index: Some(index),
                    kind: None,
                    name: None,
                    reason: LoadErrorReason::Syntax(e.to_string()),
                });
                // The parser cannot resynchronise after a syntax error.
                break;
            }
        };
        if value.is_null() {
            continue; // empty document, e.g. a trailing `---`
        }
        if let Some(items) = list_items(&value) {
            for item in items {
                add_value(loaded, file, index, item.clone());
            }
        } else {
            add_value(loaded, file, index, value);
        }
    }
}

/// The `items` of a `kind: List` (or `PodList` etc.), as `kubectl get -o yaml` prints.
fn list_items(value: &serde_yaml::Value) -> Option<&Vec<serde_yaml::Value>> {
    let kind = value.get("kind")?.as_str()?;
    if !kind.ends_with("List") {
        return None;
    }
    value.get("items")?.as_sequence()
}

fn add_value(loaded: &mut Loaded, file: &Path, index: usize, value: serde_yaml::Value) {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .map(str::to_owned);
    let name = describe_name(&value);
    match super::Object::parse(value) {
        Ok(Parsed::Object(obj)) => {
            loaded.report.objects += 1;
            if loaded.cluster.insert(obj) {
                tracing::warn!(
                    file = %file.display(),
                    index,
                    kind = kind.as_deref().unwrap_or_default(),
                    name = name.as_deref().unwrap_or_default(),
                    "duplicate object; the later definition replaces the earlier one"
                );
            }
        }
        Ok(Parsed::Ignored(gvk)) => {
            tracing::info!(
                file = %file.display(),
                index,
                kind = %gvk,
                name = name.as_deref().unwrap_or_default(),
                "ignoring object of a kind the control plane does not use"
            );
            *loaded.report.ignored.entry(gvk).or_default() += 1;
        }
        Err(reason) => {
            let err = LoadError {
                file: file.to_path_buf(),
                index: Some(index),
                kind,
                name,
                reason,
            };
            tracing::warn!(error = %err, "object not loaded");
            loaded.report.errors.push(err);
        }
    }
}

/// `namespace/name` or `name`, for error messages.
fn describe_name(value: &serde_yaml::Value) -> Option<String> {
    let meta = value.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    match meta.get("namespace").and_then(|n| n.as_str()) {
        Some(ns) if !ns.is_empty() => Some(format!("{ns}/{name}")),
        _ => Some(name.to_owned()),
    }
}

impl Cluster {
    /// Loads a directory; see [`load_dir`].
    pub fn load_dir(dir: &Path) -> Result<Loaded, LoadDirError> {
        load_dir(dir)
    }
}

//! The control plane's state directory: everything it must remember across restarts, and
//! everything it publishes for other processes to read.
//!
//! | Path | Written by | Contents |
//! |---|---|---|
//! | `root-cert.pem` | `serve` at start | the mesh root; clients trust it for xDS/CA (`XDS_ROOT_CA`, `CA_ROOT_CA`) |
//! | `token-signing-key.pem` | `token` / `serve` (first use) | P-256 PKCS#8 key that signs and verifies service-account tokens |
//! | `status.json` | `serve` on every change | [`crate::status::StatusReport`], read by `controlplane status` |
//! | `ca/` | the `identity` crate's `CaSigner` | CA key and certificates in Istio's plug-in layout (unused with `--ca-plugin-dir`) |
//!
//! Files holding secrets are created with mode 0600; every file is written atomically
//! (temporary file + rename) so that a reader never sees half a file.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// File name of the root certificate inside the state directory.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// File name of the token signing key inside the state directory.
pub const TOKEN_KEY_FILE: &str = "token-signing-key.pem";
/// Directory of the generated CA inside the state directory.
pub const CA_DIR: &str = "ca";
/// File name of the status report inside the state directory.
pub const STATUS_FILE: &str = "status.json";

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("cannot create state directory {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A state directory (created on open).
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Opens `path`, creating it (and its parents) when missing.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StateDirError> {
        let path = path.into();
        std::fs::create_dir_all(&path).map_err(|source| StateDirError::Create {
            path: path.clone(),
            source,
        })?;
        Ok(StateDir { path })
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<dir>/root-cert.pem`.
    pub fn root_cert(&self) -> PathBuf {
        self.path.join(ROOT_CERT_FILE)
    }

    /// `<dir>/token-signing-key.pem`.
    pub fn token_key(&self) -> PathBuf {
        self.path.join(TOKEN_KEY_FILE)
    }

    /// `<dir>/ca`, where a generated CA is kept.
    pub fn ca_dir(&self) -> PathBuf {
        self.path.join(CA_DIR)
    }

    /// `<dir>/status.json`.
    pub fn status(&self) -> PathBuf {
        self.path.join(STATUS_FILE)
    }

    /// Reads a file of the directory; `Ok(None)` when it does not exist.
    pub fn read_optional(&self, path: &Path) -> Result<Option<Vec<u8>>, StateDirError> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateDirError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Writes `contents` to `path` atomically; `secret` restricts the mode to 0600.
    pub fn write_atomic(
        &self,
        path: &Path,
        contents: &[u8],
        secret: bool,
    ) -> Result<(), StateDirError> {
        write_atomic(path, contents, secret)
    }
}

/// Writes `contents` to `path` through a temporary sibling and a rename.
pub fn write_atomic(path: &Path, contents: &[u8], secret: bool) -> Result<(), StateDirError> {
    let err = |source| StateDirError::Write {
        path: path.to_owned(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp.{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_round_trips_and_protects_secrets() {
        let dir = std::env::temp_dir().join(format!("cp-state-{}", std::process::id()));
        let state = StateDir::open(dir.join("nested")).unwrap();
        let path = state.token_key();
        assert_eq!(state.read_optional(&path).unwrap(), None);
        state.write_atomic(&path, b"secret", true).unwrap();
        assert_eq!(state.read_optional(&path).unwrap().unwrap(), b"secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

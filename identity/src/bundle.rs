//! The trust bundle: the root certificates workloads and the CA client trust, loaded from a
//! PEM file (`/var/run/secrets/istio/root-cert.pem` in a pod) and reloaded when it changes.
//!
//! Readers take the current roots with [`TrustBundle::roots`] (a lock-free `ArcSwap` load).
//! [`TrustBundle::watch`] polls the file (no inotify: ConfigMap volumes swap symlinks, and a
//! poll of a few KiB per second is cheap and always right). A broken or unreadable file keeps
//! the previous roots and logs one error naming the file, until the file is fixed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::pem;

/// How often [`TrustBundle::watch`] polls by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What a trust-bundle source is called in errors when it is not a file.
const INLINE: &str = "<inline PEM>";

/// Why a trust bundle could not be (re)loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read trust bundle {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("trust bundle {path} is invalid: {reason}")]
    Invalid { path: String, reason: String },
}

/// A set of root certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    pem: String,
    ders: Vec<CertificateDer<'static>>,
}

impl Roots {
    /// Parses and checks PEM text: at least one certificate, each usable as a trust anchor.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let ders = pem::certs(text)?;
        if ders.is_empty() {
            return Err("no PEM CERTIFICATE block".into());
        }
        for (i, der) in ders.iter().enumerate() {
            webpki::anchor_from_trusted_cert(der)
                .map_err(|e| format!("certificate #{} is not a usable root: {e:?}", i + 1))?;
        }
        let pem = ders.iter().map(|d| pem::encode_cert(d)).collect();
        Ok(Roots { pem, ders })
    }

    /// The roots as normalised PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The roots, DER.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.ders
    }

    /// True when `der` is one of the roots (byte equality).
    pub fn contains(&self, der: &[u8]) -> bool {
        self.ders.iter().any(|d| d.as_ref() == der)
    }
}

/// Roots shared by many readers, optionally backed by a file that is reloaded on change.
/// Cheap to clone (all clones share state).
#[derive(Clone)]
pub struct TrustBundle {
    inner: Arc<Inner>,
}

struct Inner {
    path: Option<PathBuf>,
    current: ArcSwap<Roots>,
    /// Last text seen in the file (valid or not), to skip unchanged polls and to log a broken
    /// file once rather than every poll.
    last_text: Mutex<Option<String>>,
    changes: watch::Sender<u64>,
}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundle")
            .field("path", &self.inner.path)
            .field("roots", &self.inner.current.load().ders.len())
            .finish()
    }
}

impl TrustBundle {
    /// Loads roots from a PEM file; the file must be valid now (later breakage is tolerated).
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, BundleError> {
        let path = path.into();
        let text = std::fs::read_to_string(&path).map_err(|e| BundleError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let roots = Roots::from_pem(&text).map_err(|reason| BundleError::Invalid {
            path: path.display().to_string(),
            reason,
        })?;
        Ok(Self::build(Some(path), roots, Some(text)))
    }

    /// Fixed roots from PEM text (never reloaded).
    pub fn from_pem(text: &str) -> Result<Self, BundleError> {
        let roots = Roots::from_pem(text).map_err(|reason| BundleError::Invalid {
            path: INLINE.into(),
            reason,
        })?;
        Ok(Self::build(None, roots, None))
    }

    fn build(path: Option<PathBuf>, roots: Roots, text: Option<String>) -> Self {
        TrustBundle {
            inner: Arc::new(Inner {
                path,
                current: ArcSwap::from_pointee(roots),
                last_text: Mutex::new(text),
                changes: watch::Sender::new(0),
            }),
        }
    }

    /// The current roots.
    pub fn roots(&self) -> Arc<Roots> {
        self.inner.current.load_full()
    }

    /// The file backing this bundle, if any.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// A receiver whose value increments every time the roots change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Re-reads the file now. `Ok(true)` when the roots changed, `Ok(false)` when the file is
    /// unchanged (or the bundle has no file). On error the previous roots stay in use.
    pub async fn reload(&self) -> Result<bool, BundleError> {
        let Some(path) = &self.inner.path else {
            return Ok(false);
        };
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| BundleError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        {
            let mut last = self.inner.last_text.lock();
            if last.as_deref() == Some(text.as_str()) {
                return Ok(false);
            }
            *last = Some(text.clone());
        }
        let roots = Roots::from_pem(&text).map_err(|reason| BundleError::Invalid {
            path: path.display().to_string(),
            reason,
        })?;
        if *self.inner.current.load_full() == roots {
            return Ok(false);
        }
        let count = roots.ders.len();
        self.inner.current.store(Arc::new(roots));
        self.inner.changes.send_modify(|g| *g += 1);
        tracing::info!(path = %path.display(), roots = count, "trust bundle reloaded");
        Ok(true)
    }

    /// Polls the file every `interval` until the returned task is aborted (or every clone of
    /// the bundle is dropped). Errors are logged once per distinct broken content.
    pub fn watch(&self, interval: Duration) -> JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut last_error: Option<String> = None;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let bundle = TrustBundle { inner };
                match bundle.reload().await {
                    Ok(_) => last_error = None,
                    Err(e) => {
                        let msg = e.to_string();
                        if last_error.as_deref() != Some(msg.as_str()) {
                            tracing::error!(
                                error = %msg,
                                "trust bundle not reloaded; keeping the previous roots"
                            );
                            last_error = Some(msg);
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_testing::TestCa;

    #[tokio::test(start_paused = true)]
    async fn reloads_on_change_and_keeps_old_roots_when_broken() {
        let dir = tempdir("bundle");
        let path = dir.join("root-cert.pem");
        let ca1 = TestCa::new("one");
        let ca2 = TestCa::new("two");
        std::fs::write(&path, ca1.root_pem()).unwrap();
        let bundle = TrustBundle::load(&path).unwrap();
        let mut changes = bundle.subscribe();
        let first = pem::certs(ca1.root_pem()).unwrap();
        assert!(bundle.roots().contains(&first[0]));
        let task = bundle.watch(Duration::from_secs(1));

        // Rotate to a bundle holding both roots.
        std::fs::write(&path, format!("{}{}", ca1.root_pem(), ca2.root_pem())).unwrap();
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .expect("reload within the poll interval")
            .unwrap();
        assert_eq!(bundle.roots().certificates().len(), 2);

        // A broken file keeps the previous roots.
        std::fs::write(&path, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(bundle.roots().certificates().len(), 2);
        // Manual reloads from here on, without the poller racing them.
        task.abort();
        let err = bundle.reload().await;
        assert!(matches!(err, Ok(false)), "unchanged broken text is skipped");
        std::fs::write(&path, "garbage").unwrap();
        let err = bundle.reload().await.unwrap_err();
        assert!(err.to_string().contains("root-cert.pem"), "{err}");
        assert_eq!(bundle.roots().certificates().len(), 2);

        // Fixed again: picked up by the poller.
        let task = bundle.watch(Duration::from_secs(1));
        std::fs::write(&path, ca2.root_pem()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .expect("reload after fix")
            .unwrap();
        let second = pem::certs(ca2.root_pem()).unwrap();
        assert_eq!(bundle.roots().certificates(), second.as_slice());
        task.abort();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn rejects_empty_and_non_ca_input() {
        let err = TrustBundle::from_pem("").unwrap_err();
        assert!(err.to_string().contains("no PEM CERTIFICATE"), "{err}");
        let missing = TrustBundle::load("/nonexistent/root-cert.pem").unwrap_err();
        assert!(matches!(missing, BundleError::Read { .. }));
        assert!(missing.to_string().contains("/nonexistent/root-cert.pem"));
    }

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "identity-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

//! `CRL_PATH`: the certificate revocation lists every HBONE handshake checks.
//!
//! * At start the file must exist and hold at least one valid `X509 CRL` block; anything else
//!   is a startup error naming the file (the operator asked for revocation checks, so running
//!   without them would fail open).
//! * The file is then re-read every [`POLL`] (mounted Secrets and ConfigMaps are swapped
//!   through symlinks, which a content check follows). A valid new version replaces the lists
//!   and closes the live connections of newly revoked peers; a broken one is refused with the
//!   reason, and the previous lists stay in force.
//! * `istio_crl_policy_rejections_total{reporter}` counts refused handshakes: `source` when we
//!   refused a revoked server, `destination` when we refused a revoked client;
//!   `istio_crl_untracked_connections_total{reporter}` counts connections whose peer
//!   certificate a later update could not match (unreadable issuer or serial), so would not
//!   close.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hbone::Revocations;
use hbone::crl::{Side, parse_pem};
use meshcore::drain::DrainWatch;
use tracing::{error, info};

/// How often the file is checked for a new version.
pub const POLL: Duration = Duration::from_secs(2);

/// Handshakes refused because the peer's certificate is revoked.
pub const REJECTIONS: &str = "istio_crl_policy_rejections_total";
/// Connections a CRL update could not close (their peer certificate is unreadable).
pub const UNTRACKED: &str = "istio_crl_untracked_connections_total";

/// The CRLs loaded at start, with the file's bytes (what [`watch`] compares against).
#[derive(Debug)]
pub struct Loaded {
    pub revocations: Revocations,
    bytes: Vec<u8>,
}

/// Loads the CRLs at `path`.
pub fn load(path: &Path) -> Result<Loaded, String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "CRL_PATH {}: cannot read the CRL file: {e}; mount the CRL or unset CRL_PATH",
            path.display()
        )
    })?;
    let set = parse_pem(&bytes)
        .map_err(|e| format!("CRL_PATH {}: not a usable CRL file: {e}", path.display()))?;
    info!(path = %path.display(), crls = set.len(), "certificate revocation lists loaded");
    Ok(Loaded {
        revocations: Revocations::new(set),
        bytes,
    })
}

/// Describes the metric and keeps the lists in step with the file until `watch` drains.
pub fn watch(path: PathBuf, loaded: Loaded, shutdown: DrainWatch) {
    metrics::describe_counter!(
        REJECTIONS,
        "HBONE handshakes refused because the peer's certificate is revoked"
    );
    metrics::describe_counter!(
        UNTRACKED,
        "HBONE connections a CRL update cannot close: the peer certificate's issuer or serial is unreadable"
    );
    let Loaded { revocations, bytes } = loaded;
    let mut last = Some(bytes);
    tokio::spawn(async move {
        loop {
            export(&revocations);
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                _ = shutdown.wait_for_drain() => return,
            }
            let current = match tokio::fs::read(&path).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    if last.is_some() {
                        error!(path = %path.display(), error = %e,
                            "CRL file cannot be read; the previous revocation lists stay in force");
                        last = None;
                    }
                    continue;
                }
            };
            if last.as_ref() == Some(&current) {
                continue;
            }
            match parse_pem(&current) {
                Ok(set) => {
                    info!(path = %path.display(), crls = set.len(),
                        "certificate revocation lists updated; connections of revoked peers are being closed");
                    revocations.replace(set);
                }
                Err(e) => error!(path = %path.display(), reason = %e,
                    "CRL update refused; the previous revocation lists stay in force"),
            }
            last = Some(current);
        }
    });
}

fn export(revocations: &Revocations) {
    for (side, reporter) in [(Side::Client, "source"), (Side::Server, "destination")] {
        metrics::counter!(REJECTIONS, "reporter" => reporter)
            .absolute(revocations.rejections(side));
        metrics::counter!(UNTRACKED, "reporter" => reporter).absolute(revocations.untracked(side));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_testing::TestCa;

    const ID: &str = "spiffe://cluster.local/ns/shop/sa/cart";

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ztunnel-crl-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("ca-crl.pem")
    }

    #[test]
    fn start_refuses_a_missing_or_broken_file_naming_it() {
        let path = temp_path("start");
        let _ = std::fs::remove_file(&path);
        let err = load(&path).expect_err("a missing file is an error");
        assert!(
            err.contains("CRL_PATH") && err.contains(&path.display().to_string()),
            "{err}"
        );
        std::fs::write(&path, "not a CRL").unwrap();
        let err = load(&path).expect_err("a file without a CRL is an error");
        assert!(err.contains("no `X509 CRL` PEM block"), "{err}");
        let ca = TestCa::new("root");
        std::fs::write(&path, ca.crl(&[])).unwrap();
        assert_eq!(load(&path).unwrap().revocations.current().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn updates_apply_and_a_broken_update_keeps_the_previous_lists() {
        let path = temp_path("watch");
        let ca = TestCa::new("root");
        let leaf = ca.issue(ID);
        let cert = leaf.workload_cert().chain()[0].clone();
        std::fs::write(&path, ca.crl(&[])).unwrap();
        let loaded = load(&path).unwrap();
        let revocations = loaded.revocations.clone();
        let (drain, shutdown) = meshcore::drain::channel();
        watch(path.clone(), loaded, shutdown);
        assert!(!revocations.is_revoked(&cert));

        std::fs::write(&path, ca.crl(&[&leaf])).unwrap();
        let deadline = tokio::time::Instant::now() + POLL * 4;
        while !revocations.is_revoked(&cert) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the new CRL was not picked up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // A half-written file is refused; the certificate stays revoked.
        std::fs::write(&path, "-----BEGIN X509 CRL-----\nAAAA\n").unwrap();
        tokio::time::sleep(POLL * 2).await;
        assert!(
            revocations.is_revoked(&cert),
            "a broken update must not lift revocations"
        );
        drain.start_drain(Duration::ZERO);
    }
}

//! End to end, the guided tour of `make demo` (`meshlab demo`), run through the library with
//! the debug binaries: every step's own check must pass, and the lab must be gone afterwards.
//! Needs root; takes the host-wide lab lock like every lab test.

use std::path::PathBuf;
use std::time::Duration;

use mesh_tests::lab::{Backend, bin_dir};
use meshlab::tour::{self, TourConfig};

#[test]
fn the_demo_tour_passes_and_leaves_nothing() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the demo test needs root (network namespaces, bridges, nftables)"
    );
    let state_dir = PathBuf::from(format!("/tmp/mesh-e2e-demo-{}", std::process::id()));
    let cfg = TourConfig {
        backend: Backend::Iptables,
        state_dir: state_dir.clone(),
        bin_dir: bin_dir(),
        keep: false,
        deadline: Duration::from_secs(20),
    };
    let mut out = Vec::new();
    let result = tour::run(&cfg, &mut out);
    let text = String::from_utf8_lossy(&out);
    println!("{text}");
    let report = result.unwrap_or_else(|e| panic!("the tour failed: {e}\n{text}"));

    let numbers: Vec<_> = report.steps.iter().map(|s| s.number).collect();
    assert_eq!(numbers, (1..=9).collect::<Vec<_>>(), "{text}");
    for needle in [
        "HTTP 200",
        "readable HTTP: 0 packets",
        "spiffe://cluster.local/ns/default/sa/sleep",
        "spiffe://cluster.local/ns/default/sa/httpbin",
        "mutual_tls",
        "Connection reset by peer",
        "All 9 steps passed",
    ] {
        assert!(
            text.contains(needle),
            "the tour never printed {needle:?}:\n{text}"
        );
    }
    let removed = report.removed.expect("the lab was removed");
    assert!(removed.processes > 0 && removed.netns > 0, "{removed:?}");
    // The host lock is released now, so another lab may already be up: what is left of this
    // one is judged by its state directory and the teardown report, not by global names.
    assert!(
        !state_dir.exists(),
        "{} is left behind",
        state_dir.display()
    );
}

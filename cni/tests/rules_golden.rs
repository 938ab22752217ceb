//! Golden tests of the in-pod rule text (`cni::rules::render_pod_rules`).
//!
//! Files live in `cni/tests/golden/`. Regenerate with `UPDATE_GOLDEN=1`, review the diff
//! against the reference tables, and commit; without it the rendered text must match byte
//! for byte (rule order matters).

use std::path::PathBuf;

use cni::rules::{Backend, PodRuleConfig, RenderedRules, render_pod_rules};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares `actual` with the golden file `name` (or writes it with `UPDATE_GOLDEN=1`).
/// An empty `actual` means "no file".
fn check(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        if actual.is_empty() {
            let _ = std::fs::remove_file(&path);
        } else {
            std::fs::write(&path, actual).expect("write golden file");
        }
    }
    if actual.is_empty() {
        assert!(
            !path.exists(),
            "{name}: rendered nothing but a golden file exists"
        );
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert_eq!(
        actual, expected,
        "{name} differs from golden file (UPDATE_GOLDEN=1 to accept)"
    );
}

fn cases() -> Vec<(&'static str, PodRuleConfig)> {
    let base = PodRuleConfig {
        backend: Backend::Iptables,
        ipv4: true,
        ipv6: false,
        dns_capture: true,
        bypass_inbound: false,
        reroute_interfaces: vec![],
    };
    vec![
        ("ipv4", base.clone()),
        (
            "dual-stack",
            PodRuleConfig {
                ipv6: true,
                ..base.clone()
            },
        ),
        (
            "ipv6-only",
            PodRuleConfig {
                ipv4: false,
                ipv6: true,
                ..base.clone()
            },
        ),
        (
            "no-dns",
            PodRuleConfig {
                dns_capture: false,
                ..base.clone()
            },
        ),
        (
            "bypass-inbound",
            PodRuleConfig {
                bypass_inbound: true,
                ..base.clone()
            },
        ),
        (
            "reroute",
            PodRuleConfig {
                reroute_interfaces: vec!["if1".into(), "if2".into()],
                ..base.clone()
            },
        ),
        (
            "everything",
            PodRuleConfig {
                ipv6: true,
                bypass_inbound: true,
                dns_capture: false,
                reroute_interfaces: vec!["tun0".into()],
                ..base
            },
        ),
    ]
}

fn check_rendered(prefix: &str, case: &str, r: &RenderedRules) {
    check(&format!("{prefix}-{case}.v4.rules"), &r.iptables_v4);
    check(&format!("{prefix}-{case}.v6.rules"), &r.iptables_v6);
    check(&format!("{prefix}-{case}.nft"), &r.nft);
}

#[test]
fn iptables_golden() {
    for (case, cfg) in cases() {
        let r = render_pod_rules(&cfg);
        assert!(r.nft.is_empty(), "{case}: iptables backend renders no nft");
        check_rendered("iptables", case, &r);
    }
}

#[test]
fn nftables_golden() {
    for (case, cfg) in cases() {
        let cfg = PodRuleConfig {
            backend: Backend::Nftables,
            ..cfg
        };
        let r = render_pod_rules(&cfg);
        assert!(
            r.iptables_v4.is_empty() && r.iptables_v6.is_empty(),
            "{case}"
        );
        check_rendered("nft", case, &r);
    }
}

/// The IPv4 iptables text, written out by hand from the reference tables (not from the
/// renderer): an independent check that the golden files say what the reference says.
#[test]
fn iptables_ipv4_matches_reference_by_hand() {
    let expected = "\
*mangle
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
COMMIT
*nat
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A OUTPUT -j ISTIO_OUTPUT
-A PREROUTING -j ISTIO_PRERT
-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -j ACCEPT
-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -j ACCEPT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT ! -o lo -p udp -m udp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
COMMIT
*raw
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p udp -m udp --dport 53 -m mark --mark 0x539/0xfff -j CT --zone 1
-A ISTIO_PRERT -p udp -m udp --sport 53 -m mark ! --mark 0x539/0xfff -j CT --zone 1
COMMIT
";
    let cfg = cases().remove(0).1;
    assert_eq!(render_pod_rules(&cfg).iptables_v4, expected);
}

#[test]
fn render_is_deterministic_and_backend_specific() {
    for (_, cfg) in cases() {
        assert_eq!(render_pod_rules(&cfg), render_pod_rules(&cfg.clone()));
    }
    let r = render_pod_rules(&PodRuleConfig::default());
    assert!(!r.iptables_v4.is_empty() && !r.iptables_v6.is_empty() && r.nft.is_empty());
    assert!(r.iptables_v6.contains("! -d ::1/128"));
    assert!(
        r.iptables_v6
            .contains("fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128")
    );
    assert!(!r.iptables_v6.contains("127.0.0.1") && !r.iptables_v6.contains("169.254"));
}

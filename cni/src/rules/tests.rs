//! Unit tests of the pure planning functions.

use std::net::IpAddr;

use super::host::{
    Entries, SetPlan, parse_ipset_save, parse_nft_set_json, plan_remove, plan_sync, render_ipset,
    render_nft_elements,
};
use super::iptables::{Family, POD_MANAGED, Saved, plan, pod_tables, render_text};
use super::{PodRuleConfig, valid_ifname};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn plan_from_scratch_is_the_rendered_text() {
    let cfg = PodRuleConfig::default();
    let wanted = pod_tables(&cfg, Family::V4);
    assert_eq!(
        plan(POD_MANAGED, &wanted, &Saved::default()),
        render_text(&wanted)
    );
}

#[test]
fn plan_skips_present_jumps_and_drops_duplicates() {
    let cfg = PodRuleConfig::default();
    let wanted = pod_tables(&cfg, Family::V4);
    let current = Saved::parse(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:ISTIO_PRERT - [0:0]\n\
         :ISTIO_OUTPUT - [0:0]\n-A PREROUTING -j ISTIO_PRERT\n-A OUTPUT -j ISTIO_OUTPUT\n\
         -A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n",
    );
    let text = plan(POD_MANAGED, &wanted, &current);
    let nat: Vec<&str> = text
        .split("*nat\n")
        .nth(1)
        .unwrap()
        .split("COMMIT")
        .next()
        .unwrap()
        .lines()
        .collect();
    assert!(!nat.contains(&"-A PREROUTING -j ISTIO_PRERT"));
    assert!(!nat.contains(&"-A OUTPUT -j ISTIO_OUTPUT"));
    assert_eq!(
        nat.iter()
            .filter(|l| **l == "-D OUTPUT -j ISTIO_OUTPUT")
            .count(),
        1
    );
    // mangle is not installed yet: its jumps are added.
    assert!(text.contains(
        "*mangle\n:ISTIO_PRERT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A PREROUTING -j ISTIO_PRERT\n"
    ));
}

#[test]
fn plan_removes_unwanted_tables_only_when_present() {
    let cfg = PodRuleConfig {
        dns_capture: false,
        ..Default::default()
    };
    let wanted = pod_tables(&cfg, Family::V4);
    assert!(!plan(POD_MANAGED, &wanted, &Saved::default()).contains("*raw"));
    let current = Saved::parse(
        "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n\
         :ISTIO_PRERT - [0:0]\n-A PREROUTING -j ISTIO_PRERT\n-A OUTPUT -j ISTIO_OUTPUT\n\
         -A OUTPUT -p udp -j NOTOURS\n-A ISTIO_OUTPUT -p udp -m udp --dport 53 -j CT --zone 1\nCOMMIT\n",
    );
    let text = plan(POD_MANAGED, &wanted, &current);
    assert!(
        text.ends_with(
            "*raw\n-D PREROUTING -j ISTIO_PRERT\n-D OUTPUT -j ISTIO_OUTPUT\n-F ISTIO_PRERT\n\
         -F ISTIO_OUTPUT\n-X ISTIO_PRERT\n-X ISTIO_OUTPUT\nCOMMIT\n"
        ),
        "{text}"
    );
    // Removal of everything: same for all three tables, nothing when nothing is there.
    assert_eq!(plan(POD_MANAGED, &[], &Saved::default()), "");
}

#[test]
fn interface_names_are_checked() {
    for ok in ["eth0", "veth-1.2", "tun@x", "a"] {
        assert!(valid_ifname(ok), "{ok}");
    }
    for bad in [
        "",
        "with space",
        "x\n-A",
        "0123456789abcdefg",
        "..",
        "a\"b",
        "a;b",
    ] {
        assert!(!valid_ifname(bad), "{bad:?}");
    }
    let cfg = PodRuleConfig {
        reroute_interfaces: vec!["ok0".into(), "bad name".into()],
        ..Default::default()
    };
    let text = super::render_pod_rules(&cfg).iptables_v4;
    assert!(text.contains("-i ok0 ") && !text.contains("bad"));
}

#[test]
fn sync_and_remove_plans() {
    let mut current = Entries::new();
    current.insert(ip("10.0.0.1"), Some("a".into()));
    current.insert(ip("10.0.0.2"), Some("b".into()));
    current.insert(ip("10.0.0.3"), None);
    current.insert(ip("fd00::1"), Some("a".into()));
    assert_eq!(
        plan_remove(&current, "a"),
        SetPlan {
            delete: vec![ip("10.0.0.1"), ip("fd00::1")],
            upsert: vec![]
        }
    );
    let pods = vec![
        ("b".to_string(), vec![ip("10.0.0.2")]),
        ("c".to_string(), vec![ip("10.0.0.1"), ip("10.0.0.9")]),
    ];
    assert_eq!(
        plan_sync(&current, &pods),
        SetPlan {
            delete: vec![ip("10.0.0.3"), ip("fd00::1")],
            upsert: vec![(ip("10.0.0.1"), "c".into()), (ip("10.0.0.9"), "c".into())],
        }
    );
    assert_eq!(plan_sync(&Entries::new(), &[]), SetPlan::default());
}

#[test]
fn set_texts_and_parsers() {
    let plan = SetPlan {
        delete: vec![ip("10.0.0.3")],
        upsert: vec![(ip("fd00::2"), "u-1".into())],
    };
    assert_eq!(
        render_ipset(&plan),
        "del istio-inpod-probes-v4 10.0.0.3 -exist\nadd istio-inpod-probes-v6 fd00::2 comment \"u-1\" -exist\n"
    );
    assert_eq!(
        render_nft_elements(&plan),
        "add element inet istio-ambient-nat istio-inpod-probes-v4 { 10.0.0.3 }\n\
         delete element inet istio-ambient-nat istio-inpod-probes-v4 { 10.0.0.3 }\n\
         add element inet istio-ambient-nat istio-inpod-probes-v6 { fd00::2 }\n\
         delete element inet istio-ambient-nat istio-inpod-probes-v6 { fd00::2 }\n\
         add element inet istio-ambient-nat istio-inpod-probes-v6 { fd00::2 comment \"u-1\" }\n"
    );
    let saved = parse_ipset_save(
        "create istio-inpod-probes-v4 hash:ip family inet hashsize 1024 maxelem 65536 comment\n\
         add istio-inpod-probes-v4 10.0.0.1 comment \"uid-2\"\nadd other 10.0.0.7\n\
         add istio-inpod-probes-v4 10.0.0.5\n",
    );
    assert_eq!(saved.len(), 2);
    assert_eq!(saved[&ip("10.0.0.1")].as_deref(), Some("uid-2"));
    assert_eq!(saved[&ip("10.0.0.5")], None);
    let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "inet", "name": "istio-inpod-probes-v4", "elem": [{"elem": {"val": "10.0.0.1", "comment": "uid-1"}}, "10.0.0.2"]}}]}"#;
    let parsed = parse_nft_set_json(json).unwrap();
    assert_eq!(parsed[&ip("10.0.0.1")].as_deref(), Some("uid-1"));
    assert_eq!(parsed[&ip("10.0.0.2")], None);
    assert!(parse_nft_set_json("not json").is_err());
}

#[test]
fn host_rules_text() {
    use super::host::render_nft_install;
    use super::iptables::host_tables;
    assert_eq!(
        render_text(&host_tables(Family::V4)),
        "*nat\n:ISTIO_POSTRT - [0:0]\n-I POSTROUTING 1 -j ISTIO_POSTRT\n\
         -A ISTIO_POSTRT -p tcp -m owner --socket-exists -m set --match-set istio-inpod-probes-v4 \
         dst -j SNAT --to-source 169.254.7.127\nCOMMIT\n"
    );
    assert!(render_text(&host_tables(Family::V6)).contains(
        "--match-set istio-inpod-probes-v6 dst -j SNAT --to-source \
             fd16:9254:7127:1337:ffff:ffff:ffff:ffff\n"
    ));
    let nft = render_nft_install(1000);
    assert!(nft.starts_with("add table inet istio-ambient-nat\n"));
    assert!(nft.contains("flush chain inet istio-ambient-nat postrouting\n"));
    assert!(nft.contains(
        "meta l4proto tcp meta skuid 1000 ip daddr @istio-inpod-probes-v4 counter snat ip to 169.254.7.127\n"
    ));
    // The host jump goes first in POSTROUTING and is not re-added when present.
    let current = Saved::parse(
        "*nat\n:POSTROUTING ACCEPT [0:0]\n:ISTIO_POSTRT - [0:0]\n-A POSTROUTING -j ISTIO_POSTRT\n\
         -A POSTROUTING -o lo -j RETURN\nCOMMIT\n",
    );
    let text = plan(
        super::iptables::HOST_MANAGED,
        &host_tables(Family::V4),
        &current,
    );
    assert!(!text.contains("-I POSTROUTING"), "{text}");
    assert_eq!(
        plan(super::iptables::HOST_MANAGED, &[], &current),
        "*nat\n-D POSTROUTING -j ISTIO_POSTRT\n-F ISTIO_POSTRT\n-X ISTIO_POSTRT\nCOMMIT\n"
    );
}

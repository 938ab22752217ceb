//! nftables backend: three `inet` tables, each re-created atomically in one `nft -f`
//! transaction (`add table` + `delete table` + the full table), so re-applying converges.
//! A table the config does not want (raw without DNS capture) is just added and deleted.
//!
//! The text is in the form `nft list table` prints back (minus counter values): nft
//! canonicalises `mark and 0xfff` to `meta mark & 0x00000fff`, drops `/32` from single
//! addresses, names priorities (`dstnat`, `mangle`, `raw`) and simplifies
//! `ct mark & 0xfffff000 | 0x111` to the equivalent `ct mark & 0xfffff111 | 0x00000111`.

use std::fmt::Write;
use std::path::Path;

use super::exec::Tool;
use super::{
    CONNMARK_REPLY, DNS_PORT, INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, MARK_MASK,
    NFT_TABLE_MANGLE, NFT_TABLE_NAT, NFT_TABLE_RAW, OUTBOUND_PORT, PROBE_SNAT_V4, PROBE_SNAT_V6,
    PodRuleConfig, RulesError, ZTUNNEL_MARK, valid_ifname,
};

const PRERT: &str = "istio-prerouting";
const OUTPUT: &str = "istio-output";

/// A base chain: `type <kind> hook <hook> priority <prio>`.
struct Base {
    name: &'static str,
    kind: &'static str,
    hook: &'static str,
    priority: &'static str,
    jump: &'static str,
}

struct NftTable {
    name: &'static str,
    bases: [Base; 2],
    /// Regular chains: name and rules.
    chains: Vec<(&'static str, Vec<String>)>,
}

fn base(
    name: &'static str,
    kind: &'static str,
    priority: &'static str,
    jump: &'static str,
) -> Base {
    Base {
        name,
        kind,
        hook: name,
        priority,
        jump,
    }
}

fn hex(v: u32) -> String {
    format!("0x{v:08x}")
}

/// `(family keyword, localhost, probe address)` for each enabled family.
fn families(cfg: &PodRuleConfig) -> Vec<(&'static str, &'static str, String)> {
    let mut f = Vec::new();
    if cfg.ipv4 {
        f.push(("ip", "127.0.0.1", PROBE_SNAT_V4.to_string()));
    }
    if cfg.ipv6 {
        f.push(("ip6", "::1", PROBE_SNAT_V6.to_string()));
    }
    f
}

fn pod_tables(cfg: &PodRuleConfig) -> Vec<NftTable> {
    let mask = hex(MARK_MASK);
    let not_zt = format!("meta mark & {mask} != {}", hex(ZTUNNEL_MARK));
    let is_zt = format!("meta mark & {mask} == {}", hex(ZTUNNEL_MARK));
    let fams = families(cfg);

    let mut pre = Vec::new();
    for ifname in cfg.reroute_interfaces.iter().filter(|i| valid_ifname(i)) {
        pre.push(format!(
            "iifname \"{ifname}\" meta l4proto tcp counter redirect to :{OUTBOUND_PORT}"
        ));
        pre.push(format!(
            "iifname \"{ifname}\" meta l4proto tcp counter return"
        ));
    }
    if !cfg.bypass_inbound {
        for (ip, _, probe) in &fams {
            pre.push(format!(
                "meta l4proto tcp {ip} saddr {probe} counter accept"
            ));
        }
        for (ip, lo, _) in &fams {
            pre.push(format!(
                "{ip} daddr != {lo} tcp dport != {INBOUND_HBONE_PORT} {not_zt} counter \
                 redirect to :{INBOUND_PLAINTEXT_PORT}"
            ));
        }
    }
    let mut out = Vec::new();
    for (ip, _, probe) in &fams {
        out.push(format!(
            "meta l4proto tcp {ip} daddr {probe} counter accept"
        ));
    }
    if cfg.dns_capture {
        out.push(format!(
            "oifname != \"lo\" {not_zt} udp dport 53 counter redirect to :{DNS_PORT}"
        ));
        for (ip, lo, _) in &fams {
            out.push(format!(
                "{ip} daddr != {lo} tcp dport 53 {not_zt} counter redirect to :{DNS_PORT}"
            ));
        }
    }
    out.push(format!(
        "meta l4proto tcp meta mark & {mask} == {} counter accept",
        hex(CONNMARK_REPLY)
    ));
    for (ip, lo, _) in &fams {
        out.push(format!("oifname \"lo\" {ip} daddr != {lo} counter accept"));
    }
    for (ip, lo, _) in &fams {
        out.push(format!(
            "meta l4proto tcp {ip} daddr != {lo} {not_zt} counter redirect to :{OUTBOUND_PORT}"
        ));
    }

    let mut tables = vec![
        NftTable {
            name: NFT_TABLE_NAT,
            bases: [
                base("prerouting", "nat", "dstnat", PRERT),
                base("output", "nat", "-100", OUTPUT),
            ],
            chains: vec![(PRERT, pre), (OUTPUT, out)],
        },
        NftTable {
            name: NFT_TABLE_MANGLE,
            bases: [
                base("prerouting", "filter", "mangle", PRERT),
                base("output", "route", "mangle", OUTPUT),
            ],
            chains: vec![
                (
                    PRERT,
                    vec![format!(
                        "{is_zt} counter ct mark set ct mark & {} | {}",
                        // (ct mark & 0xfffff000) | 0x111, as nft prints it.
                        hex(!MARK_MASK | CONNMARK_REPLY),
                        hex(CONNMARK_REPLY)
                    )],
                ),
                (
                    OUTPUT,
                    vec![format!(
                        "ct mark & {mask} == {} counter meta mark set ct mark",
                        hex(CONNMARK_REPLY)
                    )],
                ),
            ],
        },
    ];
    if cfg.dns_capture {
        tables.push(NftTable {
            name: NFT_TABLE_RAW,
            bases: [
                base("prerouting", "filter", "raw", PRERT),
                base("output", "filter", "raw", OUTPUT),
            ],
            chains: vec![
                (
                    PRERT,
                    vec![format!("udp sport 53 {not_zt} counter ct zone set 1")],
                ),
                (
                    OUTPUT,
                    vec![format!("udp dport 53 {is_zt} counter ct zone set 1")],
                ),
            ],
        });
    }
    tables
}

/// `add table` + `delete table`: removes the table whether or not it exists.
fn reset(out: &mut String, name: &str) {
    let _ = writeln!(out, "add table inet {name}");
    let _ = writeln!(out, "delete table inet {name}");
}

fn write_table(out: &mut String, t: &NftTable) {
    let _ = writeln!(out, "table inet {} {{", t.name);
    let mut first = true;
    let mut sep = |out: &mut String| {
        if !std::mem::take(&mut first) {
            out.push('\n');
        }
    };
    for b in &t.bases {
        sep(out);
        let _ = writeln!(out, "\tchain {} {{", b.name);
        let _ = writeln!(
            out,
            "\t\ttype {} hook {} priority {}; policy accept;",
            b.kind, b.hook, b.priority
        );
        let _ = writeln!(out, "\t\tjump {}", b.jump);
        out.push_str("\t}\n");
    }
    for (name, rules) in &t.chains {
        sep(out);
        let _ = writeln!(out, "\tchain {name} {{");
        for r in rules {
            let _ = writeln!(out, "\t\t{r}");
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
}

/// The whole `nft -f` script for `cfg`. Pure.
pub(crate) fn render(cfg: &PodRuleConfig) -> String {
    let tables = pod_tables(cfg);
    let mut out = String::new();
    for name in [NFT_TABLE_NAT, NFT_TABLE_MANGLE, NFT_TABLE_RAW] {
        reset(&mut out, name);
        if let Some(t) = tables.iter().find(|t| t.name == name) {
            write_table(&mut out, t);
        }
    }
    out
}

/// The script deleting all our in-pod tables. Pure.
pub(crate) fn render_removal() -> String {
    let mut out = String::new();
    for name in [NFT_TABLE_NAT, NFT_TABLE_MANGLE, NFT_TABLE_RAW] {
        reset(&mut out, name);
    }
    out
}

pub(crate) fn apply(netns: &Path, script: &str) -> Result<(), RulesError> {
    Tool::new("nft")
        .args(["-f", "-"])
        .netns(Some(netns))
        .stdin(script)
        .run()
        .map(drop)
}

pub(crate) fn remove(netns: &Path) -> Result<(), RulesError> {
    apply(netns, &render_removal())
}

pub(crate) fn installed(netns: &Path) -> Result<bool, RulesError> {
    let tables = Tool::new("nft")
        .args(["list", "tables"])
        .netns(Some(netns))
        .run()?;
    Ok(tables.lines().any(|l| {
        let l = l.trim();
        [NFT_TABLE_NAT, NFT_TABLE_MANGLE, NFT_TABLE_RAW]
            .iter()
            .any(|n| l == format!("table inet {n}"))
    }))
}

//! iptables backend: rendering (pure), parsing `iptables-save` and planning the converging
//! `iptables-restore --noflush` transaction (pure), and running it.
//!
//! Idempotency: every table we touch is one restore transaction that re-declares our chains
//! (`:ISTIO_PRERT - [0:0]` flushes an existing chain), appends the jump rules only when
//! `iptables-save` does not already show them (and deletes duplicates), then appends our rules.
//! Tables we no longer want (e.g. `raw` once DNS capture is off) lose their jumps and chains.

use std::path::Path;

use super::exec::Tool;
use super::{
    CHAIN_OUTPUT, CHAIN_POSTRT, CHAIN_PRERT, CONNMARK_REPLY, DNS_PORT, INBOUND_HBONE_PORT,
    INBOUND_PLAINTEXT_PORT, MARK_MASK, OUTBOUND_PORT, PROBE_SET_V4, PROBE_SET_V6, PROBE_SNAT_V4,
    PROBE_SNAT_V6, PodRuleConfig, RulesError, ZTUNNEL_MARK, valid_ifname,
};

/// IP family: selects the tool and the addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    fn save_tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }
    fn restore_tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
    fn localhost(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }
    fn probe(self) -> String {
        match self {
            Family::V4 => format!("{PROBE_SNAT_V4}/32"),
            Family::V6 => format!("{PROBE_SNAT_V6}/128"),
        }
    }
}

/// One jump from a built-in chain into ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Jump {
    pub(crate) from: &'static str,
    pub(crate) to: &'static str,
    /// `-I <from> 1` instead of `-A <from>`.
    pub(crate) first: bool,
}

impl Jump {
    fn append(from: &'static str, to: &'static str) -> Self {
        Jump {
            from,
            to,
            first: false,
        }
    }
    /// How `iptables-save` prints it.
    fn saved(&self) -> String {
        format!("-A {} -j {}", self.from, self.to)
    }
    fn add(&self) -> String {
        if self.first {
            format!("-I {} 1 -j {}", self.from, self.to)
        } else {
            self.saved()
        }
    }
}

/// What we want in one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    pub(crate) name: &'static str,
    pub(crate) chains: Vec<&'static str>,
    pub(crate) jumps: Vec<Jump>,
    /// Full `-A <chain> ...` lines, in order.
    pub(crate) rules: Vec<String>,
}

/// The chains a set of rules owns, per table; anything else in the netns is left alone.
pub(crate) type Managed = &'static [(&'static str, &'static [&'static str])];

/// Our chains in the pod netns.
pub(crate) const POD_MANAGED: Managed = &[
    ("mangle", &[CHAIN_PRERT, CHAIN_OUTPUT]),
    ("nat", &[CHAIN_PRERT, CHAIN_OUTPUT]),
    ("raw", &[CHAIN_PRERT, CHAIN_OUTPUT]),
];

/// Our chain in the node netns.
pub(crate) const HOST_MANAGED: Managed = &[("nat", &[CHAIN_POSTRT])];

/// The in-pod tables for one family, in reference order.
pub(crate) fn pod_tables(cfg: &PodRuleConfig, family: Family) -> Vec<Table> {
    let lo = family.localhost();
    let probe = family.probe();
    let not_ztunnel = format!("-m mark ! --mark {ZTUNNEL_MARK:#x}/{MARK_MASK:#x}");
    let is_ztunnel = format!("-m mark --mark {ZTUNNEL_MARK:#x}/{MARK_MASK:#x}");
    let reply = format!("{CONNMARK_REPLY:#x}/{MARK_MASK:#x}");
    let ours = vec![CHAIN_PRERT, CHAIN_OUTPUT];

    let mut tables = vec![Table {
        name: "mangle",
        chains: ours.clone(),
        jumps: vec![
            Jump::append("PREROUTING", CHAIN_PRERT),
            Jump::append("OUTPUT", CHAIN_OUTPUT),
        ],
        rules: vec![
            format!("-A {CHAIN_PRERT} {is_ztunnel} -j CONNMARK --set-xmark {reply}"),
            format!(
                "-A {CHAIN_OUTPUT} -m connmark --mark {reply} -j CONNMARK --restore-mark \
                 --nfmask 0xffffffff --ctmask 0xffffffff"
            ),
        ],
    }];

    let mut nat = Vec::new();
    for ifname in cfg.reroute_interfaces.iter().filter(|i| valid_ifname(i)) {
        nat.push(format!(
            "-A {CHAIN_PRERT} -i {ifname} -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}"
        ));
        nat.push(format!("-A {CHAIN_PRERT} -i {ifname} -p tcp -j RETURN"));
    }
    if !cfg.bypass_inbound {
        nat.push(format!("-A {CHAIN_PRERT} -s {probe} -p tcp -j ACCEPT"));
    }
    nat.push(format!("-A {CHAIN_OUTPUT} -d {probe} -p tcp -j ACCEPT"));
    if !cfg.bypass_inbound {
        nat.push(format!(
            "-A {CHAIN_PRERT} ! -d {lo} -p tcp -m tcp ! --dport {INBOUND_HBONE_PORT} \
             {not_ztunnel} -j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}"
        ));
    }
    if cfg.dns_capture {
        nat.push(format!(
            "-A {CHAIN_OUTPUT} ! -o lo -p udp -m udp --dport 53 {not_ztunnel} \
             -j REDIRECT --to-ports {DNS_PORT}"
        ));
        nat.push(format!(
            "-A {CHAIN_OUTPUT} ! -d {lo} -p tcp -m tcp --dport 53 {not_ztunnel} \
             -j REDIRECT --to-ports {DNS_PORT}"
        ));
    }
    nat.push(format!(
        "-A {CHAIN_OUTPUT} -p tcp -m mark --mark {reply} -j ACCEPT"
    ));
    nat.push(format!("-A {CHAIN_OUTPUT} ! -d {lo} -o lo -j ACCEPT"));
    nat.push(format!(
        "-A {CHAIN_OUTPUT} ! -d {lo} -p tcp {not_ztunnel} -j REDIRECT --to-ports {OUTBOUND_PORT}"
    ));
    tables.push(Table {
        name: "nat",
        chains: ours.clone(),
        jumps: vec![
            Jump::append("OUTPUT", CHAIN_OUTPUT),
            Jump::append("PREROUTING", CHAIN_PRERT),
        ],
        rules: nat,
    });

    if cfg.dns_capture {
        tables.push(Table {
            name: "raw",
            chains: ours,
            jumps: vec![
                Jump::append("PREROUTING", CHAIN_PRERT),
                Jump::append("OUTPUT", CHAIN_OUTPUT),
            ],
            rules: vec![
                format!("-A {CHAIN_OUTPUT} -p udp -m udp --dport 53 {is_ztunnel} -j CT --zone 1"),
                format!("-A {CHAIN_PRERT} -p udp -m udp --sport 53 {not_ztunnel} -j CT --zone 1"),
            ],
        });
    }
    tables
}

/// The node-side probe SNAT table for one family.
pub(crate) fn host_tables(family: Family) -> Vec<Table> {
    let (set, to) = match family {
        Family::V4 => (PROBE_SET_V4, PROBE_SNAT_V4.to_string()),
        Family::V6 => (PROBE_SET_V6, PROBE_SNAT_V6.to_string()),
    };
    vec![Table {
        name: "nat",
        chains: vec![CHAIN_POSTRT],
        jumps: vec![Jump {
            from: "POSTROUTING",
            to: CHAIN_POSTRT,
            first: true,
        }],
        rules: vec![format!(
            "-A {CHAIN_POSTRT} -p tcp -m owner --socket-exists -m set --match-set {set} dst \
             -j SNAT --to-source {to}"
        )],
    }]
}

/// The full restore text for `tables`, as if nothing were installed.
pub(crate) fn render_text(tables: &[Table]) -> String {
    let mut out = String::new();
    for t in tables {
        out.push_str(&format!("*{}\n", t.name));
        for c in &t.chains {
            out.push_str(&format!(":{c} - [0:0]\n"));
        }
        for j in &t.jumps {
            out.push_str(&j.add());
            out.push('\n');
        }
        for r in &t.rules {
            out.push_str(r);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// One table of `iptables-save` output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SavedTable {
    pub(crate) chains: Vec<String>,
    /// `-A ...` lines in order.
    pub(crate) rules: Vec<String>,
}

/// Parsed `iptables-save` output: table name → contents, in output order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Saved {
    pub(crate) tables: Vec<(String, SavedTable)>,
}

impl Saved {
    pub(crate) fn parse(text: &str) -> Saved {
        let mut saved = Saved::default();
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                saved.tables.push((name.to_string(), SavedTable::default()));
            } else if let Some((_, t)) = saved.tables.last_mut() {
                if let Some(decl) = line.strip_prefix(':') {
                    if let Some(chain) = decl.split_whitespace().next() {
                        t.chains.push(chain.to_string());
                    }
                } else if line.starts_with("-A ") {
                    t.rules.push(line.to_string());
                }
            }
        }
        saved
    }

    fn table(&self, name: &str) -> Option<&SavedTable> {
        self.tables.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Whether any chain of `managed` exists.
    pub(crate) fn has_any(&self, managed: Managed) -> bool {
        managed.iter().any(|(table, chains)| {
            self.table(table)
                .is_some_and(|t| t.chains.iter().any(|c| chains.contains(&c.as_str())))
        })
    }
}

fn targets(rule: &str, chain: &str) -> bool {
    rule.split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1] == chain)
}

/// The `iptables-restore --noflush` input that turns `current` into `wanted` for the chains in
/// `managed` (empty when nothing needs doing). Pure.
pub(crate) fn plan(managed: Managed, wanted: &[Table], current: &Saved) -> String {
    let mut out = String::new();
    for (table, ours) in managed {
        let cur = current.table(table).cloned().unwrap_or_default();
        if let Some(w) = wanted.iter().find(|w| w.name == *table) {
            out.push_str(&format!("*{table}\n"));
            for c in &w.chains {
                out.push_str(&format!(":{c} - [0:0]\n"));
            }
            for j in &w.jumps {
                let saved = j.saved();
                let n = cur.rules.iter().filter(|r| **r == saved).count();
                if n == 0 {
                    out.push_str(&j.add());
                    out.push('\n');
                }
                for _ in 1..n.max(1) {
                    out.push_str(&format!("-D {} -j {}\n", j.from, j.to));
                }
            }
            for r in &w.rules {
                out.push_str(r);
                out.push('\n');
            }
            out.push_str("COMMIT\n");
        } else {
            let present: Vec<&str> = ours
                .iter()
                .copied()
                .filter(|c| cur.chains.iter().any(|x| x == c))
                .collect();
            // Rules elsewhere that jump into our chains must go before the chains can.
            let refs: Vec<&String> = cur
                .rules
                .iter()
                .filter(|r| {
                    let chain = r.split_whitespace().nth(1).unwrap_or_default();
                    !ours.contains(&chain) && ours.iter().any(|o| targets(r, o))
                })
                .collect();
            if present.is_empty() && refs.is_empty() {
                continue;
            }
            out.push_str(&format!("*{table}\n"));
            for r in refs {
                out.push_str(&format!("-D{}\n", &r[2..]));
            }
            for c in &present {
                out.push_str(&format!("-F {c}\n"));
            }
            for c in &present {
                out.push_str(&format!("-X {c}\n"));
            }
            out.push_str("COMMIT\n");
        }
    }
    out
}

/// Reads the current state of `family` in `netns` (`None`: current netns).
pub(crate) fn save(netns: Option<&Path>, family: Family) -> Result<Saved, RulesError> {
    let text = Tool::new(family.save_tool()).netns(netns).run()?;
    Ok(Saved::parse(&text))
}

/// Converges the chains in `managed` to `wanted`.
pub(crate) fn converge_managed(
    netns: Option<&Path>,
    family: Family,
    managed: Managed,
    wanted: &[Table],
) -> Result<(), RulesError> {
    let current = save(netns, family)?;
    let text = plan(managed, wanted, &current);
    if text.is_empty() {
        return Ok(());
    }
    Tool::new(family.restore_tool())
        .args(["--noflush"])
        .netns(netns)
        .stdin(&text)
        .run()?;
    Ok(())
}

/// Converges the in-pod chains of `family` in `netns` to `wanted` (empty: remove them).
pub(crate) fn converge(netns: &Path, family: Family, wanted: &[Table]) -> Result<(), RulesError> {
    converge_managed(Some(netns), family, POD_MANAGED, wanted)
}

/// Whether any of our in-pod chains exists.
pub(crate) fn installed(netns: &Path, family: Family) -> Result<bool, RulesError> {
    Ok(save(Some(netns), family)?.has_any(POD_MANAGED))
}

//! # In-pod redirection rules
//!
//! The node agent captures an enrolled pod's traffic by installing redirection rules *inside the
//! pod's own network namespace*, so that ztunnel (which receives that namespace over ZDS) can
//! listen on `:15001` (outbound), `:15006` (plaintext inbound), `:15008` (HBONE, never
//! redirected) and `:15053` (DNS).
//!
//! This module follows "decide, then do":
//!
//! 1. [`render_pod_rules`] turns a plain [`PodRuleConfig`] into text: an `iptables-restore` input
//!    per IP family and an `nft -f` script. It is pure and golden-tested
//!    (`cni/tests/rules_golden.rs`, `cni/tests/golden/`).
//! 2. [`apply_pod_rules`] reads what is currently installed in the pod netns, derives the
//!    transaction that converges it to the rendered text (adding missing jump rules, re-declaring
//!    and thereby flushing our chains, removing leftovers of a previous configuration or of the
//!    other backend) and runs it through `nsenter --net=<netns> iptables-restore --noflush`
//!    or `nft -f -`. It also installs the policy-routing pair, via netlink inside the netns:
//!    `ip rule fwmark 0x111/0xfff pref 32764 lookup 100` and `local 0.0.0.0/0 dev lo table 100`
//!    (and the IPv6 twins unless IPv6 is off).
//! 3. [`remove_pod_rules`] deletes everything we add, for both backends, tolerating absence.
//!
//! The rendered text is written in the *canonical* form the tools print back
//! (`iptables-save` adds `-m tcp` after `-p tcp --dport`, `/32` on addresses; `nft list` prints
//! `meta mark & 0x00000fff`, `priority dstnat`), so that tests, and [`pod_rules_present`], can
//! compare what is installed with what was rendered line by line. Semantically the rules are
//! exactly those of the reference tables (mark `0x539/0xfff` = from ztunnel, `0x111/0xfff` =
//! reply for ztunnel's transparent socket, probe source `169.254.7.127`, ...).
//!
//! [`HostProbeRules`] manages the node-side half: kubelet probes towards enrolled pods are
//! SNATed to `169.254.7.127` so that the in-pod rules let them through uncaptured.
//!
//! Every function here is blocking (it spawns processes and, for netlink, a short-lived OS
//! thread that enters the pod netns); call it from `spawn_blocking`.
//!
//! This module depends only on the standard library, `nix`, `rtnetlink`, `tokio` (a
//! current-thread runtime for netlink) and the external tools `iptables`, `nftables`, `ipset`
//! and `util-linux` (`nsenter`). It knows nothing of Kubernetes, ZDS or the agent.

mod exec;
mod host;
mod iptables;
mod netlink;
mod nft;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

pub use host::HostProbeRules;

/// Mark (under [`MARK_MASK`]) carried by packets ztunnel sends: they bypass every redirect.
pub const ZTUNNEL_MARK: u32 = 0x539;
/// Mark (under [`MARK_MASK`]) of replies that must reach ztunnel's transparent socket.
pub const CONNMARK_REPLY: u32 = 0x111;
/// The mask both marks live under.
pub const MARK_MASK: u32 = 0xfff;
/// Routing table holding the `local` default route for marked replies.
pub const ROUTE_TABLE: u32 = 100;
/// Priority of the `fwmark 0x111/0xfff lookup 100` rule.
pub const RULE_PRIORITY: u32 = 32764;
/// ztunnel's in-pod outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;
/// ztunnel's in-pod plaintext inbound capture port.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// ztunnel's in-pod HBONE port (never redirected).
pub const INBOUND_HBONE_PORT: u16 = 15008;
/// ztunnel's in-pod DNS proxy port.
pub const DNS_PORT: u16 = 15053;
/// Source address kubelet probes are SNATed to on the node (IPv4).
pub const PROBE_SNAT_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 7, 127);
/// Source address kubelet probes are SNATed to on the node (IPv6).
pub const PROBE_SNAT_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(
    0xfd16, 0x9254, 0x7127, 0x1337, 0xffff, 0xffff, 0xffff, 0xffff,
);
/// The iptables chain jumped to from `PREROUTING` (mangle, nat, raw).
pub const CHAIN_PRERT: &str = "ISTIO_PRERT";
/// The iptables chain jumped to from `OUTPUT` (mangle, nat, raw).
pub const CHAIN_OUTPUT: &str = "ISTIO_OUTPUT";
/// The node-side iptables nat chain jumped to from `POSTROUTING`.
pub const CHAIN_POSTRT: &str = "ISTIO_POSTRT";
/// nftables table for NAT (in the pod netns, and on the node for probe SNAT).
pub const NFT_TABLE_NAT: &str = "istio-ambient-nat";
/// nftables table for the connmark dance.
pub const NFT_TABLE_MANGLE: &str = "istio-ambient-mangle";
/// nftables table for DNS conntrack zones.
pub const NFT_TABLE_RAW: &str = "istio-ambient-raw";
/// ipset / nft set of enrolled pod IPv4 addresses on the node.
pub const PROBE_SET_V4: &str = "istio-inpod-probes-v4";
/// ipset / nft set of enrolled pod IPv6 addresses on the node.
pub const PROBE_SET_V6: &str = "istio-inpod-probes-v6";

/// Which packet-filter front end installs the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `iptables-restore` / `ip6tables-restore` (the default), with `ipset` on the node.
    Iptables,
    /// Native nftables (`nft -f`), Helm `global.nativeNftables`.
    Nftables,
}

impl Backend {
    fn other(self) -> Self {
        match self {
            Backend::Iptables => Backend::Nftables,
            Backend::Nftables => Backend::Iptables,
        }
    }
}

/// What to install in one pod's netns: the global settings with the pod's annotations applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRuleConfig {
    /// Front end to use.
    pub backend: Backend,
    /// Install IPv4 rules.
    pub ipv4: bool,
    /// Install IPv6 rules (and the IPv6 policy route unless IPv6 is disabled on `lo`).
    pub ipv6: bool,
    /// Capture DNS (UDP/TCP 53 → 15053, plus the raw-table conntrack zones).
    pub dns_capture: bool,
    /// `ambient.istio.io/bypass-inbound-capture`: capture outbound only.
    pub bypass_inbound: bool,
    /// `istio.io/reroute-virtual-interfaces`: TCP arriving on these is sent to 15001.
    /// Names that are not valid interface names are rejected by [`apply_pod_rules`] and left
    /// out by [`render_pod_rules`].
    pub reroute_interfaces: Vec<String>,
}

impl Default for PodRuleConfig {
    fn default() -> Self {
        PodRuleConfig {
            backend: Backend::Iptables,
            ipv4: true,
            ipv6: true,
            dns_capture: true,
            bypass_inbound: false,
            reroute_interfaces: Vec::new(),
        }
    }
}

/// The text [`apply_pod_rules`] feeds to the tools (before convergence adjustments: jumps that
/// are already installed are not appended twice).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RenderedRules {
    /// `iptables-restore --noflush` input; empty unless the iptables backend and IPv4.
    pub iptables_v4: String,
    /// `ip6tables-restore --noflush` input; empty unless the iptables backend and IPv6.
    pub iptables_v6: String,
    /// `nft -f` script; empty unless the nftables backend.
    pub nft: String,
}

/// Why installing or removing rules failed. Messages say what an operator should check.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// A tool ran and failed.
    #[error("`{program} {}` failed ({status}): {stderr}", args.join(" "))]
    Command {
        program: String,
        args: Vec<String>,
        status: String,
        stderr: String,
    },
    /// A tool could not be started for another reason than being absent.
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// A netlink request (ip rule / ip route) failed.
    #[error("netlink: {0}")]
    Netlink(String),
    /// The network namespace could not be entered.
    #[error("network namespace {}: {reason}", path.display())]
    Netns { path: PathBuf, reason: String },
    /// A required tool is not installed.
    #[error("`{tool}` not found in PATH: install the Debian package `{package}`")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    /// The configuration cannot be rendered safely.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A tool printed something we do not understand.
    #[error("cannot parse output of `{program}`: {reason}")]
    Parse { program: String, reason: String },
}

/// Renders the rules for `cfg`. Pure: no I/O.
pub fn render_pod_rules(cfg: &PodRuleConfig) -> RenderedRules {
    match cfg.backend {
        Backend::Iptables => RenderedRules {
            iptables_v4: if cfg.ipv4 {
                iptables::render_text(&iptables::pod_tables(cfg, iptables::Family::V4))
            } else {
                String::new()
            },
            iptables_v6: if cfg.ipv6 {
                iptables::render_text(&iptables::pod_tables(cfg, iptables::Family::V6))
            } else {
                String::new()
            },
            nft: String::new(),
        },
        Backend::Nftables => RenderedRules {
            iptables_v4: String::new(),
            iptables_v6: String::new(),
            nft: nft::render(cfg),
        },
    }
}

/// Interface names we accept in rules: what the kernel accepts, minus anything a shell or
/// rule parser could misread.
pub(crate) fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

fn validate(cfg: &PodRuleConfig) -> Result<(), RulesError> {
    if let Some(bad) = cfg.reroute_interfaces.iter().find(|i| !valid_ifname(i)) {
        return Err(RulesError::InvalidConfig(format!(
            "reroute interface {bad:?} is not a valid interface name"
        )));
    }
    Ok(())
}

fn check_netns(netns: &Path) -> Result<(), RulesError> {
    if !netns.exists() {
        return Err(RulesError::Netns {
            path: netns.to_path_buf(),
            reason: "does not exist (pod gone?)".into(),
        });
    }
    Ok(())
}

/// Installs (or converges to) the rules of `cfg` inside the netns at `netns`
/// (e.g. `/proc/<pid>/ns/net` or `/var/run/netns/<name>`). Idempotent: applying twice leaves
/// exactly one copy; applying a different config removes what the old one had and the new one
/// does not (including the other backend's rules).
pub fn apply_pod_rules(netns: &Path, cfg: &PodRuleConfig) -> Result<(), RulesError> {
    validate(cfg)?;
    check_netns(netns)?;
    let rendered = render_pod_rules(cfg);
    match cfg.backend {
        Backend::Iptables => {
            for family in [iptables::Family::V4, iptables::Family::V6] {
                let wanted = match family {
                    iptables::Family::V4 if cfg.ipv4 => iptables::pod_tables(cfg, family),
                    iptables::Family::V6 if cfg.ipv6 => iptables::pod_tables(cfg, family),
                    _ => Vec::new(),
                };
                iptables::converge(netns, family, &wanted)?;
            }
        }
        Backend::Nftables => nft::apply(netns, &rendered.nft)?,
    }
    remove_backend_tolerant(netns, cfg.backend.other())?;
    netlink::ensure(netns, cfg.ipv6)?;
    debug!(netns = %netns.display(), ?cfg, "in-pod redirection rules applied");
    Ok(())
}

/// Removes every rule, chain, table, ip rule and route [`apply_pod_rules`] may have added,
/// for both backends. Absence is not an error; a backend whose tool is not installed is
/// skipped (we cannot have installed anything with it).
pub fn remove_pod_rules(netns: &Path) -> Result<(), RulesError> {
    check_netns(netns)?;
    remove_backend_tolerant(netns, Backend::Iptables)?;
    remove_backend_tolerant(netns, Backend::Nftables)?;
    netlink::remove(netns)?;
    debug!(netns = %netns.display(), "in-pod redirection rules removed");
    Ok(())
}

fn remove_backend_tolerant(netns: &Path, backend: Backend) -> Result<(), RulesError> {
    let res = match backend {
        Backend::Iptables => iptables::converge(netns, iptables::Family::V4, &[])
            .and_then(|()| iptables::converge(netns, iptables::Family::V6, &[])),
        Backend::Nftables => nft::remove(netns),
    };
    match res {
        Err(RulesError::MissingTool { tool, package }) => {
            warn!(
                tool,
                package,
                ?backend,
                "tool missing: skipping cleanup of that backend"
            );
            Ok(())
        }
        other => other,
    }
}

/// Whether any of our rules (iptables chains, nft tables or the `fwmark 0x111` ip rule) is
/// installed in the netns. Used by the agent to reconcile after a restart; re-applying is
/// always safe.
pub fn pod_rules_present(netns: &Path) -> Result<bool, RulesError> {
    check_netns(netns)?;
    for family in [iptables::Family::V4, iptables::Family::V6] {
        match iptables::installed(netns, family) {
            Ok(true) => return Ok(true),
            Ok(false) | Err(RulesError::MissingTool { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    match nft::installed(netns) {
        Ok(true) => return Ok(true),
        Ok(false) | Err(RulesError::MissingTool { .. }) => {}
        Err(e) => return Err(e),
    }
    netlink::present(netns)
}

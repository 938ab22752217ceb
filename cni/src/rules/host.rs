//! Node-side kubelet probe SNAT: traffic the node itself originates towards an enrolled pod's
//! IP leaves with source `169.254.7.127` (v6: `fd16:9254:7127:1337:ffff:ffff:ffff:ffff`), which
//! the in-pod rules accept without capture.
//!
//! * iptables mode: ipsets `istio-inpod-probes-v4`/`-v6` (`hash:ip`, each entry's comment is the
//!   pod UID) and the nat chain `ISTIO_POSTRT`, inserted first in `POSTROUTING`.
//! * nftables mode: `table inet istio-ambient-nat` with two named sets (each element's comment
//!   is the pod UID) and a `postrouting` nat chain.
//!
//! Because the UID is stored with every element, `remove_pod` and `sync` work from what the
//! kernel holds, also after an agent restart: no in-memory map is needed.
//!
//! Everything runs in the CURRENT network namespace of the calling thread (the node, or a
//! thread that entered it); tools are spawned from that thread and inherit it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::IpAddr;

use parking_lot::Mutex;
use tracing::debug;

use super::RulesError;
use super::exec::Tool;
use super::iptables::{self, Family, HOST_MANAGED};
use super::{Backend, NFT_TABLE_NAT, PROBE_SET_V4, PROBE_SET_V6, PROBE_SNAT_V4, PROBE_SNAT_V6};

/// Manages the probe SNAT rules and sets of the node netns.
#[derive(Debug)]
pub struct HostProbeRules {
    backend: Backend,
    kubelet_uid: u32,
    /// Serialises read-modify-write cycles of the sets.
    lock: Mutex<()>,
}

/// What a set holds: IP → pod UID (`None`: an entry without comment).
pub(crate) type Entries = BTreeMap<IpAddr, Option<String>>;

/// Changes that bring a set to the wanted state. Pure result of [`plan_sync`]/[`plan_remove`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SetPlan {
    pub(crate) delete: Vec<IpAddr>,
    /// Added, or re-added with this UID.
    pub(crate) upsert: Vec<(IpAddr, String)>,
}

impl SetPlan {
    fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.upsert.is_empty()
    }
}

/// Entries of `uid` go.
pub(crate) fn plan_remove(current: &Entries, uid: &str) -> SetPlan {
    SetPlan {
        delete: current
            .iter()
            .filter(|(_, u)| u.as_deref() == Some(uid))
            .map(|(ip, _)| *ip)
            .collect(),
        upsert: Vec::new(),
    }
}

/// The set ends up holding exactly `pods`' IPs, each commented with its pod's UID (when two
/// pods claim one IP, the later one in `pods` wins).
pub(crate) fn plan_sync(current: &Entries, pods: &[(String, Vec<IpAddr>)]) -> SetPlan {
    let mut wanted: BTreeMap<IpAddr, &str> = BTreeMap::new();
    for (uid, ips) in pods {
        for ip in ips {
            wanted.insert(*ip, uid);
        }
    }
    SetPlan {
        delete: current
            .keys()
            .filter(|ip| !wanted.contains_key(ip))
            .copied()
            .collect(),
        upsert: wanted
            .iter()
            .filter(|(ip, uid)| current.get(ip).and_then(|u| u.as_deref()) != Some(**uid))
            .map(|(ip, uid)| (*ip, uid.to_string()))
            .collect(),
    }
}

fn set_of(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        PROBE_SET_V4
    } else {
        PROBE_SET_V6
    }
}

/// Pod UIDs go into comments: keep them to what Kubernetes generates.
fn check_uid(uid: &str) -> Result<(), RulesError> {
    if uid.is_empty()
        || uid.len() > 128
        || !uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(RulesError::InvalidConfig(format!(
            "pod UID {uid:?} is not a valid UID"
        )));
    }
    Ok(())
}

/// `ipset restore` input for `plan`. Pure.
pub(crate) fn render_ipset(plan: &SetPlan) -> String {
    let mut out = String::new();
    for ip in &plan.delete {
        let _ = writeln!(out, "del {} {ip} -exist", set_of(ip));
    }
    for (ip, uid) in &plan.upsert {
        let _ = writeln!(out, "add {} {ip} comment \"{uid}\" -exist", set_of(ip));
    }
    out
}

/// `nft -f` input for `plan`; the add/delete/add dance makes each element exist once with the
/// new comment whatever was there. Pure.
pub(crate) fn render_nft_elements(plan: &SetPlan) -> String {
    let mut out = String::new();
    let t = NFT_TABLE_NAT;
    for ip in &plan.delete {
        let s = set_of(ip);
        let _ = writeln!(out, "add element inet {t} {s} {{ {ip} }}");
        let _ = writeln!(out, "delete element inet {t} {s} {{ {ip} }}");
    }
    for (ip, uid) in &plan.upsert {
        let s = set_of(ip);
        let _ = writeln!(out, "add element inet {t} {s} {{ {ip} }}");
        let _ = writeln!(out, "delete element inet {t} {s} {{ {ip} }}");
        let _ = writeln!(out, "add element inet {t} {s} {{ {ip} comment \"{uid}\" }}");
    }
    out
}

/// The nft script installing (or re-installing, keeping set contents) the node table. Pure.
pub(crate) fn render_nft_install(kubelet_uid: u32) -> String {
    let t = NFT_TABLE_NAT;
    format!(
        "add table inet {t}\n\
         add set inet {t} {PROBE_SET_V4} {{ type ipv4_addr; }}\n\
         add set inet {t} {PROBE_SET_V6} {{ type ipv6_addr; }}\n\
         add chain inet {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain inet {t} postrouting\n\
         add rule inet {t} postrouting meta l4proto tcp meta skuid {kubelet_uid} ip daddr @{PROBE_SET_V4} counter snat ip to {PROBE_SNAT_V4}\n\
         add rule inet {t} postrouting meta l4proto tcp meta skuid {kubelet_uid} ip6 daddr @{PROBE_SET_V6} counter snat ip6 to {PROBE_SNAT_V6}\n"
    )
}

/// Parses `ipset save` output into the entries of our two sets. Pure.
pub(crate) fn parse_ipset_save(text: &str) -> Entries {
    let mut entries = Entries::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("add") {
            continue;
        }
        let Some(set) = words.next() else { continue };
        if set != PROBE_SET_V4 && set != PROBE_SET_V6 {
            continue;
        }
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        let comment = line
            .split_once(" comment \"")
            .and_then(|(_, rest)| rest.split('"').next())
            .map(str::to_string);
        entries.insert(ip, comment);
    }
    entries
}

/// Parses `nft -j list set` output. Pure.
pub(crate) fn parse_nft_set_json(text: &str) -> Result<Entries, RulesError> {
    let err = |reason: String| RulesError::Parse {
        program: "nft -j list set".into(),
        reason,
    };
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
    let mut entries = Entries::new();
    let items = v["nftables"]
        .as_array()
        .ok_or_else(|| err("no `nftables` array".into()))?;
    for item in items {
        let Some(elems) = item["set"]["elem"].as_array() else {
            continue;
        };
        for e in elems {
            let (val, comment) = match e {
                serde_json::Value::String(s) => (s.as_str(), None),
                other => (
                    other["elem"]["val"].as_str().unwrap_or_default(),
                    other["elem"]["comment"].as_str().map(str::to_string),
                ),
            };
            let ip = val
                .parse::<IpAddr>()
                .map_err(|e| err(format!("element {val:?}: {e}")))?;
            entries.insert(ip, comment);
        }
    }
    Ok(entries)
}

impl HostProbeRules {
    /// Rules for `backend`; the nftables rule matches sockets of uid 0 (kubelet's usual uid,
    /// see [`Self::with_kubelet_uid`]).
    pub fn new(backend: Backend) -> Self {
        HostProbeRules {
            backend,
            kubelet_uid: 0,
            lock: Mutex::new(()),
        }
    }

    /// nftables mode: the uid kubelet runs as (`meta skuid`). iptables mode uses
    /// `-m owner --socket-exists` instead and ignores this.
    pub fn with_kubelet_uid(mut self, uid: u32) -> Self {
        self.kubelet_uid = uid;
        self
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Creates the sets, chain and rules in the current netns. Idempotent; set contents are
    /// kept.
    pub fn install(&self) -> Result<(), RulesError> {
        let _g = self.lock.lock();
        match self.backend {
            Backend::Iptables => {
                let creates = format!(
                    "create {PROBE_SET_V4} hash:ip family inet comment -exist\n\
                     create {PROBE_SET_V6} hash:ip family inet6 comment -exist\n"
                );
                Tool::new("ipset").args(["restore"]).stdin(&creates).run()?;
                for family in [Family::V4, Family::V6] {
                    iptables::converge_managed(
                        None,
                        family,
                        HOST_MANAGED,
                        &iptables::host_tables(family),
                    )?;
                }
            }
            Backend::Nftables => {
                let script = render_nft_install(self.kubelet_uid);
                Tool::new("nft").args(["-f", "-"]).stdin(&script).run()?;
            }
        }
        debug!(backend = ?self.backend, "host probe SNAT rules installed");
        Ok(())
    }

    /// What the sets currently hold.
    fn entries(&self) -> Result<Entries, RulesError> {
        match self.backend {
            Backend::Iptables => {
                let mut all = Entries::new();
                for set in [PROBE_SET_V4, PROBE_SET_V6] {
                    let text = Tool::new("ipset").args(["save", set]).run()?;
                    all.extend(parse_ipset_save(&text));
                }
                Ok(all)
            }
            Backend::Nftables => {
                let mut all = Entries::new();
                for set in [PROBE_SET_V4, PROBE_SET_V6] {
                    let text = Tool::new("nft")
                        .args(["-j", "list", "set", "inet", NFT_TABLE_NAT, set])
                        .run()?;
                    all.extend(parse_nft_set_json(&text)?);
                }
                Ok(all)
            }
        }
    }

    fn execute(&self, plan: &SetPlan) -> Result<(), RulesError> {
        if plan.is_empty() {
            return Ok(());
        }
        match self.backend {
            Backend::Iptables => Tool::new("ipset")
                .args(["restore"])
                .stdin(&render_ipset(plan))
                .run(),
            Backend::Nftables => Tool::new("nft")
                .args(["-f", "-"])
                .stdin(&render_nft_elements(plan))
                .run(),
        }
        .map(drop)
    }

    /// Adds the pod's IPs (commented with its UID; an IP held by another UID is taken over).
    pub fn add_pod(&self, uid: &str, ips: &[IpAddr]) -> Result<(), RulesError> {
        check_uid(uid)?;
        let _g = self.lock.lock();
        let plan = SetPlan {
            delete: Vec::new(),
            upsert: ips.iter().map(|ip| (*ip, uid.to_string())).collect(),
        };
        self.execute(&plan)
    }

    /// Removes the entries commented with `uid`, and only those.
    pub fn remove_pod(&self, uid: &str) -> Result<(), RulesError> {
        check_uid(uid)?;
        let _g = self.lock.lock();
        let plan = plan_remove(&self.entries()?, uid);
        self.execute(&plan)
    }

    /// Makes the sets hold exactly the IPs of `pods` (e.g. on agent start).
    pub fn sync(&self, pods: &[(String, Vec<IpAddr>)]) -> Result<(), RulesError> {
        for (uid, _) in pods {
            check_uid(uid)?;
        }
        let _g = self.lock.lock();
        let plan = plan_sync(&self.entries()?, pods);
        self.execute(&plan)
    }

    /// Removes the chain, rules and sets. Absence is not an error.
    pub fn uninstall(&self) -> Result<(), RulesError> {
        let _g = self.lock.lock();
        match self.backend {
            Backend::Iptables => {
                for family in [Family::V4, Family::V6] {
                    iptables::converge_managed(None, family, HOST_MANAGED, &[])?;
                }
                let existing = Tool::new("ipset").args(["list", "-n"]).run()?;
                for set in [PROBE_SET_V4, PROBE_SET_V6] {
                    if existing.lines().any(|l| l.trim() == set) {
                        Tool::new("ipset").args(["destroy", set]).run()?;
                    }
                }
            }
            Backend::Nftables => {
                let t = NFT_TABLE_NAT;
                let script = format!("add table inet {t}\ndelete table inet {t}\n");
                Tool::new("nft").args(["-f", "-"]).stdin(&script).run()?;
            }
        }
        debug!(backend = ?self.backend, "host probe SNAT rules removed");
        Ok(())
    }
}

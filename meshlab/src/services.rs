//! The kube-proxy and DNS equivalents.
//!
//! * Service VIPs: each pod netns gets an nftables table `ip meshlab-svc` whose nat `output`
//!   chain (priority -90, after Istio's in-pod redirection at -100) DNATs `ClusterIP:port` to a
//!   random ready endpoint `podIP:targetPort` (`numgen random` over one chain per endpoint);
//!   a service without endpoints rejects with a TCP reset. Doing it at the source rather than in
//!   the node keeps replies un-NATed correctly on a node's own bridge without `br_netfilter`,
//!   and leaves connections captured by ztunnel untouched (a nat hook stops after the first
//!   mapping), exactly like kube-proxy running after the in-pod rules.
//! * Names: `/etc/netns/<pod netns>/hosts` lists every Service (`svc` only in its own namespace,
//!   `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`) and `resolv.conf` the search path and
//!   the cluster DNS ([`crate::dns`], ClusterIP `10.96.0.10`, DNATed here like any Service);
//!   `ip netns exec` bind-mounts both over `/etc`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::Value;

use crate::dns;
use crate::error::{LabError, Result};
use crate::objects::{self, Cluster};
use crate::state::{LabState, Layout, PodState};
use crate::sys;

/// The nftables table the lab owns in each pod netns.
pub const NFT_TABLE: &str = "meshlab-svc";
/// First address handed out to Services without `spec.clusterIP`.
const VIP_BASE: [u8; 3] = [10, 96, 1];

/// One load-balanced port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipPort {
    /// ClusterIP.
    pub ip: String,
    /// `tcp`/`udp`.
    pub protocol: String,
    /// Service port.
    pub port: u16,
    /// Endpoints (`podIP`, `targetPort`).
    pub endpoints: Vec<(String, u16)>,
}

/// A Service as the lab sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// ClusterIP (None for headless).
    pub cluster_ip: Option<String>,
    /// Ports with their endpoints.
    pub ports: Vec<VipPort>,
    /// IPs of the ready pods the selector picks (what a headless Service's name resolves to).
    pub ready_ips: Vec<String>,
}

/// Picks a free ClusterIP.
pub fn allocate_vip(cluster: &Cluster) -> Result<String> {
    let used: Vec<String> = cluster
        .of_kind("Service")
        .iter()
        .filter_map(|s| {
            s.pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    for third in VIP_BASE[2]..=255u8 {
        for last in 1..=254u8 {
            let ip = format!("{}.{}.{third}.{last}", VIP_BASE[0], VIP_BASE[1]);
            if !used.contains(&ip) {
                return Ok(ip);
            }
        }
    }
    Err(LabError::Invalid(
        "no free ClusterIP left in 10.96.0.0/16".into(),
    ))
}

/// Services with their ready endpoints, from `cluster/`.
pub fn views(cluster: &Cluster) -> Vec<ServiceView> {
    let all = cluster.all();
    let pods: Vec<&Value> = all.iter().filter(|v| objects::kind(v) == "Pod").collect();
    all.iter()
        .filter(|v| objects::kind(v) == "Service")
        .map(|svc| {
            let ns = objects::namespace(svc);
            let selector: BTreeMap<String, String> = svc
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let cluster_ip = svc
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .filter(|ip| *ip != "None" && !ip.is_empty())
                .map(str::to_string);
            let members: Vec<(&Value, String)> = pods
                .iter()
                .filter(|p| {
                    objects::namespace(p) == ns
                        && objects::selector_matches(&selector, &objects::labels(p))
                })
                .filter_map(|p| objects::pod_ready_ip(p).map(|ip| (*p, ip)))
                .collect();
            let ports = match &cluster_ip {
                None => Vec::new(),
                Some(ip) => objects::service_ports(svc)
                    .into_iter()
                    .map(|sp| VipPort {
                        ip: ip.clone(),
                        protocol: sp.protocol.clone(),
                        port: sp.port,
                        endpoints: members
                            .iter()
                            .filter_map(|(p, pip)| {
                                objects::resolve_target(&sp.target, p).map(|t| (pip.clone(), t))
                            })
                            .collect(),
                    })
                    .collect(),
            };
            ServiceView {
                namespace: ns.to_string(),
                name: objects::name(svc).to_string(),
                cluster_ip,
                ports,
                ready_ips: members.iter().map(|(_, ip)| ip.clone()).collect(),
            }
        })
        .collect()
}

/// The nft script that (re)creates the lab's table in a pod netns.
pub fn nft_script(services: &[ServiceView]) -> String {
    let mut s =
        format!("table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\ntable ip {NFT_TABLE} {{\n");
    let mut chains = String::new();
    let mut nat =
        String::from("\tchain output {\n\t\ttype nat hook output priority -90; policy accept;\n");
    let mut filter =
        String::from("\tchain novip {\n\t\ttype filter hook output priority 0; policy accept;\n");
    // The cluster DNS's ClusterIP, like kube-proxy does for kube-dns.
    for proto in ["udp", "tcp"] {
        let _ = writeln!(
            nat,
            "\t\tip daddr {} {proto} dport 53 dnat to {}:53",
            dns::KUBE_DNS_VIP,
            crate::topology::CP_IP
        );
    }
    let mut n = 0;
    for p in services.iter().flat_map(|s| &s.ports) {
        let proto = if p.protocol == "udp" { "udp" } else { "tcp" };
        if p.endpoints.is_empty() {
            let action = if proto == "tcp" {
                "reject with tcp reset"
            } else {
                "reject"
            };
            let _ = writeln!(
                filter,
                "\t\tip daddr {} {proto} dport {} {action}",
                p.ip, p.port
            );
            continue;
        }
        let svc_chain = format!("svc{n}");
        n += 1;
        let _ = writeln!(
            nat,
            "\t\tip daddr {} {proto} dport {} jump {svc_chain}",
            p.ip, p.port
        );
        let mut map = Vec::new();
        for (i, (ip, port)) in p.endpoints.iter().enumerate() {
            let ep = format!("{svc_chain}-ep{i}");
            let _ = writeln!(
                chains,
                "\tchain {ep} {{\n\t\tmeta l4proto {proto} dnat to {ip}:{port}\n\t}}"
            );
            map.push(format!("{i} : jump {ep}"));
        }
        let _ = writeln!(
            chains,
            "\tchain {svc_chain} {{\n\t\tnumgen random mod {} vmap {{ {} }}\n\t}}",
            p.endpoints.len(),
            map.join(", ")
        );
    }
    nat.push_str("\t}\n");
    filter.push_str("\t}\n");
    s.push_str(&chains);
    s.push_str(&nat);
    s.push_str(&filter);
    s.push_str("}\n");
    s
}

/// `/etc/netns/<netns>/hosts` content for a pod.
pub fn hosts_file(
    pod_ns: &str,
    pod_name: &str,
    pod_ip: Option<&str>,
    services: &[ServiceView],
) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(ip) = pod_ip {
        let _ = writeln!(s, "{ip}\t{pod_name}");
    }
    for svc in services {
        let Some(ip) = &svc.cluster_ip else { continue };
        let (n, ns) = (&svc.name, &svc.namespace);
        let short = if ns == pod_ns {
            format!("{n} ")
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "{ip}\t{short}{n}.{ns} {n}.{ns}.svc {n}.{ns}.svc.cluster.local"
        );
    }
    s
}

/// `/etc/netns/<netns>/resolv.conf` content.
pub fn resolv_conf(pod_ns: &str) -> String {
    format!(
        "nameserver {}\nsearch {pod_ns}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        dns::KUBE_DNS_VIP
    )
}

/// Directory whose files `ip netns exec` mounts over /etc.
pub fn etc_dir(netns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(netns)
}

/// Writes a pod's hosts and resolv.conf.
pub fn write_pod_files(pod: &PodState, services: &[ServiceView]) -> Result<()> {
    let dir = etc_dir(&pod.netns);
    crate::state::mkdir(&dir)?;
    sys::write_in_place(
        &dir.join("hosts"),
        hosts_file(&pod.namespace, &pod.name, pod.ip.as_deref(), services).as_bytes(),
    )?;
    sys::write_in_place(
        &dir.join("resolv.conf"),
        resolv_conf(&pod.namespace).as_bytes(),
    )
}

/// Re-syncs every pod's Service rules and name files, and the cluster DNS's zone.
pub fn sync(layout: &Layout, cluster: &Cluster, st: &LabState) -> Result<()> {
    let services = views(cluster);
    dns::write_zone(layout, &dns::zone(&services, st.pods.values()))?;
    let script = nft_script(&services);
    for pod in st.pods.values() {
        if pod.ip.is_none() {
            continue;
        }
        write_pod_files(pod, &services)?;
        sys::run_input(
            sys::in_netns(&pod.netns, "nft").args(["-f", "-"]),
            Some(script.as_bytes()),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> ServiceView {
        ServiceView {
            namespace: "default".into(),
            name: "httpbin".into(),
            cluster_ip: Some("10.96.1.1".into()),
            ports: vec![VipPort {
                ip: "10.96.1.1".into(),
                protocol: "tcp".into(),
                port: 8000,
                endpoints: vec![("10.244.0.2".into(), 80), ("10.244.1.2".into(), 80)],
            }],
            ready_ips: vec!["10.244.0.2".into(), "10.244.1.2".into()],
        }
    }

    #[test]
    fn nft_balances_over_endpoints() {
        let s = nft_script(&[svc()]);
        assert!(
            s.contains("ip daddr 10.96.1.1 tcp dport 8000 jump svc0"),
            "{s}"
        );
        assert!(
            s.contains("numgen random mod 2 vmap { 0 : jump svc0-ep0, 1 : jump svc0-ep1 }"),
            "{s}"
        );
        assert!(s.contains("dnat to 10.244.1.2:80"), "{s}");
        for proto in ["udp", "tcp"] {
            let kube_dns = format!("ip daddr 10.96.0.10 {proto} dport 53 dnat to 10.99.0.1:53");
            assert!(s.contains(&kube_dns), "{s}");
        }
        let mut empty = svc();
        empty.ports[0].endpoints.clear();
        assert!(
            nft_script(&[empty])
                .contains("ip daddr 10.96.1.1 tcp dport 8000 reject with tcp reset")
        );
    }

    #[test]
    fn hosts_short_name_only_in_same_namespace() {
        let h = hosts_file("default", "sleep-1", Some("10.244.0.3"), &[svc()]);
        assert!(h.contains("10.96.1.1\thttpbin httpbin.default httpbin.default.svc httpbin.default.svc.cluster.local"), "{h}");
        let h = hosts_file("legacy", "sleep-1", None, &[svc()]);
        assert!(h.contains("10.96.1.1\thttpbin.default "), "{h}");
        assert!(!h.contains("\thttpbin "), "{h}");
        assert!(resolv_conf("legacy").starts_with(
            "nameserver 10.96.0.10\nsearch legacy.svc.cluster.local svc.cluster.local cluster.local"
        ));
    }
}

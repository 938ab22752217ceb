//! The pure part of the DNS proxy: given a snapshot of the mesh and one question, decide whether
//! to answer it ourselves (and with what) or to forward it upstream.
//!
//! # Name resolution
//!
//! A client in namespace `N` of cluster domain `D` has the search list `N.svc.D`, `svc.D`, `D`
//! (Kubernetes' `ClusterFirst` policy). Its stub resolver sends a short name with the first search
//! domain appended first, so a question for `<base>.N.svc.D` is treated as "the client typed
//! `<base>`": we try, in the client's search order, `<base>.N.svc.D`, `<base>.svc.D`,
//! `<base>.D` and finally `<base>` itself (ServiceEntry hosts), and answer with a CNAME from the
//! queried name to the first name that exists. That spares the client the round trips through
//! the rest of its search list. A name that is not qualified in the cluster domain at all (a
//! client that sent `name` or `name.ns` as is) is expanded the same way; a name already under
//! `D` (other than the first search domain) is only looked up literally.
//!
//! A candidate name exists when it is:
//! * a Kubernetes service `<svc>.<ns>.svc.D` visible to `N` (found by its store key, so the
//!   lookup is a hash probe): its VIPs, or for a headless service (no VIP) the addresses of its
//!   healthy endpoints;
//! * a headless pod name `<pod>.<svc>.<ns>.svc.D`: that endpoint's addresses;
//! * any other service hostname (ServiceEntry), exact or, outside the cluster domain, matching
//!   a wildcard host (`*.example.com`), chosen by the store's preference order for `N`.
//!
//! Kubernetes-shaped names are found by store key only, so a ServiceEntry whose host looks like
//! `<svc>.<ns>.svc.<domain>` but lives in another namespace is not seen. Other names cost one
//! scan of the services per candidate (the store has no hostname index yet).
//!
//! Services with `NAMESPACE` visibility are only seen by clients of their namespace. A name that
//! exists but has no address of any family is treated as unknown (forwarded); one that has
//! addresses only of the other family gets an empty `NOERROR`. Only `IN` class `A`/`AAAA`
//! questions are answered; everything else is forwarded.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode};
use hickory_proto::rr::{DNSClass, RecordType};
use state::{MeshView, Service};

/// The client's view for search-domain expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchContext {
    /// The client pod's namespace (first search domain `<ns>.svc.<domain>`).
    pub client_namespace: String,
    /// The cluster domain (`cluster.local`), lowercase without dots at either end.
    pub cluster_domain: String,
}

impl SearchContext {
    pub fn new(client_namespace: &str, cluster_domain: &str) -> Self {
        SearchContext {
            client_namespace: client_namespace.to_ascii_lowercase(),
            cluster_domain: cluster_domain.trim_matches('.').to_ascii_lowercase(),
        }
    }

    /// The names to try for `name` (lowercase, no trailing dot), most preferred first.
    pub fn candidates(&self, name: &str) -> Vec<String> {
        let d = &self.cluster_domain;
        let first = format!("{}.svc.{d}", self.client_namespace);
        let base = match name.strip_suffix(&first).and_then(|b| b.strip_suffix('.')) {
            Some(base) => base,
            None if name == d.as_str() || name.ends_with(&format!(".{d}")) => {
                return vec![name.to_string()];
            }
            None => name,
        };
        if base.is_empty() {
            return vec![name.to_string()];
        }
        let mut out = vec![
            format!("{base}.{first}"),
            format!("{base}.svc.{d}"),
            format!("{base}.{d}"),
            base.to_string(),
        ];
        out.dedup();
        out
    }
}

/// What to do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer authoritatively.
    Answer(Answer),
    /// Not ours: relay the query to the upstream resolvers.
    Forward,
    /// The query is unusable (no question): answer `FORMERR`.
    FormErr,
}

/// An authoritative answer for an `A`/`AAAA` question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The name the records belong to when it differs from the queried name (answered with a
    /// CNAME from the queried name to this one).
    pub cname: Option<String>,
    /// Addresses of the queried family; empty means an empty `NOERROR`.
    pub ips: Vec<IpAddr>,
}

/// A name found in the mesh: its canonical spelling and all its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub canonical: String,
    pub ips: Vec<IpAddr>,
}

/// `name` lowercased without its trailing dot (DNS names compare case-insensitively).
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Decides what to do with a parsed query message.
pub fn decide(view: &MeshView<'_>, search: &SearchContext, msg: &Message) -> Decision {
    if msg.metadata.message_type != MessageType::Query || msg.metadata.op_code != OpCode::Query {
        return Decision::Forward;
    }
    let query = match msg.queries.as_slice() {
        [] => return Decision::FormErr,
        [q] => q,
        _ => return Decision::Forward,
    };
    let qtype = query.query_type();
    if query.query_class() != DNSClass::IN || !matches!(qtype, RecordType::A | RecordType::AAAA) {
        return Decision::Forward;
    }
    let name = normalize(&query.name().to_ascii());
    match lookup(view, search, &name) {
        Some(found) => {
            let ips = found
                .ips
                .into_iter()
                .filter(|ip| ip.is_ipv4() == (qtype == RecordType::A))
                .collect();
            let cname = (found.canonical != name).then_some(found.canonical);
            Decision::Answer(Answer { cname, ips })
        }
        None => Decision::Forward,
    }
}

/// The first candidate of `name` (lowercase, no trailing dot) that exists in the mesh and has
/// at least one address.
pub fn lookup(view: &MeshView<'_>, search: &SearchContext, name: &str) -> Option<Found> {
    search
        .candidates(name)
        .into_iter()
        .find_map(|c| lookup_one(view, search, &c))
}

fn lookup_one(view: &MeshView<'_>, search: &SearchContext, name: &str) -> Option<Found> {
    let ns = &search.client_namespace;
    let found = match KubeName::parse(name, &search.cluster_domain) {
        Some(k8s) => kube_lookup(view, ns, name, k8s),
        None => {
            let exact = view
                .service_by_hostname(name, ns)
                .map(|s| (name.to_string(), service_ips(view, &s)));
            // Wildcards are for external hosts: names under the cluster domain skip the
            // (label-count many) extra scans.
            let in_cluster = name.ends_with(&format!(".{}", search.cluster_domain));
            if exact.is_some() || in_cluster {
                exact
            } else {
                wildcard_lookup(view, ns, name)
            }
        }
    };
    let (canonical, ips) = found?;
    (!ips.is_empty()).then_some(Found { canonical, ips })
}

/// `<service>.<namespace>.svc.<domain>` or `<pod>.<service>.<namespace>.svc.<domain>`.
#[derive(Debug, Clone, Copy)]
struct KubeName<'a> {
    pod: Option<&'a str>,
    namespace: &'a str,
    /// `<service>.<namespace>.svc.<domain>`
    service_host: &'a str,
}

impl<'a> KubeName<'a> {
    fn parse(name: &'a str, domain: &str) -> Option<Self> {
        let rel = name.strip_suffix(domain)?.strip_suffix(".svc.")?;
        let labels: Vec<&str> = rel.split('.').collect();
        let (pod, service, namespace) = match labels.as_slice() {
            [svc, ns] => (None, *svc, *ns),
            [pod, svc, ns] => (Some(*pod), *svc, *ns),
            _ => return None,
        };
        if pod.is_some_and(str::is_empty) || service.is_empty() || namespace.is_empty() {
            return None;
        }
        let service_host = match pod {
            Some(p) => &name[p.len() + 1..],
            None => name,
        };
        Some(KubeName {
            pod,
            namespace,
            service_host,
        })
    }
}

fn kube_lookup(
    view: &MeshView<'_>,
    client_ns: &str,
    name: &str,
    k: KubeName<'_>,
) -> Option<(String, Vec<IpAddr>)> {
    let svc = view
        .service(k.namespace, k.service_host)
        .filter(|s| s.visible_to(client_ns))?;
    match k.pod {
        None => Some((name.to_string(), service_ips(view, &svc))),
        Some(pod) if svc.vips.is_empty() => {
            let ips = view
                .endpoint_workloads(&svc.key())
                .into_iter()
                .filter(|(w, _)| w.is_healthy() && w.name.eq_ignore_ascii_case(pod))
                .flat_map(|(w, _)| w.addresses.clone())
                .collect();
            Some((name.to_string(), dedup(ips)))
        }
        Some(_) => None,
    }
}

/// Wildcard ServiceEntry hosts: `*.b.c`, then `*.c`, for `a.b.c`. The answer's owner stays the
/// queried name (a wildcard has no single canonical name).
fn wildcard_lookup(
    view: &MeshView<'_>,
    client_ns: &str,
    name: &str,
) -> Option<(String, Vec<IpAddr>)> {
    let mut rest = name;
    while let Some((_, parent)) = rest.split_once('.') {
        if parent.is_empty() {
            break;
        }
        if let Some(s) = view.service_by_hostname(&format!("*.{parent}"), client_ns) {
            return Some((name.to_string(), service_ips(view, &s)));
        }
        rest = parent;
    }
    None
}

/// A service's VIPs, or for a headless service the addresses of its healthy endpoints.
fn service_ips(view: &MeshView<'_>, svc: &Service) -> Vec<IpAddr> {
    if !svc.vips.is_empty() {
        return dedup(svc.vips.iter().map(|v| v.address).collect());
    }
    let ips = view
        .endpoint_workloads(&svc.key())
        .into_iter()
        .filter(|(w, _)| w.is_healthy())
        .flat_map(|(w, _)| w.addresses.clone())
        .collect();
    dedup(ips)
}

fn dedup(ips: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::with_capacity(ips.len());
    for ip in ips {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;

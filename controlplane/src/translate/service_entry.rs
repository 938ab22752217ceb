//! ServiceEntry → `istio.workload.Service` (one per host) and `istio.workload.Workload` (one per
//! endpoint), as istiod's ambient index builds them.
//!
//! | ServiceEntry | Workload API |
//! |---|---|
//! | each of `hosts` | a Service: `name`/`namespace` of the entry, `hostname` = the host |
//! | `addresses` (IPs or CIDRs) | `addresses` (CIDRs with their prefix length) |
//! | no `addresses` at all, resolution ≠ `NONE`, host not a wildcard | one VIP allocated from `240.240.0.0/16` (istiod's auto-allocation range), stable per entry and host |
//! | `ports[]` | `ports`: `service_port` = `number`, `target_port` = `targetPort` (else `number`), `app_protocol` from `protocol` |
//! | `resolution: NONE` | `load_balancing.mode: PASSTHROUGH` (the client's own destination is dialled) |
//! | `subjectAltNames` | `subject_alt_names` |
//! | `endpoints[]` | Workloads, uid `<cluster>/networking.istio.io/ServiceEntry/<ns>/<name>/<address>`: an IP `address` ⇒ `addresses`; a name (resolution `DNS`/`DNS_ROUND_ROBIN`) ⇒ `hostname`, resolved by ztunnel when it connects; `ports` by name override the target port; `network`, `locality`, `weight` ⇒ `capacity`, `serviceAccount` (default `default`), `labels` ⇒ canonical names and selector policies |
//! | resolution `DNS` without endpoints | one Workload per host with `hostname` = the host |
//!
//! Endpoints speak plain TCP (`tunnel_protocol: NONE`). A `STATIC` endpoint whose address is not
//! an IP, an address that is neither IP nor CIDR, and `workloadSelector` (selected pods serving
//! the entry, not modelled yet) are reported as diagnostics.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use proto::istio::workload::{
    self as wl, AppProtocol, LoadBalancing, Locality, NetworkAddress, Port, PortList,
    TunnelProtocol, WorkloadStatus, load_balancing,
};

use super::authz::SentPolicy;
use super::peer_auth::PeerAuthIndex;
use super::service::{ip_bytes, ip_families};
use super::workload::{canonical_service, policy_keys, trust_domain};
use super::{Context, Diagnostic, Finding, TranslateError};
use crate::k8s::ObjectKey;
use crate::k8s::networking::{Resolution, ServiceEntry, WorkloadEntrySpec};

/// First and size of istiod's IPv4 auto-allocation range (`240.240.0.0/16`).
const AUTO_BASE: u32 = u32::from_be_bytes([240, 240, 0, 0]);
const AUTO_SIZE: u32 = 1 << 16;

/// `<cluster>/networking.istio.io/ServiceEntry/<ns>/<name>/<address>`.
pub fn endpoint_uid(cluster_id: &str, namespace: &str, name: &str, address: &str) -> String {
    format!("{cluster_id}/networking.istio.io/ServiceEntry/{namespace}/{name}/{address}")
}

/// Everything the entries of the cluster give: their Services and endpoint Workloads.
pub(crate) fn convert_all(
    ctx: &Context<'_>,
    policies: &BTreeMap<ObjectKey, SentPolicy>,
    peer_auths: &PeerAuthIndex<'_>,
    diags: &mut Vec<Diagnostic>,
) -> (Vec<wl::Service>, Vec<wl::Workload>) {
    let entries = &ctx.cluster.service_entries;
    let mut allocator = Allocator::new(entries, &ctx.cluster.services);
    let (mut services, mut workloads) = (Vec::new(), Vec::new());
    for (key, se) in entries {
        let mut report = |e: TranslateError| {
            diags.push(Diagnostic {
                kind: "ServiceEntry",
                object: key.clone(),
                finding: Finding::Partial(e),
            })
        };
        let spec = &se.spec;
        if spec.workload_selector.is_some() {
            report(TranslateError::Unsupported(
                "workloadSelector: the selected pods are not sent as endpoints".into(),
            ));
        }
        let mut vips = Vec::new();
        for a in &spec.addresses {
            match parse_address(a) {
                Some((ip, length)) => vips.push((ip, length)),
                None => report(TranslateError::InvalidAddress(a.clone())),
            }
        }
        for host in &spec.hosts {
            let mut addresses = vips.clone();
            if spec.addresses.is_empty()
                && spec.resolution != Resolution::None
                && !host.starts_with('*')
            {
                addresses.push((allocator.vip(key, host), None));
            }
            services.push(service(se, key, host, &addresses, ctx));
        }

        let mut endpoint = |address: &str, entry: &WorkloadEntrySpec| -> Option<wl::Workload> {
            let (addresses, hostname) = match address.parse::<IpAddr>() {
                Ok(ip) => (vec![ip_bytes(ip)], String::new()),
                Err(_)
                    if matches!(spec.resolution, Resolution::Dns | Resolution::DnsRoundRobin) =>
                {
                    (Vec::new(), address.to_owned())
                }
                Err(_) => {
                    report(TranslateError::InvalidEndpointAddress(address.to_owned()));
                    return None;
                }
            };
            Some(workload(
                se, key, address, entry, addresses, hostname, ctx, policies, peer_auths,
            ))
        };
        if spec.endpoints.is_empty() {
            if spec.resolution == Resolution::Dns || spec.resolution == Resolution::DnsRoundRobin {
                let none = WorkloadEntrySpec::default();
                for host in spec.hosts.iter().filter(|h| !h.starts_with('*')) {
                    workloads.extend(endpoint(host, &none));
                }
            }
        } else if spec.resolution != Resolution::None {
            for e in &spec.endpoints {
                workloads.extend(endpoint(&e.address, e));
            }
        }
    }
    (services, workloads)
}

fn service(
    se: &ServiceEntry,
    key: &ObjectKey,
    host: &str,
    addresses: &[(IpAddr, Option<u32>)],
    ctx: &Context<'_>,
) -> wl::Service {
    let spec = &se.spec;
    let ips: Vec<IpAddr> = addresses.iter().map(|(ip, _)| *ip).collect();
    wl::Service {
        name: key.name.clone(),
        namespace: key.namespace.clone(),
        hostname: host.to_owned(),
        addresses: addresses
            .iter()
            .map(|(ip, length)| NetworkAddress {
                network: ctx.network.clone(),
                address: ip_bytes(*ip),
                length: *length,
            })
            .collect(),
        ports: spec
            .ports
            .iter()
            .map(|p| Port {
                service_port: p.number,
                target_port: p.target_port.unwrap_or(p.number),
                app_protocol: app_protocol(p.protocol.as_deref()) as i32,
            })
            .collect(),
        subject_alt_names: spec.subject_alt_names.clone(),
        load_balancing: (spec.resolution == Resolution::None).then(|| LoadBalancing {
            mode: load_balancing::Mode::Passthrough as i32,
            ..Default::default()
        }),
        ip_families: ip_families(None, &ips) as i32,
        ..Default::default()
    }
}

#[allow(clippy::too_many_arguments, reason = "one endpoint's many sources")]
fn workload(
    se: &ServiceEntry,
    key: &ObjectKey,
    address: &str,
    entry: &WorkloadEntrySpec,
    addresses: Vec<Vec<u8>>,
    hostname: String,
    ctx: &Context<'_>,
    policies: &BTreeMap<ObjectKey, SentPolicy>,
    peer_auths: &PeerAuthIndex<'_>,
) -> wl::Workload {
    let opts = ctx.options;
    let ns = &key.namespace;
    let (canonical_name, canonical_revision) = canonical_service(&entry.labels, &key.name);
    let authorization_policies = policy_keys(ns, &entry.labels, opts, policies, peer_auths);
    let services = se
        .spec
        .hosts
        .iter()
        .map(|host| {
            let ports = se
                .spec
                .ports
                .iter()
                .map(|p| Port {
                    service_port: p.number,
                    target_port: entry
                        .ports
                        .get(&p.name)
                        .copied()
                        .or(p.target_port)
                        .unwrap_or(p.number),
                    app_protocol: AppProtocol::Unknown as i32,
                })
                .collect();
            (format!("{ns}/{host}"), PortList { ports })
        })
        .collect();
    let mut locality = entry.locality.splitn(3, '/');
    let locality = (!entry.locality.is_empty()).then(|| Locality {
        region: locality.next().unwrap_or_default().to_owned(),
        zone: locality.next().unwrap_or_default().to_owned(),
        subzone: locality.next().unwrap_or_default().to_owned(),
    });
    wl::Workload {
        uid: endpoint_uid(&opts.cluster_id, ns, &key.name, address),
        name: key.name.clone(),
        namespace: ns.clone(),
        addresses,
        hostname,
        network: if entry.network.is_empty() {
            ctx.network.clone()
        } else {
            entry.network.clone()
        },
        tunnel_protocol: TunnelProtocol::None as i32,
        trust_domain: trust_domain(opts),
        service_account: if entry.service_account.is_empty() {
            "default".to_owned()
        } else {
            entry.service_account.clone()
        },
        workload_name: key.name.clone(),
        canonical_name,
        canonical_revision,
        services,
        authorization_policies,
        status: WorkloadStatus::Healthy as i32,
        cluster_id: opts.cluster_id.clone(),
        locality,
        capacity: entry.weight,
        ..Default::default()
    }
}

/// `1.2.3.4`, `2001:db8::1` or a CIDR `10.0.0.0/24` (with its prefix length).
fn parse_address(a: &str) -> Option<(IpAddr, Option<u32>)> {
    match a.split_once('/') {
        None => a.parse().ok().map(|ip| (ip, None)),
        Some((ip, len)) => {
            let ip: IpAddr = ip.parse().ok()?;
            let len: u32 = len.parse().ok()?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            (len <= max).then_some((ip, Some(len)))
        }
    }
}

/// `protocol` of a ServiceEntry port, reduced to what the Workload API carries.
fn app_protocol(protocol: Option<&str>) -> AppProtocol {
    match protocol.map(str::to_ascii_uppercase).as_deref() {
        Some("HTTP") => AppProtocol::Http11,
        Some("HTTP2") => AppProtocol::Http2,
        Some("GRPC") => AppProtocol::Grpc,
        _ => AppProtocol::Unknown,
    }
}

/// VIPs for entries without addresses: a hash of namespace, name and host picks the slot in
/// `240.240.0.0/16`, probing past taken ones, so an entry keeps its VIP when others come and go
/// (unless two collide).
struct Allocator {
    taken: BTreeSet<u32>,
}

impl Allocator {
    fn new(
        entries: &BTreeMap<ObjectKey, ServiceEntry>,
        services: &BTreeMap<ObjectKey, k8s_openapi::api::core::v1::Service>,
    ) -> Self {
        let explicit = entries
            .values()
            .flat_map(|se| se.spec.addresses.iter().cloned())
            .chain(services.values().flat_map(|s| {
                s.spec.iter().flat_map(|spec| {
                    spec.cluster_ips
                        .iter()
                        .flatten()
                        .chain(spec.cluster_ip.iter())
                        .cloned()
                })
            }));
        let taken = explicit
            .filter_map(|a| a.parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .collect();
        Allocator { taken }
    }

    fn vip(&mut self, key: &ObjectKey, host: &str) -> IpAddr {
        // FNV-1a: stable across runs and platforms.
        let mut h: u32 = 0x811c_9dc5;
        for b in format!("{}/{}/{host}", key.namespace, key.name).bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        // Slots 1..=65534: not the network or broadcast address of the range.
        let mut slot = h % (AUTO_SIZE - 2) + 1;
        while self.taken.contains(&(AUTO_BASE + slot)) {
            slot = slot % (AUTO_SIZE - 2) + 1;
        }
        self.taken.insert(AUTO_BASE + slot);
        IpAddr::V4(Ipv4Addr::from(AUTO_BASE + slot))
    }
}

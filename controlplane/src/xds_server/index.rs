//! A [`Snapshot`] prepared for serving: every resource packed into an `Any` once, with a
//! stable version, plus the on-demand alias table of the Address type.
//!
//! Versions are the hex of the first 8 bytes of the SHA-256 of the resource's canonical
//! encoding. Protobuf map fields (`Workload.services`) encode in hash-map order, so the
//! canonical form encodes those entries sorted; an unchanged resource therefore keeps its
//! version across re-translations and is not pushed again.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use prost::Message as _;
use prost_types::Any;
use proto::istio::workload::{Address, address};

use crate::Snapshot;

/// One resource ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub version: String,
    pub any: Any,
}

/// All resources of one type.
#[derive(Debug, Default)]
pub struct TypeIndex {
    resources: BTreeMap<String, Entry>,
    /// On-demand keys (`<network>/<ip>`) to resource names.
    aliases: HashMap<String, String>,
}

impl TypeIndex {
    /// The resource named `name`.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.resources.get(name)
    }

    /// The resource name a subscription key stands for: the name itself, or an alias.
    pub fn resolve<'a>(&'a self, key: &'a str) -> Option<&'a str> {
        if self.resources.contains_key(key) {
            Some(key)
        } else {
            self.aliases.get(key).map(String::as_str)
        }
    }

    /// Every resource, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.resources.iter()
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }
}

/// A snapshot ready to serve.
#[derive(Debug, Default)]
pub struct Indexed {
    pub addresses: TypeIndex,
    pub authorizations: TypeIndex,
}

impl Indexed {
    /// Packs and versions every resource of `snapshot`.
    pub fn build(snapshot: &Snapshot) -> Self {
        let mut addresses = TypeIndex::default();
        for (name, address) in &snapshot.addresses {
            addresses.resources.insert(
                name.clone(),
                Entry {
                    version: version_of(&canonical_address(address)),
                    any: proto::pack_any(proto::ADDRESS_TYPE_URL, address),
                },
            );
        }
        // Services first so that a VIP never resolves to a workload sharing the IP.
        let mut aliases = Vec::new();
        for (name, address) in &snapshot.addresses {
            if let Some(address::Type::Service(svc)) = &address.r#type {
                for a in &svc.addresses {
                    if let Some(ip) = ip_from_bytes(&a.address) {
                        let full = if ip.is_ipv4() { 32 } else { 128 };
                        let key = match a.length {
                            Some(len) if len < full => format!("{}/{ip}/{len}", a.network),
                            _ => format!("{}/{ip}", a.network),
                        };
                        aliases.push((key, name));
                    }
                }
            }
        }
        for (name, address) in &snapshot.addresses {
            if let Some(address::Type::Workload(w)) = &address.r#type {
                for bytes in &w.addresses {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        aliases.push((format!("{}/{ip}", w.network), name));
                    }
                }
            }
        }
        for (key, name) in aliases {
            if key != *name {
                addresses.aliases.entry(key).or_insert_with(|| name.clone());
            }
        }

        let mut authorizations = TypeIndex::default();
        for (name, policy) in &snapshot.authorizations {
            authorizations.resources.insert(
                name.clone(),
                Entry {
                    version: version_of(&policy.encode_to_vec()),
                    any: proto::pack_any(proto::AUTHORIZATION_TYPE_URL, policy),
                },
            );
        }
        Indexed {
            addresses,
            authorizations,
        }
    }

    /// The index of a served type URL.
    pub fn get(&self, type_url: &str) -> Option<&TypeIndex> {
        match type_url {
            proto::ADDRESS_TYPE_URL => Some(&self.addresses),
            proto::AUTHORIZATION_TYPE_URL => Some(&self.authorizations),
            _ => None,
        }
    }
}

/// The type URLs served, in push order (istiod: Address before Authorization).
pub const SERVED_TYPES: [&str; 2] = [proto::ADDRESS_TYPE_URL, proto::AUTHORIZATION_TYPE_URL];

/// Encoding with map entries in sorted order.
fn canonical_address(address: &Address) -> Vec<u8> {
    match &address.r#type {
        Some(address::Type::Workload(w)) if !w.services.is_empty() => {
            let mut stripped = w.clone();
            let services = std::mem::take(&mut stripped.services);
            let mut out = Address {
                r#type: Some(address::Type::Workload(stripped)),
            }
            .encode_to_vec();
            let mut entries: Vec<_> = services.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, ports) in entries {
                out.extend_from_slice(key.as_bytes());
                out.push(0);
                out.extend_from_slice(&ports.encode_length_delimited_to_vec());
            }
            out
        }
        _ => address.encode_to_vec(),
    }
}

/// Hex of the first 8 bytes of SHA-256.
pub fn version_of(bytes: &[u8]) -> String {
    crate::tokens::short_hash(bytes)
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// Builds each snapshot's index once, however many streams ask for it.
#[derive(Debug, Default)]
pub struct IndexCache {
    last: Mutex<Option<(Arc<Snapshot>, Arc<Indexed>)>>,
}

impl IndexCache {
    /// The index of `snapshot` (pointer identity decides whether the cached one fits).
    pub fn get(&self, snapshot: &Arc<Snapshot>) -> Arc<Indexed> {
        let mut last = self.last.lock();
        if let Some((s, idx)) = &*last
            && Arc::ptr_eq(s, snapshot)
        {
            return idx.clone();
        }
        let idx = Arc::new(Indexed::build(snapshot));
        *last = Some((snapshot.clone(), idx.clone()));
        idx
    }
}

#[cfg(test)]
mod tests {
    use proto::istio::workload::{NetworkAddress, PortList, Service, Workload};

    use super::*;

    fn workload(uid: &str, ip: [u8; 4], services: &[&str]) -> Address {
        Address {
            r#type: Some(address::Type::Workload(Workload {
                uid: uid.into(),
                addresses: vec![ip.to_vec()],
                services: services
                    .iter()
                    .map(|s| (s.to_string(), PortList::default()))
                    .collect(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn versions_are_stable_and_aliases_resolve() {
        let mut snap = Snapshot::default();
        let services: Vec<String> = (0..20).map(|i| format!("ns/svc{i}")).collect();
        let refs: Vec<&str> = services.iter().map(String::as_str).collect();
        snap.addresses
            .insert("w1".into(), workload("w1", [10, 0, 0, 5], &refs));
        snap.addresses.insert(
            "default/httpbin.default.svc.cluster.local".into(),
            Address {
                r#type: Some(address::Type::Service(Service {
                    addresses: vec![NetworkAddress {
                        network: String::new(),
                        address: vec![10, 96, 0, 10],
                        length: None,
                    }],
                    ..Default::default()
                })),
            },
        );
        let a = Indexed::build(&snap);
        // A fresh HashMap has another iteration order; the version must not care.
        let mut again = snap.clone();
        again
            .addresses
            .insert("w1".into(), workload("w1", [10, 0, 0, 5], &refs));
        let b = Indexed::build(&again);
        assert_eq!(
            a.addresses.get("w1").unwrap().version,
            b.addresses.get("w1").unwrap().version
        );
        assert_eq!(a.addresses.get("w1").unwrap().version.len(), 16);
        assert_eq!(a.addresses.resolve("/10.0.0.5"), Some("w1"));
        assert_eq!(a.addresses.resolve("w1"), Some("w1"));
        assert_eq!(
            a.addresses.resolve("/10.96.0.10"),
            Some("default/httpbin.default.svc.cluster.local")
        );
        assert_eq!(a.addresses.resolve("/10.9.9.9"), None);
        assert_eq!(a.addresses.resolve("net1/10.0.0.5"), None);
    }
}

//! The mesh store: workloads, services and policies, with the indexes lookups need.
//!
//! # Concurrency: single writer, many readers
//!
//! [`MeshState`] wraps plain maps in one `parking_lot::RwLock`. The xDS handler (or the static
//! config loader) is the only writer: it calls [`MeshState::upsert_address`],
//! [`MeshState::remove_address`], [`MeshState::upsert_policy`] and [`MeshState::remove_policy`],
//! each of which takes the write lock for one resource and updates every index before releasing
//! it, so readers never see a half-updated view. Readers take [`MeshState::read`], which returns a
//! [`MeshView`] (a read guard) with all lookups; lookups return `Arc`s so a reader can drop the
//! guard right away and keep what it found. The guard is `!Send`, which stops it from being held
//! across an `.await`; never call [`MeshState::read`] again while holding a view (parking_lot
//! read locks are not re-entrant when a writer is waiting).
//!
//! Why a lock rather than an `ArcSwap` of immutable indexes: xDS updates arrive one resource at a
//! time and can be frequent; rebuilding (or cloning) the indexes on every update would cost
//! O(mesh size) per resource, while a write lock held for a few map operations costs little.
//!
//! # Change notification
//!
//! Every successful write bumps a [`Generation`] published on a `tokio::sync::watch` channel
//! ([`MeshState::subscribe`]): the proxy waits on it for a workload to appear, and re-evaluates
//! live inbound connections when `policies` changes (late policy rejection).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};
use proto::istio::security::Authorization;
use proto::istio::workload::{Address, address};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::model::{
    ConversionError, NetworkAddress, NetworkMode, Policy, PolicyScope, PortMap, Service, Workload,
};

#[cfg(test)]
mod tests;

/// Counters bumped on every change, per kind. Compare two values to learn what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Generation {
    /// Workload and service changes.
    pub addresses: u64,
    /// Authorization policy changes.
    pub policies: u64,
}

/// One endpoint of a service: a workload and its port map for that service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub workload_uid: String,
    /// Service port → target port for this workload (`0` or absent = use the service's).
    pub port: PortMap,
}

/// What an Address resource name currently refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AddressKey {
    Workload(String),
    Service(String),
}

#[derive(Debug, Default)]
struct Index {
    workloads: HashMap<String, Arc<Workload>>,
    /// (network, ip) → uids holding it, oldest first; the last one wins lookups.
    workload_by_ip: HashMap<NetworkAddress, Vec<String>>,
    services: HashMap<String, Arc<Service>>,
    /// (network, vip) → service keys in insertion order ("first" in tie-breaks).
    services_by_vip: HashMap<NetworkAddress, Vec<String>>,
    /// Keys of services that have CIDR VIPs (scanned for CIDR lookups).
    services_with_cidr: BTreeSet<String>,
    /// Service key → workload uid → port map. Derived from workloads; may name unknown services.
    endpoints: HashMap<String, BTreeMap<String, PortMap>>,
    /// (namespace, pod name) → uids: the ZDS pod → WDS workload match, per connection.
    workloads_by_pod: HashMap<(String, String), BTreeSet<String>>,
    /// Hostname → keys of the services with it (in every namespace).
    services_by_hostname: HashMap<String, BTreeSet<String>>,
    policies: HashMap<String, Arc<Policy>>,
    namespace_policies: HashMap<String, BTreeSet<String>>,
    global_policies: BTreeSet<String>,
    /// xDS resource name → what it created (names normally equal keys).
    address_names: HashMap<String, AddressKey>,
    policy_names: HashMap<String, String>,
}

/// Options for lookups.
#[derive(Debug, Clone, Default)]
pub struct StateOptions {
    /// `PREFERED_SERVICE_NAMESPACE`: preferred after the client's own namespace when several
    /// services share a VIP or hostname.
    pub preferred_service_namespace: Option<String>,
}

/// The proxy's view of the mesh. Share it as `Arc<MeshState>`.
#[derive(Debug)]
pub struct MeshState {
    index: RwLock<Index>,
    options: StateOptions,
    changes: watch::Sender<Generation>,
}

impl Default for MeshState {
    fn default() -> Self {
        MeshState::new(StateOptions::default())
    }
}

impl MeshState {
    pub fn new(options: StateOptions) -> Self {
        MeshState {
            index: RwLock::new(Index::default()),
            options,
            changes: watch::Sender::new(Generation::default()),
        }
    }

    /// A consistent read-only view. Drop it before awaiting or writing.
    pub fn read(&self) -> MeshView<'_> {
        MeshView {
            index: self.index.read(),
            options: &self.options,
        }
    }

    /// Change notifications: the current [`Generation`], updated after every write.
    pub fn subscribe(&self) -> watch::Receiver<Generation> {
        self.changes.subscribe()
    }

    pub fn generation(&self) -> Generation {
        *self.changes.borrow()
    }

    /// Inserts or replaces the workload or service carried by an `istio.workload.Address`
    /// resource named `name` (a workload uid or `<namespace>/<hostname>`). On error nothing
    /// changes. Replacing cleanly updates every index (old IPs, VIPs and endpoints go away).
    pub fn upsert_address(&self, name: &str, address: Address) -> Result<(), ConversionError> {
        match address.r#type {
            Some(address::Type::Workload(w)) => {
                let w = Workload::try_from(w)?;
                self.insert_workload(name, w);
            }
            Some(address::Type::Service(s)) => {
                let s = Service::try_from(s)?;
                self.insert_service(name, s);
            }
            None => return Err(ConversionError::EmptyAddress),
        }
        Ok(())
    }

    /// Inserts or replaces an already converted workload under its uid.
    pub fn insert_workload(&self, name: &str, workload: Workload) {
        let uid = workload.uid.clone();
        if name != uid {
            warn!(
                name,
                uid, "workload resource name differs from its uid; indexing by uid"
            );
        }
        {
            let mut idx = self.index.write();
            let key = AddressKey::Workload(uid.clone());
            idx.forget_name(name, &key);
            idx.remove_workload(&uid);
            idx.add_workload(workload);
            idx.address_names.insert(name.to_string(), key);
        }
        self.bump(true);
    }

    /// Inserts or replaces an already converted service under `<namespace>/<hostname>`.
    pub fn insert_service(&self, name: &str, service: Service) {
        let key = service.key();
        if name != key {
            warn!(
                name,
                key, "service resource name differs from <namespace>/<hostname>"
            );
        }
        {
            let mut idx = self.index.write();
            let key = AddressKey::Service(key);
            idx.forget_name(name, &key);
            idx.replace_service(service);
            idx.address_names.insert(name.to_string(), key);
        }
        self.bump(true);
    }

    /// Removes the workload or service named `name` (resource name, uid or service key).
    /// Returns whether anything was removed.
    pub fn remove_address(&self, name: &str) -> bool {
        let removed = {
            let mut idx = self.index.write();
            let key = idx.address_names.remove(name);
            match key {
                Some(AddressKey::Workload(uid)) => idx.remove_workload(&uid),
                Some(AddressKey::Service(key)) => idx.remove_service(&key),
                None => idx.remove_workload(name) || idx.remove_service(name),
            }
        };
        if removed {
            self.bump(true);
        } else {
            debug!(name, "remove of unknown address ignored");
        }
        removed
    }

    /// Inserts or replaces an authorization policy (`name` = `<namespace>/<name>`).
    pub fn upsert_policy(&self, name: &str, policy: Authorization) -> Result<(), ConversionError> {
        let policy = Policy::try_from(policy)?;
        self.insert_policy(name, policy);
        Ok(())
    }

    /// Inserts or replaces an already converted policy under its key.
    pub fn insert_policy(&self, name: &str, policy: Policy) {
        let key = policy.key();
        if name != key {
            warn!(
                name,
                key, "policy resource name differs from <namespace>/<name>"
            );
        }
        {
            let mut idx = self.index.write();
            if let Some(old) = idx.policy_names.remove(name) {
                idx.remove_policy(&old);
            }
            idx.remove_policy(&key);
            idx.add_policy(policy);
            idx.policy_names.insert(name.to_string(), key);
        }
        self.bump(false);
    }

    /// Removes a policy by resource name or key. Returns whether anything was removed.
    pub fn remove_policy(&self, name: &str) -> bool {
        let removed = {
            let mut idx = self.index.write();
            let key = idx
                .policy_names
                .remove(name)
                .unwrap_or_else(|| name.to_string());
            idx.remove_policy(&key)
        };
        if removed {
            self.bump(false);
        }
        removed
    }

    /// `/config_dump` content: `{"workloads": [...], "services": [...], "policies": [...]}`,
    /// each sorted by key; services carry their derived `endpoints`.
    pub fn config_dump(&self) -> serde_json::Value {
        self.read().config_dump()
    }

    fn bump(&self, addresses: bool) {
        self.changes.send_modify(|g| {
            if addresses {
                g.addresses += 1;
            } else {
                g.policies += 1;
            }
        });
    }
}

impl Index {
    /// A resource name that switches kind (or key) drops what it created before.
    fn forget_name(&mut self, name: &str, new: &AddressKey) {
        match self.address_names.remove(name).filter(|old| old != new) {
            Some(AddressKey::Workload(uid)) => {
                self.remove_workload(&uid);
            }
            Some(AddressKey::Service(key)) => {
                self.remove_service(&key);
            }
            None => {}
        }
    }

    fn add_workload(&mut self, w: Workload) {
        if w.network_mode != NetworkMode::HostNetwork {
            for ip in &w.addresses {
                self.workload_by_ip
                    .entry(NetworkAddress::new(&w.network, *ip))
                    .or_default()
                    .push(w.uid.clone());
            }
        }
        for (svc, ports) in &w.services {
            self.endpoints
                .entry(svc.clone())
                .or_default()
                .insert(w.uid.clone(), ports.clone());
        }
        self.workloads_by_pod
            .entry((w.namespace.clone(), w.name.clone()))
            .or_default()
            .insert(w.uid.clone());
        self.workloads.insert(w.uid.clone(), Arc::new(w));
    }

    fn remove_workload(&mut self, uid: &str) -> bool {
        let Some(w) = self.workloads.remove(uid) else {
            return false;
        };
        for ip in &w.addresses {
            let key = NetworkAddress::new(&w.network, *ip);
            if let Some(uids) = self.workload_by_ip.get_mut(&key) {
                uids.retain(|u| u != uid);
                if uids.is_empty() {
                    self.workload_by_ip.remove(&key);
                }
            }
        }
        for svc in w.services.keys() {
            if let Some(eps) = self.endpoints.get_mut(svc) {
                eps.remove(uid);
                if eps.is_empty() {
                    self.endpoints.remove(svc);
                }
            }
        }
        let pod = (w.namespace.clone(), w.name.clone());
        if let Some(uids) = self.workloads_by_pod.get_mut(&pod) {
            uids.remove(uid);
            if uids.is_empty() {
                self.workloads_by_pod.remove(&pod);
            }
        }
        true
    }

    /// Replaces a service keeping its position among services sharing an unchanged VIP.
    fn replace_service(&mut self, s: Service) {
        let key = s.key();
        if let Some(old) = self.services.get(&key).cloned() {
            for vip in old.vips.iter().filter(|v| !s.vips.contains(v)) {
                self.unindex_vip(vip, &key);
            }
            for vip in s.vips.iter().filter(|v| !old.vips.contains(v)) {
                self.index_vip(vip, &key);
            }
        } else {
            for vip in &s.vips {
                self.index_vip(vip, &key);
            }
        }
        if s.cidr_vips.is_empty() {
            self.services_with_cidr.remove(&key);
        } else {
            self.services_with_cidr.insert(key.clone());
        }
        self.services_by_hostname
            .entry(s.hostname.clone())
            .or_default()
            .insert(key.clone());
        self.services.insert(key, Arc::new(s));
    }

    fn index_vip(&mut self, vip: &NetworkAddress, key: &str) {
        let keys = self.services_by_vip.entry(vip.clone()).or_default();
        if !keys.iter().any(|k| k == key) {
            keys.push(key.to_string());
        }
    }

    fn unindex_vip(&mut self, vip: &NetworkAddress, key: &str) {
        if let Some(keys) = self.services_by_vip.get_mut(vip) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.services_by_vip.remove(vip);
            }
        }
    }

    fn remove_service(&mut self, key: &str) -> bool {
        let Some(s) = self.services.remove(key) else {
            return false;
        };
        for vip in &s.vips {
            self.unindex_vip(vip, key);
        }
        self.services_with_cidr.remove(key);
        if let Some(keys) = self.services_by_hostname.get_mut(&s.hostname) {
            keys.remove(key);
            if keys.is_empty() {
                self.services_by_hostname.remove(&s.hostname);
            }
        }
        true
    }

    fn add_policy(&mut self, p: Policy) {
        let key = p.key();
        match p.scope {
            PolicyScope::Global => {
                self.global_policies.insert(key.clone());
            }
            PolicyScope::Namespace => {
                self.namespace_policies
                    .entry(p.namespace.clone())
                    .or_default()
                    .insert(key.clone());
            }
            PolicyScope::WorkloadSelector => {}
        }
        self.policies.insert(key, Arc::new(p));
    }

    fn remove_policy(&mut self, key: &str) -> bool {
        let Some(p) = self.policies.remove(key) else {
            return false;
        };
        self.global_policies.remove(key);
        if let Some(keys) = self.namespace_policies.get_mut(&p.namespace) {
            keys.remove(key);
            if keys.is_empty() {
                self.namespace_policies.remove(&p.namespace);
            }
        }
        true
    }
}

/// A consistent read-only view of the mesh (holds the read lock).
pub struct MeshView<'a> {
    index: RwLockReadGuard<'a, Index>,
    options: &'a StateOptions,
}

impl std::fmt::Debug for MeshView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshView")
            .field("workloads", &self.index.workloads.len())
            .field("services", &self.index.services.len())
            .field("policies", &self.index.policies.len())
            .finish()
    }
}

impl MeshView<'_> {
    pub fn workload_by_uid(&self, uid: &str) -> Option<Arc<Workload>> {
        self.index.workloads.get(uid).cloned()
    }

    /// The workload owning `ip` on `network`. `HOST_NETWORK` workloads are never returned (their
    /// IP is the node's). With several owners, the most recently added wins.
    pub fn workload_by_ip(&self, network: &str, ip: IpAddr) -> Option<Arc<Workload>> {
        let uids = self
            .index
            .workload_by_ip
            .get(&NetworkAddress::new(network, ip))?;
        uids.last()
            .and_then(|uid| self.index.workloads.get(uid))
            .cloned()
    }

    /// Workloads with this pod name, namespace and service account (empty = `default`), for
    /// matching a pod announced over ZDS to its WDS entry.
    pub fn workloads_by_pod(
        &self,
        name: &str,
        namespace: &str,
        service_account: &str,
    ) -> Vec<Arc<Workload>> {
        let sa = if service_account.is_empty() {
            hbone::identity::DEFAULT_SERVICE_ACCOUNT
        } else {
            service_account
        };
        let Some(uids) = self
            .index
            .workloads_by_pod
            .get(&(namespace.to_string(), name.to_string()))
        else {
            return Vec::new();
        };
        // Uid order (the set's).
        uids.iter()
            .filter_map(|uid| self.index.workloads.get(uid))
            .filter(|w| w.service_account() == sa)
            .cloned()
            .collect()
    }

    /// Workloads in `namespace` whose `hostname` is `hostname` (a waypoint named by hostname
    /// that is a workload rather than a service).
    pub fn workloads_by_hostname(&self, namespace: &str, hostname: &str) -> Vec<Arc<Workload>> {
        let mut out: Vec<_> = self
            .index
            .workloads
            .values()
            .filter(|w| w.namespace == namespace && w.hostname == hostname)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.uid.cmp(&b.uid));
        out
    }

    /// Workloads scheduled on `node` (certificate prefetch).
    pub fn workloads_on_node(&self, node: &str) -> Vec<Arc<Workload>> {
        let mut out: Vec<_> = self
            .index
            .workloads
            .values()
            .filter(|w| w.node == node)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.uid.cmp(&b.uid));
        out
    }

    /// Service by `<namespace>/<hostname>`.
    pub fn service(&self, namespace: &str, hostname: &str) -> Option<Arc<Service>> {
        self.index
            .services
            .get(&format!("{namespace}/{hostname}"))
            .cloned()
    }

    pub fn service_by_key(&self, key: &str) -> Option<Arc<Service>> {
        self.index.services.get(key).cloned()
    }

    /// The service a client in `client_namespace` reaches at `network/ip` (exact VIP first, then
    /// CIDR VIPs). Services not visible to the client are skipped; among the rest the client's
    /// namespace wins, then the preferred namespace, then a `canonical` service, then the first
    /// one added.
    pub fn service_by_vip(
        &self,
        network: &str,
        ip: IpAddr,
        client_namespace: &str,
    ) -> Option<Arc<Service>> {
        let exact: Vec<Arc<Service>> = self
            .index
            .services_by_vip
            .get(&NetworkAddress::new(network, ip))
            .into_iter()
            .flatten()
            .filter_map(|k| self.index.services.get(k).cloned())
            .collect();
        self.prefer(exact, client_namespace)
            .or_else(|| self.service_by_cidr_vip(network, ip, client_namespace))
    }

    /// Like [`MeshView::service_by_vip`] but only CIDR VIPs; the longest prefix wins first.
    pub fn service_by_cidr_vip(
        &self,
        network: &str,
        ip: IpAddr,
        client_namespace: &str,
    ) -> Option<Arc<Service>> {
        let mut best: Vec<(u8, Arc<Service>)> = Vec::new();
        for key in &self.index.services_with_cidr {
            let Some(svc) = self.index.services.get(key) else {
                continue;
            };
            let prefix = svc
                .cidr_vips
                .iter()
                .filter(|c| c.network == network && c.cidr.contains(ip))
                .map(|c| c.cidr.prefix())
                .max();
            if let Some(p) = prefix {
                best.push((p, svc.clone()));
            }
        }
        let longest = best.iter().map(|(p, _)| *p).max()?;
        let candidates = best
            .into_iter()
            .filter(|(p, _)| *p == longest)
            .map(|(_, s)| s)
            .collect();
        self.prefer(candidates, client_namespace)
    }

    /// The service a client in `client_namespace` means by `hostname` (DNS), same preference
    /// order as VIPs.
    pub fn service_by_hostname(
        &self,
        hostname: &str,
        client_namespace: &str,
    ) -> Option<Arc<Service>> {
        // Keys are `<namespace>/<hostname>`: set order is namespace order.
        let candidates: Vec<Arc<Service>> = self
            .index
            .services_by_hostname
            .get(hostname)
            .into_iter()
            .flatten()
            .filter_map(|key| self.index.services.get(key))
            .cloned()
            .collect();
        self.prefer(candidates, client_namespace)
    }

    fn prefer(&self, candidates: Vec<Arc<Service>>, client_ns: &str) -> Option<Arc<Service>> {
        let visible: Vec<_> = candidates
            .into_iter()
            .filter(|s| s.visible_to(client_ns))
            .collect();
        let preferred = self.options.preferred_service_namespace.as_deref();
        visible
            .iter()
            .find(|s| s.namespace == client_ns)
            .or_else(|| preferred.and_then(|ns| visible.iter().find(|s| s.namespace == ns)))
            .or_else(|| visible.iter().find(|s| s.canonical))
            .or_else(|| visible.first())
            .cloned()
    }

    /// Endpoints of a service key (`<namespace>/<hostname>`), ordered by workload uid.
    pub fn endpoints(&self, service_key: &str) -> Vec<Endpoint> {
        self.index
            .endpoints
            .get(service_key)
            .into_iter()
            .flatten()
            .map(|(uid, ports)| Endpoint {
                workload_uid: uid.clone(),
                port: ports.clone(),
            })
            .collect()
    }

    /// Endpoints with their workloads (endpoints whose workload vanished are skipped).
    pub fn endpoint_workloads(&self, service_key: &str) -> Vec<(Arc<Workload>, PortMap)> {
        self.index
            .endpoints
            .get(service_key)
            .into_iter()
            .flatten()
            .filter_map(|(uid, ports)| {
                self.index
                    .workloads
                    .get(uid)
                    .map(|w| (w.clone(), ports.clone()))
            })
            .collect()
    }

    /// Known services a workload is an endpoint of (inbound metrics labels).
    pub fn services_of(&self, workload: &Workload) -> Vec<Arc<Service>> {
        workload
            .services
            .keys()
            .filter_map(|k| self.index.services.get(k).cloned())
            .collect()
    }

    pub fn policy(&self, key: &str) -> Option<Arc<Policy>> {
        self.index.policies.get(key).cloned()
    }

    /// Policies that apply to `workload`: NAMESPACE-scoped ones of its namespace, every GLOBAL
    /// one, and the keys it lists (missing keys are skipped with a warning). No duplicates;
    /// ordered by key.
    pub fn policies_for(&self, workload: &Workload) -> Vec<Arc<Policy>> {
        let mut keys: BTreeSet<&str> = BTreeSet::new();
        if let Some(ns) = self.index.namespace_policies.get(&workload.namespace) {
            keys.extend(ns.iter().map(String::as_str));
        }
        keys.extend(self.index.global_policies.iter().map(String::as_str));
        for key in &workload.authorization_policies {
            if self.index.policies.contains_key(key) {
                keys.insert(key);
            } else {
                warn!(
                    policy = %key,
                    workload = %workload.uid,
                    "workload lists an unknown authorization policy; skipping it"
                );
            }
        }
        keys.into_iter()
            .filter_map(|k| self.index.policies.get(k).cloned())
            .collect()
    }

    pub fn workload_count(&self) -> usize {
        self.index.workloads.len()
    }

    pub fn service_count(&self) -> usize {
        self.index.services.len()
    }

    pub fn policy_count(&self) -> usize {
        self.index.policies.len()
    }

    /// See [`MeshState::config_dump`].
    pub fn config_dump(&self) -> serde_json::Value {
        let mut workloads: Vec<&Workload> =
            self.index.workloads.values().map(AsRef::as_ref).collect();
        workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
        let mut services: Vec<_> = self.index.services.iter().collect();
        services.sort_by(|a, b| a.0.cmp(b.0));
        let services: Vec<serde_json::Value> = services
            .into_iter()
            .map(|(key, svc)| {
                let mut v = serde_json::to_value(svc.as_ref()).unwrap_or_default();
                if let Some(obj) = v.as_object_mut() {
                    let eps: BTreeMap<&String, &PortMap> = self
                        .index
                        .endpoints
                        .get(key)
                        .into_iter()
                        .flatten()
                        .collect();
                    obj.insert(
                        "endpoints".into(),
                        serde_json::to_value(eps).unwrap_or_default(),
                    );
                }
                v
            })
            .collect();
        let mut policies: Vec<_> = self.index.policies.iter().collect();
        policies.sort_by(|a, b| a.0.cmp(b.0));
        let policies: Vec<&Policy> = policies.into_iter().map(|(_, p)| p.as_ref()).collect();
        serde_json::json!({
            "workloads": workloads,
            "services": services,
            "policies": policies,
        })
    }
}

//! The delta-xDS state of one stream, without any I/O: requests and snapshot changes go in,
//! responses come out. [`super`] runs it on a task; the unit tests drive it directly.
//!
//! Per type the stream remembers the subscription (wildcard and/or explicit keys, where a key
//! is a resource name or an on-demand alias), what the client holds (`sent`: name → version)
//! and the nonces. The rules, as istiod applies them:
//!
//! * First request of a type: empty `resource_names_subscribe` (or `*`) is a wildcard;
//!   `subscribe=["*"]` with `unsubscribe=["*"]` subscribes to nothing. `initial_resource_versions`
//!   seeds `sent`, so unchanged resources are not resent and vanished ones are listed in
//!   `removed_resources`. The first request is always answered, even with an empty response.
//! * Later requests: a `response_nonce` other than the latest sent is stale and ignored
//!   entirely; `error_detail` is a NACK, recorded and not answered; otherwise the nonce ACKs.
//!   New subscription keys are answered with their resources (aliases in `Resource.aliases`),
//!   unknown keys come back in `removed_resources`.
//! * Snapshot changes: every subscribed type gets only changed/added resources and removals,
//!   Address before Authorization; nothing is sent for a type that did not change.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use super::index::{Indexed, SERVED_TYPES, TypeIndex};
use crate::status::TypeStatus;

/// A nonce unique within the process (and, thanks to a random prefix, across restarts).
pub fn next_nonce() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(rand::random::<u32>);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
    format!("{prefix:08x}-{n}")
}

/// One type's subscription and delivery state.
#[derive(Debug, Default)]
pub struct TypeState {
    wildcard: bool,
    /// Explicitly subscribed keys (resource names or aliases).
    keys: BTreeSet<String>,
    /// What the client holds: resource name → version.
    sent: BTreeMap<String, String>,
    pub status: TypeStatus,
}

impl TypeState {
    /// Resource names the client should hold, each with the alias keys that led to it.
    fn watched<'a>(&'a self, index: &'a TypeIndex) -> BTreeMap<&'a str, BTreeSet<&'a str>> {
        let mut watched: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        if self.wildcard {
            for (name, _) in index.iter() {
                watched.entry(name).or_default();
            }
        }
        for key in &self.keys {
            if let Some(name) = index.resolve(key) {
                let aliases = watched.entry(name).or_default();
                if name != key {
                    aliases.insert(key);
                }
            }
        }
        watched
    }

    /// Builds the response that brings the client up to date with `index`. `requested` keys
    /// are answered even when unchanged (`force`) or, when unknown, in `removed_resources`.
    fn diff(
        &mut self,
        type_url: &str,
        index: &TypeIndex,
        requested: &[String],
        force: bool,
        always: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        let forced: HashSet<&str> = if force {
            requested.iter().filter_map(|k| index.resolve(k)).collect()
        } else {
            HashSet::new()
        };
        let watched = self.watched(index);
        let mut resources = Vec::new();
        for (name, aliases) in &watched {
            let Some(entry) = index.get(name) else {
                continue;
            };
            if self.sent.get(*name) == Some(&entry.version) && !forced.contains(name) {
                continue;
            }
            resources.push(Resource {
                name: name.to_string(),
                version: entry.version.clone(),
                resource: Some(entry.any.clone()),
                aliases: aliases.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            });
        }
        let mut removed: Vec<String> = self
            .sent
            .keys()
            .filter(|name| !watched.contains_key(name.as_str()))
            .cloned()
            .collect();
        for key in requested {
            if index.resolve(key).is_none() && !removed.contains(key) {
                removed.push(key.clone());
            }
        }
        for name in &removed {
            self.sent.remove(name);
        }
        for r in &resources {
            self.sent.insert(r.name.clone(), r.version.clone());
        }
        if resources.is_empty() && removed.is_empty() && !always {
            return None;
        }
        let nonce = next_nonce();
        self.status.nonce_sent = nonce.clone();
        self.status.responses += 1;
        self.status.resources = self.sent.len();
        Some(DeltaDiscoveryResponse {
            type_url: type_url.to_string(),
            nonce,
            resources,
            removed_resources: removed,
            ..Default::default()
        })
    }
}

/// What happened to a request (for logs and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// First request of a type on this stream.
    Initial,
    /// ACK of the latest response, possibly with subscription changes.
    Ack,
    /// Subscription change without a nonce.
    Subscribe,
    /// NACK of the latest response.
    Nack(String),
    /// Refers to an older response: ignored.
    Stale,
    /// A type this server does not serve: ignored.
    UnknownType,
}

/// All types of one stream.
#[derive(Debug, Default)]
pub struct StreamState {
    types: BTreeMap<&'static str, TypeState>,
    unknown_logged: HashSet<String>,
}

impl StreamState {
    /// Handles one request; returns what it was and the response to send, if any.
    pub fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        index: &Indexed,
    ) -> (RequestKind, Option<DeltaDiscoveryResponse>) {
        let Some(type_url) = SERVED_TYPES.iter().copied().find(|t| *t == req.type_url) else {
            if self.unknown_logged.insert(req.type_url.clone()) {
                tracing::info!(type_url = %req.type_url, "ignoring a type this control plane does not serve");
            }
            return (RequestKind::UnknownType, None);
        };
        let Some(tidx) = index.get(type_url) else {
            return (RequestKind::UnknownType, None);
        };
        let subscribe: Vec<String> = req
            .resource_names_subscribe
            .iter()
            .filter(|k| *k != "*")
            .cloned()
            .collect();
        let star_sub = req.resource_names_subscribe.iter().any(|k| k == "*");
        let star_unsub = req.resource_names_unsubscribe.iter().any(|k| k == "*");

        let Some(state) = self.types.get_mut(type_url) else {
            let mut state = TypeState {
                wildcard: (req.resource_names_subscribe.is_empty() || star_sub) && !star_unsub,
                keys: subscribe.iter().cloned().collect(),
                ..Default::default()
            };
            for (key, version) in &req.initial_resource_versions {
                match tidx.resolve(key) {
                    Some(name) if name != key => {
                        state.keys.insert(key.clone());
                    }
                    _ => {
                        state.sent.insert(key.clone(), version.clone());
                        if !state.wildcard {
                            state.keys.insert(key.clone());
                        }
                    }
                }
            }
            let response = state.diff(type_url, tidx, &subscribe, false, true);
            self.types.insert(type_url, state);
            return (RequestKind::Initial, response);
        };

        let nonce = &req.response_nonce;
        if !nonce.is_empty() && *nonce != state.status.nonce_sent {
            return (RequestKind::Stale, None);
        }
        if let Some(error) = &req.error_detail {
            state.status.nacked_nonce = nonce.clone();
            state.status.nack_message = Some(error.message.clone());
            return (RequestKind::Nack(error.message.clone()), None);
        }
        let kind = if nonce.is_empty() {
            RequestKind::Subscribe
        } else {
            state.status.nonce_acked = nonce.clone();
            RequestKind::Ack
        };

        // Unsubscribing: the client forgets those resources itself; stop tracking them.
        let before: BTreeSet<String> = state
            .watched(tidx)
            .into_keys()
            .map(str::to_string)
            .collect();
        if star_unsub && !star_sub {
            state.wildcard = false;
        }
        for key in &req.resource_names_unsubscribe {
            state.keys.remove(key);
        }
        let after: BTreeSet<String> = state
            .watched(tidx)
            .into_keys()
            .map(str::to_string)
            .collect();
        for name in before.difference(&after) {
            state.sent.remove(name);
        }

        let wildcard_added = star_sub && !star_unsub && !state.wildcard;
        if wildcard_added {
            state.wildcard = true;
        }
        state.keys.extend(subscribe.iter().cloned());
        if subscribe.is_empty() && !wildcard_added {
            return (kind, None);
        }
        let response = state.diff(type_url, tidx, &subscribe, true, false);
        (kind, response)
    }

    /// Brings every subscribed type up to date with a new snapshot, in push order.
    pub fn on_snapshot(&mut self, index: &Indexed) -> Vec<DeltaDiscoveryResponse> {
        let mut out = Vec::new();
        for type_url in SERVED_TYPES {
            let (Some(state), Some(tidx)) = (self.types.get_mut(type_url), index.get(type_url))
            else {
                continue;
            };
            if let Some(r) = state.diff(type_url, tidx, &[], false, false) {
                out.push(r);
            }
        }
        out
    }

    /// The status of every subscribed type.
    pub fn statuses(&self) -> impl Iterator<Item = (&'static str, &TypeStatus)> {
        self.types.iter().map(|(t, s)| (*t, &s.status))
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;

//! Per-type subscription state and the requests it implies. Pure: no I/O,
//! no handlers; the client task is the single writer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proto::envoy::config::core::v3::Node;
use proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use proto::google::rpc::Status;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::backoff::TerminationReason;
use crate::handler::{Applied, nack_message};

/// How a type is subscribed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Mode {
    /// Everything of the type (empty subscribe list on the first request).
    Wildcard,
    /// Only names asked for with [`crate::XdsClient::subscribe`].
    OnDemand,
}

/// How a [`crate::XdsClient::demand`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Demanded {
    /// The resource arrived (or was already held) at this version.
    Found {
        /// Its version.
        version: String,
    },
    /// The server says it does not exist (or removed it).
    Removed,
    /// It arrived but was rejected (and NACKed) for this reason.
    Rejected {
        /// The reason from the decoder or handler.
        reason: String,
    },
}

/// The last reply sent for a type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind")]
pub enum Reply {
    /// Everything applied.
    Ack {
        /// The response's nonce.
        nonce: String,
    },
    /// Some resources were rejected.
    Nack {
        /// The response's nonce.
        nonce: String,
        /// `"<name>: <reason>; ..."`.
        message: String,
    },
}

#[derive(Debug)]
pub(crate) struct TypeState {
    pub mode: Mode,
    /// Names held (applied) → version; sent as `initial_resource_versions`.
    pub known: BTreeMap<String, String>,
    /// On-demand names asked for and not answered yet.
    pub pending: BTreeSet<String>,
    /// Callers of `demand` waiting for a name.
    pub waiters: BTreeMap<String, Vec<oneshot::Sender<Demanded>>>,
    pub last_nonce: Option<String>,
    pub last_reply: Option<Reply>,
    /// Responses received over the client's lifetime.
    pub responses: u64,
}

impl TypeState {
    pub(crate) fn new(mode: Mode) -> Self {
        TypeState {
            mode,
            known: BTreeMap::new(),
            pending: BTreeSet::new(),
            waiters: BTreeMap::new(),
            last_nonce: None,
            last_reply: None,
            responses: 0,
        }
    }

    /// The first request for this type on a new stream.
    ///
    /// Wildcard: empty subscribe list, every held name in
    /// `initial_resource_versions`. On-demand: held and pending names are
    /// subscribed explicitly (pending ones with an empty version); with none,
    /// ztunnel's "subscribe to nothing" (`subscribe=["*"]`, `unsubscribe=["*"]`).
    pub(crate) fn initial_request(&self, type_url: &str, node: Node) -> DeltaDiscoveryRequest {
        let mut req = DeltaDiscoveryRequest {
            node: Some(node),
            type_url: type_url.to_string(),
            initial_resource_versions: self
                .known
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..Default::default()
        };
        if self.mode == Mode::OnDemand {
            for name in &self.pending {
                req.initial_resource_versions
                    .entry(name.clone())
                    .or_default();
            }
            let mut names: Vec<String> = req.initial_resource_versions.keys().cloned().collect();
            names.sort();
            if names.is_empty() {
                req.resource_names_subscribe = vec!["*".to_string()];
                req.resource_names_unsubscribe = vec!["*".to_string()];
            } else {
                req.resource_names_subscribe = names;
            }
        }
        req
    }

    /// Records an on-demand subscription; returns whether a request must be
    /// sent (the name is neither held nor already pending).
    pub(crate) fn add_pending(&mut self, name: &str) -> bool {
        if self.known.contains_key(name) || self.pending.contains(name) {
            return false;
        }
        self.pending.insert(name.to_string());
        true
    }

    /// Registers a demand waiter, or answers at once if the name is held.
    pub(crate) fn add_waiter(&mut self, name: &str, tx: oneshot::Sender<Demanded>) {
        if let Some(version) = self.known.get(name) {
            let _ = tx.send(Demanded::Found {
                version: version.clone(),
            });
            return;
        }
        let list = self.waiters.entry(name.to_string()).or_default();
        list.retain(|w| !w.is_closed());
        list.push(tx);
    }

    /// Records the outcome of one response and builds its ACK or NACK.
    pub(crate) fn apply_response(
        &mut self,
        type_url: &str,
        nonce: &str,
        applied: Applied,
    ) -> DeltaDiscoveryRequest {
        self.responses += 1;
        self.last_nonce = Some(nonce.to_string());
        for a in &applied.upserted {
            self.known.insert(a.name.clone(), a.version.clone());
            // istiod answers an on-demand `network/ip` lookup under the
            // resource's own name, listing the key in `aliases`.
            for key in std::iter::once(&a.name).chain(&a.aliases) {
                self.resolve(
                    key,
                    Demanded::Found {
                        version: a.version.clone(),
                    },
                );
            }
        }
        for name in &applied.removed {
            self.known.remove(name);
            self.resolve(name, Demanded::Removed);
        }
        for r in &applied.rejected {
            self.resolve(
                &r.name,
                Demanded::Rejected {
                    reason: r.reason.clone(),
                },
            );
        }
        let mut req = DeltaDiscoveryRequest {
            type_url: type_url.to_string(),
            response_nonce: nonce.to_string(),
            ..Default::default()
        };
        if applied.rejected.is_empty() {
            self.last_reply = Some(Reply::Ack {
                nonce: nonce.to_string(),
            });
        } else {
            let message = nack_message(&applied.rejected);
            self.last_reply = Some(Reply::Nack {
                nonce: nonce.to_string(),
                message: message.clone(),
            });
            req.error_detail = Some(Status {
                code: 0,
                message,
                details: Vec::new(),
            });
        }
        req
    }

    fn resolve(&mut self, name: &str, outcome: Demanded) {
        self.pending.remove(name);
        if let Some(waiters) = self.waiters.remove(name) {
            for w in waiters {
                let _ = w.send(outcome.clone());
            }
        }
    }
}

/// Everything the client knows, behind one lock; written only by the task.
#[derive(Debug)]
pub(crate) struct State {
    /// Type URLs in initial-request order (wildcard types first).
    pub order: Vec<String>,
    pub types: BTreeMap<String, TypeState>,
    pub connected: bool,
    pub backoff: Duration,
    pub streams: u64,
    pub last_termination: Option<(TerminationReason, String)>,
}

impl State {
    pub(crate) fn new(wildcard: &[String], on_demand: &[String]) -> Self {
        let mut types = BTreeMap::new();
        let mut order = Vec::new();
        for (list, mode) in [(wildcard, Mode::Wildcard), (on_demand, Mode::OnDemand)] {
            for t in list {
                order.push(t.clone());
                types.insert(t.clone(), TypeState::new(mode));
            }
        }
        State {
            order,
            types,
            connected: false,
            backoff: Duration::ZERO,
            streams: 0,
            last_termination: None,
        }
    }

    /// Whether every wildcard type has had a response answered.
    pub(crate) fn is_ready(&self) -> bool {
        self.types
            .values()
            .filter(|t| t.mode == Mode::Wildcard)
            .all(|t| t.responses > 0)
    }

    pub(crate) fn dump(&self, address: &str) -> XdsDump {
        XdsDump {
            address: address.to_string(),
            connected: self.connected,
            current_backoff_ms: u64::try_from(self.backoff.as_millis()).unwrap_or(u64::MAX),
            streams_opened: self.streams,
            last_termination: self.last_termination.as_ref().map(|(reason, detail)| {
                TerminationDump {
                    reason: *reason,
                    detail: detail.clone(),
                }
            }),
            ready: self.is_ready(),
            types: self
                .order
                .iter()
                .map(|url| {
                    let t = &self.types[url];
                    TypeDump {
                        type_url: url.clone(),
                        mode: t.mode,
                        resources: t.known.clone(),
                        pending_on_demand: t.pending.iter().cloned().collect(),
                        waiting_demands: t.waiters.keys().cloned().collect(),
                        last_nonce: t.last_nonce.clone(),
                        last_reply: t.last_reply.clone(),
                        responses: t.responses,
                    }
                })
                .collect(),
        }
    }
}

/// The client's state for `/config_dump`-style debug pages.
#[derive(Clone, Debug, Serialize)]
pub struct XdsDump {
    /// The configured server.
    pub address: String,
    /// Whether a stream is up now.
    pub connected: bool,
    /// The delay before the current/next reconnect (0 when connected).
    pub current_backoff_ms: u64,
    /// Streams opened so far.
    pub streams_opened: u64,
    /// How the previous stream ended.
    pub last_termination: Option<TerminationDump>,
    /// Whether every wildcard type has been answered once.
    pub ready: bool,
    /// Per type, in subscription order.
    pub types: Vec<TypeDump>,
}

/// How the previous stream ended.
#[derive(Clone, Debug, Serialize)]
pub struct TerminationDump {
    /// The metric label.
    pub reason: TerminationReason,
    /// The error text.
    pub detail: String,
}

/// One type's state.
#[derive(Clone, Debug, Serialize)]
pub struct TypeDump {
    /// The type URL.
    pub type_url: String,
    /// Wildcard or on-demand.
    pub mode: Mode,
    /// Held names → versions.
    pub resources: BTreeMap<String, String>,
    /// On-demand names not answered yet.
    pub pending_on_demand: Vec<String>,
    /// Names `demand` callers wait for.
    pub waiting_demands: Vec<String>,
    /// Nonce of the last response.
    pub last_nonce: Option<String>,
    /// The last ACK/NACK sent.
    pub last_reply: Option<Reply>,
    /// Responses received.
    pub responses: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::{AppliedResource, Rejected};

    const T: &str = "type.googleapis.com/t";

    fn applied(up: &[(&str, &str)], rm: &[&str], rej: &[(&str, &str)]) -> Applied {
        Applied {
            upserted: up
                .iter()
                .map(|(n, v)| AppliedResource {
                    name: n.to_string(),
                    version: v.to_string(),
                    aliases: Vec::new(),
                })
                .collect(),
            removed: rm.iter().map(|n| n.to_string()).collect(),
            rejected: rej.iter().map(|(n, r)| Rejected::new(*n, *r)).collect(),
        }
    }

    #[test]
    fn ack_nack_and_known_versions() {
        let mut s = TypeState::new(Mode::Wildcard);
        let ack = s.apply_response(T, "n1", applied(&[("a", "1"), ("b", "1")], &[], &[]));
        assert_eq!(ack.response_nonce, "n1");
        assert!(ack.error_detail.is_none() && ack.node.is_none());
        let nack = s.apply_response(
            T,
            "n2",
            applied(&[("c", "1")], &["b"], &[("d", "bad"), ("a", "worse")]),
        );
        let detail = nack.error_detail.unwrap();
        assert_eq!(detail.code, 0);
        assert_eq!(detail.message, "d: bad; a: worse");
        // A rejected update of a held name keeps the held version.
        let want: BTreeMap<String, String> = [("a", "1"), ("c", "1")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(s.known, want);
        assert!(matches!(s.last_reply, Some(Reply::Nack { .. })));
    }

    #[test]
    fn initial_requests() {
        let node = Node {
            id: "x".into(),
            ..Default::default()
        };
        let mut w = TypeState::new(Mode::Wildcard);
        let r = w.initial_request(T, node.clone());
        assert!(r.resource_names_subscribe.is_empty() && r.initial_resource_versions.is_empty());
        assert_eq!(r.node.as_ref().unwrap().id, "x");
        w.known.insert("a".into(), "3".into());
        let r = w.initial_request(T, node.clone());
        assert!(r.resource_names_subscribe.is_empty());
        assert_eq!(r.initial_resource_versions.len(), 1);

        let mut d = TypeState::new(Mode::OnDemand);
        let r = d.initial_request(T, node.clone());
        assert_eq!(r.resource_names_subscribe, vec!["*"]);
        assert_eq!(r.resource_names_unsubscribe, vec!["*"]);
        assert!(d.add_pending("/10.0.0.1"));
        assert!(!d.add_pending("/10.0.0.1"));
        d.known.insert("ns/svc".into(), "7".into());
        assert!(!d.add_pending("ns/svc"));
        let r = d.initial_request(T, node);
        assert_eq!(r.resource_names_subscribe, vec!["/10.0.0.1", "ns/svc"]);
        assert_eq!(r.initial_resource_versions["/10.0.0.1"], "");
        assert_eq!(r.initial_resource_versions["ns/svc"], "7");
    }

    #[test]
    fn demands_resolve() {
        let mut s = TypeState::new(Mode::OnDemand);
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        let (tx3, mut rx3) = oneshot::channel();
        s.add_pending("a");
        s.add_waiter("a", tx1);
        s.add_waiter("gone", tx2);
        s.add_waiter("bad", tx3);
        s.apply_response(T, "n", applied(&[("a", "1")], &["gone"], &[("bad", "why")]));
        assert_eq!(
            rx1.try_recv().unwrap(),
            Demanded::Found {
                version: "1".into()
            }
        );
        assert_eq!(rx2.try_recv().unwrap(), Demanded::Removed);
        assert_eq!(
            rx3.try_recv().unwrap(),
            Demanded::Rejected {
                reason: "why".into()
            }
        );
        assert!(s.pending.is_empty() && s.waiters.is_empty());
        let (tx, mut rx) = oneshot::channel();
        s.add_waiter("a", tx);
        assert_eq!(
            rx.try_recv().unwrap(),
            Demanded::Found {
                version: "1".into()
            }
        );

        // An on-demand key answered under another name, with the key as alias.
        let (tx, mut rx) = oneshot::channel();
        s.add_pending("/10.0.0.9");
        s.add_waiter("/10.0.0.9", tx);
        let mut a = applied(&[("Kubernetes//Pod/ns/p", "4")], &[], &[]);
        a.upserted[0].aliases = vec!["/10.0.0.9".into()];
        s.apply_response(T, "n2", a);
        assert_eq!(
            rx.try_recv().unwrap(),
            Demanded::Found {
                version: "4".into()
            }
        );
        assert!(s.pending.is_empty());
    }
}

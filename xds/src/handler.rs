//! Typed handlers: the client decodes each resource into the handler's
//! message type, hands the handler a batch of upserts and removals, and
//! collects what was rejected.

use std::marker::PhantomData;
use std::sync::Arc;

use proto::envoy::service::discovery::v3::Resource;

/// One change for a handler.
#[derive(Clone, Debug, PartialEq)]
pub enum Update<T> {
    /// Add or replace the resource called `name`.
    Upsert(XdsResource<T>),
    /// The server removed `name` (or it never existed, in reply to an
    /// on-demand or reconnect subscription). Removals cannot be rejected.
    Remove(String),
}

/// A decoded resource.
#[derive(Clone, Debug, PartialEq)]
pub struct XdsResource<T> {
    /// The xDS name.
    pub name: String,
    /// The server's version of this resource.
    pub version: String,
    /// Other names the server knows it by (istiod: `network/ip` for
    /// on-demand Address lookups).
    pub aliases: Vec<String>,
    /// The message.
    pub resource: T,
}

/// A resource that was not applied, and why. Named in the NACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The resource name.
    pub name: String,
    /// What an operator should look at.
    pub reason: String,
}

impl Rejected {
    /// A rejection of `name` for `reason`.
    pub fn new(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Rejected {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

/// Receives the resources of one type. The client is the only caller and
/// calls it from one task, in response order, so a store behind a handler
/// has a single writer.
///
/// A handler applies every update it does not reject; when it rejects an
/// upsert it should keep whatever it held for that name before. Rejections
/// of removals are ignored: removals always apply.
pub trait Handler<T>: Send + Sync + 'static {
    /// Applies a batch (one response) and returns the rejected upserts.
    fn apply(&self, updates: Vec<Update<T>>) -> Vec<Rejected>;
}

impl<T, F> Handler<T> for F
where
    F: Fn(Vec<Update<T>>) -> Vec<Rejected> + Send + Sync + 'static,
{
    fn apply(&self, updates: Vec<Update<T>>) -> Vec<Rejected> {
        self(updates)
    }
}

/// What happened to one response's resources.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Upserts that applied.
    pub upserted: Vec<AppliedResource>,
    /// Names removed.
    pub removed: Vec<String>,
    /// Upserts that failed to decode or that the handler rejected.
    pub rejected: Vec<Rejected>,
}

/// One applied upsert.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AppliedResource {
    pub name: String,
    pub version: String,
    pub aliases: Vec<String>,
}

/// A handler behind its decoder, so the client can hold all types together.
pub(crate) trait RawHandler: Send + Sync {
    fn handle(&self, resources: Vec<Resource>, removed: Vec<String>) -> Applied;
}

/// Adapts a typed [`Handler`] into a [`RawHandler`] for one type URL.
pub(crate) struct Typed<T, H> {
    type_url: String,
    handler: H,
    _t: PhantomData<fn() -> T>,
}

impl<T, H> Typed<T, H> {
    pub(crate) fn new(type_url: &str, handler: H) -> Arc<Self> {
        Arc::new(Typed {
            type_url: type_url.to_string(),
            handler,
            _t: PhantomData,
        })
    }
}

impl<T, H> RawHandler for Typed<T, H>
where
    T: prost::Message + Default + 'static,
    H: Handler<T>,
{
    fn handle(&self, resources: Vec<Resource>, removed: Vec<String>) -> Applied {
        let mut out = Applied::default();
        let mut updates = Vec::with_capacity(resources.len() + removed.len());
        let mut versions = Vec::with_capacity(resources.len());
        for r in resources {
            let Some(any) = r.resource.as_ref() else {
                out.rejected
                    .push(Rejected::new(r.name, "resource has no payload"));
                continue;
            };
            match proto::unpack_any::<T>(any, &self.type_url) {
                Ok(msg) => {
                    versions.push(AppliedResource {
                        name: r.name.clone(),
                        version: r.version.clone(),
                        aliases: r.aliases.clone(),
                    });
                    updates.push(Update::Upsert(XdsResource {
                        name: r.name,
                        version: r.version,
                        aliases: r.aliases,
                        resource: msg,
                    }));
                }
                Err(e) => out.rejected.push(Rejected::new(r.name, e.to_string())),
            }
        }
        for name in &removed {
            updates.push(Update::Remove(name.clone()));
        }
        let handler_rejects = if updates.is_empty() {
            Vec::new()
        } else {
            self.handler.apply(updates)
        };
        for rej in handler_rejects {
            match versions.iter().position(|a| a.name == rej.name) {
                Some(i) => {
                    versions.remove(i);
                    out.rejected.push(rej);
                }
                None => tracing::warn!(
                    type_url = %self.type_url,
                    name = %rej.name,
                    reason = %rej.reason,
                    "handler rejected a resource that was not an upsert of this batch; ignored"
                ),
            }
        }
        out.upserted = versions;
        out.removed = removed;
        out
    }
}

/// The NACK message: `"<name>: <reason>"` joined by `"; "`.
pub(crate) fn nack_message(rejected: &[Rejected]) -> String {
    let parts: Vec<String> = rejected
        .iter()
        .map(|r| format!("{}: {}", r.name, r.reason))
        .collect();
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use proto::istio::security::Authorization;
    use proto::{AUTHORIZATION_TYPE_URL, pack_any};

    fn res(name: &str, version: &str, payload: Option<prost_types::Any>) -> Resource {
        Resource {
            name: name.into(),
            version: version.into(),
            resource: payload,
            ..Default::default()
        }
    }

    fn authz(name: &str) -> prost_types::Any {
        pack_any(
            AUTHORIZATION_TYPE_URL,
            &Authorization {
                name: name.into(),
                namespace: "ns".into(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn decodes_rejects_and_passes_removals() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let h = Typed::<Authorization, _>::new(
            AUTHORIZATION_TYPE_URL,
            move |ups: Vec<Update<Authorization>>| {
                let mut rej = Vec::new();
                for u in &ups {
                    match u {
                        Update::Upsert(r) if r.name == "ns/veto" => {
                            rej.push(Rejected::new(&r.name, "vetoed"))
                        }
                        Update::Upsert(r) => s.lock().push(format!("+{}", r.name)),
                        Update::Remove(n) => {
                            s.lock().push(format!("-{n}"));
                            rej.push(Rejected::new(n, "removals cannot be rejected"));
                        }
                    }
                }
                rej
            },
        );
        let garbage = prost_types::Any {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            value: vec![0x0a, 0x05, 0x00],
        };
        let out = h.handle(
            vec![
                res("ns/good", "1", Some(authz("good"))),
                res("ns/bad", "1", Some(garbage)),
                res("ns/empty", "1", None),
                res("ns/veto", "1", Some(authz("veto"))),
                res(
                    "ns/wrongtype",
                    "1",
                    Some(pack_any(
                        "type.googleapis.com/x.Y",
                        &Authorization::default(),
                    )),
                ),
            ],
            vec!["ns/gone".into()],
        );
        let upserted: Vec<(&str, &str)> = out
            .upserted
            .iter()
            .map(|a| (a.name.as_str(), a.version.as_str()))
            .collect();
        assert_eq!(upserted, vec![("ns/good", "1")]);
        assert_eq!(out.removed, vec!["ns/gone".to_string()]);
        let names: Vec<&str> = out.rejected.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["ns/bad", "ns/empty", "ns/wrongtype", "ns/veto"]);
        assert_eq!(*seen.lock(), vec!["+ns/good", "-ns/gone"]);
        let msg = nack_message(&out.rejected);
        assert!(msg.starts_with("ns/bad: "), "{msg}");
        assert!(msg.ends_with("; ns/veto: vetoed"), "{msg}");
    }

    #[test]
    fn empty_batch_does_not_call_handler() {
        let h = Typed::<Authorization, _>::new(
            AUTHORIZATION_TYPE_URL,
            |_: Vec<Update<Authorization>>| -> Vec<Rejected> { panic!("called") },
        );
        assert_eq!(h.handle(vec![], vec![]), Applied::default());
    }
}

//! The Kubernetes side of the control plane: the objects a user would `kubectl apply`, loaded
//! from YAML/JSON files into a [`Cluster`].
//!
//! What it owns: parsing multi-document YAML (and `kind: List` wrappers) into typed objects, one
//! store per kind, and reporting objects it could not read. It does not interpret the objects;
//! that is [`crate::translate`]'s job.
//!
//! - Core kinds (`v1` Namespace, ServiceAccount, Service, Pod) use the `k8s-openapi` types.
//! - Istio security kinds (`security.istio.io/v1` and `v1beta1` AuthorizationPolicy and
//!   PeerAuthentication) use the serde structs of [`istio`]; `networking.istio.io`
//!   ServiceEntry those of [`networking`].
//! - Any other kind is skipped with an `info` log line and counted in [`LoadReport::ignored`].
//! - An object that fails to parse is reported as a [`LoadError`] (file, document index, kind,
//!   name, reason) and the rest of the input still loads.
//!
//! Objects without `metadata.namespace` land in `default`, like `kubectl apply`. When the same
//! object appears twice, the later one (in path order, then document order) wins.
//!
//! Adding a kind (Gateway, HTTPRoute, ServiceEntry, ...) means: a struct, an [`Object`] variant,
//! a store field on [`Cluster`], and arms in `Object::parse` and [`Cluster::insert`].

pub mod istio;
mod load;
pub mod networking;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;

pub use istio::{AuthorizationPolicy, PeerAuthentication};
pub use load::{LoadDirError, load_dir};
pub use networking::ServiceEntry;

/// Namespace used for namespaced objects that do not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// `<namespace>/<name>` of a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// Builds a key.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One object the control plane understands.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant, reason = "short-lived while loading")]
pub enum Object {
    /// `v1/Namespace`.
    Namespace(Namespace),
    /// `v1/ServiceAccount`.
    ServiceAccount(ServiceAccount),
    /// `v1/Service`.
    Service(Service),
    /// `v1/Pod`.
    Pod(Pod),
    /// `security.istio.io/{v1,v1beta1}/AuthorizationPolicy`.
    AuthorizationPolicy(AuthorizationPolicy),
    /// `security.istio.io/{v1,v1beta1}/PeerAuthentication`.
    PeerAuthentication(PeerAuthentication),
    ServiceEntry(ServiceEntry),
}

/// Why an object (or a whole file) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadErrorReason {
    /// The file or directory could not be read.
    #[error("cannot read: {0}")]
    Io(String),
    /// The YAML stream is malformed; the rest of the file is skipped.
    #[error("invalid YAML (rest of the file skipped): {0}")]
    Syntax(String),
    /// The document is not a mapping with `apiVersion` and `kind`.
    #[error("not a Kubernetes object: {0}")]
    NotAnObject(&'static str),
    /// `metadata.name` is missing or empty.
    #[error("metadata.name is missing")]
    MissingName,
    /// The object does not match its kind's schema.
    #[error("invalid {kind}: {message}")]
    Invalid {
        /// `apiVersion/kind`.
        kind: String,
        /// What serde reported.
        message: String,
    },
}

/// An object that was not loaded, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {reason}", file.display(), self.location())]
pub struct LoadError {
    /// The file.
    pub file: PathBuf,
    /// Index of the YAML document in the file (0-based), if the error is about one document.
    pub index: Option<usize>,
    /// `kind` of the object, if it could be read.
    pub kind: Option<String>,
    /// `namespace/name` (or `name`) of the object, if it could be read.
    pub name: Option<String>,
    /// What went wrong.
    pub reason: LoadErrorReason,
}

impl LoadError {
    fn location(&self) -> String {
        let mut s = String::new();
        if let Some(i) = self.index {
            s.push_str(&format!(" document {i}"));
        }
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => s.push_str(&format!(" ({k} {n})")),
            (Some(k), None) => s.push_str(&format!(" ({k})")),
            (None, Some(n)) => s.push_str(&format!(" ({n})")),
            (None, None) => {}
        }
        s
    }
}

/// What happened while loading, besides the objects themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Files read.
    pub files: usize,
    /// Objects stored.
    pub objects: usize,
    /// Objects of kinds the control plane does not use, by `apiVersion/kind`.
    pub ignored: BTreeMap<String, usize>,
    /// Objects (or files) that could not be read.
    pub errors: Vec<LoadError>,
}

/// The result of loading: the cluster and the report.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The objects.
    pub cluster: Cluster,
    /// Counts, ignored kinds and errors.
    pub report: LoadReport,
}

/// Every object the control plane knows, one store per kind.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Service accounts.
    pub service_accounts: BTreeMap<ObjectKey, ServiceAccount>,
    /// Services.
    pub services: BTreeMap<ObjectKey, Service>,
    /// Pods.
    pub pods: BTreeMap<ObjectKey, Pod>,
    /// AuthorizationPolicies.
    pub authorization_policies: BTreeMap<ObjectKey, AuthorizationPolicy>,
    /// PeerAuthentications.
    pub peer_authentications: BTreeMap<ObjectKey, PeerAuthentication>,
    pub service_entries: BTreeMap<ObjectKey, ServiceEntry>,
}

impl Cluster {
    /// Loads multi-document YAML from a string (for tests and tools). Errors name the file
    /// `<string>`.
    pub fn from_yaml_str(yaml: &str) -> Loaded {
        let mut loaded = Loaded::default();
        load::add_yaml(&mut loaded, &PathBuf::from("<string>"), yaml);
        loaded
    }

    /// Stores an object, replacing an earlier one with the same kind and key. Returns whether
    /// an object was replaced.
    pub fn insert(&mut self, object: Object) -> bool {
        match object {
            Object::Namespace(o) => {
                let name = o.metadata.name.clone().unwrap_or_default();
                self.namespaces.insert(name, o).is_some()
            }
            Object::ServiceAccount(o) => self
                .service_accounts
                .insert(key_of(&o.metadata), o)
                .is_some(),
            Object::Service(o) => self.services.insert(key_of(&o.metadata), o).is_some(),
            Object::Pod(o) => self.pods.insert(key_of(&o.metadata), o).is_some(),
            Object::AuthorizationPolicy(o) => self
                .authorization_policies
                .insert(key_of(&o.metadata), o)
                .is_some(),
            Object::PeerAuthentication(o) => self
                .peer_authentications
                .insert(key_of(&o.metadata), o)
                .is_some(),
            Object::ServiceEntry(o) => self
                .service_entries
                .insert(key_of(&o.metadata), o)
                .is_some(),
        }
    }

    /// Labels of a namespace (`None` when the Namespace object is absent or has no labels).
    pub fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces
            .get(namespace)
            .and_then(|ns| ns.metadata.labels.as_ref())
    }
}

fn key_of(meta: &ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// How a document was classified.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "short-lived while loading")]
pub(crate) enum Parsed {
    Object(Object),
    /// A kind the control plane does not use (`apiVersion/kind`).
    Ignored(String),
}

impl Object {
    /// Reads one object from a parsed YAML value. `Ok(None)` for kinds the control plane does
    /// not use. `Err` carries the reason; kind and name are taken from the value by the caller.
    pub fn from_value(value: serde_yaml::Value) -> Result<Option<Object>, LoadErrorReason> {
        match Self::parse(value)? {
            Parsed::Object(o) => Ok(Some(o)),
            Parsed::Ignored(_) => Ok(None),
        }
    }

    pub(crate) fn parse(mut value: serde_yaml::Value) -> Result<Parsed, LoadErrorReason> {
        let map = value
            .as_mapping()
            .ok_or(LoadErrorReason::NotAnObject("document is not a mapping"))?;
        let api_version = map
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .ok_or(LoadErrorReason::NotAnObject("apiVersion is missing"))?
            .to_owned();
        let kind = map
            .get("kind")
            .and_then(|v| v.as_str())
            .ok_or(LoadErrorReason::NotAnObject("kind is missing"))?
            .to_owned();
        let gvk = format!("{api_version}/{kind}");
        let known = match (api_version.as_str(), kind.as_str()) {
            ("v1", "Namespace") => Known::Namespace,
            ("v1", "ServiceAccount") => Known::ServiceAccount,
            ("v1", "Service") => Known::Service,
            ("v1", "Pod") => Known::Pod,
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "AuthorizationPolicy") => {
                Known::AuthorizationPolicy
            }
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "PeerAuthentication") => {
                Known::PeerAuthentication
            }
            (
                "networking.istio.io/v1"
                | "networking.istio.io/v1beta1"
                | "networking.istio.io/v1alpha3",
                "ServiceEntry",
            ) => Known::ServiceEntry,
            _ => return Ok(Parsed::Ignored(gvk)),
        };
        normalize_metadata(&mut value, known == Known::Namespace)?;
        let obj = match known {
            Known::Namespace => Object::Namespace(typed(value, &gvk)?),
            Known::ServiceAccount => Object::ServiceAccount(typed(value, &gvk)?),
            Known::Service => Object::Service(typed(value, &gvk)?),
            Known::Pod => Object::Pod(typed(value, &gvk)?),
            Known::AuthorizationPolicy => Object::AuthorizationPolicy(typed(value, &gvk)?),
            Known::PeerAuthentication => Object::PeerAuthentication(typed(value, &gvk)?),
            Known::ServiceEntry => Object::ServiceEntry(typed(value, &gvk)?),
        };
        Ok(Parsed::Object(obj))
    }
}

/// The `apiVersion`/`kind` pairs that are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Namespace,
    ServiceAccount,
    Service,
    Pod,
    AuthorizationPolicy,
    PeerAuthentication,
    ServiceEntry,
}

/// Checks the name and fills in the default namespace before the typed parse.
fn normalize_metadata(
    value: &mut serde_yaml::Value,
    cluster_scoped: bool,
) -> Result<(), LoadErrorReason> {
    let Some(map) = value.as_mapping_mut() else {
        return Err(LoadErrorReason::NotAnObject("document is not a mapping"));
    };
    let meta = map
        .entry("metadata".into())
        .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
    let Some(meta) = meta.as_mapping_mut() else {
        return Err(LoadErrorReason::NotAnObject("metadata is not a mapping"));
    };
    let has_name = meta
        .get("name")
        .and_then(|n| n.as_str())
        .is_some_and(|n| !n.is_empty());
    if !has_name {
        return Err(LoadErrorReason::MissingName);
    }
    if cluster_scoped {
        meta.remove("namespace");
    } else {
        let has_ns = meta
            .get("namespace")
            .and_then(|n| n.as_str())
            .is_some_and(|n| !n.is_empty());
        if !has_ns {
            meta.insert("namespace".into(), DEFAULT_NAMESPACE.into());
        }
    }
    Ok(())
}

fn typed<T: DeserializeOwned>(value: serde_yaml::Value, gvk: &str) -> Result<T, LoadErrorReason> {
    serde_yaml::from_value(value).map_err(|e| LoadErrorReason::Invalid {
        kind: gvk.to_owned(),
        message: e.to_string(),
    })
}

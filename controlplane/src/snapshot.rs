//! What the control plane serves: the translated state of the cluster at one moment.
//!
//! The translator (`translate`) builds a [`Snapshot`] from the Kubernetes objects; the xDS
//! server diffs consecutive snapshots per type and pushes only what changed. Resource names
//! are exactly the xDS names istiod uses.

use std::collections::{BTreeMap, BTreeSet};

use proto::istio::security::Authorization;
use proto::istio::workload::Address;

/// Every resource the control plane serves, by xDS resource name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// `type.googleapis.com/istio.workload.Address`: workloads by uid
    /// (`Kubernetes//Pod/<ns>/<name>`), services by `<ns>/<hostname>`.
    pub addresses: BTreeMap<String, Address>,
    /// `type.googleapis.com/istio.security.Authorization`: by `<ns>/<name>`.
    pub authorizations: BTreeMap<String, Authorization>,
    /// Not served: which (namespace, service account) pairs have a pod scheduled on each node,
    /// from the Pod objects' `spec.nodeName` (whether or not the pod has an IP yet). The CA
    /// checks node-agent impersonation against it, as istiod does with the pod objects.
    pub pod_placement: BTreeMap<String, BTreeSet<(String, String)>>,
}

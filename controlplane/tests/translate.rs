//! Translation tests: Kubernetes YAML fixtures (`tests/fixtures/translate/`) → snapshot views
//! (`tests/snapshots/`), plus direct assertions on the wire-critical values.
//!
//! One fixture per rule; each fixture's comments say what it shows. Review snapshot changes by
//! reading them: they are the specification of what istiod would send.

#[path = "translate/support.rs"]
#[macro_use]
mod support;

#[path = "translate/load.rs"]
mod load;

#[path = "translate/pods.rs"]
mod pods;

#[path = "translate/services.rs"]
mod services;

#[path = "translate/service_entries.rs"]
mod service_entries;

#[path = "translate/authz.rs"]
mod authz;

#[path = "translate/peer_auth.rs"]
mod peer_auth;

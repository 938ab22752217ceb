//! # cni
//!
//! The ambient CNI plugin (`ambient-cni`) and node agent (`cni-agent`): pods join the mesh
//! without sidecars because redirection rules are installed inside each enrolled pod's own
//! network namespace and the namespace itself is handed to ztunnel over ZDS.
//!
//! It is an app: it uses `proto` (ZDS) and `meshcore`, and no other app.

pub mod agent;
pub mod plugin;
pub mod podsource;
pub mod rules;
pub mod selectors;
pub mod zds_server;

//! # ztunnel
//!
//! The node L4 proxy of the ambient mesh and a drop-in for Istio's ztunnel: it captures the TCP
//! traffic of the pods on its node (in-pod listeners handed over by the CNI agent, or its own
//! namespace in dedicated mode), carries it over HBONE with each workload's own identity,
//! enforces L4 authorization at the destination, and reports Istio's L4 telemetry.
//!
//! Module map:
//! * [`config`]: the environment-variable contract of Istio's ztunnel, validated and printed;
//! * [`admin`]: admin (15000), metrics (15020) and readiness (15021) endpoints;
//! * [`socket`]: socket options the data path needs (original destination, marks, transparency);
//! * [`proxy`]: outbound (15001), inbound HBONE (15008) and plaintext inbound (15006);
//! * [`inpod`]: the ZDS client and per-pod network-namespace listeners (shared mode);
//! * [`dns`]: the DNS proxy (15053) answering mesh names and forwarding the rest;
//! * [`app`]: wires it all together for `main`.
//!
//! It is an app: it uses the libraries (`hbone`, `identity`, `xds`, `state`, `meshcore`) and no
//! other app.

pub mod admin;
pub mod app;
pub mod config;
pub mod dns;
pub mod inpod;
pub mod proxy;
pub mod socket;

//! The seam between the agent and the redirection rules: [`RuleInstaller`].
//!
//! [`KernelRules`] calls [`crate::rules`] (synchronous; the agent calls it through
//! `spawn_blocking`); tests use a recording fake.

use std::net::IpAddr;
use std::path::Path;

use crate::rules::{self, Backend, HostProbeRules, PodRuleConfig};

/// A failed rule operation (the message says what to check).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RuleFailure(pub String);

/// Installs and removes in-pod and host rules.
pub trait RuleInstaller: Send + Sync + 'static {
    /// Installs (idempotently) the in-pod rules in `netns`.
    fn apply_pod(&self, netns: &Path, cfg: &PodRuleConfig) -> Result<(), RuleFailure>;
    /// Removes the in-pod rules from `netns`.
    fn remove_pod(&self, netns: &Path) -> Result<(), RuleFailure>;
    /// Installs the host probe-SNAT rules and sets.
    fn host_install(&self) -> Result<(), RuleFailure>;
    /// Adds a pod's IPs to the probe sets.
    fn host_add_pod(&self, uid: &str, ips: &[IpAddr]) -> Result<(), RuleFailure>;
    /// Removes a pod's IPs from the probe sets.
    fn host_remove_pod(&self, uid: &str) -> Result<(), RuleFailure>;
    /// Makes the probe sets contain exactly these pods.
    fn host_sync(&self, pods: &[(String, Vec<IpAddr>)]) -> Result<(), RuleFailure>;
    /// Removes the host rules and sets.
    fn host_uninstall(&self) -> Result<(), RuleFailure>;
}

/// The real rules, in the agent's netns (host side) and in pod netns.
#[derive(Debug)]
pub struct KernelRules {
    host: HostProbeRules,
}

impl KernelRules {
    /// Rules for `backend`.
    pub fn new(backend: Backend) -> Self {
        KernelRules {
            host: HostProbeRules::new(backend),
        }
    }
}

fn fail(e: rules::RulesError) -> RuleFailure {
    RuleFailure(e.to_string())
}

impl RuleInstaller for KernelRules {
    fn apply_pod(&self, netns: &Path, cfg: &PodRuleConfig) -> Result<(), RuleFailure> {
        rules::apply_pod_rules(netns, cfg).map_err(fail)
    }
    fn remove_pod(&self, netns: &Path) -> Result<(), RuleFailure> {
        rules::remove_pod_rules(netns).map_err(fail)
    }
    fn host_install(&self) -> Result<(), RuleFailure> {
        self.host.install().map_err(fail)
    }
    fn host_add_pod(&self, uid: &str, ips: &[IpAddr]) -> Result<(), RuleFailure> {
        self.host.add_pod(uid, ips).map_err(fail)
    }
    fn host_remove_pod(&self, uid: &str) -> Result<(), RuleFailure> {
        self.host.remove_pod(uid).map_err(fail)
    }
    fn host_sync(&self, pods: &[(String, Vec<IpAddr>)]) -> Result<(), RuleFailure> {
        self.host.sync(pods).map_err(fail)
    }
    fn host_uninstall(&self) -> Result<(), RuleFailure> {
        self.host.uninstall().map_err(fail)
    }
}

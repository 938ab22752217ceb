//! The control-plane side of the node proxy: where workloads, services and policies come from
//! (istiod over delta xDS, or the static `LOCAL_XDS_PATH` file), and where certificates come
//! from (the CA, through the certificate manager).

use std::sync::Arc;

use hbone::Identity;
use identity::client::CaClientError;
use identity::client::{CaClient, CaClientConfig, Mode};
use identity::manager::{CertManager, CertificateProvider};
use identity::source::{RootCert as IdRootCert, TokenSource};
use proto::istio::security::Authorization;
use proto::istio::workload::Address;
use state::{MeshState, StateOptions};
use tracing::{info, warn};
use xds::{NodeIdentity, ProxyType, Rejected, Update, XdsClient, XdsConfig};

use crate::admin::ReadyTask;
use crate::config::{AuthToken, Config, ControlPlaneEndpoint, LocalXds, ProxyMode, RootCert};

/// Why the control-plane side could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("static config {source_name} cannot be loaded: {reason}")]
    LocalConfig { source_name: String, reason: String },
    #[error("xDS client cannot be built: {0}")]
    Xds(String),
    #[error("CA client cannot be built: {0}")]
    Ca(String),
    #[error(
        "{what} root certificate `SYSTEM` is not supported by this build; give a PEM file path or inline PEM"
    )]
    SystemRoots { what: &'static str },
}

/// What the data plane needs from the control plane.
pub struct ControlPlane {
    pub state: Arc<MeshState>,
    pub certs: CertManager,
    pub xds: Option<XdsClient>,
}

fn root_cert(what: &'static str, root: &RootCert) -> Result<IdRootCert, ControlError> {
    match root {
        RootCert::File(path) => Ok(IdRootCert::File(path.clone())),
        RootCert::Inline(pem) => Ok(IdRootCert::Pem(pem.clone())),
        RootCert::System => Err(ControlError::SystemRoots { what }),
    }
}

fn token(auth: &AuthToken) -> TokenSource {
    match auth {
        AuthToken::None => TokenSource::None,
        AuthToken::File(path) => TokenSource::File(path.clone()),
        AuthToken::Literal(t) => TokenSource::Literal(t.clone()),
    }
}

/// Starts the sources of state and certificates. `state_ready` is marked once the first
/// complete configuration is in place.
pub async fn start(config: &Config, state_ready: ReadyTask) -> Result<ControlPlane, ControlError> {
    let state = Arc::new(MeshState::new(StateOptions {
        preferred_service_namespace: config.prefered_service_namespace.clone(),
    }));
    let provider: Arc<dyn CertificateProvider> = match ca_client(config) {
        Ok(client) => Arc::new(client),
        Err(e) => {
            // Keep serving what needs no certificate (plaintext, passthrough); every
            // certificate fetch reports this reason until the process is restarted.
            tracing::error!(error = %e, "CA client unavailable: workloads will get no certificates");
            Arc::new(NoCa(e.to_string()))
        }
    };
    let certs = CertManager::new(provider);

    if let Some(local) = &config.local_xds {
        let (source_name, result) = match local {
            LocalXds::File(path) => (
                path.display().to_string(),
                state::local::load_file(&state, path),
            ),
            LocalXds::Inline(yaml) => ("LOCAL_XDS".to_string(), state::local::load(&state, yaml)),
        };
        let loaded = result.map_err(|e| ControlError::LocalConfig {
            source_name: source_name.clone(),
            reason: e.to_string(),
        })?;
        info!(source = %source_name, ?loaded, "static configuration loaded");
        state_ready.mark_ready();
        return Ok(ControlPlane {
            state,
            certs,
            xds: None,
        });
    }

    let Some(address) = &config.xds.address else {
        warn!("no xDS address and no static configuration: the proxy has no workloads");
        state_ready.mark_ready();
        return Ok(ControlPlane {
            state,
            certs,
            xds: None,
        });
    };
    let client = xds_client(config, address, state.clone())?;
    let ready = client.clone();
    tokio::spawn(async move {
        ready.ready().await;
        info!("received the initial configuration from the control plane");
        state_ready.mark_ready();
    });
    Ok(ControlPlane {
        state,
        certs,
        xds: Some(client),
    })
}

/// Stands in for a CA client that could not be built: every fetch fails with the reason.
struct NoCa(String);

impl CertificateProvider for NoCa {
    fn fetch<'a>(
        &'a self,
        _identity: &'a Identity,
    ) -> hbone::cert::BoxFuture<'a, Result<hbone::WorkloadCertificate, CaClientError>> {
        let reason = self.0.clone();
        Box::pin(async move { Err(CaClientError::NotConfigured(reason)) })
    }
}

fn ca_client(config: &Config) -> Result<CaClient, ControlError> {
    let ControlPlaneEndpoint {
        address,
        root_cert: root,
        alt_hostname,
        headers,
    } = &config.ca;
    // With no CA address a fetch fails with a clear error naming the missing address.
    let address = address.clone().unwrap_or_default();
    let mut ca = CaClientConfig::new(address, root_cert("CA", root)?);
    ca.server_name = alt_hostname.clone();
    ca.token = token(&config.auth);
    ca.cluster_id = config.cluster_id.clone();
    ca.headers = headers.0.iter().cloned().collect();
    ca.validity = config.secret_ttl;
    ca.mode = match config.proxy_mode {
        ProxyMode::Dedicated => Mode::Dedicated,
        ProxyMode::Shared => Mode::Shared {
            own_identity: config
                .self_workload
                .as_ref()
                .map(|w| Identity::new(&config.trust_domain, &w.namespace, &w.service_account)),
        },
    };
    CaClient::new(ca).map_err(|e| ControlError::Ca(e.to_string()))
}

fn xds_client(
    config: &Config,
    address: &str,
    state: Arc<MeshState>,
) -> Result<XdsClient, ControlError> {
    let node = NodeIdentity::new(
        ProxyType::Ztunnel,
        config.instance_ip.into_iter().collect(),
        config.pod_name.clone().unwrap_or_default(),
        config.pod_namespace.clone().unwrap_or_default(),
        config.node_name.clone().unwrap_or_default(),
    );
    let mut xc = XdsConfig::new(address.to_string(), node);
    xc.root_cert = Some(root_cert("xDS", &config.xds.root_cert)?);
    xc.server_name = config.xds.alt_hostname.clone();
    xc.token = token(&config.auth);
    xc.cluster_id = Some(config.cluster_id.clone());
    xc.headers = config.xds.headers.0.clone();
    xc.metadata = config.node_metadata.clone();
    xc.wildcard_types = vec![
        proto::ADDRESS_TYPE_URL.to_string(),
        proto::AUTHORIZATION_TYPE_URL.to_string(),
    ];
    let addresses = state.clone();
    let policies = state;
    let (client, task) = XdsClient::builder(xc)
        .handler::<Address, _>(
            proto::ADDRESS_TYPE_URL,
            move |updates: Vec<Update<Address>>| {
                apply(
                    updates,
                    |name, r| addresses.upsert_address(name, r),
                    |name| {
                        addresses.remove_address(name);
                    },
                )
            },
        )
        .handler::<Authorization, _>(
            proto::AUTHORIZATION_TYPE_URL,
            move |updates: Vec<Update<Authorization>>| {
                apply(
                    updates,
                    |name, r| policies.upsert_policy(name, r),
                    |name| {
                        policies.remove_policy(name);
                    },
                )
            },
        )
        .build()
        .map_err(|e| ControlError::Xds(e.to_string()))?;
    tokio::spawn(task.run());
    Ok(client)
}

/// Applies one xDS response to the state; resources that fail conversion are rejected (and
/// so NACKed by name) while the others apply.
fn apply<T, E: std::fmt::Display>(
    updates: Vec<Update<T>>,
    upsert: impl Fn(&str, T) -> Result<(), E>,
    remove: impl Fn(&str),
) -> Vec<Rejected> {
    let mut rejected = Vec::new();
    for update in updates {
        match update {
            Update::Upsert(r) => {
                if let Err(e) = upsert(&r.name, r.resource) {
                    warn!(resource = %r.name, error = %e, "rejecting resource from the control plane");
                    rejected.push(Rejected {
                        name: r.name,
                        reason: e.to_string(),
                    });
                }
            }
            Update::Remove(name) => remove(&name),
        }
    }
    rejected
}

//! The data-plane side: proxy instances and where their sockets live.
//!
//! * Dedicated mode: one instance for `PROXY_WORKLOAD_INFO`, listening in our own network
//!   namespace.
//! * Shared (in-pod) mode: one instance per pod the CNI agent hands over through ZDS, with
//!   every socket created inside that pod's network namespace and marked.
//!
//! In both modes an instance presents the identity of its workload's `Workload` (trust domain
//! from the control plane, `TRUST_DOMAIN` only while the workload is unknown) and holds a lease
//! on it; a certificate is dropped when its last instance goes (`data/leases.rs`).

mod leases;

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use identity::manager::CertManager;
use state::MeshState;
use tracing::info;

use crate::config::{Config, ProxyMode};
use crate::dns::{DnsClient, DnsHandle, DnsInputs, DnsServer, ForwardSettings};
use crate::inpod::{
    InPodSocketFactory, ManagerConfig, PodInfo, PodProxyFactory, PodProxyHandle,
    WorkloadProxyManager, WorkloadStateView,
};
use crate::proxy::{
    DefaultTelemetry, OrigSrc, Ports, Proxy, ProxyHandle, ProxyInputs, ProxySettings, WorkloadInfo,
};
use crate::socket::{HostSocketFactory, Keepalive, SocketFactory, TcpSettings};
use leases::{IdentityLeases, ProxyIdentity};

/// Maps the configuration onto what the data path reads.
pub fn proxy_settings(config: &Config) -> ProxySettings {
    let mut pool = hbone::ClientSettings {
        max_streams_per_connection: u32::from(config.pool_max_streams_per_conn),
        idle_timeout: config.pool_unused_release_timeout,
        ..hbone::ClientSettings::default()
    };
    let mut server = hbone::ServerSettings::default();
    for h2 in [&mut pool.h2, &mut server.h2] {
        h2.stream_window = config.http2.stream_window_size;
        h2.connection_window = config.http2.connection_window_size;
        h2.frame_size = config.http2.frame_size;
    }
    pool.tls.allow_tls12 = config.tls12_enabled;
    server.tls.allow_tls12 = config.tls12_enabled;
    let socket = &config.socket;
    ProxySettings {
        ipv6: config.ipv6_enabled,
        ports: Ports {
            socks5: config.socks5_addr.map(|a| a.port()),
            ..Ports::default()
        },
        illegal_ports: config.illegal_ports(),
        orig_src: match config.require_original_source {
            // Dedicated mode has no in-pod rules routing replies back to a transparent socket,
            // so preserving the client's address is only done when asked for explicitly.
            None if config.proxy_mode == ProxyMode::Dedicated => OrigSrc::Never,
            None => OrigSrc::Auto,
            Some(true) => OrigSrc::Required,
            Some(false) => OrigSrc::Never,
        },
        tcp: TcpSettings {
            keepalive: socket.keepalive_enabled.then_some(Keepalive {
                time: socket.keepalive_time,
                interval: socket.keepalive_interval,
                retries: socket.keepalive_retries,
            }),
            user_timeout: socket.user_timeout_enabled,
        },
        termination_deadline: config.termination_deadline,
        response_baggage: config.enable_response_baggage,
        authz_info_logging: config.authz_policy_info_logging,
        network: config.network.clone(),
        localhost_app_tunnel: config.localhost_app_tunnel,
        pool,
        server,
        ..ProxySettings::default()
    }
}

/// Starts the DNS proxy (15053) of one instance when DNS capture is on. A failure is the
/// instance's failure: the redirection rules send the workload's DNS to 15053, so running
/// without the proxy would silently break its name resolution.
fn start_dns(
    dns: &DnsSettings,
    state: Arc<MeshState>,
    sockets: Arc<dyn SocketFactory>,
    workload: &WorkloadInfo,
) -> Result<Option<DnsHandle>, String> {
    if !dns.enabled {
        return Ok(None);
    }
    let inputs = DnsInputs {
        state,
        sockets,
        bind: dns.bind.clone(),
        client_namespace: workload.namespace.clone(),
        cluster_domain: dns.cluster_domain.clone(),
        upstreams: dns.upstreams.clone(),
        source: DnsClient::Pod(workload.clone()),
        forward: ForwardSettings::default(),
    };
    DnsServer::start(inputs)
        .map(Some)
        .map_err(|e| format!("DNS proxy (DNS capture is on): {e}"))
}

/// What every instance's DNS proxy shares.
#[derive(Clone)]
struct DnsSettings {
    enabled: bool,
    bind: Vec<std::net::SocketAddr>,
    cluster_domain: String,
    upstreams: Vec<std::net::SocketAddr>,
}

impl DnsSettings {
    fn disabled() -> Self {
        DnsSettings {
            enabled: false,
            bind: Vec::new(),
            cluster_domain: crate::config::DEFAULT_CLUSTER_DOMAIN.to_string(),
            upstreams: Vec::new(),
        }
    }

    fn from_config(config: &Config) -> Self {
        // Read even without DNS capture: on-demand DNS of hostname upstreams uses them too.
        let upstreams = crate::dns::resolv_conf_nameservers(crate::dns::RESOLV_CONF)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no upstream resolvers: names outside the mesh will not resolve, nor upstreams known only by hostname");
                Vec::new()
            });
        DnsSettings {
            enabled: config.dns_proxy,
            bind: config.dns_proxy_addr.candidates(),
            cluster_domain: config.cluster_domain.clone(),
            upstreams,
        }
    }
}

/// The running data plane.
pub enum DataPlane {
    Dedicated(Box<ProxyHandle>, Option<DnsHandle>),
    /// The workload proxy manager's task, and its per-pod state for `/config_dump`.
    Shared(tokio::task::JoinHandle<()>, WorkloadStateView),
    Disabled,
}

/// Shared mode's pod proxies: one instance per pod, presenting the identity of the pod's
/// `Workload` and keeping its certificate only while some pod on this node presents it.
pub struct PodProxies {
    dns: DnsSettings,
    state: Arc<MeshState>,
    leases: Arc<IdentityLeases>,
    settings: ProxySettings,
    trust_domain: String,
}

impl PodProxies {
    /// Pod proxies without DNS capture. `trust_domain` (`TRUST_DOMAIN`) stands in for a pod's
    /// trust domain until its `Workload` is known. The proxies prefetch and forget identities
    /// in `certs` as pods come and go, and only use certificates of identities they hold.
    pub fn new(
        state: Arc<MeshState>,
        certs: CertManager,
        settings: ProxySettings,
        trust_domain: &str,
    ) -> Self {
        PodProxies {
            dns: DnsSettings::disabled(),
            state,
            leases: IdentityLeases::new(certs),
            settings,
            trust_domain: trust_domain.to_string(),
        }
    }

    /// With DNS capture: each pod gets a DNS proxy on `bind` (inside its netns) forwarding to
    /// `upstreams`; a pod whose DNS proxy cannot start is refused.
    pub fn with_dns_capture(
        mut self,
        bind: Vec<std::net::SocketAddr>,
        upstreams: Vec<std::net::SocketAddr>,
    ) -> Self {
        self.dns = DnsSettings {
            enabled: true,
            bind,
            upstreams,
            ..DnsSettings::disabled()
        };
        self
    }
}

impl PodProxyFactory for PodProxies {
    fn start(
        &self,
        pod: PodInfo,
        sockets: Arc<InPodSocketFactory>,
    ) -> futures_util::future::BoxFuture<'static, Result<PodProxyHandle, String>> {
        let dns_workload = WorkloadInfo {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
            trust_domain: self.trust_domain.clone(),
        };
        let identity = ProxyIdentity::lease(&self.leases, self.state.clone(), dns_workload.clone());
        let sockets = sockets as Arc<dyn SocketFactory>;
        let dns_settings = self.dns.clone();
        let dns_state = self.state.clone();
        let dns_sockets = sockets.clone();
        let inputs = ProxyInputs {
            state: self.state.clone(),
            certs: identity.certificates(),
            sockets,
            workload: identity.workload(),
            settings: self.settings.clone(),
            telemetry: Arc::new(DefaultTelemetry),
        };
        async move {
            // A failed start drops `identity`, releasing it.
            let handle = Proxy::start(inputs).map_err(|e| e.to_string())?;
            identity.attach(handle.server_identity());
            let dns = match start_dns(&dns_settings, dns_state, dns_sockets, &dns_workload) {
                Ok(dns) => dns,
                Err(e) => {
                    // Nothing was accepted yet worth keeping: close the listeners now.
                    handle.drain(Duration::ZERO).await;
                    return Err(e);
                }
            };
            info!(pod = %format!("{}/{}", pod.namespace, pod.name), uid = %pod.uid,
                identity = %handle.identity(), dns = dns.is_some(), "pod proxy started");
            Ok(PodProxyHandle::new(move |deadline: Duration| {
                async move {
                    handle.drain(deadline).await;
                    if let Some(dns) = dns {
                        dns.shutdown().await;
                    }
                    drop(identity);
                }
                .boxed()
            }))
        }
        .boxed()
    }
}

/// Starts the data plane for the configured mode. `manager_ready` is told when shared mode's
/// pod snapshot has been applied (and again when it is lost).
pub fn start(
    config: &Config,
    state: Arc<MeshState>,
    certs: CertManager,
    shutdown: meshcore::drain::DrainWatch,
    manager_ready: crate::admin::ReadyTask,
    cert_ready: crate::admin::ReadyTask,
    revocations: Option<hbone::Revocations>,
) -> Result<DataPlane, String> {
    if !config.proxy {
        manager_ready.mark_ready();
        cert_ready.mark_ready();
        return Ok(DataPlane::Disabled);
    }
    let mut settings = proxy_settings(config);
    settings.pool.tls.revocations = revocations.clone();
    settings.server.tls.revocations = revocations;
    let dns = DnsSettings::from_config(config);
    settings.resolver = Arc::new(crate::dns::OnDemandResolver::new(
        dns.upstreams.clone(),
        config.ipv6_enabled,
        ForwardSettings::default(),
    ));
    match config.proxy_mode {
        ProxyMode::Dedicated => {
            let info = config
                .proxy_workload_info
                .clone()
                .ok_or("dedicated mode needs PROXY_WORKLOAD_INFO")?;
            let identity = ProxyIdentity::lease(
                &IdentityLeases::new(certs),
                state.clone(),
                WorkloadInfo {
                    name: info.name,
                    namespace: info.namespace,
                    service_account: info.service_account,
                    trust_domain: config.trust_domain.clone(),
                },
            );
            let workload = identity.workload();
            // Ready only once the workload can present its certificate.
            let waiting = identity.certificates();
            tokio::spawn(async move {
                let mut delay = Duration::from_millis(200);
                loop {
                    let identity = waiting.current();
                    match hbone::CertificateSource::certificate(&*waiting, &identity).await {
                        Ok(_) => {
                            cert_ready.mark_ready();
                            return;
                        }
                        Err(e) => {
                            tracing::debug!(%identity, error = %e, "workload certificate not available yet");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            });
            let sockets: Arc<dyn SocketFactory> = Arc::new(HostSocketFactory {
                mark: config.packet_mark,
            });
            let dns_workload = workload.clone();
            let inputs = ProxyInputs {
                state: state.clone(),
                certs: identity.certificates(),
                sockets: sockets.clone(),
                workload,
                settings,
                telemetry: Arc::new(DefaultTelemetry),
            };
            let handle = Proxy::start(inputs).map_err(|e| e.to_string())?;
            identity.attach(handle.server_identity());
            identity.keep();
            // A startup error: the process exits, closing the listeners.
            let dns = start_dns(&dns, state, sockets, &dns_workload)?;
            manager_ready.mark_ready();
            Ok(DataPlane::Dedicated(Box::new(handle), dns))
        }
        ProxyMode::Shared => {
            // Pods get certificates as they are added; readiness follows the ZDS snapshot.
            cert_ready.mark_ready();
            let mark = config.packet_mark.unwrap_or(1337);
            crate::inpod::startup_check(mark).map_err(|e| e.to_string())?;
            let mut manager_config = ManagerConfig::new(&config.inpod_uds);
            manager_config.packet_mark = Some(mark);
            manager_config.reuse_port = config.inpod_port_reuse;
            manager_config.shutdown_drain_timeout = config.termination_deadline;
            let factory = PodProxies {
                dns,
                ..PodProxies::new(state, certs, settings, &config.trust_domain)
            };
            let manager = WorkloadProxyManager::new(manager_config, Arc::new(factory));
            let view = manager.state_view();
            let mut ready = manager.readiness();
            tokio::spawn(async move {
                loop {
                    if *ready.borrow_and_update() {
                        manager_ready.mark_ready();
                    } else {
                        manager_ready.mark_pending();
                    }
                    if ready.changed().await.is_err() {
                        return;
                    }
                }
            });
            let task = tokio::spawn(async move {
                let stop = async move {
                    shutdown.wait_for_drain().await;
                };
                if let Err(e) = manager.run(stop).await {
                    tracing::error!(error = %e, "the workload proxy manager stopped; pods on this node are no longer proxied");
                }
            });
            Ok(DataPlane::Shared(task, view))
        }
    }
}

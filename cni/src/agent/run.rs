//! Wiring of the agent process: sources, rules, servers, signals.

use std::sync::Arc;

use meshcore::telemetry::Prometheus;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use super::config::PodSourceSpec;
use super::rules::{KernelRules, RuleInstaller};
use super::{Agent, Config, http, install};
use crate::podsource::PodSource;
use crate::podsource::dir::DirPodSource;
use crate::podsource::kube::KubePodSource;
use crate::rules::Backend;

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let prom = match Prometheus::install() {
        Ok(p) => Some(p),
        Err(e) => {
            warn!(error = %e, "metrics disabled");
            None
        }
    };
    info!(config = %serde_json::to_string(&cfg)?, "cni-agent starting");
    let installer = match &cfg.install {
        Some(ic) => Some(install::Installer::start(ic.clone())?),
        None => None,
    };
    let source: Arc<dyn PodSource> = match &cfg.pod_source {
        PodSourceSpec::Dir(d) => Arc::new(DirPodSource::start(d, &cfg.node_name)?),
        PodSourceSpec::Kube => Arc::new(KubePodSource::start(&cfg.node_name).await?),
    };
    let backend = if cfg.native_nftables {
        Backend::Nftables
    } else {
        Backend::Iptables
    };
    let rules: Arc<dyn RuleInstaller> = Arc::new(KernelRules::new(backend));
    let (status, metrics) = (
        tokio::net::TcpListener::bind(cfg.readiness_addr).await?,
        tokio::net::TcpListener::bind(cfg.metrics_addr).await?,
    );
    let agent = Agent::new(cfg.clone(), source, rules);
    tokio::spawn(http::run_status_server(status, agent.clone(), prom.clone()));
    tokio::spawn(http::run_status_server(metrics, agent.clone(), prom));
    let zds_listener = agent.start().await?;
    let plugin_sock = cfg.plugin_socket();
    let _ = std::fs::remove_file(&plugin_sock);
    let plugin_listener = tokio::net::UnixListener::bind(&plugin_sock)?;
    let server = agent.zds_server().expect("started");
    metrics::describe_gauge!("ztunnel_connected", "ztunnels connected to the ZDS socket");
    metrics::describe_counter!(
        "cni_plugin_requests_total",
        "plugin cmdadd requests by HTTP response code"
    );
    let mut connected = server.watch_connected();
    tokio::spawn(async move {
        loop {
            let n = *connected.borrow_and_update();
            metrics::gauge!("ztunnel_connected").set(n as f64);
            if connected.changed().await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(zds_listener.run(server));
    tokio::spawn(http::run_plugin_server(plugin_listener, agent.clone()));
    tokio::spawn(agent.clone().run_reconcile());
    agent.set_ready();
    info!(plugin_socket = %plugin_sock.display(), ztunnel_socket = %cfg.ztunnel_socket.display(), "cni-agent ready");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!("cni-agent stopping");
    if let Some(i) = installer {
        i.uninstall();
    }
    let _ = std::fs::remove_file(&plugin_sock);
    Ok(())
}

//! Wiring for the `ztunnel` binary: configuration → telemetry → control plane (state and
//! certificates) → data plane (proxies) → admin endpoints → wait for shutdown → drain.
//!
//! Runtime: one multi-threaded tokio runtime with `ZTUNNEL_WORKER_THREADS` workers runs
//! everything; the in-pod socket creation uses its own small pool of OS threads (they switch
//! network namespaces, which must never happen on a runtime thread).

pub mod control;
pub mod crl;
pub mod data;

use std::process::ExitCode;
use std::sync::Arc;

use meshcore::drain::{Shutdown, ShutdownSignals};
use meshcore::telemetry::{LogHandle, Prometheus, init_tracing};
use tracing::{error, info, warn};

use crate::admin::{AdminState, DumpSources, Readiness, start_admin, start_readiness, start_stats};
use crate::config::Config;

/// Runs the node proxy; returns the process exit code.
pub fn main() -> ExitCode {
    let config = match Config::from_process_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ztunnel: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let log = match init_tracing(config.log_format, &config.log_filter) {
        Ok(h) => h,
        Err(e) => {
            eprintln!(
                "ztunnel: cannot set up logging (RUST_LOG={}): {e}",
                config.log_filter
            );
            return ExitCode::from(2);
        }
    };
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads.max(1))
        .thread_name("ztunnel-worker")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft open-files limit to the hard limit (every proxied connection is two fds).
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                warn!(error = %e, soft, hard, "cannot raise the open-files limit");
            }
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot read the open-files limit"),
    }
}

async fn run(config: Config, log: LogHandle) -> Result<(), String> {
    let printed = serde_json::to_string_pretty(&config).unwrap_or_default();
    info!("starting ztunnel with effective configuration:\n{printed}");
    for warning in &config.warnings {
        warn!("{warning}");
    }
    let config = Arc::new(config);
    let builder =
        crate::dns::metrics::with_buckets(metrics_exporter_prometheus::PrometheusBuilder::new())
            .map_err(|e| format!("metrics: {e}"))?;
    let prometheus = Prometheus::install_with(builder).map_err(|e| format!("metrics: {e}"))?;
    crate::proxy::DefaultTelemetry::describe();
    crate::dns::DnsMetrics::describe();
    let mut signals =
        ShutdownSignals::install().map_err(|e| format!("cannot watch for signals: {e}"))?;
    let (drain, watch) = meshcore::drain::channel();

    let readiness = Readiness::default();
    // The contract's task names: `state manager`, `proxy`, `dns proxy` (with DNS capture),
    // `workload proxy manager` (shared mode: ZDS snapshot applied); dedicated mode also waits
    // for its workload's certificate.
    let state_ready = readiness.register("state manager");
    let proxy_task = readiness.register("proxy");
    let dns_ready = (config.proxy && config.dns_proxy).then(|| readiness.register("dns proxy"));
    // `data::start` marks the first when the proxy is serving: the listeners in dedicated
    // mode, the ZDS snapshot in shared mode (where the listeners are per pod and `proxy` is
    // ready as soon as the pod proxies can be built).
    let (proxy_ready, proxy_ready_after_start) = match config.proxy_mode {
        crate::config::ProxyMode::Shared => (
            readiness.register("workload proxy manager"),
            Some(proxy_task),
        ),
        crate::config::ProxyMode::Dedicated => (proxy_task, None),
    };
    let cert_ready = readiness.register("workload certificate");

    let revocations = match &config.crl_path {
        Some(path) => {
            let loaded = crl::load(path)?;
            let revocations = loaded.revocations.clone();
            crl::watch(path.clone(), loaded, watch.clone());
            Some(revocations)
        }
        None => None,
    };
    let control = control::start(&config, state_ready)
        .await
        .map_err(|e| e.to_string())?;
    let data = data::start(
        &config,
        control.state.clone(),
        control.certs.clone(),
        watch.clone(),
        proxy_ready,
        cert_ready,
        revocations,
    )
    .map_err(|e| format!("cannot start the proxy: {e}"))?;
    // Started: listeners (dedicated) or the pod proxy factory (shared), and the DNS proxy
    // (dedicated; per pod in shared mode, where a failed one refuses its pod).
    if let Some(task) = proxy_ready_after_start {
        task.mark_ready();
    }
    if let Some(task) = dns_ready {
        task.mark_ready();
    }

    let admin = AdminState {
        config: config.clone(),
        config_dump: DumpSources {
            state: control.state.clone(),
            certs: control.certs.clone(),
            xds: control.xds.clone(),
            workload_state: match &data {
                data::DataPlane::Shared(_, view) => Some(view.clone()),
                _ => None,
            },
            local_xds: config.local_xds.clone(),
        }
        .into_provider(),
        log,
        drain: drain.clone(),
    };
    let _admin = start_admin(admin, watch.clone())
        .await
        .map_err(|e| e.to_string())?;
    let _stats = start_stats(
        &config.stats_addr,
        prometheus,
        config.istio_version.as_deref(),
        watch.clone(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let _ready = start_readiness(&config.readiness_addr, readiness, watch.clone())
        .await
        .map_err(|e| e.to_string())?;

    tokio::select! {
        signal = signals.recv() => info!(?signal, "shutting down"),
        _ = watch.wait_for_drain() => info!("shutting down (requested through /quitquitquit)"),
    }
    let deadline = config.termination_deadline;
    drain.start_drain(deadline);
    let graceful = async {
        match data {
            data::DataPlane::Dedicated(handle, dns) => {
                handle.drain(deadline).await;
                if let Some(dns) = dns {
                    dns.shutdown().await;
                }
            }
            data::DataPlane::Shared(task, _) => {
                let _ = task.await;
            }
            data::DataPlane::Disabled => {}
        }
    };
    tokio::select! {
        _ = graceful => info!("drained"),
        signal = signals.recv() => {
            if signal == Shutdown::Forced {
                warn!("second interrupt: exiting without waiting for connections");
            }
        }
    }
    if let Some(xds) = &control.xds {
        xds.shutdown();
    }
    Ok(())
}

//! `controlplane`: parses the command line and runs a subcommand (see [`controlplane::cli`]).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use controlplane::cli::{Cli, Command, StatusArgs, TokenArgs};
use controlplane::state_dir::StateDir;
use controlplane::status::{StatusReport, render_table};
use controlplane::tokens::{LocalTokens, TokenRequest};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve(args.into()),
        Command::Token(args) => token(&args),
        Command::Status(args) => status(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("controlplane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: controlplane::serve::ServeConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async {
        controlplane::serve::run(config, shutdown_signal())
            .await
            .map_err(anyhow::Error::from)
    })
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let state = StateDir::open(&args.state_dir)?;
    let tokens = LocalTokens::load_or_create(&state)?;
    let request = TokenRequest {
        pod: args.pod.clone(),
        node: args.node.clone(),
        ttl: args.ttl,
        audiences: args.audiences.clone(),
        ..TokenRequest::new(&args.namespace, &args.service_account)
    };
    println!("{}", tokens.mint(&request)?);
    Ok(())
}

fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let state = StateDir::open(&args.state_dir)?;
    let path = state.status();
    let bytes = state.read_optional(&path)?.with_context(|| {
        format!(
            "no status at {}: is `controlplane serve --state-dir {}` running?",
            path.display(),
            args.state_dir.display()
        )
    })?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&bytes));
        return Ok(());
    }
    let report: StatusReport = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a status report", path.display()))?;
    if let Some(listen) = &report.listen {
        println!("control plane at {listen} (status of {})", report.updated);
    }
    print!("{}", render_table(&report));
    Ok(())
}

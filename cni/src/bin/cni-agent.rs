//! `cni-agent`: the ambient node agent. Parses the config and runs [`cni::agent::run::run`].

use meshcore::env::ProcessEnv;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", cni::agent::config::USAGE);
        println!(
            "environment: {}",
            cni::agent::Config::env_names().join(", ")
        );
        return Ok(());
    }
    let cfg = cni::agent::Config::from_args(&args, &ProcessEnv)?;
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let env = cni::agent::config::env::RUST_LOG;
    let filter = var(env).unwrap_or_else(|| "info".into());
    let format = match var(cni::agent::config::env::LOG_FORMAT) {
        None => meshcore::telemetry::LogFormat::Plain,
        Some(v) => v.parse().map_err(|e| {
            anyhow::anyhow!("LOG_FORMAT={v} is not valid: expected `plain` or `json` ({e})")
        })?,
    };
    let _log = meshcore::telemetry::init_tracing(format, &filter)?;
    tracing::info!(
        pod = var(cni::agent::config::env::POD_NAME).as_deref().unwrap_or("-"),
        node = %cfg.node_name,
        "cni-agent starting"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(cni::agent::run::run(cfg))
}

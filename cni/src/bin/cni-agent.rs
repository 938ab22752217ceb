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
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let _log = meshcore::telemetry::init_tracing(meshcore::telemetry::LogFormat::Plain, &filter)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(cni::agent::run::run(cfg))
}

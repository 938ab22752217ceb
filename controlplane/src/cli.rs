//! Command line of the `controlplane` binary.
//!
//! ```text
//! controlplane serve  --config DIR --state-dir DIR [--listen 0.0.0.0:15012]
//!                     [--trust-domain cluster.local] [--cluster-id Kubernetes]
//!                     [--trusted-node-agent istio-system/ztunnel ...] [--max-cert-ttl 90d]
//!                     [--san NAME ...] [--ca-plugin-dir DIR]
//! controlplane token  --namespace NS --service-account SA [--pod NAME] [--node NODE]
//!                     [--ttl 12h] [--audience istio-ca ...] --state-dir DIR
//! controlplane status --state-dir DIR [--json]
//! ```
//!
//! Durations are `<n><unit>` sequences with units `s`, `m`, `h`, `d` (`90d`, `1h30m`); a bare
//! number is seconds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// The istiod stand-in: Kubernetes YAML in, delta xDS and an Istio CA out.
#[derive(Debug, Parser)]
#[command(name = "controlplane", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve xDS and the CA for the Kubernetes YAML in a directory (watched for changes).
    Serve(ServeArgs),
    /// Print a service-account token the control plane accepts.
    Token(TokenArgs),
    /// Show the connected proxies and their sync state, like `istioctl proxy-status`.
    Status(StatusArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Directory of Kubernetes YAML (`.yaml`, `.yml`, `.json`, recursively).
    #[arg(long = "config", value_name = "DIR")]
    pub config_dir: PathBuf,
    /// Where the CA, the token key, root-cert.pem and status.json live.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// gRPC (xDS + CA) listen address.
    #[arg(long, default_value = "0.0.0.0:15012")]
    pub listen: SocketAddr,
    /// Mesh trust domain.
    #[arg(long, default_value = hbone::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// istiod's CLUSTER_ID (prefix of workload uids).
    #[arg(long, default_value = "Kubernetes")]
    pub cluster_id: String,
    /// `ns/sa` allowed to request certificates for other identities (repeatable).
    #[arg(long = "trusted-node-agent", value_name = "NS/SA", default_value = crate::ca_server::DEFAULT_TRUSTED_NODE_AGENT, value_parser = parse_ns_sa)]
    pub trusted_node_agents: Vec<String>,
    /// Longest workload certificate lifetime issued.
    #[arg(long, default_value = "90d", value_parser = parse_duration)]
    pub max_cert_ttl: Duration,
    /// Extra DNS name or IP for the serving certificate (repeatable).
    #[arg(long = "san", value_name = "NAME")]
    pub sans: Vec<String>,
    /// Use the Istio plug-in CA (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
    /// `cert-chain.pem`) in this directory instead of the state directory's own CA.
    #[arg(long, value_name = "DIR")]
    pub ca_plugin_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    #[arg(long)]
    pub namespace: String,
    #[arg(long)]
    pub service_account: String,
    /// Bind the token to this pod.
    #[arg(long)]
    pub pod: Option<String>,
    /// The node the pod runs on (needed for node-agent impersonation checks).
    #[arg(long)]
    pub node: Option<String>,
    /// Token lifetime.
    #[arg(long, default_value = "12h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Audience (repeatable).
    #[arg(long = "audience", default_value = crate::tokens::ISTIO_CA_AUDIENCE)]
    pub audiences: Vec<String>,
    /// State directory of the control plane that will verify the token.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Print status.json as is.
    #[arg(long)]
    pub json: bool,
}

/// Parses `90d`, `12h`, `1h30m`, `45s`, `3600`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(format!("{s:?}: unknown unit {c:?} (use s, m, h or d)")),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{s:?}: expected a number before {c:?}"))?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{s:?} is too long"))?;
    }
    if !digits.is_empty() {
        return Err(format!("{s:?}: number without a unit at the end"));
    }
    Ok(Duration::from_secs(total))
}

/// Checks `ns/sa`.
pub fn parse_ns_sa(s: &str) -> Result<String, String> {
    match s.split_once('/') {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
            Ok(s.to_string())
        }
        _ => Err(format!("{s:?} is not <namespace>/<service account>")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("1h30").is_err());
    }

    #[test]
    fn serve_defaults() {
        let cli = Cli::try_parse_from([
            "controlplane",
            "serve",
            "--config",
            "/c",
            "--state-dir",
            "/s",
        ])
        .unwrap();
        let Command::Serve(a) = cli.command else {
            panic!("not serve");
        };
        assert_eq!(a.listen, "0.0.0.0:15012".parse().unwrap());
        assert_eq!(a.trusted_node_agents, ["istio-system/ztunnel"]);
        assert_eq!(a.max_cert_ttl, Duration::from_secs(90 * 86400));
        let cli = Cli::try_parse_from([
            "controlplane",
            "serve",
            "--config",
            "/c",
            "--state-dir",
            "/s",
            "--trusted-node-agent",
            "a/b",
            "--trusted-node-agent",
            "c/d",
            "--san",
            "cp.example",
        ])
        .unwrap();
        let Command::Serve(a) = cli.command else {
            panic!("not serve");
        };
        assert_eq!(a.trusted_node_agents, ["a/b", "c/d"]);
        assert_eq!(a.sans, ["cp.example"]);
        assert!(
            Cli::try_parse_from([
                "controlplane",
                "serve",
                "--config",
                "/c",
                "--state-dir",
                "/s",
                "--trusted-node-agent",
                "nope"
            ])
            .is_err()
        );
    }
}

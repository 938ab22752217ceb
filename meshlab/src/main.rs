//! `meshlab`: the command line of the local lab (see the library docs for the topology).
//!
//! ```text
//! meshlab up [--nodes N] [--backend iptables|nftables]      build the lab and return
//! meshlab apply -f FILE|DIR / delete -f FILE|DIR            objects, like kubectl
//! meshlab label ns|pod|svc NAME k=v|k- [-n NS]
//! meshlab exec POD [-n NS] -- CMD...                        POD may be a Deployment name
//! meshlab get nodes|pods|svc
//! meshlab logs ztunnel|cni-agent|controlplane [--node N]
//! meshlab status | down
//! meshlab demo [--backend B] [--keep]                       the guided tour (see meshlab::tour)
//! ```
//! Every command takes `--state-dir` (env `MESHLAB_STATE_DIR`, default /var/run/meshlab;
//! /var/run/meshlab-demo for `demo`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meshlab::{Backend, Lab, LabConfig};

#[derive(Debug, Parser)]
#[command(
    name = "meshlab",
    version,
    about = "The whole mesh on one Linux host, in network namespaces"
)]
struct Cli {
    /// State directory of the lab [default: /var/run/meshlab; for `demo`: /var/run/meshlab-demo].
    #[arg(long, global = true, env = "MESHLAB_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the lab: underlay, nodes, control plane, CNI agents, ztunnels.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// In-pod redirection backend.
        #[arg(long, default_value = "iptables")]
        backend: Backend,
        /// Directory of the project's binaries (default: next to meshlab, or MESHLAB_BIN_DIR).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// Apply Kubernetes YAML.
    Apply {
        /// File or directory.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Delete the objects named in Kubernetes YAML.
    Delete {
        /// File or directory.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Set (k=v) or remove (k-) a label.
    Label {
        /// ns, pod, svc, deploy, sa.
        kind: String,
        /// Object name.
        name: String,
        /// `k=v` or `k-`.
        edits: Vec<String>,
        /// Namespace (pods and services).
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Run a command in a pod's network namespace.
    Exec {
        /// Pod, or Deployment name (its first pod).
        pod: String,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// The command.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List nodes, pods or services.
    Get {
        /// nodes, pods or svc.
        what: String,
    },
    /// Print a component's log.
    Logs {
        /// ztunnel, cni-agent or controlplane.
        component: String,
        /// Node (ztunnel, cni-agent).
        #[arg(long, default_value = "node0")]
        node: String,
    },
    /// The control plane's view of connected proxies.
    Status,
    /// Remove everything the lab made.
    Down,
    /// A guided, self-checking tour: two nodes, sleep → httpbin over HBONE, identities in the
    /// metrics, authorization policies, PERMISSIVE and STRICT mTLS. Removes its lab at the end.
    Demo {
        /// In-pod redirection backend.
        #[arg(long, default_value = "iptables")]
        backend: Backend,
        /// Leave the lab up at the end for exploring (prints what to try and how to remove it).
        #[arg(long)]
        keep: bool,
        /// Directory of the project's binaries (default: next to meshlab, or MESHLAB_BIN_DIR).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// A built-in app (runs inside pods).
    #[command(hide = true)]
    App {
        /// httpbin or echo.
        name: String,
        /// Listen port.
        #[arg(long)]
        port: u16,
    },
    /// The cluster DNS (started by `up`; see meshlab::dns).
    #[command(hide = true)]
    ClusterDns {
        /// Address to serve on (UDP and TCP).
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The zone file the lab keeps up to date.
        #[arg(long)]
        zone: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshlab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let sd = cli
        .state_dir
        .clone()
        .unwrap_or_else(|| meshlab::DEFAULT_STATE_DIR.into());
    match cli.command {
        Cmd::ClusterDns { listen, zone } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(meshlab::dns::serve(listen, &zone))
                .map_err(|e| anyhow::anyhow!("cluster DNS on {listen}: {e}"))?;
        }
        Cmd::App { name, port } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            match name.as_str() {
                "httpbin" => rt.block_on(meshlab::apps::httpbin(port))?,
                "echo" => rt.block_on(meshlab::apps::echo(port))?,
                other => anyhow::bail!("unknown app {other:?} (httpbin, echo)"),
            }
        }
        Cmd::Up {
            nodes,
            backend,
            bin_dir,
        } => {
            let mut cfg = LabConfig {
                nodes,
                backend,
                state_dir: sd,
                ..LabConfig::default()
            };
            if let Some(b) = bin_dir {
                cfg.bin_dir = b;
            }
            let lab = Lab::up(cfg)?;
            print_nodes(&lab)?;
            if !lab.enrolment_available()? {
                eprintln!(
                    "note: cni-agent/ambient-cni are not built yet; pods run outside the mesh"
                );
            }
        }
        Cmd::Apply { files } => {
            let lab = Lab::open(&sd)?;
            for f in files {
                lab.apply_path(&f)?;
                println!("applied {}", f.display());
            }
        }
        Cmd::Delete { files } => {
            let lab = Lab::open(&sd)?;
            for f in files {
                lab.delete_path(&f)?;
                println!("deleted {}", f.display());
            }
        }
        Cmd::Label {
            kind,
            name,
            edits,
            namespace,
        } => {
            let lab = Lab::open(&sd)?;
            for e in edits {
                lab.label(&kind, &namespace, &name, &e)?;
            }
            println!("{kind}/{name} labeled");
        }
        Cmd::Exec {
            pod,
            namespace,
            command,
        } => {
            let lab = Lab::open(&sd)?;
            let argv: Vec<&str> = command.iter().map(String::as_str).collect();
            let out = lab.exec(&pod, &namespace, &argv)?;
            use std::io::Write;
            std::io::stdout().write_all(&out.stdout)?;
            std::io::stderr().write_all(&out.stderr)?;
            return Ok(ExitCode::from(
                out.status.code().unwrap_or(1).clamp(0, 255) as u8
            ));
        }
        Cmd::Get { what } => {
            let lab = Lab::open(&sd)?;
            match what.as_str() {
                "nodes" | "node" | "no" => print_nodes(&lab)?,
                "pods" | "pod" | "po" => {
                    println!(
                        "{:<16} {:<40} {:<8} {:<14} {:<9} ENROLMENT",
                        "NAMESPACE", "NAME", "NODE", "IP", "STATUS"
                    );
                    for p in lab.pods()? {
                        println!(
                            "{:<16} {:<40} {:<8} {:<14} {:<9} {}",
                            p.namespace,
                            p.name,
                            p.node,
                            p.ip.as_deref().unwrap_or("-"),
                            p.phase,
                            p.enrolment.as_deref().unwrap_or("-")
                        );
                    }
                }
                "svc" | "services" | "service" => {
                    println!(
                        "{:<16} {:<24} {:<14} {:<20} ENDPOINTS",
                        "NAMESPACE", "NAME", "CLUSTER-IP", "PORTS"
                    );
                    for s in lab.services()? {
                        let ports: Vec<String> = s
                            .ports
                            .iter()
                            .map(|p| format!("{}/{}", p.port, p.protocol))
                            .collect();
                        let eps: Vec<String> = s
                            .ports
                            .iter()
                            .flat_map(|p| {
                                p.endpoints.iter().map(|(ip, port)| format!("{ip}:{port}"))
                            })
                            .collect();
                        println!(
                            "{:<16} {:<24} {:<14} {:<20} {}",
                            s.namespace,
                            s.name,
                            s.cluster_ip.as_deref().unwrap_or("None"),
                            ports.join(","),
                            if eps.is_empty() {
                                "<none>".into()
                            } else {
                                eps.join(",")
                            }
                        );
                    }
                }
                other => anyhow::bail!("cannot get {other:?}: use nodes, pods or svc"),
            }
        }
        Cmd::Logs { component, node } => {
            let lab = Lab::open(&sd)?;
            print!("{}", lab.logs(&component, Some(&node))?);
        }
        Cmd::Status => print!("{}", Lab::open(&sd)?.status()?),
        Cmd::Down => {
            let r = Lab::down_from_state(&sd)?;
            println!(
                "lab removed: {} processes, {} namespaces, {} links, {} mounts",
                r.processes, r.netns, r.links, r.mounts
            );
        }
        Cmd::Demo {
            backend,
            keep,
            bin_dir,
        } => return demo(cli.state_dir, backend, keep, bin_dir),
    }
    Ok(ExitCode::SUCCESS)
}

fn demo(
    state_dir: Option<PathBuf>,
    backend: Backend,
    keep: bool,
    bin_dir: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use meshlab::tour::{self, TourConfig};
    let mut cfg = TourConfig {
        backend,
        keep,
        state_dir: state_dir.unwrap_or_else(|| tour::DEMO_STATE_DIR.into()),
        ..TourConfig::default()
    };
    if let Some(b) = bin_dir {
        cfg.bin_dir = b;
    }
    // Fail before the first step rather than in it.
    meshlab::sys::require_root()?;
    tour::tear_down_on_interrupt(cfg.state_dir.clone())?;
    match tour::run(&cfg, &mut std::io::stdout()) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("\nmeshlab demo: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn print_nodes(lab: &Lab) -> anyhow::Result<()> {
    println!(
        "{:<8} {:<12} {:<12} {:<15} {:<8} CNI-AGENT",
        "NAME", "NETNS", "IP", "POD-CIDR", "ZTUNNEL"
    );
    for n in lab.nodes()? {
        let s = |b: bool| if b { "running" } else { "-" };
        println!(
            "{:<8} {:<12} {:<12} {:<15} {:<8} {}",
            n.name,
            n.netns,
            n.ip,
            n.pod_cidr,
            s(n.ztunnel),
            s(n.cni_agent)
        );
    }
    Ok(())
}

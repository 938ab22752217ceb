//! Errors of the lab, one enum; every message says what to check or do.

use std::path::PathBuf;

/// Everything that can go wrong while building, changing or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Network namespaces, bridges and netfilter need root.
    #[error(
        "meshlab must run as root (it creates network namespaces, bridges and nftables rules); run it with sudo"
    )]
    NotRoot,
    /// A system tool is not installed.
    #[error("required tool `{tool}` not found; install it with `apt-get install -y {package}`")]
    MissingTool {
        /// The program or file that is missing.
        tool: String,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// One of the project's binaries has not been built.
    #[error("binary `{name}` not found in {}; build it with `cargo build -p {package}` or point MESHLAB_BIN_DIR at the directory holding it", dir.display())]
    MissingBinary {
        /// Binary name.
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
        /// Cargo package that builds it.
        package: &'static str,
    },
    /// An address, port, bridge or directory is taken.
    #[error("{what} is already in use: {hint}")]
    InUse {
        /// The resource.
        what: String,
        /// What to do about it.
        hint: String,
    },
    /// There is no lab in the state directory.
    #[error("no lab found in {}: run `meshlab up` first (or pass --state-dir)", .0.display())]
    NotUp(PathBuf),
    /// A command failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Exit status.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// A YAML object could not be applied.
    #[error("cannot apply {source_name}: {object}: {reason}")]
    Apply {
        /// File (or `<inline>`).
        source_name: String,
        /// `Kind ns/name`.
        object: String,
        /// Why.
        reason: String,
    },
    /// A pod (or deployment) does not exist.
    #[error("pod {namespace}/{name} not found (see `meshlab get pods`)")]
    PodNotFound {
        /// Namespace.
        namespace: String,
        /// Pod or deployment name.
        name: String,
    },
    /// Something did not become ready in time.
    #[error("timed out after {secs}s waiting for {what}; last lines of {}:\n{tail}", log.display())]
    Timeout {
        /// The last lines of the log.
        tail: String,
        /// What was awaited.
        what: String,
        /// Seconds waited.
        secs: u64,
        /// Log file to read.
        log: PathBuf,
    },
    /// A process exited during start-up.
    #[error("{what} exited during start-up; last lines of {}:\n{tail}", log.display())]
    Exited {
        /// Which process.
        what: String,
        /// Its log.
        log: PathBuf,
        /// The last lines of the log.
        tail: String,
    },
    /// File system error.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// lab.json or an object file is unreadable.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        reason: String,
    },
    /// Invalid argument.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of the lab.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// Wraps an io error with the path it concerns.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LabError {
    let path = path.into();
    move |source| LabError::Io { path, source }
}

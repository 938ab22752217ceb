//! Running the packet-filter tools, optionally inside another netns through `nsenter`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tracing::trace;

use super::RulesError;

/// The Debian package that ships `tool`.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "nft" => "nftables",
        "ipset" => "ipset",
        "nsenter" => "util-linux",
        _ => "iptables",
    }
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// Finds `tool`, or says which package to install.
fn require(tool: &'static str) -> Result<PathBuf, RulesError> {
    find_in_path(tool).ok_or(RulesError::MissingTool {
        tool,
        package: package_of(tool),
    })
}

/// One invocation of a tool.
#[derive(Debug)]
pub(crate) struct Tool<'a> {
    program: &'static str,
    args: Vec<String>,
    netns: Option<&'a Path>,
    stdin: Option<&'a str>,
}

impl<'a> Tool<'a> {
    pub(crate) fn new(program: &'static str) -> Self {
        Tool {
            program,
            args: Vec::new(),
            netns: None,
            stdin: None,
        }
    }

    pub(crate) fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs the tool inside the netns at `netns` (`None`: the current one).
    pub(crate) fn netns(mut self, netns: Option<&'a Path>) -> Self {
        self.netns = netns;
        self
    }

    pub(crate) fn stdin(mut self, input: &'a str) -> Self {
        self.stdin = Some(input);
        self
    }

    /// Runs to completion; returns stdout on success.
    pub(crate) fn run(self) -> Result<String, RulesError> {
        let tool_path = require(self.program)?;
        let mut cmd = match self.netns {
            Some(ns) => {
                let nsenter = require("nsenter")?;
                let mut c = Command::new(nsenter);
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg(&tool_path);
                c
            }
            None => Command::new(&tool_path),
        };
        cmd.args(&self.args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        trace!(program = self.program, args = ?self.args, netns = ?self.netns, "running");
        let spawn_err = |source| RulesError::Spawn {
            program: self.program.to_string(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(input), Some(mut pipe)) = (self.stdin, child.stdin.take()) {
            // A tool that exits early closes the pipe; its exit status tells why.
            let _ = pipe.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if !out.status.success() {
            let mut args = self.args.clone();
            if let Some(ns) = self.netns {
                args.push(format!("(in netns {})", ns.display()));
            }
            return Err(RulesError::Command {
                program: self.program.to_string(),
                args,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        String::from_utf8(out.stdout).map_err(|e| RulesError::Parse {
            program: self.program.to_string(),
            reason: e.to_string(),
        })
    }
}

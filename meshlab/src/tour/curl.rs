//! `curl` run inside a pod, as a user would run it with `kubectl exec`: its exit code, HTTP
//! status and error text.

use crate::lab::Lab;

/// What `curl` inside a pod did.
#[derive(Debug, Clone)]
pub(super) struct Curl {
    pub(super) exit: i32,
    pub(super) code: String,
    pub(super) stderr: String,
}

impl Curl {
    pub(super) fn ok(&self) -> bool {
        self.exit == 0 && self.code == "200"
    }

    pub(super) fn reset(&self) -> bool {
        self.exit == 56 && (self.code.is_empty() || self.code == "000")
    }
}

impl std::fmt::Display for Curl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.exit == 0 {
            write!(f, "HTTP {}", self.code)
        } else if self.stderr.is_empty() {
            write!(f, "curl exit {}", self.exit)
        } else {
            write!(f, "curl exit {} ({})", self.exit, self.stderr)
        }
    }
}

/// Runs `curl -sS -m 5 URL` in a pod and reads its exit code and HTTP status.
pub(super) fn curl(lab: &Lab, pod: &str, ns: &str, url: &str) -> crate::Result<Curl> {
    let out = lab.exec(
        pod,
        ns,
        &[
            "curl",
            "-sS",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ],
    )?;
    Ok(Curl {
        exit: out.status.code().unwrap_or(-1),
        code: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

//! `curl` run inside a pod, as a user would run it with `kubectl exec`: its exit code, HTTP
//! status, body and error text. The tour, the lab tests and the end-to-end suite all use it.

use crate::error::Result;
use crate::lab::Lab;

/// What `curl` inside a pod did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Curl {
    /// curl's exit status (0 success, 7 refused, 28 timeout, 52 empty reply, 56 recv failure).
    pub exit: i32,
    /// `%{http_code}` ("000" when there was no response).
    pub code: String,
    /// The response body.
    pub body: String,
    /// curl's error text.
    pub stderr: String,
}

impl Curl {
    /// Exit 0 and status 200.
    pub fn ok(&self) -> bool {
        self.exit == 0 && self.code == "200"
    }

    /// The connection was reset with no HTTP response (curl exit 56), as ztunnel refuses.
    pub fn reset(&self) -> bool {
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

/// Separates the body from the status that `-w` appends.
const MARK: &str = "\n--http-code:";

impl Lab {
    /// Runs `curl -sS -m 5 [extra...] URL` in a pod (name, or Deployment name) and reports what
    /// it did; later `-m` in `extra` wins.
    pub fn curl(&self, pod: &str, ns: &str, url: &str, extra: &[&str]) -> Result<Curl> {
        let write_out = format!("{MARK}%{{http_code}}");
        let mut argv = vec!["curl", "-sS", "-m", "5", "-w", &write_out];
        argv.extend_from_slice(extra);
        argv.push(url);
        let out = self.exec(pod, ns, &argv)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (body, code) = stdout
            .rsplit_once(MARK)
            .map(|(b, c)| (b.to_string(), c.trim().to_string()))
            .unwrap_or_else(|| (stdout.to_string(), String::new()));
        Ok(Curl {
            exit: out.status.code().unwrap_or(-1),
            code,
            body,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        let c = |exit, code: &str| Curl {
            exit,
            code: code.into(),
            body: String::new(),
            stderr: String::new(),
        };
        assert!(c(0, "200").ok());
        assert!(!c(0, "403").ok());
        assert!(c(56, "000").reset());
        assert!(!c(52, "000").reset(), "an empty reply is not a reset");
        assert!(!c(0, "200").reset());
        assert_eq!(c(0, "200").to_string(), "HTTP 200");
    }
}

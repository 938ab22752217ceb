//! The built-in apps that stand in for container images, run inside pod netns by
//! `meshlab app <name>`:
//!
//! * `httpbin`: an HTTP/1.1 server with `/get`, `/headers`, `/ip`, `/status/{code}`,
//!   `/delay/{seconds}` (at most 10) and `/` (a line naming the pod and its `version` label,
//!   from `POD_NAME` and `VERSION`); keep-alive, `Content-Length` bodies.
//! * `echo`: a TCP echo server.
//!
//! Both create `MESHLAB_READY_FILE` (when set) once listening.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEADER_BYTES: usize = 64 * 1024;

async fn listen(port: u16) -> std::io::Result<TcpListener> {
    let l = TcpListener::bind(("0.0.0.0", port)).await?;
    if let Some(f) = std::env::var_os("MESHLAB_READY_FILE") {
        std::fs::write(f, b"ready\n")?;
    }
    Ok(l)
}

/// Serves the TCP echo app until the process is killed.
pub async fn echo(port: u16) -> std::io::Result<()> {
    let l = listen(port).await?;
    loop {
        let (mut s, _) = l.accept().await?;
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// Serves the httpbin app until the process is killed.
pub async fn httpbin(port: u16) -> std::io::Result<()> {
    let l = listen(port).await?;
    loop {
        let (s, peer) = l.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = serve_conn(s, peer).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Target (path and query).
    pub target: String,
    /// Headers in arrival order (names as sent).
    pub headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
    /// Seconds to wait before answering.
    pub delay: u64,
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        418 => "I'm a teapot",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn json_resp(v: serde_json::Value) -> Response {
    let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    body.push(b'\n');
    Response {
        status: 200,
        content_type: "application/json",
        body,
        delay: 0,
    }
}

/// Decides the response to a request (pure; unit-tested).
pub fn respond(req: &Request, peer: SocketAddr, pod: &str, version: &str) -> Response {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let headers: BTreeMap<&str, &str> = req
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let args: BTreeMap<&str, &str> = query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .collect();
    let host = req.header("host").unwrap_or("localhost");
    let origin = peer.ip().to_string();
    let get = || json!({"args": args, "headers": headers, "origin": origin, "url": format!("http://{host}{}", req.target)});
    let text = |status: u16, body: String| Response {
        status,
        content_type: "text/plain",
        body: body.into_bytes(),
        delay: 0,
    };
    match path {
        "/" => text(200, format!("{pod} version={version}\n")),
        "/get" | "/anything" => json_resp(get()),
        "/headers" => json_resp(json!({"headers": headers})),
        "/ip" => json_resp(json!({"origin": origin})),
        p if p.starts_with("/status/") => match p["/status/".len()..].parse::<u16>() {
            Ok(code) if (100..600).contains(&code) => text(code, String::new()),
            _ => text(400, "invalid status code\n".into()),
        },
        p if p.starts_with("/delay/") => match p["/delay/".len()..].parse::<f64>() {
            Ok(s) if s >= 0.0 => {
                let mut r = json_resp(get());
                r.delay = s.min(10.0).ceil() as u64;
                r
            }
            _ => text(400, "invalid delay\n".into()),
        },
        _ => text(404, "not found\n".into()),
    }
}

async fn serve_conn(s: TcpStream, peer: SocketAddr) -> std::io::Result<()> {
    let pod = std::env::var("POD_NAME").unwrap_or_else(|_| "unknown".into());
    let version = std::env::var("VERSION").unwrap_or_default();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return Ok(());
        };
        let http10 = parts.next() == Some("HTTP/1.0");
        let mut req = Request {
            method: method.into(),
            target: target.into(),
            headers: Vec::new(),
        };
        let mut total = line.len();
        loop {
            let mut h = String::new();
            let n = r.read_line(&mut h).await?;
            total += n;
            if n == 0 || total > MAX_HEADER_BYTES {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                req.headers
                    .push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let len: u64 = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        tokio::io::copy(&mut (&mut r).take(len), &mut tokio::io::sink()).await?;
        let close = http10
            || req
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let resp = respond(&req, peer, &pod, &version);
        if resp.delay > 0 {
            tokio::time::sleep(Duration::from_secs(resp.delay)).await;
        }
        let body: &[u8] = if req.method == "HEAD" {
            &[]
        } else {
            &resp.body
        };
        let head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nserver: meshlab-httpbin\r\nx-pod-name: {pod}\r\n{}\r\n",
            resp.status,
            reason(resp.status),
            resp.content_type,
            resp.body.len(),
            if close { "connection: close\r\n" } else { "" },
        );
        // One write: head and body in separate segments would wait on the peer's delayed ACK
        // (Nagle) on every kept-alive request.
        let mut out = Vec::with_capacity(head.len() + body.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(body);
        w.write_all(&out).await?;
        w.flush().await?;
        if close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str) -> Request {
        Request {
            method: "GET".into(),
            target: target.into(),
            headers: vec![("Host".into(), "httpbin:8000".into())],
        }
    }
    const PEER: &str = "10.244.0.3:40000";

    #[test]
    fn routes() {
        let peer = PEER.parse().unwrap();
        let r = respond(&req("/get?a=1"), peer, "httpbin-1", "v1");
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["args"]["a"], "1");
        assert_eq!(v["headers"]["Host"], "httpbin:8000");
        assert_eq!(v["origin"], "10.244.0.3");
        assert_eq!(respond(&req("/status/418"), peer, "p", "").status, 418);
        assert_eq!(respond(&req("/status/x"), peer, "p", "").status, 400);
        assert_eq!(respond(&req("/delay/3"), peer, "p", "").delay, 3);
        assert_eq!(respond(&req("/delay/99"), peer, "p", "").delay, 10);
        assert_eq!(
            respond(&req("/"), peer, "reviews-v2-abc", "v2").body,
            b"reviews-v2-abc version=v2\n"
        );
        assert_eq!(respond(&req("/nope"), peer, "p", "").status, 404);
    }

    #[tokio::test]
    async fn serves_over_tcp() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, peer) = l.accept().await.unwrap();
            serve_conn(s, peer).await.unwrap();
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\nGET /ip HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 201 Created\r\n"), "{out}");
        assert!(out.contains("\"origin\": \"127.0.0.1\""), "{out}");
    }
}

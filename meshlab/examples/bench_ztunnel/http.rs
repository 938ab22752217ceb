//! The HTTP server of the request-response tests: this example re-run as
//! `bench_ztunnel --serve-http PORT` inside the server pod. It answers every request with the
//! same 256-byte body, keeps connections alive unless asked to close, and writes each response
//! in one `write` on a `TCP_NODELAY` socket.
//!
//! Why not the lab's httpbin app: it writes the head and the body separately without
//! `TCP_NODELAY`, so on a kept-alive connection Nagle's algorithm holds the body until the
//! client's delayed ACK (40 ms): every request took ~44 ms on both paths, which measured the
//! ACK timer, not the proxy. `--httpbin` still benchmarks against it.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Port of this server in the server pods.
pub const PORT: u16 = 8080;
const BODY_LEN: usize = 256;

/// Serves until killed.
pub fn serve(port: u16) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let l = TcpListener::bind(("0.0.0.0", port)).await?;
        loop {
            let (s, _) = l.accept().await?;
            tokio::spawn(async move {
                let _ = conn(s).await;
            });
        }
    })
}

async fn conn(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let body = "x".repeat(BODY_LEN - 1) + "\n";
    let keep = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {BODY_LEN}\r\n\r\n{body}"
    );
    let close = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {BODY_LEN}\r\nconnection: close\r\n\r\n{body}"
    );
    let mut buf = vec![0u8; 16 * 1024];
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..]).await?;
        if n == 0 {
            return Ok(());
        }
        have += n;
        // Answer every complete request head in the buffer (wrk sends no bodies).
        while let Some(end) = find(&buf[..have], b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let wants_close = head.contains("\r\nconnection: close");
            s.write_all(if wants_close { &close } else { &keep }.as_bytes())
                .await?;
            if wants_close {
                return s.shutdown().await;
            }
            buf.copy_within(end + 4..have, 0);
            have -= end + 4;
        }
        if have == buf.len() {
            return Ok(()); // a head larger than the buffer: not from wrk
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

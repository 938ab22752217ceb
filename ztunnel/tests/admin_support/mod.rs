//! What the admin-port tests share: a ztunnel `Config` listening on free loopback ports, and
//! a raw HTTP/1.1 client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use meshcore::env::MapEnv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ztunnel::config::{Config, Host, ListenAddress};

/// 127.0.0.1, any free port.
pub const LOCAL0: ListenAddress = ListenAddress::Exact(SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    0,
));

/// Status, head and the body as bytes.
pub async fn send_raw(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a full response");
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, raw[end + 4..].to_vec())
}

/// The configuration `extra` gives, the admin port on [`LOCAL0`].
pub fn config(extra: &[(&str, &str)]) -> Config {
    let mut c = Config::from_env_on(
        &MapEnv::from_iter(extra.iter().copied()),
        &Host {
            base_dir: PathBuf::from("/nonexistent"),
            cpus: 2,
        },
    )
    .unwrap();
    c.admin_addr = LOCAL0;
    c
}

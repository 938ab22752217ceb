//! Shared harness for the hbone integration tests: a CA, a server with a routing handler,
//! a client pool, and deterministic data for transfer checks.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use hbone::{
    ClientSettings, ConnectRequest, DefaultDialer, Identity, InboundRequest, Pool, Server,
    ServerSettings, StaticCertificate,
};
use http::{HeaderMap, StatusCode};
use mesh_testing::TestCa;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/cart";
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/ui";

pub fn id(s: &str) -> Identity {
    Identity::parse(s).unwrap()
}

/// What the test server does with a CONNECT, chosen by the authority's host:
/// * `ip:port` — connect to that TCP address and copy (an echo server in most tests);
/// * `sink.test:N` — read to EOF, reply with the SHA-256 of what arrived;
/// * `source.test:N` — send N bytes of [`pattern`] data, then read to EOF;
/// * `status.test:N` — reply with HTTP status N.
pub async fn route(req: InboundRequest) {
    match req.authority.host_name().map(str::to_string) {
        None => {
            let target = req.authority.socket_addr().unwrap();
            let Ok(mut tcp) = TcpStream::connect(target).await else {
                req.reject(StatusCode::SERVICE_UNAVAILABLE);
                return;
            };
            let stream = req.accept(HeaderMap::new()).unwrap();
            let _ = hbone::copy_tcp(&mut tcp, stream).await;
        }
        Some(host) if host == "sink.test" => {
            let mut stream = req.accept(HeaderMap::new()).unwrap();
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            stream.write_all(&hasher.finalize()).await.unwrap();
            stream.shutdown().await.unwrap();
        }
        Some(host) if host == "source.test" => {
            let len = req.authority.port() as u64 * 1024 * 1024;
            let mut stream = req.accept(HeaderMap::new()).unwrap();
            write_pattern(&mut stream, len).await;
            stream.shutdown().await.unwrap();
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
        }
        Some(host) if host == "status.test" => {
            let status = StatusCode::from_u16(req.authority.port()).unwrap();
            req.reject(status);
        }
        Some(_) => req.reject(StatusCode::BAD_REQUEST),
    }
}

/// Deterministic bytes (xorshift), so both ends can hash without storing a GiB.
pub struct Pattern(u64);

impl Pattern {
    pub fn new() -> Self {
        Pattern(0x9E37_79B9_7F4A_7C15)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}

pub async fn write_pattern<W: AsyncWriteExt + Unpin>(w: &mut W, len: u64) -> [u8; 32] {
    let mut pattern = Pattern::new();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n]).await.unwrap();
        left -= n as u64;
    }
    hasher.finalize().into()
}

pub async fn hash_to_eof<R: AsyncReadExt + Unpin>(r: &mut R) -> ([u8; 32], u64) {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    (hasher.finalize().into(), total)
}

/// A running server plus a pool that can reach it.
pub struct Env {
    pub ca: TestCa,
    pub server: Server,
    pub server_cert: Arc<StaticCertificate>,
    pub client_cert: Arc<StaticCertificate>,
    pub addr: SocketAddr,
    pub pool: Pool,
}

impl Env {
    pub async fn start() -> Env {
        Env::start_with(ServerSettings::default(), ClientSettings::default()).await
    }

    pub async fn start_with(server: ServerSettings, client: ClientSettings) -> Env {
        let ca = TestCa::new("test-root");
        let server_cert = StaticCertificate::new(ca.issue(SERVER_ID).workload_cert());
        let client_cert = StaticCertificate::new(ca.issue(CLIENT_ID).workload_cert());
        let server = Server::new(server, id(SERVER_ID), server_cert.clone(), route);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = server.clone();
        tokio::spawn(async move { s.serve(listener).await });
        let pool = Pool::new(client, client_cert.clone(), Arc::new(DefaultDialer));
        Env {
            ca,
            server,
            server_cert,
            client_cert,
            addr,
            pool,
        }
    }

    pub fn request(&self, authority: impl Into<String>) -> ConnectRequest {
        ConnectRequest {
            source: id(CLIENT_ID),
            expected: vec![id(SERVER_ID)],
            destination: self.addr,
            source_ip: None,
            authority: authority.into(),
            headers: HeaderMap::new(),
        }
    }
}

/// A TCP "application" socket pair: returns (app side, proxy side).
pub async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (app, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (app.unwrap(), accepted.unwrap().0)
}

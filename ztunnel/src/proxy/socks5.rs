//! SOCKS5 (`UNSTABLE_ENABLE_SOCKS5`): an explicit outbound entrance on `127.0.0.1:15080` of the
//! workload, for applications that cannot be captured by redirection rules.
//!
//! * No authentication (method `0x00`); anything else is refused with `0xFF`.
//! * `CONNECT` only (`0x07` otherwise) to an IPv4, IPv6 or domain address. A domain is looked up
//!   among the mesh's services (from the client's namespace), then in the node's resolvers.
//! * Success is answered with an unspecified bound address (clients ignore it), then the
//!   connection is handled exactly like one captured on 15001 for that destination: the same
//!   decision, HBONE or passthrough, policy, telemetry and access log.
//! * The handshake must finish within 10 s.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::debug;

use super::ProxyCtx;
use super::outbound;
use crate::socket::canonical;

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0x00;
const NO_ACCEPTABLE_METHOD: u8 = 0xFF;
const CONNECT: u8 = 0x01;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// SOCKS5 reply codes (RFC 1928 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    HostUnreachable = 0x04,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

/// What the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Addr(SocketAddr),
    Domain(String, u16),
}

/// Why a SOCKS5 handshake failed (with the reply owed to the client, if any).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("not SOCKS version 5 (got {0})")]
    Version(u8),
    #[error("the client offers no unauthenticated method")]
    NoAcceptableMethod,
    #[error("unsupported command {0:#x} (only CONNECT)")]
    Command(u8),
    #[error("unsupported address type {0:#x}")]
    AddressType(u8),
    #[error("domain name is not UTF-8")]
    Domain,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl HandshakeError {
    fn reply(&self) -> Option<Reply> {
        match self {
            HandshakeError::Command(_) => Some(Reply::CommandNotSupported),
            HandshakeError::AddressType(_) => Some(Reply::AddressTypeNotSupported),
            HandshakeError::Domain => Some(Reply::GeneralFailure),
            _ => None,
        }
    }
}

/// Reads the method negotiation and the request; answers the negotiation.
pub async fn handshake<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    s: &mut S,
) -> Result<Target, HandshakeError> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(HandshakeError::Version(head[0]));
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut methods).await?;
    if !methods.contains(&NO_AUTH) {
        s.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await?;
        return Err(HandshakeError::NoAcceptableMethod);
    }
    s.write_all(&[VERSION, NO_AUTH]).await?;

    let mut req = [0u8; 4];
    s.read_exact(&mut req).await?;
    if req[0] != VERSION {
        return Err(HandshakeError::Version(req[0]));
    }
    let target = match req[3] {
        0x01 => {
            let mut ip = [0u8; 4];
            s.read_exact(&mut ip).await?;
            Target::Addr(SocketAddr::new(
                Ipv4Addr::from(ip).into(),
                s.read_u16().await?,
            ))
        }
        0x04 => {
            let mut ip = [0u8; 16];
            s.read_exact(&mut ip).await?;
            Target::Addr(SocketAddr::new(
                Ipv6Addr::from(ip).into(),
                s.read_u16().await?,
            ))
        }
        0x03 => {
            let len = s.read_u8().await?;
            let mut name = vec![0u8; usize::from(len)];
            s.read_exact(&mut name).await?;
            let name = String::from_utf8(name).map_err(|_| HandshakeError::Domain)?;
            Target::Domain(name, s.read_u16().await?)
        }
        other => return Err(HandshakeError::AddressType(other)),
    };
    if req[1] != CONNECT {
        return Err(HandshakeError::Command(req[1]));
    }
    Ok(target)
}

/// Sends a reply with an unspecified bound address.
pub async fn reply<S: AsyncWriteExt + Unpin>(s: &mut S, code: Reply) -> std::io::Result<()> {
    s.write_all(&[VERSION, code as u8, 0, 0x01, 0, 0, 0, 0, 0, 0])
        .await
}

/// Accepts until `stop` turns true.
pub(crate) async fn serve(ctx: Arc<ProxyCtx>, listener: TcpListener, stop: watch::Receiver<bool>) {
    super::accept_loop(ctx, listener, stop, "socks5", handle).await;
}

async fn handle(ctx: Arc<ProxyCtx>, mut tcp: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    let client = canonical(peer);
    let target = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            debug!(%client, error = %e, "SOCKS5 handshake refused");
            if let Some(code) = e.reply() {
                let _ = reply(&mut tcp, code).await;
            }
            return;
        }
        Err(_) => {
            debug!(%client, "SOCKS5 handshake timed out");
            return;
        }
    };
    let Some(dst) = resolve(&ctx, &target).await else {
        debug!(%client, ?target, "SOCKS5 target does not resolve");
        let _ = reply(&mut tcp, Reply::HostUnreachable).await;
        return;
    };
    if reply(&mut tcp, Reply::Succeeded).await.is_err() {
        return;
    }
    debug!(%client, ?target, %dst, "SOCKS5 CONNECT");
    outbound::handle_to(ctx, tcp, client, dst, started).await;
}

/// A domain: a mesh service's VIP (from the client workload's namespace), else the node's
/// resolvers (IPv4 first).
async fn resolve(ctx: &ProxyCtx, target: &Target) -> Option<SocketAddr> {
    let (name, port) = match target {
        Target::Addr(a) => return Some(*a),
        Target::Domain(name, port) => (name.trim_end_matches('.'), *port),
    };
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    if let Ok(source) = ctx.local_workload().await {
        let view = ctx.state.read();
        if let Some(svc) = view.service_by_hostname(name, &source.namespace) {
            let vips: Vec<IpAddr> = svc
                .vips
                .iter()
                .filter(|v| v.network == ctx.settings.network)
                .map(|v| v.address)
                .collect();
            if let Some(ip) = vips.iter().find(|ip| ip.is_ipv4()).or(vips.first()) {
                return Some(SocketAddr::new(*ip, port));
            }
        }
    }
    let found: Vec<SocketAddr> = tokio::net::lookup_host((name, port)).await.ok()?.collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(client_bytes: &[u8]) -> (Result<Target, HandshakeError>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(client_bytes).await.unwrap();
        let result = handshake(&mut server).await;
        if let Err(e) = &result
            && let Some(code) = e.reply()
        {
            reply(&mut server, code).await.unwrap();
        }
        drop(server);
        let mut answered = Vec::new();
        client.read_to_end(&mut answered).await.unwrap();
        (result, answered)
    }

    #[tokio::test]
    async fn connect_to_ipv4_ipv6_and_domain() {
        let (t, answer) = run(&[5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 7, 0x1f, 0x90]).await;
        assert_eq!(t.unwrap(), Target::Addr("10.0.0.7:8080".parse().unwrap()));
        assert_eq!(answer, [5, 0]);

        let mut v6 = vec![5, 2, 2, 0, 5, 1, 0, 4];
        v6.extend_from_slice(&"fd00::7".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&80u16.to_be_bytes());
        let (t, _) = run(&v6).await;
        assert_eq!(t.unwrap(), Target::Addr("[fd00::7]:80".parse().unwrap()));

        let mut dom = vec![5, 1, 0, 5, 1, 0, 3, 7];
        dom.extend_from_slice(b"httpbin");
        dom.extend_from_slice(&8000u16.to_be_bytes());
        let (t, _) = run(&dom).await;
        assert_eq!(t.unwrap(), Target::Domain("httpbin".into(), 8000));
    }

    #[tokio::test]
    async fn refusals_carry_the_right_reply() {
        // Only username/password offered.
        let (t, answer) = run(&[5, 1, 2]).await;
        assert!(matches!(t, Err(HandshakeError::NoAcceptableMethod)));
        assert_eq!(answer, [5, 0xFF]);
        // BIND is not supported.
        let (t, answer) = run(&[5, 1, 0, 5, 2, 0, 1, 10, 0, 0, 7, 0, 80]).await;
        assert!(matches!(t, Err(HandshakeError::Command(2))));
        assert_eq!(answer[..2], [5, 0]);
        assert_eq!(answer[2..4], [5, Reply::CommandNotSupported as u8]);
        // Unknown address type.
        let (t, answer) = run(&[5, 1, 0, 5, 1, 0, 9]).await;
        assert!(matches!(t, Err(HandshakeError::AddressType(9))));
        assert_eq!(answer[3], Reply::AddressTypeNotSupported as u8);
        // SOCKS4.
        let (t, _) = run(&[4, 1, 0, 80, 10, 0, 0, 7, 0]).await;
        assert!(matches!(t, Err(HandshakeError::Version(4))));
    }
}

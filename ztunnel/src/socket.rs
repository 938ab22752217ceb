//! Socket creation and the socket options the data path needs.
//!
//! Every socket the proxy creates goes through a [`SocketFactory`]: in dedicated mode sockets
//! are plain sockets of our own network namespace; in shared (in-pod) mode they are created
//! inside the pod's network namespace and marked (`SO_MARK` 1337) so the pod's redirection rules
//! let them pass. The proxy code never needs to know which.
//!
//! Below the trait: [`HostSocketFactory`] (sockets of the current thread's network namespace,
//! dedicated mode and tests) and the option helpers the data path uses — [`original_dst`],
//! [`set_mark`], [`set_transparent`], [`TcpSettings::apply`] (nodelay, keepalive, user
//! timeout) — all written with `nix`/`socket2`, so this module needs no `unsafe`. The in-pod
//! factory lives in `inpod`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt};
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

use tokio::net::{TcpListener, TcpSocket, UdpSocket};

/// Creates the sockets of one proxy instance (one pod in shared mode, the process in dedicated
/// mode).
pub trait SocketFactory: Send + Sync + 'static {
    /// A TCP socket for an outbound connection (upstream app, HBONE dial, passthrough),
    /// of the family of `dst`, with the instance's mark applied.
    fn new_tcp(&self, dst: SocketAddr) -> io::Result<TcpSocket>;

    /// A listening TCP socket bound to `addr`; `transparent` asks for `IP_TRANSPARENT`
    /// (best effort unless the caller checks).
    fn tcp_listener(&self, addr: SocketAddr, transparent: bool) -> io::Result<TcpListener>;

    /// A bound UDP socket (DNS proxy).
    fn udp_bind(&self, addr: SocketAddr) -> io::Result<UdpSocket>;
}

/// Listen backlog of the proxy listeners (Istio's value for in-pod listeners).
pub const LISTEN_BACKLOG: i32 = 128;

/// TCP settings applied to accepted and upstream stream sockets (contract §2:
/// `KEEPALIVE_*`, `USER_TIMEOUT_ENABLED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSettings {
    /// `SO_KEEPALIVE` with these timers; `None` when `KEEPALIVE_ENABLED=false`.
    pub keepalive: Option<Keepalive>,
    /// Set `TCP_USER_TIMEOUT = time + retries × interval` (only with keepalive).
    pub user_timeout: bool,
}

/// TCP keepalive timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// `TCP_KEEPIDLE` (`KEEPALIVE_TIME`, 180 s).
    pub time: Duration,
    /// `TCP_KEEPINTVL` (`KEEPALIVE_INTERVAL`, 180 s).
    pub interval: Duration,
    /// `TCP_KEEPCNT` (`KEEPALIVE_RETRIES`, 9).
    pub retries: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            time: Duration::from_secs(180),
            interval: Duration::from_secs(180),
            retries: 9,
        }
    }
}

impl Default for TcpSettings {
    fn default() -> Self {
        TcpSettings {
            keepalive: Some(Keepalive::default()),
            user_timeout: false,
        }
    }
}

impl TcpSettings {
    /// The `TCP_USER_TIMEOUT` to set, if any: `time + retries × interval`.
    pub fn user_timeout_value(&self) -> Option<Duration> {
        let k = self.keepalive.filter(|_| self.user_timeout)?;
        Some(k.time + k.interval * k.retries)
    }

    /// `TCP_NODELAY` plus keepalive (and the user timeout) on a stream socket: what accepted
    /// sockets of 15001/15006 and every upstream socket get.
    pub fn apply(&self, sock: &impl AsFd) -> io::Result<()> {
        let s = SockRef::from(sock);
        s.set_tcp_nodelay(true)?;
        if let Some(k) = self.keepalive {
            let params = TcpKeepalive::new()
                .with_time(k.time)
                .with_interval(k.interval)
                .with_retries(k.retries);
            s.set_tcp_keepalive(&params)?;
        }
        if let Some(t) = self.user_timeout_value() {
            s.set_tcp_user_timeout(Some(t))?;
        }
        Ok(())
    }
}

/// `TCP_NODELAY` only (accepted sockets of 15008).
pub fn set_nodelay(sock: &impl AsFd) -> io::Result<()> {
    SockRef::from(sock).set_tcp_nodelay(true)
}

/// `SO_MARK` (needs `CAP_NET_ADMIN`).
pub fn set_mark(sock: &impl AsFd, mark: u32) -> io::Result<()> {
    SockRef::from(sock).set_mark(mark)
}

fn is_v6(sock: &SockRef<'_>) -> io::Result<bool> {
    Ok(sock.domain()? == Domain::IPV6)
}

/// `IP_TRANSPARENT` + `IP_FREEBIND` (IPv6 sockets: `IPV6_TRANSPARENT` + `IPV6_FREEBIND`, which
/// also cover v4-mapped traffic of a dual-stack socket). Needs `CAP_NET_ADMIN`; fails with
/// `EPERM` without it.
pub fn set_transparent(sock: &impl AsFd) -> io::Result<()> {
    let s = SockRef::from(sock);
    if is_v6(&s)? {
        s.set_ip_transparent_v6(true)?;
        s.set_freebind_v6(true)
    } else {
        s.set_ip_transparent_v4(true)?;
        s.set_freebind_v4(true)
    }
}

/// Whether `IP_TRANSPARENT` (or `IPV6_TRANSPARENT`) is set on the socket.
pub fn is_transparent(sock: &impl AsFd) -> io::Result<bool> {
    let s = SockRef::from(sock);
    if is_v6(&s)? {
        s.ip_transparent_v6()
    } else {
        s.ip_transparent_v4()
    }
}

/// An address with a v4-mapped IPv6 address (`::ffff:a.b.c.d`) turned into plain IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

/// A v4-mapped IPv6 address turned into plain IPv4; other addresses unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The original destination of a redirected connection: `SO_ORIGINAL_DST`, then
/// `IP6T_SO_ORIGINAL_DST`, else (not NATed, e.g. TPROXY or a direct connection) the local
/// address. v4-mapped results are canonicalised to IPv4.
pub fn original_dst(stream: &tokio::net::TcpStream) -> io::Result<SocketAddr> {
    if let Ok(sin) = getsockopt(stream, sockopt::OriginalDst) {
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        let port = u16::from_be(sin.sin_port);
        return Ok(SocketAddr::V4(SocketAddrV4::new(ip, port)));
    }
    if let Ok(sin6) = getsockopt(stream, sockopt::Ip6tOriginalDst) {
        let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
        let port = u16::from_be(sin6.sin6_port);
        return Ok(canonical(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))));
    }
    stream.local_addr().map(canonical)
}

/// Sockets of the current thread's network namespace, optionally marked: the factory of
/// dedicated mode (and of tests that run a proxy on a thread that entered a namespace).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostSocketFactory {
    /// `SO_MARK` for every socket (`PACKET_MARK`); `None` leaves sockets unmarked.
    pub mark: Option<u32>,
}

impl HostSocketFactory {
    fn raw(&self, addr: SocketAddr, ty: Type, protocol: Protocol) -> io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
        socket.set_nonblocking(true)?;
        socket.set_cloexec(true)?;
        if let Some(mark) = self.mark {
            socket.set_mark(mark)?;
        }
        Ok(socket)
    }
}

impl SocketFactory for HostSocketFactory {
    fn new_tcp(&self, dst: SocketAddr) -> io::Result<TcpSocket> {
        let socket = self.raw(dst, Type::STREAM, Protocol::TCP)?;
        Ok(TcpSocket::from_std_stream(socket.into()))
    }

    fn tcp_listener(&self, addr: SocketAddr, transparent: bool) -> io::Result<TcpListener> {
        let socket = self.raw(addr, Type::STREAM, Protocol::TCP)?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            // `[::]` also accepts IPv4 (v4-mapped), like Istio's listeners.
            socket.set_only_v6(false)?;
        }
        if transparent && let Err(e) = set_transparent(&socket) {
            tracing::debug!(%addr, error = %e, "IP_TRANSPARENT not available on listener");
        }
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        TcpListener::from_std(socket.into())
    }

    fn udp_bind(&self, addr: SocketAddr) -> io::Result<UdpSocket> {
        let socket = self.raw(addr, Type::DGRAM, Protocol::UDP)?;
        socket.bind(&addr.into())?;
        UdpSocket::from_std(socket.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalises_v4_mapped() {
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:80".parse().unwrap();
        assert_eq!(
            canonical(mapped),
            "10.1.2.3:80".parse::<SocketAddr>().unwrap()
        );
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(canonical(v6), v6);
        let v4: SocketAddr = "10.0.0.1:1".parse().unwrap();
        assert_eq!(canonical(v4), v4);
    }

    #[test]
    fn user_timeout_is_idle_plus_probes() {
        let mut s = TcpSettings::default();
        assert_eq!(s.user_timeout_value(), None);
        s.user_timeout = true;
        assert_eq!(
            s.user_timeout_value(),
            Some(Duration::from_secs(180 + 9 * 180))
        );
        s.keepalive = None;
        assert_eq!(s.user_timeout_value(), None);
    }

    #[tokio::test]
    async fn original_dst_falls_back_to_local_address() {
        let factory = HostSocketFactory::default();
        let listener = factory
            .tcp_listener("127.0.0.1:0".parse().unwrap(), false)
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let client = factory.new_tcp(addr).unwrap().connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(original_dst(&server).unwrap(), addr);
        TcpSettings::default().apply(&client).unwrap();
        let s = SockRef::from(&client);
        assert!(s.tcp_nodelay().unwrap());
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(180));
    }

    #[tokio::test]
    async fn dual_stack_listener_reports_v4_peers_canonically() {
        let factory = HostSocketFactory::default();
        let listener = factory
            .tcp_listener("[::]:0".parse().unwrap(), false)
            .expect("binding [::] needs IPv6 enabled (net.ipv6.conf.all.disable_ipv6=0)");
        let port = listener.local_addr().unwrap().port();
        let dst: SocketAddr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        let _client = factory.new_tcp(dst).unwrap().connect(dst).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(original_dst(&server).unwrap(), dst);
    }
}

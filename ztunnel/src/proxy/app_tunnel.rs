//! Application tunnels (Istio's "sandwich"): a destination workload whose `application_tunnel`
//! protocol is `PROXY` (a waypoint bound with `ambient.istio.io/waypoint-inbound-binding:
//! PROXY/<port>`) gets each inbound connection with a PROXY protocol v2 header in front of the
//! application bytes, carrying who the client is.
//!
//! * Upstream: `127.0.0.1:<port>` (`[::1]` for IPv6) from our own loopback address when
//!   `LOCALHOST_APP_TUNNEL` is on (the default), else the workload's address; the port is the
//!   tunnel's own when set, else the target port.
//! * Header: version 2, command `PROXY`, `STREAM` over IPv4 or IPv6 (IPv6 with mapped addresses
//!   when the two families differ); source = the HBONE client's address; destination = the
//!   CONNECT target, or for a hostname target a VIP of that service on our network (IPv4 first)
//!   with the requested port; TLV `0xD0` = the client's SPIFFE identity when it presented one.
//! * Written right after the 200 response, before any payload.
//!
//! The header is a dozen fixed bytes and two addresses, written here rather than through a
//! dependency.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hbone::{Authority, Identity};
use state::Workload;
use state::model::ApplicationTunnelProtocol;

use super::inbound::{InboundFacts, InboundPlan};

/// PROXY protocol v2 signature.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const VERSION_PROXY: u8 = 0x21;
const TCP4: u8 = 0x11;
const TCP6: u8 = 0x21;
/// Istio's TLV for the client's SPIFFE identity.
pub const TLV_PEER_IDENTITY: u8 = 0xD0;

/// The PROXY v2 header of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub identity: Option<Identity>,
}

/// Where an application-tunnelled connection goes, and what to tell the app first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppTunnel {
    pub upstream: SocketAddr,
    pub header: ProxyHeader,
}

/// The application tunnel for an inbound stream already decided by
/// [`super::inbound::decide_inbound`]; `None` when `local` has none.
pub fn decide(
    local: &Workload,
    network: &str,
    localhost: bool,
    facts: &InboundFacts<'_>,
    plan: &InboundPlan,
) -> Option<AppTunnel> {
    let tunnel = local.application_tunnel.as_ref()?;
    if tunnel.protocol != ApplicationTunnelProtocol::Proxy {
        return None;
    }
    let port = tunnel
        .port
        .filter(|p| *p != 0)
        .unwrap_or(plan.upstream.port());
    let ip = match (localhost, plan.upstream.ip()) {
        (true, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (true, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        (false, ip) => ip,
    };
    let dst = match facts.authority {
        Authority::Socket(addr) => *addr,
        Authority::Host { port, .. } => {
            let vips = plan.service.as_deref().map(|s| s.vips.as_slice());
            let on_network: Vec<IpAddr> = vips
                .unwrap_or_default()
                .iter()
                .filter(|v| v.network == network)
                .map(|v| v.address)
                .collect();
            let vip = on_network
                .iter()
                .find(|a| a.is_ipv4())
                .or(on_network.first())
                .copied()
                .unwrap_or(plan.upstream.ip());
            SocketAddr::new(vip, *port)
        }
    };
    Some(AppTunnel {
        upstream: SocketAddr::new(ip, port),
        header: ProxyHeader {
            src: facts.peer,
            dst,
            identity: facts.peer_identity.cloned(),
        },
    })
}

impl ProxyHeader {
    /// The header's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut addresses = Vec::with_capacity(36);
        let family = match (self.src, self.dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                addresses.extend_from_slice(&s.ip().octets());
                addresses.extend_from_slice(&d.ip().octets());
                TCP4
            }
            (s, d) => {
                addresses.extend_from_slice(&v6(s.ip()).octets());
                addresses.extend_from_slice(&v6(d.ip()).octets());
                TCP6
            }
        };
        addresses.extend_from_slice(&self.src.port().to_be_bytes());
        addresses.extend_from_slice(&self.dst.port().to_be_bytes());
        if let Some(id) = &self.identity {
            let value = id.to_string();
            // SPIFFE ids are far below 64 KiB; cut rather than overflow the length field.
            let value = &value.as_bytes()[..value.len().min(usize::from(u16::MAX))];
            addresses.push(TLV_PEER_IDENTITY);
            addresses.extend_from_slice(&(value.len() as u16).to_be_bytes());
            addresses.extend_from_slice(value);
        }
        let mut out = Vec::with_capacity(16 + addresses.len());
        out.extend_from_slice(&SIGNATURE);
        out.push(VERSION_PROXY);
        out.push(family);
        out.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        out.extend_from_slice(&addresses);
        out
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_header_with_the_peer_identity() {
        let id = Identity::parse("spiffe://cluster.local/ns/a/sa/b").unwrap();
        let h = ProxyHeader {
            src: addr("10.0.0.1:40000"),
            dst: addr("10.0.0.2:8080"),
            identity: Some(id.clone()),
        };
        let bytes = h.encode();
        assert_eq!(&bytes[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(bytes[12], 0x21, "version 2, PROXY");
        assert_eq!(bytes[13], 0x11, "TCP over IPv4");
        let tlv_len = 3 + id.to_string().len();
        assert_eq!(
            u16::from_be_bytes([bytes[14], bytes[15]]) as usize,
            12 + tlv_len
        );
        assert_eq!(&bytes[16..20], &[10, 0, 0, 1]);
        assert_eq!(&bytes[20..24], &[10, 0, 0, 2]);
        assert_eq!(u16::from_be_bytes([bytes[24], bytes[25]]), 40000);
        assert_eq!(u16::from_be_bytes([bytes[26], bytes[27]]), 8080);
        assert_eq!(bytes[28], 0xD0);
        assert_eq!(
            u16::from_be_bytes([bytes[29], bytes[30]]) as usize,
            id.to_string().len()
        );
        assert_eq!(&bytes[31..], id.to_string().as_bytes());
    }

    #[test]
    fn mixed_families_use_ipv6_and_no_identity_means_no_tlv() {
        let h = ProxyHeader {
            src: addr("10.0.0.1:1"),
            dst: addr("[fd00::2]:80"),
            identity: None,
        };
        let bytes = h.encode();
        assert_eq!(bytes[13], 0x21, "TCP over IPv6");
        assert_eq!(u16::from_be_bytes([bytes[14], bytes[15]]), 36);
        assert_eq!(bytes.len(), 16 + 36);
        assert_eq!(
            &bytes[16..32],
            &Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped().octets()
        );
    }
}

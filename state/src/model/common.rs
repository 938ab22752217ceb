//! Addresses shared by workloads, services and policies.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use proto::istio::workload as pb;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ConversionError;
use super::convert;

/// An IP on a network (`<network>/<ip>`; the default network is the empty string).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkAddress {
    pub network: String,
    pub address: IpAddr,
}

impl NetworkAddress {
    pub fn new(network: impl Into<String>, address: IpAddr) -> Self {
        NetworkAddress {
            network: network.into(),
            address,
        }
    }
}

impl fmt::Display for NetworkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.address)
    }
}

impl Serialize for NetworkAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for NetworkAddress {
    type Err = String;
    /// Parses `<network>/<ip>`; the network may be empty (`/10.0.0.1`) but the `/` is required.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (network, ip) = s
            .rsplit_once('/')
            .ok_or_else(|| format!("{s:?} is not of the form <network>/<ip>"))?;
        let address = ip
            .parse()
            .map_err(|_| format!("{s:?}: {ip:?} is not an IP address"))?;
        Ok(NetworkAddress::new(network, address))
    }
}

/// A service key: `<namespace>/<hostname>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespacedHostname {
    pub namespace: String,
    pub hostname: String,
}

impl NamespacedHostname {
    pub fn new(namespace: impl Into<String>, hostname: impl Into<String>) -> Self {
        NamespacedHostname {
            namespace: namespace.into(),
            hostname: hostname.into(),
        }
    }
}

impl fmt::Display for NamespacedHostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.hostname)
    }
}

impl Serialize for NamespacedHostname {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where a waypoint or network gateway lives: a service/workload hostname or an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GatewayDestination {
    Hostname(NamespacedHostname),
    Address(NetworkAddress),
}

impl fmt::Display for GatewayDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatewayDestination::Hostname(h) => h.fmt(f),
            GatewayDestination::Address(a) => a.fmt(f),
        }
    }
}

impl Serialize for GatewayDestination {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for GatewayDestination {
    type Err = String;
    /// `<net>/<ip>` when the part after the last `/` is an IP, else `<ns>/<hostname>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (left, right) = s.split_once('/').ok_or_else(|| {
            format!("{s:?} is not of the form <network>/<ip> or <namespace>/<hostname>")
        })?;
        if let Ok(ip) = right.parse::<IpAddr>() {
            return Ok(GatewayDestination::Address(NetworkAddress::new(left, ip)));
        }
        if left.is_empty() || right.is_empty() {
            return Err(format!(
                "{s:?}: a hostname destination needs both <namespace> and <hostname>"
            ));
        }
        Ok(GatewayDestination::Hostname(NamespacedHostname::new(
            left, right,
        )))
    }
}

/// A waypoint or network gateway reference plus the port it accepts HBONE on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddress {
    pub destination: GatewayDestination,
    pub hbone_mtls_port: u16,
}

impl GatewayAddress {
    pub(crate) fn from_proto(field: &str, g: &pb::GatewayAddress) -> Result<Self, ConversionError> {
        use pb::gateway_address::Destination;
        let destination = match &g.destination {
            None => {
                return Err(ConversionError::Missing {
                    field: format!("{field}.destination"),
                });
            }
            Some(Destination::Hostname(h)) => {
                convert::required(&format!("{field}.hostname.hostname"), &h.hostname)?;
                GatewayDestination::Hostname(NamespacedHostname::new(&h.namespace, &h.hostname))
            }
            Some(Destination::Address(a)) => {
                let ip = convert::ip(|| format!("{field}.address.address"), &a.address)?;
                GatewayDestination::Address(NetworkAddress::new(&a.network, ip))
            }
        };
        let hbone_mtls_port =
            convert::port(|| format!("{field}.hboneMtlsPort"), g.hbone_mtls_port)?;
        Ok(GatewayAddress {
            destination,
            hbone_mtls_port,
        })
    }
}

/// An IP prefix (`10.0.0.0/8`). The address is kept as given; containment masks both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    address: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Builds a prefix; `None` if `prefix` is longer than the address (32 or 128 bits).
    pub fn new(address: IpAddr, prefix: u8) -> Option<Self> {
        (prefix <= max_prefix(address)).then_some(Cidr { address, prefix })
    }

    /// The host prefix (`/32` or `/128`) of one address.
    pub fn host(address: IpAddr) -> Self {
        Cidr {
            address,
            prefix: max_prefix(address),
        }
    }

    pub fn address(&self) -> IpAddr {
        self.address
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies inside the prefix. Addresses of the other family never do.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    pub(crate) fn from_parts(
        field: impl Fn() -> String,
        bytes: &[u8],
        len: u32,
    ) -> Result<Self, ConversionError> {
        let address = convert::ip(&field, bytes)?;
        let max = max_prefix(address);
        u8::try_from(len)
            .ok()
            .and_then(|p| Cidr::new(address, p))
            .ok_or(ConversionError::BadPrefix {
                field: field(),
                len,
                max,
            })
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for Cidr {
    type Err = String;
    /// Parses `ip/prefix`; a bare IP is a host prefix.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            None => s
                .parse()
                .map(Cidr::host)
                .map_err(|_| format!("{s:?} is not an IP address or CIDR")),
            Some((ip, len)) => {
                let ip: IpAddr = ip
                    .parse()
                    .map_err(|_| format!("{s:?}: {ip:?} is not an IP address"))?;
                let len: u8 = len
                    .parse()
                    .map_err(|_| format!("{s:?}: {len:?} is not a prefix length"))?;
                Cidr::new(ip, len)
                    .ok_or_else(|| format!("{s:?}: prefix length {len} is longer than the address"))
            }
        }
    }
}

/// Serializes a `hbone::Identity` as its `spiffe://` string.
pub(crate) fn serialize_identity<S: Serializer>(
    id: &hbone::Identity,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// Deserializes from the string form (`FromStr`), so each bad element is reported at its own
/// position in a YAML/JSON document.
macro_rules! deserialize_from_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

deserialize_from_str!(NetworkAddress, GatewayDestination);

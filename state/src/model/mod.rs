//! The internal model of the mesh: what the proxy keeps of each xDS resource.
//!
//! Every type here is built from its protobuf message with `TryFrom`, which validates the whole
//! message (IP lengths, enum values, prefix lengths, identity parts, port ranges) and fails with a
//! [`ConversionError`] naming the offending field, so the xDS client can NACK `"<name>: <reason>"`.
//! Unknown enum numbers are rejected, as Istio's ztunnel does.
//!
//! Every type serializes (camelCase, IPs as strings, enums by name) for `/config_dump`; enum names
//! are the same strings the `LOCAL_XDS_PATH` static config accepts.

mod common;
mod policy;
mod service;
mod workload;

#[cfg(test)]
mod tests;

pub use common::{Cidr, GatewayAddress, GatewayDestination, NamespacedHostname, NetworkAddress};
pub use policy::{Match, Policy, PolicyAction, PolicyScope, ServiceAccountMatch, StringMatch};
pub use service::{
    IpFamilies, LoadBalancer, LoadBalancerHealthPolicy, LoadBalancerMode, LoadBalancerScope,
    NetworkCidr, Service, Visibility, WeightedWaypoint,
};
pub(crate) use workload::workload_identity;
pub use workload::{
    ApplicationTunnel, ApplicationTunnelProtocol, DEFAULT_CLUSTER_ID, HealthStatus, Locality,
    NetworkMode, PortMap, TunnelProtocol, Workload, WorkloadType,
};

/// Why a protobuf resource could not be turned into the internal model.
///
/// `field` is a path inside the resource (`workload.addresses[1]`,
/// `rules[0].clauses[1].matches[0].sourceIps[2]`), so the NACK tells the operator where to look.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    #[error("{field}: required but missing or empty")]
    Missing { field: String },
    #[error("{field}: an IP address must be 4 or 16 bytes, got {len}")]
    BadIpLength { field: String, len: usize },
    #[error("{field}: unknown {kind} value {value}")]
    UnknownEnum {
        field: String,
        kind: &'static str,
        value: i32,
    },
    #[error("{field}: {value} is not supported")]
    Unsupported { field: String, value: &'static str },
    #[error("{field}: prefix length {len} is longer than the {max} bits of the address")]
    BadPrefix { field: String, len: u32, max: u8 },
    #[error("{field}: port {value} is out of range (0-65535)")]
    BadPort { field: String, value: u32 },
    #[error("{field}: not a valid SPIFFE identity: {source}")]
    BadIdentity {
        field: String,
        #[source]
        source: hbone::IdentityError,
    },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("address resource carries neither a workload nor a service")]
    EmptyAddress,
}

impl ConversionError {
    /// The field path the error is about (empty for [`ConversionError::EmptyAddress`]).
    pub fn field(&self) -> &str {
        match self {
            ConversionError::Missing { field }
            | ConversionError::BadIpLength { field, .. }
            | ConversionError::UnknownEnum { field, .. }
            | ConversionError::Unsupported { field, .. }
            | ConversionError::BadPrefix { field, .. }
            | ConversionError::BadPort { field, .. }
            | ConversionError::BadIdentity { field, .. }
            | ConversionError::Invalid { field, .. } => field,
            ConversionError::EmptyAddress => "",
        }
    }
}

/// Small helpers shared by the conversions.
pub(crate) mod convert {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::ConversionError;

    pub(crate) fn ip(field: impl Fn() -> String, bytes: &[u8]) -> Result<IpAddr, ConversionError> {
        match bytes.len() {
            4 => {
                let b: [u8; 4] = bytes.try_into().expect("length checked");
                Ok(IpAddr::V4(Ipv4Addr::from(b)))
            }
            16 => {
                let b: [u8; 16] = bytes.try_into().expect("length checked");
                Ok(IpAddr::V6(Ipv6Addr::from(b)))
            }
            len => Err(ConversionError::BadIpLength {
                field: field(),
                len,
            }),
        }
    }

    pub(crate) fn port(field: impl Fn() -> String, value: u32) -> Result<u16, ConversionError> {
        u16::try_from(value).map_err(|_| ConversionError::BadPort {
            field: field(),
            value,
        })
    }

    pub(crate) fn required(field: &str, value: &str) -> Result<(), ConversionError> {
        if value.is_empty() {
            Err(ConversionError::Missing {
                field: field.to_string(),
            })
        } else {
            Ok(())
        }
    }

    /// Converts an open proto3 enum number with the generated `TryFrom<i32>`, naming the field on
    /// unknown values.
    pub(crate) fn enumeration<E: TryFrom<i32>>(
        field: &str,
        kind: &'static str,
        value: i32,
    ) -> Result<E, ConversionError> {
        E::try_from(value).map_err(|_| ConversionError::UnknownEnum {
            field: field.to_string(),
            kind,
            value,
        })
    }
}

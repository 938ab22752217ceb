//! Packing messages into `google.protobuf.Any` and back, as xDS resources
//! travel.

use prost::Message;
use prost_types::Any;

/// Why an `Any` could not be turned into the expected message.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The `Any` holds a different message type than the caller asked for.
    #[error(
        "resource has type URL {actual:?} but {expected:?} was expected; check the xDS type_url the resource was sent under"
    )]
    TypeMismatch {
        /// The type URL the caller expected.
        expected: String,
        /// The type URL found in the `Any`.
        actual: String,
    },
    /// The type matched but the payload is not a valid encoding of it.
    #[error("resource of type {type_url:?} is not a valid encoding of that message: {source}")]
    Decode {
        /// The type URL of the resource.
        type_url: String,
        /// What the decoder rejected.
        #[source]
        source: prost::DecodeError,
    },
}

/// Wraps `msg` in an `Any` under `type_url`
/// (for example [`ADDRESS_TYPE_URL`](crate::ADDRESS_TYPE_URL)).
pub fn pack_any<M: Message>(type_url: &str, msg: &M) -> Any {
    Any {
        type_url: type_url.to_owned(),
        value: msg.encode_to_vec(),
    }
}

/// Decodes the message inside `any`, after checking that it is of type
/// `expected_type_url`.
///
/// As protobuf's own `Any.Is` does, the check compares the fully-qualified
/// message names (the part after the last `/`), so a resource whose URL uses
/// another host prefix than `type.googleapis.com` is still accepted.
pub fn unpack_any<T: Message + Default>(
    any: &Any,
    expected_type_url: &str,
) -> Result<T, UnpackError> {
    if message_name(&any.type_url) != message_name(expected_type_url) {
        return Err(UnpackError::TypeMismatch {
            expected: expected_type_url.to_owned(),
            actual: any.type_url.clone(),
        });
    }
    T::decode(any.value.as_slice()).map_err(|source| UnpackError::Decode {
        type_url: any.type_url.clone(),
        source,
    })
}

/// The fully-qualified message name of a type URL.
fn message_name(type_url: &str) -> &str {
    type_url.rsplit_once('/').map_or(type_url, |(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::workload::{Address, Workload, address};
    use crate::{ADDRESS_TYPE_URL, WORKLOAD_TYPE_URL};

    fn workload_address() -> Address {
        Address {
            r#type: Some(address::Type::Workload(Workload {
                uid: "Kubernetes//Pod/default/echo".into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn pack_then_unpack() {
        let msg = workload_address();
        let any = pack_any(ADDRESS_TYPE_URL, &msg);
        assert_eq!(any.type_url, ADDRESS_TYPE_URL);
        let back: Address = unpack_any(&any, ADDRESS_TYPE_URL).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn unpack_accepts_other_host_prefix() {
        let any = pack_any("example.com/istio.workload.Address", &workload_address());
        let back: Address = unpack_any(&any, ADDRESS_TYPE_URL).unwrap();
        assert_eq!(back, workload_address());
    }

    #[test]
    fn unpack_rejects_wrong_type() {
        let any = pack_any(ADDRESS_TYPE_URL, &workload_address());
        let err = unpack_any::<Workload>(&any, WORKLOAD_TYPE_URL).unwrap_err();
        assert!(matches!(err, UnpackError::TypeMismatch { .. }), "{err}");
        assert!(err.to_string().contains("istio.workload.Address"));
    }

    #[test]
    fn unpack_rejects_garbage() {
        let any = Any {
            type_url: ADDRESS_TYPE_URL.into(),
            // Field 1, length-delimited, claims 5 bytes but only 1 follows.
            value: vec![0x0a, 0x05, 0x00],
        };
        let err = unpack_any::<Address>(&any, ADDRESS_TYPE_URL).unwrap_err();
        assert!(matches!(err, UnpackError::Decode { .. }), "{err}");
    }
}

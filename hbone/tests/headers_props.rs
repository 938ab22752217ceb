//! Property tests for the CONNECT `:authority` and request-header parsers: they never panic on
//! arbitrary input, and what we build parses back to the same value.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::num::{NonZeroU64, NonZeroU128};

use hbone::authority::Authority;
use hbone::headers::{
    BAGGAGE, Baggage, FORWARDED, Forwarded, RequestMeta, TRACEPARENT, TraceParent, WorkloadType,
    X_FORWARDED_NETWORK,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

/// Strings made mostly of the characters the parsers care about, so that the interesting
/// branches are reached far more often than with uniformly random text.
fn syntax_soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("for=".to_owned()),
        Just("host=".to_owned()),
        Just("k8s.pod.name=".to_owned()),
        Just("service.name=".to_owned()),
        Just("00-".to_owned()),
        "[\"\\\\;,=:\\[\\]%@/ \t.0-9a-fA-F-]{1,8}",
        any::<IpAddr>().prop_map(|ip| ip.to_string()),
        "\\PC{1,4}",
    ];
    prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        syntax_soup().prop_map(String::into_bytes),
    ]
}

fn v6_socket() -> impl Strategy<Value = SocketAddr> {
    (any::<Ipv6Addr>(), any::<u16>(), any::<u32>())
        .prop_map(|(ip, port, scope)| SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)))
}

fn socket() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<Ipv4Addr>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip.into(), port)),
        v6_socket(),
    ]
}

/// A valid DNS name: 1 to 4 labels of up to 63 bytes, at most 253 bytes, last label with a
/// letter.
fn dns_name() -> impl Strategy<Value = String> {
    let label = "[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?";
    let last = "[a-zA-Z_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?";
    (prop::collection::vec(label, 0..4), last)
        .prop_map(|(mut labels, last)| {
            labels.push(last);
            labels.join(".")
        })
        .prop_filter("at most 253 bytes", |name| name.len() <= 253)
}

fn workload_type() -> impl Strategy<Value = WorkloadType> {
    prop::sample::select(WorkloadType::ALL.to_vec())
}

/// Any text without control characters, empty included.
fn safe_value() -> impl Strategy<Value = Option<String>> {
    prop::option::of("\\PC{0,24}")
}

fn baggage() -> impl Strategy<Value = Baggage> {
    (
        (safe_value(), safe_value(), safe_value()),
        prop::option::of(workload_type()),
        (safe_value(), safe_value(), safe_value(), safe_value()),
    )
        .prop_map(
            |((cluster_id, namespace, workload_name), workload_type, (sn, sv, region, zone))| {
                Baggage {
                    cluster_id,
                    namespace,
                    workload_name,
                    workload_type,
                    service_name: sn,
                    service_version: sv,
                    region,
                    zone,
                }
            },
        )
}

/// What [`Baggage`] is expected to look like after a trip over the wire.
fn normalized(mut b: Baggage) -> Baggage {
    for field in [
        &mut b.cluster_id,
        &mut b.namespace,
        &mut b.workload_name,
        &mut b.service_name,
        &mut b.service_version,
        &mut b.region,
        &mut b.zone,
    ] {
        *field = field.take().filter(|v| !v.is_empty());
    }
    b.workload_type = match b.workload_name {
        Some(_) => Some(b.workload_type.unwrap_or(WorkloadType::Deployment)),
        None => None,
    };
    b
}

proptest! {
    #[test]
    fn authority_parse_never_panics(s in prop_oneof![any::<String>(), syntax_soup()]) {
        if let Ok(authority) = Authority::parse(&s) {
            // Whatever parses prints canonically and parses back to the same value.
            prop_assert_eq!(Authority::parse(&authority.to_string()), Ok(authority));
        }
    }

    #[test]
    fn authority_socket_round_trips(ip in any::<IpAddr>(), port in 1..=u16::MAX) {
        let authority = Authority::Socket(SocketAddr::new(ip, port));
        let text = authority.to_string();
        prop_assert_eq!(text.starts_with('['), ip.is_ipv6());
        prop_assert_eq!(Authority::parse(&text), Ok(authority));
    }

    #[test]
    fn authority_host_round_trips(host in dns_name(), port in 1..=u16::MAX) {
        let authority = Authority::from_host(host.clone(), port).unwrap();
        prop_assert_eq!(authority.to_string(), format!("{host}:{port}"));
        prop_assert_eq!(Authority::parse(&authority.to_string()), Ok(authority));
    }

    #[test]
    fn forwarded_parse_never_panics(values in prop::collection::vec(bytes(), 0..4)) {
        if let Ok(forwarded) = Forwarded::from_header_values(&values) {
            prop_assert!(forwarded.for_addr.is_some() || forwarded.host.is_some());
        }
    }

    #[test]
    fn forwarded_round_trips(
        addr in socket(),
        host in prop::option::of(prop_oneof![dns_name(), "[^\\s\\p{Cc}]{1,40}"]),
        drop_addr in any::<bool>(),
    ) {
        // At least one of the two is always present.
        let for_addr = (host.is_none() || !drop_addr).then_some(addr);
        let forwarded = Forwarded { for_addr, host };
        let value = forwarded.to_header_value().unwrap();
        prop_assert_eq!(Forwarded::parse(value.as_bytes()), Ok(forwarded));
    }

    #[test]
    fn baggage_parse_never_panics(values in prop::collection::vec(bytes(), 0..4)) {
        let _ = Baggage::from_header_values(&values);
    }

    #[test]
    fn baggage_round_trips(baggage in baggage()) {
        let expected = normalized(baggage.clone());
        match baggage.to_header_value() {
            Some(value) => prop_assert_eq!(Baggage::parse(value.as_bytes()), expected),
            None => prop_assert!(expected.is_empty()),
        }
    }

    #[test]
    fn baggage_merges_first_wins(first in baggage(), second in baggage()) {
        let values: Vec<HeaderValue> =
            [&first, &second].into_iter().filter_map(Baggage::to_header_value).collect();
        let merged = Baggage::from_header_values(&values);
        let (first, second) = (normalized(first), normalized(second));
        let pick = |a: &Option<String>, b: &Option<String>| a.clone().or_else(|| b.clone());
        prop_assert_eq!(merged.cluster_id, pick(&first.cluster_id, &second.cluster_id));
        prop_assert_eq!(merged.workload_name, pick(&first.workload_name, &second.workload_name));
        prop_assert_eq!(merged.workload_type, first.workload_type.or(second.workload_type));
        prop_assert_eq!(merged.zone, pick(&first.zone, &second.zone));
    }

    #[test]
    fn traceparent_parse_never_panics(input in prop_oneof![
        bytes(),
        "[0-9a-fA-F-]{55}".prop_map(String::into_bytes),
        "00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}".prop_map(String::into_bytes),
    ]) {
        if let Ok(tp) = TraceParent::parse(&input) {
            prop_assert_eq!(tp.to_string().into_bytes(), input);
        }
    }

    #[test]
    fn traceparent_round_trips(trace in any::<NonZeroU128>(), parent in any::<NonZeroU64>(), flags in any::<u8>()) {
        let tp = TraceParent::new(trace, parent, flags);
        prop_assert_eq!(TraceParent::parse(tp.to_header_value().as_bytes()), Ok(tp));
        prop_assert_eq!(tp.to_string().parse::<TraceParent>(), Ok(tp));
    }

    #[test]
    fn request_meta_never_panics(headers in prop::collection::vec(
        (prop::sample::select(vec![BAGGAGE, FORWARDED, TRACEPARENT, X_FORWARDED_NETWORK]), bytes()),
        0..8,
    )) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                map.append(HeaderName::from_static(name), value);
            }
        }
        let _ = RequestMeta::from_headers(&map);
    }
}

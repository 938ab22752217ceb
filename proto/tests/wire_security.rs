//! `istio.security` decoded from hand-assembled bytes (see `common` for the
//! conventions).

#[macro_use]
mod common;

use common::decode_exact;
use prost::Message;
use proto::istio::security::{
    Action, Address, Authorization, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
    string_match::MatchType,
};

/// `Match` with every field set, one value each (two for destination ports).
fn full_match() -> Vec<u8> {
    let mut ipv6_loopback = [0u8; 16];
    ipv6_loopback[15] = 1;
    nested![0x70 =>
        [0x0a, 0x04, 0x0a, 0x02], b"ns";       // namespaces = 1: StringMatch{exact = 1}
        [0x12, 0x07, 0x12, 0x05], b"kube-";    // not_namespaces = 2: StringMatch{prefix = 2}
        [0x1a, 0x07, 0x1a, 0x05], b"/sa/a";    // principals = 3: StringMatch{suffix = 3}
        [0x22, 0x02, 0x22, 0x00];              // not_principals = 4: StringMatch{presence = 4: Empty}
        [0x2a, 0x08,                           // source_ips = 5: Address
            0x0a, 0x04, 0x0a, 0x00, 0x00, 0x00, //   address = 1: 10.0.0.0
            0x10, 0x08];                       //   length = 2: 8
        [0x32, 0x08,                           // not_source_ips = 6: Address
            0x0a, 0x04, 0xc0, 0xa8, 0x01, 0x01, //   address = 1: 192.168.1.1
            0x10, 0x20];                       //   length = 2: 32
        [0x3a, 0x15, 0x0a, 0x10], ipv6_loopback; // destination_ips = 7: Address{address = 1: ::1
        [0x10, 0x80, 0x01];                    //   length = 2: 128}
        [0x42, 0x08,                           // not_destination_ips = 8: Address
            0x0a, 0x04, 0x0a, 0x01, 0x00, 0x00, //   address = 1: 10.1.0.0
            0x10, 0x10];                       //   length = 2: 16
        [0x4a, 0x03, 0x50, 0xbb, 0x03];        // destination_ports = 9, packed: 80, 443
        [0x52, 0x01, 0x16];                    // not_destination_ports = 10, packed: 22
        [0x5a, 0x08,                           // service_accounts = 11: ServiceAccountMatch
            0x0a, 0x02], b"ns";                //   namespace = 1
        [0x12, 0x02], b"sa";                   //   serviceAccount = 2
        [0x62, 0x06,                           // not_service_accounts = 12: ServiceAccountMatch
            0x0a, 0x01], b"x";                 //   namespace = 1
        [0x12, 0x01], b"y";                    //   serviceAccount = 2
        [0x6a, 0x03, 0x0a, 0x01], b"m";        // extensions = 13: Extension{name = 1}
    ]
}

fn assert_full_match(m: &Match) {
    let exact = |v: &str| StringMatch {
        match_type: Some(MatchType::Exact(v.into())),
    };
    let mut ipv6_loopback = vec![0u8; 16];
    ipv6_loopback[15] = 1;
    assert_eq!(m.namespaces, vec![exact("ns")]);
    assert_eq!(
        m.not_namespaces[0].match_type,
        Some(MatchType::Prefix("kube-".into()))
    );
    assert_eq!(
        m.principals[0].match_type,
        Some(MatchType::Suffix("/sa/a".into()))
    );
    assert_eq!(
        m.not_principals[0].match_type,
        Some(MatchType::Presence(()))
    );
    let addr = |address: Vec<u8>, length| Address { address, length };
    assert_eq!(m.source_ips, vec![addr(vec![10, 0, 0, 0], 8)]);
    assert_eq!(m.not_source_ips, vec![addr(vec![192, 168, 1, 1], 32)]);
    assert_eq!(m.destination_ips, vec![addr(ipv6_loopback, 128)]);
    assert_eq!(m.not_destination_ips, vec![addr(vec![10, 1, 0, 0], 16)]);
    assert_eq!(m.destination_ports, vec![80, 443]);
    assert_eq!(m.not_destination_ports, vec![22]);
    let sa = |namespace: &str, service_account: &str| ServiceAccountMatch {
        namespace: namespace.into(),
        service_account: service_account.into(),
    };
    assert_eq!(m.service_accounts, vec![sa("ns", "sa")]);
    assert_eq!(m.not_service_accounts, vec![sa("x", "y")]);
    assert_eq!(m.extensions.len(), 1);
    assert_eq!(m.extensions[0].name, "m");
}

#[test]
fn match_with_every_field() {
    let m: Match = decode_exact(&full_match());
    assert_full_match(&m);
}

#[test]
fn authorization_with_nested_rules() {
    let clause = nested![0x72 => [0x12, 0x70], full_match()]; // Clause.matches = 2
    let rule = nested![0x74 => [0x0a, 0x72], clause]; // Rule.clauses = 1
    let bytes = wire![
        [0x0a, 0x01], b"p";             // name = 1
        [0x12, 0x02], b"ns";            // namespace = 2
        [0x18, 0x02];                   // scope = 3: WORKLOAD_SELECTOR
        [0x20, 0x01];                   // action = 4: DENY
        [0x2a, 0x74], rule;             // rules = 5
        [0x30, 0x01];                   // dry_run = 6: true
        [0x3a, 0x03, 0x0a, 0x01], b"x"; // extensions = 7: istio.workload.Extension{name = 1}
    ];
    let a: Authorization = decode_exact(&bytes);
    assert_eq!(a.name, "p");
    assert_eq!(a.namespace, "ns");
    assert_eq!(a.scope(), Scope::WorkloadSelector);
    assert_eq!(a.action(), Action::Deny);
    assert!(a.dry_run);
    assert_eq!(a.extensions.len(), 1);
    assert_eq!(a.extensions[0].name, "x");
    assert_eq!(a.rules.len(), 1);
    assert_eq!(a.rules[0].clauses.len(), 1);
    assert_eq!(a.rules[0].clauses[0].matches.len(), 1);
    assert_full_match(&a.rules[0].clauses[0].matches[0]);
}

#[test]
fn clause_matches_is_field_2_not_1() {
    // matches = 2: one empty Match.
    let c: Clause = decode_exact(&[0x12, 0x00]);
    assert_eq!(c.matches, vec![Match::default()]);
    // Field 1 is unused: the same bytes under tag 1 are skipped.
    let c = Clause::decode(&[0x0a, 0x00][..]).unwrap();
    assert!(c.matches.is_empty());
    // And encoding writes field 2.
    let encoded = Clause {
        matches: vec![Match::default()],
    }
    .encode_to_vec();
    assert_eq!(encoded, [0x12, 0x00]);
}

#[test]
fn rule_clauses_is_field_1() {
    let r: Rule = decode_exact(&[0x0a, 0x00, 0x0a, 0x00]); // clauses = 1, twice
    assert_eq!(r.clauses.len(), 2);
}

#[test]
fn destination_ports_are_packed_field_9() {
    let m = Match {
        destination_ports: vec![80, 443],
        not_destination_ports: vec![22],
        ..Default::default()
    };
    assert_eq!(
        m.encode_to_vec(),
        [
            0x4a, 0x03, 0x50, 0xbb, 0x03, // destination_ports = 9, packed: 80, 443
            0x52, 0x01, 0x16, //             not_destination_ports = 10, packed: 22
        ]
    );
    // Parsers must also accept the unpacked form (one varint tag per value).
    let unpacked = [
        0x48, 0x50, //       destination_ports = 9 (varint): 80
        0x48, 0xbb, 0x03, // destination_ports = 9 (varint): 443
    ];
    let m = Match::decode(&unpacked[..]).unwrap();
    assert_eq!(m.destination_ports, vec![80, 443]);
}

#[test]
fn every_string_match_variant() {
    let cases: [(&[u8], MatchType); 4] = [
        (&[0x0a, 0x01, b'a'], MatchType::Exact("a".into())), // exact = 1
        (&[0x12, 0x01, b'b'], MatchType::Prefix("b".into())), // prefix = 2
        (&[0x1a, 0x01, b'c'], MatchType::Suffix("c".into())), // suffix = 3
        (&[0x22, 0x00], MatchType::Presence(())),            // presence = 4: Empty
    ];
    for (bytes, want) in cases {
        let m: StringMatch = decode_exact(bytes);
        assert_eq!(m.match_type, Some(want.clone()));
        let encoded = StringMatch {
            match_type: Some(want),
        }
        .encode_to_vec();
        assert_eq!(encoded, bytes);
    }
}

#[test]
fn service_account_match_fields() {
    let bytes = wire![
        [0x0a, 0x02], b"ns";  // namespace = 1
        [0x12, 0x03], b"bob"; // serviceAccount = 2
    ];
    let sa: ServiceAccountMatch = decode_exact(&bytes);
    assert_eq!(sa.namespace, "ns");
    assert_eq!(sa.service_account, "bob");
}

#[test]
fn enum_numbers() {
    assert_eq!(Scope::Global as i32, 0);
    assert_eq!(Scope::Namespace as i32, 1);
    assert_eq!(Scope::WorkloadSelector as i32, 2);
    assert_eq!(Action::Allow as i32, 0);
    assert_eq!(Action::Deny as i32, 1);
}

//! Property tests for SPIFFE identity parsing: it reads URI SANs of peer certificates, so it
//! must never panic on hostile input, and every identity it prints must parse back to itself.

use hbone::Identity;
use proptest::prelude::*;

fn segment() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9.-]{0,30}"
}

proptest! {
    #[test]
    fn parse_never_panics(s in ".{0,300}") {
        let _ = Identity::parse(&s);
    }

    #[test]
    fn parse_never_panics_on_spiffe_like_input(
        parts in prop::collection::vec("[a-z/%:.~+_-]{0,12}", 0..8)
    ) {
        let _ = Identity::parse(&format!("spiffe://{}", parts.join("/")));
    }

    #[test]
    fn display_parse_round_trip(td in segment(), ns in segment(), sa in segment()) {
        let id = Identity::new(&td, &ns, &sa);
        let parsed = Identity::parse(&id.to_string()).unwrap();
        prop_assert_eq!(&parsed, &id);
        prop_assert_eq!(parsed.principal(), format!("{td}/ns/{ns}/sa/{sa}"));
    }

    #[test]
    fn extra_or_missing_segments_are_rejected(
        ns in segment(), sa in segment(), extra in segment()
    ) {
        let long = format!("spiffe://cluster.local/ns/{ns}/sa/{sa}/{extra}");
        let short = format!("spiffe://cluster.local/ns/{ns}/sa");
        prop_assert!(Identity::parse(&long).is_err());
        prop_assert!(Identity::parse(&short).is_err());
    }
}

//! `istio.v1.auth` decoded from hand-assembled bytes (see `common` for the
//! conventions).

#[macro_use]
mod common;

use common::decode_exact;
use prost::Message;
use prost_types::value::Kind;
use proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};

#[test]
fn certificate_request_with_impersonation_metadata() {
    let value = nested![0x17 =>
        [0x1a, 0x15], b"spiffe://td/ns/a/sa/b"; // Value.string_value = 3
    ];
    let entry = nested![0x2f =>
        [0x0a, 0x14], b"ImpersonatedIdentity"; // map entry key = 1
        [0x12, 0x17], value;                   // map entry value = 2: Value
    ];
    let metadata = nested![0x31 =>
        [0x0a, 0x2f], entry; // Struct.fields = 1 (map entry)
    ];
    let bytes = wire![
        [0x0a, 0x03], b"CSR";       // csr = 1
        [0x18, 0x80, 0xa3, 0x05];   // validity_duration = 3: 86400
        [0x22, 0x31], metadata;     // metadata = 4: Struct
    ];

    let req: IstioCertificateRequest = decode_exact(&bytes);
    assert_eq!(req.csr, "CSR");
    assert_eq!(req.validity_duration, 86400);
    let fields = &req.metadata.as_ref().unwrap().fields;
    assert_eq!(fields.len(), 1);
    assert_eq!(
        fields["ImpersonatedIdentity"].kind,
        Some(Kind::StringValue("spiffe://td/ns/a/sa/b".into()))
    );
}

#[test]
fn validity_duration_is_field_3() {
    let req: IstioCertificateRequest = decode_exact(&[0x18, 0x3c]); // validity_duration = 3: 60
    assert_eq!(req.validity_duration, 60);
    // Field 2 is unused: a varint there is skipped.
    let req = IstioCertificateRequest::decode(&[0x10, 0x3c][..]).unwrap();
    assert_eq!(req.validity_duration, 0);
    // int64, so a negative value takes ten bytes (two's complement varint).
    let negative = IstioCertificateRequest {
        validity_duration: -1,
        ..Default::default()
    };
    assert_eq!(
        negative.encode_to_vec(),
        [
            0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
        ]
    );
}

#[test]
fn certificate_response_chain_order() {
    let bytes = wire![
        [0x0a, 0x04], b"leaf"; // cert_chain = 1
        [0x0a, 0x05], b"inter"; // cert_chain = 1
        [0x0a, 0x04], b"root"; // cert_chain = 1
    ];
    let resp: IstioCertificateResponse = decode_exact(&bytes);
    assert_eq!(resp.cert_chain, vec!["leaf", "inter", "root"]);
}

//! Helpers shared by the hand-assembled wire tests.
//!
//! The byte strings in those tests are written by hand from the schema
//! tables: every tag is `field_number << 3 | wire_type` as explicit hex
//! (wire type 0 = varint, 2 = length-delimited), followed by a hand-written
//! length or value. Only payload text is given as `b"..."` literals.

/// Concatenates byte pieces (hex arrays, `b"..."` literals, or `Vec<u8>`s of
/// nested messages) into one buffer. Pieces of one field are separated by
/// `,` and fields by `;`, one field per line with a comment naming it
/// (the `;` also keeps rustfmt from reflowing the layout).
#[allow(unused_macros)]
macro_rules! wire {
    ($($($part:expr),+);* $(;)?) => {{
        let parts: &[&[u8]] = &[$($(&$part[..]),+),*];
        parts.concat()
    }};
}

/// `nested![LEN => fields...]` builds a nested message with [`wire!`] and
/// checks that it is exactly `LEN` bytes long, the length written by hand in
/// front of it in the enclosing message.
#[allow(unused_macros)]
macro_rules! nested {
    ($len:expr => $($($part:expr),+);* $(;)?) => {{
        let bytes: Vec<u8> = wire![$($($part),+);*];
        assert_eq!(
            bytes.len(),
            $len,
            "hand-written length of a nested message is wrong"
        );
        bytes
    }};
}

/// Decodes `bytes` as `M` and checks that every byte was understood: the
/// message re-encodes to the same length, so no field was skipped as
/// unknown (which is what a wrong field number would cause).
#[allow(dead_code)]
pub fn decode_exact<M: prost::Message + Default>(bytes: &[u8]) -> M {
    let msg = M::decode(bytes).expect("hand-assembled bytes decode");
    assert_eq!(
        msg.encoded_len(),
        bytes.len(),
        "some bytes were not understood (unknown field number?)"
    );
    msg
}

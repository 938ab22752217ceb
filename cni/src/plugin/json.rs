//! Finding a field's raw text in a JSON object, so `prevResult` can be echoed byte for byte.

/// The raw text of top-level field `key` of the JSON object `text` (which the caller has
/// already validated). `None` if absent or if the text is not an object.
pub fn raw_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        match b.get(i)? {
            b'}' => return None,
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let kend = skip_string(b, i)?;
        let k = &text[i + 1..kend - 1];
        i = skip_ws(b, kend);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let vend = skip_value(b, i)?;
        if k == key {
            return Some(&text[i..vend]);
        }
        i = vend;
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// `b[i]` is `"`; returns the index after the closing quote.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']') && !b[j].is_ascii_whitespace()
            {
                j += 1;
            }
            Some(j)
        }
    }
}

/// Standard base64 (with padding), for `IPNet.Mask` as Go marshals it.
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | (u32::from(c) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_raw_fields() {
        let t = r#" { "a" : 1, "s": "x\"}", "prevResult" : {"ips":[{"address":"10.0.0.1/24"}], "k":"}"} , "z":null}"#;
        assert_eq!(
            raw_field(t, "prevResult"),
            Some(r#"{"ips":[{"address":"10.0.0.1/24"}], "k":"}"}"#)
        );
        assert_eq!(raw_field(t, "a"), Some("1"));
        assert_eq!(raw_field(t, "z"), Some("null"));
        assert_eq!(raw_field(t, "missing"), None);
        assert_eq!(raw_field("[1]", "a"), None);
    }

    #[test]
    fn base64_masks() {
        assert_eq!(base64(&[255, 255, 255, 0]), "////AA==");
        assert_eq!(base64(&[255; 16]), "/////////////////////w==");
        assert_eq!(base64(b"abc"), "YWJj");
    }
}

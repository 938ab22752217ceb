//! Go-style duration strings, as Istio's settings use them (`24h`, `5m`, `1m30s`, `500ms`).
//!
//! [`parse`] accepts Go's `time.ParseDuration` syntax without a sign: one or more
//! `<number><unit>` pairs, units `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`, decimal fractions
//! allowed (`1.5h`), and the bare `0`. [`parse_lenient`] additionally reads a plain integer as
//! seconds (`30` = `30s`), which is how the environment variables of Istio's ztunnel are read.
//! [`format`] writes the shortest form that [`parse`] reads back to the same value.

use std::fmt::Write as _;
use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("negative duration {0:?} is not allowed")]
    Negative(String),
    #[error("invalid duration {input:?}: {reason} (expected e.g. `24h`, `1m30s`, `500ms`)")]
    Invalid { input: String, reason: &'static str },
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3_600 * NANOS_PER_SEC,
        _ => return None,
    })
}

/// Parses a Go-style duration (`1h30m`, `1.5s`, `250ms`, `0`).
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    let invalid = |reason| DurationError::Invalid {
        input: input.to_owned(),
        reason,
    };
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative(input.to_owned()));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let overflow = || DurationError::Overflow(input.to_owned());
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| invalid("missing unit"))?;
        let (number, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid("missing number before unit"));
        }
        if frac_part.contains('.') {
            return Err(invalid("more than one decimal point"));
        }
        let scale = unit_nanos(unit).ok_or_else(|| invalid("unknown unit"))?;
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut value = int.checked_mul(scale).ok_or_else(overflow)?;
        // Fraction digits beyond nanosecond precision cannot change the result; cap them so the
        // power of ten stays small.
        let frac_digits = &frac_part[..frac_part.len().min(20)];
        if !frac_digits.is_empty() {
            let frac: u128 = frac_digits.parse().map_err(|_| overflow())?;
            let denom = 10u128.pow(frac_digits.len() as u32);
            value = value
                .checked_add(frac.checked_mul(scale).ok_or_else(overflow)? / denom)
                .ok_or_else(overflow)?;
        }
        total = total.checked_add(value).ok_or_else(overflow)?;
        rest = next;
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| overflow())?;
    Ok(Duration::new(secs, (total % NANOS_PER_SEC) as u32))
}

/// Like [`parse`], but a plain unsigned integer is read as a number of seconds.
pub fn parse_lenient(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| DurationError::Overflow(input.to_owned()));
    }
    parse(input)
}

/// Writes `value / 10^digits` with trailing fractional zeros removed.
fn push_decimal(out: &mut String, whole: u128, frac: u128, digits: usize) {
    let _ = write!(out, "{whole}");
    if frac != 0 {
        let frac = format!("{frac:0digits$}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
}

/// Formats a duration compactly: `24h`, `1h30m`, `1m30s`, `1.5s`, `500ms`, `0s`.
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    let mut out = String::new();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < NANOS_PER_SEC {
        let (scale, digits, unit) = if nanos >= 1_000_000 {
            (1_000_000, 6, "ms")
        } else if nanos >= 1_000 {
            (1_000, 3, "us")
        } else {
            (1, 0, "ns")
        };
        push_decimal(&mut out, nanos / scale, nanos % scale, digits);
        out.push_str(unit);
        return out;
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if m > 0 {
        let _ = write!(out, "{m}m");
    }
    let sub = u128::from(d.subsec_nanos());
    if s > 0 || sub > 0 {
        push_decimal(&mut out, u128::from(s), sub, 9);
        out.push('s');
    }
    out
}

/// `serde` adapter writing a [`Duration`] as a [`format`]ted string and reading it with
/// [`parse_lenient`]: `#[serde(with = "meshcore::duration::as_string")]`.
pub mod as_string {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes `d` as a duration string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    /// Deserializes a duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_lenient(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    const fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn parses_go_syntax() {
        let cases: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("24h", secs(86_400)),
            ("5m", secs(300)),
            ("1m30s", secs(90)),
            ("500ms", ms(500)),
            ("10s", secs(10)),
            ("1.5h", secs(5_400)),
            ("1h30m10.5s", Duration::new(5_410, 500_000_000)),
            (".5s", ms(500)),
            ("2.s", secs(2)),
            ("+3s", secs(3)),
            (" 7s ", secs(7)),
            ("1us", Duration::from_micros(1)),
            ("1µs", Duration::from_micros(1)),
            ("3ns", Duration::from_nanos(3)),
            ("1.0000000001s", secs(1)),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Ok(*want), "{input}");
        }
    }

    #[test]
    fn rejects_bad_input_with_typed_errors() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert_eq!(parse("  "), Err(DurationError::Empty));
        assert!(matches!(parse("-5s"), Err(DurationError::Negative(_))));
        for bad in ["10", "5x", "s", "1..5s", "1.2.3s", "abc", "5m3"] {
            assert!(
                matches!(parse(bad), Err(DurationError::Invalid { .. })),
                "{bad}: {:?}",
                parse(bad)
            );
        }
        assert!(matches!(
            parse("99999999999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
        let msg = parse("5x").unwrap_err().to_string();
        assert!(
            msg.contains("\"5x\"") && msg.contains("unknown unit"),
            "{msg}"
        );
    }

    #[test]
    fn lenient_reads_bare_integers_as_seconds() {
        assert_eq!(parse_lenient("30"), Ok(secs(30)));
        assert_eq!(parse_lenient("0"), Ok(Duration::ZERO));
        assert_eq!(parse_lenient("1m"), Ok(secs(60)));
        assert!(parse_lenient("1.5").is_err());
        assert!(parse_lenient("-1").is_err());
    }

    #[test]
    fn formats_compactly_and_round_trips() {
        let cases: &[(Duration, &str)] = &[
            (Duration::ZERO, "0s"),
            (secs(86_400), "24h"),
            (secs(300), "5m"),
            (secs(90), "1m30s"),
            (secs(3_600 + 1), "1h1s"),
            (ms(500), "500ms"),
            (ms(1_500), "1.5s"),
            (Duration::from_micros(1_500), "1.5ms"),
            (Duration::from_nanos(1_500), "1.5us"),
            (Duration::from_nanos(7), "7ns"),
        ];
        for (d, want) in cases {
            assert_eq!(format(*d), *want);
            assert_eq!(parse(want), Ok(*d), "round trip of {want}");
        }
    }

    #[test]
    fn serde_adapter() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct T {
            #[serde(with = "as_string")]
            d: Duration,
        }
        let json = serde_json::to_string(&T { d: secs(90) }).unwrap();
        assert_eq!(json, r#"{"d":"1m30s"}"#);
        let back: T = serde_json::from_str(r#"{"d":"45"}"#).unwrap();
        assert_eq!(back, T { d: secs(45) });
        assert!(serde_json::from_str::<T>(r#"{"d":"soon"}"#).is_err());
    }
}

//! The `:authority` of an HBONE CONNECT request.
//!
//! An HBONE CONNECT names its target in `:authority` only (no `:scheme`, no `:path`). The
//! target is either a socket address (`10.0.0.5:8080`, `[fd00::5]:8080`), used when tunnelling
//! to a workload or a waypoint, or a service host name and port
//! (`cart.shop.svc.cluster.local:80`), used on the inner CONNECT of double HBONE.
//!
//! [`Authority::parse`] accepts exactly those two shapes and rejects everything else a peer
//! could send: missing or zero ports, unbracketed IPv6, userinfo, paths, whitespace and
//! over-long input. Errors quote the offending input, cut to 64 characters, so they can be
//! logged as they are.
//!
//! Addresses are kept as given: an IPv4-mapped IPv6 address such as `[::ffff:10.0.0.5]:80`
//! stays an IPv6 [`SocketAddr`] and is not turned into `10.0.0.5:80`; host names keep their
//! case (compare them with [`str::eq_ignore_ascii_case`]).
//!
//! This module depends only on `std` and `thiserror`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::str::FromStr;

/// Longest host name accepted, in bytes (the text form of a DNS name without a final dot).
pub const MAX_HOST_LEN: usize = 253;
/// Longest label (dot-separated part) of a host name, in bytes.
pub const MAX_LABEL_LEN: usize = 63;
/// Longest authority accepted, in bytes: room for a 255-byte host, `:` and a 5-digit port.
pub const MAX_AUTHORITY_LEN: usize = 255 + 6;
/// How many characters of a rejected input an error keeps.
const MAX_INPUT_IN_ERROR: usize = 64;

/// The target of an HBONE CONNECT, as carried in `:authority`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Authority {
    /// An IP address and port: `10.0.0.5:8080` or `[fd00::5]:8080`.
    ///
    /// An IPv6 scope id or flow label is not part of an authority: [`fmt::Display`] leaves
    /// them out and [`Authority::parse`] always yields zero for both.
    Socket(SocketAddr),
    /// A DNS host name and port: `cart.shop.svc.cluster.local:80`.
    ///
    /// Values built by [`Authority::parse`] or [`Authority::from_host`] hold a name that
    /// passes [`validate_host_name`] and a non-zero port.
    Host {
        /// The host name, as received (case preserved).
        host: String,
        /// The port, never zero.
        port: u16,
    },
}

impl Authority {
    /// Parses an `:authority` value: `ip:port`, `[ipv6]:port` or `host:port`.
    ///
    /// The port must be a decimal number from 1 to 65535 (at most five digits). A host that
    /// is not an IPv4 address must be a DNS name (see [`validate_host_name`]).
    pub fn parse(input: &str) -> Result<Self, AuthorityError> {
        if input.is_empty() {
            return Err(AuthorityError::Empty);
        }
        if input.len() > MAX_AUTHORITY_LEN {
            return Err(AuthorityError::TooLong {
                input: clip(input),
                len: input.len(),
            });
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AuthorityError::InvalidCharacter { input: clip(input) });
        }
        if input.contains('@') {
            return Err(AuthorityError::Userinfo { input: clip(input) });
        }
        if input.contains(['/', '?', '#']) {
            return Err(AuthorityError::Path { input: clip(input) });
        }

        if let Some(bracketed) = input.strip_prefix('[') {
            let Some((ip, rest)) = bracketed.split_once(']') else {
                return Err(AuthorityError::InvalidIpv6 { input: clip(input) });
            };
            let port = match rest.strip_prefix(':') {
                _ if rest.is_empty() => {
                    return Err(AuthorityError::MissingPort { input: clip(input) });
                }
                Some(port) => parse_port(input, port)?,
                None => return Err(AuthorityError::InvalidPort { input: clip(input) }),
            };
            let ip = Ipv6Addr::from_str(ip)
                .map_err(|_| AuthorityError::InvalidIpv6 { input: clip(input) })?;
            return Ok(Self::Socket(SocketAddr::V6(SocketAddrV6::new(
                ip, port, 0, 0,
            ))));
        }

        let Some((host, port)) = input.rsplit_once(':') else {
            return Err(AuthorityError::MissingPort { input: clip(input) });
        };
        if host.contains(':') {
            return Err(AuthorityError::UnbracketedIpv6 { input: clip(input) });
        }
        let port = parse_port(input, port)?;
        if let Ok(ip) = Ipv4Addr::from_str(host) {
            return Ok(Self::Socket(SocketAddr::new(IpAddr::V4(ip), port)));
        }
        validate_host_name(host).map_err(|reason| AuthorityError::InvalidHost {
            input: clip(input),
            reason,
        })?;
        Ok(Self::Host {
            host: host.to_owned(),
            port,
        })
    }

    /// Builds a host-name authority, checking the name and port like [`Authority::parse`].
    pub fn from_host(host: impl Into<String>, port: u16) -> Result<Self, AuthorityError> {
        let host = host.into();
        if port == 0 {
            return Err(AuthorityError::InvalidPort {
                input: clip(&format!("{host}:0")),
            });
        }
        if let Err(reason) = validate_host_name(&host) {
            return Err(AuthorityError::InvalidHost {
                input: clip(&host),
                reason,
            });
        }
        Ok(Self::Host { host, port })
    }

    /// The port of the target.
    pub fn port(&self) -> u16 {
        match self {
            Self::Socket(addr) => addr.port(),
            Self::Host { port, .. } => *port,
        }
    }

    /// The socket address, when the authority is an IP address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Socket(addr) => Some(*addr),
            Self::Host { .. } => None,
        }
    }

    /// The host name, when the authority is not an IP address.
    pub fn host_name(&self) -> Option<&str> {
        match self {
            Self::Socket(_) => None,
            Self::Host { host, .. } => Some(host),
        }
    }
}

impl fmt::Display for Authority {
    /// Writes the canonical form: `1.2.3.4:80`, `[fd00::5]:80` or `host:80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket(SocketAddr::V4(addr)) => write!(f, "{}:{}", addr.ip(), addr.port()),
            Self::Socket(SocketAddr::V6(addr)) => write!(f, "[{}]:{}", addr.ip(), addr.port()),
            Self::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl FromStr for Authority {
    type Err = AuthorityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<SocketAddr> for Authority {
    fn from(addr: SocketAddr) -> Self {
        Self::Socket(addr)
    }
}

/// Why an `:authority` value was rejected. Every variant but `Empty` carries the input, cut to
/// 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("empty authority: expected host:port")]
    Empty,
    #[error("authority {input:?} is {len} bytes, over the {MAX_AUTHORITY_LEN}-byte limit")]
    TooLong { input: String, len: usize },
    #[error("authority {input:?} contains whitespace or a control character")]
    InvalidCharacter { input: String },
    #[error("authority {input:?} contains userinfo ('@'); expected host:port")]
    Userinfo { input: String },
    #[error("authority {input:?} contains a path, query or fragment; expected host:port only")]
    Path { input: String },
    #[error("authority {input:?} has no port; expected host:port")]
    MissingPort { input: String },
    #[error("authority {input:?} has an invalid port; expected a decimal number from 1 to 65535")]
    InvalidPort { input: String },
    #[error(
        "authority {input:?} has more than one ':'; an IPv6 address must be bracketed: [addr]:port"
    )]
    UnbracketedIpv6 { input: String },
    #[error("authority {input:?} has an invalid IPv6 address between '[' and ']'")]
    InvalidIpv6 { input: String },
    #[error("authority {input:?} has an invalid host name: {reason}")]
    InvalidHost {
        input: String,
        reason: HostNameError,
    },
}

/// Why a host name is not an acceptable DNS name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostNameError {
    #[error("the host name is empty")]
    Empty,
    #[error("the host name is {0} bytes, over the {MAX_HOST_LEN}-byte limit")]
    TooLong(usize),
    #[error("the host name has an empty label (two dots in a row, or a leading or final dot)")]
    EmptyLabel,
    #[error("a label is {0} bytes, over the {MAX_LABEL_LEN}-byte limit")]
    LabelTooLong(usize),
    #[error("only ASCII letters, digits, '-', '_' and '.' are allowed")]
    InvalidCharacter,
    #[error("a label starts or ends with '-'")]
    HyphenAtLabelEdge,
    #[error("the last label is all digits, so it looks like a malformed IPv4 address")]
    NumericLastLabel,
}

/// Checks that `name` is a DNS host name: ASCII letters, digits, `-` and `_` in dot-separated
/// labels of 1 to 63 bytes, at most 253 bytes in all, no label starting or ending with `-`,
/// and a last label that is not all digits (so `1.2.3.999` is not taken for a name).
/// A final dot is not accepted.
pub fn validate_host_name(name: &str) -> Result<(), HostNameError> {
    if name.is_empty() {
        return Err(HostNameError::Empty);
    }
    if name.len() > MAX_HOST_LEN {
        return Err(HostNameError::TooLong(name.len()));
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostNameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostNameError::LabelTooLong(label.len()));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(HostNameError::InvalidCharacter);
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(HostNameError::HyphenAtLabelEdge);
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostNameError::NumericLastLabel);
    }
    Ok(())
}

/// Parses a port of one to five decimal digits (leading zeros allowed, like `std`) in 1..=65535.
fn parse_port(input: &str, port: &str) -> Result<u16, AuthorityError> {
    if port.is_empty() {
        return Err(AuthorityError::MissingPort { input: clip(input) });
    }
    if port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthorityError::InvalidPort { input: clip(input) });
    }
    // At most five ASCII digits: always fits in a u32.
    let value: u32 = port
        .bytes()
        .fold(0, |acc, b| acc * 10 + u32::from(b - b'0'));
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(AuthorityError::InvalidPort { input: clip(input) }),
    }
}

/// Keeps the first 64 characters of `input` for an error message, marking a cut with `…`.
fn clip(input: &str) -> String {
    match input.char_indices().nth(MAX_INPUT_IN_ERROR) {
        None => input.to_owned(),
        Some((end, _)) => format!("{}…", &input[..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(s: &str) -> Authority {
        Authority::Socket(s.parse().unwrap())
    }

    fn host(h: &str, port: u16) -> Authority {
        Authority::Host {
            host: h.to_owned(),
            port,
        }
    }

    #[test]
    fn parses_valid_authorities() {
        let cases: &[(&str, Authority, &str)] = &[
            ("10.1.2.3:8080", sock("10.1.2.3:8080"), "10.1.2.3:8080"),
            ("0.0.0.0:1", sock("0.0.0.0:1"), "0.0.0.0:1"),
            ("[fd00::5]:8080", sock("[fd00::5]:8080"), "[fd00::5]:8080"),
            ("[::1]:65535", sock("[::1]:65535"), "[::1]:65535"),
            ("[FD00:0::5]:80", sock("[fd00::5]:80"), "[fd00::5]:80"),
            // IPv4-mapped IPv6 stays IPv6.
            (
                "[::ffff:10.0.0.5]:80",
                sock("[::ffff:10.0.0.5]:80"),
                "[::ffff:10.0.0.5]:80",
            ),
            ("10.0.0.1:080", sock("10.0.0.1:80"), "10.0.0.1:80"),
            (
                "cart.shop.svc.cluster.local:80",
                host("cart.shop.svc.cluster.local", 80),
                "cart.shop.svc.cluster.local:80",
            ),
            (
                "localhost:15008",
                host("localhost", 15008),
                "localhost:15008",
            ),
            ("Cart.Shop:80", host("Cart.Shop", 80), "Cart.Shop:80"),
            ("_grpc._tcp.x:1", host("_grpc._tcp.x", 1), "_grpc._tcp.x:1"),
            ("1.2.3.a:1", host("1.2.3.a", 1), "1.2.3.a:1"),
            ("a-b.c1:2", host("a-b.c1", 2), "a-b.c1:2"),
        ];
        for (input, want, display) in cases {
            let got = Authority::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(&got, want, "{input}");
            assert_eq!(got.to_string(), *display, "{input}");
            assert_eq!(Authority::parse(display).as_ref(), Ok(want), "{display}");
        }
    }

    #[test]
    fn rejects_invalid_authorities() {
        use AuthorityError as E;
        let long_label = format!("{}.com:80", "a".repeat(64));
        let long_host = format!("{}a:80", "a.".repeat(127));
        let too_long = "a".repeat(300);
        type Check = fn(&E) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, E::Empty)),
            ("10.0.0.1", |e| matches!(e, E::MissingPort { .. })),
            ("10.0.0.1:", |e| matches!(e, E::MissingPort { .. })),
            ("host", |e| matches!(e, E::MissingPort { .. })),
            ("[::1]", |e| matches!(e, E::MissingPort { .. })),
            ("[::1]:", |e| matches!(e, E::MissingPort { .. })),
            ("10.0.0.1:0", |e| matches!(e, E::InvalidPort { .. })),
            ("10.0.0.1:65536", |e| matches!(e, E::InvalidPort { .. })),
            ("10.0.0.1:000080", |e| matches!(e, E::InvalidPort { .. })),
            ("10.0.0.1:+80", |e| matches!(e, E::InvalidPort { .. })),
            ("10.0.0.1:-1", |e| matches!(e, E::InvalidPort { .. })),
            ("10.0.0.1:8a", |e| matches!(e, E::InvalidPort { .. })),
            ("[::1]80", |e| matches!(e, E::InvalidPort { .. })),
            ("::1:80", |e| matches!(e, E::UnbracketedIpv6 { .. })),
            ("fd00::5:8080", |e| matches!(e, E::UnbracketedIpv6 { .. })),
            ("[::1:80", |e| matches!(e, E::InvalidIpv6 { .. })),
            ("[1.2.3.4]:80", |e| matches!(e, E::InvalidIpv6 { .. })),
            ("[fe80::1%2]:80", |e| matches!(e, E::InvalidIpv6 { .. })),
            ("[]:80", |e| matches!(e, E::InvalidIpv6 { .. })),
            (" 10.0.0.1:80", |e| matches!(e, E::InvalidCharacter { .. })),
            ("10.0.0.1:80\n", |e| matches!(e, E::InvalidCharacter { .. })),
            ("a\u{0}b:80", |e| matches!(e, E::InvalidCharacter { .. })),
            ("a\u{a0}b:80", |e| matches!(e, E::InvalidCharacter { .. })),
            ("user@host:80", |e| matches!(e, E::Userinfo { .. })),
            ("host:80/path", |e| matches!(e, E::Path { .. })),
            ("host:80?q", |e| matches!(e, E::Path { .. })),
            ("host:80#f", |e| matches!(e, E::Path { .. })),
            (":80", |e| matches!(e, E::InvalidHost { .. })),
            ("host.:80", |e| matches!(e, E::InvalidHost { .. })),
            (".host:80", |e| matches!(e, E::InvalidHost { .. })),
            ("a..b:80", |e| matches!(e, E::InvalidHost { .. })),
            ("-a.b:80", |e| matches!(e, E::InvalidHost { .. })),
            ("a-.b:80", |e| matches!(e, E::InvalidHost { .. })),
            ("ho*st:80", |e| matches!(e, E::InvalidHost { .. })),
            ("hôst:80", |e| matches!(e, E::InvalidHost { .. })),
            ("1.2.3.999:80", |e| matches!(e, E::InvalidHost { .. })),
            ("01.2.3.4:80", |e| matches!(e, E::InvalidHost { .. })),
            ("1234:80", |e| matches!(e, E::InvalidHost { .. })),
            ("[::1]]:80", |e| matches!(e, E::InvalidPort { .. })),
            (&long_label, |e| matches!(e, E::InvalidHost { .. })),
            (&long_host, |e| matches!(e, E::InvalidHost { .. })),
            (&too_long, |e| matches!(e, E::TooLong { len: 300, .. })),
        ];
        for (input, check) in cases {
            match Authority::parse(input) {
                Ok(a) => panic!("{input:?} parsed as {a:?}"),
                Err(e) => assert!(check(&e), "{input:?}: unexpected error {e:?}"),
            }
        }
    }

    #[test]
    fn errors_quote_the_input_cut_to_64_chars() {
        let err = Authority::parse("user@host:80").unwrap_err();
        assert_eq!(
            err.to_string(),
            "authority \"user@host:80\" contains userinfo ('@'); expected host:port"
        );
        // Cut on a character boundary, marked with an ellipsis.
        let input = format!("{}:0", "é".repeat(100));
        let err = Authority::parse(&input).unwrap_err();
        let want = format!("{}…", "é".repeat(64));
        assert_eq!(err, AuthorityError::InvalidPort { input: want });
        // Control characters are escaped in the message.
        let err = Authority::parse("a\u{1}b:80").unwrap_err();
        assert!(err.to_string().contains(r#""a\u{1}b:80""#), "{err}");
    }

    #[test]
    fn from_host_validates() {
        assert_eq!(Authority::from_host("a.b", 80), Ok(host("a.b", 80)));
        assert!(matches!(
            Authority::from_host("a.b", 0),
            Err(AuthorityError::InvalidPort { .. })
        ));
        assert!(matches!(
            Authority::from_host("a b", 1),
            Err(AuthorityError::InvalidHost {
                reason: HostNameError::InvalidCharacter,
                ..
            })
        ));
    }

    #[test]
    fn accessors() {
        let a = sock("[fd00::5]:8080");
        assert_eq!(a.port(), 8080);
        assert_eq!(a.socket_addr(), Some("[fd00::5]:8080".parse().unwrap()));
        assert_eq!(a.host_name(), None);
        let h = host("svc.ns", 9);
        assert_eq!(h.port(), 9);
        assert_eq!(h.socket_addr(), None);
        assert_eq!(h.host_name(), Some("svc.ns"));
        // Scope ids are not part of an authority.
        let scoped = Authority::from(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::LOCALHOST,
            80,
            7,
            3,
        )));
        assert_eq!(scoped.to_string(), "[::1]:80");
    }
}

//! HBONE CONNECT request headers: `forwarded`, `baggage`, `traceparent` and
//! `x-forwarded-network`.
//!
//! The client side builds them ([`Forwarded`], [`Baggage`], [`TraceParent`],
//! [`apply_request_headers`]); the server side reads them back with
//! [`RequestMeta::from_headers`], which never fails: a header that is missing, malformed or
//! over its size limit simply comes out as `None`.
//!
//! Parsing treats every byte as hostile. Header values may hold any bytes (including
//! non-UTF-8), so parsers work on `&[u8]`, never index past what they checked, never panic,
//! and stop reading at fixed limits ([`MAX_FORWARDED_LEN`], [`MAX_BAGGAGE_LEN`],
//! [`MAX_BAGGAGE_ITEMS`], [`MAX_FORWARDED_NETWORK_LEN`]) so the work and memory spent on one
//! request are bounded whatever the peer sends.
//!
//! Formats (see the HBONE reference, section 3):
//! - `forwarded: for="10.1.2.3:53412";host=cart.shop.svc.cluster.local` (RFC 7239).
//! - `baggage: k8s.cluster.name=c1,k8s.namespace.name=shop,k8s.deployment.name=cart,...`
//!   (W3C baggage).
//! - `traceparent: 00-<32 hex trace id>-<16 hex parent id>-00` (W3C trace context).
//!
//! This module depends only on `http`, `rand`, `thiserror` and `tracing`.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroU128};
use std::str::FromStr;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Name of the W3C `baggage` header.
pub const BAGGAGE: &str = "baggage";
/// Name of the RFC 7239 `forwarded` header.
pub const FORWARDED: &str = "forwarded";
/// Name of the W3C `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// Name of the header naming the source network on the inner CONNECT of double HBONE.
pub const X_FORWARDED_NETWORK: &str = "x-forwarded-network";

/// `forwarded` values longer than this (all values together) are ignored.
pub const MAX_FORWARDED_LEN: usize = 4096;
/// Only the first this many bytes of `baggage` (all values together) are read.
pub const MAX_BAGGAGE_LEN: usize = 8192;
/// Only the first this many `baggage` list members are read.
pub const MAX_BAGGAGE_ITEMS: usize = 64;
/// `x-forwarded-network` values longer than this are ignored.
pub const MAX_FORWARDED_NETWORK_LEN: usize = 256;
/// The length of a version-00 `traceparent` value.
pub const TRACEPARENT_LEN: usize = 55;

/// Why a header could not be parsed or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("{header} header is {len} bytes, over the {limit}-byte limit; ignoring it")]
    TooLong {
        header: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("{header} header is malformed: {reason}")]
    Malformed {
        header: &'static str,
        reason: &'static str,
    },
    #[error("cannot build the {header} header: {reason}")]
    Unencodable {
        header: &'static str,
        reason: &'static str,
    },
}

// ---------------------------------------------------------------------------------------------
// forwarded

/// The parts of an RFC 7239 `forwarded` header that HBONE uses.
///
/// Built as `for="<ip>:<port>"` (IPv6: `for="[::1]:4000"`), followed by `;host=<fqdn>` when
/// the connection was addressed to a service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// The original client address (`for=`).
    pub for_addr: Option<SocketAddr>,
    /// The service host name the client addressed (`host=`).
    pub host: Option<String>,
}

impl Forwarded {
    /// A `forwarded` value naming the client address only.
    pub fn new(for_addr: SocketAddr) -> Self {
        Self {
            for_addr: Some(for_addr),
            host: None,
        }
    }

    /// Adds the `host=` parameter.
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// The header value. Fails when there is nothing to send, or when the host holds
    /// whitespace or control characters (which the parser would not accept back).
    pub fn to_header_value(&self) -> Result<HeaderValue, HeaderError> {
        let host = self.host.as_deref().filter(|h| !h.is_empty());
        if self.for_addr.is_none() && host.is_none() {
            return Err(HeaderError::Unencodable {
                header: FORWARDED,
                reason: "neither a client address nor a host to send",
            });
        }
        if host.is_some_and(|h| !is_valid_forwarded_host(h)) {
            return Err(HeaderError::Unencodable {
                header: FORWARDED,
                reason: "the host contains whitespace or control characters",
            });
        }
        HeaderValue::try_from(self.to_string()).map_err(|_| HeaderError::Unencodable {
            header: FORWARDED,
            reason: "the value contains characters not allowed in an HTTP header",
        })
    }

    /// Parses one `forwarded` header value. See [`Forwarded::from_header_values`].
    pub fn parse(value: &[u8]) -> Result<Self, HeaderError> {
        Self::from_header_values([value])
    }

    /// Parses all `forwarded` header values of a request, in order, as one list.
    ///
    /// For each of `for` and `host`, the first list element that has the parameter decides
    /// its value; if that value is malformed (`for=unknown`, an obfuscated `for=_x`, a missing
    /// port, garbage) the field is `None` rather than taken from a later element, which would
    /// describe a different hop. Parameter names are case-insensitive, values may be quoted,
    /// other parameters and malformed pairs are skipped. Values totalling more than
    /// [`MAX_FORWARDED_LEN`] bytes are rejected. Fails when neither field was found.
    pub fn from_header_values<I, V>(values: I) -> Result<Self, HeaderError>
    where
        I: IntoIterator<Item = V>,
        V: AsRef<[u8]>,
    {
        let mut total = 0usize;
        let mut for_addr: Option<Option<SocketAddr>> = None;
        let mut host: Option<Option<String>> = None;
        for value in values {
            let value = value.as_ref();
            // Count one byte per value for the separator so many empty values add up too.
            total = total.saturating_add(value.len() + 1);
            if total > MAX_FORWARDED_LEN + 1 {
                return Err(HeaderError::TooLong {
                    header: FORWARDED,
                    len: total - 1,
                    limit: MAX_FORWARDED_LEN,
                });
            }
            for element in split_unquoted(value, b',') {
                for pair in split_unquoted(element, b';') {
                    let Some((name, raw)) = split_pair(pair) else {
                        continue;
                    };
                    if name.eq_ignore_ascii_case(b"for") && for_addr.is_none() {
                        for_addr = Some(parse_forwarded_for(raw));
                    } else if name.eq_ignore_ascii_case(b"host") && host.is_none() {
                        host = Some(parse_forwarded_host(raw));
                    }
                }
            }
        }
        let parsed = Self {
            for_addr: for_addr.flatten(),
            host: host.flatten(),
        };
        if parsed.for_addr.is_none() && parsed.host.is_none() {
            return Err(HeaderError::Malformed {
                header: FORWARDED,
                reason: "no valid for= or host= parameter",
            });
        }
        Ok(parsed)
    }
}

impl fmt::Display for Forwarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(addr) = self.for_addr {
            write!(f, "for=\"{addr}\"")?;
            sep = ";";
        }
        if let Some(host) = self.host.as_deref().filter(|h| !h.is_empty()) {
            f.write_str(sep)?;
            f.write_str("host=")?;
            if host.bytes().all(is_tchar) {
                f.write_str(host)?;
            } else {
                write_quoted(f, host)?;
            }
        }
        Ok(())
    }
}

fn parse_forwarded_for(raw: &[u8]) -> Option<SocketAddr> {
    let value = unquote(raw)?;
    let value = std::str::from_utf8(&value).ok()?;
    SocketAddr::from_str(value).ok()
}

fn parse_forwarded_host(raw: &[u8]) -> Option<String> {
    let value = unquote(raw)?;
    let value = std::str::from_utf8(&value).ok()?;
    is_valid_forwarded_host(value).then(|| value.to_owned())
}

fn is_valid_forwarded_host(host: &str) -> bool {
    !host.is_empty() && !host.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// An RFC 9110 token character.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Writes `s` as an RFC 9110 quoted-string.
fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        if c == '"' || c == '\\' {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

/// Splits `input` on `sep` bytes that are not inside a quoted-string. An unterminated quote
/// runs to the end of the input.
fn split_unquoted(input: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(input);
    std::iter::from_fn(move || {
        let current = rest?;
        let mut in_quotes = false;
        let mut escaped = false;
        for (i, &b) in current.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if in_quotes && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quotes = !in_quotes;
            } else if b == sep && !in_quotes {
                rest = current.get(i + 1..);
                return current.get(..i);
            }
        }
        rest = None;
        Some(current)
    })
}

/// Splits `name=value`, trimming optional whitespace around both. `None` when there is no `=`
/// or the name is empty.
fn split_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = pair.iter().position(|&b| b == b'=')?;
    let name = trim_ows(pair.get(..eq)?);
    let value = trim_ows(pair.get(eq + 1..)?);
    (!name.is_empty()).then_some((name, value))
}

/// Removes the quotes and backslash escapes of a quoted-string; a token is returned as it is.
/// `None` for a broken quoted-string or a stray quote in a token.
fn unquote(raw: &[u8]) -> Option<Cow<'_, [u8]>> {
    let Some(inner) = raw.strip_prefix(b"\"") else {
        return (!raw.contains(&b'"')).then_some(Cow::Borrowed(raw));
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => out.push(*bytes.next()?),
            // The closing quote must be the last byte.
            b'"' => return bytes.as_slice().is_empty().then_some(Cow::Owned(out)),
            _ => out.push(b),
        }
    }
    None
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

// ---------------------------------------------------------------------------------------------
// baggage

/// Kubernetes workload kinds that have their own `k8s.<type>.name` baggage key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkloadType {
    Deployment,
    CronJob,
    Pod,
    Job,
}

impl WorkloadType {
    /// All types, in the order their baggage keys are tried.
    pub const ALL: [Self; 4] = [Self::Deployment, Self::CronJob, Self::Pod, Self::Job];

    /// The lower-case name used in the baggage key: `deployment`, `cronjob`, `pod`, `job`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "deployment",
            Self::CronJob => "cronjob",
            Self::Pod => "pod",
            Self::Job => "job",
        }
    }

    /// Looks a type up by name, ignoring ASCII case (`Deployment`, `CRONJOB`, `pod`...).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(name))
    }

    /// The baggage key carrying the workload name for this type, e.g. `k8s.pod.name`.
    pub fn baggage_key(self) -> &'static str {
        match self {
            Self::Deployment => "k8s.deployment.name",
            Self::CronJob => "k8s.cronjob.name",
            Self::Pod => "k8s.pod.name",
            Self::Job => "k8s.job.name",
        }
    }
}

impl fmt::Display for WorkloadType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Workload metadata carried in the W3C `baggage` header.
///
/// `None` and empty strings both mean "absent": neither is sent, and an empty value received
/// is read as `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baggage {
    /// `k8s.cluster.name`
    pub cluster_id: Option<String>,
    /// `k8s.namespace.name`
    pub namespace: Option<String>,
    /// `k8s.<type>.name`
    pub workload_name: Option<String>,
    /// The `<type>` of `k8s.<type>.name`. When building, a workload name without a type is
    /// sent as `k8s.deployment.name` (Deployment is the default workload type).
    pub workload_type: Option<WorkloadType>,
    /// `service.name` (canonical service name)
    pub service_name: Option<String>,
    /// `service.version` (canonical revision)
    pub service_version: Option<String>,
    /// `cloud.region`
    pub region: Option<String>,
    /// `cloud.availability_zone`
    pub zone: Option<String>,
}

const KEY_CLUSTER: &str = "k8s.cluster.name";
const KEY_NAMESPACE: &str = "k8s.namespace.name";
const KEY_SERVICE_NAME: &str = "service.name";
const KEY_SERVICE_VERSION: &str = "service.version";
const KEY_REGION: &str = "cloud.region";
const KEY_ZONE: &str = "cloud.availability_zone";

impl Baggage {
    /// Whether no field has a non-empty value.
    pub fn is_empty(&self) -> bool {
        self.items().next().is_none()
    }

    /// The header value, or `None` when there is nothing to send.
    pub fn to_header_value(&self) -> Option<HeaderValue> {
        if self.is_empty() {
            return None;
        }
        // Values are percent-encoded down to visible ASCII, so this cannot fail.
        HeaderValue::try_from(self.to_string()).ok()
    }

    /// Parses one `baggage` header value. See [`Baggage::from_header_values`].
    pub fn parse(value: &[u8]) -> Self {
        Self::from_header_values([value])
    }

    /// Parses and merges all `baggage` header values of a request, in order.
    ///
    /// Keys are matched case-sensitively; any of the four `k8s.<type>.name` keys sets both
    /// the workload name and type. The first non-empty value of a key wins. Whitespace
    /// around members, keys and values is trimmed; unknown keys, `;` properties and
    /// members without `=` or with non-UTF-8 bytes are skipped. Values are percent-decoded
    /// when that yields valid UTF-8 without control characters, and kept as received
    /// otherwise.
    ///
    /// Reading stops after [`MAX_BAGGAGE_LEN`] bytes (a member cut by the limit is dropped)
    /// or [`MAX_BAGGAGE_ITEMS`] members, whichever comes first; the rest is ignored.
    pub fn from_header_values<I, V>(values: I) -> Self
    where
        I: IntoIterator<Item = V>,
        V: AsRef<[u8]>,
    {
        let mut baggage = Self::default();
        let mut budget = MAX_BAGGAGE_LEN;
        let mut members = 0usize;
        for value in values {
            let value = value.as_ref();
            let cut = value.len() > budget;
            let value = value.get(..budget).unwrap_or(value);
            budget -= value.len();
            let mut parts = value.split(|&b| b == b',').peekable();
            while let Some(member) = parts.next() {
                if cut && parts.peek().is_none() {
                    // The limit cut this member short.
                    return baggage;
                }
                let member = trim_ows(member);
                if member.is_empty() {
                    continue;
                }
                if members == MAX_BAGGAGE_ITEMS {
                    return baggage;
                }
                members += 1;
                baggage.apply_member(member);
            }
            if budget == 0 {
                break;
            }
        }
        baggage
    }

    fn apply_member(&mut self, member: &[u8]) {
        // Properties (`;k=v`) after the value are ignored.
        let member = member.split(|&b| b == b';').next().unwrap_or_default();
        let Some((key, value)) = split_pair(member) else {
            return;
        };
        let Ok(key) = std::str::from_utf8(key) else {
            return;
        };
        let (slot, workload_type) = match key {
            KEY_CLUSTER => (&mut self.cluster_id, None),
            KEY_NAMESPACE => (&mut self.namespace, None),
            KEY_SERVICE_NAME => (&mut self.service_name, None),
            KEY_SERVICE_VERSION => (&mut self.service_version, None),
            KEY_REGION => (&mut self.region, None),
            KEY_ZONE => (&mut self.zone, None),
            _ => match WorkloadType::ALL
                .into_iter()
                .find(|t| t.baggage_key() == key)
            {
                Some(t) => (&mut self.workload_name, Some(t)),
                None => return,
            },
        };
        if slot.as_deref().is_some_and(|v| !v.is_empty()) || value.is_empty() {
            return;
        }
        let Ok(value) = std::str::from_utf8(value) else {
            return;
        };
        *slot = Some(percent_decode(value).into_owned());
        if workload_type.is_some() {
            self.workload_type = workload_type;
        }
    }

    /// The members to send, in wire order, skipping empty values.
    fn items(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let workload_key = self
            .workload_type
            .unwrap_or(WorkloadType::Deployment)
            .baggage_key();
        [
            (KEY_CLUSTER, &self.cluster_id),
            (KEY_NAMESPACE, &self.namespace),
            (workload_key, &self.workload_name),
            (KEY_SERVICE_NAME, &self.service_name),
            (KEY_SERVICE_VERSION, &self.service_version),
            (KEY_REGION, &self.region),
            (KEY_ZONE, &self.zone),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key, value.as_deref().filter(|v| !v.is_empty())?)))
    }
}

impl fmt::Display for Baggage {
    /// Writes the header value: `key=value` members joined by `,`, values percent-encoded.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.items().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(key)?;
            f.write_str("=")?;
            percent_encode(f, value)?;
        }
        Ok(())
    }
}

/// A byte that W3C baggage allows unencoded in a value (`baggage-octet`), minus `%`.
fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E) && b != b'%'
}

fn percent_encode(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    for b in value.bytes() {
        if is_baggage_octet(b) {
            f.write_char(char::from(b))?;
        } else {
            write!(f, "%{b:02X}")?;
        }
    }
    Ok(())
}

/// Percent-decodes a baggage value. Returns the input unchanged when it has a malformed
/// `%` escape, or decodes to invalid UTF-8 or to control characters (which have no place in
/// metric labels and logs).
fn percent_decode(value: &str) -> Cow<'_, str> {
    if !value.contains('%') {
        return Cow::Borrowed(value);
    }
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hi = bytes.next().and_then(hex_digit);
        let lo = bytes.next().and_then(hex_digit);
        match (hi, lo) {
            (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
            _ => return Cow::Borrowed(value),
        }
    }
    match String::from_utf8(out) {
        Ok(decoded) if !decoded.chars().any(char::is_control) => Cow::Owned(decoded),
        _ => Cow::Borrowed(value),
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// traceparent

/// A W3C `traceparent` (version 00): `00-<trace id>-<parent id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: NonZeroU128,
    parent_id: NonZeroU64,
    flags: u8,
}

impl TraceParent {
    /// A new random trace and parent id, flags `00` (not sampled).
    pub fn random() -> Self {
        Self {
            trace_id: rand::random(),
            parent_id: rand::random(),
            flags: 0,
        }
    }

    /// A traceparent from its parts.
    pub fn new(trace_id: NonZeroU128, parent_id: NonZeroU64, flags: u8) -> Self {
        Self {
            trace_id,
            parent_id,
            flags,
        }
    }

    pub fn trace_id(&self) -> NonZeroU128 {
        self.trace_id
    }

    pub fn parent_id(&self) -> NonZeroU64 {
        self.parent_id
    }

    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// The header value.
    pub fn to_header_value(&self) -> HeaderValue {
        let mut buf = [0u8; TRACEPARENT_LEN];
        buf[..3].copy_from_slice(b"00-");
        write_hex(&mut buf[3..35], self.trace_id.get());
        buf[35] = b'-';
        write_hex(&mut buf[36..52], u128::from(self.parent_id.get()));
        buf[52] = b'-';
        write_hex(&mut buf[53..], u128::from(self.flags));
        // Only hex digits and dashes: always a valid header value.
        HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Parses a version-00 value: exactly 55 bytes, lower-case hex, trace and parent id not
    /// all zero. Anything else (other versions, upper-case hex, surrounding whitespace) is
    /// rejected.
    pub fn parse(value: &[u8]) -> Result<Self, HeaderError> {
        let malformed = |reason| HeaderError::Malformed {
            header: TRACEPARENT,
            reason,
        };
        if value.len() != TRACEPARENT_LEN {
            return Err(malformed("expected exactly 55 bytes"));
        }
        let Some((b"00-", trace, b"-", parent, b"-", flags)) = split_traceparent(value) else {
            return Err(malformed("expected 00-<32 hex>-<16 hex>-<2 hex>"));
        };
        let (Some(trace), Some(parent), Some(flags)) =
            (parse_hex(trace), parse_hex(parent), parse_hex(flags))
        else {
            return Err(malformed("ids and flags must be lower-case hex"));
        };
        let (Some(trace_id), Some(parent_id)) = (
            NonZeroU128::new(trace),
            u64::try_from(parent).ok().and_then(NonZeroU64::new),
        ) else {
            return Err(malformed("trace id and parent id must not be all zero"));
        };
        Ok(Self {
            trace_id,
            parent_id,
            flags: u8::try_from(flags).unwrap_or_default(),
        })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

impl FromStr for TraceParent {
    type Err = HeaderError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

type TraceParentParts<'a> = (&'a [u8], &'a [u8], &'a [u8], &'a [u8], &'a [u8], &'a [u8]);

fn split_traceparent(v: &[u8]) -> Option<TraceParentParts<'_>> {
    Some((
        v.get(..3)?,
        v.get(3..35)?,
        v.get(35..36)?,
        v.get(36..52)?,
        v.get(52..53)?,
        v.get(53..55)?,
    ))
}

/// Parses up to 32 lower-case hex digits.
fn parse_hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u128::from(d))
    })
}

/// Writes the low `out.len()` nibbles of `value` as lower-case hex.
fn write_hex(out: &mut [u8], mut value: u128) {
    for slot in out.iter_mut().rev() {
        *slot = b"0123456789abcdef"[(value & 0xf) as usize];
        value >>= 4;
    }
}

// ---------------------------------------------------------------------------------------------
// request headers

/// Sets the HBONE request headers that are given, replacing any existing values; headers
/// passed as `None` are left untouched. A `forwarded` value that cannot be encoded (see
/// [`Forwarded::to_header_value`]) or an empty [`Baggage`] is skipped.
pub fn apply_request_headers(
    headers: &mut HeaderMap,
    forwarded: Option<&Forwarded>,
    baggage: Option<&Baggage>,
    traceparent: Option<&TraceParent>,
) {
    if let Some(forwarded) = forwarded {
        match forwarded.to_header_value() {
            Ok(value) => {
                headers.insert(HeaderName::from_static(FORWARDED), value);
            }
            Err(error) => tracing::debug!(%error, "not sending forwarded header"),
        }
    }
    if let Some(value) = baggage.and_then(Baggage::to_header_value) {
        headers.insert(HeaderName::from_static(BAGGAGE), value);
    }
    if let Some(traceparent) = traceparent {
        headers.insert(
            HeaderName::from_static(TRACEPARENT),
            traceparent.to_header_value(),
        );
    }
}

/// What an HBONE server learns from the CONNECT request headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMeta {
    /// From `forwarded`; `None` when absent, over [`MAX_FORWARDED_LEN`] or without a valid
    /// `for=`/`host=`.
    pub forwarded: Option<Forwarded>,
    /// From all `baggage` values merged; `None` when absent or when no known key had a value.
    pub baggage: Option<Baggage>,
    /// From `traceparent`; `None` when absent, malformed or sent more than once.
    pub traceparent: Option<TraceParent>,
    /// From `x-forwarded-network` (first value, trimmed); `None` when absent, empty, not
    /// visible ASCII or over [`MAX_FORWARDED_NETWORK_LEN`].
    pub forwarded_network: Option<String>,
}

impl RequestMeta {
    /// Reads the HBONE request headers. Never fails: a bad header becomes `None`.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let forwarded = headers.get_all(FORWARDED);
        let forwarded = if forwarded.iter().next().is_none() {
            None
        } else {
            Forwarded::from_header_values(forwarded)
                .inspect_err(|error| tracing::debug!(%error, "ignoring forwarded header"))
                .ok()
        };

        let baggage =
            Some(Baggage::from_header_values(headers.get_all(BAGGAGE))).filter(|b| !b.is_empty());

        let mut traceparents = headers.get_all(TRACEPARENT).iter();
        let traceparent = match (traceparents.next(), traceparents.next()) {
            (Some(value), None) => TraceParent::parse(value.as_bytes())
                .inspect_err(|error| tracing::debug!(%error, "ignoring traceparent header"))
                .ok(),
            (Some(_), Some(_)) => {
                tracing::debug!("ignoring traceparent: sent more than once");
                None
            }
            _ => None,
        };

        let forwarded_network = headers
            .get(X_FORWARDED_NETWORK)
            .filter(|v| v.len() <= MAX_FORWARDED_NETWORK_LEN)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned);

        Self {
            forwarded,
            baggage,
            traceparent,
            forwarded_network,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn fwd(for_addr: Option<&str>, host: Option<&str>) -> Forwarded {
        Forwarded {
            for_addr: for_addr.map(addr),
            host: host.map(str::to_owned),
        }
    }

    #[test]
    fn forwarded_builds() {
        let cases = [
            (fwd(Some("10.1.2.3:53412"), None), r#"for="10.1.2.3:53412""#),
            (fwd(Some("[::1]:4000"), None), r#"for="[::1]:4000""#),
            (
                fwd(Some("10.1.2.3:53412"), Some("cart.shop.svc.cluster.local")),
                r#"for="10.1.2.3:53412";host=cart.shop.svc.cluster.local"#,
            ),
            (fwd(None, Some("a.b")), "host=a.b"),
            (fwd(Some("1.2.3.4:5"), Some("")), r#"for="1.2.3.4:5""#),
            (fwd(None, Some(r#"a"b\c:1"#)), r#"host="a\"b\\c:1""#),
        ];
        for (forwarded, want) in cases {
            let value = forwarded.to_header_value().unwrap();
            assert_eq!(value, want);
            let mut expected = forwarded.clone();
            expected.host = expected.host.filter(|h| !h.is_empty());
            assert_eq!(Forwarded::parse(value.as_bytes()), Ok(expected), "{want}");
        }
        assert_eq!(
            Forwarded::new(addr("1.2.3.4:5")).with_host("h"),
            fwd(Some("1.2.3.4:5"), Some("h"))
        );
        for bad in [fwd(None, None), fwd(None, Some("")), fwd(None, Some("a b"))] {
            assert!(bad.to_header_value().is_err(), "{bad:?}");
        }
        assert!(
            fwd(Some("1.2.3.4:5"), Some("x\ny"))
                .to_header_value()
                .is_err()
        );
    }

    #[test]
    fn forwarded_parses() {
        let v4 = Some("10.1.2.3:53412");
        let cases: &[(&[u8], Option<Forwarded>)] = &[
            (br#"for="10.1.2.3:53412""#, Some(fwd(v4, None))),
            (b"for=10.1.2.3:53412", Some(fwd(v4, None))),
            (b"FOR = \"10.1.2.3:53412\" ", Some(fwd(v4, None))),
            (br#"for="[::1]:4000""#, Some(fwd(Some("[::1]:4000"), None))),
            (b"for=[::1]:4000", Some(fwd(Some("[::1]:4000"), None))),
            (
                br#"for="10.1.2.3:53412";host=cart.shop"#,
                Some(fwd(v4, Some("cart.shop"))),
            ),
            (
                br#"proto=https;by=x; host="cart.shop" ;for="10.1.2.3:53412""#,
                Some(fwd(v4, Some("cart.shop"))),
            ),
            // Quoted separators do not split.
            (
                br#"host="a,b;c";for=10.1.2.3:53412"#,
                Some(fwd(v4, Some("a,b;c"))),
            ),
            // First element with the field wins, per field.
            (
                br#"host=first, for="10.1.2.3:53412";host=second, for="9.9.9.9:9""#,
                Some(fwd(v4, Some("first"))),
            ),
            // A malformed `for` in the first element is not replaced by a later hop.
            (
                br#"for=unknown;host=h, for="9.9.9.9:9""#,
                Some(fwd(None, Some("h"))),
            ),
            (br#"for="_hidden", for="9.9.9.9:9""#, None),
            (br#"for="10.1.2.3", for="9.9.9.9:9""#, None),
            // Malformed pairs are skipped.
            (br#"garbage;=x;for;host=h"#, Some(fwd(None, Some("h")))),
            (br#"for="10.1.2.3:53412;host=h"#, None),
            (br#"for="\"10.1.2.3:53412\"""#, None),
            (br#"for=""10.1.2.3:53412"""#, None),
            (br#"for="10.1.2.3:53412"x"#, None),
            (br#"for=10.1"2.3:53412"#, None),
            (br#"for="10.1.2.3:53412\"#, None),
            (b"for=\xff\xfe", None),
            (b"host=\xff", None),
            (b"host=\"\"", None),
            (b"host=\"a\tb\"", None),
            (b"", None),
            (b",,,;;;===", None),
            (b"for=999.1.1.1:80", None),
            (b"for=1.2.3.4:65536", None),
        ];
        for (input, want) in cases {
            let got = Forwarded::parse(input).ok();
            assert_eq!(&got, want, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn forwarded_limits() {
        let mut long = br#"for="10.1.2.3:1";host="#.to_vec();
        long.resize(MAX_FORWARDED_LEN, b'a');
        assert!(Forwarded::parse(&long).is_ok());
        long.push(b'a');
        assert!(matches!(
            Forwarded::parse(&long),
            Err(HeaderError::TooLong { len: 4097, .. })
        ));
        // Many commas and many values are bounded too.
        let commas = vec![b','; 1 << 20];
        assert!(Forwarded::parse(&commas).is_err());
        let empties = vec![&b""[..]; 10_000];
        assert!(matches!(
            Forwarded::from_header_values(empties),
            Err(HeaderError::TooLong { .. })
        ));
        let quotes = vec![b'"'; 4000];
        assert!(Forwarded::parse(&quotes).is_err());
    }

    fn full_baggage() -> Baggage {
        Baggage {
            cluster_id: Some("Kubernetes".into()),
            namespace: Some("shop".into()),
            workload_name: Some("cart".into()),
            workload_type: Some(WorkloadType::Deployment),
            service_name: Some("cart".into()),
            service_version: Some("v2".into()),
            region: Some("eu-west1".into()),
            zone: Some("eu-west1-b".into()),
        }
    }

    #[test]
    fn baggage_builds() {
        let only = |f: fn(&mut Baggage)| {
            let mut b = Baggage::default();
            f(&mut b);
            b
        };
        let cases = [
            (
                full_baggage(),
                "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=cart,\
                 service.name=cart,service.version=v2,cloud.region=eu-west1,\
                 cloud.availability_zone=eu-west1-b",
            ),
            (
                only(|b| {
                    b.workload_name = Some("p".into());
                    b.workload_type = Some(WorkloadType::Pod);
                    b.namespace = Some(String::new());
                    b.zone = Some("z".into());
                }),
                "k8s.pod.name=p,cloud.availability_zone=z",
            ),
            (
                only(|b| b.workload_name = Some("w".into())),
                "k8s.deployment.name=w",
            ),
            (
                only(|b| {
                    b.workload_name = Some("j".into());
                    b.workload_type = Some(WorkloadType::CronJob);
                }),
                "k8s.cronjob.name=j",
            ),
            (
                only(|b| b.cluster_id = Some("a b,c;d%e\"f\\g=h/é".into())),
                "k8s.cluster.name=a%20b%2Cc%3Bd%25e%22f%5Cg=h/%C3%A9",
            ),
            (only(|b| b.workload_type = Some(WorkloadType::Job)), ""),
        ];
        for (baggage, want) in cases {
            assert_eq!(baggage.to_string(), want);
            assert_eq!(baggage.is_empty(), want.is_empty());
            match baggage.to_header_value() {
                Some(value) => assert_eq!(value, want),
                None => assert!(want.is_empty()),
            }
            if !want.is_empty() {
                let mut expected = baggage.clone();
                expected.namespace = expected.namespace.filter(|v| !v.is_empty());
                if expected.workload_name.is_some() && expected.workload_type.is_none() {
                    expected.workload_type = Some(WorkloadType::Deployment);
                }
                assert_eq!(Baggage::parse(want.as_bytes()), expected, "{want}");
            }
        }
    }

    #[test]
    fn baggage_parses() {
        let b = |pairs: &[(&str, &str)]| {
            let mut out = Baggage::default();
            for (k, v) in pairs {
                let v = Some((*v).to_owned());
                match *k {
                    "cluster" => out.cluster_id = v,
                    "ns" => out.namespace = v,
                    "name" => out.service_name = v,
                    "version" => out.service_version = v,
                    "region" => out.region = v,
                    "zone" => out.zone = v,
                    t => {
                        out.workload_name = v;
                        out.workload_type = WorkloadType::from_name(t);
                    }
                }
            }
            out
        };
        let cases: &[(&[&[u8]], Baggage)] = &[
            (
                &[b"k8s.cluster.name=c1,k8s.namespace.name=shop,k8s.job.name=j"],
                b(&[("cluster", "c1"), ("ns", "shop"), ("job", "j")]),
            ),
            (
                &[b" k8s.cluster.name = c1 ;prop=1;x ,\tcloud.region=r\t, ,,"],
                b(&[("cluster", "c1"), ("region", "r")]),
            ),
            // Case-sensitive keys; unknown keys and members without `=` ignored.
            (
                &[b"K8S.CLUSTER.NAME=x,k8s.statefulset.name=s,foo=bar,novalue,=v,service.name=s"],
                b(&[("name", "s")]),
            ),
            // First non-empty occurrence wins, across values too.
            (
                &[
                    b"k8s.namespace.name=,service.version=v1",
                    b"k8s.namespace.name=ns2,service.version=v2,k8s.pod.name=p",
                    b"k8s.deployment.name=d",
                ],
                b(&[("ns", "ns2"), ("version", "v1"), ("pod", "p")]),
            ),
            // Percent-decoding, and raw values when that fails.
            (
                &[b"k8s.cluster.name=a%20b%2C%C3%A9,service.name=100%,cloud.region=%zz"],
                b(&[("cluster", "a b,é"), ("name", "100%"), ("region", "%zz")]),
            ),
            (
                &[b"k8s.cluster.name=%FF%FE,service.name=a%0Ab,cloud.zone=x"],
                b(&[("cluster", "%FF%FE"), ("name", "a%0Ab")]),
            ),
            // Non-UTF-8 bytes: only that member is dropped.
            (
                &[
                    b"k8s.cluster.name=\xff\xfe,k8s.namespace.name=ok",
                    b"\xc3\x28=1",
                ],
                b(&[("ns", "ok")]),
            ),
            // Quotes and `=` in values are kept.
            (
                &[b"service.name=\"q\",service.version=a=b"],
                b(&[("name", "\"q\""), ("version", "a=b")]),
            ),
            (&[b"", b",,,,", b";;;"], Baggage::default()),
        ];
        for (values, want) in cases {
            assert_eq!(&Baggage::from_header_values(*values), want, "{values:?}");
        }
    }

    #[test]
    fn baggage_limits() {
        // 64 members are read, the 65th is not.
        let mut many = vec!["x=1"; MAX_BAGGAGE_ITEMS - 1].join(",");
        many.push_str(",service.name=in,service.version=out");
        let parsed = Baggage::parse(many.as_bytes());
        assert_eq!(parsed.service_name.as_deref(), Some("in"));
        assert_eq!(parsed.service_version, None);

        // A member cut by the byte limit is dropped, and later values are not read.
        let pad = format!("x={}", "a".repeat(MAX_BAGGAGE_LEN - 40));
        let inside = format!("{pad},service.name=in");
        assert!(inside.len() < MAX_BAGGAGE_LEN);
        let cut = "service.version=0123456789012345678901234567890123456789";
        let values = [inside, cut.to_owned(), "cloud.region=r".to_owned()];
        let parsed = Baggage::from_header_values(&values);
        assert_eq!(parsed.service_name.as_deref(), Some("in"));
        assert_eq!(parsed.service_version, None);
        assert_eq!(parsed.region, None);

        // Exactly at the limit: the last member is complete and kept.
        let exact = format!("{pad},k8s.pod.name=p");
        let exact = format!("{exact}{}", "q".repeat(MAX_BAGGAGE_LEN - exact.len()));
        assert_eq!(exact.len(), MAX_BAGGAGE_LEN);
        assert_eq!(
            Baggage::parse(exact.as_bytes())
                .workload_name
                .map(|n| n.len()),
            Some(MAX_BAGGAGE_LEN - pad.len() - 14)
        );

        // Hostile shapes stay cheap and empty.
        let commas = vec![b','; 1 << 20];
        assert!(Baggage::parse(&commas).is_empty());
        let huge = format!("k8s.cluster.name={}", "%".repeat(1 << 20));
        assert!(Baggage::parse(huge.as_bytes()).is_empty());
        let values = vec!["k8s.cluster.name="; 100_000];
        assert!(Baggage::from_header_values(values).is_empty());
    }

    #[test]
    fn workload_type_names() {
        for t in WorkloadType::ALL {
            assert_eq!(WorkloadType::from_name(t.as_str()), Some(t));
            assert_eq!(WorkloadType::from_name(&t.as_str().to_uppercase()), Some(t));
            assert_eq!(t.baggage_key(), format!("k8s.{t}.name"));
        }
        assert_eq!(WorkloadType::from_name("statefulset"), None);
    }

    #[test]
    fn traceparent_round_trips() {
        for _ in 0..100 {
            let tp = TraceParent::random();
            let s = tp.to_string();
            assert_eq!(s.len(), TRACEPARENT_LEN);
            assert!(s.starts_with("00-") && s.ends_with("-00"));
            assert_eq!(tp.to_header_value(), s.as_str());
            assert_eq!(s.parse(), Ok(tp));
        }
        let tp = TraceParent::new(NonZeroU128::MIN, NonZeroU64::MAX, 1);
        assert_eq!(
            tp.to_string(),
            "00-00000000000000000000000000000001-ffffffffffffffff-01"
        );
        assert_eq!(tp.to_header_value(), tp.to_string().as_str());
    }

    #[test]
    fn traceparent_parses() {
        let ok = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let tp = TraceParent::parse(ok.as_bytes()).unwrap();
        assert_eq!(tp.trace_id().get(), 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(tp.parent_id().get(), 0xb7ad6b7169203331);
        assert_eq!(tp.flags(), 1);
        assert_eq!(tp.to_string(), ok);

        let bad: &[&[u8]] = &[
            b"",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-011",
            b" 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-B7AD6B7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0A",
            b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331_01",
            b"00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
            b"00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c8031\xc3\xa9-b7ad6b7169203331-01",
        ];
        for input in bad {
            assert!(
                TraceParent::parse(input).is_err(),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    fn header_map(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    #[test]
    fn request_headers_round_trip() {
        let forwarded = Forwarded::new(addr("[fd00::1]:4000")).with_host("cart.shop");
        let baggage = full_baggage();
        let traceparent = TraceParent::random();
        let mut headers = header_map(&[
            (FORWARDED, b"for=\"1.1.1.1:1\""),
            (BAGGAGE, b"k8s.cluster.name=old"),
            (TRACEPARENT, b"old"),
        ]);
        apply_request_headers(
            &mut headers,
            Some(&forwarded),
            Some(&baggage),
            Some(&traceparent),
        );
        assert_eq!(headers.get_all(BAGGAGE).iter().count(), 1);
        assert_eq!(
            RequestMeta::from_headers(&headers),
            RequestMeta {
                forwarded: Some(forwarded),
                baggage: Some(baggage),
                traceparent: Some(traceparent),
                forwarded_network: None,
            }
        );

        // `None` and unencodable values leave headers untouched.
        let mut headers = header_map(&[(FORWARDED, b"for=\"1.1.1.1:1\"")]);
        apply_request_headers(&mut headers, None, Some(&Baggage::default()), None);
        apply_request_headers(&mut headers, Some(&Forwarded::default()), None, None);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[FORWARDED], "for=\"1.1.1.1:1\"");
    }

    #[test]
    fn request_meta_tolerates_hostile_headers() {
        let tp = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let long_forwarded = [b"for=\"1.2.3.4:5\";host=".as_slice(), &[b'h'; 5000]].concat();
        let long_network = vec![b'n'; MAX_FORWARDED_NETWORK_LEN + 1];
        type Headers<'a> = &'a [(&'static str, &'a [u8])];
        let cases: &[(Headers, RequestMeta)] = &[
            (&[], RequestMeta::default()),
            (
                &[
                    (FORWARDED, b"for=\"1.2.3.4:5\""),
                    (FORWARDED, b"for=\"9.9.9.9:9\";host=h"),
                    (TRACEPARENT, tp),
                    (X_FORWARDED_NETWORK, b" net1 "),
                    (X_FORWARDED_NETWORK, b"net2"),
                ],
                RequestMeta {
                    forwarded: Some(fwd(Some("1.2.3.4:5"), Some("h"))),
                    traceparent: TraceParent::parse(tp).ok(),
                    forwarded_network: Some("net1".into()),
                    ..Default::default()
                },
            ),
            (
                &[
                    (FORWARDED, &long_forwarded),
                    (BAGGAGE, b"unknown=1,\xff\xfe=\xfa"),
                    (TRACEPARENT, tp),
                    (TRACEPARENT, tp),
                    (X_FORWARDED_NETWORK, &long_network),
                ],
                RequestMeta::default(),
            ),
            (
                &[
                    (FORWARDED, b"for=\"\\\"\\\"\""),
                    (BAGGAGE, b""),
                    (TRACEPARENT, b"\xff"),
                    (X_FORWARDED_NETWORK, b"\xffnet"),
                ],
                RequestMeta::default(),
            ),
            (
                &[(X_FORWARDED_NETWORK, b"  "), (BAGGAGE, b"k8s.pod.name=p")],
                RequestMeta {
                    baggage: Some(Baggage {
                        workload_name: Some("p".into()),
                        workload_type: Some(WorkloadType::Pod),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
        ];
        for (pairs, want) in cases {
            assert_eq!(
                &RequestMeta::from_headers(&header_map(pairs)),
                want,
                "{pairs:?}"
            );
        }
    }
}

//! What crosses the wire between nodes, counted by nftables in every node netns.
//!
//! Each node gets a table `inet ml_wire` whose `forward` chain looks at TCP between pod CIDRs
//! leaving through the underlay (`eth0`), so it sees exactly the pod-to-pod traffic that goes
//! from one node to another. Named counters split it into:
//!
//! * `hbone`: packets to or from port 15008;
//! * `tls_handshake`: packets to 15008 whose payload starts a TLS handshake record (`16 03`);
//! * `other_tcp`: any other TCP (what leaves a node outside HBONE);
//! * `plaintext_http`: packets (any port) whose payload starts with `GET `, `POST` or `HTTP`,
//!   that is, HTTP readable on the wire.
//!
//! The payload matches use nftables' inner-header base (`@ih`, the bytes after the TCP header).

use serde::Serialize;
use serde_json::Value;

use crate::error::{LabError, Result};
use crate::sys;

/// The table's name (family `inet`).
pub const TABLE: &str = "ml_wire";

/// Pod-to-pod traffic between pods of different nodes, summed over all nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WireCounts {
    /// Packets to or from port 15008.
    pub hbone_packets: u64,
    /// Bytes of those packets.
    pub hbone_bytes: u64,
    /// Packets to 15008 starting a TLS handshake record.
    pub tls_handshakes: u64,
    /// TCP packets on any other port.
    pub other_tcp_packets: u64,
    /// Packets carrying readable HTTP (`GET `, `POST`, `HTTP` at the start of the payload).
    pub plaintext_http_packets: u64,
}

impl WireCounts {
    /// Adds another node's counts.
    pub fn add(&mut self, o: &WireCounts) {
        self.hbone_packets += o.hbone_packets;
        self.hbone_bytes += o.hbone_bytes;
        self.tls_handshakes += o.tls_handshakes;
        self.other_tcp_packets += o.other_tcp_packets;
        self.plaintext_http_packets += o.plaintext_http_packets;
    }

    /// True when traffic crossed nodes and all of it was HBONE: TLS to 15008, nothing else.
    pub fn only_hbone(&self) -> bool {
        self.hbone_packets > 0 && self.other_tcp_packets == 0 && self.plaintext_http_packets == 0
    }
}

impl std::fmt::Display for WireCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HBONE (port 15008): {} packets, {} bytes, {} TLS handshakes; other TCP: {} packets; \
             readable HTTP: {} packets",
            self.hbone_packets,
            self.hbone_bytes,
            self.tls_handshakes,
            self.other_tcp_packets,
            self.plaintext_http_packets
        )
    }
}

/// The ruleset for a node (pod CIDRs are all inside 10.244.0.0/16).
pub fn ruleset() -> String {
    format!(
        r#"table inet {TABLE} {{
  counter hbone {{}}
  counter tls_handshake {{}}
  counter other_tcp {{}}
  counter plaintext_http {{}}
  chain forward {{
    type filter hook forward priority -350; policy accept;
    oifname "eth0" ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 jump wire
  }}
  chain wire {{
    meta l4proto tcp @ih,0,32 {{ 0x47455420, 0x504f5354, 0x48545450 }} counter name "plaintext_http"
    tcp dport 15008 @ih,0,16 0x1603 counter name "tls_handshake"
    tcp dport 15008 counter name "hbone" accept
    tcp sport 15008 counter name "hbone" accept
    meta l4proto tcp counter name "other_tcp"
  }}
}}
"#
    )
}

/// Installs the counting table in a node netns (replacing an existing one).
pub fn install(netns: &str) -> Result<()> {
    let _ = sys::output_input(
        sys::in_netns(netns, "nft").args(["delete", "table", "inet", TABLE]),
        None,
    );
    let out = sys::output_input(
        sys::in_netns(netns, "nft").args(["-f", "-"]),
        Some(ruleset().as_bytes()),
    )?;
    if !out.status.success() {
        return Err(LabError::Invalid(format!(
            "installing the wire counters in {netns} failed (does the kernel have nf_tables \
             with inner-header payload matching?): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Zeroes a node's counters.
pub fn reset(netns: &str) -> Result<()> {
    let out = sys::output_input(
        sys::in_netns(netns, "nft").args(["reset", "counters", "table", "inet", TABLE]),
        None,
    )?;
    if !out.status.success() {
        return Err(LabError::Invalid(format!(
            "resetting the wire counters in {netns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Reads a node's counters.
pub fn read(netns: &str) -> Result<WireCounts> {
    let out = sys::output_input(
        sys::in_netns(netns, "nft").args(["-j", "list", "counters", "table", "inet", TABLE]),
        None,
    )?;
    if !out.status.success() {
        return Err(LabError::Invalid(format!(
            "reading the wire counters in {netns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse(&out.stdout)
}

/// Parses `nft -j list counters` output.
pub fn parse(json: &[u8]) -> Result<WireCounts> {
    let v: Value = serde_json::from_slice(json)
        .map_err(|e| LabError::Invalid(format!("nft printed invalid JSON: {e}")))?;
    let mut c = WireCounts::default();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let Some(counter) = item.get("counter") else {
            continue;
        };
        let packets = counter["packets"].as_u64().unwrap_or(0);
        match counter["name"].as_str() {
            Some("hbone") => {
                c.hbone_packets = packets;
                c.hbone_bytes = counter["bytes"].as_u64().unwrap_or(0);
            }
            Some("tls_handshake") => c.tls_handshakes = packets,
            Some("other_tcp") => c.other_tcp_packets = packets,
            Some("plaintext_http") => c.plaintext_http_packets = packets,
            _ => {}
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nft_json() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"counter": {"family": "inet", "name": "hbone", "table": "ml_wire", "packets": 7, "bytes": 900}},
          {"counter": {"family": "inet", "name": "tls_handshake", "table": "ml_wire", "packets": 1, "bytes": 60}},
          {"counter": {"family": "inet", "name": "other_tcp", "table": "ml_wire", "packets": 0, "bytes": 0}},
          {"counter": {"family": "inet", "name": "plaintext_http", "table": "ml_wire", "packets": 2, "bytes": 0}}]}"#;
        let c = parse(json).unwrap();
        assert_eq!(
            c,
            WireCounts {
                hbone_packets: 7,
                hbone_bytes: 900,
                tls_handshakes: 1,
                other_tcp_packets: 0,
                plaintext_http_packets: 2
            }
        );
        assert!(!c.only_hbone(), "readable HTTP is not HBONE-only");
        assert!(parse(b"not json").is_err());
    }
}

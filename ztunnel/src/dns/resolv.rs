//! The upstream resolvers: the `nameserver` lines of ztunnel's own `/etc/resolv.conf`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::DnsError;

/// Where ztunnel's own resolver configuration lives.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The nameservers of a `resolv.conf` file, port 53, in file order.
pub fn resolv_conf_nameservers(path: impl AsRef<Path>) -> Result<Vec<SocketAddr>, DnsError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| DnsError::ResolvConf {
        path: path.display().to_string(),
        source,
    })?;
    Ok(parse_nameservers(&text))
}

/// The `nameserver` entries of `resolv.conf` text. Entries with an IPv6 zone (`fe80::1%eth0`)
/// or that do not parse are skipped with a warning.
pub fn parse_nameservers(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else {
            continue;
        };
        match addr.parse::<IpAddr>() {
            Ok(ip) => {
                let sa = SocketAddr::new(ip, 53);
                if !out.contains(&sa) {
                    out.push(sa);
                }
            }
            Err(_) => {
                tracing::warn!(
                    nameserver = addr,
                    "ignoring unusable nameserver in resolv.conf"
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nameservers_in_order() {
        let text = "# generated\nsearch ns.svc.cluster.local svc.cluster.local\n\
                    nameserver 10.96.0.10\nnameserver  fd00::a ; comment\n\
                    nameserver fe80::1%eth0\nnameserver\noptions ndots:5\nnameserver 10.96.0.10\n";
        assert_eq!(
            parse_nameservers(text),
            vec![
                "10.96.0.10:53".parse::<SocketAddr>().unwrap(),
                "[fd00::a]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let e = resolv_conf_nameservers("/nonexistent/resolv.conf").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/resolv.conf"), "{e}");
    }
}

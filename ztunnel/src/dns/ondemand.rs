//! On-demand DNS: the address of an upstream workload known only by its hostname (a
//! ServiceEntry endpoint with DNS resolution), looked up when a connection needs it.
//!
//! Queries go to the node's resolvers (ztunnel's own `/etc/resolv.conf`, as for forwarded DNS)
//! from a socket of the connecting instance's [`SocketFactory`], so in shared mode they leave
//! from the pod's network namespace, marked. `A` is asked, plus `AAAA` when IPv6 is enabled.
//! Answers are cached for their TTL (at least 1 s, at most 5 minutes), so a burst of connections
//! costs one lookup.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::forward::{ForwardError, ForwardSettings, forward};
use crate::socket::SocketFactory;

const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(300);
/// Expired entries are swept when the cache grows past this.
const SWEEP_AT: usize = 1024;

/// Why a hostname gave no address (the connection then fails, naming the hostname).
#[derive(Debug, thiserror::Error)]
pub enum OnDemandError {
    #[error("{0:?} is not a valid DNS name")]
    BadName(String),
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error("the resolver answered {0:?} ({0})")]
    Rcode(ResponseCode),
    #[error("the resolver's answer is unreadable: {0}")]
    Malformed(String),
    #[error("the name has no A or AAAA record")]
    NoAddress,
}

struct Cached {
    ips: Vec<IpAddr>,
    expires: Instant,
}

/// The node-wide resolver and cache for on-demand lookups.
pub struct OnDemandResolver {
    upstreams: Vec<SocketAddr>,
    settings: ForwardSettings,
    ipv6: bool,
    cache: Mutex<HashMap<String, Cached>>,
}

impl std::fmt::Debug for OnDemandResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDemandResolver")
            .field("upstreams", &self.upstreams)
            .field("ipv6", &self.ipv6)
            .finish_non_exhaustive()
    }
}

impl OnDemandResolver {
    /// A resolver asking `upstreams` (in order), for `AAAA` too when `ipv6`.
    pub fn new(upstreams: Vec<SocketAddr>, ipv6: bool, settings: ForwardSettings) -> Self {
        OnDemandResolver {
            upstreams,
            settings,
            ipv6,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The addresses of `hostname`, IPv4 first, from the cache or the resolvers.
    pub async fn resolve(
        &self,
        sockets: &dyn SocketFactory,
        hostname: &str,
    ) -> Result<Vec<IpAddr>, OnDemandError> {
        let key = hostname.trim_end_matches('.').to_ascii_lowercase();
        if let Some(hit) = self.cache.lock().get(&key)
            && hit.expires > Instant::now()
        {
            return Ok(hit.ips.clone());
        }
        let name = Name::from_ascii(format!("{key}."))
            .map_err(|_| OnDemandError::BadName(hostname.to_string()))?;
        let v4 = self.query(sockets, &name, RecordType::A);
        let results = if self.ipv6 {
            let (v4, v6) = tokio::join!(v4, self.query(sockets, &name, RecordType::AAAA));
            vec![v4, v6]
        } else {
            vec![v4.await]
        };
        let (mut ips, mut ttl) = (Vec::new(), MAX_TTL);
        let mut first_error = None;
        for result in results {
            match result {
                Ok((found, found_ttl)) => {
                    ips.extend(found);
                    ttl = ttl.min(found_ttl);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if ips.is_empty() {
            return Err(first_error.unwrap_or(OnDemandError::NoAddress));
        }
        let now = Instant::now();
        let mut cache = self.cache.lock();
        if cache.len() >= SWEEP_AT {
            cache.retain(|_, c| c.expires > now);
        }
        cache.insert(
            key,
            Cached {
                ips: ips.clone(),
                expires: now + ttl.max(MIN_TTL),
            },
        );
        Ok(ips)
    }

    /// One query; the addresses of the asked type in the answer and their smallest TTL.
    async fn query(
        &self,
        sockets: &dyn SocketFactory,
        name: &Name,
        ty: RecordType,
    ) -> Result<(Vec<IpAddr>, Duration), OnDemandError> {
        let id: u16 = rand::random();
        let mut msg = Message::query();
        msg.metadata.id = id;
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(name.clone(), ty));
        let bytes = msg
            .to_vec()
            .map_err(|e| OnDemandError::Malformed(e.to_string()))?;
        let resp = forward(sockets, &self.upstreams, self.settings, &bytes, id, false).await?;
        let resp = Message::from_vec(&resp).map_err(|e| OnDemandError::Malformed(e.to_string()))?;
        if resp.metadata.response_code != ResponseCode::NoError {
            return Err(OnDemandError::Rcode(resp.metadata.response_code));
        }
        let mut ttl = MAX_TTL;
        let ips: Vec<IpAddr> = resp
            .answers
            .iter()
            .filter_map(|r| {
                let ip = match &r.data {
                    RData::A(a) if ty == RecordType::A => IpAddr::V4(a.0),
                    RData::AAAA(a) if ty == RecordType::AAAA => IpAddr::V6(a.0),
                    _ => return None,
                };
                ttl = ttl.min(Duration::from_secs(u64::from(r.ttl)));
                Some(ip)
            })
            .collect();
        Ok((ips, ttl))
    }
}

/// The address to dial among `ips`: the first of the original destination's family, else the
/// first.
pub fn pick(ips: &[IpAddr], original: IpAddr) -> Option<IpAddr> {
    ips.iter()
        .find(|ip| ip.is_ipv4() == original.is_ipv4())
        .or_else(|| ips.first())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::HostSocketFactory;

    #[test]
    fn pick_prefers_the_original_family() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(pick(&[v6, v4], "10.0.0.1".parse().unwrap()), Some(v4));
        assert_eq!(pick(&[v4, v6], "fd00::1".parse().unwrap()), Some(v6));
        assert_eq!(pick(&[v6], "10.0.0.1".parse().unwrap()), Some(v6));
        assert_eq!(pick(&[], "10.0.0.1".parse().unwrap()), None);
    }

    #[tokio::test]
    async fn errors_name_the_cause() {
        let none = OnDemandResolver::new(Vec::new(), true, ForwardSettings::default());
        let sockets = HostSocketFactory::default();
        let e = none.resolve(&sockets, "db.example.com").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "no upstream resolvers are configured; check the nameservers of /etc/resolv.conf"
        );
        let e = none.resolve(&sockets, "bad name!").await.unwrap_err();
        assert_eq!(e.to_string(), "\"bad name!\" is not a valid DNS name");
    }
}

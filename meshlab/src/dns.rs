//! The cluster DNS: what CoreDNS is to a Kubernetes cluster.
//!
//! `meshlab cluster-dns` (started by `up`, in the root netns) serves UDP and TCP on the
//! underlay address `10.99.0.1:53`, authoritative for `cluster.local`:
//! * `<svc>.<ns>.svc.cluster.local`: the Service's ClusterIP; for a headless Service, the IPs
//!   of its ready pods;
//! * `<a-b-c-d>.<ns>.pod.cluster.local`: the pod with that IP (CoreDNS's `pods insecure`
//!   style, limited to pods that exist).
//!
//! Other names under `cluster.local` get `NXDOMAIN`; names outside it get `REFUSED` (the lab
//! has no upstream resolver). The records come from a zone file the lab rewrites whenever
//! Services or pods change ([`zone_path`]); the server reloads it when its mtime changes.
//!
//! Pods reach the server as [`KUBE_DNS_VIP`] (their `resolv.conf` nameserver, DNATed by each
//! pod's Service table like any ClusterIP); nodes, and so ztunnel's DNS proxy and on-demand
//! resolution, through their own `resolv.conf` (`/etc/netns/<node>/resolv.conf`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hickory_proto::op::{Message, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::error::{Result, io_err};
use crate::services::ServiceView;
use crate::state::{Layout, PodState};

/// The cluster domain.
pub const DOMAIN: &str = "cluster.local";
/// The kube-dns ClusterIP pods have as their nameserver.
pub const KUBE_DNS_VIP: &str = "10.96.0.10";
/// TTL of every record (short, so that lab changes show quickly).
pub const TTL: u32 = 5;
/// How long a TCP client may take to send its query.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Fully qualified names (lowercase, no trailing dot) and their addresses.
pub type Zone = BTreeMap<String, Vec<IpAddr>>;

/// Where the lab keeps the zone file.
pub fn zone_path(layout: &Layout) -> PathBuf {
    layout.run().join("cluster-dns.json")
}

/// The records for the lab's Services and pods.
pub fn zone<'a>(services: &[ServiceView], pods: impl IntoIterator<Item = &'a PodState>) -> Zone {
    let mut z = Zone::new();
    for s in services {
        let ips: Vec<IpAddr> = match &s.cluster_ip {
            Some(ip) => ip.parse().into_iter().collect(),
            None => s
                .ready_ips
                .iter()
                .filter_map(|ip| ip.parse().ok())
                .collect(),
        };
        z.insert(format!("{}.{}.svc.{DOMAIN}", s.name, s.namespace), ips);
    }
    for p in pods {
        let Some(ip) = p.ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()) else {
            continue;
        };
        let dashed = ip.to_string().replace(['.', ':'], "-");
        z.insert(format!("{dashed}.{}.pod.{DOMAIN}", p.namespace), vec![ip]);
    }
    z
}

/// Writes the zone file atomically (the server may be reading it).
pub fn write_zone(layout: &Layout, zone: &Zone) -> Result<()> {
    let path = zone_path(layout);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(zone).map_err(|e| std::io::Error::other(e.to_string()));
    text.and_then(|t| std::fs::write(&tmp, t))
        .map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// The answer to one query message, from `zone`.
pub fn respond(zone: &Zone, req: &Message) -> Message {
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata = Metadata::response_from_request(&req.metadata);
    resp.queries = req.queries.clone();
    let Some(q) = req.queries.first() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return resp;
    };
    let name = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if name != DOMAIN && !name.ends_with(&format!(".{DOMAIN}")) {
        resp.metadata.response_code = ResponseCode::Refused;
        return resp;
    }
    resp.metadata.authoritative = true;
    let Some(ips) = zone.get(&name) else {
        resp.metadata.response_code = ResponseCode::NXDomain;
        return resp;
    };
    for ip in ips {
        let data = match (ip, q.query_type()) {
            (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
            _ => continue,
        };
        resp.answers
            .push(Record::from_rdata(q.name().clone(), TTL, data));
    }
    resp
}

/// The zone file, reloaded when its modification time changes.
struct ZoneFile {
    path: PathBuf,
    cached: Mutex<(Option<SystemTime>, Arc<Zone>)>,
}

impl ZoneFile {
    fn current(&self) -> Arc<Zone> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if mtime.is_some() && mtime != c.0 {
            match std::fs::read(&self.path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Zone>(&b).map_err(|e| e.to_string()))
            {
                Ok(z) => *c = (mtime, Arc::new(z)),
                // Keep answering from the last good zone.
                Err(e) => tracing::warn!(path = %self.path.display(), error = %e,
                    "cannot load the zone file; still serving the previous records"),
            }
        }
        c.1.clone()
    }

    fn answer(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let req = Message::from_vec(bytes).ok()?;
        if req.metadata.message_type != hickory_proto::op::MessageType::Query {
            return None;
        }
        respond(&self.current(), &req).to_vec().ok()
    }
}

/// Serves `zone_file` on `listen` (UDP and TCP) until the process is stopped.
pub async fn serve(listen: SocketAddr, zone_file: &Path) -> std::io::Result<()> {
    let udp = UdpSocket::bind(listen).await?;
    let tcp = TcpListener::bind(listen).await?;
    let zone = Arc::new(ZoneFile {
        path: zone_file.to_path_buf(),
        cached: Mutex::new((None, Arc::new(Zone::new()))),
    });
    tracing::info!(%listen, zone = %zone_file.display(), "cluster DNS serving");
    let z = zone.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = tcp.accept().await else {
                continue;
            };
            let z = z.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(TCP_IDLE, serve_tcp(conn, &z)).await;
            });
        }
    });
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = udp.recv_from(&mut buf).await?;
        if let Some(out) = zone.answer(&buf[..n]) {
            let _ = udp.send_to(&out, peer).await;
        }
    }
}

async fn serve_tcp(mut conn: TcpStream, zone: &ZoneFile) -> std::io::Result<()> {
    let len = usize::from(conn.read_u16().await?);
    let mut msg = vec![0u8; len];
    conn.read_exact(&mut msg).await?;
    if let Some(out) = zone.answer(&msg) {
        let len = u16::try_from(out.len()).map_err(std::io::Error::other)?;
        conn.write_u16(len).await?;
        conn.write_all(&out).await?;
    }
    Ok(())
}

/// Whether a DNS server answers on `server` (a UDP query for the cluster domain).
pub fn answers(server: SocketAddr) -> bool {
    let Ok(sock) = std::net::UdpSocket::bind("0.0.0.0:0") else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(300)));
    let mut q = Message::query();
    q.metadata.id = 7;
    if let Ok(name) = hickory_proto::rr::Name::from_ascii(format!("{DOMAIN}.")) {
        q.add_query(hickory_proto::op::Query::query(name, RecordType::A));
    }
    let Ok(bytes) = q.to_vec() else { return false };
    let mut buf = [0u8; 512];
    sock.send_to(&bytes, server).is_ok()
        && sock
            .recv_from(&mut buf)
            .is_ok_and(|(n, _)| n >= 2 && buf[..2] == [0, 7])
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    use super::*;

    fn ask(zone: &Zone, name: &str, t: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.id = 9;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        let resp = respond(zone, &m);
        assert_eq!(resp.metadata.id, 9);
        resp
    }

    fn ips(m: &Message) -> Vec<IpAddr> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()
    }

    fn lab_zone() -> Zone {
        let svc = |name: &str, ip: Option<&str>, ready: &[&str]| ServiceView {
            namespace: "shop".into(),
            name: name.into(),
            cluster_ip: ip.map(str::to_string),
            ports: Vec::new(),
            ready_ips: ready.iter().map(|s| s.to_string()).collect(),
        };
        let pod = |ip: Option<&str>| PodState {
            namespace: "shop".into(),
            name: "cart-1".into(),
            uid: "u".into(),
            node: "node1".into(),
            netns: "ml-node1-shop-cart-1".into(),
            container_id: "c".into(),
            ip: ip.map(str::to_string),
            deployment: None,
            template_hash: None,
            apps: Vec::new(),
            ambient_cni: false,
        };
        zone(
            &[
                svc("cart", Some("10.96.1.4"), &["10.244.1.7"]),
                svc("db", None, &["10.244.1.7", "10.244.0.9"]),
            ],
            [&pod(Some("10.244.1.7")), &pod(None)],
        )
    }

    #[test]
    fn services_and_pods_resolve() {
        let z = lab_zone();
        let r = ask(&z, "Cart.shop.svc.cluster.local.", RecordType::A);
        assert!(r.metadata.authoritative);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(ips(&r), vec![IpAddr::V4(Ipv4Addr::new(10, 96, 1, 4))]);
        assert_eq!(r.answers[0].ttl, TTL);
        // Headless: the ready pods.
        let r = ask(&z, "db.shop.svc.cluster.local.", RecordType::A);
        assert_eq!(ips(&r).len(), 2, "{r:?}");
        let r = ask(&z, "10-244-1-7.shop.pod.cluster.local.", RecordType::A);
        assert_eq!(ips(&r), vec![IpAddr::V4(Ipv4Addr::new(10, 244, 1, 7))]);
        // The name exists without an IPv6 address: NOERROR, no answer.
        let r = ask(&z, "cart.shop.svc.cluster.local.", RecordType::AAAA);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
    }

    #[test]
    fn unknown_names_are_nxdomain_and_outside_names_refused() {
        let z = lab_zone();
        let r = ask(&z, "gone.shop.svc.cluster.local.", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(r.metadata.authoritative);
        let r = ask(&z, "payments.example.com.", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        assert!(r.answers.is_empty());
        let r = ask(&z, "notcluster.local.", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    }

    /// One query over TCP (length-prefixed), its answer.
    async fn tcp_ask(addr: SocketAddr, query: &[u8]) -> Message {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_u16(query.len() as u16).await.unwrap();
        c.write_all(query).await.unwrap();
        let mut out = vec![0u8; usize::from(c.read_u16().await.unwrap())];
        c.read_exact(&mut out).await.unwrap();
        Message::from_vec(&out).unwrap()
    }

    #[tokio::test]
    async fn serves_udp_and_tcp_and_reloads_the_zone() {
        let dir = std::env::temp_dir().join(format!("meshlab-dns-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("run")).unwrap();
        let layout = Layout::new(&dir);
        write_zone(&layout, &lab_zone()).unwrap();
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let path = zone_path(&layout);
        tokio::spawn(async move { serve(addr, &path).await });
        let ok = tokio::task::spawn_blocking(move || {
            (0..50).any(|_| {
                std::thread::sleep(Duration::from_millis(20));
                answers(addr)
            })
        });
        assert!(ok.await.unwrap(), "no answer on {addr}");

        // TCP, length-prefixed.
        let mut m = Message::query();
        m.metadata.id = 11;
        m.add_query(Query::query(
            Name::from_ascii("cart.shop.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        let q = m.to_vec().unwrap();
        let r = tcp_ask(addr, &q).await;
        assert_eq!(ips(&r), vec![IpAddr::V4(Ipv4Addr::new(10, 96, 1, 4))]);

        // A rewritten zone is picked up (mtime granularity: make sure it moves).
        std::thread::sleep(Duration::from_millis(20));
        let mut z = Zone::new();
        z.insert(
            "cart.shop.svc.cluster.local".into(),
            vec!["10.96.1.5".parse().unwrap()],
        );
        write_zone(&layout, &z).unwrap();
        let r = tcp_ask(addr, &q).await;
        assert_eq!(ips(&r), vec![IpAddr::V4(Ipv4Addr::new(10, 96, 1, 5))]);
        // A broken zone file keeps the last good records.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(zone_path(&layout), b"{ not json").unwrap();
        let resp = ZoneFile {
            path: zone_path(&layout),
            cached: Mutex::new((None, Arc::new(z.clone()))),
        };
        assert_eq!(resp.current().as_ref(), &z);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The DNS proxy on loopback: authoritative answers from the mesh state, forwarding to an
//! in-test upstream resolver (UDP and TCP, written with hickory-proto), errors, framing and
//! truncation. No privileges needed: ephemeral ports and `HostSocketFactory { mark: None }`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use parking_lot::Mutex;
use proto::istio::workload as pb;
use state::{MeshState, Service, Workload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use ztunnel::dns::{DnsClient, DnsHandle, DnsInputs, DnsServer, ForwardSettings, SourceLabels};
use ztunnel::socket::HostSocketFactory;

const CART: &str = "cart.shop.svc.cluster.local.";
const WAIT: Duration = Duration::from_secs(3);

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn service(ns: &str, hostname: &str, vips: &[&str]) -> Service {
    Service::try_from(pb::Service {
        name: hostname.split('.').next().unwrap().into(),
        namespace: ns.into(),
        hostname: hostname.into(),
        addresses: vips
            .iter()
            .map(|v| pb::NetworkAddress {
                network: String::new(),
                address: ip_bytes(v.parse().unwrap()),
                length: None,
            })
            .collect(),
        ..Default::default()
    })
    .unwrap()
}

fn pod(name: &str, ip: IpAddr, service_key: &str) -> Workload {
    let mut w = Workload::try_from(pb::Workload {
        uid: format!("Kubernetes//Pod/shop/{name}"),
        name: name.into(),
        namespace: "shop".into(),
        addresses: vec![ip_bytes(ip)],
        ..Default::default()
    })
    .unwrap();
    w.services.insert(service_key.into(), BTreeMap::new());
    w
}

/// `cart` (v4 + v6 VIP), `v4only`, and a headless `big` service with 100 endpoints.
fn mesh() -> Arc<MeshState> {
    let s = MeshState::default();
    s.insert_service(
        "cart",
        service(
            "shop",
            "cart.shop.svc.cluster.local",
            &["10.0.0.1", "fd00::1"],
        ),
    );
    s.insert_service(
        "v4only",
        service("shop", "v4only.shop.svc.cluster.local", &["10.0.0.2"]),
    );
    s.insert_service("big", service("shop", "big.shop.svc.cluster.local", &[]));
    for i in 0..100u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 2, 0, i));
        s.insert_workload(
            &format!("big-{i}"),
            pod(&format!("big-{i}"), ip, "shop/big.shop.svc.cluster.local"),
        );
    }
    Arc::new(s)
}

/// What the fake upstream saw: (transport, query name).
type Seen = Arc<Mutex<Vec<(&'static str, String)>>>;

/// A tiny upstream resolver on one loopback port (UDP and TCP):
/// * `example.org` A → 93.184.216.34 (TTL 300);
/// * `slow.example.org` → never answers;
/// * `big.example.org` → over UDP an empty answer with `TC`, over TCP 60 A records;
/// * anything else → NXDOMAIN.
struct Upstream {
    addr: SocketAddr,
    seen: Seen,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn upstream_answer(query: &Message, tcp: bool) -> Option<Message> {
    let q = query.queries.first()?;
    let name = q.name().to_ascii().to_ascii_lowercase();
    let mut resp = Message::response(query.metadata.id, query.metadata.op_code);
    resp.metadata.recursion_desired = query.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.queries = query.queries.clone();
    match name.as_str() {
        "example.org." => resp.answers.push(Record::from_rdata(
            q.name().clone(),
            300,
            RData::A(A::new(93, 184, 216, 34)),
        )),
        "slow.example.org." => return None,
        "big.example.org." if !tcp => resp.metadata.truncation = true,
        "big.example.org." => {
            for i in 0..60 {
                resp.answers.push(Record::from_rdata(
                    q.name().clone(),
                    300,
                    RData::A(A::new(192, 0, 2, i)),
                ));
            }
        }
        _ => resp.metadata.response_code = ResponseCode::NXDomain,
    }
    Some(resp)
}

impl Upstream {
    async fn start() -> Upstream {
        // UDP and TCP on the same ephemeral port: the TCP port may already be taken by another
        // test running at the same time, so try a few ports.
        let mut attempt = 0;
        let (udp, addr, tcp) = loop {
            attempt += 1;
            let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            let addr = udp.local_addr().unwrap();
            match TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, addr, tcp),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < 20 => continue,
                Err(e) => panic!("binding the test upstream on {addr}: {e}"),
            }
        };
        let seen: Seen = Arc::default();
        let udp_seen = seen.clone();
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
                let query = Message::from_vec(&buf[..n]).unwrap();
                let name = query.queries[0].name().to_ascii();
                udp_seen.lock().push(("udp", name));
                if let Some(resp) = upstream_answer(&query, false) {
                    udp.send_to(&resp.to_vec().unwrap(), peer).await.unwrap();
                }
            }
        });
        let tcp_seen = seen.clone();
        let tcp_task = tokio::spawn(async move {
            loop {
                let (mut stream, _) = tcp.accept().await.unwrap();
                let seen = tcp_seen.clone();
                tokio::spawn(async move {
                    while let Ok(query) = read_frame(&mut stream).await {
                        let query = Message::from_vec(&query).unwrap();
                        seen.lock()
                            .push(("tcp", query.queries[0].name().to_ascii()));
                        if let Some(resp) = upstream_answer(&query, true) {
                            write_frame(&mut stream, &resp.to_vec().unwrap()).await;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            seen,
            tasks: vec![udp_task, tcp_task],
        }
    }
}

async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame(stream: &mut TcpStream, msg: &[u8]) {
    let mut frame = u16::try_from(msg.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(msg);
    stream.write_all(&frame).await.unwrap();
}

fn inputs(upstreams: Vec<SocketAddr>, forward: ForwardSettings) -> DnsInputs {
    DnsInputs {
        state: mesh(),
        sockets: Arc::new(HostSocketFactory { mark: None }),
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        client_namespace: "shop".into(),
        cluster_domain: "cluster.local".into(),
        upstreams,
        source: DnsClient::Fixed(SourceLabels {
            canonical_service: "client".into(),
            canonical_revision: "v1".into(),
        }),
        forward,
    }
}

fn fast() -> ForwardSettings {
    ForwardSettings {
        udp_try: Duration::from_millis(300),
        total: Duration::from_secs(1),
    }
}

async fn start(upstream: &Upstream) -> (DnsHandle, SocketAddr) {
    let handle = DnsServer::start(inputs(vec![upstream.addr], fast())).unwrap();
    let addr = handle.addrs()[0];
    (handle, addr)
}

fn query(name: &str, qtype: RecordType, id: u16) -> Message {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m
}

async fn udp_raw(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind((server.ip(), 0)).await.unwrap();
    sock.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(wait, sock.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    buf.truncate(n);
    Some(buf)
}

async fn udp(server: SocketAddr, msg: &Message) -> (Message, usize) {
    let bytes = udp_raw(server, &msg.to_vec().unwrap(), WAIT)
        .await
        .expect("no UDP answer");
    (Message::from_vec(&bytes).unwrap(), bytes.len())
}

async fn tcp(server: SocketAddr, msg: &Message) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    write_frame(&mut stream, &msg.to_vec().unwrap()).await;
    let resp = tokio::time::timeout(WAIT, read_frame(&mut stream))
        .await
        .expect("no TCP answer")
        .unwrap();
    Message::from_vec(&resp).unwrap()
}

fn a_records(m: &Message) -> Vec<(String, u32, IpAddr)> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((r.name.to_ascii(), r.ttl, IpAddr::V4(a.0))),
            RData::AAAA(a) => Some((r.name.to_ascii(), r.ttl, IpAddr::V6(a.0))),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn authoritative_a_and_aaaa_with_ttl_30() {
    let upstream = Upstream::start().await;
    let (dns, addr) = start(&upstream).await;

    let (resp, _) = udp(addr, &query(CART, RecordType::A, 7)).await;
    assert_eq!(resp.metadata.id, 7);
    assert_eq!(resp.metadata.message_type, MessageType::Response);
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    assert!(resp.metadata.authoritative);
    assert!(resp.metadata.recursion_desired && resp.metadata.recursion_available);
    assert_eq!(resp.queries, query(CART, RecordType::A, 7).queries);
    assert_eq!(
        a_records(&resp),
        vec![(CART.to_string(), 30, "10.0.0.1".parse().unwrap())]
    );

    let (resp, _) = udp(
        addr,
        &query("Cart.Shop.Svc.Cluster.Local", RecordType::AAAA, 8),
    )
    .await;
    assert_eq!(
        a_records(&resp),
        vec![(
            "Cart.Shop.Svc.Cluster.Local.".to_string(),
            30,
            "fd00::1".parse().unwrap()
        )]
    );
    assert!(
        upstream.seen.lock().is_empty(),
        "mesh names are not forwarded"
    );
    dns.shutdown().await;
}

#[tokio::test]
async fn search_domain_names_get_a_cname_to_the_fqdn() {
    let upstream = Upstream::start().await;
    let (dns, addr) = start(&upstream).await;
    let asked = "cart.shop.svc.cluster.local.shop.svc.cluster.local.";
    let (resp, _) = udp(addr, &query(asked, RecordType::A, 9)).await;
    assert!(resp.metadata.authoritative);
    assert_eq!(resp.answers.len(), 2);
    let cname = &resp.answers[0];
    assert_eq!(cname.name.to_ascii(), asked);
    assert_eq!(cname.ttl, 30);
    match &cname.data {
        RData::CNAME(target) => assert_eq!(target.0.to_ascii(), CART),
        other => panic!("expected a CNAME, got {other:?}"),
    }
    assert_eq!(
        a_records(&resp),
        vec![(CART.to_string(), 30, "10.0.0.1".parse().unwrap())]
    );
    dns.shutdown().await;
}

#[tokio::test]
async fn known_name_without_that_family_is_an_empty_noerror() {
    let upstream = Upstream::start().await;
    let (dns, addr) = start(&upstream).await;
    let (resp, _) = udp(
        addr,
        &query("v4only.shop.svc.cluster.local.", RecordType::AAAA, 10),
    )
    .await;
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    assert!(resp.metadata.authoritative);
    assert!(resp.answers.is_empty());
    assert!(upstream.seen.lock().is_empty());
    dns.shutdown().await;
}

#[tokio::test]
async fn unknown_names_are_forwarded_and_the_id_preserved() {
    let upstream = Upstream::start().await;
    let (dns, addr) = start(&upstream).await;
    let (resp, _) = udp(addr, &query("example.org.", RecordType::A, 0xBEEF)).await;
    assert_eq!(resp.metadata.id, 0xBEEF);
    assert!(!resp.metadata.authoritative);
    assert_eq!(
        a_records(&resp),
        vec![(
            "example.org.".to_string(),
            300,
            "93.184.216.34".parse().unwrap()
        )]
    );
    let (resp, _) = udp(addr, &query("nothing.example.org.", RecordType::A, 11)).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::NXDomain);
    // A mesh name with a type we do not answer goes upstream too.
    let (resp, _) = udp(addr, &query(CART, RecordType::TXT, 12)).await;
    assert_eq!(resp.metadata.id, 12);
    assert_eq!(
        *upstream.seen.lock(),
        vec![
            ("udp", "example.org.".to_string()),
            ("udp", "nothing.example.org.".to_string()),
            ("udp", CART.to_string()),
        ]
    );
    dns.shutdown().await;
}

#[tokio::test]
async fn upstream_timeout_is_servfail() {
    let upstream = Upstream::start().await;
    let (dns, addr) = start(&upstream).await;
    let started = std::time::Instant::now();
    let (resp, _) = udp(addr, &query("slow.example.org.", RecordType::A, 13)).await;
    assert_eq!(resp.metadata.id, 13);
    assert_eq!(resp.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(resp.queries.len(), 1);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    dns.shutdown().await;
}

#[tokio::test]
async fn dead_or_missing_upstreams_are_servfail() {
    // An upstream port nobody listens on (ECONNREFUSED), then none at all.
    let dead = {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.local_addr().unwrap()
    };
    let dns = DnsServer::start(inputs(vec![dead], fast())).unwrap();
    let (resp, _) = udp(dns.addrs()[0], &query("example.org.", RecordType::A, 14)).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::ServFail);
    dns.shutdown().await;

    let dns = DnsServer::start(inputs(vec![], fast())).unwrap();
    let resp = tcp(dns.addrs()[0], &query("example.org.", RecordType::A, 15)).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::ServFail);
    // Mesh names still work without upstreams.
    let resp = tcp(dns.addrs()[0], &query(CART, RecordType::A, 16)).await;
    assert_eq!(resp.answers.len(), 1);
    dns.shutdown().await;
}

#[tokio::test]
async fn second_upstream_is_tried_when_the_first_times_out() {
    let upstream = Upstream::start().await;
    // Bound but silent: the first try times out.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dns = DnsServer::start(inputs(
        vec![silent.local_addr().unwrap(), upstream.addr],
        fast(),
    ))
    .unwrap();
    let (resp, _) = udp(dns.addrs()[0], &query("example.org.", RecordType::A, 17)).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    assert_eq!(resp.answers.len(), 1);
    dns.shutdown().await;
}

#[tokio::test]
async fn malformed_queries_get_formerr_or_are_dropped() {
    let upstream = Upstream::start().await;
    let (dns, addr) = start(&upstream).await;
    // A header claiming one question, then garbage.
    let garbage = [
        0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xff, 0xff,
    ];
    let resp = udp_raw(addr, &garbage, WAIT)
        .await
        .expect("FORMERR expected");
    let resp = Message::from_vec(&resp).unwrap();
    assert_eq!(resp.metadata.id, 0x1234);
    assert_eq!(resp.metadata.message_type, MessageType::Response);
    assert_eq!(resp.metadata.response_code, ResponseCode::FormErr);
    // No question at all.
    let mut empty = query(CART, RecordType::A, 18);
    empty.queries.clear();
    let (resp, _) = udp(addr, &empty).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::FormErr);
    // Too short to carry an ID, or a response: dropped.
    let short = Duration::from_millis(300);
    assert_eq!(udp_raw(addr, &[0x12], short).await, None);
    let response = query(CART, RecordType::A, 19).into_response();
    assert_eq!(
        udp_raw(addr, &response.to_vec().unwrap(), short).await,
        None
    );
    // The server is still fine.
    let (resp, _) = udp(addr, &query(CART, RecordType::A, 20)).await;
    assert_eq!(resp.answers.len(), 1);
    assert!(upstream.seen.lock().is_empty());
    dns.shutdown().await;
}

#[tokio::test]
async fn tcp_queries_with_length_framing() {
    let upstream = Upstream::start().await;
    let (dns, addr) = start(&upstream).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // Two queries on one connection, the first one's length prefix split across writes.
    let first = query("cart", RecordType::A, 21).to_vec().unwrap();
    let len = u16::try_from(first.len()).unwrap().to_be_bytes();
    stream.write_all(&len[..1]).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(&len[1..]).await.unwrap();
    stream.write_all(&first).await.unwrap();
    write_frame(
        &mut stream,
        &query("example.org.", RecordType::A, 22).to_vec().unwrap(),
    )
    .await;
    let one = Message::from_vec(&read_frame(&mut stream).await.unwrap()).unwrap();
    let two = Message::from_vec(&read_frame(&mut stream).await.unwrap()).unwrap();
    assert_eq!((one.metadata.id, two.metadata.id), (21, 22));
    assert_eq!(one.answers.len(), 2, "CNAME + A");
    assert_eq!(
        a_records(&two),
        vec![(
            "example.org.".to_string(),
            300,
            "93.184.216.34".parse().unwrap()
        )]
    );
    // A clean close between messages ends the connection quietly.
    drop(stream);
    dns.shutdown().await;
}

#[tokio::test]
async fn truncated_upstream_answers() {
    let upstream = Upstream::start().await;
    let (dns, addr) = start(&upstream).await;
    // UDP client: the TC bit is passed through.
    let (resp, _) = udp(addr, &query("big.example.org.", RecordType::A, 23)).await;
    assert!(resp.metadata.truncation);
    assert!(resp.answers.is_empty());
    // TCP client: retried upstream over TCP.
    let resp = tcp(addr, &query("big.example.org.", RecordType::A, 24)).await;
    assert_eq!(resp.metadata.id, 24);
    assert!(!resp.metadata.truncation);
    assert_eq!(resp.answers.len(), 60);
    assert_eq!(
        *upstream.seen.lock(),
        vec![
            ("udp", "big.example.org.".to_string()),
            ("udp", "big.example.org.".to_string()),
            ("tcp", "big.example.org.".to_string()),
        ]
    );
    dns.shutdown().await;
}

#[tokio::test]
async fn large_authoritative_answers_truncate_on_udp_only() {
    let upstream = Upstream::start().await;
    let (dns, addr) = start(&upstream).await;
    let big = "big.shop.svc.cluster.local.";
    // No EDNS: 512 bytes at most, TC set, as many records as fit.
    let (resp, len) = udp(addr, &query(big, RecordType::A, 25)).await;
    assert!(resp.metadata.truncation);
    assert!(len <= 512, "{len}");
    assert!(!resp.answers.is_empty() && resp.answers.len() < 100);
    // EDNS with a 4096-byte buffer: everything fits.
    let mut with_edns = query(big, RecordType::A, 26);
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    with_edns.edns = Some(edns);
    let (resp, len) = udp(addr, &with_edns).await;
    assert!(!resp.metadata.truncation);
    assert_eq!(resp.answers.len(), 100);
    assert!(len > 512);
    assert!(resp.edns.is_some(), "EDNS answered with EDNS");
    // TCP: never truncated.
    let resp = tcp(addr, &query(big, RecordType::A, 27)).await;
    assert!(!resp.metadata.truncation);
    assert_eq!(resp.answers.len(), 100);
    dns.shutdown().await;
}

#[tokio::test]
async fn shutdown_releases_the_port() {
    let upstream = Upstream::start().await;
    let (dns, addr) = start(&upstream).await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    dns.shutdown().await;
    // Open connections are closed.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(WAIT, idle.read(&mut buf))
        .await
        .expect("connection not closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // Both sockets can be bound again.
    let again = DnsServer::start(DnsInputs {
        bind: vec![addr],
        ..inputs(vec![upstream.addr], fast())
    })
    .unwrap();
    assert_eq!(again.addrs(), &[addr]);
    again.shutdown().await;
}

#[tokio::test]
async fn listens_on_ipv6_loopback_too() {
    let upstream = Upstream::start().await;
    let dns = DnsServer::start(DnsInputs {
        bind: vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()],
        ..inputs(vec![upstream.addr], fast())
    })
    .unwrap();
    let addrs = dns.addrs().to_vec();
    assert_eq!(
        addrs.len(),
        2,
        "[::1] could not be bound: IPv6 must be enabled on lo for this test"
    );
    assert!(addrs[1].is_ipv6());
    let (resp, _) = udp(addrs[1], &query(CART, RecordType::AAAA, 28)).await;
    assert_eq!(resp.answers.len(), 1);
    let resp = tcp(addrs[1], &query("example.org.", RecordType::A, 29)).await;
    assert_eq!(resp.answers.len(), 1);
    dns.shutdown().await;
}

#[tokio::test]
async fn bind_conflict_is_reported() {
    let taken = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let err = DnsServer::start(DnsInputs {
        bind: vec![taken.local_addr().unwrap()],
        ..inputs(vec![], fast())
    })
    .unwrap_err();
    assert!(err.to_string().contains("udp"), "{err}");
    let err = DnsServer::start(DnsInputs {
        bind: vec![],
        ..inputs(vec![], fast())
    })
    .unwrap_err();
    assert!(matches!(err, ztunnel::dns::DnsError::NoListeners), "{err}");
}

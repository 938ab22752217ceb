//! The DNS proxy in shared (in-pod) mode: the proxy runs in the test's own namespace and creates
//! its sockets in a "pod" network namespace through `InPodSocketFactory` (mark 1337), like
//! ztunnel does for an enrolled pod.
//!
//! Pod namespace: `lo` up, a veth to an "upstream" namespace holding the cluster resolver
//! (10.199.53.1:53, a tiny hickory-proto responder). As the CNI rules do, the pod's port-53 UDP
//! and TCP traffic is redirected to 15053 unless it carries mark 1337, and unmarked port-53
//! traffic that escapes the redirect is dropped, so a forwarded answer proves the upstream
//! socket was created in the pod and marked.
//!
//! Needs root, iproute2 and iptables; fails (never skips) when they are missing.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use proto::istio::workload as pb;
use state::{MeshState, Service};
use ztunnel::dns::{DnsClient, DnsInputs, DnsServer, ForwardSettings, SourceLabels, default_bind};
use ztunnel::inpod::{InPodSocketFactory, NetnsHandle};

mod support;
use support::{Netns, run};

const RESOLVER: &str = "10.199.53.1";

/// Answers `example.org` A with 93.184.216.34 on UDP port 53 until `stop`.
fn resolver(ns: &Netns, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    ns.thread(move || {
        let sock = UdpSocket::bind((RESOLVER, 53)).expect("bind resolver");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let query = Message::from_vec(&buf[..n]).unwrap();
            let mut resp = Message::response(query.metadata.id, query.metadata.op_code);
            resp.queries = query.queries.clone();
            if query.queries[0].name().to_ascii() == "example.org." {
                resp.answers.push(Record::from_rdata(
                    query.queries[0].name().clone(),
                    300,
                    RData::A(A::new(93, 184, 216, 34)),
                ));
            } else {
                resp.metadata.response_code = ResponseCode::NXDomain;
            }
            sock.send_to(&resp.to_vec().unwrap(), peer).unwrap();
        }
    })
}

fn query(name: &str, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

fn first_a(resp: &[u8]) -> (u16, Vec<IpAddr>) {
    let m = Message::from_vec(resp).unwrap();
    let ips = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    (m.metadata.id, ips)
}

/// What a pod application sees, querying the cluster resolver on port 53 (redirected).
fn pod_queries() -> Vec<(u16, Vec<IpAddr>)> {
    let resolver: SocketAddr = (RESOLVER.parse::<IpAddr>().unwrap(), 53).into();
    let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    for (i, name) in ["cart", "example.org."].iter().enumerate() {
        udp.send_to(&query(name, 100 + i as u16), resolver).unwrap();
        let (n, from) = udp.recv_from(&mut buf).expect("UDP answer");
        assert_eq!(from, resolver, "answers come back from the address asked");
        out.push(first_a(&buf[..n]));
    }
    // TCP, through the redirect too.
    let mut tcp = TcpStream::connect_timeout(&resolver, Duration::from_secs(5)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let q = query("cart.shop.svc.cluster.local.", 200);
    let mut frame = u16::try_from(q.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&q);
    tcp.write_all(&frame).unwrap();
    let mut len = [0u8; 2];
    tcp.read_exact(&mut len).unwrap();
    let mut resp = vec![0u8; usize::from(u16::from_be_bytes(len))];
    tcp.read_exact(&mut resp).unwrap();
    out.push(first_a(&resp));
    out
}

fn mesh() -> Arc<MeshState> {
    let s = MeshState::default();
    let svc = Service::try_from(pb::Service {
        name: "cart".into(),
        namespace: "shop".into(),
        hostname: "cart.shop.svc.cluster.local".into(),
        addresses: vec![pb::NetworkAddress {
            network: String::new(),
            address: vec![10, 0, 0, 1],
            length: None,
        }],
        ..Default::default()
    })
    .unwrap();
    s.insert_service("cart", svc);
    Arc::new(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_pod_dns_proxy_answers_and_forwards_with_marked_sockets() {
    let pod = Netns::new("zt-dns-pod");
    let up = Netns::new("zt-dns-up");
    run(
        "ip",
        &[
            "link", "add", "zdns0", "netns", &pod.name, "type", "veth", "peer", "name", "zdns1",
            "netns", &up.name,
        ],
    );
    pod.exec("ip link set lo up");
    pod.exec("ip addr add 10.199.53.2/24 dev zdns0");
    pod.exec("ip link set zdns0 up");
    up.exec("ip link set lo up");
    up.exec(&format!("ip addr add {RESOLVER}/24 dev zdns1"));
    up.exec("ip link set zdns1 up");
    for proto in ["udp", "tcp"] {
        pod.exec(&format!(
            "iptables -t nat -A OUTPUT -p {proto} --dport 53 -m mark ! --mark 1337 \
             -j REDIRECT --to-ports 15053"
        ));
        pod.exec(&format!(
            "iptables -A OUTPUT -p {proto} --dport 53 -m mark ! --mark 1337 -j DROP"
        ));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let resolver_thread = resolver(&up, stop.clone());

    let netns = NetnsHandle::open(pod.path()).expect("open pod netns");
    let dns = DnsServer::start(DnsInputs {
        state: mesh(),
        sockets: Arc::new(InPodSocketFactory::new(netns, Some(1337), true)),
        bind: default_bind(false),
        client_namespace: "shop".into(),
        cluster_domain: "cluster.local".into(),
        upstreams: vec![(RESOLVER.parse::<IpAddr>().unwrap(), 53).into()],
        source: DnsClient::Fixed(SourceLabels::default()),
        forward: ForwardSettings::default(),
    })
    .expect("DNS proxy starts in the pod");
    assert_eq!(dns.addrs(), &default_bind(false)[..]);

    let answers = tokio::task::spawn_blocking({
        let client = pod.thread(pod_queries);
        move || client.join().expect("pod client panicked")
    })
    .await
    .unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        answers,
        vec![
            (100, vec![ip("10.0.0.1")]),
            (101, vec![ip("93.184.216.34")]),
            (200, vec![ip("10.0.0.1")]),
        ]
    );
    dns.shutdown().await;
    stop.store(true, Ordering::Relaxed);
    resolver_thread.join().unwrap();
}

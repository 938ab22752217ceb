//! On-demand DNS on the outbound path, over real sockets on loopback: a service whose endpoint
//! is known only by hostname (a ServiceEntry with DNS resolution) is reached at the address a
//! real DNS exchange gives, and a name that does not resolve fails the connection, naming it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use parking_lot::Mutex;
use state::{MeshState, Workload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::telemetry::{ConnectionContext, EarlyFailure, Outcome, TelemetrySink};
use crate::dns::{ForwardSettings, OnDemandResolver};

/// A resolver on loopback: `echo.example.test` → 127.0.0.1 (TTL 60), anything else NXDOMAIN.
/// Returns its address and the names it was asked, with their types.
async fn resolver() -> (SocketAddr, Arc<Mutex<Vec<(String, RecordType)>>>) {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
            let query = Message::from_vec(&buf[..n]).unwrap();
            let q = query.queries[0].clone();
            log.lock().push((q.name().to_ascii(), q.query_type()));
            let mut resp = Message::response(query.metadata.id, query.metadata.op_code);
            resp.metadata.recursion_desired = query.metadata.recursion_desired;
            resp.queries = query.queries.clone();
            match (q.name().to_ascii().as_str(), q.query_type()) {
                ("echo.example.test.", RecordType::A) => resp.answers.push(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::LOCALHOST)),
                )),
                ("echo.example.test.", _) => {}
                _ => resp.metadata.response_code = ResponseCode::NXDomain,
            }
            udp.send_to(&resp.to_vec().unwrap(), peer).await.unwrap();
        }
    });
    (addr, asked)
}

/// Records closes and on-demand lookups.
#[derive(Default)]
struct Seen {
    closed: Mutex<Vec<(ConnectionContext, Outcome)>>,
    lookups: Mutex<Vec<String>>,
}

impl TelemetrySink for Seen {
    fn opened(&self, _: &ConnectionContext) {}
    fn closed(&self, ctx: &ConnectionContext, outcome: &Outcome) {
        self.closed.lock().push((ctx.clone(), outcome.clone()));
    }
    fn failed(&self, _: &EarlyFailure) {}
    fn on_demand_dns(&self, source: &Workload, hostname: &str) {
        assert_eq!(source.name, "ui-0");
        self.lookups.lock().push(hostname.to_string());
    }
}

/// The shared test mesh (with `ui-0` in `shop`), plus two services on port 80 whose only endpoints have hostnames:
/// `ext` (10.96.0.50, resolvable) and `gone` (10.96.0.51, NXDOMAIN), both to `app_port`.
fn mesh(app_port: u16) -> Arc<MeshState> {
    let yaml = format!(
        r#"
workloads:
- uid: cluster1/networking.istio.io/ServiceEntry/shop/ext/echo.example.test
  name: ext
  namespace: shop
  serviceAccount: default
  trustDomain: cluster.local
  hostname: echo.example.test
  workloadIps: []
  services:
    "shop/ext.example.test": {{80: {app_port}}}
- uid: cluster1/networking.istio.io/ServiceEntry/shop/gone/nowhere.example.test
  name: gone
  namespace: shop
  serviceAccount: default
  trustDomain: cluster.local
  hostname: nowhere.example.test
  workloadIps: []
  services:
    "shop/gone.example.test": {{80: {app_port}}}
services:
- name: ext
  namespace: shop
  hostname: ext.example.test
  vips: ["/10.96.0.50"]
  ports: {{80: {app_port}}}
- name: gone
  namespace: shop
  hostname: gone.example.test
  vips: ["/10.96.0.51"]
  ports: {{80: {app_port}}}
"#
    );
    let state = MeshState::default();
    state::local::load(&state, super::tests::MESH).expect("the shared test mesh");
    state::local::load(&state, &yaml).expect("valid local config");
    Arc::new(state)
}

/// Runs one outbound connection from a loopback client to `dst` through `handle_to`; returns
/// what the client read back after sending `ping`.
async fn connect_through(ctx: Arc<super::ProxyCtx>, dst: SocketAddr) -> Vec<u8> {
    let entry = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(entry.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, peer) = entry.accept().await.unwrap();
    let proxied = tokio::spawn(super::outbound::handle_to(
        ctx,
        accepted,
        peer,
        dst,
        Instant::now(),
    ));
    let _ = client.write_all(b"ping").await;
    let _ = client.shutdown().await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got))
        .await
        .expect("the proxy ends the connection");
    proxied.await.unwrap();
    got
}

#[tokio::test]
async fn hostname_endpoints_are_resolved_on_demand() {
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = app.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = app.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
            });
        }
    });
    let (dns, asked) = resolver().await;
    let seen = Arc::new(Seen::default());
    let mut ctx = super::tests::test_ctx(mesh(app_port), "ui-0", "ui");
    ctx.telemetry = seen.clone();
    ctx.settings.resolver = Arc::new(OnDemandResolver::new(
        vec![dns],
        true,
        ForwardSettings::default(),
    ));
    let ctx = Arc::new(ctx);

    // Twice: the second connection is served from the cache (TTL 60 s).
    for _ in 0..2 {
        let got = connect_through(ctx.clone(), "10.96.0.50:80".parse().unwrap()).await;
        assert_eq!(got, b"ping", "echoed through the resolved address");
    }
    let mut asked = asked.lock().clone();
    asked.sort_by_key(|(_, ty)| u16::from(*ty));
    assert_eq!(
        asked,
        vec![
            ("echo.example.test.".to_string(), RecordType::A),
            ("echo.example.test.".to_string(), RecordType::AAAA),
        ],
        "one lookup per family, then the cache"
    );
    {
        let closed = seen.closed.lock();
        assert_eq!(closed.len(), 2);
        let (conn, outcome) = &closed[0];
        assert_eq!(outcome.error, None);
        assert_eq!(
            conn.dst_addr,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), app_port),
            "dialled the resolved address"
        );
        assert_eq!(
            conn.destination_service
                .as_ref()
                .map(|s| s.hostname.as_str()),
            Some("ext.example.test")
        );
    }
    // Counted per connection, as Istio does.
    assert_eq!(*seen.lookups.lock(), vec!["echo.example.test"; 2]);

    // A name that does not resolve: the connection is closed and the reason names it.
    let got = connect_through(ctx.clone(), "10.96.0.51:80".parse().unwrap()).await;
    assert!(got.is_empty());
    let closed = seen.closed.lock();
    let error = closed[2].1.error.clone().expect("a failure");
    assert!(
        error.contains("nowhere.example.test") && error.contains("NXDomain (Non-Existent Domain)"),
        "{error}"
    );
}

//! Starting and stopping a proxy instance on loopback (no namespaces, no privileges beyond
//! binding ephemeral ports): listener addresses, bind conflicts, `ENABLE_ORIG_SRC=true`
//! enforcement, loops to the instance's own ports, drain.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hbone::StaticCertificate;
use mesh_testing::TestCa;
use parking_lot::Mutex;
use state::MeshState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use ztunnel::proxy::{
    ConnectionContext, Direction, EarlyFailure, OrigSrc, Outcome, Ports, Proxy, ProxyInputs,
    ProxySettings, StartError, TelemetrySink, WorkloadInfo,
};
use ztunnel::socket::{HostSocketFactory, SocketFactory};

#[derive(Default)]
struct Failures(Mutex<Vec<EarlyFailure>>);

impl TelemetrySink for Failures {
    fn opened(&self, _: &ConnectionContext) {}
    fn closed(&self, _: &ConnectionContext, _: &Outcome) {}
    fn failed(&self, f: &EarlyFailure) {
        self.0.lock().push(f.clone());
    }
}

/// A factory that never manages to make a listener transparent.
struct NoTransparency;

impl SocketFactory for NoTransparency {
    fn new_tcp(&self, dst: SocketAddr) -> io::Result<TcpSocket> {
        HostSocketFactory::default().new_tcp(dst)
    }
    fn tcp_listener(&self, addr: SocketAddr, _transparent: bool) -> io::Result<TcpListener> {
        HostSocketFactory::default().tcp_listener(addr, false)
    }
    fn udp_bind(&self, addr: SocketAddr) -> io::Result<UdpSocket> {
        HostSocketFactory::default().udp_bind(addr)
    }
}

fn inputs(
    sockets: Arc<dyn SocketFactory>,
    ports: Ports,
    orig_src: OrigSrc,
    sink: Arc<Failures>,
) -> ProxyInputs {
    let ca = TestCa::new("start-test");
    let cert = ca
        .issue("spiffe://cluster.local/ns/shop/sa/cart")
        .workload_cert();
    ProxyInputs {
        state: Arc::new(MeshState::default()),
        certs: StaticCertificate::new(cert),
        sockets,
        workload: WorkloadInfo {
            name: "cart-0".into(),
            namespace: "shop".into(),
            service_account: "cart".into(),
            trust_domain: "cluster.local".into(),
        },
        settings: ProxySettings {
            ipv6: false,
            ports,
            orig_src,
            workload_wait: Duration::from_millis(100),
            ..ProxySettings::default()
        },
        telemetry: sink,
    }
}

const ANY: Ports = Ports {
    outbound: 0,
    inbound_plaintext: 0,
    hbone: 0,
    socks5: None,
};

#[tokio::test]
async fn proxy_start_binds_refuses_loops_and_drains() {
    let sink = Arc::new(Failures::default());
    let factory = Arc::new(HostSocketFactory::default());
    let proxy =
        Proxy::start(inputs(factory.clone(), ANY, OrigSrc::Never, sink.clone())).expect("starts");
    for addr in [
        proxy.outbound_addr(),
        proxy.inbound_plaintext_addr(),
        proxy.hbone_addr(),
    ] {
        assert!(addr.ip().is_unspecified() && addr.is_ipv4(), "{addr}");
        assert_ne!(addr.port(), 0);
    }
    assert_eq!(
        proxy.identity().to_string(),
        "spiffe://cluster.local/ns/shop/sa/cart"
    );

    // The same ports again: a bind error naming the listener.
    let taken = Ports {
        outbound: proxy.outbound_addr().port(),
        ..ANY
    };
    let err =
        Proxy::start(inputs(factory.clone(), taken, OrigSrc::Never, sink.clone())).unwrap_err();
    assert!(
        matches!(
            err,
            StartError::Bind {
                what: "outbound",
                ..
            }
        ),
        "{err}"
    );

    // Connecting to our own listeners on loopback must not loop.
    for (addr, direction) in [
        (proxy.outbound_addr(), Direction::Outbound),
        (proxy.inbound_plaintext_addr(), Direction::Inbound),
    ] {
        let dst = SocketAddr::new([127, 0, 0, 1].into(), addr.port());
        let mut tcp = tokio::net::TcpStream::connect(dst).await.unwrap();
        let _ = tcp.write_all(b"x").await;
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf))
            .await
            .expect("closed");
        assert!(r.is_err() || buf.is_empty());
        let f = sink.0.lock().pop().expect("a failure was reported");
        assert_eq!(f.direction, direction);
        assert!(f.error.contains("own ports"), "{f:?}");
    }

    proxy.drain(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn proxy_start_requires_transparency_when_orig_src_is_true() {
    let sink = Arc::new(Failures::default());
    let err = Proxy::start(inputs(
        Arc::new(NoTransparency),
        ANY,
        OrigSrc::Required,
        sink.clone(),
    ))
    .unwrap_err();
    assert!(matches!(err, StartError::Transparent { .. }), "{err}");
    // Best effort (unset) starts anyway.
    let proxy = Proxy::start(inputs(Arc::new(NoTransparency), ANY, OrigSrc::Auto, sink))
        .expect("starts without transparency");
    proxy.drain(Duration::from_millis(100)).await;
}

//! Tunnel behaviour: data integrity, half-close, pooling, drain, keepalive, rotation.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use hbone::{
    ClientSettings, H2Settings, InboundRequest, Server, ServerSettings, StaticCertificate,
};
use http::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const GIB: u64 = 1024 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_arrives_intact_through_copy() {
    let env = Env::start().await;
    let tunnel = env.pool.connect(env.request("sink.test:1")).await.unwrap();
    let (mut app, mut proxy) = socket_pair().await;
    let copy = tokio::spawn(async move { hbone::copy_tcp(&mut proxy, tunnel.stream).await });
    let sent = write_pattern(&mut app, GIB).await;
    app.shutdown().await.unwrap();
    let mut digest = [0u8; 32];
    app.read_exact(&mut digest).await.unwrap();
    assert_eq!(digest, sent, "server hashed different bytes than were sent");
    let moved = copy.await.unwrap().unwrap();
    assert_eq!(moved.to_tunnel, GIB);
    assert_eq!(moved.from_tunnel, 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_arrives_intact_through_copy() {
    let env = Env::start().await;
    // source.test:N sends N MiB.
    let tunnel = env
        .pool
        .connect(env.request("source.test:1024"))
        .await
        .unwrap();
    let (mut app, mut proxy) = socket_pair().await;
    let copy = tokio::spawn(async move { hbone::copy_tcp(&mut proxy, tunnel.stream).await });
    let (got, len) = hash_to_eof(&mut app).await;
    assert_eq!(len, GIB);
    let expected = write_pattern(&mut tokio::io::sink(), GIB).await;
    assert_eq!(got, expected, "downloaded bytes differ");
    app.shutdown().await.unwrap();
    let moved = copy.await.unwrap().unwrap();
    assert_eq!(moved.from_tunnel, GIB);
}

#[tokio::test]
async fn half_close_from_client_keeps_the_return_path_open() {
    let env = Env::start().await;
    let echo = mesh_testing::echo_server().await;
    let tunnel = env
        .pool
        .connect(env.request(echo.to_string()))
        .await
        .unwrap();
    let (mut app, mut proxy) = socket_pair().await;
    let copy = tokio::spawn(async move { hbone::copy_tcp(&mut proxy, tunnel.stream).await });
    app.write_all(b"hello, half-closed world").await.unwrap();
    app.shutdown().await.unwrap(); // FIN → END_STREAM → FIN at the echo server
    let mut back = Vec::new();
    app.read_to_end(&mut back).await.unwrap(); // echo data, then the echo's FIN
    assert_eq!(back, b"hello, half-closed world");
    copy.await.unwrap().unwrap();
}

#[tokio::test]
async fn half_close_from_server_keeps_the_upload_open() {
    let ca = mesh_testing::TestCa::new("root");
    let cert = StaticCertificate::new(ca.issue(SERVER_ID).workload_cert());
    let (done_tx, done_rx) = oneshot::channel::<Vec<u8>>();
    let done_tx = Arc::new(parking::Slot::new(done_tx));
    let server = Server::new(
        ServerSettings::default(),
        id(SERVER_ID),
        cert,
        move |req: InboundRequest| {
            let done_tx = done_tx.clone();
            async move {
                let mut stream = req.accept(HeaderMap::new()).unwrap();
                stream.write_all(b"bye").await.unwrap();
                stream.shutdown().await.unwrap(); // server done sending first
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).await.unwrap();
                done_tx.send(rest);
            }
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { server.serve(listener).await });
    let pool = hbone::Pool::new(
        ClientSettings::default(),
        StaticCertificate::new(ca.issue(CLIENT_ID).workload_cert()),
        Arc::new(hbone::DefaultDialer),
    );
    let tunnel = pool.connect(request_to(addr, "10.0.0.1:80")).await.unwrap();
    let (mut app, mut proxy) = socket_pair().await;
    let copy = tokio::spawn(async move { hbone::copy_tcp(&mut proxy, tunnel.stream).await });
    let mut got = [0u8; 3];
    app.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"bye");
    assert_eq!(app.read(&mut [0u8; 1]).await.unwrap(), 0, "EOF after bye");
    // Our direction is still open after the server's FIN.
    let payload = vec![7u8; 100_000];
    app.write_all(&payload).await.unwrap();
    app.shutdown().await.unwrap();
    assert_eq!(done_rx.await.unwrap(), payload);
    copy.await.unwrap().unwrap();
}

mod parking {
    use std::sync::Mutex;
    pub struct Slot<T>(Mutex<Option<tokio::sync::oneshot::Sender<T>>>);
    impl<T> Slot<T> {
        pub fn new(tx: tokio::sync::oneshot::Sender<T>) -> Self {
            Slot(Mutex::new(Some(tx)))
        }
        pub fn send(&self, v: T) {
            if let Some(tx) = self.0.lock().unwrap().take() {
                let _ = tx.send(v);
            }
        }
    }
}

fn request_to(addr: SocketAddr, authority: &str) -> hbone::ConnectRequest {
    hbone::ConnectRequest {
        source: id(CLIENT_ID),
        expected: vec![id(SERVER_ID)],
        destination: addr,
        source_ip: None,
        authority: authority.to_string(),
        headers: HeaderMap::new(),
    }
}

/// Opens `n` tunnels at once and keeps them all open while checking each one works.
async fn open_many(env: &Env, n: usize) -> Vec<hbone::Tunnel> {
    let echo = mesh_testing::echo_server().await;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let pool = env.pool.clone();
        let req = env.request(echo.to_string());
        tasks.push(tokio::spawn(async move { pool.connect(req).await }));
    }
    let mut tunnels = Vec::new();
    for t in tasks {
        tunnels.push(t.await.unwrap().unwrap());
    }
    for (i, t) in tunnels.iter_mut().enumerate() {
        let msg = format!("stream {i}");
        t.stream.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        t.stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    tunnels
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_streams_respect_the_client_cap() {
    // Server allows 200 per connection, client caps at 100: 5 connections.
    let env = Env::start().await;
    let tunnels = open_many(&env, 500).await;
    let stats = env.pool.stats();
    assert_eq!(stats.streams, 500);
    assert_eq!(stats.connections, 5, "{stats:?}");
    assert_eq!(stats.dials, 5, "{stats:?}");
    drop(tunnels);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(env.pool.stats().streams, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stream_limit_below_client_cap_is_respected() {
    let server = ServerSettings {
        max_concurrent_streams: 40,
        ..ServerSettings::default()
    };
    let env = Env::start_with(server, ClientSettings::default()).await;
    let _tunnels = open_many(&env, 200).await;
    let stats = env.pool.stats();
    assert_eq!(
        stats.connections, 5,
        "200 streams / 40 per connection: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_use_dials_once() {
    let env = Env::start().await;
    let _tunnels = open_many(&env, 50).await;
    assert_eq!(env.pool.stats().dials, 1);
}

#[tokio::test]
async fn different_keys_get_different_connections() {
    let env = Env::start().await;
    let echo = mesh_testing::echo_server().await;
    let mut a = env.request(echo.to_string());
    a.source_ip = Some("10.0.0.1".parse().unwrap());
    let mut b = a.clone();
    b.source_ip = Some("10.0.0.2".parse().unwrap());
    let _ta = env.pool.connect(a.clone()).await.unwrap();
    let _tb = env.pool.connect(b).await.unwrap();
    let _ta2 = env.pool.connect(a).await.unwrap();
    assert_eq!(env.pool.stats().dials, 2);
}

#[tokio::test]
async fn idle_connections_are_evicted() {
    let client = ClientSettings {
        idle_timeout: Duration::from_millis(200),
        ..ClientSettings::default()
    };
    let env = Env::start_with(ServerSettings::default(), client).await;
    let echo = mesh_testing::echo_server().await;
    drop(
        env.pool
            .connect(env.request(echo.to_string()))
            .await
            .unwrap(),
    );
    assert_eq!(env.pool.stats().connections, 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(env.pool.stats().connections, 0, "idle connection evicted");
    // The server sees the connection go away too.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(env.server.active_connections(), 0);
    env.pool
        .connect(env.request(echo.to_string()))
        .await
        .unwrap();
    assert_eq!(env.pool.stats().dials, 2);
}

/// Accepts TCP connections and hands each to the current server (A, then B after a switch).
struct Router {
    addr: SocketAddr,
    use_b: Arc<AtomicBool>,
}

async fn router(a: Server, b: Server) -> Router {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let use_b = Arc::new(AtomicBool::new(false));
    let flag = use_b.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let server = if flag.load(Ordering::SeqCst) {
                b.clone()
            } else {
                a.clone()
            };
            tokio::spawn(async move { server.serve_connection(tcp).await });
        }
    });
    Router { addr, use_b }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_drain_finishes_in_flight_streams_and_new_ones_go_elsewhere() {
    let ca = mesh_testing::TestCa::new("root");
    let cert = StaticCertificate::new(ca.issue(SERVER_ID).workload_cert());
    let served_by_b = Arc::new(AtomicUsize::new(0));
    let a = Server::new(
        ServerSettings::default(),
        id(SERVER_ID),
        cert.clone(),
        route,
    );
    let counter = served_by_b.clone();
    let b = Server::new(
        ServerSettings::default(),
        id(SERVER_ID),
        cert,
        move |req: InboundRequest| {
            counter.fetch_add(1, Ordering::SeqCst);
            route(req)
        },
    );
    let r = router(a.clone(), b).await;
    let pool = hbone::Pool::new(
        ClientSettings::default(),
        StaticCertificate::new(ca.issue(CLIENT_ID).workload_cert()),
        Arc::new(hbone::DefaultDialer),
    );
    let echo = mesh_testing::echo_server().await;
    let mut tunnels = Vec::new();
    for _ in 0..10 {
        tunnels.push(
            pool.connect(request_to(r.addr, &echo.to_string()))
                .await
                .unwrap(),
        );
    }
    assert_eq!(pool.stats().dials, 1);

    // Drain A with a generous deadline while the 10 tunnels are still in use.
    r.use_b.store(true, Ordering::SeqCst);
    let drain = tokio::spawn({
        let a = a.clone();
        async move { a.drain(Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    // A new tunnel must not use the draining connection.
    let mut fresh = pool
        .connect(request_to(r.addr, &echo.to_string()))
        .await
        .unwrap();
    fresh.stream.write_all(b"new").await.unwrap();
    let mut buf = [0u8; 3];
    fresh.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(
        served_by_b.load(Ordering::SeqCst),
        1,
        "new stream served by B"
    );
    assert_eq!(pool.stats().dials, 2);

    // Every in-flight stream still completes a full exchange after the GOAWAY.
    for (i, t) in tunnels.iter_mut().enumerate() {
        let msg = vec![i as u8; 64 * 1024];
        t.stream.write_all(&msg).await.unwrap();
        t.stream.shutdown().await.unwrap();
        let mut back = Vec::new();
        t.stream.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, msg, "stream {i} lost data during drain");
    }
    drop(tunnels);
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .expect("drain finishes once streams are done")
        .unwrap();
    assert_eq!(a.active_connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_closes_stuck_streams() {
    let env = Env::start().await;
    let echo = mesh_testing::echo_server().await;
    let mut tunnel = env
        .pool
        .connect(env.request(echo.to_string()))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    env.server.drain(Duration::from_millis(300)).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(2), tunnel.stream.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "stream ends after the deadline: {r:?}"
    );
}

/// A TCP relay whose existing connections can be frozen (bytes stop flowing both ways).
async fn freezable_relay(target: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frozen = Arc::new(AtomicBool::new(false));
    let flag = frozen.clone();
    tokio::spawn(async move {
        loop {
            let (down, _) = listener.accept().await.unwrap();
            let up = TcpStream::connect(target).await.unwrap();
            let flag = flag.clone();
            tokio::spawn(async move {
                let (mut dr, mut dw) = down.into_split();
                let (mut ur, mut uw) = up.into_split();
                let f1 = flag.clone();
                let a = async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = match dr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if f1.load(Ordering::SeqCst) {
                            std::future::pending::<()>().await;
                        }
                        if uw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let b = async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = match ur.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if flag.load(Ordering::SeqCst) {
                            std::future::pending::<()>().await;
                        }
                        if dw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::join!(a, b);
            });
        }
    });
    (addr, frozen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_that_stops_answering_pings_is_dropped_within_the_timeout() {
    let h2 = H2Settings {
        keepalive_interval: Duration::from_millis(200),
        keepalive_timeout: Duration::from_millis(400),
        ..H2Settings::default()
    };
    let env = Env::start_with(
        ServerSettings {
            h2: h2.clone(),
            ..ServerSettings::default()
        },
        ClientSettings {
            h2,
            ..ClientSettings::default()
        },
    )
    .await;
    let (relay, frozen) = freezable_relay(env.addr).await;
    let echo = mesh_testing::echo_server().await;
    let mut req = env.request(echo.to_string());
    req.destination = relay;
    let mut tunnel = env.pool.connect(req.clone()).await.unwrap();
    // Healthy for several keepalive rounds.
    tokio::time::sleep(Duration::from_millis(800)).await;
    tunnel.stream.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    tunnel.stream.read_exact(&mut b).await.unwrap();
    assert_eq!(env.pool.stats().dials, 1);

    frozen.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    // The client notices: the tunnel fails, within interval + timeout (+ slack).
    let r = tokio::time::timeout(Duration::from_secs(3), tunnel.stream.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Err(_)) | Ok(Ok(0))),
        "tunnel must fail after keepalive timeout: {r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // The server also drops its side.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        env.server.active_connections(),
        0,
        "server dropped the silent client"
    );
    // New tunnels use a new connection (the relay lets new connections through).
    frozen.store(false, Ordering::SeqCst);
    env.pool.connect(req).await.unwrap();
    assert_eq!(env.pool.stats().dials, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_new_connections_use_new_certificate_old_streams_continue() {
    let env = Env::start().await;
    let echo = mesh_testing::echo_server().await;
    let mut old = env
        .pool
        .connect(env.request(echo.to_string()))
        .await
        .unwrap();
    let old_serial = hbone::cert::serial_of(&old.peer_certificate).unwrap();

    let rotated = env.ca.issue(SERVER_ID).workload_cert();
    let new_serial = rotated.serial().to_string();
    assert_ne!(old_serial, new_serial);
    env.server_cert.rotate(rotated);

    // A new connection (different pool key) handshakes with the new certificate.
    let mut req = env.request(echo.to_string());
    req.source_ip = Some("10.9.9.9".parse().unwrap());
    let fresh = env.pool.connect(req).await.unwrap();
    assert_eq!(
        hbone::cert::serial_of(&fresh.peer_certificate).unwrap(),
        new_serial
    );

    // The stream opened before the rotation keeps working.
    for _ in 0..3 {
        old.stream.write_all(b"still here").await.unwrap();
        let mut buf = [0u8; 10];
        old.stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still here");
    }
}

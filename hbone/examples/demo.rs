//! `make demo-hbone`: a guided tour of the HBONE tunnel with SPIFFE identities.
//!
//! Everything runs in this process on loopback: a throwaway mesh CA, a destination workload
//! (`shop/cart`) behind an HBONE server, and a source workload (`shop/ui`) using the pooled
//! client. Each step checks its own outcome; the tour exits non-zero naming the failed step.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use hbone::{
    ClientSettings, ConnectRequest, DefaultDialer, Error, Identity, Pool, Server, ServerSettings,
    StaticCertificate,
};
use http::{HeaderMap, StatusCode};
use mesh_testing::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CART: &str = "spiffe://cluster.local/ns/shop/sa/cart";
const UI: &str = "spiffe://cluster.local/ns/shop/sa/ui";

type Step = Result<String, String>;

/// Silences the per-request line while 100 requests run at once.
static QUIET: AtomicBool = AtomicBool::new(false);

fn id(s: &str) -> Identity {
    Identity::parse(s).expect("valid identity")
}

/// The "application" behind the destination: answers one line naming who called.
async fn app_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                let _ = tcp.read_to_end(&mut req).await;
                let line = String::from_utf8_lossy(&req).trim().to_string();
                let reply = format!("cart says hello to: {line}\n");
                let _ = tcp.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

async fn send_over_tunnel(pool: &Pool, req: ConnectRequest, msg: &str) -> Result<String, Error> {
    let mut tunnel = pool.connect(req).await?;
    tunnel.stream.write_all(msg.as_bytes()).await.unwrap();
    tunnel.stream.shutdown().await.unwrap();
    let mut reply = String::new();
    tunnel.stream.read_to_string(&mut reply).await.unwrap();
    Ok(reply)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    println!("HBONE demo: mutual-TLS HTTP/2 CONNECT tunnels between SPIFFE workloads\n");
    let ca = TestCa::new("demo mesh CA");
    let cart_cert = StaticCertificate::new(ca.issue(CART).workload_cert());
    let ui_cert = StaticCertificate::new(ca.issue(UI).workload_cert());
    let app = app_server().await;

    let server = Server::new(
        ServerSettings::default(),
        id(CART),
        cart_cert,
        |req: hbone::InboundRequest| async move {
            let Some(target) = req.authority.socket_addr() else {
                req.reject(StatusCode::BAD_REQUEST);
                return;
            };
            let Ok(mut app) = TcpStream::connect(target).await else {
                req.reject(StatusCode::SERVICE_UNAVAILABLE);
                return;
            };
            if !QUIET.load(Ordering::Relaxed) {
                println!(
                    "      destination: accepted CONNECT {} from verified peer {}",
                    req.authority, req.peer_identity
                );
            }
            let caller = req.peer_identity.to_string();
            let Ok(stream) = req.accept(HeaderMap::new()) else {
                return;
            };
            let _ = app.write_all(format!("[{caller}] ").as_bytes()).await;
            let _ = hbone::copy_tcp(&mut app, stream).await;
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hbone_addr = listener.local_addr().unwrap();
    let s = server.clone();
    tokio::spawn(async move { s.serve(listener).await });
    let pool = Pool::new(ClientSettings::default(), ui_cert, Arc::new(DefaultDialer));
    let request = |expected: &str| ConnectRequest {
        source: id(UI),
        expected: vec![id(expected)],
        destination: hbone_addr,
        source_ip: None,
        authority: app.to_string(),
        headers: HeaderMap::new(),
    };

    let mut failed = None;
    let mut step = |n: usize, title: &str, result: Step| match result {
        Ok(proof) => println!("[{n}] {title}\n    OK: {proof}\n"),
        Err(why) => {
            println!("[{n}] {title}\n    FAILED: {why}\n");
            failed.get_or_insert(format!("step {n}: {title}"));
        }
    };

    println!("    mesh CA minted; workloads: {CART} (server), {UI} (client)");
    println!("    HBONE server for cart on {hbone_addr}; cart's app on {app}\n");

    let r = send_over_tunnel(&pool, request(CART), "GET /cart").await;
    step(
        1,
        "ui reaches cart through an HBONE tunnel",
        match r {
            Ok(reply) if reply.contains(UI) => Ok(format!(
                "reply {:?} — the app learned the caller's identity from mTLS, not from a header",
                reply.trim()
            )),
            Ok(reply) => Err(format!("unexpected reply {reply:?}")),
            Err(e) => Err(e.to_string()),
        },
    );

    let r = send_over_tunnel(
        &pool,
        request("spiffe://cluster.local/ns/shop/sa/payments"),
        "GET /",
    )
    .await;
    step(
        2,
        "ui refuses a destination that is not the identity it expects",
        match r {
            Err(e @ Error::PeerIdentity { .. }) => Ok(e.to_string()),
            Err(e) => Err(format!("refused for the wrong reason: {e}")),
            Ok(_) => Err("connected to an unexpected identity".into()),
        },
    );

    // The outsider knows the mesh root (it is public) but its certificate comes from its own CA.
    let outsider = TestCa::new("some other CA");
    let forged = outsider.issue(UI);
    let forged =
        hbone::WorkloadCertificate::from_pem(&forged.chain_pem, &forged.key_pem, ca.root_pem())
            .expect("forged certificate loads");
    let evil = Pool::new(
        ClientSettings::default(),
        StaticCertificate::new(forged),
        Arc::new(DefaultDialer),
    );
    let r = send_over_tunnel(&evil, request(CART), "GET /").await;
    step(
        3,
        "cart refuses a client whose certificate was not issued by the mesh CA",
        match r {
            Err(e) => Ok(format!("client saw: {e}")),
            Ok(reply) => Err(format!("outsider got an answer: {reply:?}")),
        },
    );

    QUIET.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let pool = pool.clone();
        let req = request(CART);
        tasks.push(tokio::spawn(async move {
            send_over_tunnel(&pool, req, &format!("request {i}")).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if matches!(t.await, Ok(Ok(reply)) if reply.contains(UI)) {
            ok += 1;
        }
    }
    let stats = pool.stats();
    step(
        4,
        "100 concurrent tunnels share pooled HTTP/2 connections",
        if ok == 100 && stats.dials <= 2 {
            Ok(format!(
                "100/100 tunnels answered in {:?} over {} TLS connection(s) dialed in total",
                started.elapsed(),
                stats.dials
            ))
        } else {
            Err(format!(
                "{ok}/100 answered, {} connections dialed",
                stats.dials
            ))
        },
    );

    server.drain(std::time::Duration::from_secs(1)).await;
    match failed {
        None => {
            println!("Demo complete: every step checked its outcome.");
            ExitCode::SUCCESS
        }
        Some(which) => {
            println!("Demo FAILED at {which}");
            ExitCode::FAILURE
        }
    }
}

//! The admin, stats and readiness servers over real sockets, with a raw HTTP/1.1 client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meshcore::drain::{self, DrainTrigger, DrainWatch};
use meshcore::env::MapEnv;
use meshcore::telemetry::{LogFormat, Prometheus, build_tracing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ztunnel::admin::{self, AdminState, Readiness, Server};
use ztunnel::config::{Config, Host, ListenAddress};

const LOCAL0: ListenAddress = ListenAddress::Exact(SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    0,
));

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

async fn send(addr: SocketAddr, method: &str, target: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a full response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn config(extra: &[(&str, &str)]) -> Config {
    let mut c = Config::from_env_on(
        &MapEnv::from_iter(extra.iter().copied()),
        &Host {
            base_dir: PathBuf::from("/nonexistent"),
            cpus: 2,
        },
    )
    .unwrap();
    c.admin_addr = LOCAL0;
    c
}

struct Admin {
    addr: SocketAddr,
    server: Server,
    trigger: DrainTrigger,
    _dispatch: tracing::Dispatch,
}

async fn start_admin(provider: admin::ConfigDumpProvider) -> Admin {
    let (trigger, watch) = drain::channel();
    let (dispatch, log) = build_tracing(LogFormat::Plain, "info", std::io::sink).unwrap();
    let state = AdminState {
        config: Arc::new(config(&[("ISTIO_META_ISTIO_VERSION", "1.28.0")])),
        config_dump: provider,
        log,
        drain: trigger.clone(),
    };
    let server = admin::start_admin(state, watch).await.unwrap();
    Admin {
        addr: server.local_addrs()[0],
        server,
        trigger,
        _dispatch: dispatch,
    }
}

#[tokio::test]
async fn admin_endpoints() {
    let a = start_admin(Arc::new(
        || serde_json::json!({"workloads": [{"uid": "w1"}], "services": []}),
    ))
    .await;
    assert_eq!(a.server.name(), "admin");

    let index = send(a.addr, "GET", "/").await;
    assert_eq!(index.status, 200);
    assert_eq!(
        index.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(index.body.contains("/config_dump"));

    let dump = send(a.addr, "GET", "/config_dump").await;
    assert_eq!(dump.status, 200);
    assert_eq!(dump.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&dump.body).unwrap();
    assert_eq!(v["workloads"][0]["uid"], "w1");
    assert_eq!(v["services"], serde_json::json!([]));
    assert_eq!(v["config"]["proxyMode"], "shared");
    assert_eq!(v["config"]["clusterId"], "Kubernetes");
    assert_eq!(v["version"]["istioVersion"], "1.28.0");
    assert_eq!(v["version"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(send(a.addr, "POST", "/config_dump").await.status, 405);

    let pprof = send(a.addr, "GET", "/debug/pprof/profile?seconds=5").await;
    assert_eq!(pprof.status, 501);
    assert_eq!(pprof.body, "profiling is not available in this build\n");
    assert_eq!(send(a.addr, "GET", "/debug/pprof/heap").await.status, 501);
    assert_eq!(send(a.addr, "GET", "/nope").await.status, 404);
    a.trigger.start_drain(Duration::ZERO);
    a.server.wait().await;
}

#[tokio::test]
async fn logging_endpoint() {
    let a = start_admin(Arc::new(|| serde_json::json!({}))).await;
    let cases: &[(&str, &str, u16, &str)] = &[
        ("GET", "/logging", 405, "method not allowed: use POST\n"),
        ("POST", "/logging", 200, "current log level is info\n"),
        (
            "POST",
            "/logging?level=debug",
            200,
            "current log level is debug\n",
        ),
        (
            "POST",
            "/logging?level=hbone%3Dtrace",
            200,
            "current log level is debug,hbone=trace\n",
        ),
        (
            "POST",
            "/logging?level=access=warn,hbone=info",
            200,
            "current log level is debug,access=warn,hbone=info\n",
        ),
        (
            "POST",
            "/logging?level=loud",
            400,
            "invalid log level \"loud\": unknown level \"loud\", expected one of off, error, warn, info, debug, trace\n",
        ),
        (
            "POST",
            "/logging?level=",
            400,
            "invalid log level \"\": empty\n",
        ),
        (
            "POST",
            "/logging?verbose=1",
            400,
            "unknown or malformed parameter \"verbose=1\": use `level=<spec>` or `reset`\n",
        ),
        (
            "POST",
            "/logging?reset&level=info",
            400,
            "use either `level` or `reset`, not both\n",
        ),
        (
            "POST",
            "/logging",
            200,
            "current log level is debug,access=warn,hbone=info\n",
        ),
        ("POST", "/logging?reset", 200, "current log level is info\n"),
    ];
    for (method, target, status, body) in cases {
        let reply = send(a.addr, method, target).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (*status, *body),
            "{method} {target}"
        );
    }
    assert_eq!(
        send(a.addr, "GET", "/logging").await.header("allow"),
        Some("POST")
    );
    a.trigger.start_drain(Duration::ZERO);
    a.server.wait().await;
}

#[tokio::test]
async fn non_object_dump_is_nested_under_state() {
    let a = start_admin(Arc::new(|| serde_json::json!(["x"]))).await;
    let v: serde_json::Value =
        serde_json::from_str(&send(a.addr, "GET", "/config_dump").await.body).unwrap();
    assert_eq!(v["state"], serde_json::json!(["x"]));
    assert!(v["config"].is_object() && v["version"].is_object());
    a.trigger.start_drain(Duration::ZERO);
    a.server.wait().await;
}

#[tokio::test]
async fn quitquitquit_drains_and_stops() {
    let a = start_admin(Arc::new(|| serde_json::json!({}))).await;
    let watch = a.trigger.watch();
    assert_eq!(send(a.addr, "GET", "/quitquitquit").await.status, 405);
    assert!(!watch.is_draining());
    let reply = send(a.addr, "POST", "/quitquitquit").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "shutdown now\n"));
    let deadline = watch.deadline().expect("drain started");
    // The configured termination deadline (5 s default).
    assert!(deadline.remaining() > Duration::from_secs(4));
    tokio::time::timeout(Duration::from_secs(5), a.server.wait())
        .await
        .expect("server stops after the drain");
    assert!(TcpStream::connect(a.addr).await.is_err(), "listener closed");
}

#[tokio::test]
async fn drain_closes_idle_keepalive_connections() {
    let (trigger, watch) = drain::channel();
    let server = admin::start_readiness(&LOCAL0, Readiness::new(), watch)
        .await
        .unwrap();
    let mut stream = TcpStream::connect(server.local_addrs()[0]).await.unwrap();
    stream
        .write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
    // Long deadline: the idle connection must close promptly anyway.
    trigger.start_drain(Duration::from_secs(60));
    tokio::time::timeout(Duration::from_secs(5), server.wait())
        .await
        .expect("server stops");
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "connection closed by the server");
}

#[tokio::test]
async fn readiness_endpoint() {
    let readiness = Readiness::new();
    let (trigger, watch) = drain::channel();
    let server = admin::start_readiness(&LOCAL0, readiness.clone(), watch)
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    assert_eq!(
        (send(addr, "GET", "/healthz/ready").await.body),
        "ready\n",
        "nothing registered yet"
    );
    let proxy = readiness.register("proxy");
    let dns = readiness.register("dns proxy");
    let reply = send(addr, "GET", "/healthz/ready").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (500, "not ready, pending: dns proxy, proxy\n")
    );
    proxy.mark_ready();
    dns.mark_ready();
    let reply = send(addr, "GET", "/healthz/ready").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ready\n"));
    dns.mark_pending();
    assert_eq!(
        send(addr, "GET", "/healthz/ready").await.body,
        "not ready, pending: dns proxy\n"
    );
    assert_eq!(send(addr, "POST", "/healthz/ready").await.status, 405);
    assert_eq!(send(addr, "GET", "/healthz").await.status, 404);
    trigger.start_drain(Duration::ZERO);
    server.wait().await;
}

#[tokio::test]
async fn stats_endpoint() {
    let prometheus = Prometheus::install().unwrap();
    let (trigger, watch) = drain::channel();
    let server = admin::start_stats(&LOCAL0, prometheus, Some("1.28.0"), watch)
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    metrics::counter!("istio_xds_message_total", "url" => "type.googleapis.com/istio.workload.Address")
        .increment(2);
    for path in ["/metrics", "/stats/prometheus"] {
        let reply = send(addr, "GET", path).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; version=0.0.4")
        );
        assert!(
            reply
                .body
                .contains("istio_build{component=\"ztunnel\",tag=\"1.28.0\"} 1"),
            "{}",
            reply.body
        );
        assert!(reply.body.contains(
            "istio_xds_message_total{url=\"type.googleapis.com/istio.workload.Address\"} 2"
        ));
    }
    assert_eq!(send(addr, "POST", "/metrics").await.status, 405);
    assert_eq!(send(addr, "GET", "/").await.status, 404);
    trigger.start_drain(Duration::ZERO);
    server.wait().await;
}

#[tokio::test]
async fn bind_errors_name_the_server_and_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (_trigger, watch) = drain::channel();
    let err = admin::start_readiness(&ListenAddress::Exact(addr), Readiness::new(), watch.clone())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("readiness listener {addr}: address in use")
    );
    let err = admin::start_stats(
        &ListenAddress::Localhost {
            port: addr.port(),
            ipv6: false,
        },
        Prometheus::install().unwrap(),
        None,
        watch,
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("stats listener {addr}: address in use")
    );
}

async fn started(addr: ListenAddress, watch: DrainWatch) -> Server {
    admin::start_readiness(&addr, Readiness::new(), watch)
        .await
        .unwrap()
}

#[tokio::test]
async fn localhost_and_wildcard_binding() {
    let (trigger, watch) = drain::channel();
    // Localhost: 127.0.0.1, plus ::1 on the same port when the host has IPv6 loopback.
    let local = started(
        ListenAddress::Localhost {
            port: 0,
            ipv6: true,
        },
        watch.clone(),
    )
    .await;
    let addrs = local.local_addrs().to_vec();
    assert_eq!(addrs[0].ip(), std::net::Ipv4Addr::LOCALHOST);
    assert!(addrs.len() <= 2);
    assert!(
        addrs.iter().all(|a| a.port() == addrs[0].port()),
        "{addrs:?}"
    );
    for a in &addrs {
        assert_eq!(send(*a, "GET", "/healthz/ready").await.status, 200, "{a}");
    }
    // Wildcard: [::] (dual stack) or 0.0.0.0 when IPv6 is unavailable; IPv4 clients work.
    let any = started(
        ListenAddress::Unspecified {
            port: 0,
            ipv6: true,
        },
        watch.clone(),
    )
    .await;
    assert_eq!(any.local_addrs().len(), 1);
    assert!(any.local_addrs()[0].ip().is_unspecified());
    let port = any.local_addrs()[0].port();
    assert_eq!(
        send(
            SocketAddr::from(([127, 0, 0, 1], port)),
            "GET",
            "/healthz/ready"
        )
        .await
        .status,
        200
    );
    let v4 = started(
        ListenAddress::Unspecified {
            port: 0,
            ipv6: false,
        },
        watch,
    )
    .await;
    assert_eq!(v4.local_addrs()[0].ip(), std::net::Ipv4Addr::UNSPECIFIED);
    trigger.start_drain(Duration::ZERO);
    local.wait().await;
    any.wait().await;
    v4.wait().await;
}

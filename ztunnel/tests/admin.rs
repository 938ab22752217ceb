//! The admin, stats and readiness servers over real sockets, with a raw HTTP/1.1 client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshcore::drain::{self, DrainTrigger, DrainWatch};
use meshcore::telemetry::{LogFormat, Prometheus, build_tracing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ztunnel::admin::{self, AdminState, Readiness, Server};
use ztunnel::config::ListenAddress;

mod admin_support;
use admin_support::{LOCAL0, config, send_raw};

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
    send_with(addr, method, target, &[]).await
}

/// A request with extra headers; the body as text.
async fn send_with(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let (status, head, body) = send_raw(addr, method, target, headers).await;
    Reply {
        status,
        head,
        body: String::from_utf8(body).expect("a text body"),
    }
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

    let bad = send(a.addr, "GET", "/debug/pprof/profile?seconds=0").await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.body,
        "seconds=\"0\" is invalid: an integer from 1 to 300\n"
    );
    assert_eq!(
        send(a.addr, "POST", "/debug/pprof/profile").await.status,
        405
    );
    let heap = send(a.addr, "GET", "/debug/pprof/heap").await;
    assert_eq!(heap.status, 501);
    assert!(heap.body.contains("jemalloc"), "{}", heap.body);
    assert_eq!(send(a.addr, "GET", "/debug/pprof/nope").await.status, 404);
    assert_eq!(send(a.addr, "GET", "/nope").await.status, 404);
    a.trigger.start_drain(Duration::ZERO);
    a.server.wait().await;
}

/// Spins until `until`; its name must show up in the profile.
#[inline(never)]
fn burn_cpu_for_the_profiler(until: std::time::Instant) -> u64 {
    let mut x = 1u64;
    while std::time::Instant::now() < until {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_profile_in_pprof_format() {
    use pprof::protos::Message as _;

    let a = start_admin(Arc::new(|| serde_json::json!({}))).await;
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let burner = std::thread::spawn(move || burn_cpu_for_the_profiler(until));

    let addr = a.addr;
    let first = tokio::spawn(async move {
        send_raw(
            addr,
            "GET",
            "/debug/pprof/profile?seconds=2&frequency=250",
            &[],
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = send(a.addr, "GET", "/debug/pprof/profile?seconds=1").await;
    assert_eq!(second.status, 409, "one profile at a time: {}", second.body);
    assert!(
        second.body.contains("already being taken"),
        "{}",
        second.body
    );

    let (status, head, body) = first.await.unwrap();
    burner.join().unwrap();
    assert_eq!(status, 200, "{head}\n{}", String::from_utf8_lossy(&body));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/octet-stream")
    );
    let profile = pprof::protos::Profile::decode(body.as_slice()).expect("a pprof Profile");
    let strings = &profile.string_table;
    let name = |i: i64| strings[usize::try_from(i).unwrap()].as_str();
    let sample_types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|t| (name(t.ty), name(t.unit)))
        .collect();
    assert!(
        sample_types.contains(&("cpu", "nanoseconds")),
        "{sample_types:?}"
    );
    assert!(
        profile.duration_nanos >= 2_000_000_000,
        "{}",
        profile.duration_nanos
    );
    // 2 s at 250 Hz of one busy thread: hundreds of samples, most in the burner.
    let total: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
    assert!(total >= 100, "only {total} samples");
    let burner_fn: Vec<u64> = profile
        .function
        .iter()
        .filter(|f| name(f.name).contains("burn_cpu_for_the_profiler"))
        .map(|f| f.id)
        .collect();
    assert!(
        !burner_fn.is_empty(),
        "the busy function is not in the profile"
    );
    let in_burner: i64 = profile
        .sample
        .iter()
        .filter(|s| {
            s.location_id.iter().any(|loc| {
                profile.location.iter().any(|l| {
                    l.id == *loc
                        && l.line
                            .iter()
                            .any(|line| burner_fn.contains(&line.function_id))
                })
            })
        })
        .map(|s| s.value[0])
        .sum();
    assert!(
        in_burner * 2 >= total,
        "{in_burner} of {total} samples in the busy function"
    );

    // The profiler is free again.
    let again = send_raw(
        a.addr,
        "GET",
        "/debug/pprof/profile?seconds=1&frequency=10",
        &[],
    )
    .await;
    assert_eq!(again.0, 200);
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
    // As the app installs it: Istio's DNS buckets, and the metrics' help texts.
    let builder =
        ztunnel::dns::metrics::with_buckets(metrics_exporter_prometheus::PrometheusBuilder::new())
            .unwrap();
    let prometheus = Prometheus::install_with(builder).unwrap();
    ztunnel::proxy::DefaultTelemetry::describe();
    ztunnel::dns::DnsMetrics::describe();
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
            Some("text/plain; version=0.0.4; charset=utf-8")
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

    // What Prometheus sends: OpenMetrics preferred, and the answer parses with a strict
    // OpenMetrics parser (the Python reference client's).
    metrics::histogram!("istio_dns_upstream_request_duration_seconds", "request_query_type" => "A")
        .record(0.002);
    let accept = "application/openmetrics-text;version=1.0.0;q=0.5,\
                  text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    let om = send_with(addr, "GET", "/metrics", &[("Accept", accept)]).await;
    assert_eq!(om.status, 200);
    assert_eq!(
        om.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
    assert!(
        om.body.contains("# TYPE istio_xds_message counter\n"),
        "{}",
        om.body
    );
    let families = parse_openmetrics(&om.body);
    for want in [
        "counter istio_xds_message istio_xds_message_total{url=type.googleapis.com/istio.workload.Address} 2.0",
        "gauge istio_build istio_build{component=ztunnel,tag=1.28.0} 1.0",
        // This test's runtime has one thread.
        "gauge tokio_num_workers tokio_num_workers{} 1.0",
        "histogram istio_dns_upstream_request_duration_seconds istio_dns_upstream_request_duration_seconds_bucket{le=0.01,request_query_type=A} 1.0",
        "histogram istio_dns_upstream_request_duration_seconds istio_dns_upstream_request_duration_seconds_count{request_query_type=A} 1.0",
    ] {
        assert!(
            families.lines().any(|l| l == want),
            "{want}\nnot in:\n{families}"
        );
    }
    // Sampled at each scrape: the runtime's workers and the process's descriptors.
    for prefix in [
        "counter tokio_worker_total_busy_duration_seconds tokio_worker_total_busy_duration_seconds_total{worker=0} ",
        "counter tokio_worker_park_count tokio_worker_park_count_total{worker=0} ",
        "counter tokio_worker_park_unpark_count tokio_worker_park_unpark_count_total{worker=0} ",
        "gauge tokio_global_queue_depth tokio_global_queue_depth{} ",
        "gauge tokio_num_alive_tasks tokio_num_alive_tasks{} ",
        "gauge process_open_fds process_open_fds{} ",
        "gauge process_max_fds process_max_fds{} ",
    ] {
        assert!(
            families.lines().any(|l| l.starts_with(prefix)),
            "{prefix}\nnot in:\n{families}"
        );
    }
    trigger.start_drain(Duration::ZERO);
    server.wait().await;
}

/// Parses an OpenMetrics exposition with `prometheus_client`'s strict parser (in the venv of
/// `make setup`, named by `TEST_PYTHON`); one line per sample: `type family name{labels} value`.
fn parse_openmetrics(exposition: &str) -> String {
    use std::io::Write;
    let help = "run `make setup`, then `TEST_PYTHON=$PWD/.venv/bin/python cargo nextest run -p \
                ztunnel --test admin` (or `make test-only`, which exports TEST_PYTHON)";
    let python =
        std::env::var_os("TEST_PYTHON").unwrap_or_else(|| panic!("TEST_PYTHON is not set; {help}"));
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in f.samples:\n\
        \x20       labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))\n\
        \x20       print(f'{f.type} {f.name} {s.name}{{{labels}}} {float(s.value)}')\n";
    let mut child = std::process::Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python:?} does not run ({e}); {help}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser rejected the exposition: {}\n{exposition}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
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

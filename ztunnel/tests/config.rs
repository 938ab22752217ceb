//! `Config::from_env_on` against table-driven environments (no `std::env::set_var`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use meshcore::env::MapEnv;
use meshcore::telemetry::LogFormat;
use ztunnel::config::{
    AuthToken, Config, ConfigError, Host, ListenAddress, LocalXds, ProxyMode, RootCert,
    WorkloadInfo, vars,
};

/// A table row's environment.
type Env = &'static [(&'static str, &'static str)];

/// A base directory with no files in it: no mesh config, no default token.
fn empty_host() -> Host {
    Host {
        base_dir: PathBuf::from("/nonexistent/ztunnel-config-test"),
        cpus: 8,
    }
}

fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_env_on(&MapEnv::from_iter(pairs.iter().copied()), &empty_host())
}

fn ok(pairs: &[(&str, &str)]) -> Config {
    load(pairs).unwrap_or_else(|e| panic!("{pairs:?}: {e}"))
}

fn err(pairs: &[(&str, &str)]) -> String {
    match load(pairs) {
        Ok(c) => panic!("{pairs:?} was accepted: {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults() {
    let c = ok(&[]);
    assert_eq!(c.proxy_mode, ProxyMode::Shared);
    assert_eq!(c.proxy_workload_info, None);
    assert!(c.proxy && c.dns_proxy && c.ipv6_enabled);
    assert_eq!(
        c.dns_proxy_addr,
        ListenAddress::Localhost {
            port: 15053,
            ipv6: true
        }
    );
    assert_eq!(c.socks5_addr, None);
    assert_eq!(c.admin_addr.to_string(), "localhost:15000");
    assert_eq!(c.stats_addr.to_string(), "[::]:15020");
    assert_eq!(c.readiness_addr.to_string(), "[::]:15021");
    assert_eq!(c.inpod_uds, PathBuf::from("/var/run/ztunnel/ztunnel.sock"));
    assert!(c.inpod_port_reuse);
    assert_eq!(c.packet_mark, Some(1337));
    assert_eq!(c.require_original_source, None);
    assert_eq!(c.xds.address.as_deref(), Some("https://localhost:15012"));
    assert_eq!(c.ca.address.as_deref(), Some("https://localhost:15012"));
    let root =
        PathBuf::from("/nonexistent/ztunnel-config-test/var/run/secrets/istio/root-cert.pem");
    assert_eq!(c.xds.root_cert, RootCert::File(root.clone()));
    assert_eq!(c.ca.root_cert, RootCert::File(root));
    assert_eq!(c.xds.alt_hostname, None);
    assert!(c.xds.headers.is_empty() && c.ca.headers.is_empty());
    assert!(!c.xds_on_demand);
    assert_eq!(c.local_xds, None);
    assert_eq!(c.auth, AuthToken::None);
    assert_eq!(c.secret_ttl, Duration::from_secs(86_400));
    assert_eq!(c.cluster_id, "Kubernetes");
    assert_eq!(c.cluster_domain, "cluster.local");
    assert_eq!(c.network, "");
    assert_eq!(c.trust_domain, "cluster.local");
    assert_eq!((c.pod_name.clone(), c.pod_namespace.clone()), (None, None));
    assert_eq!(c.self_workload, None);
    assert_eq!(c.node_name, None);
    assert_eq!(c.instance_ip, None);
    assert_eq!(c.prefered_service_namespace, None);
    assert_eq!(c.worker_threads, 2, "max(ceil(25% of 8), 2)");
    assert_eq!(c.pool_max_streams_per_conn, 100);
    assert_eq!(c.pool_unused_release_timeout, Duration::from_secs(300));
    assert_eq!(c.http2.stream_window_size, 4_194_304);
    assert_eq!(c.http2.connection_window_size, 16_777_216);
    assert_eq!(c.http2.frame_size, 1_048_576);
    assert_eq!(c.termination_deadline, Duration::from_secs(5));
    assert!(c.socket.keepalive_enabled && !c.socket.user_timeout_enabled);
    assert_eq!(c.socket.keepalive_time, Duration::from_secs(180));
    assert_eq!(c.socket.keepalive_interval, Duration::from_secs(180));
    assert_eq!(c.socket.keepalive_retries, 9);
    assert!(c.localhost_app_tunnel && c.enable_response_baggage);
    assert_eq!(c.crl_path, None);
    assert!(!c.tls12_enabled && !c.authz_policy_info_logging);
    assert_eq!(c.log_format, LogFormat::Plain);
    assert_eq!(c.log_filter, "info");
    assert_eq!(c.istio_version, None);
    assert_eq!(c.node_id, "ztunnel~1.1.1.1~.~.svc.cluster.local");
    assert_eq!(c.illegal_ports(), vec![15001, 15006, 15008]);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn control_plane_addresses() {
    let k8s = [(vars::KUBERNETES_SERVICE_HOST, "10.96.0.1")];
    let c = ok(&k8s);
    assert_eq!(
        c.xds.address.as_deref(),
        Some("https://istiod.istio-system.svc:15012")
    );
    assert_eq!(
        c.ca.address.as_deref(),
        Some("https://istiod.istio-system.svc:15012")
    );

    let cases: &[(&str, Option<&str>)] = &[
        (
            "istiod-rev.istio-system.svc:15012",
            Some("https://istiod-rev.istio-system.svc:15012"),
        ),
        ("https://istiod:15012", Some("https://istiod:15012")),
        ("http://127.0.0.1:15010", Some("http://127.0.0.1:15010")),
        ("[::1]:15012", Some("https://[::1]:15012")),
        ("", None),
        ("  ", None),
    ];
    for (value, want) in cases {
        let c = ok(&[(vars::XDS_ADDRESS, value), (vars::CA_ADDRESS, value)]);
        assert_eq!(c.xds.address.as_deref(), *want, "XDS_ADDRESS={value:?}");
        assert_eq!(c.ca.address.as_deref(), *want, "CA_ADDRESS={value:?}");
    }
    for bad in ["ftp://istiod:15012", "https://", "istiod:notaport", "a b:1"] {
        let msg = err(&[(vars::XDS_ADDRESS, bad)]);
        assert!(
            msg.starts_with(&format!(
                "XDS_ADDRESS={bad} is not valid: expected an address such as"
            )),
            "{msg}"
        );
        let msg = err(&[(vars::CA_ADDRESS, bad)]);
        assert!(msg.starts_with("CA_ADDRESS="), "{msg}");
    }
    // ALT_*_HOSTNAME
    let c = ok(&[
        (vars::ALT_XDS_HOSTNAME, "istiod.example"),
        (vars::ALT_CA_HOSTNAME, "ca.example"),
    ]);
    assert_eq!(c.xds.alt_hostname.as_deref(), Some("istiod.example"));
    assert_eq!(c.ca.alt_hostname.as_deref(), Some("ca.example"));
}

#[test]
fn proxy_mode_and_workload_info() {
    assert_eq!(
        err(&[(vars::PROXY_MODE, "sidecar")]),
        "PROXY_MODE=sidecar is not valid: expected `shared` or `dedicated`"
    );
    assert_eq!(
        err(&[(vars::PROXY_MODE, "dedicated")]),
        "PROXY_WORKLOAD_INFO must be set when PROXY_MODE=dedicated (format `namespace/name/serviceAccount`)"
    );
    for bad in ["ns/name", "ns/name/sa/extra", "ns//sa", "/name/sa"] {
        assert_eq!(
            err(&[
                (vars::PROXY_MODE, "dedicated"),
                (vars::PROXY_WORKLOAD_INFO, bad)
            ]),
            format!(
                "PROXY_WORKLOAD_INFO={bad} is not valid: expected `namespace/name/serviceAccount`"
            )
        );
    }
    let c = ok(&[
        (vars::PROXY_MODE, "Dedicated"),
        (vars::PROXY_WORKLOAD_INFO, "shop/cart-0/cart"),
    ]);
    assert_eq!(c.proxy_mode, ProxyMode::Dedicated);
    assert_eq!(
        c.proxy_workload_info,
        Some(WorkloadInfo {
            namespace: "shop".into(),
            name: "cart-0".into(),
            service_account: "cart".into()
        })
    );
    assert_eq!(c.packet_mark, None, "no default mark in dedicated mode");

    let c = ok(&[(vars::PROXY_WORKLOAD_INFO, "shop/cart-0/cart")]);
    assert_eq!(c.proxy_workload_info, None);
    assert_eq!(
        c.warnings,
        vec!["PROXY_WORKLOAD_INFO is ignored in shared mode"]
    );
}

#[test]
fn packet_mark() {
    let cases: &[(Env, Option<u32>)] = &[
        (&[(vars::PACKET_MARK, "42")], Some(42)),
        (&[(vars::PACKET_MARK, "0x539")], Some(1337)),
        (&[(vars::PACKET_MARK, "")], Some(1337)),
        (
            &[
                (vars::PROXY_MODE, "dedicated"),
                (vars::PROXY_WORKLOAD_INFO, "a/b/c"),
                (vars::PACKET_MARK, "7"),
            ],
            Some(7),
        ),
    ];
    for (env, want) in cases {
        assert_eq!(ok(env).packet_mark, *want, "{env:?}");
    }
    for bad in ["-1", "4294967296", "0xZZ", "mark"] {
        assert_eq!(
            err(&[(vars::PACKET_MARK, bad)]),
            format!(
                "PACKET_MARK={bad} is not valid: expected a 32-bit mark, decimal (`1337`) or hex (`0x539`)"
            )
        );
    }
}

#[test]
fn booleans() {
    type Get = fn(&Config) -> bool;
    let cases: &[(&str, bool, Get)] = &[
        (vars::INPOD_PORT_REUSE, true, |c| c.inpod_port_reuse),
        (vars::ENABLE_PROXY, true, |c| c.proxy),
        (vars::IPV6_ENABLED, true, |c| c.ipv6_enabled),
        (vars::KEEPALIVE_ENABLED, true, |c| {
            c.socket.keepalive_enabled
        }),
        (vars::USER_TIMEOUT_ENABLED, false, |c| {
            c.socket.user_timeout_enabled
        }),
        (vars::LOCALHOST_APP_TUNNEL, true, |c| c.localhost_app_tunnel),
        (vars::ENABLE_RESPONSE_BAGGAGE, true, |c| {
            c.enable_response_baggage
        }),
        (vars::TLS12_ENABLED, false, |c| c.tls12_enabled),
        (vars::AUTHZ_POLICY_INFO_LOGGING, false, |c| {
            c.authz_policy_info_logging
        }),
        (vars::XDS_ON_DEMAND, false, |c| c.xds_on_demand),
        (vars::UNSTABLE_ENABLE_SOCKS5, false, |c| {
            c.socks5_addr.is_some()
        }),
    ];
    for (name, default, get) in cases {
        // XDS_ON_DEMAND needs the DNS proxy off; ENABLE_PROXY=false needs it on.
        let dns_off = if *name == vars::XDS_ON_DEMAND {
            (vars::ISTIO_META_DNS_CAPTURE, "false")
        } else {
            (vars::ISTIO_META_DNS_CAPTURE, "true")
        };
        assert_eq!(get(&ok(&[dns_off])), *default, "{name} default");
        for (value, want) in [
            ("true", true),
            ("FALSE", false),
            ("True", true),
            ("", *default),
        ] {
            assert_eq!(get(&ok(&[dns_off, (name, value)])), want, "{name}={value}");
        }
        assert_eq!(
            err(&[dns_off, (name, "yes")]),
            format!("{name}=yes is not valid: expected `true` or `false`")
        );
    }
    // ENABLE_ORIG_SRC is tri-state.
    for (value, want) in [("", None), ("true", Some(true)), ("false", Some(false))] {
        assert_eq!(
            ok(&[(vars::ENABLE_ORIG_SRC, value)]).require_original_source,
            want
        );
    }
    assert!(
        err(&[(vars::ENABLE_ORIG_SRC, "auto")]).starts_with("ENABLE_ORIG_SRC=auto is not valid")
    );
    // INPOD_ENABLED is accepted and ignored, whatever its value.
    assert_eq!(ok(&[(vars::INPOD_ENABLED, "garbage")]), ok(&[]));
}

#[test]
fn integers() {
    let c = ok(&[
        (vars::POOL_MAX_STREAMS_PER_CONNECTION, "250"),
        (vars::HTTP2_STREAM_WINDOW_SIZE, "65535"),
        (vars::HTTP2_CONNECTION_WINDOW_SIZE, "1048576"),
        (vars::HTTP2_FRAME_SIZE, "16384"),
        (vars::KEEPALIVE_RETRIES, "3"),
    ]);
    assert_eq!(c.pool_max_streams_per_conn, 250);
    assert_eq!(c.http2.stream_window_size, 65_535);
    assert_eq!(c.http2.connection_window_size, 1_048_576);
    assert_eq!(c.http2.frame_size, 16_384);
    assert_eq!(c.socket.keepalive_retries, 3);
    let cases = [
        (
            vars::POOL_MAX_STREAMS_PER_CONNECTION,
            "0",
            "an integer from 1 to 65535",
        ),
        (
            vars::POOL_MAX_STREAMS_PER_CONNECTION,
            "70000",
            "an integer from 1 to 65535",
        ),
        (
            vars::HTTP2_STREAM_WINDOW_SIZE,
            "2147483648",
            "an integer from 1 to 2147483647",
        ),
        (
            vars::HTTP2_CONNECTION_WINDOW_SIZE,
            "big",
            "an integer from 1 to 2147483647",
        ),
        (
            vars::HTTP2_FRAME_SIZE,
            "1024",
            "an integer from 16384 to 16777215",
        ),
        (
            vars::KEEPALIVE_RETRIES,
            "0",
            "an integer from 1 to 4294967295",
        ),
        (
            vars::TERMINATION_GRACE_PERIOD_SECONDS,
            "-3",
            "an integer from 0 to 18446744073709551615",
        ),
    ];
    for (name, value, expected) in cases {
        assert_eq!(
            err(&[(name, value)]),
            format!("{name}={value} is not valid: expected {expected}")
        );
    }
}

#[test]
fn durations() {
    let c = ok(&[
        (vars::SECRET_TTL, "12h"),
        (vars::POOL_UNUSED_RELEASE_TIMEOUT, "90"),
        (vars::KEEPALIVE_TIME, "1m30s"),
        (vars::KEEPALIVE_INTERVAL, "500ms"),
    ]);
    assert_eq!(c.secret_ttl, Duration::from_secs(12 * 3600));
    assert_eq!(c.pool_unused_release_timeout, Duration::from_secs(90));
    assert_eq!(c.socket.keepalive_time, Duration::from_secs(90));
    assert_eq!(c.socket.keepalive_interval, Duration::from_millis(500));
    for name in [
        vars::SECRET_TTL,
        vars::POOL_UNUSED_RELEASE_TIMEOUT,
        vars::KEEPALIVE_TIME,
        vars::KEEPALIVE_INTERVAL,
        vars::CONNECTION_TERMINATION_DEADLINE,
    ] {
        assert_eq!(
            err(&[(name, "soon")]),
            format!(
                "{name}=soon is not valid: expected a duration such as `24h`, `5m`, `1m30s`, `500ms` or a number of seconds"
            )
        );
    }
    for name in [
        vars::SECRET_TTL,
        vars::KEEPALIVE_TIME,
        vars::KEEPALIVE_INTERVAL,
    ] {
        assert_eq!(
            err(&[(name, "0s")]),
            format!(
                "{name}=0s is not valid: expected a duration above zero such as `24h` or `180s`"
            )
        );
    }
}

#[test]
fn termination_deadline() {
    let cases: &[(Env, u64)] = &[
        (&[(vars::TERMINATION_GRACE_PERIOD_SECONDS, "30")], 25),
        (&[(vars::TERMINATION_GRACE_PERIOD_SECONDS, "11")], 6),
        (&[(vars::TERMINATION_GRACE_PERIOD_SECONDS, "10")], 9),
        (&[(vars::TERMINATION_GRACE_PERIOD_SECONDS, "2")], 1),
        (&[(vars::TERMINATION_GRACE_PERIOD_SECONDS, "1")], 1),
        (&[(vars::TERMINATION_GRACE_PERIOD_SECONDS, "0")], 1),
        (&[(vars::CONNECTION_TERMINATION_DEADLINE, "20s")], 20),
        (
            &[
                (vars::CONNECTION_TERMINATION_DEADLINE, "3s"),
                (vars::TERMINATION_GRACE_PERIOD_SECONDS, "300"),
            ],
            3,
        ),
    ];
    for (env, secs) in cases {
        assert_eq!(
            ok(env).termination_deadline,
            Duration::from_secs(*secs),
            "{env:?}"
        );
    }
}

#[test]
fn worker_threads() {
    let t = |env: &[(&str, &str)], cpus: usize| {
        Config::from_env_on(
            &MapEnv::from_iter(env.iter().copied()),
            &Host {
                cpus,
                ..empty_host()
            },
        )
        .map(|c| c.worker_threads)
    };
    let cases: &[(Env, usize, usize)] = &[
        // explicit count, percentage, all
        (&[(vars::ZTUNNEL_WORKER_THREADS, "4")], 8, 4),
        (&[(vars::ZTUNNEL_WORKER_THREADS, "0")], 8, 8),
        (&[(vars::ZTUNNEL_WORKER_THREADS, "50%")], 8, 4),
        (&[(vars::ZTUNNEL_WORKER_THREADS, "30%")], 16, 5),
        (&[(vars::ZTUNNEL_WORKER_THREADS, "10%")], 4, 1),
        (&[(vars::ZTUNNEL_WORKER_THREADS, "100%")], 3, 3),
        // ZTUNNEL_CPU_LIMIT replaces the host CPU count
        (
            &[
                (vars::ZTUNNEL_WORKER_THREADS, "50%"),
                (vars::ZTUNNEL_CPU_LIMIT, "8"),
            ],
            64,
            4,
        ),
        (
            &[
                (vars::ZTUNNEL_WORKER_THREADS, "0"),
                (vars::ZTUNNEL_CPU_LIMIT, "3"),
            ],
            64,
            3,
        ),
        // PROXY_CONFIG concurrency when no explicit count
        (&[(vars::PROXY_CONFIG, "concurrency: 6")], 8, 6),
        (&[(vars::PROXY_CONFIG, "concurrency: 0")], 8, 8),
        (
            &[
                (vars::PROXY_CONFIG, "concurrency: 6"),
                (vars::ZTUNNEL_WORKER_THREADS, "3"),
            ],
            8,
            3,
        ),
        // automatic: limit (raised to request), else max(ceil(25%), request, 2)
        (&[(vars::ZTUNNEL_RESOURCE_CPU_LIMIT, "4")], 64, 4),
        (&[(vars::ZTUNNEL_RESOURCE_CPU_LIMIT, "1500m")], 64, 2),
        (&[(vars::ZTUNNEL_RESOURCE_CPU_LIMIT, "500m")], 64, 1),
        (
            &[
                (vars::ZTUNNEL_RESOURCE_CPU_LIMIT, "1"),
                (vars::ZTUNNEL_RESOURCE_CPU_REQUEST, "2"),
            ],
            64,
            2,
        ),
        (&[], 64, 16),
        (&[], 16, 4),
        (&[], 4, 2),
        (&[], 1, 2),
        (&[(vars::ZTUNNEL_RESOURCE_CPU_REQUEST, "6")], 8, 6),
        (&[(vars::ZTUNNEL_RESOURCE_CPU_REQUEST, "200m")], 64, 16),
        (&[(vars::ZTUNNEL_CPU_LIMIT, "12")], 64, 3),
    ];
    for (env, cpus, want) in cases {
        assert_eq!(t(env, *cpus), Ok(*want), "{env:?} on {cpus} CPUs");
    }
    let threads_msg = "a thread count (`0` = all CPUs) or a percentage of the CPUs above 0 and at most 100 (`50%`)";
    for bad in ["0%", "101%", "-1", "many", "x%"] {
        assert_eq!(
            t(&[(vars::ZTUNNEL_WORKER_THREADS, bad)], 8)
                .unwrap_err()
                .to_string(),
            format!("ZTUNNEL_WORKER_THREADS={bad} is not valid: expected {threads_msg}")
        );
    }
    let quantity = "a CPU quantity such as `2`, `1.5` or `500m`";
    for (name, bad) in [
        (vars::ZTUNNEL_CPU_LIMIT, "2k"),
        (vars::ZTUNNEL_RESOURCE_CPU_LIMIT, "-1"),
        (vars::ZTUNNEL_RESOURCE_CPU_REQUEST, "m"),
    ] {
        assert_eq!(
            t(&[(name, bad)], 8).unwrap_err().to_string(),
            format!("{name}={bad} is not valid: expected {quantity}")
        );
    }
    assert_eq!(
        t(&[(vars::ZTUNNEL_CPU_LIMIT, "0")], 8)
            .unwrap_err()
            .to_string(),
        "ZTUNNEL_CPU_LIMIT=0 is not valid: expected a positive CPU quantity such as `2` or `500m`"
    );
    assert_eq!(
        t(&[(vars::ZTUNNEL_RESOURCE_CPU_LIMIT, "0")], 8)
            .unwrap_err()
            .to_string(),
        "ZTUNNEL_RESOURCE_CPU_LIMIT=0 is not valid: expected a positive CPU quantity such as `2` or `500m`"
    );
}

#[test]
fn identity_and_cluster() {
    let c = ok(&[
        (vars::ISTIO_META_CLUSTER_ID, "east"),
        (vars::CLUSTER_ID, "ignored"),
        (vars::CLUSTER_DOMAIN, "corp.local"),
        (vars::NETWORK, "net-1"),
        (vars::TRUST_DOMAIN, "example.org"),
        (vars::POD_NAME, "ztunnel-x2k9"),
        (vars::POD_NAMESPACE, "istio-system"),
        (vars::SERVICE_ACCOUNT, "ztunnel"),
        (vars::NODE_NAME, "node-a"),
        (vars::INSTANCE_IP, "10.244.1.7"),
        (vars::PREFERED_SERVICE_NAMESPACE, "shop"),
        (vars::CRL_PATH, "/var/run/secrets/istio/crl/ca-crl.pem"),
        (vars::INPOD_UDS, "/tmp/zds.sock"),
    ]);
    assert_eq!(c.cluster_id, "east");
    assert_eq!(ok(&[(vars::CLUSTER_ID, "west")]).cluster_id, "west");
    assert_eq!(c.cluster_domain, "corp.local");
    assert_eq!(c.network, "net-1");
    assert_eq!(c.trust_domain, "example.org");
    assert_eq!(
        c.self_workload,
        Some(WorkloadInfo {
            namespace: "istio-system".into(),
            name: "ztunnel-x2k9".into(),
            service_account: "ztunnel".into()
        })
    );
    assert_eq!(c.node_name.as_deref(), Some("node-a"));
    assert_eq!(
        c.instance_ip,
        Some(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 7)))
    );
    assert_eq!(
        c.node_id,
        "ztunnel~10.244.1.7~ztunnel-x2k9.istio-system~istio-system.svc.cluster.local"
    );
    assert_eq!(c.prefered_service_namespace.as_deref(), Some("shop"));
    assert_eq!(
        c.crl_path,
        Some(PathBuf::from("/var/run/secrets/istio/crl/ca-crl.pem"))
    );
    assert_eq!(c.inpod_uds, PathBuf::from("/tmp/zds.sock"));
    // Two of three is not an identity.
    assert_eq!(
        ok(&[(vars::POD_NAME, "z"), (vars::POD_NAMESPACE, "ns")]).self_workload,
        None
    );
    assert_eq!(
        err(&[(vars::INSTANCE_IP, "10.0.0")]),
        "INSTANCE_IP=10.0.0 is not valid: expected an IP address"
    );
}

#[test]
fn dns_proxy_settings() {
    let cases: &[(Option<&str>, bool)] = &[
        (None, true),
        (Some("true"), true),
        (Some("TRUE"), true),
        (Some("false"), false),
        (Some(""), false),
        (Some("yes"), false),
    ];
    for (value, want) in cases {
        let env: Vec<(&str, &str)> = value
            .map(|v| vec![(vars::ISTIO_META_DNS_CAPTURE, v)])
            .unwrap_or_default();
        assert_eq!(
            ok(&env).dns_proxy,
            *want,
            "ISTIO_META_DNS_CAPTURE={value:?}"
        );
    }
    let addr = |v| ok(&[(vars::ISTIO_META_DNS_PROXY_ADDR, v)]).dns_proxy_addr;
    assert_eq!(
        addr("localhost:1053"),
        ListenAddress::Localhost {
            port: 1053,
            ipv6: true
        }
    );
    assert_eq!(
        addr("127.0.0.2:53"),
        ListenAddress::Exact(SocketAddr::from(([127, 0, 0, 2], 53)))
    );
    assert_eq!(
        err(&[(vars::ISTIO_META_DNS_PROXY_ADDR, "localhost")]),
        "ISTIO_META_DNS_PROXY_ADDR=localhost is not valid: expected `localhost:<port>` or `<ip>:<port>`"
    );
    assert!(
        err(&[(vars::ISTIO_META_DNS_PROXY_ADDR, "dns:53")])
            .starts_with("ISTIO_META_DNS_PROXY_ADDR=dns:53")
    );
}

#[test]
fn ipv6_off_and_socks5() {
    let c = ok(&[
        (vars::IPV6_ENABLED, "false"),
        (vars::UNSTABLE_ENABLE_SOCKS5, "true"),
    ]);
    assert_eq!(c.stats_addr.to_string(), "0.0.0.0:15020");
    assert_eq!(c.readiness_addr.to_string(), "0.0.0.0:15021");
    assert_eq!(
        c.admin_addr.candidates(),
        vec![SocketAddr::from(([127, 0, 0, 1], 15000))]
    );
    assert_eq!(
        c.dns_proxy_addr,
        ListenAddress::Localhost {
            port: 15053,
            ipv6: false
        }
    );
    assert_eq!(
        c.socks5_addr,
        Some(SocketAddr::from(([127, 0, 0, 1], 15080)))
    );
    assert_eq!(c.illegal_ports(), vec![15001, 15006, 15008, 15080]);
    let v6 = ok(&[]);
    assert_eq!(
        v6.admin_addr.candidates(),
        vec![
            SocketAddr::from(([127, 0, 0, 1], 15000)),
            "[::1]:15000".parse().unwrap()
        ]
    );
    assert_eq!(
        v6.stats_addr.candidates(),
        vec![
            "[::]:15020".parse().unwrap(),
            SocketAddr::from(([0, 0, 0, 0], 15020))
        ]
    );
}

#[test]
fn conflicts_and_unsupported() {
    assert_eq!(
        err(&[
            (vars::LOCAL_XDS_PATH, "/etc/z.yaml"),
            (vars::LOCAL_XDS, "workloads: []")
        ]),
        "only one of LOCAL_XDS_PATH and LOCAL_XDS may be set"
    );
    assert_eq!(
        ok(&[(vars::LOCAL_XDS_PATH, "/etc/z.yaml")]).local_xds,
        Some(LocalXds::File("/etc/z.yaml".into()))
    );
    assert_eq!(
        ok(&[(vars::LOCAL_XDS, "workloads: []")]).local_xds,
        Some(LocalXds::Inline("workloads: []".into()))
    );
    assert_eq!(
        err(&[(vars::XDS_ON_DEMAND, "true")]),
        "XDS_ON_DEMAND=true cannot be combined with the DNS proxy: set ISTIO_META_DNS_CAPTURE=false to use on-demand xDS"
    );
    assert!(
        ok(&[
            (vars::XDS_ON_DEMAND, "true"),
            (vars::ISTIO_META_DNS_CAPTURE, "false")
        ])
        .xds_on_demand
    );
    assert_eq!(
        err(&[
            (vars::ENABLE_PROXY, "false"),
            (vars::ISTIO_META_DNS_CAPTURE, "false")
        ]),
        "nothing to run: ENABLE_PROXY=false and the DNS proxy is off (ISTIO_META_DNS_CAPTURE)"
    );
    assert_eq!(
        err(&[(vars::FAKE_CA, "true")]),
        "FAKE_CA=true is not supported by this build: there is no built-in test CA; point CA_ADDRESS at a CA (istiod)"
    );
    assert!(ok(&[(vars::FAKE_CA, "false")]).ca.address.is_some());
    assert_eq!(
        err(&[(vars::COMPLIANCE_POLICY, "pqc")]),
        "COMPLIANCE_POLICY=pqc is not supported by this build: the post-quantum key exchange X25519MLKEM768 is not available in this build's crypto provider (ring)"
    );
    assert_eq!(
        err(&[(vars::COMPLIANCE_POLICY, "fips-140-3")]),
        "COMPLIANCE_POLICY=fips-140-3 is not valid: expected unset or `pqc`"
    );
    assert!(load(&[(vars::COMPLIANCE_POLICY, "")]).is_ok());
}

#[test]
fn logging_settings() {
    assert_eq!(
        ok(&[(vars::LOG_FORMAT, "json")]).log_format,
        LogFormat::Json
    );
    assert_eq!(
        ok(&[(vars::LOG_FORMAT, "JSON")]).log_format,
        LogFormat::Json
    );
    assert_eq!(
        err(&[(vars::LOG_FORMAT, "xml")]),
        "LOG_FORMAT=xml is not valid: expected `plain` or `json`"
    );
    assert_eq!(
        ok(&[(vars::RUST_LOG, "info,hbone=debug")]).log_filter,
        "info,hbone=debug"
    );
    let msg = err(&[(vars::RUST_LOG, "info,=x=y")]);
    assert!(
        msg.starts_with(
            "RUST_LOG=info,=x=y is not valid: expected a tracing filter such as `info`"
        ),
        "{msg}"
    );
    assert_eq!(
        ok(&[(vars::ISTIO_META_ISTIO_VERSION, "1.28.0")])
            .istio_version
            .as_deref(),
        Some("1.28.0")
    );
}

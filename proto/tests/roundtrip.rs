//! Encode → decode round trips of fully populated messages, and the full
//! xDS path: message → `Any` → `Resource` → `DeltaDiscoveryResponse` → back.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;

use prost::{Message, Name};
use prost_types::{Any, Struct, Value, value::Kind};
use proto::envoy::config::core::v3 as core;
use proto::envoy::service::discovery::v3 as discovery;
use proto::envoy::r#type::v3::SemanticVersion;
use proto::google::rpc::Status;
use proto::istio::security::{self as sec, string_match::MatchType};
use proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use proto::istio::workload::{self as wl, zds};
use proto::xds::core::v3::ContextParams;
use proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, WORKLOAD_TYPE_URL, pack_any, unpack_any};

fn roundtrip<M: Message + Default + PartialEq + Debug>(msg: &M) {
    let bytes = msg.encode_to_vec();
    assert_eq!(bytes.len(), msg.encoded_len());
    let back = M::decode(bytes.as_slice()).expect("decodes what it encoded");
    assert_eq!(&back, msg);
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn strukt(pairs: &[(&str, &str)]) -> Struct {
    Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), string_value(v)))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn extension(name: &str) -> wl::Extension {
    wl::Extension {
        name: name.into(),
        config: Some(Any {
            type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
            value: vec![0x0a, 0x01, b'x'],
        }),
    }
}

fn waypoint_by_host() -> wl::GatewayAddress {
    wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Hostname(
            wl::NamespacedHostname {
                namespace: "ns".into(),
                hostname: "waypoint.ns.svc.cluster.local".into(),
            },
        )),
        hbone_mtls_port: 15008,
    }
}

fn gateway_by_ip() -> wl::GatewayAddress {
    wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Address(
            wl::NetworkAddress {
                network: "remote".into(),
                address: vec![172, 16, 0, 1],
                length: Some(32),
            },
        )),
        hbone_mtls_port: 15008,
    }
}

fn full_workload() -> wl::Workload {
    let ports = wl::PortList {
        ports: vec![wl::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: wl::AppProtocol::Http11.into(),
        }],
    };
    wl::Workload {
        uid: "Kubernetes//Pod/default/echo-abc".into(),
        name: "echo-abc".into(),
        namespace: "default".into(),
        addresses: vec![vec![10, 0, 0, 5], {
            let mut v6 = vec![0xfd, 0x00];
            v6.resize(16, 7);
            v6
        }],
        hostname: "echo.example.com".into(),
        network: "net1".into(),
        tunnel_protocol: wl::TunnelProtocol::Hbone.into(),
        trust_domain: "example.org".into(),
        service_account: "echo".into(),
        waypoint: Some(waypoint_by_host()),
        network_gateway: Some(gateway_by_ip()),
        node: "node-1".into(),
        canonical_name: "echo".into(),
        canonical_revision: "v1".into(),
        workload_type: wl::WorkloadType::Pod.into(),
        workload_name: "echo".into(),
        native_tunnel: true,
        application_tunnel: Some(wl::ApplicationTunnel {
            protocol: wl::application_tunnel::Protocol::Proxy.into(),
            port: 15088,
        }),
        services: HashMap::from([
            ("default/echo.default.svc.cluster.local".to_owned(), ports),
            (
                "default/other.default.svc.cluster.local".to_owned(),
                wl::PortList::default(),
            ),
        ]),
        authorization_policies: vec!["default/allow-all".into(), "istio-system/strict".into()],
        status: wl::WorkloadStatus::Unhealthy.into(),
        cluster_id: "Kubernetes".into(),
        locality: Some(wl::Locality {
            region: "eu".into(),
            zone: "eu-1a".into(),
            subzone: "rack4".into(),
        }),
        network_mode: wl::NetworkMode::HostNetwork.into(),
        extensions: vec![extension("workload-ext")],
        capacity: Some(3),
    }
}

fn full_service() -> wl::Service {
    wl::Service {
        name: "echo".into(),
        namespace: "default".into(),
        hostname: "echo.default.svc.cluster.local".into(),
        addresses: vec![
            wl::NetworkAddress {
                network: String::new(),
                address: vec![10, 96, 0, 10],
                length: None,
            },
            wl::NetworkAddress {
                network: "net1".into(),
                address: vec![10, 96, 0, 0],
                length: Some(0),
            },
        ],
        ports: vec![
            wl::Port {
                service_port: 80,
                target_port: 0,
                app_protocol: wl::AppProtocol::Http2.into(),
            },
            wl::Port {
                service_port: 443,
                target_port: 8443,
                app_protocol: wl::AppProtocol::Tls.into(),
            },
        ],
        subject_alt_names: vec!["spiffe://example.org/ns/default/sa/legacy".into()],
        waypoint: Some(waypoint_by_host()),
        load_balancing: Some(wl::LoadBalancing {
            routing_preference: vec![
                wl::load_balancing::Scope::Network.into(),
                wl::load_balancing::Scope::Region.into(),
                wl::load_balancing::Scope::Zone.into(),
            ],
            mode: wl::load_balancing::Mode::Failover.into(),
            health_policy: wl::load_balancing::HealthPolicy::AllowAll.into(),
        }),
        ip_families: wl::IpFamilies::Dual.into(),
        extensions: vec![extension("service-ext")],
        canonical: true,
        ingress_use_waypoint: true,
        weighted_waypoints: vec![
            wl::WeightedWaypoint {
                destination: Some(waypoint_by_host()),
                weight: 90,
            },
            wl::WeightedWaypoint {
                destination: Some(gateway_by_ip()),
                weight: 10,
            },
        ],
        visibility: wl::service::Visibility::Namespace.into(),
    }
}

fn string_match(m: MatchType) -> sec::StringMatch {
    sec::StringMatch {
        match_type: Some(m),
    }
}

fn full_authorization() -> sec::Authorization {
    let ip = |address: Vec<u8>, length| sec::Address { address, length };
    let sa = |namespace: &str, name: &str| sec::ServiceAccountMatch {
        namespace: namespace.into(),
        service_account: name.into(),
    };
    let full_match = sec::Match {
        namespaces: vec![string_match(MatchType::Exact("default".into()))],
        not_namespaces: vec![string_match(MatchType::Prefix("kube-".into()))],
        principals: vec![
            string_match(MatchType::Suffix("/sa/client".into())),
            string_match(MatchType::Exact("spiffe://example.org/ns/a/sa/b".into())),
        ],
        not_principals: vec![string_match(MatchType::Presence(()))],
        source_ips: vec![ip(vec![10, 0, 0, 0], 8)],
        not_source_ips: vec![ip(vec![10, 1, 2, 3], 32)],
        destination_ips: vec![ip(vec![0xfd; 16], 64)],
        not_destination_ips: vec![ip(vec![192, 168, 0, 0], 16)],
        destination_ports: vec![80, 443, 65535],
        not_destination_ports: vec![22],
        service_accounts: vec![sa("default", "client")],
        not_service_accounts: vec![sa("kube-system", "default")],
        extensions: vec![extension("match-ext")],
    };
    sec::Authorization {
        name: "allow-client".into(),
        namespace: "default".into(),
        scope: sec::Scope::WorkloadSelector.into(),
        action: sec::Action::Deny.into(),
        rules: vec![
            sec::Rule {
                clauses: vec![
                    sec::Clause {
                        matches: vec![full_match.clone(), sec::Match::default()],
                    },
                    sec::Clause {
                        matches: vec![full_match],
                    },
                ],
            },
            sec::Rule::default(),
        ],
        dry_run: true,
        extensions: vec![extension("authz-ext")],
    }
}

fn full_node() -> core::Node {
    core::Node {
        id: "ztunnel~10.0.0.5~ztunnel-abc.istio-system~istio-system.svc.cluster.local".into(),
        cluster: "ztunnel.istio-system".into(),
        metadata: Some(strukt(&[
            ("NAMESPACE", "istio-system"),
            ("CLUSTER_ID", "Kubernetes"),
            ("SERVICE_ACCOUNT", "ztunnel"),
        ])),
        dynamic_parameters: HashMap::from([(
            ADDRESS_TYPE_URL.to_owned(),
            ContextParams {
                params: HashMap::from([("shard".to_owned(), "1".to_owned())]),
            },
        )]),
        locality: Some(core::Locality {
            region: "eu".into(),
            zone: "eu-1a".into(),
            sub_zone: "rack4".into(),
        }),
        user_agent_name: "ztunnel".into(),
        user_agent_version_type: Some(core::node::UserAgentVersionType::UserAgentBuildVersion(
            core::BuildVersion {
                version: Some(SemanticVersion {
                    major_number: 1,
                    minor_number: 27,
                    patch: 3,
                }),
                metadata: Some(strukt(&[("build", "release")])),
            },
        )),
        extensions: vec![core::Extension {
            name: "envoy.filters.http.router".into(),
            category: "envoy.filters.http".into(),
            type_descriptor: "legacy".into(),
            version: Some(core::BuildVersion::default()),
            disabled: true,
            type_urls: vec![
                "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router".into(),
            ],
        }],
        client_features: vec!["envoy.lb.does_not_support_overprovisioning".into()],
    }
}

#[test]
fn address_with_workload() {
    roundtrip(&wl::Address {
        r#type: Some(wl::address::Type::Workload(full_workload())),
    });
}

#[test]
fn address_with_service() {
    roundtrip(&wl::Address {
        r#type: Some(wl::address::Type::Service(full_service())),
    });
}

#[test]
fn workload_and_service_alone() {
    roundtrip(&full_workload());
    roundtrip(&full_service());
}

#[test]
fn authorization() {
    roundtrip(&full_authorization());
}

#[test]
fn certificate_request_and_response() {
    roundtrip(&IstioCertificateRequest {
        csr: "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
            .into(),
        validity_duration: 86400,
        metadata: Some(strukt(&[(
            "ImpersonatedIdentity",
            "spiffe://cluster.local/ns/default/sa/echo",
        )])),
    });
    roundtrip(&IstioCertificateResponse {
        cert_chain: vec![
            "leaf-pem".into(),
            "intermediate-pem".into(),
            "root-pem".into(),
        ],
    });
}

#[test]
fn every_zds_message() {
    let info = zds::WorkloadInfo {
        name: "echo-abc".into(),
        namespace: "default".into(),
        service_account: "echo".into(),
    };
    let add = zds::AddWorkload {
        uid: "5b1c0b2e-8e9f-4a7c-9d55-1f0c2b3a4d5e".into(),
        workload_info: Some(info.clone()),
    };
    let keep = zds::KeepWorkload {
        uid: "keep-uid".into(),
    };
    let del = zds::DelWorkload {
        uid: "del-uid".into(),
    };
    roundtrip(&zds::ZdsHello {
        version: zds::Version::V1.into(),
    });
    roundtrip(&info);
    roundtrip(&add);
    roundtrip(&keep);
    roundtrip(&del);
    roundtrip(&zds::SnapshotSent {});
    roundtrip(&zds::Ack {
        error: "no such netns".into(),
    });
    use zds::workload_request::Payload;
    for payload in [
        Payload::Add(add),
        Payload::Keep(keep),
        Payload::Del(del),
        Payload::SnapshotSent(zds::SnapshotSent {}),
    ] {
        roundtrip(&zds::WorkloadRequest {
            payload: Some(payload),
        });
    }
    roundtrip(&zds::WorkloadResponse {
        payload: Some(zds::workload_response::Payload::Ack(zds::Ack {
            error: "nack".into(),
        })),
    });
}

#[test]
fn node_with_metadata() {
    roundtrip(&full_node());
}

#[test]
fn delta_discovery_request() {
    roundtrip(&discovery::DeltaDiscoveryRequest {
        node: Some(full_node()),
        type_url: ADDRESS_TYPE_URL.into(),
        resource_names_subscribe: vec![
            "/10.0.0.5".into(),
            "default/echo.default.svc.cluster.local".into(),
        ],
        resource_names_unsubscribe: vec!["*".into()],
        resource_locators_subscribe: vec![discovery::ResourceLocator {
            name: "a".into(),
            dynamic_parameters: HashMap::from([("k".to_owned(), "v".to_owned())]),
        }],
        resource_locators_unsubscribe: vec![discovery::ResourceLocator {
            name: "b".into(),
            dynamic_parameters: HashMap::new(),
        }],
        initial_resource_versions: HashMap::from([
            (
                "Kubernetes//Pod/default/echo-abc".to_owned(),
                "2025-01-01T00:00:00Z/1".to_owned(),
            ),
            (
                "default/echo.default.svc.cluster.local".to_owned(),
                "v7".to_owned(),
            ),
        ]),
        response_nonce: "nonce-1".into(),
        error_detail: Some(Status {
            code: 3,
            message: "default/p: unknown action; default/q: bad ip".into(),
            details: vec![Any {
                type_url: "type.googleapis.com/google.rpc.DebugInfo".into(),
                value: vec![1, 2, 3],
            }],
        }),
    });
}

#[test]
fn delta_discovery_response_through_any() {
    let workload = wl::Address {
        r#type: Some(wl::address::Type::Workload(full_workload())),
    };
    let service = wl::Address {
        r#type: Some(wl::address::Type::Service(full_service())),
    };
    let resource = |name: &str, msg: &wl::Address| discovery::Resource {
        name: name.into(),
        resource_name: Some(discovery::ResourceName {
            name: name.into(),
            dynamic_parameter_constraints: None,
        }),
        aliases: vec!["/10.0.0.5".into()],
        version: "v1".into(),
        resource: Some(pack_any(ADDRESS_TYPE_URL, msg)),
        ttl: Some(prost_types::Duration {
            seconds: 30,
            nanos: 5,
        }),
        cache_control: Some(discovery::resource::CacheControl { do_not_cache: true }),
        metadata: Some(core::Metadata {
            filter_metadata: HashMap::from([("istio".to_owned(), strukt(&[("a", "b")]))]),
            typed_filter_metadata: HashMap::from([(
                "t".to_owned(),
                Any {
                    type_url: "u".into(),
                    value: vec![],
                },
            )]),
        }),
    };
    let response = discovery::DeltaDiscoveryResponse {
        system_version_info: "2025-01-01".into(),
        resources: vec![
            resource("Kubernetes//Pod/default/echo-abc", &workload),
            resource("default/echo.default.svc.cluster.local", &service),
        ],
        type_url: ADDRESS_TYPE_URL.into(),
        nonce: "nonce-2".into(),
        removed_resources: vec!["Kubernetes//Pod/default/gone".into()],
        control_plane: Some(core::ControlPlane {
            identifier: "istiod-abc".into(),
        }),
        removed_resource_names: vec![discovery::ResourceName {
            name: "gone".into(),
            dynamic_parameter_constraints: Some(discovery::DynamicParameterConstraints {
                r#type: Some(
                    discovery::dynamic_parameter_constraints::Type::NotConstraints(Box::default()),
                ),
            }),
        }],
        resource_errors: vec![discovery::ResourceError {
            resource_name: Some(discovery::ResourceName {
                name: "broken".into(),
                dynamic_parameter_constraints: None,
            }),
            error_detail: Some(Status {
                code: 5,
                message: "not found".into(),
                details: vec![],
            }),
        }],
    };
    roundtrip(&response);

    let back =
        discovery::DeltaDiscoveryResponse::decode(response.encode_to_vec().as_slice()).unwrap();
    let unpacked: Vec<wl::Address> = back
        .resources
        .iter()
        .map(|r| unpack_any(r.resource.as_ref().unwrap(), ADDRESS_TYPE_URL).unwrap())
        .collect();
    assert_eq!(unpacked, vec![workload, service]);
}

#[test]
fn sotw_discovery_messages() {
    roundtrip(&discovery::DiscoveryRequest {
        version_info: "v1".into(),
        node: Some(full_node()),
        resource_names: vec!["a".into()],
        resource_locators: vec![discovery::ResourceLocator {
            name: "b".into(),
            dynamic_parameters: HashMap::new(),
        }],
        type_url: AUTHORIZATION_TYPE_URL.into(),
        response_nonce: "n".into(),
        error_detail: Some(Status::default()),
    });
    roundtrip(&discovery::DiscoveryResponse {
        version_info: "v1".into(),
        resources: vec![pack_any(AUTHORIZATION_TYPE_URL, &full_authorization())],
        canary: true,
        type_url: AUTHORIZATION_TYPE_URL.into(),
        nonce: "n".into(),
        control_plane: Some(core::ControlPlane {
            identifier: "istiod".into(),
        }),
        resource_errors: vec![discovery::ResourceError::default()],
    });
}

#[test]
fn type_url_constants_match_generated_names() {
    assert_eq!(ADDRESS_TYPE_URL, wl::Address::type_url());
    assert_eq!(WORKLOAD_TYPE_URL, wl::Workload::type_url());
    assert_eq!(AUTHORIZATION_TYPE_URL, sec::Authorization::type_url());
    assert_eq!(
        zds::WorkloadRequest::full_name(),
        "istio.workload.zds.WorkloadRequest"
    );
    assert_eq!(
        discovery::DeltaDiscoveryRequest::full_name(),
        "envoy.service.discovery.v3.DeltaDiscoveryRequest"
    );
}

#[test]
fn grpc_paths_match_generated_services() {
    use proto::envoy::service::discovery::v3::aggregated_discovery_service_server as ads;
    use proto::istio::v1::auth::istio_certificate_service_server as ca;
    assert_eq!(
        proto::DELTA_AGGREGATED_RESOURCES_PATH,
        format!("/{}/DeltaAggregatedResources", ads::SERVICE_NAME)
    );
    assert_eq!(
        proto::STREAM_AGGREGATED_RESOURCES_PATH,
        format!("/{}/StreamAggregatedResources", ads::SERVICE_NAME)
    );
    assert_eq!(
        proto::CREATE_CERTIFICATE_PATH,
        format!("/{}/CreateCertificate", ca::SERVICE_NAME)
    );
}

//! Checks the compiled schema (the embedded `FILE_DESCRIPTOR_SET`) against
//! the reference tables: every message's complete field list with numbers,
//! types and labels, every enum's values, reserved numbers and the services.
//!
//! Field specs read `name number type [repeated | optional | oneof:<name>]`;
//! a type starting with `.` is a fully-qualified message or enum, and
//! `map<K,V>` is a map field.

use std::collections::HashMap;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

struct Schema {
    messages: HashMap<String, DescriptorProto>,
    enums: HashMap<String, EnumDescriptorProto>,
    fds: FileDescriptorSet,
}

impl Schema {
    fn load() -> Self {
        let fds = FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut schema = Schema {
            messages: HashMap::new(),
            enums: HashMap::new(),
            fds: FileDescriptorSet::default(),
        };
        for file in &fds.file {
            let prefix = file.package().to_owned();
            for e in &file.enum_type {
                schema
                    .enums
                    .insert(format!("{prefix}.{}", e.name()), e.clone());
            }
            for m in &file.message_type {
                schema.add_message(&prefix, m);
            }
        }
        schema.fds = fds;
        schema
    }

    fn add_message(&mut self, prefix: &str, m: &DescriptorProto) {
        let name = format!("{prefix}.{}", m.name());
        for e in &m.enum_type {
            self.enums.insert(format!("{name}.{}", e.name()), e.clone());
        }
        for nested in &m.nested_type {
            self.add_message(&name, nested);
        }
        self.messages.insert(name, m.clone());
    }

    fn message(&self, name: &str) -> &DescriptorProto {
        self.messages
            .get(name)
            .unwrap_or_else(|| panic!("message {name} is not in the descriptor set"))
    }

    /// The type of a field as written in the specs.
    fn type_of(&self, field: &prost_types::FieldDescriptorProto) -> String {
        match field.r#type() {
            Type::Message | Type::Enum => {
                let type_name = field.type_name();
                let nested = self.messages.get(type_name.trim_start_matches('.'));
                match nested {
                    Some(entry) if entry.options.as_ref().is_some_and(|o| o.map_entry()) => {
                        let key = &entry.field[0];
                        let value = &entry.field[1];
                        assert_eq!((key.number(), value.number()), (1, 2));
                        format!("map<{},{}>", self.type_of(key), self.type_of(value))
                    }
                    _ => type_name.to_owned(),
                }
            }
            scalar => scalar
                .as_str_name()
                .trim_start_matches("TYPE_")
                .to_lowercase(),
        }
    }

    fn check_message(&self, name: &str, specs: &[&str]) {
        let msg = self.message(name);
        let mut actual: Vec<String> = msg
            .field
            .iter()
            .map(|f| {
                let mut spec = format!("{} {} {}", f.name(), f.number(), self.type_of(f));
                let is_map = spec.contains(" map<");
                if f.proto3_optional() {
                    spec.push_str(" optional");
                } else if let Some(i) = f.oneof_index {
                    spec.push_str(&format!(" oneof:{}", msg.oneof_decl[i as usize].name()));
                } else if f.label() == Label::Repeated && !is_map {
                    spec.push_str(" repeated");
                }
                spec
            })
            .collect();
        let mut expected: Vec<String> = specs.iter().map(|s| (*s).to_owned()).collect();
        actual.sort();
        expected.sort();
        assert_eq!(actual, expected, "fields of {name}");
    }

    fn check_enum(&self, name: &str, values: &[(&str, i32)]) {
        let e = self
            .enums
            .get(name)
            .unwrap_or_else(|| panic!("enum {name} is not in the descriptor set"));
        let actual: Vec<(&str, i32)> = e.value.iter().map(|v| (v.name(), v.number())).collect();
        assert_eq!(actual, values, "values of {name}");
    }

    fn check_reserved(&self, name: &str, numbers: &[i32], names: &[&str]) {
        let msg = self.message(name);
        for n in numbers {
            assert!(
                msg.reserved_range
                    .iter()
                    .any(|r| r.start() <= *n && *n < r.end()),
                "{name} must reserve {n}"
            );
        }
        for n in names {
            assert!(
                msg.reserved_name.iter().any(|r| r == n),
                "{name} must reserve the name {n}"
            );
        }
    }
}

#[test]
fn istio_workload_messages() {
    let s = Schema::load();
    s.check_message(
        "istio.workload.Address",
        &[
            "workload 1 .istio.workload.Workload oneof:type",
            "service 2 .istio.workload.Service oneof:type",
        ],
    );
    s.check_message(
        "istio.workload.Service",
        &[
            "name 1 string",
            "namespace 2 string",
            "hostname 3 string",
            "addresses 4 .istio.workload.NetworkAddress repeated",
            "ports 5 .istio.workload.Port repeated",
            "subject_alt_names 6 string repeated",
            "waypoint 7 .istio.workload.GatewayAddress",
            "load_balancing 8 .istio.workload.LoadBalancing",
            "ip_families 9 .istio.workload.IPFamilies",
            "extensions 10 .istio.workload.Extension repeated",
            "canonical 11 bool",
            "ingress_use_waypoint 12 bool",
            "weighted_waypoints 13 .istio.workload.WeightedWaypoint repeated",
            "visibility 14 .istio.workload.Service.Visibility",
        ],
    );
    s.check_message(
        "istio.workload.Workload",
        &[
            "name 1 string",
            "namespace 2 string",
            "addresses 3 bytes repeated",
            "network 4 string",
            "tunnel_protocol 5 .istio.workload.TunnelProtocol",
            "trust_domain 6 string",
            "service_account 7 string",
            "waypoint 8 .istio.workload.GatewayAddress",
            "node 9 string",
            "canonical_name 10 string",
            "canonical_revision 11 string",
            "workload_type 12 .istio.workload.WorkloadType",
            "workload_name 13 string",
            "native_tunnel 14 bool",
            "authorization_policies 16 string repeated",
            "status 17 .istio.workload.WorkloadStatus",
            "cluster_id 18 string",
            "network_gateway 19 .istio.workload.GatewayAddress",
            "uid 20 string",
            "hostname 21 string",
            "services 22 map<string,.istio.workload.PortList>",
            "application_tunnel 23 .istio.workload.ApplicationTunnel",
            "locality 24 .istio.workload.Locality",
            "network_mode 25 .istio.workload.NetworkMode",
            "extensions 26 .istio.workload.Extension repeated",
            "capacity 27 .google.protobuf.UInt32Value",
        ],
    );
    s.check_reserved("istio.workload.Workload", &[15], &[]);
    s.check_message(
        "istio.workload.LoadBalancing",
        &[
            "routing_preference 1 .istio.workload.LoadBalancing.Scope repeated",
            "mode 2 .istio.workload.LoadBalancing.Mode",
            "health_policy 3 .istio.workload.LoadBalancing.HealthPolicy",
        ],
    );
    s.check_message(
        "istio.workload.Locality",
        &["region 1 string", "zone 2 string", "subzone 3 string"],
    );
    s.check_message(
        "istio.workload.PortList",
        &["ports 1 .istio.workload.Port repeated"],
    );
    s.check_message(
        "istio.workload.Port",
        &[
            "service_port 1 uint32",
            "target_port 2 uint32",
            "app_protocol 3 .istio.workload.AppProtocol",
        ],
    );
    s.check_message(
        "istio.workload.ApplicationTunnel",
        &[
            "protocol 1 .istio.workload.ApplicationTunnel.Protocol",
            "port 2 uint32",
        ],
    );
    s.check_message(
        "istio.workload.GatewayAddress",
        &[
            "hostname 1 .istio.workload.NamespacedHostname oneof:destination",
            "address 2 .istio.workload.NetworkAddress oneof:destination",
            "hbone_mtls_port 3 uint32",
        ],
    );
    s.check_reserved(
        "istio.workload.GatewayAddress",
        &[4],
        &["hbone_single_tls_port"],
    );
    s.check_message(
        "istio.workload.WeightedWaypoint",
        &[
            "destination 1 .istio.workload.GatewayAddress",
            "weight 2 uint32",
        ],
    );
    s.check_message(
        "istio.workload.NetworkAddress",
        &[
            "network 1 string",
            "address 2 bytes",
            "length 3 uint32 optional",
        ],
    );
    s.check_message(
        "istio.workload.NamespacedHostname",
        &["namespace 1 string", "hostname 2 string"],
    );
    s.check_message(
        "istio.workload.Extension",
        &["name 1 string", "config 2 .google.protobuf.Any"],
    );
}

#[test]
fn istio_workload_enums() {
    let s = Schema::load();
    s.check_enum(
        "istio.workload.IPFamilies",
        &[
            ("AUTOMATIC", 0),
            ("IPV4_ONLY", 1),
            ("IPV6_ONLY", 2),
            ("DUAL", 3),
        ],
    );
    s.check_enum(
        "istio.workload.NetworkMode",
        &[("STANDARD", 0), ("HOST_NETWORK", 1)],
    );
    s.check_enum(
        "istio.workload.LoadBalancing.Scope",
        &[
            ("UNSPECIFIED_SCOPE", 0),
            ("REGION", 1),
            ("ZONE", 2),
            ("SUBZONE", 3),
            ("NODE", 4),
            ("CLUSTER", 5),
            ("NETWORK", 6),
        ],
    );
    s.check_enum(
        "istio.workload.LoadBalancing.Mode",
        &[
            ("UNSPECIFIED_MODE", 0),
            ("STRICT", 1),
            ("FAILOVER", 2),
            ("PASSTHROUGH", 3),
        ],
    );
    s.check_enum(
        "istio.workload.LoadBalancing.HealthPolicy",
        &[("ONLY_HEALTHY", 0), ("ALLOW_ALL", 1)],
    );
    s.check_enum(
        "istio.workload.WorkloadStatus",
        &[("HEALTHY", 0), ("UNHEALTHY", 1)],
    );
    s.check_enum(
        "istio.workload.WorkloadType",
        &[("DEPLOYMENT", 0), ("CRONJOB", 1), ("POD", 2), ("JOB", 3)],
    );
    s.check_enum(
        "istio.workload.AppProtocol",
        &[
            ("UNKNOWN", 0),
            ("HTTP11", 1),
            ("HTTP2", 2),
            ("GRPC", 3),
            ("TCP", 4),
            ("TLS", 5),
        ],
    );
    s.check_enum(
        "istio.workload.TunnelProtocol",
        &[("NONE", 0), ("HBONE", 1), ("LEGACY_ISTIO_MTLS", 2)],
    );
    s.check_enum(
        "istio.workload.ApplicationTunnel.Protocol",
        &[("NONE", 0), ("PROXY", 1)],
    );
    s.check_enum(
        "istio.workload.Service.Visibility",
        &[("PUBLIC", 0), ("NAMESPACE", 1)],
    );
}

#[test]
fn istio_security() {
    let s = Schema::load();
    s.check_message(
        "istio.security.Authorization",
        &[
            "name 1 string",
            "namespace 2 string",
            "scope 3 .istio.security.Scope",
            "action 4 .istio.security.Action",
            "rules 5 .istio.security.Rule repeated",
            "dry_run 6 bool",
            "extensions 7 .istio.workload.Extension repeated",
        ],
    );
    s.check_message(
        "istio.security.Rule",
        &["clauses 1 .istio.security.Clause repeated"],
    );
    s.check_message(
        "istio.security.Clause",
        &["matches 2 .istio.security.Match repeated"],
    );
    s.check_reserved("istio.security.Clause", &[1], &[]);
    s.check_message(
        "istio.security.Match",
        &[
            "namespaces 1 .istio.security.StringMatch repeated",
            "not_namespaces 2 .istio.security.StringMatch repeated",
            "principals 3 .istio.security.StringMatch repeated",
            "not_principals 4 .istio.security.StringMatch repeated",
            "source_ips 5 .istio.security.Address repeated",
            "not_source_ips 6 .istio.security.Address repeated",
            "destination_ips 7 .istio.security.Address repeated",
            "not_destination_ips 8 .istio.security.Address repeated",
            "destination_ports 9 uint32 repeated",
            "not_destination_ports 10 uint32 repeated",
            "service_accounts 11 .istio.security.ServiceAccountMatch repeated",
            "not_service_accounts 12 .istio.security.ServiceAccountMatch repeated",
            "extensions 13 .istio.workload.Extension repeated",
        ],
    );
    s.check_message(
        "istio.security.Address",
        &["address 1 bytes", "length 2 uint32"],
    );
    s.check_message(
        "istio.security.ServiceAccountMatch",
        &["namespace 1 string", "serviceAccount 2 string"],
    );
    s.check_message(
        "istio.security.StringMatch",
        &[
            "exact 1 string oneof:match_type",
            "prefix 2 string oneof:match_type",
            "suffix 3 string oneof:match_type",
            "presence 4 .google.protobuf.Empty oneof:match_type",
        ],
    );
    s.check_enum(
        "istio.security.Scope",
        &[("GLOBAL", 0), ("NAMESPACE", 1), ("WORKLOAD_SELECTOR", 2)],
    );
    s.check_enum("istio.security.Action", &[("ALLOW", 0), ("DENY", 1)]);
}

#[test]
fn istio_ca() {
    let s = Schema::load();
    s.check_message(
        "istio.v1.auth.IstioCertificateRequest",
        &[
            "csr 1 string",
            "validity_duration 3 int64",
            "metadata 4 .google.protobuf.Struct",
        ],
    );
    s.check_reserved("istio.v1.auth.IstioCertificateRequest", &[2], &[]);
    s.check_message(
        "istio.v1.auth.IstioCertificateResponse",
        &["cert_chain 1 string repeated"],
    );
}

#[test]
fn istio_zds() {
    let s = Schema::load();
    let zds = |m: &str| format!("istio.workload.zds.{m}");
    s.check_message(&zds("ZdsHello"), &["version 1 .istio.workload.zds.Version"]);
    s.check_enum(&zds("Version"), &[("NOT_USED", 0), ("V1", 1)]);
    s.check_message(
        &zds("WorkloadInfo"),
        &[
            "name 1 string",
            "namespace 2 string",
            "service_account 3 string",
        ],
    );
    s.check_reserved(&zds("WorkloadInfo"), &[4], &["trust_domain"]);
    s.check_message(
        &zds("AddWorkload"),
        &[
            "uid 1 string",
            "workload_info 2 .istio.workload.zds.WorkloadInfo",
        ],
    );
    s.check_message(&zds("KeepWorkload"), &["uid 1 string"]);
    s.check_message(&zds("DelWorkload"), &["uid 2 string"]);
    s.check_reserved(&zds("DelWorkload"), &[1], &[]);
    s.check_message(&zds("SnapshotSent"), &[]);
    s.check_message(&zds("Ack"), &["error 1 string"]);
    s.check_message(
        &zds("WorkloadRequest"),
        &[
            "add 1 .istio.workload.zds.AddWorkload oneof:payload",
            "del 2 .istio.workload.zds.DelWorkload oneof:payload",
            "snapshot_sent 3 .istio.workload.zds.SnapshotSent oneof:payload",
            "keep 5 .istio.workload.zds.KeepWorkload oneof:payload",
        ],
    );
    s.check_reserved(&zds("WorkloadRequest"), &[4], &[]);
    s.check_message(
        &zds("WorkloadResponse"),
        &["ack 1 .istio.workload.zds.Ack oneof:payload"],
    );
}

#[test]
fn envoy_core_and_rpc_status() {
    let s = Schema::load();
    s.check_message(
        "envoy.config.core.v3.Node",
        &[
            "id 1 string",
            "cluster 2 string",
            "metadata 3 .google.protobuf.Struct",
            "locality 4 .envoy.config.core.v3.Locality",
            "user_agent_name 6 string",
            "user_agent_version 7 string oneof:user_agent_version_type",
            "user_agent_build_version 8 .envoy.config.core.v3.BuildVersion oneof:user_agent_version_type",
            "extensions 9 .envoy.config.core.v3.Extension repeated",
            "client_features 10 string repeated",
            "dynamic_parameters 12 map<string,.xds.core.v3.ContextParams>",
        ],
    );
    s.check_reserved("envoy.config.core.v3.Node", &[5, 11], &["build_version"]);
    s.check_message(
        "envoy.config.core.v3.Locality",
        &["region 1 string", "zone 2 string", "sub_zone 3 string"],
    );
    s.check_message(
        "envoy.config.core.v3.BuildVersion",
        &[
            "version 1 .envoy.type.v3.SemanticVersion",
            "metadata 2 .google.protobuf.Struct",
        ],
    );
    s.check_message(
        "envoy.config.core.v3.Extension",
        &[
            "name 1 string",
            "category 2 string",
            "type_descriptor 3 string",
            "version 4 .envoy.config.core.v3.BuildVersion",
            "disabled 5 bool",
            "type_urls 6 string repeated",
        ],
    );
    s.check_message(
        "envoy.config.core.v3.Metadata",
        &[
            "filter_metadata 1 map<string,.google.protobuf.Struct>",
            "typed_filter_metadata 2 map<string,.google.protobuf.Any>",
        ],
    );
    s.check_message(
        "envoy.config.core.v3.ControlPlane",
        &["identifier 1 string"],
    );
    s.check_message(
        "envoy.type.v3.SemanticVersion",
        &[
            "major_number 1 uint32",
            "minor_number 2 uint32",
            "patch 3 uint32",
        ],
    );
    s.check_message(
        "xds.core.v3.ContextParams",
        &["params 1 map<string,string>"],
    );
    s.check_message(
        "google.rpc.Status",
        &[
            "code 1 int32",
            "message 2 string",
            "details 3 .google.protobuf.Any repeated",
        ],
    );
}

#[test]
fn envoy_discovery() {
    let s = Schema::load();
    let d = |m: &str| format!("envoy.service.discovery.v3.{m}");
    s.check_message(
        &d("DiscoveryRequest"),
        &[
            "version_info 1 string",
            "node 2 .envoy.config.core.v3.Node",
            "resource_names 3 string repeated",
            "type_url 4 string",
            "response_nonce 5 string",
            "error_detail 6 .google.rpc.Status",
            "resource_locators 7 .envoy.service.discovery.v3.ResourceLocator repeated",
        ],
    );
    s.check_message(
        &d("DiscoveryResponse"),
        &[
            "version_info 1 string",
            "resources 2 .google.protobuf.Any repeated",
            "canary 3 bool",
            "type_url 4 string",
            "nonce 5 string",
            "control_plane 6 .envoy.config.core.v3.ControlPlane",
            "resource_errors 7 .envoy.service.discovery.v3.ResourceError repeated",
        ],
    );
    s.check_message(
        &d("DeltaDiscoveryRequest"),
        &[
            "node 1 .envoy.config.core.v3.Node",
            "type_url 2 string",
            "resource_names_subscribe 3 string repeated",
            "resource_names_unsubscribe 4 string repeated",
            "initial_resource_versions 5 map<string,string>",
            "response_nonce 6 string",
            "error_detail 7 .google.rpc.Status",
            "resource_locators_subscribe 8 .envoy.service.discovery.v3.ResourceLocator repeated",
            "resource_locators_unsubscribe 9 .envoy.service.discovery.v3.ResourceLocator repeated",
        ],
    );
    s.check_message(
        &d("DeltaDiscoveryResponse"),
        &[
            "system_version_info 1 string",
            "resources 2 .envoy.service.discovery.v3.Resource repeated",
            "type_url 4 string",
            "nonce 5 string",
            "removed_resources 6 string repeated",
            "control_plane 7 .envoy.config.core.v3.ControlPlane",
            "removed_resource_names 8 .envoy.service.discovery.v3.ResourceName repeated",
            "resource_errors 9 .envoy.service.discovery.v3.ResourceError repeated",
        ],
    );
    s.check_message(
        &d("Resource"),
        &[
            "version 1 string",
            "resource 2 .google.protobuf.Any",
            "name 3 string",
            "aliases 4 string repeated",
            "ttl 6 .google.protobuf.Duration",
            "cache_control 7 .envoy.service.discovery.v3.Resource.CacheControl",
            "resource_name 8 .envoy.service.discovery.v3.ResourceName",
            "metadata 9 .envoy.config.core.v3.Metadata",
        ],
    );
    s.check_message(&d("Resource.CacheControl"), &["do_not_cache 1 bool"]);
    s.check_message(
        &d("ResourceName"),
        &[
            "name 1 string",
            "dynamic_parameter_constraints 2 .envoy.service.discovery.v3.DynamicParameterConstraints",
        ],
    );
    s.check_message(
        &d("ResourceLocator"),
        &["name 1 string", "dynamic_parameters 2 map<string,string>"],
    );
    s.check_message(
        &d("ResourceError"),
        &[
            "resource_name 1 .envoy.service.discovery.v3.ResourceName",
            "error_detail 2 .google.rpc.Status",
        ],
    );
}

#[test]
fn services() {
    let s = Schema::load();
    let mut found = Vec::new();
    for file in &s.fds.file {
        for service in &file.service {
            for m in &service.method {
                found.push(format!(
                    "/{}.{}/{} {} {} {}{}",
                    file.package(),
                    service.name(),
                    m.name(),
                    m.input_type(),
                    m.output_type(),
                    if m.client_streaming() {
                        "stream-in"
                    } else {
                        "unary-in"
                    },
                    if m.server_streaming() {
                        " stream-out"
                    } else {
                        " unary-out"
                    },
                ));
            }
        }
    }
    found.sort();
    assert_eq!(
        found,
        [
            format!(
                "{} .envoy.service.discovery.v3.DeltaDiscoveryRequest \
                 .envoy.service.discovery.v3.DeltaDiscoveryResponse stream-in stream-out",
                proto::DELTA_AGGREGATED_RESOURCES_PATH
            ),
            format!(
                "{} .envoy.service.discovery.v3.DiscoveryRequest \
                 .envoy.service.discovery.v3.DiscoveryResponse stream-in stream-out",
                proto::STREAM_AGGREGATED_RESOURCES_PATH
            ),
            format!(
                "{} .istio.v1.auth.IstioCertificateRequest \
                 .istio.v1.auth.IstioCertificateResponse unary-in unary-out",
                proto::CREATE_CERTIFICATE_PATH
            ),
        ]
    );
}

#[test]
fn descriptor_set_is_self_contained() {
    let s = Schema::load();
    let names: Vec<&str> = s.fds.file.iter().map(|f| f.name()).collect();
    for wanted in [
        "istio/workload/workload.proto",
        "istio/security/authorization.proto",
        "istio/v1/auth/ca.proto",
        "istio/workload/zds/zds.proto",
        "envoy/config/core/v3/base.proto",
        "envoy/service/discovery/v3/discovery.proto",
        "envoy/service/discovery/v3/ads.proto",
        "google/rpc/status.proto",
        "google/protobuf/any.proto",
    ] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }
    // Comments are stripped from the embedded copy to keep it small.
    assert!(s.fds.file.iter().all(|f| f.source_code_info.is_none()));
    // Every imported file is present.
    for file in &s.fds.file {
        for dep in &file.dependency {
            assert!(names.contains(&dep.as_str()), "{dep} imported but missing");
        }
    }
}

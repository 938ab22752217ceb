//! Envoy xDS transport, `envoy.config.core.v3`, `google.rpc` and
//! `xds.core.v3` decoded from hand-assembled bytes (see `common` for the
//! conventions).

#[macro_use]
mod common;

use common::decode_exact;
use prost::Message;
use prost_types::value::Kind;
use proto::envoy::config::core::v3::{
    BuildVersion, ControlPlane, Metadata, Node, node::UserAgentVersionType,
};
use proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    DynamicParameterConstraints, Resource, ResourceError, ResourceLocator, ResourceName,
    dynamic_parameter_constraints::{self as dpc, single_constraint::ConstraintType},
};
use proto::google::rpc::Status;

/// `Struct{fields: {"k": Value{bool_value: true}}}`. Map values are kept
/// non-default so that the hand-written bytes are the canonical encoding.
fn struct_k_true() -> Vec<u8> {
    nested![9 =>
        [0x0a, 0x07, 0x0a, 0x01], b"k"; // fields = 1: entry{key = 1
        [0x12, 0x02, 0x20, 0x01];       //   value = 2: Value{bool_value = 4: true}}
    ]
}

fn assert_struct_k_true(s: &prost_types::Struct) {
    assert_eq!(s.fields.len(), 1);
    assert_eq!(s.fields["k"].kind, Some(Kind::BoolValue(true)));
}

fn string_value(v: &prost_types::Value) -> &str {
    match &v.kind {
        Some(Kind::StringValue(s)) => s,
        other => panic!("expected a string value, got {other:?}"),
    }
}

#[test]
fn node_with_every_field() {
    let metadata = {
        let entry = nested![0x11 =>
            [0x0a, 0x09], b"NAMESPACE";        // map entry key = 1
            [0x12, 0x04, 0x1a, 0x02], b"ns";   // map entry value = 2: Value{string_value = 3}
        ];
        nested![0x13 => [0x0a, 0x11], entry] // Struct.fields = 1
    };
    let extension = {
        let semver = nested![6 =>
            [0x08, 0x01]; // SemanticVersion.major_number = 1
            [0x10, 0x02]; // SemanticVersion.minor_number = 2
            [0x18, 0x03]; // SemanticVersion.patch = 3
        ];
        let build = nested![0x0a =>
            [0x0a, 0x06], semver; // BuildVersion.version = 1
            [0x12, 0x00];         // BuildVersion.metadata = 2: Struct{}
        ];
        nested![0x1a =>
            [0x0a, 0x01], b"x";   // Extension.name = 1
            [0x12, 0x01], b"c";   // Extension.category = 2
            [0x1a, 0x01], b"t";   // Extension.type_descriptor = 3
            [0x22, 0x0a], build;  // Extension.version = 4
            [0x28, 0x01];         // Extension.disabled = 5: true
            [0x32, 0x01], b"u";   // Extension.type_urls = 6
        ]
    };
    let dynamic_parameters_entry = {
        let params_entry = nested![6 =>
            [0x0a, 0x01], b"k"; // map entry key = 1
            [0x12, 0x01], b"v"; // map entry value = 2
        ];
        let context_params = nested![8 => [0x0a, 0x06], params_entry]; // ContextParams.params = 1
        nested![0x0d =>
            [0x0a, 0x01], b"t";            // map entry key = 1
            [0x12, 0x08], context_params;  // map entry value = 2: xds.core.v3.ContextParams
        ]
    };
    let bytes = wire![
        [0x0a, 0x03], b"id1";                    // id = 1
        [0x12, 0x01], b"c";                      // cluster = 2
        [0x1a, 0x13], metadata;                  // metadata = 3: Struct
        [0x22, 0x09,                             // locality = 4: Locality
            0x0a, 0x01], b"r";                   //   region = 1
        [0x12, 0x01], b"z";                      //   zone = 2
        [0x1a, 0x01], b"s";                      //   sub_zone = 3
        [0x32, 0x05], b"envoy";                  // user_agent_name = 6
        [0x3a, 0x03], b"1.0";                    // user_agent_version = 7 (oneof)
        [0x4a, 0x1a], extension;                 // extensions = 9
        [0x52, 0x02], b"f1";                     // client_features = 10
        [0x62, 0x0d], dynamic_parameters_entry;  // dynamic_parameters = 12 (map entry)
    ];

    let node: Node = decode_exact(&bytes);
    assert_eq!(node.id, "id1");
    assert_eq!(node.cluster, "c");
    let fields = &node.metadata.as_ref().unwrap().fields;
    assert_eq!(string_value(&fields["NAMESPACE"]), "ns");
    let locality = node.locality.as_ref().unwrap();
    assert_eq!(
        [&locality.region, &locality.zone, &locality.sub_zone],
        ["r", "z", "s"]
    );
    assert_eq!(node.user_agent_name, "envoy");
    assert_eq!(
        node.user_agent_version_type,
        Some(UserAgentVersionType::UserAgentVersion("1.0".into()))
    );
    assert_eq!(node.extensions.len(), 1);
    let ext = &node.extensions[0];
    assert_eq!((ext.name.as_str(), ext.category.as_str()), ("x", "c"));
    assert_eq!(ext.type_descriptor, "t");
    let version = ext.version.as_ref().unwrap();
    let semver = version.version.as_ref().unwrap();
    assert_eq!(
        (semver.major_number, semver.minor_number, semver.patch),
        (1, 2, 3)
    );
    assert_eq!(version.metadata, Some(prost_types::Struct::default()));
    assert!(ext.disabled);
    assert_eq!(ext.type_urls, vec!["u"]);
    assert_eq!(node.client_features, vec!["f1"]);
    assert_eq!(node.dynamic_parameters["t"].params["k"], "v");
}

#[test]
fn node_user_agent_build_version_is_field_8() {
    let bytes = wire![
        [0x42, 0x04];             // user_agent_build_version = 8: BuildVersion
        [0x0a, 0x02, 0x08, 0x07]; //   version = 1: SemanticVersion{major_number = 1: 7}
    ];
    let node: Node = decode_exact(&bytes);
    match node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentBuildVersion(BuildVersion {
            version: Some(v),
            metadata: None,
        })) => assert_eq!(v.major_number, 7),
        other => panic!("expected a build version, got {other:?}"),
    }
    // 5 (retired build_version) and 11 (listening_addresses) are skipped.
    let node = Node::decode(&[0x2a, 0x00, 0x5a, 0x00][..]).unwrap();
    assert_eq!(node, Node::default());
}

#[test]
fn metadata_and_control_plane() {
    let bytes = wire![
        [0x0a, 0x12, 0x0a, 0x05], b"istio"; // filter_metadata = 1: entry{key = 1
        [0x12, 0x09], struct_k_true();      //   value = 2: Struct}
        [0x12, 0x08, 0x0a, 0x01], b"t";     // typed_filter_metadata = 2: entry{key = 1
        [0x12, 0x03, 0x0a, 0x01], b"u";     //   value = 2: Any{type_url = 1}}
    ];
    let md: Metadata = decode_exact(&bytes);
    assert_struct_k_true(&md.filter_metadata["istio"]);
    assert_eq!(md.typed_filter_metadata["t"].type_url, "u");

    let cp: ControlPlane = decode_exact(&wire![[0x0a, 0x06], b"istiod"]); // identifier = 1
    assert_eq!(cp.identifier, "istiod");
}

#[test]
fn rpc_status() {
    let bytes = wire![
        [0x08, 0x03];                   // code = 1: 3 (INVALID_ARGUMENT)
        [0x12, 0x03], b"bad";           // message = 2
        [0x1a, 0x03, 0x0a, 0x01], b"u"; // details = 3: Any{type_url = 1}
    ];
    let status: Status = decode_exact(&bytes);
    assert_eq!(status.code, 3);
    assert_eq!(status.message, "bad");
    assert_eq!(status.details.len(), 1);
    assert_eq!(status.details[0].type_url, "u");
}

#[test]
fn delta_discovery_request_with_every_field() {
    let locator = nested![0x0b =>
        [0x0a, 0x01], b"l";                       // ResourceLocator.name = 1
        [0x12, 0x06, 0x0a, 0x01], b"k";           // dynamic_parameters = 2: entry{key = 1
        [0x12, 0x01], b"v";                       //   value = 2}
    ];
    let bytes = wire![
        [0x0a, 0x03, 0x0a, 0x01], b"n";           // node = 1: Node{id = 1}
        [0x12, 0x2a], b"type.googleapis.com/istio.workload.Address"; // type_url = 2
        [0x1a, 0x01], b"a";                       // resource_names_subscribe = 3
        [0x1a, 0x01], b"b";                       // resource_names_subscribe = 3
        [0x22, 0x01], b"*";                       // resource_names_unsubscribe = 4
        [0x2a, 0x07, 0x0a, 0x01], b"a";           // initial_resource_versions = 5: entry{key = 1
        [0x12, 0x02], b"v1";                      //   value = 2}
        [0x32, 0x02], b"n1";                      // response_nonce = 6
        [0x3a, 0x07,                              // error_detail = 7: Status
            0x08, 0x0d,                           //   code = 1: 13
            0x12, 0x03], b"bad";                  //   message = 2
        [0x42, 0x0b], locator;                    // resource_locators_subscribe = 8
        [0x4a, 0x03, 0x0a, 0x01], b"m";           // resource_locators_unsubscribe = 9: {name = 1}
    ];

    let req: DeltaDiscoveryRequest = decode_exact(&bytes);
    assert_eq!(req.node.as_ref().unwrap().id, "n");
    assert_eq!(req.type_url, proto::ADDRESS_TYPE_URL);
    assert_eq!(req.resource_names_subscribe, vec!["a", "b"]);
    assert_eq!(req.resource_names_unsubscribe, vec!["*"]);
    assert_eq!(req.initial_resource_versions.len(), 1);
    assert_eq!(req.initial_resource_versions["a"], "v1");
    assert_eq!(req.response_nonce, "n1");
    let err = req.error_detail.as_ref().unwrap();
    assert_eq!((err.code, err.message.as_str()), (13, "bad"));
    assert_eq!(req.resource_locators_subscribe.len(), 1);
    assert_eq!(req.resource_locators_subscribe[0].name, "l");
    assert_eq!(
        req.resource_locators_subscribe[0].dynamic_parameters["k"],
        "v"
    );
    assert_eq!(
        req.resource_locators_unsubscribe,
        vec![ResourceLocator {
            name: "m".into(),
            ..Default::default()
        }]
    );
}

fn resource_bytes() -> Vec<u8> {
    nested![0x3e =>
        [0x0a, 0x02], b"v1";                    // version = 1
        [0x12, 0x07,                            // resource = 2: Any
            0x0a, 0x01], b"u";                  //   type_url = 1
        [0x12, 0x02, 0x08, 0x01];               //   value = 2
        [0x1a, 0x04], b"ns/w";                  // name = 3
        [0x22, 0x09], b"/10.0.0.1";             // aliases = 4
        [0x32, 0x02, 0x08, 0x1e];               // ttl = 6: Duration{seconds = 1: 30}
        [0x3a, 0x02, 0x08, 0x01];               // cache_control = 7: {do_not_cache = 1: true}
        [0x42, 0x04, 0x0a, 0x02], b"rn";        // resource_name = 8: ResourceName{name = 1}
        [0x4a, 0x10, 0x0a, 0x0e, 0x0a, 0x01], b"a"; // metadata = 9: {filter_metadata = 1: entry{key = 1
        [0x12, 0x09], struct_k_true();          //   value = 2: Struct}}
    ]
}

fn assert_resource(r: &Resource) {
    assert_eq!(r.version, "v1");
    let any = r.resource.as_ref().unwrap();
    assert_eq!(
        (any.type_url.as_str(), any.value.as_slice()),
        ("u", &[0x08, 0x01][..])
    );
    assert_eq!(r.name, "ns/w");
    assert_eq!(r.aliases, vec!["/10.0.0.1"]);
    assert_eq!(
        r.ttl,
        Some(prost_types::Duration {
            seconds: 30,
            nanos: 0
        })
    );
    assert!(r.cache_control.as_ref().unwrap().do_not_cache);
    assert_eq!(r.resource_name.as_ref().unwrap().name, "rn");
    let md = r.metadata.as_ref().unwrap();
    assert_struct_k_true(&md.filter_metadata["a"]);
}

#[test]
fn resource_with_every_field() {
    let r: Resource = decode_exact(&resource_bytes());
    assert_resource(&r);
}

#[test]
fn resource_name_version_aliases_numbers() {
    let bytes = wire![
        [0x1a, 0x01], b"n"; // name = 3
        [0x0a, 0x01], b"v"; // version = 1
        [0x22, 0x01], b"a"; // aliases = 4
    ];
    let r: Resource = decode_exact(&bytes);
    assert_eq!((r.name.as_str(), r.version.as_str()), ("n", "v"));
    assert_eq!(r.aliases, vec!["a"]);
}

#[test]
fn delta_discovery_response_with_every_field() {
    let removed_name = {
        let single = nested![6 =>
            [0x0a, 0x01], b"k"; // SingleConstraint.key = 1
            [0x12, 0x01], b"v"; // SingleConstraint.value = 2 (oneof)
        ];
        let constraints = nested![8 => [0x0a, 0x06], single]; // DynamicParameterConstraints.constraint = 1
        nested![0x0d =>
            [0x0a, 0x01], b"r";         // ResourceName.name = 1
            [0x12, 0x08], constraints;  // ResourceName.dynamic_parameter_constraints = 2
        ]
    };
    let resource_error = nested![9 =>
        [0x0a, 0x03, 0x0a, 0x01], b"e"; // ResourceError.resource_name = 1: {name = 1}
        [0x12, 0x02, 0x08, 0x05];       // ResourceError.error_detail = 2: Status{code = 1: 5}
    ];
    let bytes = wire![
        [0x0a, 0x02], b"sv";                     // system_version_info = 1
        [0x12, 0x3e], resource_bytes();          // resources = 2
        [0x22, 0x01], b"t";                      // type_url = 4
        [0x2a, 0x01], b"n";                      // nonce = 5
        [0x32, 0x04], b"gone";                   // removed_resources = 6
        [0x3a, 0x08, 0x0a, 0x06], b"istiod";     // control_plane = 7: {identifier = 1}
        [0x42, 0x0d], removed_name;              // removed_resource_names = 8
        [0x4a, 0x09], resource_error;            // resource_errors = 9
    ];

    let resp: DeltaDiscoveryResponse = decode_exact(&bytes);
    assert_eq!(resp.system_version_info, "sv");
    assert_eq!(resp.resources.len(), 1);
    assert_resource(&resp.resources[0]);
    assert_eq!(resp.type_url, "t");
    assert_eq!(resp.nonce, "n");
    assert_eq!(resp.removed_resources, vec!["gone"]);
    assert_eq!(resp.control_plane.as_ref().unwrap().identifier, "istiod");
    let removed = &resp.removed_resource_names[0];
    assert_eq!(removed.name, "r");
    match &removed
        .dynamic_parameter_constraints
        .as_ref()
        .unwrap()
        .r#type
    {
        Some(dpc::Type::Constraint(c)) => {
            assert_eq!(c.key, "k");
            assert_eq!(c.constraint_type, Some(ConstraintType::Value("v".into())));
        }
        other => panic!("expected a single constraint, got {other:?}"),
    }
    assert_eq!(
        resp.resource_errors,
        vec![ResourceError {
            resource_name: Some(ResourceName {
                name: "e".into(),
                dynamic_parameter_constraints: None,
            }),
            error_detail: Some(Status {
                code: 5,
                ..Default::default()
            }),
        }]
    );
}

#[test]
fn delta_discovery_response_nonce_5_removed_6() {
    let bytes = wire![
        [0x2a, 0x02], b"n1";   // nonce = 5
        [0x32, 0x01], b"a";    // removed_resources = 6
        [0x32, 0x01], b"b";    // removed_resources = 6
    ];
    let resp: DeltaDiscoveryResponse = decode_exact(&bytes);
    assert_eq!(resp.nonce, "n1");
    assert_eq!(resp.removed_resources, vec!["a", "b"]);
}

#[test]
fn dynamic_parameter_constraint_lists() {
    // DynamicParameterConstraints{constraint = 1: {key = 1: "k", exists = 3: {}}}
    let exists = nested![7 => [0x0a, 0x05, 0x0a, 0x01], b"k", [0x1a, 0x00]];
    let list = nested![9 => [0x0a, 0x07], exists]; // ConstraintList.constraints = 1

    let or: DynamicParameterConstraints = decode_exact(&wire![[0x12, 0x09], list]); // or_constraints = 2
    let and: DynamicParameterConstraints = decode_exact(&wire![[0x1a, 0x09], list]); // and_constraints = 3
    let not: DynamicParameterConstraints = decode_exact(&wire![[0x22, 0x07], exists]); // not_constraints = 4

    let inner = DynamicParameterConstraints {
        r#type: Some(dpc::Type::Constraint(dpc::SingleConstraint {
            key: "k".into(),
            constraint_type: Some(ConstraintType::Exists(dpc::single_constraint::Exists {})),
        })),
    };
    let list = dpc::ConstraintList {
        constraints: vec![inner.clone()],
    };
    assert_eq!(or.r#type, Some(dpc::Type::OrConstraints(list.clone())));
    assert_eq!(and.r#type, Some(dpc::Type::AndConstraints(list)));
    assert_eq!(not.r#type, Some(dpc::Type::NotConstraints(Box::new(inner))));
}

#[test]
fn sotw_discovery_request() {
    let bytes = wire![
        [0x0a, 0x01], b"1";               // version_info = 1
        [0x12, 0x03, 0x0a, 0x01], b"n";   // node = 2: Node{id = 1}
        [0x1a, 0x01], b"a";               // resource_names = 3
        [0x22, 0x01], b"t";               // type_url = 4
        [0x2a, 0x01], b"x";               // response_nonce = 5
        [0x32, 0x02, 0x08, 0x03];         // error_detail = 6: Status{code = 1: 3}
        [0x3a, 0x03, 0x0a, 0x01], b"l";   // resource_locators = 7: {name = 1}
    ];
    let req: DiscoveryRequest = decode_exact(&bytes);
    assert_eq!(req.version_info, "1");
    assert_eq!(req.node.as_ref().unwrap().id, "n");
    assert_eq!(req.resource_names, vec!["a"]);
    assert_eq!(req.type_url, "t");
    assert_eq!(req.response_nonce, "x");
    assert_eq!(req.error_detail.as_ref().unwrap().code, 3);
    assert_eq!(req.resource_locators[0].name, "l");
}

#[test]
fn sotw_discovery_response() {
    let bytes = wire![
        [0x0a, 0x01], b"1";                         // version_info = 1
        [0x12, 0x03, 0x0a, 0x01], b"u";             // resources = 2: Any{type_url = 1}
        [0x18, 0x01];                               // canary = 3: true
        [0x22, 0x01], b"t";                         // type_url = 4
        [0x2a, 0x01], b"n";                         // nonce = 5
        [0x32, 0x03, 0x0a, 0x01], b"i";             // control_plane = 6: {identifier = 1}
        [0x3a, 0x05, 0x0a, 0x03, 0x0a, 0x01], b"e"; // resource_errors = 7: {resource_name = 1: {name = 1}}
    ];
    let resp: DiscoveryResponse = decode_exact(&bytes);
    assert_eq!(resp.version_info, "1");
    assert_eq!(resp.resources[0].type_url, "u");
    assert!(resp.canary);
    assert_eq!(resp.type_url, "t");
    assert_eq!(resp.nonce, "n");
    assert_eq!(resp.control_plane.as_ref().unwrap().identifier, "i");
    let err = &resp.resource_errors[0];
    assert_eq!(err.resource_name.as_ref().unwrap().name, "e");
}

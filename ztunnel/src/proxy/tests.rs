//! Table tests of the data path's decisions (no I/O) and of per-connection future sizes.

use std::net::SocketAddr;
use std::sync::Arc;

use hbone::headers::RequestMeta;
use hbone::{Authority, Identity};
use state::{MeshState, Workload};

use super::inbound::{InboundFacts, decide_inbound, inbound_context};
use super::outbound::{OutboundFailure, OutboundRoute, connect_request, plan_outbound};
use super::plaintext::decide_plaintext;
use super::{ProxyError, SecurityPolicy};

/// The mesh of these tests (and of the telemetry and on-demand DNS tests).
pub(super) const MESH: &str = r#"
workloads:
- uid: Kubernetes//Pod/shop/ui-0
  name: ui-0
  namespace: shop
  serviceAccount: ui
  trustDomain: cluster.local
  workloadIps: ["10.1.0.1"]
  protocol: HBONE
  workloadName: ui
  workloadType: deployment
  canonicalName: ui
  canonicalRevision: v1
  clusterId: Kubernetes
  services: {}
- uid: Kubernetes//Pod/shop/cart-0
  name: cart-0
  namespace: shop
  serviceAccount: cart
  trustDomain: cluster.local
  workloadIps: ["10.1.0.2"]
  protocol: HBONE
  workloadName: cart
  canonicalName: cart
  services:
    "shop/cart.shop.svc.cluster.local": {8080: 9090}
- uid: Kubernetes//Pod/shop/legacy-0
  name: legacy-0
  namespace: shop
  serviceAccount: legacy
  trustDomain: cluster.local
  workloadIps: ["10.1.0.3"]
  protocol: TCP
  services: {}
- uid: Kubernetes//Pod/shop/reviews-0
  name: reviews-0
  namespace: shop
  serviceAccount: reviews
  trustDomain: cluster.local
  workloadIps: ["10.1.0.4"]
  protocol: HBONE
  waypoint: {destination: "/10.1.0.9", hboneMtlsPort: 15008}
  services:
    "shop/reviews.shop.svc.cluster.local": {9080: 9080}
- uid: Kubernetes//Pod/shop/wp-0
  name: wp-0
  namespace: shop
  serviceAccount: waypoint
  trustDomain: cluster.local
  workloadIps: ["10.1.0.9"]
  protocol: HBONE
  services:
    "shop/wp.shop.svc.cluster.local": {15008: 15008}
services:
- name: cart
  namespace: shop
  hostname: cart.shop.svc.cluster.local
  vips: ["/10.96.0.1"]
  ports: {8080: 9090}
- name: empty
  namespace: shop
  hostname: empty.shop.svc.cluster.local
  vips: ["/10.96.0.2"]
  ports: {80: 80}
- name: reviews
  namespace: shop
  hostname: reviews.shop.svc.cluster.local
  vips: ["/10.96.0.4"]
  ports: {9080: 9080}
  waypoint: {destination: "shop/wp.shop.svc.cluster.local", hboneMtlsPort: 15008}
- name: wp
  namespace: shop
  hostname: wp.shop.svc.cluster.local
  vips: ["/10.96.0.9"]
  ports: {15008: 15008}
"#;

const ONLY_UI: &str = r#"
policies:
- name: only-ui
  namespace: shop
  scope: Namespace
  action: Allow
  dryRun: false
  rules:
  - - - principals: [!Exact cluster.local/ns/shop/sa/ui]
"#;

const ILLEGAL: [u16; 3] = [15001, 15006, 15008];

fn mesh() -> MeshState {
    let state = MeshState::default();
    state::local::load(&state, MESH).unwrap();
    state
}

fn workload(state: &MeshState, name: &str) -> Arc<Workload> {
    state
        .read()
        .workload_by_uid(&format!("Kubernetes//Pod/shop/{name}"))
        .unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "shop", sa)
}

/// An inbound stream from `peer_id` at ui-0's address (10.1.0.1:40000), arriving on `local`.
fn facts_from_ui_node<'a>(
    peer_id: &'a Identity,
    local: &str,
    authority: &'a Authority,
) -> InboundFacts<'a> {
    InboundFacts {
        peer_identity: Some(peer_id),
        peer: addr("10.1.0.1:40000"),
        local: addr(local),
        authority,
    }
}

fn plan(state: &MeshState, dst: &str) -> super::outbound::OutboundPlan {
    let ui = workload(state, "ui-0");
    let decision = state::resolve_outbound(&state.read(), &ui, addr(dst), &mut rand::rng());
    plan_outbound(decision, &ui, addr("10.1.0.1:40000"), addr(dst))
}

fn hbone(
    hbone_addr: &str,
    authority: &str,
    expected: &[&str],
    host: Option<&str>,
) -> OutboundRoute {
    OutboundRoute::Hbone {
        hbone_addr: addr(hbone_addr),
        authority: authority.into(),
        expected: expected.iter().map(|sa| id(sa)).collect(),
        forwarded_host: host.map(str::to_string),
    }
}

#[test]
fn outbound_routes() {
    let state = mesh();
    let cases: Vec<(&str, &str, OutboundRoute)> = vec![
        (
            "service VIP, HBONE endpoint: service port translated",
            "10.96.0.1:8080",
            hbone(
                "10.1.0.2:15008",
                "10.1.0.2:9090",
                &["cart"],
                Some("cart.shop.svc.cluster.local"),
            ),
        ),
        (
            "pod IP, HBONE: port unchanged, no host",
            "10.1.0.2:9090",
            hbone("10.1.0.2:15008", "10.1.0.2:9090", &["cart"], None),
        ),
        (
            "pod IP, plain TCP workload",
            "10.1.0.3:80",
            OutboundRoute::Tcp {
                target: addr("10.1.0.3:80"),
            },
        ),
        (
            "unknown destination: passthrough",
            "192.0.2.1:443",
            OutboundRoute::Tcp {
                target: addr("192.0.2.1:443"),
            },
        ),
        (
            "loopback on a proxy port",
            "127.0.0.1:15008",
            OutboundRoute::Fail(OutboundFailure::Refused {
                dst: addr("127.0.0.1:15008"),
            }),
        ),
        (
            "service without endpoints",
            "10.96.0.2:80",
            OutboundRoute::Fail(OutboundFailure::NoHealthyUpstream {
                service: "empty.shop.svc.cluster.local".into(),
                port: 80,
            }),
        ),
        (
            "service with a waypoint: authority is the VIP",
            "10.96.0.4:9080",
            hbone(
                "10.1.0.9:15008",
                "10.96.0.4:9080",
                &["waypoint"],
                Some("reviews.shop.svc.cluster.local"),
            ),
        ),
        (
            "workload with a waypoint: authority is the pod address",
            "10.1.0.4:9080",
            hbone("10.1.0.9:15008", "10.1.0.4:9080", &["waypoint"], None),
        ),
    ];
    for (name, dst, route) in cases {
        assert_eq!(plan(&state, dst).route, route, "{name}");
    }
}

#[test]
fn outbound_telemetry_context() {
    let state = mesh();
    let p = plan(&state, "10.96.0.1:8080");
    assert_eq!(p.ctx.security, SecurityPolicy::MutualTls);
    assert_eq!(p.ctx.source_identity, Some(id("ui")));
    assert_eq!(p.ctx.destination_identity, Some(id("cart")));
    assert_eq!(p.ctx.dst_addr, addr("10.1.0.2:15008"));
    assert_eq!(p.ctx.hbone_target.as_deref(), Some("10.1.0.2:9090"));
    assert_eq!(
        p.ctx.destination_service.as_ref().unwrap().hostname,
        "cart.shop.svc.cluster.local"
    );
    assert_eq!(p.ctx.destination.as_ref().unwrap().name, "cart-0");
    assert_eq!(p.ctx.source.as_ref().unwrap().workload_name, "ui");

    let p = plan(&state, "192.0.2.1:443");
    assert_eq!(p.ctx.security, SecurityPolicy::Unknown);
    assert_eq!(p.ctx.source_identity, None);
    assert_eq!(p.ctx.destination, None);
    assert_eq!(p.ctx.dst_addr, addr("192.0.2.1:443"));
}

#[test]
fn connect_request_headers() {
    let state = mesh();
    let ui = workload(&state, "ui-0");
    let req = connect_request(
        &ui,
        addr("10.1.0.1:40000"),
        addr("10.1.0.2:15008"),
        "10.1.0.2:9090".into(),
        vec![id("cart")],
        Some("cart.shop.svc.cluster.local"),
    );
    assert_eq!(req.source, id("ui"));
    assert_eq!(req.source_ip, Some("10.1.0.1".parse().unwrap()));
    assert_eq!(
        req.headers["forwarded"],
        r#"for="10.1.0.1:40000";host=cart.shop.svc.cluster.local"#
    );
    assert_eq!(
        req.headers["baggage"],
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=ui,service.name=ui,service.version=v1"
    );
    let tp = req.headers["traceparent"].to_str().unwrap();
    assert_eq!(tp.len(), 55, "{tp}");
    assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{tp}");
    // Round trip through the server-side parser.
    let meta = RequestMeta::from_headers(&req.headers);
    assert_eq!(
        meta.forwarded.unwrap().host.as_deref(),
        Some("cart.shop.svc.cluster.local")
    );
    assert_eq!(meta.baggage.unwrap().workload_name.as_deref(), Some("ui"));
}

struct InboundCase {
    name: &'static str,
    local: &'static str,
    local_addr: &'static str,
    authority: &'static str,
    peer_sa: &'static str,
    expect: Result<(&'static str, bool), u16>,
}

#[test]
fn inbound_checks_in_order() {
    let open = mesh();
    let strict = mesh();
    state::local::load(&strict, ONLY_UI).unwrap();
    let cases = [
        InboundCase {
            name: "own address",
            local: "cart-0",
            local_addr: "10.1.0.2:15008",
            authority: "10.1.0.2:9090",
            peer_sa: "ui",
            expect: Ok(("10.1.0.2:9090", false)),
        },
        InboundCase {
            name: "another pod's address: 400",
            local: "cart-0",
            local_addr: "10.1.0.2:15008",
            authority: "10.1.0.5:9090",
            peer_sa: "ui",
            expect: Err(400),
        },
        InboundCase {
            name: "arrived on an address that is not the workload's: 503",
            local: "cart-0",
            local_addr: "10.1.0.7:15008",
            authority: "10.1.0.7:9090",
            peer_sa: "ui",
            expect: Err(503),
        },
        InboundCase {
            name: "illegal target port: 503",
            local: "cart-0",
            local_addr: "10.1.0.2:15008",
            authority: "10.1.0.2:15006",
            peer_sa: "ui",
            expect: Err(503),
        },
        InboundCase {
            name: "hostname authority resolved through the port map",
            local: "cart-0",
            local_addr: "10.1.0.2:15008",
            authority: "cart.shop.svc.cluster.local:8080",
            peer_sa: "ui",
            expect: Ok(("10.1.0.2:9090", false)),
        },
        InboundCase {
            name: "unknown hostname: 503",
            local: "cart-0",
            local_addr: "10.1.0.2:15008",
            authority: "nope.shop.svc.cluster.local:80",
            peer_sa: "ui",
            expect: Err(503),
        },
        InboundCase {
            name: "waypoint: service VIP whose waypoint is us",
            local: "wp-0",
            local_addr: "10.1.0.9:15008",
            authority: "10.96.0.4:9080",
            peer_sa: "ui",
            expect: Ok(("10.1.0.9:9080", false)),
        },
        InboundCase {
            name: "waypoint: workload whose waypoint is us",
            local: "wp-0",
            local_addr: "10.1.0.9:15008",
            authority: "10.1.0.4:9080",
            peer_sa: "ui",
            expect: Ok(("10.1.0.9:9080", false)),
        },
        InboundCase {
            name: "not a waypoint for that workload: 400",
            local: "wp-0",
            local_addr: "10.1.0.9:15008",
            authority: "10.1.0.2:9090",
            peer_sa: "ui",
            expect: Err(400),
        },
    ];
    for c in cases {
        let local = workload(&open, c.local);
        let authority = Authority::parse(c.authority).unwrap();
        let peer_id = id(c.peer_sa);
        let facts = facts_from_ui_node(&peer_id, c.local_addr, &authority);
        let got = decide_inbound(&open.read(), &local, "", &ILLEGAL, &facts);
        match (got, c.expect) {
            (Ok(plan), Ok((upstream, denied))) => {
                assert_eq!(plan.upstream, addr(upstream), "{}", c.name);
                assert_eq!(plan.denied.is_some(), denied, "{}", c.name);
            }
            (Err(e), Err(status)) => {
                assert_eq!(e.http_status().as_u16(), status, "{}: {e}", c.name)
            }
            (got, want) => panic!("{}: got {got:?}, want {want:?}", c.name),
        }
    }

    // RBAC: principal allow-list.
    let cart = workload(&strict, "cart-0");
    let authority = Authority::parse("10.1.0.2:9090").unwrap();
    for (sa, denied) in [("ui", false), ("evil", true)] {
        let peer_id = id(sa);
        let facts = facts_from_ui_node(&peer_id, "10.1.0.2:15008", &authority);
        let plan = decide_inbound(&strict.read(), &cart, "", &ILLEGAL, &facts).unwrap();
        assert_eq!(plan.denied.is_some(), denied, "{sa}");
        assert_eq!(plan.subject.dst_port, 9090);
        assert_eq!(plan.subject.src_identity, Some(peer_id.clone()));
        let e = ProxyError::Denied {
            reason: plan.denied.unwrap_or_default(),
        };
        assert_eq!(e.http_status().as_u16(), 401);
    }
}

#[test]
fn inbound_telemetry_context() {
    let state = mesh();
    let cart = workload(&state, "cart-0");
    let authority = Authority::parse("10.1.0.2:9090").unwrap();
    let peer_id = id("ui");
    let facts = facts_from_ui_node(&peer_id, "10.1.0.2:15008", &authority);
    let view = state.read();
    let plan = decide_inbound(&view, &cart, "", &ILLEGAL, &facts).unwrap();
    let ctx = inbound_context(
        &view,
        &cart,
        "",
        true,
        &facts,
        &RequestMeta::default(),
        &plan,
    );
    assert_eq!(
        ctx.source.as_ref().unwrap().name,
        "ui-0",
        "source found by IP"
    );
    assert_eq!(ctx.source_identity, Some(id("ui")));
    assert_eq!(ctx.destination_identity, Some(id("cart")));
    assert_eq!(ctx.dst_addr, addr("10.1.0.2:15008"));
    assert_eq!(ctx.hbone_target.as_deref(), Some("10.1.0.2:9090"));
    assert_eq!(
        ctx.destination_service.unwrap().name,
        "cart",
        "service attributed by target port"
    );

    // A source not known by IP is described by its baggage.
    let unknown_peer = InboundFacts {
        peer: addr("192.0.2.7:1000"),
        ..facts.clone()
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "baggage",
        "k8s.namespace.name=far,k8s.deployment.name=client"
            .parse()
            .unwrap(),
    );
    let meta = RequestMeta::from_headers(&headers);
    let ctx = inbound_context(&view, &cart, "", true, &unknown_peer, &meta, &plan);
    let src = ctx.source.unwrap();
    assert_eq!(
        (src.namespace.as_str(), src.workload_name.as_str()),
        ("far", "client")
    );
    let ctx = inbound_context(&view, &cart, "", false, &unknown_peer, &meta, &plan);
    assert_eq!(
        ctx.source, None,
        "baggage ignored when ENABLE_RESPONSE_BAGGAGE=false"
    );
}

#[test]
fn plaintext_decisions() {
    let open = mesh();
    let strict = mesh();
    state::local::load(&strict, ONLY_UI).unwrap();
    let cart = workload(&open, "cart-0");
    let client = addr("192.0.2.5:5555");

    let p = decide_plaintext(
        &open.read(),
        &cart,
        "",
        &ILLEGAL,
        client,
        addr("10.1.0.2:9090"),
    )
    .unwrap();
    assert_eq!(p.denied, None);
    assert_eq!(p.upstream, addr("10.1.0.2:9090"));
    assert_eq!(p.ctx.security, SecurityPolicy::Unknown);
    assert_eq!(p.ctx.source, None);
    assert_eq!(p.ctx.source_identity, None);
    assert_eq!(p.ctx.destination_service.unwrap().name, "cart");

    // A mesh client's IP is still attributed, but never its identity.
    let p = decide_plaintext(
        &strict.read(),
        &cart,
        "",
        &ILLEGAL,
        addr("10.1.0.1:5555"),
        addr("10.1.0.2:9090"),
    )
    .unwrap();
    assert!(
        p.denied.is_some(),
        "no identity: the principal allow-list denies"
    );
    assert_eq!(p.ctx.source.unwrap().name, "ui-0");

    let e = decide_plaintext(
        &open.read(),
        &cart,
        "",
        &ILLEGAL,
        client,
        addr("10.1.0.2:15008"),
    )
    .unwrap_err();
    assert!(matches!(e, ProxyError::IllegalPort { .. }), "{e}");
    let e = decide_plaintext(
        &open.read(),
        &cart,
        "",
        &ILLEGAL,
        client,
        addr("10.1.0.3:80"),
    )
    .unwrap_err();
    assert!(matches!(e, ProxyError::NotLocal { .. }), "{e}");
}

fn future_size3<A, B, C, F: Future>(_: impl Fn(A, B, C) -> F) -> usize {
    size_of::<F>()
}

fn future_size2<A, B, F: Future>(_: impl Fn(A, B) -> F) -> usize {
    size_of::<F>()
}

/// Per-connection tasks stay small (they are spawned once per connection).
#[test]
fn per_connection_future_sizes() {
    let outbound = future_size3(super::outbound::handle);
    let plaintext = future_size3(super::plaintext::handle);
    let inbound = future_size2(super::inbound::handle);
    for (name, size) in [
        ("outbound", outbound),
        ("plaintext", plaintext),
        ("inbound", inbound),
    ] {
        assert!(size <= 8 * 1024, "{name} connection future is {size} bytes");
    }
}

struct NoCerts;

impl hbone::CertificateSource for NoCerts {
    fn certificate<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> hbone::cert::BoxFuture<'a, Result<Arc<hbone::WorkloadCertificate>, hbone::CertError>> {
        Box::pin(async move {
            Err(hbone::CertError::Unavailable {
                identity: identity.clone(),
                reason: "test".into(),
            })
        })
    }
}

pub(super) fn test_ctx(state: Arc<MeshState>, name: &str, sa: &str) -> super::ProxyCtx {
    let settings = super::ProxySettings::default();
    let connector = super::io::Connector {
        sockets: Arc::new(crate::socket::HostSocketFactory::default()),
        tcp: settings.tcp,
        timeout: settings.connect_timeout,
        orig_src: settings.orig_src,
    };
    let pool = hbone::Pool::new(
        settings.pool.clone(),
        Arc::new(NoCerts),
        Arc::new(super::io::FactoryDialer(connector.clone())),
    );
    super::ProxyCtx::new(
        state,
        settings,
        super::WorkloadInfo {
            name: name.into(),
            namespace: "shop".into(),
            service_account: sa.into(),
            trust_domain: "cluster.local".into(),
        },
        Arc::new(super::DefaultTelemetry),
        pool,
        connector,
    )
}

/// The local workload is looked up by pod name, namespace and service account, waiting for it
/// to appear (up to `workload_wait`), then cached until the addresses change.
#[tokio::test(start_paused = true)]
async fn local_workload_waits_for_the_state() {
    let state = Arc::new(MeshState::default());
    let ctx = Arc::new(test_ctx(state.clone(), "cart-0", "cart"));

    let err = ctx.local_workload().await.unwrap_err();
    assert!(
        matches!(err, ProxyError::UnknownLocalWorkload { .. }),
        "{err}"
    );

    let waiting = tokio::spawn({
        let ctx = ctx.clone();
        async move { ctx.local_workload().await }
    });
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    state::local::load(&state, MESH).unwrap();
    let found = waiting.await.unwrap().expect("found once it appears");
    assert_eq!(found.uid, "Kubernetes//Pod/shop/cart-0");

    // Wrong service account: not this pod.
    let other = test_ctx(state.clone(), "cart-0", "ui");
    assert!(other.local_workload().await.is_err());
}

/// The application tunnel decision: loopback or the workload's address, the tunnel's own port
/// or the target port, and for a hostname target a VIP of the service as the header's
/// destination.
#[test]
fn app_tunnel_upstream_and_header_destination() {
    use super::app_tunnel;
    let state = mesh();
    let tunnelled = MESH.replace(
        "  canonicalName: cart\n",
        "  canonicalName: cart\n  applicationTunnel: {protocol: PROXY, port: 15088}\n",
    );
    state::local::load(&state, &tunnelled).unwrap();
    let cart = workload(&state, "cart-0");
    let ui = id("ui");
    let decide = |authority: &str, localhost: bool| {
        let authority = Authority::parse(authority).unwrap();
        let facts = facts_from_ui_node(&ui, "10.1.0.2:15008", &authority);
        let view = state.read();
        let plan = decide_inbound(&view, &cart, "", &ILLEGAL, &facts).unwrap();
        app_tunnel::decide(&cart, "", localhost, &facts, &plan).expect("a tunnel")
    };
    let t = decide("10.1.0.2:9090", true);
    assert_eq!(t.upstream, addr("127.0.0.1:15088"));
    assert_eq!(t.header.src, addr("10.1.0.1:40000"));
    assert_eq!(t.header.dst, addr("10.1.0.2:9090"));
    assert_eq!(t.header.identity, Some(ui.clone()));
    // LOCALHOST_APP_TUNNEL=false: the workload's own address.
    assert_eq!(
        decide("10.1.0.2:9090", false).upstream,
        addr("10.1.0.2:15088")
    );
    // A hostname target: the header names the service VIP and the requested port.
    let t = decide("cart.shop.svc.cluster.local:8080", true);
    assert_eq!(t.header.dst, addr("10.96.0.1:8080"));
    assert_eq!(t.upstream, addr("127.0.0.1:15088"));
    // Without a tunnel there is nothing to decide.
    let plain = workload(&mesh(), "cart-0");
    let authority = Authority::parse("10.1.0.2:9090").unwrap();
    let facts = facts_from_ui_node(&ui, "10.1.0.2:15008", &authority);
    let view = state.read();
    let plan = decide_inbound(&view, &plain, "", &ILLEGAL, &facts).unwrap();
    assert_eq!(app_tunnel::decide(&plain, "", true, &facts, &plan), None);
}

const FAR_NETWORK: &str = r#"
workloads:
- uid: Kubernetes/SplitHorizonWorkload/istio-system/istio-eastwestgateway/172.16.0.1/shop/far.shop.svc.cluster.local
  name: far-split-horizon
  namespace: shop
  serviceAccount: far
  trustDomain: cluster.local
  network: net2
  workloadIps: []
  protocol: HBONE
  networkGateway: {destination: "net2/172.16.0.1", hboneMtlsPort: 15008}
  capacity: 2
  services:
    "shop/far.shop.svc.cluster.local": {80: 8080}
- uid: NetworkGateway/net2/172.16.0.1/15008
  name: istio-eastwestgateway-0
  namespace: istio-system
  serviceAccount: istio-eastwestgateway
  trustDomain: cluster.local
  network: net2
  workloadIps: ["172.16.0.1"]
  protocol: HBONE
  services: {}
services:
- name: far
  namespace: shop
  hostname: far.shop.svc.cluster.local
  vips: ["/10.96.0.7"]
  ports: {80: 8080}
  subjectAltNames: ["spiffe://cluster.local/ns/shop/sa/far"]
"#;

#[test]
fn remote_network_endpoint_goes_through_its_gateway() {
    let far = mesh();
    state::local::load(&far, FAR_NETWORK).unwrap();
    let gateway = Identity::new("cluster.local", "istio-system", "istio-eastwestgateway");
    let p = plan(&far, "10.96.0.7:80");
    assert_eq!(
        p.route,
        OutboundRoute::DoubleHbone {
            gateway_addr: addr("172.16.0.1:15008"),
            authority: "far.shop.svc.cluster.local:80".into(),
            gateway_expected: vec![gateway.clone()],
            expected: vec![id("far")],
            forwarded_host: Some("far.shop.svc.cluster.local".into()),
        }
    );
    // Reported as Istio does: the hop reached is the gateway, the service the one addressed.
    assert_eq!(p.ctx.destination_identity, Some(gateway));
    assert_eq!(
        p.ctx.destination.as_ref().unwrap().name,
        "istio-eastwestgateway-0"
    );
    assert_eq!(
        p.ctx.destination_service.as_ref().unwrap().hostname,
        "far.shop.svc.cluster.local"
    );
    assert_eq!(p.ctx.security, SecurityPolicy::MutualTls);
    assert_eq!(p.ctx.dst_addr, addr("172.16.0.1:15008"));
}

#[test]
fn inner_request_names_our_network_only_when_we_have_one() {
    let state = mesh();
    let ui = workload(&state, "ui-0");
    let outer = connect_request(
        &ui,
        addr("10.1.0.1:40000"),
        addr("172.16.0.1:15008"),
        "far.shop.svc.cluster.local:80".into(),
        vec![id("gw")],
        Some("far.shop.svc.cluster.local"),
    );
    let inner = super::outbound::inner_request(&outer, "net1", vec![id("far")]);
    assert_eq!(inner.expected, vec![id("far")]);
    assert_eq!(inner.headers["x-forwarded-network"], "net1");
    assert_eq!(inner.headers["forwarded"], outer.headers["forwarded"]);
    assert_eq!(inner.headers["baggage"], outer.headers["baggage"]);
    assert!(!outer.headers.contains_key("x-forwarded-network"));
    let inner = super::outbound::inner_request(&outer, "", vec![id("far")]);
    assert!(!inner.headers.contains_key("x-forwarded-network"));
}

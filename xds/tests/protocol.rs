//! Delta xDS protocol behaviour against a scripted server: initial requests,
//! ACK/NACK, removals, unknown types, on-demand, headers, metrics.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use prost_types::value::Kind;
use proto::{ADDRESS_TYPE_URL as ADDRESS, AUTHORIZATION_TYPE_URL as AUTHZ};
use support::*;
use tonic::Status;
use xds::{
    DemandError, Demanded, Reply, SubscribeError, TerminationReason, TokenSource, metadata_from_env,
};

#[tokio::test]
async fn initial_wildcard_requests_carry_node_then_acks_omit_it() {
    let mut server = AdsServer::start().await;
    let mut cfg = config(&server.url());
    cfg.metadata = metadata_from_env([
        ("ISTIO_META_ISTIO_VERSION", "1.27.0"),
        ("ISTIO_METAJSON_LABELS", r#"{"app":"ztunnel"}"#),
    ]);
    let (client, _addrs, _pols) = spawn_client(cfg);
    let mut conn = server.accept().await;
    let reqs = conn.initial(&[ADDRESS, AUTHZ]).await;
    for r in &reqs {
        let node = r.node.as_ref().expect("initial request carries node");
        assert_eq!(
            node.id,
            "ztunnel~10.244.1.7~ztunnel-x2k9.istio-system~istio-system.svc.cluster.local"
        );
        let md = &node.metadata.as_ref().unwrap().fields;
        let s = |k: &str| match md.get(k).and_then(|v| v.kind.clone()) {
            Some(Kind::StringValue(s)) => s,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(s("NAME"), "ztunnel-x2k9");
        assert_eq!(s("NAMESPACE"), "istio-system");
        assert_eq!(s("INSTANCE_IPS"), "10.244.1.7");
        assert_eq!(s("NODE_NAME"), "node-a");
        assert_eq!(s("ISTIO_VERSION"), "1.27.0");
        assert!(matches!(md["LABELS"].kind, Some(Kind::StructValue(_))));
        assert!(r.resource_names_subscribe.is_empty(), "wildcard");
        assert!(r.resource_names_unsubscribe.is_empty());
        assert!(r.initial_resource_versions.is_empty());
        assert!(r.response_nonce.is_empty());
    }
    assert!(!client.is_ready());
    conn.send(resp(ADDRESS, "a1", vec![], &[]));
    assert_ack(&conn.recv().await, ADDRESS, "a1");
    assert!(!client.is_ready(), "Authorization not answered yet");
    conn.send(resp(AUTHZ, "p1", vec![], &[]));
    assert_ack(&conn.recv().await, AUTHZ, "p1");
    tokio::time::timeout(WAIT, client.ready()).await.unwrap();
    assert!(client.dump().ready);
}

#[tokio::test]
async fn resources_apply_bad_ones_are_nacked_by_name_and_removals_apply() {
    let mut server = AdsServer::start().await;
    let (client, addrs, pols) = spawn_client(config(&server.url()));
    let mut conn = server.accept().await;
    conn.initial(&[ADDRESS, AUTHZ]).await;

    let (a, b, c) = (
        "Kubernetes//Pod/ns/a",
        "Kubernetes//Pod/ns/b",
        "Kubernetes//Pod/ns/c",
    );
    let (garbage, vetoed) = ("Kubernetes//Pod/ns/garbage", "Kubernetes//Pod/ns/vetoed");
    conn.send(resp(
        ADDRESS,
        "a1",
        vec![addr_res(a, "1"), addr_res(b, "1")],
        &[],
    ));
    assert_ack(&conn.recv().await, ADDRESS, "a1");
    assert_eq!(addrs.names(), vec![a, b]);

    addrs
        .veto
        .lock()
        .insert(vetoed.into(), "port 70000 out of range".into());
    conn.send(resp(
        ADDRESS,
        "a2",
        vec![
            addr_res(c, "1"),
            garbage_res(ADDRESS, garbage),
            addr_res(vetoed, "1"),
            addr_res(a, "2"),
        ],
        &[b],
    ));
    let nack = conn.recv().await;
    assert_eq!(nack.type_url, ADDRESS);
    assert_eq!(nack.response_nonce, "a2");
    let detail = nack.error_detail.expect("NACK");
    assert_eq!(detail.code, 0);
    let entries: Vec<&str> = detail.message.split("; ").collect();
    assert_eq!(entries.len(), 2, "{}", detail.message);
    assert!(
        entries[0].starts_with(&format!("{garbage}: ")),
        "{}",
        detail.message
    );
    assert_eq!(entries[1], format!("{vetoed}: port 70000 out of range"));
    // The good resources of the same response applied; the removal applied.
    let want: BTreeMap<String, String> = [(a, "2"), (c, "1")]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(addrs.versions(), want);
    let dump = client.dump();
    assert_eq!(dump.types[0].resources, want, "rejected names are not held");
    assert_eq!(dump.types[0].last_nonce.as_deref(), Some("a2"));
    assert!(matches!(&dump.types[0].last_reply, Some(Reply::Nack { nonce, .. }) if nonce == "a2"));

    // Authorization: apply, then remove (removals of unknown names are harmless).
    conn.send(resp(AUTHZ, "p1", vec![authz_res("ns/p", "1")], &[]));
    assert_ack(&conn.recv().await, AUTHZ, "p1");
    assert_eq!(pols.get("ns/p").unwrap().name, "p");
    conn.send(resp(AUTHZ, "p2", vec![], &["ns/p", "ns/never-seen"]));
    assert_ack(&conn.recv().await, AUTHZ, "p2");
    assert!(pols.names().is_empty());
    assert!(client.dump().types[1].resources.is_empty());
    // Partial NACKs still count for readiness.
    tokio::time::timeout(WAIT, client.ready()).await.unwrap();
}

#[tokio::test]
async fn unknown_type_is_acked_and_ignored() {
    let mut server = AdsServer::start().await;
    let (_client, addrs, _pols) = spawn_client(config(&server.url()));
    let mut conn = server.accept().await;
    conn.initial(&[ADDRESS, AUTHZ]).await;
    let unknown = "type.googleapis.com/istio.workload.Workload";
    conn.send(resp(unknown, "u1", vec![addr_res("x", "1")], &["y"]));
    assert_ack(&conn.recv().await, unknown, "u1");
    assert!(addrs.names().is_empty());
}

#[tokio::test]
async fn on_demand_subscribe_and_demand() {
    let mut server = AdsServer::start().await;
    let mut cfg = config(&server.url());
    cfg.wildcard_types = vec![AUTHZ.into()];
    cfg.on_demand_types = vec![ADDRESS.into()];
    let (client, addrs, _pols) = spawn_client(cfg);
    let mut conn = server.accept().await;
    let reqs = conn.initial(&[AUTHZ, ADDRESS]).await;
    assert!(reqs[0].resource_names_subscribe.is_empty());
    assert_eq!(
        reqs[1].resource_names_subscribe,
        vec!["*"],
        "subscribe to nothing"
    );
    assert_eq!(reqs[1].resource_names_unsubscribe, vec!["*"]);
    assert!(reqs[1].node.is_some());
    conn.send(resp(AUTHZ, "p1", vec![], &[]));
    assert_ack(&conn.recv().await, AUTHZ, "p1");
    tokio::time::timeout(WAIT, client.ready()).await.unwrap();

    // demand() subscribes and resolves on arrival (istiod answers a network/ip
    // key under the workload's uid with the key as an alias).
    let uid = "Kubernetes//Pod/ns/a";
    let c = client.clone();
    let found = tokio::spawn(async move { c.demand(ADDRESS, "/10.0.0.1").await });
    let sub = conn.recv().await;
    assert_eq!(sub.type_url, ADDRESS);
    assert_eq!(sub.resource_names_subscribe, vec!["/10.0.0.1"]);
    assert!(sub.response_nonce.is_empty() && sub.node.is_none());
    let mut r = addr_res(uid, "5");
    r.aliases = vec!["/10.0.0.1".into()];
    conn.send(resp(ADDRESS, "d1", vec![r], &[]));
    assert_ack(&conn.recv().await, ADDRESS, "d1");
    assert_eq!(
        found.await.unwrap().unwrap(),
        Demanded::Found {
            version: "5".into()
        }
    );
    assert_eq!(addrs.names(), vec![uid]);

    // ... and on removal.
    let c = client.clone();
    let missing = tokio::spawn(async move { c.demand(ADDRESS, "ns/missing.svc").await });
    assert_eq!(
        conn.recv().await.resource_names_subscribe,
        vec!["ns/missing.svc"]
    );
    conn.send(resp(ADDRESS, "d2", vec![], &["ns/missing.svc"]));
    assert_ack(&conn.recv().await, ADDRESS, "d2");
    assert_eq!(missing.await.unwrap().unwrap(), Demanded::Removed);

    // A held name resolves at once without a request.
    assert_eq!(
        client.demand(ADDRESS, uid).await.unwrap(),
        Demanded::Found {
            version: "5".into()
        }
    );
    conn.expect_silence(Duration::from_millis(200)).await;

    // subscribe() sends once; an unanswered demand times out.
    client.subscribe(ADDRESS, "/10.0.0.2").unwrap();
    assert_eq!(
        conn.recv().await.resource_names_subscribe,
        vec!["/10.0.0.2"]
    );
    let err = client
        .demand_within(ADDRESS, "/10.0.0.2", Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, DemandError::Timeout { .. }), "{err}");
    conn.expect_silence(Duration::from_millis(100)).await;
    assert_eq!(client.dump().types[1].pending_on_demand, vec!["/10.0.0.2"]);

    // Wrong uses.
    assert_eq!(
        client.subscribe(AUTHZ, "x"),
        Err(SubscribeError::NotOnDemand(AUTHZ.into()))
    );
    assert!(matches!(
        client.demand(proto::WORKLOAD_TYPE_URL, "x").await,
        Err(DemandError::UnknownType(_))
    ));

    // Reconnect: held and pending names are re-subscribed; pending with "".
    conn.close();
    let mut conn = server.accept().await;
    let reqs = conn.initial(&[AUTHZ, ADDRESS]).await;
    assert_eq!(reqs[1].resource_names_subscribe, vec!["/10.0.0.2", uid]);
    let irv: HashMap<String, String> = [("/10.0.0.2", ""), (uid, "5")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(reqs[1].initial_resource_versions, irv);
}

#[tokio::test]
async fn headers_reach_the_server_and_token_file_is_reread_per_connection() {
    let dir = std::env::temp_dir().join(format!("xds-headers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("istio-token");
    std::fs::write(&token, "first-token\n").unwrap();

    let mut server = AdsServer::start().await;
    let mut cfg = config(&server.url());
    cfg.token = TokenSource::File(token.clone());
    cfg.cluster_id = Some("Kubernetes".into());
    cfg.headers = vec![("X-Istio-Extra".into(), "v1".into())];
    let (client, _addrs, _pols) = spawn_client(cfg);

    let mut conn = server.accept().await;
    assert_eq!(
        conn.metadata.get("authorization").unwrap(),
        "Bearer first-token"
    );
    assert_eq!(conn.metadata.get("clusterid").unwrap(), "Kubernetes");
    assert_eq!(conn.metadata.get("x-istio-extra").unwrap(), "v1");

    std::fs::write(&token, "second-token").unwrap();
    conn.close(); // clean end ⇒ immediate reconnect
    let conn = server.accept().await;
    assert_eq!(
        conn.metadata.get("authorization").unwrap(),
        "Bearer second-token"
    );
    let dump = client.dump();
    assert_eq!(
        dump.last_termination.map(|t| t.reason),
        Some(TerminationReason::Complete)
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A recorder keeping counters only.
#[derive(Default)]
struct Counters(Mutex<BTreeMap<String, Arc<AtomicU64>>>);

impl Counters {
    fn get(&self, key: &str) -> u64 {
        self.0
            .lock()
            .get(key)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

impl metrics::Recorder for Counters {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        metrics::Counter::from_arc(self.0.lock().entry(name).or_default().clone())
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

// Single-threaded runtime: the thread-local recorder sees the client task.
#[tokio::test(flavor = "current_thread")]
async fn metrics_counters_move() {
    let rec = Counters::default();
    let _guard = metrics::set_default_local_recorder(&rec);
    let mut server = AdsServer::start().await;
    let (_client, _addrs, _pols) = spawn_client(config(&server.url()));
    let mut conn = server.accept().await;
    conn.initial(&[ADDRESS, AUTHZ]).await;
    conn.send(resp(
        ADDRESS,
        "a1",
        vec![addr_res("Kubernetes//Pod/ns/a", "1")],
        &[],
    ));
    conn.recv().await;
    conn.send(resp(ADDRESS, "a2", vec![], &["Kubernetes//Pod/ns/a"]));
    conn.recv().await;
    let url = format!("url={ADDRESS}");
    assert_eq!(rec.get(&format!("istio_xds_message_total{{{url}}}")), 2);
    assert!(rec.get(&format!("istio_xds_message_bytes_total{{{url}}}")) > 20);

    conn.fail(Status::unavailable("transport is closing"));
    let mut conn = server.accept().await;
    conn.fail(Status::permission_denied("identity check failed"));
    let mut conn = server.accept().await;
    conn.close();
    let _conn = server.accept().await;
    let t = |r: &str| {
        rec.get(&format!(
            "istio_xds_connection_terminations_total{{reason={r}}}"
        ))
    };
    assert_eq!((t("Reconnect"), t("Error"), t("Complete")), (1, 1, 1));
}

//! Shared by the server tests: an in-process control plane on plain TCP, a delta-ADS client
//! that speaks like ztunnel, a CA client, and snapshot builders.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use controlplane::Snapshot;
use controlplane::ca_server::{CaConfig, CaServer, SnapshotPods};
use controlplane::serve::Routes;
use controlplane::status::{ProxyStatus, StatusRegistry, SyncState};
use controlplane::tokens::{LocalTokens, TokenRequest};
use controlplane::xds_server::XdsServer;
use prost_types::{Struct, Value, value::Kind};
use proto::envoy::config::core::v3::Node;
use proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use proto::istio::security::Authorization;
use proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use proto::istio::workload::{Address, NetworkAddress, Service, Workload, address};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Channel, Server};
use tonic::{Request, Status, Streaming};

pub const ADDR: &str = proto::ADDRESS_TYPE_URL;
pub const AUTHZ: &str = proto::AUTHORIZATION_TYPE_URL;
pub const ZTUNNEL_NODE: &str =
    "ztunnel~10.244.1.7~ztunnel-x2k9.istio-system~istio-system.svc.cluster.local";
/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

/// A control plane running in this process, on loopback without TLS.
pub struct Harness {
    pub addr: SocketAddr,
    pub snapshots: Option<watch::Sender<Arc<Snapshot>>>,
    pub status: StatusRegistry,
    pub tokens: Arc<LocalTokens>,
    pub root_pem: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Harness {
    pub async fn start(snapshot: Snapshot) -> Harness {
        Self::start_with(snapshot, CaConfig::default()).await
    }

    pub async fn start_with(snapshot: Snapshot, ca_config: CaConfig) -> Harness {
        let tokens = Arc::new(LocalTokens::generate().unwrap());
        let status = StatusRegistry::new();
        let (tx, rx) = watch::channel(Arc::new(snapshot));
        let signer = identity::CaSigner::generate("cluster.local").unwrap();
        let root_pem = signer.root_pem();
        let xds = XdsServer::new(rx.clone(), tokens.clone(), status.clone());
        let ca = CaServer::new(
            ca_config,
            Arc::new(signer),
            tokens.clone(),
            Arc::new(SnapshotPods(rx)),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            Server::builder()
                .serve_with_incoming_shutdown(
                    Routes::new(xds, ca),
                    TcpListenerStream::new(listener),
                    async {
                        let _ = stop_rx.await;
                    },
                )
                .await
                .unwrap();
        });
        Harness {
            addr,
            snapshots: Some(tx),
            status,
            tokens,
            root_pem,
            stop: Some(stop_tx),
        }
    }

    pub fn publish(&self, snapshot: Snapshot) {
        self.snapshots
            .as_ref()
            .unwrap()
            .send_replace(Arc::new(snapshot));
    }

    pub fn token(&self, ns: &str, sa: &str) -> String {
        self.tokens.mint(&TokenRequest::new(ns, sa)).unwrap()
    }

    pub fn ztunnel_token(&self) -> String {
        self.token("istio-system", "ztunnel")
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub fn ca_client(&self, channel: Channel) -> IstioCertificateServiceClient<Channel> {
        IstioCertificateServiceClient::new(channel)
    }

    /// Waits until the only proxy named `node` is in `want` for `type_url`.
    pub async fn wait_state(&self, node: &str, type_url: &str, want: SyncState) -> ProxyStatus {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let proxies = self.status.proxies_named(node);
            if let [p] = &proxies[..]
                && p.state(type_url) == want
            {
                return p.clone();
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{node} {type_url} never became {want}: {proxies:#?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Adds `authorization: Bearer <token>`.
pub fn with_token<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

pub fn string_struct(pairs: &[(&str, &str)]) -> Struct {
    Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(v.to_string())),
                    },
                )
            })
            .collect(),
    }
}

pub fn node(id: &str, namespace: &str) -> Node {
    Node {
        id: id.into(),
        metadata: Some(string_struct(&[("NAMESPACE", namespace)])),
        ..Default::default()
    }
}

pub fn request(type_url: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        ..Default::default()
    }
}

pub fn ack(type_url: &str, nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        response_nonce: nonce.into(),
        ..request(type_url)
    }
}

/// A delta ADS stream.
pub struct XdsStream {
    pub tx: mpsc::Sender<DeltaDiscoveryRequest>,
    pub rx: Streaming<DeltaDiscoveryResponse>,
}

impl XdsStream {
    /// Opens a stream whose first requests are `first` (the first one should carry the node).
    pub async fn open(
        channel: Channel,
        token: Option<&str>,
        first: Vec<DeltaDiscoveryRequest>,
    ) -> Result<XdsStream, Status> {
        let (tx, rx) = mpsc::channel(16);
        for r in first {
            tx.send(r).await.unwrap();
        }
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let response = client
            .delta_aggregated_resources(with_token(ReceiverStream::new(rx), token))
            .await?;
        Ok(XdsStream {
            tx,
            rx: response.into_inner(),
        })
    }

    /// Opens a wildcard stream for both types, as ztunnel does.
    pub async fn ztunnel(channel: Channel, token: &str) -> Result<XdsStream, Status> {
        let mut address = request(ADDR);
        address.node = Some(node(ZTUNNEL_NODE, "istio-system"));
        let mut authz = request(AUTHZ);
        authz.node = Some(node(ZTUNNEL_NODE, "istio-system"));
        Self::open(channel, Some(token), vec![address, authz]).await
    }

    pub async fn send(&self, r: DeltaDiscoveryRequest) {
        self.tx.send(r).await.unwrap();
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("no response in time")
            .expect("stream failed")
            .expect("stream ended")
    }

    /// Asserts nothing arrives for `d`.
    pub async fn silent_for(&mut self, d: Duration) {
        if let Ok(msg) = tokio::time::timeout(d, self.rx.message()).await {
            panic!("unexpected message: {msg:?}");
        }
    }
}

pub fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

pub fn workload(ns: &str, name: &str, ip: [u8; 4], sa: &str, node: &str) -> (String, Address) {
    let uid = format!("Kubernetes//Pod/{ns}/{name}");
    (
        uid.clone(),
        Address {
            r#type: Some(address::Type::Workload(Workload {
                uid,
                name: name.into(),
                namespace: ns.into(),
                addresses: vec![ip.to_vec()],
                service_account: sa.into(),
                node: node.into(),
                ..Default::default()
            })),
        },
    )
}

pub fn service(ns: &str, name: &str, vip: [u8; 4]) -> (String, Address) {
    let hostname = format!("{name}.{ns}.svc.cluster.local");
    (
        format!("{ns}/{hostname}"),
        Address {
            r#type: Some(address::Type::Service(Service {
                name: name.into(),
                namespace: ns.into(),
                hostname,
                addresses: vec![NetworkAddress {
                    network: String::new(),
                    address: vip.to_vec(),
                    length: None,
                }],
                ..Default::default()
            })),
        },
    )
}

pub fn policy(ns: &str, name: &str) -> (String, Authorization) {
    (
        format!("{ns}/{name}"),
        Authorization {
            name: name.into(),
            namespace: ns.into(),
            ..Default::default()
        },
    )
}

/// sleep (10.0.0.5, node-a), httpbin (10.0.0.6, node-b) and the httpbin service (10.96.0.10).
pub fn sample_snapshot() -> Snapshot {
    let mut s = Snapshot::default();
    for (k, v) in [
        workload("default", "sleep", [10, 0, 0, 5], "sleep", "node-a"),
        workload("default", "httpbin", [10, 0, 0, 6], "httpbin", "node-b"),
        service("default", "httpbin", [10, 96, 0, 10]),
    ] {
        s.addresses.insert(k, v);
    }
    s
}

/// A fresh temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "cp-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

//! A scripted ADS server, a TCP proxy that can kill or freeze connections, a
//! recording handler and message builders.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use proto::istio::security::Authorization;
use proto::istio::workload::{Address, Workload, address};
use proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, pack_any};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::metadata::MetadataMap;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};
use xds::{Handler, NodeIdentity, ProxyType, Rejected, Update, XdsConfig, XdsResource};

/// Generous bound for things that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(20);

/// One accepted delta stream, driven by the test.
pub struct Conn {
    pub metadata: MetadataMap,
    requests: mpsc::UnboundedReceiver<DeltaDiscoveryRequest>,
    responses: Option<mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>>,
}

impl Conn {
    /// The next request from the client.
    pub async fn recv(&mut self) -> DeltaDiscoveryRequest {
        tokio::time::timeout(WAIT, self.requests.recv())
            .await
            .expect("timed out waiting for a request")
            .expect("client closed the stream")
    }

    /// Expects no request within `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(d, self.requests.recv()).await {
            panic!("unexpected request: {r:?}");
        }
    }

    /// Sends a response.
    pub fn send(&self, resp: DeltaDiscoveryResponse) {
        self.responses
            .as_ref()
            .expect("stream already closed")
            .send(Ok(resp))
            .expect("server stream gone");
    }

    /// Ends the stream with a status.
    pub fn fail(&mut self, status: Status) {
        if let Some(tx) = self.responses.take() {
            let _ = tx.send(Err(status));
        }
    }

    /// Ends the stream cleanly.
    pub fn close(&mut self) {
        self.responses = None;
    }

    /// Receives the initial request of every type in `types`, in order.
    pub async fn initial(&mut self, types: &[&str]) -> Vec<DeltaDiscoveryRequest> {
        let mut reqs = Vec::new();
        for t in types {
            let r = self.recv().await;
            assert_eq!(r.type_url, *t);
            reqs.push(r);
        }
        reqs
    }
}

#[derive(Clone)]
struct Svc {
    conns: mpsc::UnboundedSender<Conn>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Svc {
    type StreamAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("state of the world is not served"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let metadata = request.metadata().clone();
        let mut inbound = request.into_inner();
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                if req_tx.send(r).is_err() {
                    return;
                }
            }
        });
        let (resp_tx, resp_rx) = mpsc::unbounded_channel();
        let _ = self.conns.send(Conn {
            metadata,
            requests: req_rx,
            responses: Some(resp_tx),
        });
        Ok(Response::new(UnboundedReceiverStream::new(resp_rx)))
    }
}

/// The scripted server.
pub struct AdsServer {
    pub addr: SocketAddr,
    conns: mpsc::UnboundedReceiver<Conn>,
}

impl AdsServer {
    /// Plaintext on loopback.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// TLS with `(cert chain PEM, key PEM)` when given.
    pub async fn start_with(tls: Option<(String, String)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut builder = Server::builder();
        if let Some((cert, key)) = tls {
            builder = builder
                .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
                .unwrap();
        }
        // One service, no router: tonic's `router` feature is not enabled.
        tokio::spawn(builder.serve_with_incoming(
            AggregatedDiscoveryServiceServer::new(Svc { conns: tx }),
            TcpListenerStream::new(listener),
        ));
        AdsServer { addr, conns: rx }
    }

    /// The next stream.
    pub async fn accept(&mut self) -> Conn {
        tokio::time::timeout(WAIT, self.conns.recv())
            .await
            .expect("timed out waiting for the client to connect")
            .unwrap()
    }

    /// Expects no new stream within `d`.
    pub async fn expect_no_conn(&mut self, d: Duration) {
        if tokio::time::timeout(d, self.conns.recv()).await.is_ok() {
            panic!("unexpected connection");
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Running,
    Frozen,
    Killed,
}

/// A TCP proxy in front of a server, to cut or freeze connections.
pub struct Proxy {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<watch::Sender<Mode>>>>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<watch::Sender<Mode>>>> = Arc::default();
        let list = conns.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (tx, rx) = watch::channel(Mode::Running);
                list.lock().push(tx);
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, rx.clone()));
                tokio::spawn(pump(ur, dw, rx));
            }
        });
        Proxy { addr, conns }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every current connection (both sockets closed).
    pub fn kill_all(&self) {
        for c in self.conns.lock().drain(..) {
            let _ = c.send(Mode::Killed);
        }
    }

    /// Stops forwarding on every current connection but keeps the sockets
    /// open, like a hung peer.
    pub fn freeze_all(&self) {
        for c in self.conns.lock().iter() {
            let _ = c.send(Mode::Frozen);
        }
    }
}

async fn pump<R, W>(mut r: R, mut w: W, mut mode: watch::Receiver<Mode>)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            n = r.read(&mut buf) => {
                let n = match n {
                    Ok(0) | Err(_) => { let _ = w.shutdown().await; return; }
                    Ok(n) => n,
                };
                if *mode.borrow() == Mode::Running && w.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow() == Mode::Killed {
                    return;
                }
            }
        }
    }
}

/// A handler that records what it holds; can veto names.
pub struct Store<T> {
    pub items: Arc<Mutex<BTreeMap<String, (String, T)>>>,
    pub veto: Arc<Mutex<BTreeMap<String, String>>>,
    pub batches: Arc<Mutex<Vec<Vec<String>>>>,
}

impl<T> Clone for Store<T> {
    fn clone(&self) -> Self {
        Store {
            items: self.items.clone(),
            veto: self.veto.clone(),
            batches: self.batches.clone(),
        }
    }
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Store {
            items: Arc::default(),
            veto: Arc::default(),
            batches: Arc::default(),
        }
    }
}

impl<T: Clone> Store<T> {
    /// Held names → versions.
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.items
            .lock()
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.items.lock().keys().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<T> {
        self.items.lock().get(name).map(|(_, t)| t.clone())
    }
}

impl<T: Send + 'static> Handler<T> for Store<T> {
    fn apply(&self, updates: Vec<Update<T>>) -> Vec<Rejected> {
        let mut rejected = Vec::new();
        let mut items = self.items.lock();
        let veto = self.veto.lock();
        let mut batch = Vec::new();
        for u in updates {
            match u {
                Update::Upsert(XdsResource {
                    name,
                    version,
                    resource,
                    ..
                }) => {
                    if let Some(reason) = veto.get(&name) {
                        rejected.push(Rejected::new(name, reason.clone()));
                        continue;
                    }
                    batch.push(format!("+{name}"));
                    items.insert(name, (version, resource));
                }
                Update::Remove(name) => {
                    batch.push(format!("-{name}"));
                    items.remove(&name);
                }
            }
        }
        self.batches.lock().push(batch);
        rejected
    }
}

pub fn node() -> NodeIdentity {
    NodeIdentity::new(
        ProxyType::Ztunnel,
        vec!["10.244.1.7".parse().unwrap()],
        "ztunnel-x2k9",
        "istio-system",
        "node-a",
    )
}

/// A config for `url` with Address then Authorization as wildcard types.
pub fn config(url: &str) -> XdsConfig {
    let mut c = XdsConfig::new(url, node());
    c.wildcard_types = vec![ADDRESS_TYPE_URL.into(), AUTHORIZATION_TYPE_URL.into()];
    c
}

pub fn workload(uid: &str) -> Address {
    Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: uid.into(),
            name: uid.rsplit('/').next().unwrap().into(),
            ..Default::default()
        })),
    }
}

pub fn authz(ns: &str, name: &str) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: ns.into(),
        ..Default::default()
    }
}

pub fn addr_res(name: &str, version: &str) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(pack_any(ADDRESS_TYPE_URL, &workload(name))),
        ..Default::default()
    }
}

pub fn authz_res(name: &str, version: &str) -> Resource {
    let (ns, n) = name.split_once('/').unwrap();
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(pack_any(AUTHORIZATION_TYPE_URL, &authz(ns, n))),
        ..Default::default()
    }
}

/// A resource whose payload claims the right type but does not decode.
pub fn garbage_res(type_url: &str, name: &str) -> Resource {
    Resource {
        name: name.into(),
        version: "1".into(),
        resource: Some(prost_types::Any {
            type_url: type_url.into(),
            value: vec![0x0a, 0x05, 0x00],
        }),
        ..Default::default()
    }
}

pub fn resp(
    type_url: &str,
    nonce: &str,
    resources: Vec<Resource>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources,
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Asserts `r` is a plain ACK of `nonce`.
pub fn assert_ack(r: &DeltaDiscoveryRequest, type_url: &str, nonce: &str) {
    assert_eq!(r.type_url, type_url);
    assert_eq!(r.response_nonce, nonce);
    assert!(r.error_detail.is_none(), "expected ACK, got NACK: {r:?}");
    assert!(r.node.is_none(), "later requests omit node");
}

/// Waits until `f` holds (polling), or panics after [`WAIT`].
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Builds and spawns a client with stores for Address and Authorization.
pub fn spawn_client(cfg: XdsConfig) -> (xds::XdsClient, Store<Address>, Store<Authorization>) {
    let addrs = Store::<Address>::default();
    let pols = Store::<Authorization>::default();
    let (client, task) = xds::XdsClient::builder(cfg)
        .handler(ADDRESS_TYPE_URL, addrs.clone())
        .handler(AUTHORIZATION_TYPE_URL, pols.clone())
        .build()
        .expect("build client");
    tokio::spawn(task.run());
    (client, addrs, pols)
}

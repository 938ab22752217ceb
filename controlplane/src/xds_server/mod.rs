//! The delta ADS server (`envoy.service.discovery.v3.AggregatedDiscoveryService`), serving
//! `istio.workload.Address` and `istio.security.Authorization` from the current [`Snapshot`].
//!
//! Each stream:
//!
//! 1. authenticates the `authorization: Bearer` token with the [`TokenAuthenticator`]
//!    (missing/invalid ⇒ `Unauthenticated`);
//! 2. reads the first request, parses its node id ([`node::parse_node`], bad ⇒
//!    `InvalidArgument`) and applies istiod's identity check ([`node::check_identity`], mismatch
//!    ⇒ `PermissionDenied`);
//! 3. runs a task that feeds requests and snapshot changes into a [`stream::StreamState`] and
//!    sends what it returns, recording nonces/ACKs/NACKs in the [`StatusRegistry`].
//!
//! Snapshots arrive on a `tokio::sync::watch` channel; each is indexed once
//! ([`index::IndexCache`]) however many streams serve it. When the sending side of the channel
//! is dropped, every stream ends cleanly (the proxies reconnect, as after an istiod restart),
//! which lets the gRPC server shut down gracefully.
//!
//! Only the delta protocol is served; `StreamAggregatedResources` (state of the world) answers
//! `Unimplemented`.

pub mod index;
pub mod node;
pub mod stream;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::Snapshot;
use crate::status::{ConnectionGuard, StatusRegistry};
use crate::tokens::{CallerIdentity, TokenAuthenticator, bearer_token};
use index::{IndexCache, Indexed};
use stream::{RequestKind, StreamState};

/// How long a new stream may take to send its first request.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Responses buffered per stream before the stream task waits for the client.
const RESPONSE_BUFFER: usize = 16;

/// The ADS service. Cheap to clone.
#[derive(Clone)]
pub struct XdsServer {
    shared: Arc<Shared>,
}

struct Shared {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    auth: Arc<dyn TokenAuthenticator>,
    status: StatusRegistry,
    cache: IndexCache,
}

impl std::fmt::Debug for XdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsServer").finish_non_exhaustive()
    }
}

impl XdsServer {
    /// Serves the snapshots of `snapshots` to clients that `auth` accepts, recording their
    /// state in `status`.
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        auth: Arc<dyn TokenAuthenticator>,
        status: StatusRegistry,
    ) -> Self {
        XdsServer {
            shared: Arc::new(Shared {
                snapshots,
                auth,
                status,
                cache: IndexCache::default(),
            }),
        }
    }

    /// The tonic service to add to a server.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self).max_decoding_message_size(16 << 20)
    }
}

/// Authenticates the bearer token of a request, mapping failures to `Unauthenticated`.
pub(crate) fn authenticate<T>(
    auth: &dyn TokenAuthenticator,
    request: &Request<T>,
    what: &str,
) -> Result<CallerIdentity, Status> {
    bearer_token(request.metadata())
        .and_then(|token| auth.authenticate(token))
        .map_err(|e| Status::unauthenticated(format!("{what} authentication failed: {e}")))
}

type SotwStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = SotwStream;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "this control plane serves only the delta protocol (DeltaAggregatedResources)",
        ))
    }

    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let shared = &self.shared;
        let caller = authenticate(shared.auth.as_ref(), &request, "xDS")?;
        let peer = request.remote_addr().map(|a| a.to_string());
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, inbound.message()).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no request within {FIRST_REQUEST_TIMEOUT:?} of opening the stream"
                )));
            }
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => {
                return Err(Status::invalid_argument(
                    "stream closed before its first request",
                ));
            }
            Ok(Ok(Some(first))) => first,
        };
        let node = node::parse_node(first.node.as_ref())?;
        node::check_identity(&node, &caller)?;

        let guard = shared
            .status
            .connect(&node.id, &caller.ns_sa(), peer.clone());
        let span = tracing::info_span!("xds", node = %node.id, conn = guard.id());
        span.in_scope(|| {
            tracing::info!(caller = %caller.ns_sa(), peer = ?peer, "xDS stream connected");
        });
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let task = StreamTask {
            shared: self.shared.clone(),
            snapshots: shared.snapshots.clone(),
            state: StreamState::default(),
            guard,
            tx,
        };
        tokio::spawn(task.run(first, inbound).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One stream's task.
struct StreamTask {
    shared: Arc<Shared>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    state: StreamState,
    guard: ConnectionGuard,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

/// Why a stream task stopped.
enum Stop {
    ClientGone,
    ServerShutdown,
}

impl StreamTask {
    async fn run(
        mut self,
        first: DeltaDiscoveryRequest,
        mut inbound: Streaming<DeltaDiscoveryRequest>,
    ) {
        let snapshot = self.snapshots.borrow_and_update().clone();
        let mut index = self.shared.cache.get(&snapshot);
        let outcome = async {
            self.handle(&first, &index).await?;
            loop {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => self.handle(&req, &index).await?,
                        Ok(None) => return Err(Stop::ClientGone),
                        Err(status) => {
                            tracing::debug!(%status, "xDS stream read failed");
                            return Err(Stop::ClientGone);
                        }
                    },
                    changed = self.snapshots.changed() => {
                        if changed.is_err() {
                            return Err(Stop::ServerShutdown);
                        }
                        let snapshot = self.snapshots.borrow_and_update().clone();
                        index = self.shared.cache.get(&snapshot);
                        let responses = self.state.on_snapshot(&index);
                        for response in responses {
                            self.send(response).await?;
                        }
                        self.publish_status();
                    }
                }
            }
        }
        .await;
        match outcome {
            Ok(()) | Err(Stop::ClientGone) => tracing::info!("xDS stream closed by the client"),
            Err(Stop::ServerShutdown) => {
                tracing::info!("xDS stream closed: the control plane is shutting down");
            }
        }
    }

    async fn handle(&mut self, req: &DeltaDiscoveryRequest, index: &Indexed) -> Result<(), Stop> {
        let (kind, response) = self.state.on_request(req, index);
        match &kind {
            RequestKind::Nack(message) => tracing::warn!(
                type_url = %req.type_url,
                nonce = %req.response_nonce,
                %message,
                "proxy rejected (NACKed) a response"
            ),
            RequestKind::Stale => tracing::debug!(
                type_url = %req.type_url,
                nonce = %req.response_nonce,
                "ignoring a request for an older response (stale nonce)"
            ),
            _ => tracing::debug!(type_url = %req.type_url, ?kind, "request"),
        }
        if let Some(response) = response {
            self.send(response).await?;
        }
        self.publish_status();
        Ok(())
    }

    async fn send(&mut self, response: DeltaDiscoveryResponse) -> Result<(), Stop> {
        tracing::debug!(
            type_url = %response.type_url,
            nonce = %response.nonce,
            resources = response.resources.len(),
            removed = response.removed_resources.len(),
            "push"
        );
        self.tx
            .send(Ok(response))
            .await
            .map_err(|_| Stop::ClientGone)
    }

    fn publish_status(&self) {
        for (type_url, status) in self.state.statuses() {
            self.guard.update(type_url, status);
        }
    }
}

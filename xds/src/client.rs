//! The client: a cheap handle ([`XdsClient`]) and the task that owns the
//! stream ([`XdsTask`]). The task is the only writer of the subscription state
//! and the only caller of handlers; handles talk to it through a queue.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prost::Message;
use proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::backoff::{Backoff, Termination, TerminationReason};
use crate::channel::{self, ChannelError};
use crate::config::XdsConfig;
use crate::handler::{Handler, RawHandler, Typed};
use crate::metrics;
use crate::state::{Demanded, Mode, State, XdsDump};

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A configured type has no handler.
    #[error("type {0} is subscribed in the xDS config but no handler is registered for it")]
    MissingHandler(String),
    /// A handler was registered for a type the config does not subscribe.
    #[error(
        "a handler is registered for {0} but the xDS config lists it in neither wildcard_types nor on_demand_types"
    )]
    UnsubscribedHandler(String),
    /// A type is listed twice or registered twice.
    #[error("type {0} is listed or registered more than once")]
    Duplicate(String),
    /// The address or headers are unusable.
    #[error(transparent)]
    Channel(#[from] ChannelError),
}

/// Why [`XdsClient::subscribe`] failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscribeError {
    /// The type is not configured as on-demand.
    #[error("{0} is not an on-demand type of this xDS client; add it to on_demand_types")]
    NotOnDemand(String),
    /// The client task has stopped.
    #[error("the xDS client task has stopped")]
    Stopped,
}

/// Why [`XdsClient::demand`] failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DemandError {
    /// The type is not subscribed by this client.
    #[error("{0} is not a type this xDS client subscribes to")]
    UnknownType(String),
    /// Nothing arrived in time.
    #[error("no answer for {name} ({type_url}) within {timeout:?}")]
    Timeout {
        /// The type URL.
        type_url: String,
        /// The name.
        name: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The client task has stopped.
    #[error("the xDS client task has stopped")]
    Stopped,
}

enum Command {
    Subscribe {
        type_url: String,
        name: String,
    },
    Demand {
        type_url: String,
        name: String,
        reply: oneshot::Sender<Demanded>,
    },
    Shutdown,
}

struct Shared {
    state: Mutex<State>,
    ready: watch::Sender<bool>,
    address: String,
    demand_timeout: Duration,
}

/// Builds an [`XdsClient`] and its [`XdsTask`].
pub struct XdsClientBuilder {
    config: XdsConfig,
    handlers: Vec<(String, Arc<dyn RawHandler>)>,
    channel: Option<Channel>,
}

impl XdsClientBuilder {
    /// Registers the handler for `type_url`; resources of that type are
    /// decoded as `T`.
    #[must_use]
    pub fn handler<T, H>(mut self, type_url: &str, handler: H) -> Self
    where
        T: Message + Default + 'static,
        H: Handler<T>,
    {
        self.handlers
            .push((type_url.to_string(), Typed::<T, H>::new(type_url, handler)));
        self
    }

    /// Uses `channel` for every stream instead of dialing `config.address`
    /// (tests, Unix sockets, custom connectors). Credentials headers are still
    /// taken from the config.
    #[must_use]
    pub fn channel(mut self, channel: Channel) -> Self {
        self.channel = Some(channel);
        self
    }

    /// Checks the registration against the config.
    pub fn build(self) -> Result<(XdsClient, XdsTask), BuildError> {
        let cfg = &self.config;
        let mut handlers: HashMap<String, Arc<dyn RawHandler>> = HashMap::new();
        for (url, h) in self.handlers {
            if handlers.insert(url.clone(), h).is_some() {
                return Err(BuildError::Duplicate(url));
            }
        }
        let mut seen = BTreeSet::new();
        for url in cfg.wildcard_types.iter().chain(&cfg.on_demand_types) {
            if !seen.insert(url.clone()) {
                return Err(BuildError::Duplicate(url.clone()));
            }
            if !handlers.contains_key(url) {
                return Err(BuildError::MissingHandler(url.clone()));
            }
        }
        if let Some(url) = handlers.keys().find(|u| !seen.contains(*u)) {
            return Err(BuildError::UnsubscribedHandler(url.clone()));
        }
        channel::validate_headers(cfg)?;
        if self.channel.is_none()
            && !(cfg.address.starts_with("https://") || cfg.address.starts_with("http://"))
        {
            return Err(ChannelError::UnsupportedScheme(cfg.address.clone()).into());
        }

        let state = State::new(&cfg.wildcard_types, &cfg.on_demand_types);
        let (ready, _) = watch::channel(state.is_ready());
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            ready,
            address: cfg.address.clone(),
            demand_timeout: cfg.timeouts.demand,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let client = XdsClient {
            shared: shared.clone(),
            cmds: tx,
            on_demand: Arc::new(cfg.on_demand_types.iter().cloned().collect()),
        };
        let task = XdsTask {
            config: Arc::new(self.config),
            channel: self.channel,
            handlers,
            shared,
            cmds: rx,
            cmds_open: true,
        };
        Ok((client, task))
    }
}

/// A handle on the ADS client: on-demand subscriptions, readiness, debug
/// dump. Cloning is cheap. Dropping every handle leaves the task running
/// (handlers keep receiving updates); use [`XdsClient::shutdown`] to stop it.
#[derive(Clone)]
pub struct XdsClient {
    shared: Arc<Shared>,
    cmds: mpsc::UnboundedSender<Command>,
    on_demand: Arc<BTreeSet<String>>,
}

impl XdsClient {
    /// Starts building a client for `config`.
    pub fn builder(config: XdsConfig) -> XdsClientBuilder {
        XdsClientBuilder {
            config,
            handlers: Vec::new(),
            channel: None,
        }
    }

    /// Subscribes to `name` of an on-demand type: sent on the live stream
    /// now (or with the next stream), and kept across reconnects.
    pub fn subscribe(&self, type_url: &str, name: &str) -> Result<(), SubscribeError> {
        if !self.on_demand.contains(type_url) {
            return Err(SubscribeError::NotOnDemand(type_url.to_string()));
        }
        self.cmds
            .send(Command::Subscribe {
                type_url: type_url.to_string(),
                name: name.to_string(),
            })
            .map_err(|_| SubscribeError::Stopped)
    }

    /// Waits, up to the configured demand timeout, until `name` is held,
    /// arrives, or is reported removed. On-demand types are subscribed as
    /// needed; for wildcard types this only waits.
    pub async fn demand(&self, type_url: &str, name: &str) -> Result<Demanded, DemandError> {
        self.demand_within(type_url, name, self.shared.demand_timeout)
            .await
    }

    /// [`XdsClient::demand`] with an explicit timeout.
    pub async fn demand_within(
        &self,
        type_url: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Demanded, DemandError> {
        if !self.shared.state.lock().types.contains_key(type_url) {
            return Err(DemandError::UnknownType(type_url.to_string()));
        }
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Command::Demand {
                type_url: type_url.to_string(),
                name: name.to_string(),
                reply: tx,
            })
            .map_err(|_| DemandError::Stopped)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(_)) => Err(DemandError::Stopped),
            Err(_) => Err(DemandError::Timeout {
                type_url: type_url.to_string(),
                name: name.to_string(),
                timeout,
            }),
        }
    }

    /// Resolves once every wildcard type has had a response answered
    /// (ACKed, or NACKed with its good resources applied). Stays ready
    /// across reconnects: the last good state keeps serving.
    pub async fn ready(&self) {
        let mut rx = self.shared.ready.subscribe();
        // Only fails if the sender is gone, which cannot happen while `self` lives.
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Whether [`XdsClient::ready`] would resolve now.
    pub fn is_ready(&self) -> bool {
        *self.shared.ready.borrow()
    }

    /// A watch of readiness.
    pub fn ready_watch(&self) -> watch::Receiver<bool> {
        self.shared.ready.subscribe()
    }

    /// A snapshot for debug pages.
    pub fn dump(&self) -> XdsDump {
        self.shared.state.lock().dump(&self.shared.address)
    }

    /// Asks the task to close the stream and return.
    pub fn shutdown(&self) {
        let _ = self.cmds.send(Command::Shutdown);
    }
}

/// The task that owns the ADS stream. Run it with `tokio::spawn(task.run())`.
pub struct XdsTask {
    config: Arc<XdsConfig>,
    channel: Option<Channel>,
    handlers: HashMap<String, Arc<dyn RawHandler>>,
    shared: Arc<Shared>,
    cmds: mpsc::UnboundedReceiver<Command>,
    cmds_open: bool,
}

struct Attempt {
    termination: Termination,
    healthy: bool,
}

/// Whether to keep going after a command.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

impl XdsTask {
    /// Connects, keeps the stream up and reconnects with backoff until
    /// [`XdsClient::shutdown`].
    pub async fn run(mut self) {
        let mut backoff = Backoff::default();
        loop {
            let Some(attempt) = self.attempt().await else {
                return;
            };
            let decision = backoff.next(&attempt.termination, attempt.healthy);
            metrics::termination(decision.reason);
            let detail = match &attempt.termination {
                Termination::Connect(e) | Termination::Local(e) => e.clone(),
                Termination::Status(s) => format!("{:?}: {}", s.code(), s.message()),
                Termination::Stalled => format!(
                    "not every wildcard type was answered within {:?}",
                    self.config.timeouts.initial_response
                ),
                Termination::Complete => "stream ended".to_string(),
            };
            {
                let mut st = self.shared.state.lock();
                st.connected = false;
                st.backoff = decision.delay;
                st.last_termination = Some((decision.reason, detail.clone()));
            }
            if matches!(
                decision.reason,
                TerminationReason::Complete | TerminationReason::Reconnect
            ) {
                info!(reason = decision.reason.as_str(), %detail, "xDS stream ended; reconnecting");
            } else {
                warn!(reason = decision.reason.as_str(), %detail, delay = ?decision.delay, "xDS stream terminated; reconnecting");
            }
            let wake = sleep(decision.delay);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    () = &mut wake => break,
                    cmd = self.cmds.recv(), if self.cmds_open => {
                        if self.command(cmd, None) == Flow::Stop {
                            return;
                        }
                    }
                }
            }
            self.shared.state.lock().backoff = Duration::ZERO;
        }
    }

    /// One stream, from connect to termination; `None` on shutdown.
    async fn attempt(&mut self) -> Option<Attempt> {
        let failed = |termination| {
            Some(Attempt {
                termination,
                healthy: false,
            })
        };
        let metadata = match channel::stream_metadata(&self.config) {
            Ok(m) => m,
            Err(e) => return failed(Termination::Local(e.to_string())),
        };
        let channel = match &self.channel {
            Some(c) => c.clone(),
            None => {
                let config = self.config.clone();
                let connect = channel::connect(&config);
                tokio::pin!(connect);
                loop {
                    tokio::select! {
                        r = &mut connect => match r {
                            Ok(c) => break c,
                            Err(e) => return failed(Termination::Connect(e.to_string())),
                        },
                        cmd = self.cmds.recv(), if self.cmds_open => {
                            if self.command(cmd, None) == Flow::Stop {
                                return None;
                            }
                        }
                    }
                }
            }
        };

        let (tx, rx) = mpsc::unbounded_channel();
        let node = self.config.node_proto();
        {
            let mut st = self.shared.state.lock();
            st.streams += 1;
            for url in &st.order {
                let _ = tx.send(st.types[url].initial_request(url, node.clone()));
            }
        }
        let mut awaiting: BTreeSet<String> = self.config.wildcard_types.iter().cloned().collect();
        let deadline = Instant::now() + self.config.timeouts.initial_response;

        let mut grpc = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(self.config.timeouts.max_message_size);
        let mut request = tonic::Request::new(UnboundedReceiverStream::new(rx));
        *request.metadata_mut() = metadata;
        let open = grpc.delta_aggregated_resources(request);
        tokio::pin!(open);
        let mut inbound = loop {
            tokio::select! {
                r = &mut open => match r {
                    Ok(resp) => break resp.into_inner(),
                    Err(s) if s.code() == tonic::Code::Unavailable => {
                        return failed(Termination::Connect(s.message().to_string()));
                    }
                    Err(s) => return failed(Termination::Status(s)),
                },
                cmd = self.cmds.recv(), if self.cmds_open => {
                    if self.command(cmd, Some(&tx)) == Flow::Stop {
                        return None;
                    }
                }
                () = sleep_until(deadline), if !awaiting.is_empty() => return failed(Termination::Stalled),
            }
        };
        self.shared.state.lock().connected = true;
        info!(address = %self.config.address, "xDS stream open");

        let mut healthy = false;
        let termination = loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(resp)) => {
                        healthy = true;
                        awaiting.remove(&resp.type_url);
                        self.response(resp, &tx);
                    }
                    Ok(None) => break Termination::Complete,
                    Err(s) => break Termination::Status(s),
                },
                cmd = self.cmds.recv(), if self.cmds_open => {
                    if self.command(cmd, Some(&tx)) == Flow::Stop {
                        return None;
                    }
                }
                () = sleep_until(deadline), if !awaiting.is_empty() => break Termination::Stalled,
            }
        };
        Some(Attempt {
            termination,
            healthy,
        })
    }

    /// Applies one response and queues its ACK/NACK.
    fn response(
        &self,
        resp: DeltaDiscoveryResponse,
        tx: &mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    ) {
        metrics::message(&resp.type_url, resp.encoded_len());
        let DeltaDiscoveryResponse {
            type_url,
            nonce,
            resources,
            removed_resources,
            ..
        } = resp;
        let Some(handler) = self.handlers.get(&type_url) else {
            warn!(%type_url, "xDS response for a type without a handler; ACKing and ignoring it");
            let _ = tx.send(DeltaDiscoveryRequest {
                type_url,
                response_nonce: nonce,
                ..Default::default()
            });
            return;
        };
        debug!(
            %type_url, %nonce,
            resources = resources.len(),
            removed = removed_resources.len(),
            "xDS response"
        );
        // The handler runs outside the state lock: it may read the dump.
        let applied = handler.handle(resources, removed_resources);
        for r in &applied.rejected {
            warn!(%type_url, name = %r.name, reason = %r.reason, "rejected xDS resource");
        }
        let (reply, ready) = {
            let mut st = self.shared.state.lock();
            let ts = st
                .types
                .get_mut(&type_url)
                .expect("every handler's type has state");
            let reply = ts.apply_response(&type_url, &nonce, applied);
            (reply, st.is_ready())
        };
        let _ = tx.send(reply);
        if ready {
            self.shared
                .ready
                .send_if_modified(|r| !std::mem::replace(r, true));
        }
    }

    /// Handles a handle's command; `live` is the stream's request queue when
    /// connected.
    fn command(
        &mut self,
        cmd: Option<Command>,
        live: Option<&mpsc::UnboundedSender<DeltaDiscoveryRequest>>,
    ) -> Flow {
        let Some(cmd) = cmd else {
            self.cmds_open = false;
            return Flow::Continue;
        };
        let (type_url, name, reply) = match cmd {
            Command::Shutdown => {
                info!("xDS client shutting down");
                self.shared.state.lock().connected = false;
                return Flow::Stop;
            }
            Command::Subscribe { type_url, name } => (type_url, name, None),
            Command::Demand {
                type_url,
                name,
                reply,
            } => (type_url, name, Some(reply)),
        };
        let mut st = self.shared.state.lock();
        let Some(ts) = st.types.get_mut(&type_url) else {
            return Flow::Continue;
        };
        if let Some(reply) = reply {
            ts.add_waiter(&name, reply);
        }
        if ts.mode == Mode::OnDemand && ts.add_pending(&name) {
            debug!(%type_url, %name, "on-demand subscribe");
            if let Some(tx) = live {
                let _ = tx.send(DeltaDiscoveryRequest {
                    type_url,
                    resource_names_subscribe: vec![name],
                    ..Default::default()
                });
            }
        }
        Flow::Continue
    }
}

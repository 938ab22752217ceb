//! Delta ADS client, as Istio's proxies speak it to istiod (or to our local
//! control plane).
//!
//! What this crate owns:
//!
//! - the channel to the control plane: TLS with a configured root and an
//!   optional server-name override, HTTP/2 and TCP keepalive, bearer token
//!   (file re-read per connection), `clusterid` and extra headers
//!   ([`channel`]);
//! - the node identity and metadata istiod expects ([`config`]);
//! - the delta xDS protocol: one initial request per type (wildcard types in
//!   configuration order, then on-demand types), ACK/NACK with the response
//!   nonce, per-resource versions replayed as `initial_resource_versions` on
//!   reconnect, on-demand subscriptions and [`XdsClient::demand`];
//! - typed handlers ([`Handler`]): each resource is decoded into the
//!   handler's message type; a resource that fails to decode or that the
//!   handler rejects is named in the NACK (`"<name>: <reason>; ..."`) and not
//!   recorded as held, while the rest of the response applies; removals
//!   always apply; responses of unknown types are logged and ACKed;
//! - reconnects with ztunnel's backoff ([`backoff`]), readiness
//!   ([`XdsClient::ready`]), metrics ([`metrics`]) and a debug dump
//!   ([`XdsDump`]).
//!
//! What it must not do or depend on: it knows no resource semantics (stores
//! and the proto → model conversions belong to the handlers' crates), it
//! depends on no app crate, and it does not depend on `identity` (certificate
//! management); the small token/root handling it needs lives in [`channel`].
//!
//! # Behaviour worth knowing
//!
//! - **Single writer.** [`XdsTask::run`] is the only caller of handlers, one
//!   response at a time in arrival order.
//! - **Disconnects keep state.** Handlers are not told about disconnects;
//!   the last good state keeps serving until the server says otherwise.
//! - **Convergence after a control-plane restart** relies on istiod's
//!   behaviour: every name the client sends in `initial_resource_versions`
//!   that the server no longer has comes back in `removed_resources`, and
//!   resources whose version is unchanged are not resent. A server that
//!   ignores `initial_resource_versions` and sends no removals would leave
//!   stale resources behind; delta xDS has no "full state" marker to detect
//!   that, so the client does not guess.
//! - **Stalls.** A dead peer is detected by HTTP/2 PINGs (every
//!   [`Timeouts::keepalive_interval`], failing after
//!   [`Timeouts::keepalive_timeout`]). A live server that never answers a new
//!   stream is detected by [`Timeouts::initial_response`]: every wildcard
//!   subscription must be answered (istiod always answers, even with no
//!   resources) within it, else the stream is dropped (`Error`) and retried
//!   with backoff. A live server that goes quiet later is indistinguishable
//!   from one with nothing to push, and is left alone.
//! - **Readiness** counts a response once its ACK or NACK is queued: a
//!   partially rejected response still applied its good resources, and one
//!   bad resource must not keep the proxy unready forever.

pub mod backoff;
pub mod channel;
mod client;
pub mod config;
mod handler;
pub mod metrics;
mod state;

pub use backoff::TerminationReason;
pub use client::{BuildError, DemandError, SubscribeError, XdsClient, XdsClientBuilder, XdsTask};
pub use config::{
    NodeIdentity, ProxyType, RootCert, Timeouts, TokenSource, XdsConfig, metadata_from_env,
};
pub use handler::{Handler, Rejected, Update, XdsResource};
pub use state::{Demanded, Mode, Reply, TerminationDump, TypeDump, XdsDump};

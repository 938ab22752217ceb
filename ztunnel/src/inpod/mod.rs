//! Shared ("in-pod") mode: one proxy per enrolled pod, with its listeners inside the pod's
//! network namespace, as directed by the Istio CNI node agent over ZDS.
//!
//! * [`netns`]: network-namespace handles, [`run_in_netns`] on dedicated
//!   worker threads, the in-pod [`SocketFactory`](crate::socket::SocketFactory)
//!   ([`InPodSocketFactory`]) and the startup capability check;
//! * [`zds`]: the ZDS client (Unix `SOCK_SEQPACKET`, hello, requests with netns fds, acks,
//!   reconnects);
//! * [`manager`]: [`WorkloadProxyManager`], which turns ZDS requests into pod proxies started
//!   through the app's [`PodProxyFactory`], with readiness, metrics and `workloadState`.
//!
//! Flow: `WorkloadProxyManager::run` spawns the ZDS client; the client forwards each valid
//! request to the manager and acks with the manager's answer; the manager starts a pod proxy by
//! handing the app an `InPodSocketFactory` for the pod's namespace.

pub mod manager;
pub mod netns;
pub mod zds;

pub use manager::{
    ManagerConfig, ManagerError, PodInfo, PodProxyFactory, PodProxyHandle, ProxyPhase,
    WorkloadProxyManager, WorkloadProxyState, WorkloadStateDump, WorkloadStateView,
};
pub use netns::{InPodSocketFactory, NetnsHandle, NetnsId, run_in_netns, startup_check};
pub use zds::{ZdsConfig, ZdsError};

//! Identity leases against a scripted CA under paused time (the netns tests in
//! `tests/pod_certificates.rs` run the same with real pod proxies and a gRPC CA).

use std::time::{Duration, SystemTime};

use hbone::{CertificateSource, Identity, WorkloadCertificate};
use identity::client::CaClientError;
use identity::manager::{CertManager, CertificateProvider};
use mesh_testing::{LeafOptions, TestCa};
use parking_lot::Mutex;
use state::MeshState;
use std::sync::Arc;

use super::{IdentityLeases, ProxyIdentity};
use crate::proxy::WorkloadInfo;

/// Signs whatever is asked, for `LIFETIME`, and records each request.
struct Ca {
    ca: TestCa,
    t0: SystemTime,
    i0: tokio::time::Instant,
    asked: Mutex<Vec<Identity>>,
}

const LIFETIME: Duration = Duration::from_secs(100);

impl CertificateProvider for Ca {
    fn fetch<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> hbone::cert::BoxFuture<'a, Result<WorkloadCertificate, CaClientError>> {
        self.asked.lock().push(identity.clone());
        let now = self.t0 + self.i0.elapsed();
        let mut opts = LeafOptions::workload(&identity.to_string());
        opts.not_before = now;
        opts.not_after = now + LIFETIME;
        let cert = self.ca.issue_with(&opts).workload_cert();
        Box::pin(async move { Ok(cert) })
    }
}

impl Ca {
    fn count(&self, identity: &Identity) -> usize {
        self.asked.lock().iter().filter(|i| *i == identity).count()
    }
}

fn setup() -> (Arc<Ca>, CertManager, Arc<IdentityLeases>, Arc<MeshState>) {
    let ca = Arc::new(Ca {
        ca: TestCa::new("leases"),
        t0: SystemTime::now(),
        i0: tokio::time::Instant::now(),
        asked: Mutex::new(Vec::new()),
    });
    let certs = CertManager::new(ca.clone());
    let leases = IdentityLeases::new(certs.clone());
    (ca, certs, leases, Arc::new(MeshState::default()))
}

fn workload_yaml(name: &str, sa: &str, trust_domain: &str) -> String {
    format!(
        r#"
workloads:
- uid: Kubernetes//Pod/shop/{name}
  name: {name}
  namespace: shop
  serviceAccount: {sa}
  trustDomain: {trust_domain}
  workloadIps: []
  protocol: HBONE
  services: {{}}
"#
    )
}

fn pod(name: &str, sa: &str) -> WorkloadInfo {
    WorkloadInfo {
        name: name.into(),
        namespace: "shop".into(),
        service_account: sa.into(),
        trust_domain: "cluster.local".into(),
    }
}

fn id(td: &str, sa: &str) -> Identity {
    Identity::new(td, "shop", sa)
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Two pods sharing a service account share one certificate, kept until the second leaves;
/// a forgotten identity is neither refreshed nor served again.
#[tokio::test(start_paused = true)]
async fn certificate_is_dropped_with_the_last_pod_of_its_identity() {
    let (ca, certs, leases, state) = setup();
    for (name, sa) in [("a-0", "shared"), ("b-0", "shared"), ("c-0", "other")] {
        state::local::load(&state, &workload_yaml(name, sa, "example.org")).unwrap();
    }
    let (shared, other) = (id("example.org", "shared"), id("example.org", "other"));
    let a = ProxyIdentity::lease(&leases, state.clone(), pod("a-0", "shared"));
    let b = ProxyIdentity::lease(&leases, state.clone(), pod("b-0", "shared"));
    let c = ProxyIdentity::lease(&leases, state.clone(), pod("c-0", "other"));
    assert_eq!(a.workload().trust_domain, "example.org");
    let c_certs = c.certificates();
    let cert = c_certs.certificate(&other).await.unwrap();
    assert_eq!(cert.identity(), &other);
    settle().await;
    assert_eq!(certs.identities(), vec![other.clone(), shared.clone()]);
    assert_eq!((ca.count(&shared), ca.count(&other)), (1, 1));

    drop(c);
    assert_eq!(certs.identities(), vec![shared.clone()]);
    // A late caller (a connection that outlived the pod) cannot bring it back.
    let err = c_certs.certificate(&other).await.unwrap_err();
    assert!(err.to_string().contains("no local workload"), "{err}");
    assert_eq!(certs.identities(), vec![shared.clone()]);

    drop(a);
    assert_eq!(certs.identities(), vec![shared.clone()], "b still uses it");
    // Refreshes of the kept identity go on; none for the dropped one.
    tokio::time::sleep(LIFETIME * 2).await;
    assert!(ca.count(&shared) >= 3, "refreshed: {}", ca.count(&shared));
    assert_eq!(ca.count(&other), 1);

    drop(b);
    assert!(certs.identities().is_empty());
    let asked = ca.asked.lock().len();
    tokio::time::sleep(LIFETIME * 2).await;
    assert_eq!(
        ca.asked.lock().len(),
        asked,
        "no CSR after the last pod left"
    );
}

/// A pod started before its `Workload` arrived presents `TRUST_DOMAIN`'s identity, then moves
/// to the `Workload`'s trust domain; the stand-in's certificate is dropped.
#[tokio::test(start_paused = true)]
async fn identity_follows_the_workload_when_it_arrives() {
    let (ca, certs, leases, state) = setup();
    let p = ProxyIdentity::lease(&leases, state.clone(), pod("a-0", "shared"));
    let (stand_in, real) = (id("cluster.local", "shared"), id("example.org", "shared"));
    assert_eq!(p.workload().trust_domain, "cluster.local");
    settle().await;
    assert_eq!(certs.identities(), vec![stand_in.clone()]);

    state::local::load(&state, &workload_yaml("a-0", "shared", "example.org")).unwrap();
    settle().await;
    assert_eq!(p.certificates().current(), real);
    assert_eq!(certs.identities(), vec![real.clone()]);
    let source = p.certificates();
    assert_eq!(
        source.certificate(&real).await.unwrap().identity(),
        &real,
        "served once the workload is known"
    );
    assert!(source.certificate(&stand_in).await.is_err());
    assert_eq!(ca.count(&real), 1);

    // A change of the Workload moves the identity again.
    state::local::load(&state, &workload_yaml("a-0", "shared", "other.org")).unwrap();
    settle().await;
    assert_eq!(certs.identities(), vec![id("other.org", "shared")]);
    drop(p);
    assert!(certs.identities().is_empty());
}

/// A connection that sees the new `Workload` before the follower does still gets its
/// certificate: the source catches up on demand.
#[tokio::test(start_paused = true)]
async fn certificate_source_catches_up_with_the_workload() {
    let (_ca, certs, leases, state) = setup();
    let p = ProxyIdentity::lease(&leases, state.clone(), pod("a-0", "shared"));
    let real = id("example.org", "shared");
    // No yield: the follower task has not run yet.
    state::local::load(&state, &workload_yaml("a-0", "shared", "example.org")).unwrap();
    let cert = p.certificates().certificate(&real).await.unwrap();
    assert_eq!(cert.identity(), &real);
    settle().await;
    assert_eq!(certs.identities(), vec![real]);
}

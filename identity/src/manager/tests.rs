//! Manager behaviour with a scripted CA under paused Tokio time.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use mesh_testing::{LeafOptions, TestCa};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::*;

fn id(name: &str) -> Identity {
    Identity::parse(&format!("spiffe://cluster.local/ns/test/sa/{name}")).unwrap()
}

/// A CA whose answers the test controls: certificate lifetime, failures, latency, and an
/// optional gate every request must pass. Records every call with its (virtual) time.
struct Script {
    ca: TestCa,
    t0: SystemTime,
    i0: Instant,
    lifetime: Mutex<Duration>,
    fail: AtomicBool,
    latency: Duration,
    gate: Option<Arc<Semaphore>>,
    calls: Mutex<Vec<(Identity, Duration)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Script {
    fn new(lifetime: Duration) -> Arc<Self> {
        Self::build(lifetime, Duration::ZERO, None)
    }

    fn build(lifetime: Duration, latency: Duration, gate: Option<Arc<Semaphore>>) -> Arc<Self> {
        Arc::new(Script {
            ca: TestCa::new("script"),
            t0: SystemTime::now(),
            i0: Instant::now(),
            lifetime: Mutex::new(lifetime),
            fail: AtomicBool::new(false),
            latency,
            gate,
            calls: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        })
    }

    /// Virtual "now": wall time at start advanced by Tokio's (paused) clock.
    fn now(&self) -> SystemTime {
        self.t0 + self.i0.elapsed()
    }

    /// Offset of a certificate time from the start of the test.
    fn offset(&self, t: SystemTime) -> Duration {
        t.duration_since(self.t0).unwrap_or_default()
    }

    fn calls(&self) -> Vec<(Identity, Duration)> {
        self.calls.lock().clone()
    }

    fn call_count(&self) -> usize {
        self.calls.lock().len()
    }
}

impl CertificateProvider for Script {
    fn fetch<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> BoxFuture<'a, Result<WorkloadCertificate, CaClientError>> {
        Box::pin(async move {
            self.calls
                .lock()
                .push((identity.clone(), self.i0.elapsed()));
            let now_in = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now_in, Ordering::SeqCst);
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            tokio::time::sleep(self.latency).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(CaClientError::Unreachable {
                    address: "https://ca.test:15012".into(),
                    reason: "connection refused".into(),
                });
            }
            let now = self.now();
            let mut opts = LeafOptions::workload(&identity.to_string());
            opts.not_before = now;
            opts.not_after = now + *self.lifetime.lock();
            Ok(self.ca.issue_with(&opts).workload_cert())
        })
    }
}

fn manager(script: &Arc<Script>, config: ManagerConfig) -> CertManager {
    CertManager::with_config(script.clone(), config)
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn refreshes_at_half_life_and_serves_the_new_certificate() {
    let script = Script::new(Duration::from_secs(100));
    let mgr = manager(&script, ManagerConfig::default());
    let a = id("a");
    let first = mgr.certificate(&a).await.unwrap();
    assert_eq!(script.call_count(), 1);
    let snap = &mgr.snapshot()[0];
    assert_eq!(snap.state, CertState::Available);
    assert_eq!(snap.serial.as_deref(), Some(first.serial()));
    let refresh = script.offset(snap.refresh_at.unwrap()).as_secs_f64();
    assert!((43.0..=56.0).contains(&refresh), "refresh at {refresh}s");

    // Nothing happens before the jitter window opens; the old certificate is served.
    tokio::time::sleep(Duration::from_secs(43)).await;
    assert_eq!(script.call_count(), 1);
    assert_eq!(mgr.certificate(&a).await.unwrap().serial(), first.serial());

    tokio::time::sleep(Duration::from_secs(14)).await;
    let calls = script.calls();
    assert_eq!(calls.len(), 2, "one refresh by 57s");
    let at = calls[1].1.as_secs_f64();
    assert!((43.0..=56.0).contains(&at), "refreshed at {at}s");
    let second = mgr.certificate(&a).await.unwrap();
    assert_ne!(second.serial(), first.serial(), "new certificate served");
    let next = script
        .offset(mgr.snapshot()[0].refresh_at.unwrap())
        .as_secs_f64();
    assert!(
        next > at + 40.0,
        "next refresh scheduled from the new cert: {next}"
    );
}

#[tokio::test(start_paused = true)]
async fn outage_keeps_the_old_cert_and_backs_off_up_to_the_cap_and_expiry() {
    let script = Script::new(Duration::from_secs(2000));
    let mgr = manager(&script, ManagerConfig::default());
    let a = id("a");
    let cert = mgr.certificate(&a).await.unwrap();
    let expiry = script.offset(cert.not_after());
    script.fail.store(true, Ordering::SeqCst);

    // Up to just before expiry the old certificate is served.
    tokio::time::sleep(expiry - Duration::from_secs(2)).await;
    assert_eq!(mgr.certificate(&a).await.unwrap().serial(), cert.serial());
    let snap = &mgr.snapshot()[0];
    assert_eq!(snap.state, CertState::Available, "kept while unexpired");
    assert!(snap.last_error.as_deref().unwrap().contains("unreachable"));
    assert!(
        snap.refresh_at.unwrap() <= cert.not_after(),
        "retry not after expiry"
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    let times: Vec<f64> = script.calls()[1..]
        .iter()
        .map(|c| c.1.as_secs_f64())
        .collect();
    assert!(times.len() >= 10, "retries: {times:?}");
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // Growing: each gap is more than the previous one until the cap.
    let first_gap = gaps[0];
    assert!(
        (0.4..=1.2).contains(&first_gap),
        "first retry after {first_gap}s"
    );
    for w in gaps.windows(2) {
        if w[0] < 100.0 {
            assert!(w[1] > w[0], "backoff grows: {gaps:?}");
        }
    }
    assert!(gaps.iter().all(|g| *g <= 150.0 + 1e-3), "capped: {gaps:?}");
    assert!(
        gaps.iter().filter(|g| **g >= 120.0).count() >= 3,
        "reaches the 150 s cap (jittered below it): {gaps:?}"
    );
    // The last retry before expiry was pulled in to the expiry instant.
    let expiry_s = expiry.as_secs_f64();
    assert!(
        times.iter().any(|t| (t - expiry_s).abs() < 0.01),
        "a retry at expiry {expiry_s}: {times:?}"
    );
    assert!(
        times.iter().all(|t| *t <= expiry_s + 0.01),
        "nothing past expiry yet: {times:?}"
    );

    // Expired and still failing: callers get the reason, at once.
    let before = script.call_count();
    let err = mgr.certificate(&a).await.unwrap_err();
    assert!(matches!(err, CertError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert_eq!(
        script.call_count(),
        before,
        "no extra CSR while backing off"
    );
    assert!(matches!(mgr.snapshot()[0].state, CertState::Unavailable(_)));

    // The CA comes back: the next retry (≤150 s) restores service.
    script.fail.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(151)).await;
    let fresh = mgr.certificate(&a).await.unwrap();
    assert_ne!(fresh.serial(), cert.serial());
    assert_eq!(mgr.snapshot()[0].consecutive_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_realtime_fetch_returns_the_error_and_retries_in_background() {
    let script = Script::new(Duration::from_secs(3600));
    script.fail.store(true, Ordering::SeqCst);
    let mgr = manager(&script, ManagerConfig::default());
    let a = id("a");
    let err = mgr.certificate(&a).await.unwrap_err();
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert_eq!(script.call_count(), 1);
    // In backoff: immediate error, no new CSR.
    mgr.certificate(&a).await.unwrap_err();
    mgr.prefetch(&a);
    settle().await;
    assert_eq!(script.call_count(), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(script.call_count(), 2, "retried after ~500 ms");
    script.fail.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(script.call_count(), 3);
    mgr.certificate(&a).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn concurrency_is_bounded() {
    let script = Script::build(Duration::from_secs(3600), Duration::from_secs(1), None);
    let config = ManagerConfig {
        max_in_flight: 3,
        ..ManagerConfig::default()
    };
    let mgr = manager(&script, config);
    let ids: Vec<Identity> = (0..20).map(|i| id(&format!("w{i}"))).collect();
    for i in &ids {
        mgr.prefetch(i);
    }
    let mut waiters = Vec::new();
    for i in ids.iter().take(5) {
        let (m, i) = (mgr.clone(), i.clone());
        waiters.push(tokio::spawn(async move { m.certificate(&i).await }));
    }
    for w in waiters {
        w.await.unwrap().unwrap();
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(script.call_count(), 20, "one CSR per identity");
    assert_eq!(script.max_in_flight.load(Ordering::SeqCst), 3);
    assert!(
        mgr.snapshot()
            .iter()
            .all(|s| s.state == CertState::Available)
    );
}

#[tokio::test(start_paused = true)]
async fn realtime_goes_before_warmup_before_background() {
    let gate = Arc::new(Semaphore::new(0));
    let script = Script::build(
        Duration::from_secs(3600),
        Duration::ZERO,
        Some(gate.clone()),
    );
    let config = ManagerConfig {
        max_in_flight: 1,
        ..ManagerConfig::default()
    };
    let mgr = manager(&script, config);
    let (a, b, c, d, e) = (id("a"), id("b"), id("c"), id("d"), id("e"));
    // B and C hold certificates already.
    gate.add_permits(2);
    mgr.certificate(&b).await.unwrap();
    mgr.certificate(&c).await.unwrap();

    mgr.prefetch(&a); // in flight, blocked at the gate
    settle().await;
    mgr.refresh(&b); // Background
    mgr.refresh(&c); // Background
    mgr.prefetch(&e); // Warmup
    let waiter = {
        let (m, d) = (mgr.clone(), d.clone());
        tokio::spawn(async move { m.certificate(&d).await })
    };
    settle().await;
    let queued: Vec<_> = mgr.snapshot().into_iter().map(|s| s.fetching).collect();
    assert_eq!(
        queued,
        vec![
            Some(Priority::Warmup),
            Some(Priority::Background),
            Some(Priority::Background),
            Some(Priority::RealTime),
            Some(Priority::Warmup),
        ]
    );
    gate.add_permits(5);
    waiter.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let order: Vec<Identity> = script.calls().into_iter().skip(2).map(|c| c.0).collect();
    assert_eq!(order, vec![a, d, e, b, c]);
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_use_makes_one_request() {
    let script = Script::build(Duration::from_secs(3600), Duration::from_secs(2), None);
    let mgr = manager(&script, ManagerConfig::default());
    let a = id("a");
    mgr.prefetch(&a); // Warmup in flight; the RealTime callers join it
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (m, a) = (mgr.clone(), a.clone());
        tasks.push(tokio::spawn(async move { m.certificate(&a).await }));
    }
    let mut serials = Vec::new();
    for t in tasks {
        serials.push(t.await.unwrap().unwrap().serial().to_string());
    }
    serials.dedup();
    assert_eq!(serials.len(), 1);
    assert_eq!(script.call_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn forget_stops_refreshes_and_releases_waiters() {
    let script = Script::new(Duration::from_secs(100));
    let mgr = manager(&script, ManagerConfig::default());
    let a = id("a");
    mgr.certificate(&a).await.unwrap();
    mgr.forget(&a);
    assert!(mgr.identities().is_empty());
    assert!(mgr.current(&a).is_none());
    tokio::time::sleep(Duration::from_secs(500)).await;
    assert_eq!(script.call_count(), 1, "no refresh after forget");

    // A caller waiting on a fetch when the identity is forgotten gets an error, not a hang.
    let gate = Arc::new(Semaphore::new(0));
    let gated = Script::build(Duration::from_secs(100), Duration::ZERO, Some(gate.clone()));
    let mgr = manager(&gated, ManagerConfig::default());
    let waiter = {
        let (m, a) = (mgr.clone(), a.clone());
        tokio::spawn(async move { m.certificate(&a).await })
    };
    settle().await;
    assert_eq!(mgr.snapshot()[0].state, CertState::Initializing);
    mgr.forget(&a);
    let err = waiter.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("forgotten"), "{err}");
    gate.add_permits(1);
    tokio::time::sleep(Duration::from_secs(500)).await;
    assert!(mgr.identities().is_empty(), "late answer discarded");
    assert_eq!(gated.call_count(), 1);
}

/// `managed_certificate` serves prefetched identities (waiting for the fetch) but never
/// creates one: after `forget`, a late caller cannot bring the identity back.
#[tokio::test(start_paused = true)]
async fn managed_certificate_never_adds_an_identity() {
    let script = Script::build(Duration::from_secs(100), Duration::from_secs(1), None);
    let mgr = manager(&script, ManagerConfig::default());
    let a = id("a");
    let err = mgr.managed_certificate(&a).await.unwrap_err();
    assert!(err.to_string().contains("no local workload"), "{err}");
    assert!(mgr.identities().is_empty());
    assert_eq!(script.call_count(), 0);

    mgr.prefetch(&a);
    let cert = mgr.managed_certificate(&a).await.unwrap();
    assert_eq!(cert.identity(), &a);
    assert_eq!(script.call_count(), 1, "joined the prefetch");

    mgr.forget(&a);
    assert!(mgr.managed_certificate(&a).await.is_err());
    tokio::time::sleep(Duration::from_secs(500)).await;
    assert!(mgr.identities().is_empty());
    assert_eq!(script.call_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn rejects_a_certificate_for_another_identity_and_serialises_snapshots() {
    struct Wrong(Arc<Script>);
    impl CertificateProvider for Wrong {
        fn fetch<'a>(
            &'a self,
            _identity: &'a Identity,
        ) -> BoxFuture<'a, Result<WorkloadCertificate, CaClientError>> {
            Box::pin(async move { self.0.fetch(&id("someone-else")).await })
        }
    }
    let script = Script::new(Duration::from_secs(100));
    let mgr = CertManager::new(Arc::new(Wrong(script)));
    let err = mgr.certificate(&id("a")).await.unwrap_err();
    assert!(err.to_string().contains("someone-else"), "{err}");

    let script = Script::new(Duration::from_secs(100));
    let mgr = manager(&script, ManagerConfig::default());
    mgr.certificate(&id("b")).await.unwrap();
    let json = serde_json::to_value(mgr.snapshot()).unwrap();
    let entry = &json[0];
    assert_eq!(entry["identity"], "spiffe://cluster.local/ns/test/sa/b");
    assert_eq!(entry["state"], "Available");
    let leaf = &entry["certChain"][0];
    assert!(leaf["expirationTime"].as_str().unwrap().ends_with('Z'));
    assert!(leaf["validFrom"].as_str().unwrap().ends_with('Z'));
    assert_eq!(entry["certChain"].as_array().unwrap().len(), 1);
    assert_eq!(entry["rootCerts"].as_array().unwrap().len(), 1);
    assert_eq!(entry["serial"], mgr.snapshot()[0].serial.clone().unwrap());
}

#[tokio::test(start_paused = true)]
async fn snapshot_certificates_read_like_istios_dump() {
    use base64::Engine;
    let script = Script::new(Duration::from_secs(3600));
    let mgr = manager(&script, ManagerConfig::default());
    let cert = mgr.certificate(&id("b")).await.unwrap();
    let snap = &mgr.snapshot()[0];
    assert_eq!(snap.not_after(), Some(cert.not_after()));
    let leaf = &snap.cert_chain[0];
    // Decimal serial of the same number the hex `serial` names.
    assert_eq!(
        leaf.serial_number,
        hex_to_decimal(snap.serial.as_deref().unwrap())
    );
    assert_eq!(leaf.valid_from, Some(cert.not_before()));
    let json = serde_json::to_value(leaf).unwrap();
    let pem = base64::engine::general_purpose::STANDARD
        .decode(json["pem"].as_str().unwrap())
        .unwrap();
    let pem = String::from_utf8(pem).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
    assert_eq!(pem, leaf.pem);

    let states = [
        (CertState::Available, "Available"),
        (CertState::Initializing, "Initializing"),
        (
            CertState::Unavailable("CA down".into()),
            "Unavailable: CA down",
        ),
    ];
    for (state, want) in states {
        assert_eq!(serde_json::to_value(&state).unwrap(), want);
    }
}

/// Base 16 to base 10 by schoolbook multiplication (little-endian decimal digits).
fn hex_to_decimal(hex: &str) -> String {
    let mut digits = vec![0u32];
    for c in hex.chars() {
        let mut carry = c.to_digit(16).expect("a hex digit");
        for d in digits.iter_mut() {
            let v = *d * 16 + carry;
            *d = v % 10;
            carry = v / 10;
        }
        while carry > 0 {
            digits.push(carry % 10);
            carry /= 10;
        }
    }
    while digits.len() > 1 && digits.last() == Some(&0) {
        digits.pop();
    }
    digits
        .iter()
        .rev()
        .map(|d| char::from_digit(*d, 10).unwrap())
        .collect()
}

#[test]
fn backoff_delays_grow_with_jitter_and_cap() {
    let b = Backoff::default();
    for (n, base) in [(1u32, 0.5f64), (2, 1.0), (3, 2.0), (8, 64.0)] {
        let d = b.delay(n).as_secs_f64();
        assert!(d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9, "{n}: {d}");
    }
    let d9 = b.delay(9).as_secs_f64();
    assert!((128.0 * 0.8..=150.0).contains(&d9), "9: {d9}");
    // Once capped, jitter still spreads retries, but never above the cap.
    for n in [10, 20, 1000, u32::MAX] {
        let d = b.delay(n).as_secs_f64();
        assert!((120.0..=150.0).contains(&d), "{n}: {d}");
    }
}

use std::time::Duration;

use super::*;

#[tokio::test(start_paused = true)]
async fn watch_sees_the_first_deadline() {
    let (trigger, watch) = channel();
    assert!(!watch.is_draining());
    assert!(!trigger.is_draining());
    assert_eq!(watch.deadline(), None);

    let waiter = tokio::spawn({
        let watch = watch.clone();
        async move { watch.wait_for_drain().await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiter.is_finished());

    let first = trigger.start_drain(Duration::from_secs(5));
    // A second call does not move the deadline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(trigger.start_drain(Duration::from_secs(60)), first);
    assert_eq!(waiter.await.unwrap(), first);
    assert!(watch.is_draining());
    assert_eq!(watch.deadline(), Some(first));
    assert_eq!(first.remaining(), Duration::from_secs(4));
    assert!(!first.is_reached());
    first.reached().await;
    assert!(first.is_reached());
    assert_eq!(first.remaining(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn drain_completes_when_watchers_drop() {
    let (trigger, watch) = channel();
    let extra = trigger.watch();
    let worker = tokio::spawn(async move {
        let deadline = watch.wait_for_drain().await;
        // Finish some in-flight work well before the deadline, then drop the watch.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!deadline.is_reached());
    });
    drop(extra);
    let start = Instant::now();
    assert_eq!(
        trigger.drain(Duration::from_secs(30)).await,
        DrainOutcome::Complete
    );
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    worker.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn drain_reports_stragglers_at_the_deadline() {
    let (trigger, watch) = channel();
    let _held = watch.clone();
    let start = Instant::now();
    assert_eq!(
        trigger.drain(Duration::from_secs(5)).await,
        DrainOutcome::DeadlineExceeded { remaining: 2 }
    );
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn dropping_every_trigger_drains_immediately() {
    let (trigger, watch) = channel();
    let clone = trigger.clone();
    drop(trigger);
    assert!(!watch.is_draining(), "one trigger is still alive");
    drop(clone);
    assert!(watch.is_draining());
    let deadline = watch.wait_for_drain().await;
    assert!(deadline.is_reached());
}

#[tokio::test(start_paused = true)]
async fn deadline_published_before_the_trigger_dropped_is_kept() {
    let (trigger, watch) = channel();
    let published = trigger.start_drain(Duration::from_secs(9));
    drop(trigger);
    assert_eq!(watch.wait_for_drain().await, published);
}

/// All signal assertions live in one test: signals are process-wide, so two tests raising them
/// concurrently (plain `cargo test` runs tests as threads) would see each other's signals.
#[tokio::test]
async fn signals_graceful_then_forced() {
    use nix::sys::signal::{Signal as NixSignal, kill};
    use nix::unistd::Pid;

    let raise = |sig| kill(Pid::this(), sig).expect("kill self");
    let mut signals = ShutdownSignals::install().unwrap();

    raise(NixSignal::SIGTERM);
    assert_eq!(signals.recv().await, Shutdown::Terminate);
    // A repeated SIGTERM is not a force; a SIGINT is.
    raise(NixSignal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(50)).await;
    raise(NixSignal::SIGINT);
    assert_eq!(signals.recv().await, Shutdown::Forced);

    // A fresh listener reports SIGINT as a graceful interrupt.
    let mut fresh = ShutdownSignals::install().unwrap();
    raise(NixSignal::SIGINT);
    assert_eq!(fresh.recv().await, Shutdown::Interrupt);
}

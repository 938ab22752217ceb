//! ZDS server conformance against a scripted SEQPACKET client.

mod common;

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use cni::zds_server::{SnapshotEntry, SnapshotFn, ZdsError, ZdsServer};
use common::{Req, ScriptedZtunnel, temp_dir};
use proto::istio::workload::zds::WorkloadInfo;

fn info(name: &str) -> WorkloadInfo {
    WorkloadInfo {
        name: name.into(),
        namespace: "ns".into(),
        service_account: "sa".into(),
    }
}

fn netns() -> File {
    File::open("/proc/self/ns/net").unwrap()
}

fn start(snapshot: SnapshotFn) -> (ZdsServer, std::path::PathBuf) {
    let path = temp_dir("zds").join("ztunnel.sock");
    let (server, listener) = ZdsServer::bind(&path, snapshot).unwrap();
    tokio::spawn(listener.run(server.clone()));
    (server, path)
}

fn empty() -> SnapshotFn {
    Arc::new(Vec::new)
}

async fn wait_connected(server: &ZdsServer, n: usize) {
    let mut rx = server.watch_connected();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|c| *c == n))
        .await
        .expect("connection count")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_replays_add_with_fd_and_keep_then_snapshot_sent() {
    let snap: SnapshotFn = Arc::new(|| {
        vec![
            SnapshotEntry {
                uid: "u1".into(),
                info: info("a"),
                netns: Some(netns().into()),
            },
            SnapshotEntry {
                uid: "u2".into(),
                info: info("b"),
                netns: None,
            },
        ]
    });
    let (server, path) = start(snap);
    let got = tokio::task::spawn_blocking(move || {
        let c = ScriptedZtunnel::connect(&path);
        c.hello();
        let mut seen = Vec::new();
        loop {
            let (r, fds) = c.recv().unwrap();
            seen.push((r.clone(), fds.len()));
            c.ack("");
            if r == Req::SnapshotSent {
                return (seen, c);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        got.0,
        vec![
            (Req::Add("u1".into(), 1), 1),
            (Req::Keep("u2".into()), 0),
            (Req::SnapshotSent, 0)
        ]
    );
    wait_connected(&server, 1).await;
    drop(got.1);
    wait_connected(&server, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_goes_to_newest_del_to_all() {
    let (server, path) = start(empty());
    let p1 = path.clone();
    let old = tokio::task::spawn_blocking(move || {
        let c = ScriptedZtunnel::connect(&p1);
        c.hello();
        assert!(c.take_snapshot().is_empty());
        c
    })
    .await
    .unwrap();
    wait_connected(&server, 1).await;
    let new = tokio::task::spawn_blocking(move || {
        let c = ScriptedZtunnel::connect(&path);
        c.hello();
        assert!(c.take_snapshot().is_empty());
        c
    })
    .await
    .unwrap();
    wait_connected(&server, 2).await;

    let new = Arc::new(new);
    let old = Arc::new(old);
    let n2 = new.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let (r, fds) = n2.recv().unwrap();
        n2.ack("");
        (r, fds.len())
    });
    server.add("p1", info("a"), &netns()).await.unwrap();
    assert_eq!(answer.await.unwrap(), (Req::Add("p1".into(), 1), 1));
    // The old connection got nothing: its next message must be the del.
    let (o2, n3) = (old.clone(), new.clone());
    let dels = tokio::task::spawn_blocking(move || {
        let a = o2.recv().unwrap().0;
        o2.ack("");
        let b = n3.recv().unwrap().0;
        n3.ack("");
        (a, b)
    });
    server.del("p1").await.unwrap();
    assert_eq!(
        dels.await.unwrap(),
        (Req::Del("p1".into()), Req::Del("p1".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_is_returned_and_connection_kept() {
    let (server, path) = start(empty());
    let c = Arc::new(
        tokio::task::spawn_blocking(move || {
            let c = ScriptedZtunnel::connect(&path);
            c.hello();
            c.take_snapshot();
            c
        })
        .await
        .unwrap(),
    );
    wait_connected(&server, 1).await;
    let c2 = c.clone();
    let t = tokio::task::spawn_blocking(move || {
        c2.recv().unwrap();
        c2.ack("proxy failed to start");
        c2.recv().unwrap();
        c2.ack("");
    });
    let e = server.add("p", info("a"), &netns()).await.unwrap_err();
    assert!(
        matches!(&e, ZdsError::Nack(m) if m == "proxy failed to start"),
        "{e}"
    );
    server.add("p", info("a"), &netns()).await.unwrap();
    t.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ztunnel_means_not_connected() {
    let (server, _path) = start(empty());
    let e = server.add("p", info("a"), &netns()).await.unwrap_err();
    assert!(matches!(e, ZdsError::NotConnected));
    server.del("p").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_timeout_drops_connection() {
    let (server, path) = start(empty());
    let c = tokio::task::spawn_blocking(move || {
        let c = ScriptedZtunnel::connect(&path);
        c.hello();
        c.take_snapshot();
        c
    })
    .await
    .unwrap();
    wait_connected(&server, 1).await;
    let e = server.add("p", info("a"), &netns()).await.unwrap_err();
    assert!(matches!(e, ZdsError::Protocol(_)), "{e}");
    wait_connected(&server, 0).await;
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_close_only_that_connection() {
    let (server, path) = start(empty());
    let (p1, p2, p3) = (path.clone(), path.clone(), path.clone());
    let ok = tokio::task::spawn_blocking(move || {
        // Garbage instead of a hello.
        let bad = ScriptedZtunnel::connect(&p1);
        bad.send_raw(&[0xff, 0xff, 0xff]);
        assert!(
            bad.closed_within(Duration::from_secs(3)),
            "garbage hello not rejected"
        );
        // Oversized datagram while idle.
        let big = ScriptedZtunnel::connect(&p2);
        big.hello();
        big.take_snapshot();
        big.send_raw(&vec![0u8; 2000]);
        assert!(
            big.closed_within(Duration::from_secs(3)),
            "oversized message not rejected"
        );
        // An unsolicited (valid) response while idle.
        let chatty = ScriptedZtunnel::connect(&p3);
        chatty.hello();
        chatty.take_snapshot();
        chatty.ack("");
        assert!(chatty.closed_within(Duration::from_secs(3)));
        // The server still works.
        let good = ScriptedZtunnel::connect(&path);
        good.hello();
        good.take_snapshot();
        good
    })
    .await
    .unwrap();
    wait_connected(&server, 1).await;
    drop(ok);
}

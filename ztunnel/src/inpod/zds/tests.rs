use std::fs::File;
use std::io::IoSlice;
use std::os::fd::AsRawFd;

use nix::sys::socket::{ControlMessage, sendmsg};
use proto::istio::workload::zds::{
    AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, WorkloadInfo,
};

use super::*;

fn req(payload: Payload) -> Vec<u8> {
    WorkloadRequest {
        payload: Some(payload),
    }
    .encode_to_vec()
}

fn add(uid: &str, info: bool) -> Vec<u8> {
    req(Payload::Add(AddWorkload {
        uid: uid.into(),
        workload_info: info.then(|| WorkloadInfo {
            name: "pod".into(),
            namespace: "ns".into(),
            service_account: "sa".into(),
        }),
    }))
}

fn ns_fd() -> OwnedFd {
    OwnedFd::from(File::open("/proc/self/ns/net").expect("open /proc/self/ns/net"))
}

fn dgram(bytes: Vec<u8>, nfds: usize) -> Datagram {
    Datagram {
        bytes,
        fds: (0..nfds).map(|_| ns_fd()).collect(),
    }
}

#[test]
fn parse_rules_table() {
    let keep = req(Payload::Keep(KeepWorkload { uid: "k".into() }));
    let del = req(Payload::Del(DelWorkload { uid: "d".into() }));
    let snap = req(Payload::SnapshotSent(SnapshotSent {}));
    // (datagram, snapshot already sent, expected: Ok(kind) or Err(fatal?))
    let cases: Vec<(&str, Datagram, bool, Result<&str, bool>)> = vec![
        ("add ok", dgram(add("a", true), 1), false, Ok("add")),
        (
            "add after snapshot ok",
            dgram(add("a", true), 1),
            true,
            Ok("add"),
        ),
        ("add no fd", dgram(add("a", true), 0), false, Err(false)),
        ("add two fds", dgram(add("a", true), 2), false, Err(false)),
        ("add no info", dgram(add("a", false), 1), false, Err(true)),
        ("keep", dgram(keep.clone(), 0), false, Ok("keep")),
        ("keep with fd", dgram(keep.clone(), 1), false, Err(false)),
        ("keep after snapshot", dgram(keep, 0), true, Err(true)),
        ("del", dgram(del.clone(), 0), true, Ok("del")),
        ("del with fd", dgram(del, 1), false, Err(false)),
        (
            "snapshot",
            dgram(snap.clone(), 0),
            false,
            Ok("snapshot_sent"),
        ),
        (
            "snapshot with fd",
            dgram(snap.clone(), 1),
            false,
            Err(false),
        ),
        ("second snapshot", dgram(snap, 0), true, Err(true)),
        ("empty", dgram(Vec::new(), 0), false, Err(false)),
        ("garbage", dgram(vec![0xff; 7], 0), false, Err(false)),
    ];
    for (name, d, snapshot_sent, want) in cases {
        match (parse_request(d, snapshot_sent), want) {
            (Ok(r), Ok(kind)) => assert_eq!(r.kind(), kind, "{name}"),
            (Err(e), Err(fatal)) => assert_eq!(e.is_fatal(), fatal, "{name}: {e}"),
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn add_carries_pod_info_and_netns_identity() {
    let own = NetnsHandle::process().unwrap();
    let Ok(ZdsRequest::Add { pod, netns }) = parse_request(dgram(add("u1", true), 1), false) else {
        panic!("expected add");
    };
    assert_eq!(pod.uid, "u1");
    assert_eq!(
        (
            pod.name.as_str(),
            pod.namespace.as_str(),
            pod.service_account.as_str()
        ),
        ("pod", "ns", "sa")
    );
    assert_eq!(netns.id(), own.id());
}

fn pair() -> (ZdsConnection, Socket) {
    let (a, b) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None).unwrap();
    (ZdsConnection::from_socket(a).unwrap(), b)
}

fn send_with_fds(sock: &Socket, bytes: &[u8], fds: &[RawFd]) {
    let iov = [IoSlice::new(bytes)];
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        vec![]
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None).unwrap();
}

#[tokio::test]
async fn recv_takes_fd_with_cloexec() {
    let (conn, peer) = pair();
    let fd = ns_fd();
    send_with_fds(&peer, &add("u", true), &[fd.as_raw_fd()]);
    let d = conn.recv().await.unwrap();
    assert_eq!(d.fds.len(), 1);
    let flags = nix::fcntl::fcntl(&d.fds[0], nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert!(nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC));
}

#[tokio::test]
async fn recv_receives_every_fd_of_a_multi_fd_message() {
    let (conn, peer) = pair();
    let fds: Vec<OwnedFd> = (0..3).map(|_| ns_fd()).collect();
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    send_with_fds(&peer, &add("u", true), &raw);
    let d = conn.recv().await.unwrap();
    assert_eq!(d.fds.len(), 3, "all fds received (and closed on drop)");
    assert!(matches!(
        parse_request(d, false),
        Err(ZdsError::TooManyFds { count: 3, .. })
    ));
}

#[tokio::test]
async fn recv_rejects_oversized_datagram() {
    let (conn, peer) = pair();
    send_with_fds(&peer, &vec![1u8; RECV_BUFFER_SIZE + 1], &[]);
    assert!(matches!(conn.recv().await, Err(ZdsError::Truncated)));
    // Exactly the buffer size is fine.
    send_with_fds(&peer, &vec![1u8; RECV_BUFFER_SIZE], &[]);
    assert_eq!(conn.recv().await.unwrap().bytes.len(), RECV_BUFFER_SIZE);
}

#[tokio::test]
async fn recv_reports_close() {
    let (conn, peer) = pair();
    drop(peer);
    assert!(matches!(conn.recv().await, Err(ZdsError::Closed)));
}

#[tokio::test]
async fn hello_and_ack_encoding() {
    let (conn, peer) = pair();
    conn.send_hello().await.unwrap();
    conn.send_ack(Some("nope")).await.unwrap();
    conn.send_ack(None).await.unwrap();
    let mut buf = [0u8; 64];
    let n = nix::sys::socket::recv(peer.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
    assert_eq!(
        ZdsHello::decode(&buf[..n]).unwrap().version,
        Version::V1 as i32
    );
    for want in ["nope", ""] {
        let n = nix::sys::socket::recv(peer.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
        let resp = WorkloadResponse::decode(&buf[..n]).unwrap();
        let Some(workload_response::Payload::Ack(ack)) = resp.payload else {
            panic!("not an ack")
        };
        assert_eq!(ack.error, want);
    }
}

#[test]
fn backoff_doubles_to_cap() {
    let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(50), 0.0);
    let got: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
    assert_eq!(got, vec![10, 20, 40, 50, 50]);
    b.reset();
    assert_eq!(b.next_delay(), Duration::from_millis(10));
    let mut j = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 0.2);
    for _ in 0..20 {
        let d = j.next_delay();
        assert!(d <= Duration::from_millis(1200), "{d:?}");
    }
}

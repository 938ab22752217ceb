//! A scripted Istio CNI node agent for the shared-mode tests: the ZDS server side (Unix
//! `SOCK_SEQPACKET` listener in a temp dir) that reads ztunnel's hello and sends
//! `WorkloadRequest`s, with netns fds where the protocol carries them. Written from the protocol
//! reference (`inpod-and-cni.md` §1), not from our client.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use prost::Message;
use proto::istio::workload::zds::{
    AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, Version, WorkloadInfo, WorkloadRequest,
    WorkloadResponse, ZdsHello, workload_request::Payload, workload_response,
};
use socket2::{Domain, SockAddr, Socket, Type};

use super::WAIT;

/// A directory for the agent's socket, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!("ztest-zds-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The scripted node agent's listening socket.
pub struct Agent {
    path: PathBuf,
    listener: Socket,
}

impl Agent {
    pub fn bind(path: &Path) -> Self {
        let _ = std::fs::remove_file(path);
        let listener = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None).unwrap();
        listener.bind(&SockAddr::unix(path).unwrap()).unwrap();
        listener.listen(5).unwrap();
        // SO_RCVTIMEO bounds accept() too.
        listener.set_read_timeout(Some(WAIT)).unwrap();
        Agent {
            path: path.to_owned(),
            listener,
        }
    }

    /// Accepts ztunnel's connection and checks its hello.
    pub fn accept(&self) -> AgentConn {
        let (sock, _) = tokio::task::block_in_place(|| retry_eintr(|| self.listener.accept()))
            .expect("ztunnel did not connect to the agent in time");
        sock.set_read_timeout(Some(WAIT)).unwrap();
        let conn = AgentConn(sock);
        let hello = ZdsHello::decode(conn.recv().as_slice()).expect("hello decodes");
        assert_eq!(hello.version, Version::V1 as i32);
        conn
    }

    /// Closes the socket and removes its file (the agent went away).
    pub fn stop(self) -> PathBuf {
        let _ = std::fs::remove_file(&self.path);
        self.path
    }
}

/// Blocking calls with `SO_RCVTIMEO` are not restarted after a signal: retry them (bounded).
pub fn retry_eintr<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let mut tries = 0;
    loop {
        match f() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted && tries < 100 => tries += 1,
            other => return other,
        }
    }
}

pub struct AgentConn(pub Socket);

impl AgentConn {
    pub fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let n = tokio::task::block_in_place(|| {
            retry_eintr(|| {
                nix::sys::socket::recv(self.0.as_raw_fd(), &mut buf, MsgFlags::empty())
                    .map_err(std::io::Error::from)
            })
        })
        .expect("no message from ztunnel in time");
        buf.truncate(n);
        buf
    }

    pub fn send(&self, bytes: &[u8], fds: &[RawFd]) {
        let iov = [IoSlice::new(bytes)];
        let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
            vec![]
        } else {
            vec![ControlMessage::ScmRights(fds)]
        };
        sendmsg::<()>(self.0.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None).unwrap();
    }

    /// Sends a request and returns the ack's error ("" = ACK).
    pub fn request(&self, bytes: &[u8], fds: &[RawFd]) -> String {
        self.send(bytes, fds);
        let resp = WorkloadResponse::decode(self.recv().as_slice()).expect("response decodes");
        match resp.payload {
            Some(workload_response::Payload::Ack(ack)) => ack.error,
            None => panic!("response without ack"),
        }
    }

    /// ztunnel dropped the connection.
    pub fn expect_closed(&self) {
        assert!(
            self.recv().is_empty(),
            "expected ztunnel to close the connection"
        );
    }
}

pub fn req(payload: Payload) -> Vec<u8> {
    WorkloadRequest {
        payload: Some(payload),
    }
    .encode_to_vec()
}

pub fn add_msg(uid: &str) -> Vec<u8> {
    add_msg_with(uid, true)
}

pub fn add_msg_with(uid: &str, info: bool) -> Vec<u8> {
    req(Payload::Add(AddWorkload {
        uid: uid.into(),
        workload_info: info.then(|| WorkloadInfo {
            name: format!("pod-{uid}"),
            namespace: "default".into(),
            service_account: "sa".into(),
        }),
    }))
}

pub fn keep_msg(uid: &str) -> Vec<u8> {
    req(Payload::Keep(KeepWorkload { uid: uid.into() }))
}

pub fn del_msg(uid: &str) -> Vec<u8> {
    req(Payload::Del(DelWorkload { uid: uid.into() }))
}

pub fn snapshot_msg() -> Vec<u8> {
    req(Payload::SnapshotSent(SnapshotSent {}))
}

/// An `add` for pod `namespace/name` running as `service_account`.
pub fn pod_add_msg(uid: &str, name: &str, namespace: &str, service_account: &str) -> Vec<u8> {
    req(Payload::Add(AddWorkload {
        uid: uid.into(),
        workload_info: Some(WorkloadInfo {
            name: name.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }),
    }))
}

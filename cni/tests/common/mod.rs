//! Test support: a scripted ZDS client (what ztunnel does on the wire), temp dirs.

#![allow(unsafe_code, dead_code)]

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use prost::Message;
use proto::istio::workload::zds::{
    Ack, Version, WorkloadRequest, WorkloadResponse, ZdsHello, workload_request::Payload,
    workload_response,
};
use socket2::{Domain, SockAddr, Socket, Type};

/// A blocking SEQPACKET client speaking ZDS like ztunnel.
pub struct ScriptedZtunnel {
    pub sock: Socket,
}

/// A received request, simplified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Req {
    Add(String, usize),
    Keep(String),
    Del(String),
    SnapshotSent,
    Other,
}

impl ScriptedZtunnel {
    /// Connects (retrying up to 5 s while the server comes up).
    pub fn connect(path: &Path) -> Self {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let sock = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
            match sock.connect(&SockAddr::unix(path).unwrap()) {
                Ok(()) => {
                    sock.set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    return ScriptedZtunnel { sock };
                }
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("cannot connect to ZDS socket {}: {e}", path.display())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    pub fn send_raw(&self, bytes: &[u8]) {
        self.sock.send(bytes).unwrap();
    }

    pub fn hello(&self) {
        self.send_raw(
            &ZdsHello {
                version: Version::V1 as i32,
            }
            .encode_to_vec(),
        );
    }

    pub fn ack(&self, error: &str) {
        let r = WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(Ack {
                error: error.into(),
            })),
        };
        self.send_raw(&r.encode_to_vec());
    }

    /// Receives one request with its fds; `None` on EOF.
    pub fn recv(&self) -> Option<(Req, Vec<OwnedFd>)> {
        let mut buf = vec![0u8; 1024];
        let mut cmsg = nix::cmsg_space!([RawFd; 8]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            self.sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .expect("recvmsg");
        let mut fds = Vec::new();
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for r in raw {
                    // SAFETY: the kernel installed this fd for us; we are its only owner.
                    fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                }
            }
        }
        let n = msg.bytes;
        if n == 0 {
            return None;
        }
        let req = WorkloadRequest::decode(&buf[..n]).expect("decodable request");
        let r = match req.payload {
            Some(Payload::Add(a)) => Req::Add(a.uid, fds.len()),
            Some(Payload::Keep(k)) => Req::Keep(k.uid),
            Some(Payload::Del(d)) => Req::Del(d.uid),
            Some(Payload::SnapshotSent(_)) => Req::SnapshotSent,
            None => Req::Other,
        };
        Some((r, fds))
    }

    /// Reads the snapshot, acking everything; returns the entries before `snapshot_sent`.
    pub fn take_snapshot(&self) -> Vec<Req> {
        let mut out = Vec::new();
        loop {
            let (r, _) = self.recv().expect("snapshot");
            self.ack("");
            if r == Req::SnapshotSent {
                return out;
            }
            out.push(r);
        }
    }

    /// Whether the server closed the connection within `wait`.
    pub fn closed_within(&self, wait: Duration) -> bool {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 1100];
        matches!(self.sock.recv(&mut b), Ok(0))
    }
}

/// A fresh temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "cni-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

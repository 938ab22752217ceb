//! `istio.workload.zds` decoded from, and encoded to, hand-assembled bytes
//! (see `common` for the conventions).

#[macro_use]
mod common;

use common::decode_exact;
use prost::Message;
use proto::istio::workload::zds::{
    Ack, AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, Version, WorkloadInfo,
    WorkloadRequest, WorkloadResponse, ZdsHello, workload_request, workload_response,
};

fn info_bytes() -> Vec<u8> {
    nested![0x0d =>
        [0x0a, 0x03], b"pod"; // WorkloadInfo.name = 1
        [0x12, 0x02], b"ns";  // WorkloadInfo.namespace = 2
        [0x1a, 0x02], b"sa";  // WorkloadInfo.service_account = 3
    ]
}

fn info() -> WorkloadInfo {
    WorkloadInfo {
        name: "pod".into(),
        namespace: "ns".into(),
        service_account: "sa".into(),
    }
}

#[test]
fn hello() {
    let hello: ZdsHello = decode_exact(&[0x08, 0x01]); // version = 1: V1
    assert_eq!(hello.version(), Version::V1);
    assert_eq!(
        ZdsHello {
            version: Version::V1.into()
        }
        .encode_to_vec(),
        [0x08, 0x01]
    );
    assert_eq!(Version::NotUsed as i32, 0);
}

#[test]
fn workload_info() {
    let got: WorkloadInfo = decode_exact(&info_bytes());
    assert_eq!(got, info());
    // 4 (the retired trust_domain) is skipped.
    let with_retired = wire![info_bytes(); [0x22, 0x02], b"td"];
    assert_eq!(
        WorkloadInfo::decode(with_retired.as_slice()).unwrap(),
        info()
    );
}

#[test]
fn add_workload() {
    let bytes = wire![
        [0x0a, 0x04], b"uid1";      // uid = 1
        [0x12, 0x0d], info_bytes(); // workload_info = 2
    ];
    let add: AddWorkload = decode_exact(&bytes);
    assert_eq!(add.uid, "uid1");
    assert_eq!(add.workload_info, Some(info()));
}

#[test]
fn keep_workload() {
    let keep: KeepWorkload = decode_exact(&wire![[0x0a, 0x01], b"k"]); // uid = 1
    assert_eq!(keep.uid, "k");
}

#[test]
fn del_workload_uid_is_field_2() {
    let del: DelWorkload = decode_exact(&wire![[0x12, 0x03], b"abc"]); // uid = 2
    assert_eq!(del.uid, "abc");
    // Under tag 1 the same bytes are not the uid.
    let del = DelWorkload::decode(wire![[0x0a, 0x03], b"abc"].as_slice()).unwrap();
    assert_eq!(del.uid, "");
    // Encoding writes field 2.
    let encoded = DelWorkload { uid: "abc".into() }.encode_to_vec();
    assert_eq!(encoded, wire![[0x12, 0x03], b"abc"]);
}

#[test]
fn snapshot_sent_is_empty() {
    let _: SnapshotSent = decode_exact(&[]);
    assert!(SnapshotSent {}.encode_to_vec().is_empty());
}

#[test]
fn ack_and_nack() {
    let ack: Ack = decode_exact(&[]);
    assert_eq!(ack.error, "");
    assert!(Ack::default().encode_to_vec().is_empty());

    let nack: Ack = decode_exact(&wire![[0x0a, 0x03], b"bad"]); // error = 1
    assert_eq!(nack.error, "bad");
    let encoded = Ack {
        error: "bad".into(),
    }
    .encode_to_vec();
    assert_eq!(encoded, wire![[0x0a, 0x03], b"bad"]);
}

#[test]
fn workload_request_variants() {
    use workload_request::Payload;

    let add_workload = nested![0x15 =>
        [0x0a, 0x04], b"uid1";      // AddWorkload.uid = 1
        [0x12, 0x0d], info_bytes(); // AddWorkload.workload_info = 2
    ];
    let add = wire![[0x0a, 0x15], add_workload]; // add = 1
    let req: WorkloadRequest = decode_exact(&add);
    assert_eq!(
        req.payload,
        Some(Payload::Add(AddWorkload {
            uid: "uid1".into(),
            workload_info: Some(info()),
        }))
    );

    let del = wire![[0x12, 0x03, 0x12, 0x01], b"d"]; // del = 2: DelWorkload{uid = 2}
    let req: WorkloadRequest = decode_exact(&del);
    assert_eq!(
        req.payload,
        Some(Payload::Del(DelWorkload { uid: "d".into() }))
    );

    let snapshot = [0x1a, 0x00]; // snapshot_sent = 3: SnapshotSent{}
    let req: WorkloadRequest = decode_exact(&snapshot);
    assert_eq!(req.payload, Some(Payload::SnapshotSent(SnapshotSent {})));

    let keep = wire![[0x2a, 0x03, 0x0a, 0x01], b"k"]; // keep = 5: KeepWorkload{uid = 1}
    let req: WorkloadRequest = decode_exact(&keep);
    assert_eq!(
        req.payload,
        Some(Payload::Keep(KeepWorkload { uid: "k".into() }))
    );

    // Field 4 is unused: a message there is skipped and leaves no payload.
    let req = WorkloadRequest::decode(&[0x22, 0x00][..]).unwrap();
    assert_eq!(req.payload, None);
}

#[test]
fn workload_request_encodings() {
    use workload_request::Payload;
    let cases = [
        (
            Payload::Keep(KeepWorkload { uid: "k".into() }),
            wire![[0x2a, 0x03, 0x0a, 0x01], b"k"], // keep = 5
        ),
        (
            Payload::Del(DelWorkload { uid: "d".into() }),
            wire![[0x12, 0x03, 0x12, 0x01], b"d"], // del = 2
        ),
        (
            Payload::SnapshotSent(SnapshotSent {}),
            wire![[0x1a, 0x00]], // snapshot_sent = 3
        ),
    ];
    for (payload, want) in cases {
        let req = WorkloadRequest {
            payload: Some(payload),
        };
        assert_eq!(req.encode_to_vec(), want);
    }
}

#[test]
fn workload_response() {
    use workload_response::Payload;
    let ack: WorkloadResponse = decode_exact(&[0x0a, 0x00]); // ack = 1: Ack{}
    assert_eq!(ack.payload, Some(Payload::Ack(Ack::default())));

    let nack = wire![[0x0a, 0x05, 0x0a, 0x03], b"bad"]; // ack = 1: Ack{error = 1}
    let resp: WorkloadResponse = decode_exact(&nack);
    assert_eq!(
        resp.payload,
        Some(Payload::Ack(Ack {
            error: "bad".into()
        }))
    );
    let encoded = WorkloadResponse {
        payload: Some(Payload::Ack(Ack::default())),
    }
    .encode_to_vec();
    assert_eq!(encoded, [0x0a, 0x00]);
}

//! Building and encoding responses: authoritative answers, errors, and UDP size limits.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record};

use super::decide::Answer;

/// TTL of authoritative records (Istio's value).
pub const TTL: u32 = 30;

/// The UDP payload size we advertise in our own EDNS records.
pub const OUR_UDP_PAYLOAD: u16 = 1232;

/// Largest UDP response we send to a client without EDNS (RFC 1035).
pub const CLASSIC_UDP_LIMIT: usize = 512;

fn response_to(req: &Message) -> Message {
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata = Metadata::response_from_request(&req.metadata);
    resp.metadata.recursion_available = true;
    resp.queries = req.queries.clone();
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(OUR_UDP_PAYLOAD);
        resp.edns = Some(edns);
    }
    resp
}

/// The authoritative response to `req` (whose single question is `A` or `AAAA`).
pub fn answer(req: &Message, answer: &Answer) -> Message {
    let mut resp = response_to(req);
    resp.metadata.authoritative = true;
    let Some(query) = req.queries.first() else {
        return resp;
    };
    let mut owner = query.name().clone();
    if let Some(canonical) = &answer.cname {
        // Candidates are built from the (valid) queried name and the store's hostnames; an
        // unparseable one cannot be answered with a CNAME, so answer under the queried name.
        if let Ok(mut target) = Name::from_ascii(canonical) {
            target.set_fqdn(true);
            resp.answers.push(Record::from_rdata(
                owner.clone(),
                TTL,
                RData::CNAME(CNAME(target.clone())),
            ));
            owner = target;
        }
    }
    for ip in &answer.ips {
        let data = match ip {
            IpAddr::V4(v4) => RData::A(A(*v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
        };
        resp.answers
            .push(Record::from_rdata(owner.clone(), TTL, data));
    }
    resp
}

/// An error response (`SERVFAIL`, `FORMERR`, ...) echoing the question.
pub fn error(req: &Message, code: ResponseCode) -> Message {
    let mut resp = response_to(req);
    resp.metadata.response_code = code;
    resp
}

/// `FORMERR` for a message we could not parse, if its header ID is readable and it is not
/// itself a response (answering responses could loop). Built by hand: nothing else of the
/// message can be trusted.
pub fn formerr_raw(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < 3 || bytes[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    let mut msg = Message::new(id, MessageType::Response, OpCode::Query);
    msg.metadata.response_code = ResponseCode::FormErr;
    msg.metadata.recursion_desired = bytes[2] & 0x01 != 0;
    msg.to_vec().ok()
}

/// The largest UDP response the client of `req` accepts.
pub fn udp_limit(req: &Message) -> usize {
    if req.edns.is_some() {
        usize::from(req.max_payload())
    } else {
        CLASSIC_UDP_LIMIT
    }
}

/// Encodes `resp`, dropping records from the end and setting `TC` until it fits in `limit`
/// bytes (`None`: no limit, TCP).
pub fn encode(mut resp: Message, limit: Option<usize>) -> Option<Vec<u8>> {
    let bytes = resp.to_vec().ok()?;
    let Some(limit) = limit else {
        return Some(bytes);
    };
    if bytes.len() <= limit {
        return Some(bytes);
    }
    resp.metadata.truncation = true;
    resp.additionals.clear();
    resp.authorities.clear();
    // Binary search for the largest prefix of the answers that fits.
    let answers = std::mem::take(&mut resp.answers);
    let fits = |resp: &mut Message, n: usize| -> Option<Vec<u8>> {
        resp.answers = answers[..n].to_vec();
        resp.to_vec().ok().filter(|b| b.len() <= limit)
    };
    let (mut lo, mut hi) = (0, answers.len().saturating_sub(1));
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(&mut resp, mid).is_some() {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    fits(&mut resp, lo).or_else(|| {
        resp.answers.clear();
        resp.to_vec().ok()
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::op::Query;
    use hickory_proto::rr::RecordType;

    use super::*;

    fn request() -> Message {
        let mut m = Message::query();
        m.metadata.id = 42;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(
            Name::from_ascii("big.shop.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        m
    }

    #[test]
    fn answers_are_authoritative_with_cname_first() {
        let a = Answer {
            cname: Some("cart.shop.svc.cluster.local".into()),
            ips: vec![Ipv4Addr::new(10, 0, 0, 1).into()],
        };
        let resp = answer(&request(), &a);
        assert!(resp.metadata.authoritative && resp.metadata.recursion_desired);
        assert_eq!(resp.metadata.id, 42);
        assert_eq!(resp.answers.len(), 2);
        assert!(matches!(&resp.answers[0].data, RData::CNAME(_)));
        assert_eq!(
            resp.answers[1].name.to_ascii(),
            "cart.shop.svc.cluster.local."
        );
        assert!(resp.answers.iter().all(|r| r.ttl == TTL));
    }

    #[test]
    fn truncation_keeps_the_largest_prefix_that_fits() {
        let ips = (0..200u8)
            .map(|i| Ipv4Addr::new(10, 0, 1, i).into())
            .collect();
        let resp = answer(&request(), &Answer { cname: None, ips });
        for limit in [40, 100, 512, 1232] {
            let bytes = encode(resp.clone(), Some(limit)).unwrap();
            let m = Message::from_vec(&bytes).unwrap();
            assert!(m.metadata.truncation);
            // Header + question alone may exceed a tiny limit; otherwise it fits.
            if !m.answers.is_empty() {
                assert!(bytes.len() <= limit, "{limit}: {}", bytes.len());
                let mut one_more = resp.clone();
                one_more.answers.truncate(m.answers.len() + 1);
                one_more.metadata.truncation = true;
                assert!(one_more.to_vec().unwrap().len() > limit);
            }
        }
        let full = encode(resp.clone(), None).unwrap();
        assert_eq!(Message::from_vec(&full).unwrap().answers.len(), 200);
    }

    #[test]
    fn formerr_only_for_queries_with_an_id() {
        let resp = formerr_raw(&[0xab, 0xcd, 0x01, 0x00, 0xff]).unwrap();
        let m = Message::from_vec(&resp).unwrap();
        assert_eq!(m.metadata.id, 0xabcd);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert!(m.metadata.recursion_desired);
        assert_eq!(formerr_raw(&[0xab, 0xcd]), None);
        assert_eq!(
            formerr_raw(&[0xab, 0xcd, 0x80, 0x00]),
            None,
            "responses are dropped"
        );
    }
}

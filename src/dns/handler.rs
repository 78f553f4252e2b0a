//! hickory-server's request handler for the zone: hickory-server parses each query
//! and encodes and sends each response; this decides what they say, from the current
//! [`Answers`], with rate limiting and the header-level rules of an authoritative-only
//! server.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::net::runtime::{Time, TokioTime};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};

use super::answer::{Answers, Outcome, Transport, EDNS_PAYLOAD, OPT_LEN};
use super::rrl::{RateLimiter, Verdict};

/// What every query reads: swapped as a whole, so a query sees one consistent zone.
pub struct Current {
    pub answers: Answers,
    pub rrl: Option<Arc<RateLimiter>>,
    pub secondaries: Vec<SocketAddr>,
}

/// Answers from whatever zone is current; cheap to clone, one per hickory `Server`.
#[derive(Clone)]
pub struct ZoneHandler {
    pub current: Arc<ArcSwap<Current>>,
}

impl ZoneHandler {
    /// One message off the wire, taken as hickory's `Server` takes it: ignored when
    /// shorter than a header or when it is a response, FORMERR when it cannot be
    /// parsed, and otherwise answered.
    pub async fn answer_raw<R: ResponseHandler>(
        &self,
        bytes: Vec<u8>,
        src: SocketAddr,
        protocol: Protocol,
        mut response: R,
    ) {
        let Ok(header) = Header::read(&mut BinDecoder::new(&bytes)) else {
            return;
        };
        if header.metadata.message_type == MessageType::Response {
            return;
        }
        match Request::from_bytes(bytes, src, protocol) {
            Ok(request) => {
                self.handle_request::<_, TokioTime>(&request, response)
                    .await;
            }
            Err(_) => {
                // `Queries::empty` is private: reading none gives the same.
                let Ok(no_queries) = Queries::read(&mut BinDecoder::new(&[]), 0) else {
                    return;
                };
                let error = MessageResponseBuilder::new(&no_queries, None)
                    .error_msg(&header.metadata, ResponseCode::FormErr);
                let _ = response.send_response(error).await;
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for ZoneHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        let current = self.current.load_full();
        respond(&current, request, response).await
    }
}

async fn respond<R: ResponseHandler>(
    current: &Current,
    request: &Request,
    mut response: R,
) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    // Our OPT record: our payload size and the client's DO bit (RFC 3225).
    let edns = request.edns.as_ref().map(|theirs| {
        let mut ours = Edns::new();
        ours.set_max_payload(EDNS_PAYLOAD);
        ours.set_dnssec_ok(theirs.flags().dnssec_ok);
        ours
    });
    let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
    let queries = request.queries.queries();
    let udp = request.protocol() == Protocol::Udp;
    // Every UDP response counts against the source, errors too, so that none can be
    // used to reflect traffic at a spoofed victim. (FORMERR for a message hickory
    // cannot parse is sent before this handler runs.) An IPv4 client on an IPv6 socket
    // counts as its IPv4 prefix.
    let verdict = match &current.rrl {
        Some(rrl) if udp => rrl.check(request.src().ip().to_canonical()),
        _ => Verdict::Answer,
    };
    match verdict {
        Verdict::Answer => {}
        Verdict::Drop => return ResponseInfo::from(header(metadata)),
        Verdict::Slip => {
            metadata.truncation = true;
            metadata.authoritative = match queries {
                [query] => current.answers.is_ours(query.name()),
                _ => false,
            };
            return send(&mut response, builder.build_no_records(metadata)).await;
        }
    }
    let code = if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        Some(ResponseCode::BADVERS)
    } else if request.metadata.op_code != OpCode::Query {
        Some(ResponseCode::NotImp)
    } else if queries.len() != 1
        // OPT is a pseudo-record: it cannot be asked for (RFC 6891 section 6.1.1).
        || queries[0].query_type() == RecordType::OPT
    {
        Some(ResponseCode::FormErr)
    } else {
        None
    };
    if let Some(code) = code {
        metadata.response_code = code;
        return send(&mut response, builder.build_no_records(metadata)).await;
    }
    let query = &queries[0];
    let transport = match (udp, &request.edns) {
        (false, _) => Transport::Tcp,
        (true, None) => Transport::Udp { limit: 512 },
        (true, Some(theirs)) => Transport::Udp {
            limit: usize::from(theirs.max_payload().clamp(512, EDNS_PAYLOAD)) - OPT_LEN,
        },
    };
    metadata.authoritative = true;
    let none = std::iter::empty::<&Record>;
    match current.answers.answer(
        query.name(),
        query.query_type(),
        query.query_class(),
        request.src(),
        transport,
    ) {
        Outcome::Refused => {
            metadata.authoritative = false;
            metadata.response_code = ResponseCode::Refused;
            send(&mut response, builder.build_no_records(metadata)).await
        }
        Outcome::Records {
            answers,
            additionals,
        } => {
            let message = builder.build(metadata, answers, none(), none(), additionals);
            send(&mut response, message).await
        }
        Outcome::Truncated => {
            metadata.truncation = true;
            send(&mut response, builder.build_no_records(metadata)).await
        }
        Outcome::Negative { nxdomain, soa } => {
            if nxdomain {
                metadata.response_code = ResponseCode::NXDomain;
            }
            let message = builder.build(metadata, none(), none(), [soa], none());
            send(&mut response, message).await
        }
        Outcome::Any(hinfo) => {
            let message = builder.build(metadata, [&*hinfo], none(), none(), none());
            send(&mut response, message).await
        }
        Outcome::Transfer(messages) => {
            let mut info = ResponseInfo::from(header(metadata));
            for records in messages {
                let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
                let message = builder.build(metadata, records, none(), none(), none());
                info = send(&mut response, message).await;
            }
            info
        }
    }
}

/// A header with no records counted.
pub(super) fn header(metadata: Metadata) -> Header {
    Header {
        metadata,
        counts: HeaderCounts::default(),
    }
}

/// Sends through hickory-server; a failure (the connection gone) ends only this query.
async fn send<'a, R, A, N, S, D>(
    response: &mut R,
    message: MessageResponse<'_, 'a, A, N, S, D>,
) -> ResponseInfo
where
    R: ResponseHandler,
    A: Iterator<Item = &'a Record> + Send + 'a,
    N: Iterator<Item = &'a Record> + Send + 'a,
    S: Iterator<Item = &'a Record> + Send + 'a,
    D: Iterator<Item = &'a Record> + Send + 'a,
{
    let mut failed = *message.metadata();
    match response.send_response(message).await {
        Ok(info) => info,
        Err(e) => {
            log::debug!("dns: response not sent: {e}");
            failed.response_code = ResponseCode::ServFail;
            ResponseInfo::from(header(failed))
        }
    }
}

#[cfg(test)]
pub(in crate::dns) mod tests {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::Name;

    use super::*;
    use crate::dns::udp::Datagrams;
    use crate::dns::zone::{build, Sources};

    const TOML: &str = "version = 1\n[system]\nhostname = \"mail\"\ndomain = \"example.org\"\n\
                        [[interface]]\nname = \"eth0\"\nipv4 = [\"192.0.2.10/24\"]\n";

    pub(in crate::dns) fn handler(rate_limit: u32, records: &str) -> ZoneHandler {
        let cfg = crate::config::parse("t.toml", &format!("{TOML}{records}")).unwrap();
        let zone = build(&cfg, &Sources::default(), 7).unwrap();
        // The clock stands still: what is limited does not depend on the test's speed.
        let rrl = (rate_limit > 0).then(|| {
            let clock = crate::dns::rrl::tests::manual_clock().0;
            Arc::new(RateLimiter::with_clock(rate_limit, 0, clock))
        });
        let current = Current {
            answers: Answers::new(zone, Vec::new()).unwrap(),
            rrl,
            secondaries: Vec::new(),
        };
        ZoneHandler {
            current: Arc::new(ArcSwap::from_pointee(current)),
        }
    }

    pub(in crate::dns) fn query(name: &str, rtype: RecordType, payload: Option<u16>) -> Message {
        let mut m = Message::query();
        m.metadata.id = 0xbeef;
        m.metadata.recursion_desired = true;
        m.metadata.checking_disabled = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        if let Some(payload) = payload {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            e.set_dnssec_ok(true);
            m.set_edns(e);
        }
        m
    }

    /// The datagrams `handler` sends for `m` over UDP, encoded as the UDP workers
    /// encode them.
    async fn ask(handler: &ZoneHandler, m: &Message) -> Vec<Vec<u8>> {
        let src = "198.51.100.1:5300".parse().unwrap();
        let sent = Datagrams::default();
        let bytes = m.to_vec().unwrap();
        handler
            .answer_raw(bytes, src, Protocol::Udp, sent.clone())
            .await;
        sent.take()
    }

    async fn ask_one(handler: &ZoneHandler, m: &Message) -> Option<(usize, Message)> {
        let sent = ask(handler, m).await;
        assert!(sent.len() <= 1);
        let bytes = sent.into_iter().next()?;
        Some((bytes.len(), Message::from_vec(&bytes).unwrap()))
    }

    #[tokio::test]
    async fn responses_keep_the_id_flags_and_question_case() {
        let q = query("ExAmPlE.org.", RecordType::MX, Some(4096));
        let (_, r) = ask_one(&handler(0, ""), &q).await.unwrap();
        assert_eq!(r.metadata.id, 0xbeef);
        assert!(r.metadata.authoritative && r.metadata.recursion_desired);
        assert!(r.metadata.checking_disabled && !r.metadata.recursion_available);
        assert_eq!(r.queries[0].name().to_string(), "ExAmPlE.org.");
        assert_eq!(r.answers[0].data.to_string(), "10 mail.example.org.");
        let edns = r.edns.as_ref().expect("our OPT");
        assert_eq!(edns.max_payload(), EDNS_PAYLOAD);
        assert!(edns.flags().dnssec_ok, "DO copied");
    }

    fn record(name: &str, rtype: &str, value: &str) -> String {
        format!("[[dns.record]]\nname = \"{name}\"\ntype = \"{rtype}\"\nvalue = \"{value}\"\n")
    }

    #[tokio::test]
    async fn udp_responses_fit_the_clients_size_without_additionals_or_truncated() {
        let mut records = String::new();
        for i in 0..12 {
            // Values in upper case: they compress only against each other.
            records += &record(&format!("h{i}"), "A", &format!("192.0.2.{}", 100 + i));
            records += &record(&format!("h{i}"), "AAAA", &format!("2001:db8::{}", 100 + i));
            records += &record("big", "MX", &format!("10 H{i}.EXAMPLE.ORG."));
        }
        records += &record("long", "TXT", &"x".repeat(600));
        let handler = handler(0, &records);
        let big = |payload| query("BiG.example.org.", RecordType::MX, payload);
        let (size, r) = ask_one(&handler, &big(None)).await.unwrap();
        assert!(size <= 512, "{size}");
        assert!(
            !r.metadata.truncation,
            "the answer fits without additionals"
        );
        assert_eq!((r.answers.len(), r.additionals.len()), (12, 0));
        let (size, r) = ask_one(&handler, &big(Some(1232))).await.unwrap();
        assert!(size <= 1232, "{size}");
        assert_eq!((r.answers.len(), r.additionals.len()), (12, 24));
        let (size, r) = ask_one(&handler, &query("long.example.org.", RecordType::TXT, None))
            .await
            .unwrap();
        assert!(size <= 512, "{size}");
        assert!(r.metadata.truncation && r.answers.is_empty());
    }

    #[tokio::test]
    async fn over_the_rate_limit_responses_slip_or_are_dropped() {
        let handler = handler(1, "");
        let mut slips = Vec::new();
        let mut dropped = 0;
        // Every second response over the limit slips: three questions take turns at it,
        // a FORMERR among them.
        let questions: Vec<Message> = [
            ("example.org.", RecordType::MX),
            ("example.com.", RecordType::MX),
            ("example.org.", RecordType::OPT),
        ]
        .iter()
        .zip(0..)
        .map(|((name, rtype), id)| {
            let mut q = query(name, *rtype, Some(1232));
            q.metadata.id = id;
            q
        })
        .collect();
        for q in questions.iter().cycle().take(30) {
            match ask_one(&handler, q).await {
                Some((_, r)) if r.metadata.truncation => slips.push(r),
                Some(_) => {}
                None => dropped += 1,
            }
        }
        assert!(dropped > 0, "some are dropped");
        let mut ids: Vec<u16> = slips.iter().map(|r| r.metadata.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids, [0, 1, 2], "each question slipped");
        for r in &slips {
            assert!(r.answers.is_empty() && r.edns.is_some());
            assert_eq!(r.metadata.response_code, ResponseCode::NoError);
            // Authority is claimed only for our own zone.
            assert_eq!(r.metadata.authoritative, r.metadata.id != 1);
        }
    }
}

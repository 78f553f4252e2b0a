//! hickory-server's request handler for the zone: hickory-server parses each query
//! and encodes and sends each response; this decides what they say, from the current
//! [`Answers`], with rate limiting and the header-level rules of an authoritative-only
//! server.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};

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
    let udp = request.protocol() == Protocol::Udp;
    // An IPv4 client on an IPv6 socket counts as its IPv4 prefix.
    let verdict = match &current.rrl {
        Some(rrl) if udp => rrl.check(request.src().ip().to_canonical()),
        _ => Verdict::Answer,
    };
    match verdict {
        Verdict::Answer => {}
        Verdict::Drop => return ResponseInfo::from(header(metadata)),
        Verdict::Slip => {
            metadata.truncation = true;
            metadata.authoritative = current.answers.is_ours(query.name());
            return send(&mut response, builder.build_no_records(metadata)).await;
        }
    }
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
                let builder = MessageResponseBuilder::new(&request.queries, None);
                let message = builder.build(metadata, records, none(), none(), none());
                info = send(&mut response, message).await;
            }
            info
        }
    }
}

fn header(metadata: Metadata) -> Header {
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

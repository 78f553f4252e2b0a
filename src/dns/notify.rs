//! NOTIFY (RFC 1996) to the secondaries when the zone changes: hickory does not
//! send it. One UDP message per secondary, retried until it answers or we give up.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use tokio::net::UdpSocket;

const ATTEMPTS: u32 = 5;
/// An unacknowledged NOTIFY is sent again after this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Notifies every secondary of `soa` (the new SOA) concurrently, from the first of
/// `sources` of the secondary's family (secondaries often accept NOTIFY only from the
/// primary's address); logs the outcome.
pub async fn notify_secondaries(
    origin: &Name,
    soa: &Record,
    secondaries: &[SocketAddr],
    sources: &[SocketAddr],
) {
    let tasks = secondaries.iter().map(|s| {
        let from = sources
            .iter()
            .find(|a| a.is_ipv4() == s.is_ipv4())
            .map(SocketAddr::ip);
        notify_one(origin, soa, *s, from)
    });
    for (secondary, result) in secondaries
        .iter()
        .zip(futures::future::join_all(tasks).await)
    {
        match result {
            Ok(()) => log::info!("dns: NOTIFY for {origin} acknowledged by {secondary}"),
            Err(why) => log::warn!("dns: NOTIFY for {origin} to {secondary} failed: {why}"),
        }
    }
}

async fn notify_one(
    origin: &Name,
    soa: &Record,
    to: SocketAddr,
    from: Option<IpAddr>,
) -> Result<(), String> {
    let id: u16 = rand_id();
    let mut m = Message::new(id, MessageType::Query, OpCode::Notify);
    m.metadata.authoritative = true;
    let mut q = Query::query(origin.clone(), RecordType::SOA);
    q.set_query_class(DNSClass::IN);
    m.add_query(q);
    // The new SOA as a hint (RFC 1996 section 3.7), so the secondary can skip a lookup.
    m.add_answer(soa.clone());
    let bytes = m
        .to_vec()
        .map_err(|e| format!("cannot encode NOTIFY: {e}"))?;
    let unspecified = if to.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    let bind = SocketAddr::new(from.unwrap_or(unspecified), 0);
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("cannot open a UDP socket on {bind}: {e}"))?;
    let mut refused = None;
    let mut buf = [0u8; 512];
    for _ in 0..ATTEMPTS {
        socket
            .send_to(&bytes, to)
            .await
            .map_err(|e| format!("cannot send: {e}"))?;
        let deadline = tokio::time::Instant::now() + RETRY_AFTER;
        // Wait for the answer to this NOTIFY; stray datagrams do not end the wait.
        while let Ok(Ok((n, from))) =
            tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
        {
            if from.ip() != to.ip() {
                continue;
            }
            if let Ok(reply) = Message::from_vec(&buf[..n]) {
                if reply.metadata.id == id
                    && reply.metadata.message_type == MessageType::Response
                    && reply.metadata.op_code == OpCode::Notify
                {
                    let rcode = reply.metadata.response_code;
                    if rcode == ResponseCode::NoError {
                        return Ok(());
                    }
                    // REFUSED, NOTAUTH and the like: not acknowledged. Say so and try
                    // again; the secondary may be being reconfigured.
                    log::warn!("dns: {to} answered NOTIFY for {origin} with {rcode}");
                    refused = Some(rcode);
                    tokio::time::sleep_until(deadline).await;
                    break;
                }
            }
        }
    }
    Err(match refused {
        Some(rcode) => format!(
            "not acknowledged after {ATTEMPTS} attempts (last answer {rcode}); expected NOERROR"
        ),
        None => format!("no answer after {ATTEMPTS} attempts"),
    })
}

fn rand_id() -> u16 {
    let mut b = [0u8; 2];
    // An unpredictable ID keeps off-path spoofed acknowledgements out; a fixed fallback
    // would only weaken that, never break NOTIFY.
    let _ = getrandom::fill(&mut b);
    u16::from_be_bytes(b)
}

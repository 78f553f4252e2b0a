//! The zone as published against what the file implies, asked of our own server over
//! UDP as any resolver would; and the reverse DNS of the appliance's public addresses,
//! asked of the configured resolvers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;

use super::{Agent, Check};
use crate::config::Config;
use crate::dns::Zone;

const ANSWER_WITHIN: Duration = Duration::from_secs(2);

pub async fn checks(agent: &Arc<Agent>, config: &Config) -> Vec<Check> {
    vec![zone(agent, config).await, reverse_dns(config).await]
}

/// Every name and type of the zone the file implies, asked of our server: the same
/// records, the same serial.
async fn zone(agent: &Agent, config: &Config) -> Check {
    let implied = match Zone::preview(config, agent.state_dir(), None) {
        Ok(zone) => zone,
        Err(e) => {
            return Check::fail(
                "zone",
                format!("cannot build the zone: {}", crate::error_chain(&e)),
                "see `check`",
            )
        }
    };
    let Some(server) = crate::dns::listen_addrs(config).into_iter().next() else {
        return Check::warn("zone", "DNS listens nowhere", "set [dns] listen");
    };
    let server = match server.ip() {
        ip if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), server.port())
        }
        _ => server,
    };
    let mut wanted: BTreeMap<(Name, RecordType), BTreeSet<String>> = BTreeMap::new();
    for record in std::iter::once(&implied.soa).chain(&implied.records) {
        wanted
            .entry((record.name.clone(), record.record_type()))
            .or_default()
            .insert(record.data.to_string());
    }
    for ((name, rtype), expected) in &wanted {
        let published: BTreeSet<String> = match ask(server, name, *rtype, Over::Tcp).await {
            Ok(answers) => answers.iter().map(ToString::to_string).collect(),
            Err(why) => {
                return Check::fail("zone", format!("{name} {rtype}: {why}"), "see `logs dns`")
            }
        };
        if &published != expected {
            return Check::fail(
                "zone",
                format!(
                    "{name} {rtype} is published as {published:?}, the file implies {expected:?}"
                ),
                "`dns reload`, or see `logs dns`",
            );
        }
    }
    Check::ok(
        "zone",
        format!(
            "{} as published by {server} matches the file ({} names and types, serial {})",
            implied.origin,
            wanted.len(),
            implied.serial()
        ),
    )
}

/// The PTR of each public address of the appliance names its mail host: receivers
/// distrust mail from an address whose reverse name does not.
async fn reverse_dns(config: &Config) -> Check {
    let host = format!("{}.", config.system.fqdn());
    let public: Vec<IpAddr> = config
        .interfaces
        .iter()
        .flat_map(|i| {
            (i.ipv4.iter().map(|n| IpAddr::V4(n.addr())))
                .chain(i.ipv6.iter().map(|n| IpAddr::V6(n.addr())))
        })
        .filter(is_public)
        .collect();
    if public.is_empty() {
        return Check::ok(
            "reverse dns",
            "no public address on the appliance: the PTR that counts is the one of the \
             router's public address, set by the ISP",
        );
    }
    let Some(resolver) = config.nameservers.first() else {
        return Check::warn(
            "reverse dns",
            "not checked: no resolver in [network] nameservers",
            "add one, so the appliance can look names up",
        );
    };
    let resolver = SocketAddr::new(*resolver, 53);
    let mut found = Vec::new();
    for address in public {
        let name = Name::from(address);
        let ptr = ask(resolver, &name, RecordType::PTR, Over::Udp).await;
        let verdict = ptr_verdict(address, ptr, &host);
        if verdict.level != super::Level::Ok {
            return verdict;
        }
        found.push(verdict.found);
    }
    Check::ok("reverse dns", found.join("; "))
}

fn ptr_verdict(address: IpAddr, answer: Result<Vec<RData>, String>, host: &str) -> Check {
    let hint = format!("ask the provider of {address} to set its PTR record to {host}");
    match answer {
        Err(why) => Check::warn(
            "reverse dns",
            format!("{address}: {why}"),
            "check [network] nameservers",
        ),
        Ok(names)
            if names
                .iter()
                .any(|n| n.to_string().eq_ignore_ascii_case(host)) =>
        {
            Check::ok("reverse dns", format!("{address} is {host}"))
        }
        Ok(names) if names.is_empty() => {
            Check::fail("reverse dns", format!("{address} has no PTR record"), hint)
        }
        Ok(names) => Check::fail(
            "reverse dns",
            format!(
                "{address} is {}, not {host}",
                names
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            hint,
        ),
    }
}

fn is_public(address: &IpAddr) -> bool {
    match address {
        IpAddr::V4(a) => {
            !(a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_documentation()
                || a.is_unspecified()
                || a.octets()[0] == 100 && (a.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(a) => {
            let first = a.segments()[0];
            // Global unicast (2000::/3) but not documentation (2001:db8::/32).
            (first & 0xe000) == 0x2000 && !(first == 0x2001 && a.segments()[1] == 0xdb8)
        }
    }
}

/// How a question travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    /// UDP, then TCP when the answer is truncated: a resolver.
    Udp,
    /// TCP only: our own server, whose rate limit (on UDP) would drop a burst of
    /// questions from one address.
    Tcp,
}

/// One question: the answer's records of `rtype` (an empty list for NXDOMAIN or no data),
/// or why there is no answer.
async fn ask(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    over: Over,
) -> Result<Vec<RData>, String> {
    let mut id = [0u8; 2];
    let _ = getrandom::fill(&mut id);
    let id = u16::from_be_bytes(id);
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = over == Over::Udp;
    query.add_query(Query::query(name.clone(), rtype));
    let bytes = query.to_vec().map_err(|e| format!("cannot encode: {e}"))?;
    let reply = match over {
        Over::Udp => ask_udp(server, id, &bytes).await?,
        Over::Tcp => ask_tcp(server, &bytes).await?,
    };
    let code = reply.metadata.response_code;
    if !matches!(code, ResponseCode::NoError | ResponseCode::NXDomain) {
        return Err(format!("{server} answered {code}"));
    }
    Ok(reply
        .answers
        .iter()
        .filter(|r| r.record_type() == rtype)
        .map(|r| r.data.clone())
        .collect())
}

/// `bytes` (a query with `id`) over UDP, and over TCP when the answer comes truncated.
async fn ask_udp(server: SocketAddr, id: u16, bytes: &[u8]) -> Result<Message, String> {
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    socket.connect(server).await.map_err(|e| e.to_string())?;
    socket
        .send(bytes)
        .await
        .map_err(|e| format!("{server}: {e}"))?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
    loop {
        let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(format!("{server}: {e}")),
            Err(_) => return Err(format!("no answer from {server} within {ANSWER_WITHIN:?}")),
        };
        let Ok(reply) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if reply.metadata.id != id || reply.metadata.message_type != MessageType::Response {
            continue;
        }
        // A DKIM key's TXT record outgrows a UDP answer: the same question over TCP.
        return match reply.metadata.truncation {
            true => ask_tcp(server, bytes).await,
            false => Ok(reply),
        };
    }
}

/// `query` (encoded) over TCP, each message after its two-byte length (RFC 1035 4.2.2).
async fn ask_tcp(server: SocketAddr, query: &[u8]) -> Result<Message, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(server).await?;
        let length = u16::try_from(query.len()).unwrap_or(u16::MAX);
        stream.write_all(&length.to_be_bytes()).await?;
        stream.write_all(query).await?;
        let mut length = [0u8; 2];
        stream.read_exact(&mut length).await?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(ANSWER_WITHIN, exchange)
        .await
        .map_err(|_| format!("no answer from {server} over TCP within {ANSWER_WITHIN:?}"))?
        .map_err(|e| format!("{server} over TCP: {e}"))?;
    Message::from_vec(&answer).map_err(|e| format!("{server} over TCP: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_address_passes_only_when_its_ptr_names_the_mail_host() {
        let address: IpAddr = "203.0.113.7".parse().unwrap();
        let host = "mail.example.org.";
        let ptr = |n: &str| RData::PTR(hickory_proto::rr::rdata::PTR(Name::from_ascii(n).unwrap()));
        let level = |answer| ptr_verdict(address, answer, host).level;
        assert_eq!(
            level(Ok(vec![ptr("mail.example.org.")])),
            super::super::Level::Ok
        );
        assert_eq!(
            level(Ok(vec![ptr("dsl-7.isp.example.")])),
            super::super::Level::Fail
        );
        assert_eq!(level(Ok(vec![])), super::super::Level::Fail);
        assert_eq!(level(Err("no answer".into())), super::super::Level::Warn);
    }

    #[test]
    fn documentation_private_and_shared_addresses_are_not_public() {
        for private in [
            "192.0.2.10",
            "10.0.2.15",
            "100.64.1.1",
            "2001:db8::10",
            "fe80::1",
        ] {
            assert!(!is_public(&private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "2a01:4f8::1"] {
            assert!(is_public(&public.parse().unwrap()), "{public}");
        }
    }
}

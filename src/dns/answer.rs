//! What the zone says to one question: the records to send, or why there are none.
//!
//! The zone is small and changes rarely, so each RRset's answer (with an in-zone CNAME
//! target's data and the addresses for the additional section) is gathered once, when
//! the zone is loaded, together with the size of its response; answering is a hash
//! lookup. Parsing the query and encoding the response is hickory-server's work
//! (`handler`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use hickory_proto::op::{Message, OpCode};
use hickory_proto::rr::rdata::HINFO;
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;

use super::zone::Zone;
use super::DnsError;

/// How a query arrived: UDP answers are size-limited, transfers need TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// With the largest response the client takes (512 without EDNS).
    Udp {
        limit: usize,
    },
    Tcp,
}

/// What to answer.
#[derive(Debug, PartialEq)]
pub enum Outcome<'a> {
    /// Not this zone, or not class IN: REFUSED, without the AA bit.
    Refused,
    /// A positive answer. The additional section is left out when UDP cannot carry it
    /// (RFC 2181 section 9).
    Records {
        answers: &'a [Record],
        additionals: &'a [Record],
    },
    /// Too large for UDP even without additionals: no records and TC set, so that the
    /// client asks again over TCP.
    Truncated,
    /// NXDOMAIN, or NODATA when the name exists: the SOA in the authority section.
    Negative { nxdomain: bool, soa: &'a Record },
    /// RFC 8482's minimal answer to ANY.
    Any(Box<Record>),
    /// AXFR or IXFR from a secondary over TCP: these messages' answers, in order.
    Transfer(Vec<&'a [Record]>),
}

/// A response to a UDP query carries at most this much, whatever the client offers
/// (the DNS flag day 2020 value); it is also what our OPT record announces.
pub const EDNS_PAYLOAD: u16 = 1232;
/// The OPT record we add to a response when the client sent EDNS.
pub const OPT_LEN: usize = 11;
const TRANSFER_MESSAGE_MAX: usize = 16_000;

/// The answers for one version of the zone.
pub struct Answers {
    zone: Zone,
    origin: LowerName,
    /// Owner name → its answers by type. Empty non-terminals are present with no
    /// answers, so they get NODATA, not NXDOMAIN.
    names: HashMap<LowerName, Vec<(RecordType, RrsetAnswer)>>,
    /// The SOA with the negative-caching TTL (RFC 2308).
    negative_soa: Record,
    secondaries: Vec<IpAddr>,
    /// SOA, every record, SOA again; and where each transfer message's share starts
    /// and ends.
    transfer: Vec<Record>,
    transfer_messages: Vec<Range<usize>>,
}

/// The answer to one (name, type), gathered when the zone is loaded.
#[derive(Debug)]
struct RrsetAnswer {
    /// The RRset, followed by an in-zone CNAME target's RRset of the asked type.
    answers: Vec<Record>,
    additionals: Vec<Record>,
    /// The response's size without and with `additionals`, before any OPT record (the
    /// client's question has the same length as ours, whatever its letter case).
    size_without_additionals: usize,
    size: usize,
}

impl Answers {
    pub fn new(zone: Zone, secondaries: Vec<IpAddr>) -> Result<Answers, DnsError> {
        let origin = LowerName::new(&zone.origin);
        let mut rrsets: HashMap<(LowerName, RecordType), Vec<Record>> = HashMap::new();
        for r in std::iter::once(&zone.soa).chain(&zone.records) {
            rrsets
                .entry((LowerName::new(&r.name), r.record_type()))
                .or_default()
                .push(r.clone());
        }
        let mut names: HashMap<LowerName, Vec<(RecordType, RrsetAnswer)>> = HashMap::new();
        for ((name, rtype), rrset) in &rrsets {
            let entry = names.entry(name.clone()).or_default();
            entry.push((*rtype, rrset_answer(name, *rtype, rrset, &[], &rrsets)?));
            // An in-zone CNAME target's data comes along, one level deep, so that the
            // client needs no second query.
            if let Some(RData::CNAME(target)) = rrset.first().map(|r| &r.data) {
                let target = LowerName::new(&target.0);
                for ((_, t), set) in rrsets.iter().filter(|((n, _), _)| *n == target) {
                    if *t != RecordType::CNAME {
                        entry.push((*t, rrset_answer(name, *t, rrset, set, &rrsets)?));
                    }
                }
            }
            // Every ancestor inside the zone exists, with or without data of its own.
            let mut parent = name.base_name();
            while origin.zone_of(&parent) && parent != origin {
                names.entry(parent.clone()).or_default();
                parent = parent.base_name();
            }
        }
        let mut negative_soa = zone.soa.clone();
        if let RData::SOA(soa) = &zone.soa.data {
            negative_soa.ttl = negative_soa.ttl.min(soa.minimum);
        }
        let transfer: Vec<Record> = std::iter::once(&zone.soa)
            .chain(&zone.records)
            .chain(std::iter::once(&zone.soa))
            .cloned()
            .collect();
        let transfer_messages = split_transfer(&zone.origin, &transfer)?;
        Ok(Answers {
            zone,
            origin,
            names,
            negative_soa,
            secondaries,
            transfer,
            transfer_messages,
        })
    }

    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// How many messages a zone transfer takes.
    pub fn transfer_messages(&self) -> usize {
        self.transfer_messages.len()
    }

    /// Whether `name` is in this zone: it decides REFUSED, and the AA bit of a slip.
    pub fn is_ours(&self, name: &LowerName) -> bool {
        self.origin.zone_of(name)
    }

    /// The answer to the question `name`, `rtype`, `class` from `src`.
    pub fn answer(
        &self,
        name: &LowerName,
        rtype: RecordType,
        class: DNSClass,
        src: SocketAddr,
        transport: Transport,
    ) -> Outcome<'_> {
        if class != DNSClass::IN || !self.is_ours(name) {
            return Outcome::Refused;
        }
        if matches!(rtype, RecordType::AXFR | RecordType::IXFR) {
            let allowed = transport == Transport::Tcp
                && *name == self.origin
                && self.secondaries.contains(&src.ip().to_canonical());
            return match allowed {
                // IXFR is answered with the whole zone, as RFC 1995 allows.
                true => Outcome::Transfer(
                    self.transfer_messages
                        .iter()
                        .map(|r| &self.transfer[r.clone()])
                        .collect(),
                ),
                false => Outcome::Refused,
            };
        }
        let Some(at_name) = self.names.get(name) else {
            return Outcome::Negative {
                nxdomain: true,
                soa: &self.negative_soa,
            };
        };
        if rtype == RecordType::ANY {
            return Outcome::Any(Box::new(Record::from_rdata(
                name.clone().into(),
                super::zone::TTL,
                RData::HINFO(HINFO::new("RFC8482".into(), String::new())),
            )));
        }
        let of = |t: RecordType| at_name.iter().find(|(x, _)| *x == t).map(|(_, a)| a);
        let Some(found) = of(rtype).or_else(|| of(RecordType::CNAME)) else {
            return Outcome::Negative {
                nxdomain: false,
                soa: &self.negative_soa,
            };
        };
        let limit = match transport {
            Transport::Udp { limit } => limit,
            Transport::Tcp => usize::from(u16::MAX),
        };
        if found.size <= limit {
            Outcome::Records {
                answers: &found.answers,
                additionals: &found.additionals,
            }
        } else if found.size_without_additionals <= limit {
            Outcome::Records {
                answers: &found.answers,
                additionals: &[],
            }
        } else {
            Outcome::Truncated
        }
    }
}

/// The answer to (`name`, `rtype`): `rrset`, then `chased` (a CNAME target's records),
/// with the in-zone addresses of NS, MX and SRV targets as additionals.
fn rrset_answer(
    name: &LowerName,
    rtype: RecordType,
    rrset: &[Record],
    chased: &[Record],
    rrsets: &HashMap<(LowerName, RecordType), Vec<Record>>,
) -> Result<RrsetAnswer, DnsError> {
    let answers: Vec<Record> = rrset.iter().chain(chased).cloned().collect();
    let mut additionals: Vec<Record> = Vec::new();
    for r in &answers {
        let target = match &r.data {
            RData::NS(ns) => &ns.0,
            RData::MX(mx) => &mx.exchange,
            RData::SRV(srv) => &srv.target,
            _ => continue,
        };
        let target = LowerName::new(target);
        for t in [RecordType::A, RecordType::AAAA] {
            // Several records may share a target: its addresses go in once.
            for r in rrsets.get(&(target.clone(), t)).into_iter().flatten() {
                if !additionals.contains(r) {
                    additionals.push(r.clone());
                }
            }
        }
    }
    // hickory-server's encoder never compresses against the question (it keeps the
    // question section, type and class included, as one candidate that no name
    // matches), so the response is the question plus what follows it encoded alone.
    let question = encoded_len(&Name::from(name), name, rtype)? + 4;
    let mut m = Message::response(0, OpCode::Query);
    m.add_answers(answers.iter().cloned());
    let size_without_additionals = question + encoded_len(&m, name, rtype)?;
    m.add_additionals(additionals.iter().cloned());
    let size = question + encoded_len(&m, name, rtype)?;
    Ok(RrsetAnswer {
        answers,
        additionals,
        size_without_additionals,
        size,
    })
}

/// The wire length of `item`, encoded for the answer to (`name`, `rtype`).
fn encoded_len(
    item: &impl BinEncodable,
    name: &impl ToString,
    rtype: impl ToString,
) -> Result<usize, DnsError> {
    item.to_bytes()
        .map(|b| b.len())
        .map_err(|source| DnsError::Encode {
            name: name.to_string(),
            rtype: rtype.to_string(),
            source,
        })
}

/// Splits a transfer's records into messages of about `TRANSFER_MESSAGE_MAX` bytes.
fn split_transfer(origin: &Name, records: &[Record]) -> Result<Vec<Range<usize>>, DnsError> {
    let mut messages = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, r) in records.iter().enumerate() {
        let len = encoded_len(r, origin, "AXFR")?;
        if size + len > TRANSFER_MESSAGE_MAX && i > start {
            messages.push(start..i);
            (start, size) = (i, 0);
        }
        size += len;
    }
    messages.push(start..records.len());
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::zone::{build, Sources};

    const TOML: &str = "version = 1\n[system]\nhostname = \"mail\"\ndomain = \"example.org\"\n\
                        [[interface]]\nname = \"eth0\"\nipv4 = [\"192.0.2.10/24\"]\n\
                        [dns]\nsecondaries = [\"192.0.2.53\"]\n";

    fn answers_with(records: &str) -> Answers {
        let cfg = crate::config::parse("t.toml", &format!("{TOML}{records}")).unwrap();
        let zone = build(&cfg, &Sources::default(), 7).unwrap();
        Answers::new(zone, cfg.dns.secondaries.iter().map(|s| s.ip()).collect()).unwrap()
    }

    fn record(name: &str, rtype: &str, value: &str) -> String {
        format!("[[dns.record]]\nname = \"{name}\"\ntype = \"{rtype}\"\nvalue = \"{value}\"\n")
    }

    fn src() -> SocketAddr {
        "198.51.100.1:5300".parse().unwrap()
    }

    const UDP: Transport = Transport::Udp { limit: 512 };

    fn ask<'a>(a: &'a Answers, name: &str, t: RecordType, transport: Transport) -> Outcome<'a> {
        let name = LowerName::new(&Name::from_ascii(name).unwrap());
        a.answer(&name, t, DNSClass::IN, src(), transport)
    }

    fn shown(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
            .collect()
    }

    #[test]
    fn names_are_matched_without_regard_to_case() {
        let a = answers_with("");
        let Outcome::Records {
            answers,
            additionals,
        } = ask(&a, "Example.ORG.", RecordType::MX, UDP)
        else {
            panic!("no MX");
        };
        assert_eq!(shown(answers), ["example.org. MX 10 mail.example.org."]);
        assert_eq!(shown(additionals), ["mail.example.org. A 192.0.2.10"]);
    }

    #[test]
    fn negative_answers_carry_the_soa_with_the_negative_ttl() {
        let a = answers_with("");
        let Outcome::Negative { nxdomain, soa } = ask(&a, "nope.example.org.", RecordType::A, UDP)
        else {
            panic!("not negative");
        };
        assert!(nxdomain);
        assert_eq!(soa.record_type(), RecordType::SOA);
        assert_eq!(soa.ttl, 300);
        assert!(matches!(
            ask(&a, "mail.example.org.", RecordType::MX, UDP),
            Outcome::Negative {
                nxdomain: false,
                ..
            }
        ));
    }

    #[test]
    fn empty_non_terminals_are_nodata() {
        let a = answers_with(&record("a.b", "A", "192.0.2.99"));
        assert!(matches!(
            ask(&a, "b.example.org.", RecordType::A, UDP),
            Outcome::Negative {
                nxdomain: false,
                ..
            }
        ));
    }

    #[test]
    fn foreign_zones_lookalikes_and_other_classes_are_refused() {
        let a = answers_with("");
        for name in ["example.com.", "badexample.org.", "org."] {
            assert_eq!(
                ask(&a, name, RecordType::A, UDP),
                Outcome::Refused,
                "{name}"
            );
        }
        let name = LowerName::new(&Name::from_ascii("example.org.").unwrap());
        let chaos = a.answer(&name, RecordType::TXT, DNSClass::CH, src(), UDP);
        assert_eq!(chaos, Outcome::Refused);
    }

    #[test]
    fn any_gets_the_rfc8482_answer() {
        let a = answers_with("");
        let Outcome::Any(hinfo) = ask(&a, "example.org.", RecordType::ANY, Transport::Tcp) else {
            panic!("not minimal");
        };
        let RData::HINFO(hinfo) = &hinfo.data else {
            panic!("not HINFO: {hinfo:?}");
        };
        assert_eq!((&*hinfo.cpu, &*hinfo.os), (&b"RFC8482"[..], &b""[..]));
    }

    #[test]
    fn transfers_need_tcp_and_a_secondary() {
        let a = answers_with("");
        let name = LowerName::new(&Name::from_ascii("example.org.").unwrap());
        for secondary in ["192.0.2.53:4000", "[::ffff:192.0.2.53]:4000"] {
            let from: SocketAddr = secondary.parse().unwrap();
            let Outcome::Transfer(messages) =
                a.answer(&name, RecordType::AXFR, DNSClass::IN, from, Transport::Tcp)
            else {
                panic!("no transfer for {secondary} over TCP");
            };
            let records: Vec<&Record> = messages.iter().flat_map(|m| m.iter()).collect();
            assert_eq!(records.first().unwrap().record_type(), RecordType::SOA);
            assert_eq!(records.last().unwrap().record_type(), RecordType::SOA);
            assert_eq!(records.len(), a.zone().records.len() + 2);
            let over_udp = a.answer(&name, RecordType::AXFR, DNSClass::IN, from, UDP);
            assert_eq!(over_udp, Outcome::Refused);
        }
        let stranger = a.answer(&name, RecordType::IXFR, DNSClass::IN, src(), Transport::Tcp);
        assert_eq!(stranger, Outcome::Refused);
    }

    #[test]
    fn large_transfers_span_several_messages() {
        let mut records = String::new();
        for i in 0..400 {
            records += &record(&format!("host{i}"), "TXT", &"x".repeat(100));
        }
        let a = answers_with(&records);
        let name = LowerName::new(&Name::from_ascii("example.org.").unwrap());
        let from: SocketAddr = "192.0.2.53:4000".parse().unwrap();
        let Outcome::Transfer(messages) =
            a.answer(&name, RecordType::AXFR, DNSClass::IN, from, Transport::Tcp)
        else {
            panic!("no transfer");
        };
        assert!(messages.len() > 1);
        let total: usize = messages.iter().map(|m| m.len()).sum();
        assert_eq!(total, a.zone().records.len() + 2);
    }

    #[test]
    fn udp_drops_the_additional_section_before_truncating() {
        let mut records = String::new();
        for i in 0..12 {
            records += &record(&format!("h{i}"), "A", &format!("192.0.2.{}", 100 + i));
            records += &record(&format!("h{i}"), "AAAA", &format!("2001:db8::{}", 100 + i));
            records += &record("big", "MX", &format!("10 h{i}"));
        }
        let a = answers_with(&records);
        let count = |o: Outcome| match o {
            Outcome::Records {
                answers,
                additionals,
            } => (answers.len(), additionals.len()),
            other => panic!("{other:?}"),
        };
        let big = "big.example.org.";
        assert_eq!(
            count(ask(&a, big, RecordType::MX, Transport::Tcp)),
            (12, 24)
        );
        let edns = Transport::Udp {
            limit: usize::from(EDNS_PAYLOAD) - OPT_LEN,
        };
        assert_eq!(count(ask(&a, big, RecordType::MX, edns)), (12, 24));
        assert_eq!(count(ask(&a, big, RecordType::MX, UDP)), (12, 0));
        let tiny = Transport::Udp { limit: 100 };
        assert_eq!(ask(&a, big, RecordType::MX, tiny), Outcome::Truncated);
    }

    #[test]
    fn in_zone_cname_targets_come_along() {
        let a = answers_with(&record("www", "CNAME", "mail"));
        let Outcome::Records { answers, .. } = ask(&a, "www.example.org.", RecordType::A, UDP)
        else {
            panic!("no answer");
        };
        assert_eq!(
            shown(answers),
            [
                "www.example.org. CNAME mail.example.org.",
                "mail.example.org. A 192.0.2.10"
            ]
        );
        // A type the target lacks: the CNAME alone.
        let Outcome::Records { answers, .. } = ask(&a, "www.example.org.", RecordType::SRV, UDP)
        else {
            panic!("no answer");
        };
        assert_eq!(shown(answers), ["www.example.org. CNAME mail.example.org."]);
    }
}

//! From query bytes to response bytes.
//!
//! The zone is small and changes rarely, so every positive answer is encoded once, when
//! the zone is loaded; answering a common query is a hash lookup and a copy with the
//! client's ID, flags and question patched in. Negative answers are assembled from a
//! precomputed SOA tail. Anything unusual (other opcodes, classes, transfers, odd
//! section counts, malformed bytes) takes a slower path through hickory-proto's parser.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;

use super::zone::Zone;
use super::DnsError;

/// How a query arrived: UDP answers are size-limited, transfers need TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send the response left in the buffer.
    Send,
    /// Send nothing (not a query, or too broken to answer).
    Drop,
    /// A zone transfer: these messages, in order.
    Transfer(Vec<Vec<u8>>),
}

const HEADER: usize = 12;
const TYPE_OPT: u16 = 41;
const TYPE_ANY: u16 = 255;
const TYPE_AXFR: u16 = 252;
const TYPE_IXFR: u16 = 251;
const CLASS_IN: u16 = 1;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_REFUSED: u8 = 5;
/// The largest UDP response offered with EDNS (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;
const TRANSFER_MESSAGE_MAX: usize = 16_000;

/// The answers for one version of the zone.
pub struct Answers {
    zone: Zone,
    origin_wire: Vec<u8>,
    /// Lower-case wire-format owner name → its precomputed answers. Empty
    /// non-terminals are present with no answers, so they get NODATA, not NXDOMAIN.
    names: HashMap<Box<[u8]>, NameAnswers>,
    /// Type, class, TTL, length and data of the SOA for negative answers; its owner
    /// is a pointer into the question, written per response.
    soa_tail: Vec<u8>,
    secondaries: Vec<IpAddr>,
}

#[derive(Default)]
struct NameAnswers {
    /// For each type present at the name (and, at an in-zone CNAME, each type present
    /// at its target): the complete response message, with the CNAME answering any
    /// other type.
    by_type: Vec<(u16, Precomputed)>,
}

/// A positive response, and where its additional section starts, so that a response
/// too large for UDP can drop it first (RFC 2181 section 9).
struct Precomputed {
    message: Box<[u8]>,
    answer_end: usize,
}

impl NameAnswers {
    fn find(&self, qtype: u16) -> Option<&Precomputed> {
        let of = |t: u16| self.by_type.iter().find(|(x, _)| *x == t).map(|(_, m)| m);
        of(qtype).or_else(|| of(u16::from(RecordType::CNAME)))
    }
}

impl Answers {
    pub fn new(zone: Zone, secondaries: Vec<IpAddr>) -> Result<Answers, DnsError> {
        let origin = zone.origin.to_lowercase();
        let origin_wire = wire(&origin)?;
        let mut rrsets: HashMap<(Name, RecordType), Vec<Record>> = HashMap::new();
        for r in std::iter::once(&zone.soa).chain(&zone.records) {
            rrsets
                .entry((r.name.to_lowercase(), r.record_type()))
                .or_default()
                .push(r.clone());
        }
        let mut names: HashMap<Box<[u8]>, NameAnswers> = HashMap::new();
        for ((name, rtype), rrset) in &rrsets {
            let additional = additional_for(rrset, &rrsets);
            let message = positive(name, *rtype, rrset, &[], &additional)?;
            let entry = names.entry(wire(name)?.into()).or_default();
            entry.by_type.push((u16::from(*rtype), message));
            // An in-zone CNAME target's data comes along, one level deep, so that the
            // client needs no second query.
            if let Some(RData::CNAME(target)) = rrset.first().map(|r| &r.data) {
                let target = target.0.to_lowercase();
                for ((_, t), set) in rrsets.iter().filter(|((n, _), _)| *n == target) {
                    if *t == RecordType::CNAME {
                        continue; // a chain: the client follows it
                    }
                    let additional = additional_for(set, &rrsets);
                    let message = positive(name, *t, rrset, set, &additional)?;
                    entry.by_type.push((u16::from(*t), message));
                }
            }
            // Every ancestor inside the zone exists, with or without data of its own.
            let mut parent = name.base_name();
            while origin.zone_of(&parent) && parent != origin {
                names.entry(wire(&parent)?.into()).or_default();
                parent = parent.base_name();
            }
        }
        let soa_tail = negative_soa_tail(&zone)?;
        Ok(Answers {
            zone,
            origin_wire,
            names,
            soa_tail,
            secondaries,
        })
    }

    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// Answers `query` from `src` into `out`.
    pub fn respond(
        &self,
        query: &[u8],
        src: SocketAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Reply {
        out.clear();
        match parse_common(query) {
            Some(q) => {
                self.respond_common(query, &q, transport, out);
                Reply::Send
            }
            None => self.respond_unusual(query, src, transport, out),
        }
    }

    /// A truncated (TC=1) response: the client retries over TCP. Used for rate-limit slips.
    pub fn truncated(&self, query: &[u8], out: &mut Vec<u8>) -> Reply {
        out.clear();
        match parse_common(query) {
            Some(q) => {
                let authoritative = in_zone(&q.lower[..q.qname_len], &self.origin_wire);
                header_only(query, &q, 0, authoritative, out);
                out[2] |= 0x02;
                append_opt(&q, out);
                Reply::Send
            }
            None => Reply::Drop,
        }
    }

    fn respond_common(&self, query: &[u8], q: &Common, transport: Transport, out: &mut Vec<u8>) {
        let qname = &q.lower[..q.qname_len];
        if !in_zone(qname, &self.origin_wire) {
            header_only(query, q, RCODE_REFUSED, false, out);
            return finish(q, transport, None, out, query);
        }
        let mut answer_end = None;
        match self.names.get(qname) {
            Some(_) if q.qtype == TYPE_ANY => {
                // RFC 8482: a minimal answer instead of everything at the name.
                header_only(query, q, 0, true, out);
                out[7] = 1; // ANCOUNT
                out.extend_from_slice(&[0xc0, HEADER as u8]);
                out.extend_from_slice(&[0, 13, 0, 1]);
                out.extend_from_slice(&super::zone::TTL.to_be_bytes());
                out.extend_from_slice(&[0, 9, 7]);
                out.extend_from_slice(b"RFC8482");
                out.push(0);
            }
            Some(entry) => {
                match entry.find(q.qtype) {
                    Some(found) => {
                        out.extend_from_slice(&found.message);
                        answer_end = Some(found.answer_end);
                        // The client's ID, RD and CD; its question, with its letter case.
                        out[0..2].copy_from_slice(&query[0..2]);
                        out[2] |= query[2] & 0x01;
                        out[3] |= query[3] & 0x10;
                        out[HEADER..q.question_end].copy_from_slice(&query[HEADER..q.question_end]);
                    }
                    None => self.negative(query, q, 0, out),
                }
            }
            None => self.negative(query, q, RCODE_NXDOMAIN, out),
        }
        finish(q, transport, answer_end, out, query)
    }

    /// NODATA (rcode 0) or NXDOMAIN, with the zone's SOA in the authority section.
    fn negative(&self, query: &[u8], q: &Common, rcode: u8, out: &mut Vec<u8>) {
        header_only(query, q, rcode, true, out);
        out[9] = 1; // NSCOUNT
        let origin_at = HEADER + q.qname_len - self.origin_wire.len();
        out.extend_from_slice(&(0xc000 | origin_at as u16).to_be_bytes());
        out.extend_from_slice(&self.soa_tail);
    }

    fn respond_unusual(
        &self,
        query: &[u8],
        src: SocketAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Reply {
        if query.len() < HEADER || query[2] & 0x80 != 0 {
            return Reply::Drop; // too short to answer, or a response: never answer those
        }
        let request = match Message::from_vec(query) {
            Ok(m) => m,
            Err(_) => {
                // FORMERR, echoing only the ID and opcode.
                out.extend_from_slice(&query[0..2]);
                out.push(0x80 | (query[2] & 0x78));
                out.push(1);
                out.extend_from_slice(&[0; 8]);
                return Reply::Send;
            }
        };
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.checking_disabled = request.metadata.checking_disabled;
        response.add_queries(request.queries.iter().cloned());
        if let Some(edns) = &request.edns {
            response.set_edns(our_edns(edns.flags().dnssec_ok));
            if edns.version() > 0 {
                response.metadata.response_code = ResponseCode::BADVERS;
                return encode(&response, out);
            }
        }
        let code = if request.metadata.op_code != OpCode::Query {
            Some(ResponseCode::NotImp)
        } else if request.queries.len() != 1
            // OPT is a pseudo-record: it cannot be asked for (RFC 6891 section 6.1.1).
            || request.queries[0].query_type() == RecordType::OPT
        {
            Some(ResponseCode::FormErr)
        } else {
            None
        };
        if let Some(code) = code {
            response.metadata.response_code = code;
            return encode(&response, out);
        }
        let question = &request.queries[0];
        let qname = question.name().to_lowercase();
        let transfer = matches!(question.query_type(), RecordType::AXFR | RecordType::IXFR);
        if question.query_class() != DNSClass::IN || !self.zone.origin.zone_of(&qname) {
            response.metadata.response_code = ResponseCode::Refused;
            return encode(&response, out);
        }
        if transfer {
            let allowed = transport == Transport::Tcp
                && qname == self.zone.origin.to_lowercase()
                && self.secondaries.contains(&src.ip().to_canonical());
            if !allowed {
                response.metadata.response_code = ResponseCode::Refused;
                return encode(&response, out);
            }
            return self.transfer(&request);
        }
        // An ordinary question in an unusual message (extra records, EDNS options such
        // as cookies): its question sits where a common query's does, so it gets the
        // one common answer, with the EDNS hickory parsed.
        match parse_question(query) {
            Some(mut q) => {
                q.edns = request.edns.as_ref().map(Edns::max_payload);
                q.dnssec_ok = request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
                self.respond_common(query, &q, transport, out);
            }
            // Only a compression pointer can stop it here, and in the sole question
            // there is nothing earlier for it to point to.
            None => {
                response.metadata.response_code = ResponseCode::FormErr;
                return encode(&response, out);
            }
        }
        Reply::Send
    }

    /// AXFR (and IXFR, answered with the whole zone as RFC 1995 allows): SOA, the
    /// records, SOA again, over as many messages as needed.
    fn transfer(&self, request: &Message) -> Reply {
        let mut messages = Vec::new();
        let all: Vec<&Record> = std::iter::once(&self.zone.soa)
            .chain(&self.zone.records)
            .chain(std::iter::once(&self.zone.soa))
            .collect();
        let new_message = || {
            let mut m = Message::response(request.metadata.id, OpCode::Query);
            m.metadata.authoritative = true;
            m.add_queries(request.queries.iter().cloned());
            m
        };
        let mut current = new_message();
        let mut size = 0;
        for r in all {
            let len = r.to_bytes().map_or(0, |b| b.len());
            if size + len > TRANSFER_MESSAGE_MAX && !current.answers.is_empty() {
                messages.push(std::mem::replace(&mut current, new_message()));
                size = 0;
            }
            size += len;
            current.add_answer(r.clone());
        }
        messages.push(current);
        let encoded: Result<Vec<Vec<u8>>, _> = messages.iter().map(Message::to_vec).collect();
        match encoded {
            Ok(e) => Reply::Transfer(e),
            Err(_) => Reply::Drop,
        }
    }
}

/// A query of the common shape: one IN question, no answer or authority records, at
/// most an EDNS version 0 OPT record, and nothing after it.
struct Common {
    lower: [u8; 255],
    qname_len: usize,
    qtype: u16,
    question_end: usize,
    /// The client's UDP payload size when it sent EDNS.
    edns: Option<u16>,
    /// The client's DO bit, which our OPT copies (RFC 3225).
    dnssec_ok: bool,
}

fn parse_common(q: &[u8]) -> Option<Common> {
    if q.len() < HEADER + 5 || q[2] & 0xf8 != 0 {
        return None; // a response, or an opcode other than QUERY
    }
    let count = |i: usize| u16::from_be_bytes([q[i], q[i + 1]]);
    if count(4) != 1 || count(6) != 0 || count(8) != 0 || count(10) > 1 {
        return None;
    }
    let mut common = parse_question(q)?;
    let question_end = common.question_end;
    if count(10) == 1 {
        let opt = q.get(question_end..question_end + 11)?;
        let rdlen = u16::from_be_bytes([opt[9], opt[10]]) as usize;
        let is_opt = opt[0] == 0 && u16::from_be_bytes([opt[1], opt[2]]) == TYPE_OPT;
        if !is_opt || opt[6] != 0 || question_end + 11 + rdlen != q.len() {
            return None; // not OPT, an EDNS version other than 0, or trailing bytes
        }
        common.dnssec_ok = opt[7] & 0x80 != 0;
        common.edns = Some(u16::from_be_bytes([opt[3], opt[4]]));
    } else if question_end != q.len() {
        return None;
    }
    Some(common)
}

/// The first question, uncompressed, of class IN and not a transfer or OPT; no EDNS yet.
fn parse_question(q: &[u8]) -> Option<Common> {
    let mut lower = [0u8; 255];
    let mut i = HEADER;
    loop {
        let len = *q.get(i)? as usize;
        if len & 0xc0 != 0 || i - HEADER + len + 1 > 255 {
            return None; // compression in a question, or too long a name
        }
        let label = q.get(i..i + 1 + len)?;
        for (j, b) in label.iter().enumerate() {
            lower[i - HEADER + j] = b.to_ascii_lowercase();
        }
        i += 1 + len;
        if len == 0 {
            break;
        }
    }
    let qname_len = i - HEADER;
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*q.get(i + 2)?, *q.get(i + 3)?]);
    let question_end = i + 4;
    if qclass != CLASS_IN || matches!(qtype, TYPE_AXFR | TYPE_IXFR | TYPE_OPT) {
        return None;
    }
    Some(Common {
        lower,
        qname_len,
        qtype,
        question_end,
        edns: None,
        dnssec_ok: false,
    })
}

fn in_zone(qname: &[u8], origin: &[u8]) -> bool {
    if !qname.ends_with(origin) {
        return false;
    }
    // The suffix must start at a label boundary, not inside a label.
    let mut i = 0;
    let start = qname.len() - origin.len();
    while i < start {
        i += 1 + qname[i] as usize;
    }
    i == start
}

/// A response header and the client's question, with no records yet.
fn header_only(query: &[u8], q: &Common, rcode: u8, authoritative: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(&query[0..2]);
    out.push(0x80 | if authoritative { 0x04 } else { 0 } | (query[2] & 0x01));
    out.push((query[3] & 0x10) | rcode);
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&query[HEADER..q.question_end]);
}

/// Adds our OPT record when the client sent EDNS, and fits the response to what UDP
/// can carry: first without the additional section (which starts at `answer_end`),
/// else truncated to the header and question with TC set (RFC 2181 section 9).
fn finish(
    q: &Common,
    transport: Transport,
    answer_end: Option<usize>,
    out: &mut Vec<u8>,
    query: &[u8],
) {
    let limit = match (transport, q.edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, None) => 512,
        (Transport::Udp, Some(size)) => usize::from(size.clamp(512, EDNS_PAYLOAD)),
    };
    let opt_len = if q.edns.is_some() { OPT_LEN } else { 0 };
    if out.len() + opt_len > limit {
        if let Some(end) = answer_end.filter(|e| *e < out.len()) {
            out.truncate(end);
            out[10..12].copy_from_slice(&[0, 0]); // ARCOUNT
        }
    }
    if out.len() + opt_len > limit {
        let rcode = out[3] & 0x0f;
        let aa = out[2] & 0x04 != 0;
        out.clear();
        header_only(query, q, rcode, aa, out);
        out[2] |= 0x02; // TC
    }
    append_opt(q, out);
}

const OPT_LEN: usize = 11;

/// Our OPT record, when the client sent EDNS: our payload size and its DO bit.
fn append_opt(q: &Common, out: &mut Vec<u8>) {
    if q.edns.is_none() {
        return;
    }
    let arcount = u16::from_be_bytes([out[10], out[11]]) + 1;
    out[10..12].copy_from_slice(&arcount.to_be_bytes());
    out.extend_from_slice(&[0, 0, 41]); // root owner, TYPE OPT
    out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
    let flags = if q.dnssec_ok { 0x80 } else { 0 };
    out.extend_from_slice(&[0, 0, flags, 0, 0, 0]); // rcode, version, flags, RDLEN
}

fn our_edns(dnssec_ok: bool) -> Edns {
    let mut e = Edns::new();
    e.set_max_payload(EDNS_PAYLOAD);
    e.set_dnssec_ok(dnssec_ok);
    e
}

fn encode(m: &Message, out: &mut Vec<u8>) -> Reply {
    match m.to_vec() {
        Ok(bytes) => {
            out.extend_from_slice(&bytes);
            Reply::Send
        }
        Err(_) => Reply::Drop,
    }
}

fn wire(name: &Name) -> Result<Vec<u8>, DnsError> {
    let mut fqdn = name.clone();
    fqdn.set_fqdn(true);
    fqdn.to_bytes().map_err(|source| DnsError::Encode {
        name: name.to_string(),
        rtype: "name".into(),
        source,
    })
}

/// Addresses of in-zone targets of NS, MX and SRV records (glue for ns1).
fn additional_for(
    rrset: &[Record],
    rrsets: &HashMap<(Name, RecordType), Vec<Record>>,
) -> Vec<Record> {
    let mut out = Vec::new();
    for r in rrset {
        let target = match &r.data {
            RData::NS(ns) => &ns.0,
            RData::MX(mx) => &mx.exchange,
            RData::SRV(srv) => &srv.target,
            _ => continue,
        };
        let target = target.to_lowercase();
        for t in [RecordType::A, RecordType::AAAA] {
            if let Some(set) = rrsets.get(&(target.clone(), t)) {
                // Several records may share a target: its addresses go in once.
                for r in set {
                    if !out.contains(r) {
                        out.push(r.clone());
                    }
                }
            }
        }
    }
    out
}

/// A complete response for (name, type) with a lower-case question and ID 0: `answers`,
/// then `chased` (a CNAME target's records), then `additional`.
fn positive(
    name: &Name,
    rtype: RecordType,
    answers: &[Record],
    chased: &[Record],
    additional: &[Record],
) -> Result<Precomputed, DnsError> {
    let mut m = Message::response(0, OpCode::Query);
    m.metadata.message_type = MessageType::Response;
    m.metadata.authoritative = true;
    let mut query = Query::query(name.clone(), rtype);
    query.set_query_class(DNSClass::IN);
    m.add_query(query);
    m.add_answers(answers.iter().chain(chased).cloned());
    let encode = |m: &Message| {
        m.to_vec().map_err(|source| DnsError::Encode {
            name: name.to_string(),
            rtype: rtype.to_string(),
            source,
        })
    };
    // Names in the answer compress only against what precedes them, so the message
    // without additionals is a prefix of the one with them.
    let answer_end = encode(&m)?.len();
    m.add_additionals(additional.iter().cloned());
    Ok(Precomputed {
        message: encode(&m)?.into(),
        answer_end,
    })
}

/// The SOA record after its owner name, with the negative-caching TTL (RFC 2308).
fn negative_soa_tail(zone: &Zone) -> Result<Vec<u8>, DnsError> {
    let RData::SOA(soa) = &zone.soa.data else {
        unreachable!("the SOA record holds SOA data");
    };
    let mut rdata = wire(&soa.mname)?;
    rdata.extend(wire(&soa.rname)?);
    for v in [
        soa.serial,
        soa.refresh as u32,
        soa.retry as u32,
        soa.expire as u32,
        soa.minimum,
    ] {
        rdata.extend_from_slice(&v.to_be_bytes());
    }
    let mut tail = vec![0, 6, 0, 1];
    tail.extend_from_slice(&zone.soa.ttl.min(soa.minimum).to_be_bytes());
    tail.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    tail.extend(rdata);
    Ok(tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::zone::{build, Sources};
    use hickory_proto::op::Message;

    const TOML: &str = "version = 1\n[system]\nhostname = \"mail\"\ndomain = \"example.org\"\n\
                        [[interface]]\nname = \"eth0\"\nipv4 = [\"192.0.2.10/24\"]\n\
                        [dns]\nsecondaries = [\"192.0.2.53\"]\n";

    fn answers() -> Answers {
        let cfg = crate::config::parse("t.toml", TOML).unwrap();
        let zone = build(&cfg, &Sources::default(), 7).unwrap();
        Answers::new(zone, cfg.dns.secondaries.iter().map(|s| s.ip()).collect()).unwrap()
    }

    fn src() -> SocketAddr {
        "198.51.100.1:5300".parse().unwrap()
    }

    fn query(name: &str, t: RecordType, edns: bool) -> Message {
        let mut m = Message::query();
        m.metadata.id = 0xbeef;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            m.set_edns(e);
        }
        m
    }

    fn ask(a: &Answers, m: &Message, transport: Transport) -> Message {
        let mut out = Vec::new();
        assert_eq!(
            a.respond(&m.to_vec().unwrap(), src(), transport, &mut out),
            Reply::Send
        );
        Message::from_vec(&out).unwrap()
    }

    #[test]
    fn fast_answer_keeps_id_rd_and_the_question_case() {
        let a = answers();
        let r = ask(
            &a,
            &query("MaIl.Example.ORG.", RecordType::A, false),
            Transport::Udp,
        );
        assert_eq!(r.metadata.id, 0xbeef);
        assert!(r.metadata.authoritative && r.metadata.recursion_desired);
        assert!(!r.metadata.recursion_available);
        assert_eq!(r.queries[0].name().to_string(), "MaIl.Example.ORG.");
        assert_eq!(r.answers[0].data.to_string(), "192.0.2.10");
        assert!(r.edns.is_none());
    }

    #[test]
    fn edns_queries_get_our_opt_record() {
        let a = answers();
        let r = ask(
            &a,
            &query("example.org.", RecordType::MX, true),
            Transport::Udp,
        );
        assert_eq!(r.edns.as_ref().map(|e| e.max_payload()), Some(EDNS_PAYLOAD));
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.additionals.len(), 1, "the mail host's address");
    }

    #[test]
    fn negative_answers_carry_the_soa() {
        let a = answers();
        let nx = ask(
            &a,
            &query("Nope.example.org.", RecordType::A, false),
            Transport::Udp,
        );
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(
            nx.authorities[0].name.to_string().to_lowercase(),
            "example.org."
        );
        assert_eq!(nx.authorities[0].ttl, 300);
        let nodata = ask(
            &a,
            &query("mail.example.org.", RecordType::MX, false),
            Transport::Udp,
        );
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.authorities.len(), 1);
    }

    #[test]
    fn foreign_zones_and_lookalikes_are_refused() {
        let a = answers();
        for name in ["example.com.", "badexample.org.", "org."] {
            let r = ask(&a, &query(name, RecordType::A, false), Transport::Udp);
            assert_eq!(r.metadata.response_code, ResponseCode::Refused, "{name}");
            assert!(!r.metadata.authoritative);
        }
    }

    #[test]
    fn unusual_messages_get_the_same_answer_or_a_clear_error() {
        let a = answers();
        // An extra additional record sends the query down the slow path.
        let mut m = query("example.org.", RecordType::MX, false);
        m.add_additional(Record::from_rdata(
            Name::from_ascii("x.").unwrap(),
            0,
            RData::A(hickory_proto::rr::rdata::A::new(1, 2, 3, 4)),
        ));
        let r = ask(&a, &m, Transport::Udp);
        assert_eq!(r.answers[0].data.to_string(), "10 mail.example.org.");

        let mut update = query("example.org.", RecordType::SOA, false);
        update.metadata.op_code = OpCode::Update;
        assert_eq!(
            ask(&a, &update, Transport::Udp).metadata.response_code,
            ResponseCode::NotImp
        );

        let mut chaos = query("example.org.", RecordType::TXT, false);
        let mut q = chaos.queries[0].clone();
        q.set_query_class(DNSClass::CH);
        chaos.queries = vec![q];
        assert_eq!(
            ask(&a, &chaos, Transport::Udp).metadata.response_code,
            ResponseCode::Refused
        );

        let mut out = Vec::new();
        let garbage = [
            0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1,
        ];
        assert_eq!(
            a.respond(&garbage, src(), Transport::Udp, &mut out),
            Reply::Send
        );
        assert_eq!(&out[..2], &[0x12, 0x34]);
        assert_eq!(out[3] & 0x0f, 1, "FORMERR");
        assert_eq!(
            a.respond(&[1, 2, 3], src(), Transport::Udp, &mut out),
            Reply::Drop
        );
    }

    #[test]
    fn responses_are_never_answered() {
        let a = answers();
        let mut m = query("example.org.", RecordType::SOA, false);
        m.metadata.message_type = MessageType::Response;
        let mut out = Vec::new();
        assert_eq!(
            a.respond(&m.to_vec().unwrap(), src(), Transport::Udp, &mut out),
            Reply::Drop
        );
    }

    #[test]
    fn transfers_need_tcp_and_a_secondary() {
        let a = answers();
        let axfr = query("example.org.", RecordType::AXFR, false)
            .to_vec()
            .unwrap();
        let secondary: SocketAddr = "192.0.2.53:4000".parse().unwrap();
        let mut out = Vec::new();
        let Reply::Transfer(messages) = a.respond(&axfr, secondary, Transport::Tcp, &mut out)
        else {
            panic!("no transfer for the secondary over TCP");
        };
        let records: Vec<Record> = messages
            .iter()
            .flat_map(|m| Message::from_vec(m).unwrap().answers)
            .collect();
        assert_eq!(records.first().unwrap().record_type(), RecordType::SOA);
        assert_eq!(records.last().unwrap().record_type(), RecordType::SOA);
        assert_eq!(records.len(), a.zone().records.len() + 2);
        for (from, transport) in [(secondary, Transport::Udp), (src(), Transport::Tcp)] {
            assert_eq!(a.respond(&axfr, from, transport, &mut out), Reply::Send);
            assert_eq!(
                Message::from_vec(&out).unwrap().metadata.response_code,
                ResponseCode::Refused
            );
        }
    }

    #[test]
    fn slip_is_a_truncated_empty_answer() {
        let a = answers();
        let mut out = Vec::new();
        let q = query("example.org.", RecordType::MX, false)
            .to_vec()
            .unwrap();
        assert_eq!(a.truncated(&q, &mut out), Reply::Send);
        let r = Message::from_vec(&out).unwrap();
        assert!(r.metadata.truncation && r.answers.is_empty());
        assert_eq!(r.metadata.id, 0xbeef);
    }

    fn answers_with(records: &str) -> Answers {
        let cfg = crate::config::parse("t.toml", &format!("{TOML}{records}")).unwrap();
        let zone = build(&cfg, &Sources::default(), 7).unwrap();
        Answers::new(zone, cfg.dns.secondaries.iter().map(|s| s.ip()).collect()).unwrap()
    }

    fn record(name: &str, rtype: &str, value: &str) -> String {
        format!("[[dns.record]]\nname = \"{name}\"\ntype = \"{rtype}\"\nvalue = \"{value}\"\n")
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
        let q = query("big.example.org.", RecordType::MX, false);
        let tcp = ask(&a, &q, Transport::Tcp);
        assert_eq!((tcp.answers.len(), tcp.additionals.len()), (12, 24));
        let udp = ask(&a, &q, Transport::Udp);
        assert!(
            !udp.metadata.truncation,
            "the answer fits without additionals"
        );
        assert_eq!((udp.answers.len(), udp.additionals.len()), (12, 0));
    }

    #[test]
    fn in_zone_cname_targets_come_along() {
        let a = answers_with(&record("www", "CNAME", "mail"));
        let r = ask(
            &a,
            &query("www.example.org.", RecordType::A, false),
            Transport::Udp,
        );
        let got: Vec<String> = r
            .answers
            .iter()
            .map(|r| format!("{} {}", r.record_type(), r.data))
            .collect();
        assert_eq!(got, ["CNAME mail.example.org.", "A 192.0.2.10"]);
        // A type the target lacks: the CNAME alone.
        let r = ask(
            &a,
            &query("www.example.org.", RecordType::SRV, false),
            Transport::Udp,
        );
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].record_type(), RecordType::CNAME);
    }

    #[test]
    fn our_opt_copies_the_do_bit_and_cd_is_echoed() {
        let a = answers();
        for dnssec_ok in [false, true] {
            let mut q = query("example.org.", RecordType::SOA, true);
            q.edns.as_mut().unwrap().set_dnssec_ok(dnssec_ok);
            q.metadata.checking_disabled = true;
            let r = ask(&a, &q, Transport::Udp);
            assert_eq!(r.edns.unwrap().flags().dnssec_ok, dnssec_ok, "fast path");
            assert!(r.metadata.checking_disabled);
            // An extra record sends the same question down the slow path.
            q.add_additional(Record::from_rdata(
                Name::from_ascii("x.").unwrap(),
                0,
                RData::A(hickory_proto::rr::rdata::A::new(1, 2, 3, 4)),
            ));
            let r = ask(&a, &q, Transport::Udp);
            assert_eq!(r.edns.unwrap().flags().dnssec_ok, dnssec_ok, "slow path");
            assert!(r.metadata.checking_disabled, "slow path echoes CD");
        }
    }

    #[test]
    fn a_query_for_opt_is_a_format_error() {
        let a = answers();
        for edns in [false, true] {
            let r = ask(
                &a,
                &query("example.org.", RecordType::OPT, edns),
                Transport::Udp,
            );
            assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        }
    }

    #[test]
    fn slips_carry_opt_and_claim_authority_only_in_the_zone() {
        let a = answers();
        let mut out = Vec::new();
        let q = query("example.org.", RecordType::MX, true)
            .to_vec()
            .unwrap();
        assert_eq!(a.truncated(&q, &mut out), Reply::Send);
        let r = Message::from_vec(&out).unwrap();
        assert!(r.metadata.truncation && r.metadata.authoritative);
        assert_eq!(r.edns.map(|e| e.max_payload()), Some(EDNS_PAYLOAD));
        let q = query("example.com.", RecordType::MX, false)
            .to_vec()
            .unwrap();
        assert_eq!(a.truncated(&q, &mut out), Reply::Send);
        let r = Message::from_vec(&out).unwrap();
        assert!(r.metadata.truncation && !r.metadata.authoritative);
        assert!(r.edns.is_none());
    }

    #[test]
    fn ipv4_mapped_secondaries_may_transfer() {
        let a = answers();
        let axfr = query("example.org.", RecordType::AXFR, false)
            .to_vec()
            .unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.53]:4000".parse().unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            a.respond(&axfr, mapped, Transport::Tcp, &mut out),
            Reply::Transfer(_)
        ));
    }
}

//! Our own zone's records handed to `mail-auth` as its DNS "cache": a question about a
//! name of our zone is answered from the zone the agent serves (the DKIM keys, SPF and
//! DMARC records just published), never from a resolver that may not know them yet or
//! cannot be reached; any other name is left to the resolver.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use hickory_proto::rr::{Name, RData};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::Dmarc;
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::spf::Spf;
use mail_auth::{DnsError, DnssecStatus, Error, RecordSet, ResolverCache, Txt, MX};

use crate::dns::Zone;

/// The answers for every name of the zone (none by default: the DNS server is not
/// running), by lowercase FQDN (`name.example.org.`).
#[derive(Default)]
pub struct OwnZone {
    pub txt: Answers<Txt>,
    pub mx: Answers<RecordSet<MX>>,
    pub ipv4: Answers<RecordSet<Ipv4Addr>>,
    pub ipv6: Answers<RecordSet<Ipv6Addr>>,
}

impl OwnZone {
    pub fn new(zone: &Zone) -> OwnZone {
        let fqdn = |n: &Name| n.to_ascii().to_ascii_lowercase();
        let origin = fqdn(&zone.origin);
        let records: Vec<(String, &RData)> = zone
            .records
            .iter()
            .map(|r| (fqdn(&r.name), &r.data))
            .collect();
        // Every name with records, and the DMARC policy names a check asks about even
        // when absent (so that "none" is the answer, not a resolver's failure).
        let mut names: Vec<String> = records.iter().map(|(n, _)| n.clone()).collect();
        names.push(origin.clone());
        let policies: Vec<String> = names
            .iter()
            .filter(|n| !n.starts_with('_'))
            .map(|n| format!("_dmarc.{n}"))
            .collect();
        names.extend(policies);
        names.sort();
        names.dedup();
        let mut own = OwnZone::default();
        for name in names {
            let at = || records.iter().filter(|(n, _)| *n == name).map(|(_, d)| *d);
            let texts: Vec<Vec<u8>> = at()
                .filter_map(|d| match d {
                    RData::TXT(txt) => Some(txt.txt_data.concat()),
                    _ => None,
                })
                .collect();
            let key: Box<str> = name.clone().into();
            own.mx.0.insert(
                key.clone(),
                record_set(
                    at().filter_map(|d| match d {
                        RData::MX(mx) => Some(MX {
                            exchanges: vec![fqdn(&mx.exchange).into()].into(),
                            preference: mx.preference,
                        }),
                        _ => None,
                    })
                    .collect(),
                ),
            );
            own.ipv4.0.insert(
                key.clone(),
                record_set(
                    at().filter_map(|d| match d {
                        RData::A(a) => Some(a.0),
                        _ => None,
                    })
                    .collect(),
                ),
            );
            own.ipv6.0.insert(
                key.clone(),
                record_set(
                    at().filter_map(|d| match d {
                        RData::AAAA(a) => Some(a.0),
                        _ => None,
                    })
                    .collect(),
                ),
            );
            own.txt.0.insert(key, parse_txt(&name, &texts));
        }
        own
    }
}

fn record_set<T>(rrset: Vec<T>) -> RecordSet<T> {
    RecordSet {
        rrset: rrset.into(),
        dnssec_status: DnssecStatus::Indeterminate,
    }
}

/// The TXT answer parsed as what the name's shape says is asked for there: a DMARC
/// policy, a DKIM key, else an SPF record.
fn parse_txt(name: &str, texts: &[Vec<u8>]) -> Txt {
    if texts.is_empty() {
        return Txt::Error(Error::Dns(DnsError::RecordNotFound(ResponseCode::NXDomain)));
    }
    let parsed = if name.starts_with("_dmarc.") {
        texts
            .iter()
            .find_map(|t| Dmarc::parse(t).ok().map(Txt::from))
    } else if name.contains("._domainkey.") {
        texts
            .iter()
            .find_map(|t| DomainKey::parse(t).ok().map(Txt::from))
    } else {
        texts.iter().find_map(|t| Spf::parse(t).ok().map(Txt::from))
    };
    parsed.unwrap_or(Txt::Error(Error::Dns(DnsError::InvalidRecordType)))
}

/// One record type's answers; `insert` keeps nothing (the resolver's answers for other
/// names are not ours to keep).
pub struct Answers<V>(HashMap<Box<str>, V>);

impl<V> Default for Answers<V> {
    fn default() -> Self {
        Answers(HashMap::new())
    }
}

impl<V: Clone> ResolverCache<Box<str>, V> for Answers<V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get(name).cloned()
    }

    fn remove<Q>(&self, _: &Q) -> Option<V>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: Box<str>, _: V, _: Instant) {}
}

/// PTR questions are never ours: reverse zones are the address owner's.
pub struct NoPtr;

impl ResolverCache<IpAddr, RecordSet<Box<str>>> for NoPtr {
    fn get<Q>(&self, _: &Q) -> Option<RecordSet<Box<str>>>
    where
        IpAddr: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn remove<Q>(&self, _: &Q) -> Option<RecordSet<Box<str>>>
    where
        IpAddr: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: IpAddr, _: RecordSet<Box<str>>, _: Instant) {}
}

//! `[dns]` (the zone this appliance serves), `[[dns.record]]` (extra records) and
//! `[[account]]` (one mail subdomain each), checked for meaning and for conflicts with
//! the records the appliance derives itself.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hickory_proto::rr::rdata::{CNAME, MX, NS, SRV, TXT};
use hickory_proto::rr::{Name, RData, RecordType};
use serde::Deserialize;
use toml::Spanned;

use super::diagnostic::Collector;
use super::system::{check_password_hash, is_rfc1123_label, System};

/// The served zone's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// Published instead of the interface addresses when the appliance is behind NAT.
    pub public_ipv4: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    /// Where the server listens; empty means port 53 on every interface address.
    pub listen: Vec<SocketAddr>,
    /// Secondaries: the only source addresses allowed AXFR, and where NOTIFY goes
    /// (port 53 unless the entry names another).
    pub secondaries: Vec<SocketAddr>,
    /// Responses per second per source prefix; 0 turns rate limiting off.
    pub rate_limit: u32,
    pub records: Vec<ExtraRecord>,
}

pub const DEFAULT_RATE_LIMIT: u32 = 20;

impl Default for Dns {
    fn default() -> Self {
        Dns {
            public_ipv4: None,
            public_ipv6: None,
            listen: Vec::new(),
            secondaries: Vec::new(),
            rate_limit: DEFAULT_RATE_LIMIT,
            records: Vec::new(),
        }
    }
}

/// One `[[dns.record]]`, with its name made absolute and its value parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraRecord {
    pub name: Name,
    pub ttl: Option<u32>,
    pub rdata: RData,
}

/// One `[[account]]`: a mail subdomain `<name>.<domain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub password_hash: String,
}

/// Labels the appliance publishes itself: an account or record may not take them over.
pub const NAMESERVER_LABEL: &str = "ns1";
const RECORD_TYPES: &str = "A, AAAA, CNAME, TXT, MX, SRV or CAA";
/// Longest TXT value accepted; longer values do not fit a DNS response comfortably.
const TXT_MAX: usize = 4000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    public_ipv4: Option<Spanned<String>>,
    public_ipv6: Option<Spanned<String>>,
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    #[serde(default)]
    secondaries: Vec<Spanned<String>>,
    rate_limit: Option<Spanned<u32>>,
    #[serde(default)]
    record: Vec<RawRecord>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    name: Spanned<String>,
    #[serde(rename = "type")]
    rtype: Spanned<String>,
    value: Spanned<String>,
    ttl: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccount {
    name: Spanned<String>,
    password_hash: Spanned<String>,
}

pub(super) fn validate_dns(raw: Option<RawDns>, system: &System, c: &mut Collector) -> Dns {
    let Some(raw) = raw else {
        return Dns::default();
    };
    let mut dns = Dns {
        public_ipv4: raw
            .public_ipv4
            .as_ref()
            .and_then(|s| parse_or_report(s, c, "an IPv4 address such as \"203.0.113.7\"")),
        public_ipv6: raw
            .public_ipv6
            .as_ref()
            .and_then(|s| parse_or_report(s, c, "an IPv6 address such as \"2001:db8::7\"")),
        listen: raw
            .listen
            .iter()
            .filter_map(|s| {
                let expected =
                    "an address with port such as \"192.0.2.10:53\" or \"[2001:db8::10]:53\"";
                let addr: SocketAddr = parse_or_report(s, c, expected)?;
                // A wildcard socket sees IPv4 clients as ::ffff:a.b.c.d and answers from
                // whichever address routing picks: rate limiting, the AXFR list and the
                // reply's source address all need the real one.
                if addr.ip().is_unspecified() {
                    c.error(
                        s.span(),
                        format!(
                            "wildcard address {:?}; expected a specific address with port \
                             such as \"192.0.2.10:53\" (leave `listen` out to serve on every \
                             interface address)",
                            s.get_ref()
                        ),
                    );
                    return None;
                }
                Some(addr)
            })
            .collect(),
        secondaries: raw
            .secondaries
            .iter()
            .filter_map(|s| match s.get_ref().parse::<IpAddr>() {
                Ok(ip) => Some(SocketAddr::new(ip, 53)),
                Err(_) => parse_or_report(
                    s,
                    c,
                    "an IP address such as \"192.0.2.53\" or \"2001:db8::53\", optionally \
                     with a NOTIFY port as \"192.0.2.53:5353\"",
                ),
            })
            .collect(),
        rate_limit: raw.rate_limit.map_or(DEFAULT_RATE_LIMIT, |r| *r.get_ref()),
        records: Vec::new(),
    };
    let Ok(origin) = Name::from_ascii(format!("{}.", system.domain)) else {
        return dns; // An invalid domain was reported with [system].
    };
    dns.records = validate_records(raw.record, system, &origin, c);
    dns
}

fn parse_or_report<T: std::str::FromStr>(
    s: &Spanned<String>,
    c: &mut Collector,
    expected: &str,
) -> Option<T> {
    let parsed = s.get_ref().parse().ok();
    if parsed.is_none() {
        c.error(
            s.span(),
            format!("invalid address {:?}; expected {expected}", s.get_ref()),
        );
    }
    parsed
}

/// TTL of every record letterbox derives, and of extra records without their own.
pub const DERIVED_TTL: u32 = 3600;
const DMARC: &str = "v=DMARC1; p=reject; adkim=s; aspf=s";
/// SPF of names that receive mail (the domain and accounts), of the mail host (its HELO
/// identity sends), and of names that send no mail at all.
pub const SPF_MAIL: &str = "v=spf1 mx -all";
const SPF_HOST: &str = "v=spf1 a -all";
pub const SPF_NONE: &str = "v=spf1 -all";

/// One entry of what letterbox itself publishes at a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Derived {
    /// The appliance's public A and AAAA records.
    Addresses,
    Data(RData),
    /// `<selector>._domainkey` TXT for each DKIM key in the state directory; the name is
    /// the `_domainkey` parent.
    DkimKeys,
}

/// Everything letterbox publishes from `[system]`, in publication order (accounts come
/// after it). The one table: `zone::build` publishes it and validation checks
/// `[[dns.record]]` against it.
pub fn derived_records(system: &System) -> Result<Vec<(Name, Derived)>, hickory_proto::ProtoError> {
    let origin = Name::from_ascii(format!("{}.", system.domain))?;
    let at = |label: &str| Name::from_ascii(label)?.append_domain(&origin);
    let host = at(&system.hostname)?;
    let ns1 = at(NAMESERVER_LABEL)?;
    let txt = |s: &str| Derived::Data(RData::TXT(txt_split(s)));
    let mx = |pref: u16, to: &Name| Derived::Data(RData::MX(MX::new(pref, to.clone())));
    Ok(vec![
        (origin.clone(), Derived::Data(RData::NS(NS(ns1.clone())))),
        (origin.clone(), Derived::Addresses),
        (origin.clone(), mx(10, &host)),
        (origin.clone(), txt(SPF_MAIL)),
        (at("_dmarc")?, txt(DMARC)),
        (at("_domainkey")?, Derived::DkimKeys),
        // The mail host sends (HELO identity) but receives only for the domain and accounts.
        (host.clone(), Derived::Addresses),
        (host, txt(SPF_HOST)),
        (ns1.clone(), Derived::Addresses),
        (ns1.clone(), mx(0, &Name::root())),
        (ns1, txt(SPF_NONE)),
    ])
}

fn starts_with(rdata: &RData, prefix: &str) -> bool {
    match rdata {
        RData::TXT(txt) => txt.txt_data.first().is_some_and(|s| {
            s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        }),
        _ => false,
    }
}

/// Whether `rdata` is an SPF record (a TXT starting `v=spf1`).
pub fn is_spf(rdata: &RData) -> bool {
    starts_with(rdata, "v=spf1")
}

fn validate_records(
    raw: Vec<RawRecord>,
    system: &System,
    origin: &Name,
    c: &mut Collector,
) -> Vec<ExtraRecord> {
    let Ok(derived) = derived_records(system) else {
        return Vec::new(); // An invalid hostname or domain was reported with [system].
    };
    let mut derived_at: HashSet<Name> = HashSet::new();
    let mut addresses_at: HashSet<Name> = HashSet::new();
    let mut dkim_parent = None;
    // Every record seen so far, derived ones included, so that copies are caught.
    let mut seen: HashSet<(Name, RData)> = HashSet::new();
    // The TTL of each RRset so far: all records of one name and type share it.
    let mut rrset_ttl: HashMap<(Name, RecordType), u32> = HashMap::new();
    for (name, d) in &derived {
        derived_at.insert(name.clone());
        match d {
            Derived::Addresses => {
                addresses_at.insert(name.clone());
                for t in [RecordType::A, RecordType::AAAA] {
                    rrset_ttl.insert((name.clone(), t), DERIVED_TTL);
                }
            }
            Derived::Data(rdata) => {
                seen.insert((name.clone(), rdata.clone()));
                rrset_ttl.insert((name.clone(), rdata.record_type()), DERIVED_TTL);
            }
            Derived::DkimKeys => dkim_parent = Some(name.clone()),
        }
    }
    let derived_has = |name: &Name, is: &dyn Fn(&RData) -> bool| {
        derived
            .iter()
            .any(|(n, d)| n == name && matches!(d, Derived::Data(r) if is(r)))
    };
    // Names seen so far with a CNAME, and with other data, for the CNAME checks.
    let mut cname_at: HashSet<Name> = HashSet::new();
    let mut data_at: HashSet<Name> = HashSet::new();
    let mut spf_at: HashSet<Name> = HashSet::new();
    let mut out = Vec::new();

    for r in raw {
        let Some(name) = record_name(&r.name, origin, c) else {
            continue;
        };
        let Some(rdata) = record_value(&r.rtype, &r.value, origin, c) else {
            continue;
        };
        let is_derived = derived_at.contains(&name);
        if let Some(parent) = dkim_parent.as_ref().filter(|p| p.zone_of(&name)) {
            c.error(
                r.name.span(),
                format!(
                    "a record under {parent}, where letterbox publishes the DKIM keys of \
                     STATE/dkim/<selector>.pub; expected records at other names (add a key \
                     file instead)"
                ),
            );
            continue;
        }
        match &rdata {
            RData::CNAME(_) => {
                if is_derived {
                    c.error(
                        r.rtype.span(),
                        format!(
                            "a CNAME at {name} would sit beside the records letterbox publishes \
                             there; expected a CNAME only at a name with no other data"
                        ),
                    );
                    continue;
                }
                if data_at.contains(&name) {
                    c.error(
                        r.rtype.span(),
                        format!(
                            "a CNAME at {name} beside other records of that name; expected a \
                             CNAME to be the only record at its name"
                        ),
                    );
                    continue;
                }
                if !cname_at.insert(name.clone()) {
                    c.error(
                        r.rtype.span(),
                        format!("a second CNAME at {name}; expected at most one CNAME per name"),
                    );
                    continue;
                }
            }
            _ => {
                if cname_at.contains(&name) {
                    c.error(
                        r.rtype.span(),
                        format!(
                            "a record of type {} at {name} beside its CNAME; expected a CNAME \
                             to be the only record at its name",
                            rdata.record_type()
                        ),
                    );
                    continue;
                }
                data_at.insert(name.clone());
            }
        }
        if matches!(rdata, RData::A(_) | RData::AAAA(_)) && addresses_at.contains(&name) {
            c.error(
                r.rtype.span(),
                format!(
                    "an address record at {name}, where letterbox publishes the appliance's \
                     addresses (public_ipv4/public_ipv6 or the interface addresses); expected \
                     address records at other names"
                ),
            );
            continue;
        }
        let null_mx = |d: &RData| matches!(d, RData::MX(mx) if mx.exchange.is_root());
        if matches!(rdata, RData::MX(_)) && derived_has(&name, &null_mx) {
            c.error(
                r.rtype.span(),
                format!(
                    "an MX at {name}, which letterbox publishes as sending and receiving no \
                     mail (null MX); expected MX records at other names"
                ),
            );
            continue;
        }
        if is_spf(&rdata) && (derived_has(&name, &is_spf) || !spf_at.insert(name.clone())) {
            c.error(
                r.value.span(),
                format!(
                    "a second SPF record at {name}; expected one `v=spf1` TXT per name \
                     (letterbox publishes one at the domain, the host and every account)"
                ),
            );
            continue;
        }
        let is_dmarc = |d: &RData| starts_with(d, "v=DMARC1");
        if is_dmarc(&rdata) && derived_has(&name, &is_dmarc) {
            c.error(
                r.value.span(),
                format!(
                    "a second DMARC record at {name}; expected none there (letterbox \
                     publishes \"{DMARC}\")"
                ),
            );
            continue;
        }
        if !seen.insert((name.clone(), rdata.clone())) {
            let by = if is_derived {
                " (letterbox publishes it)"
            } else {
                ""
            };
            c.error(
                r.name.span(),
                format!(
                    "duplicate {} record at {name}{by}; expected each record once",
                    rdata.record_type()
                ),
            );
            continue;
        }
        let ttl = r.ttl.as_ref().map_or(DERIVED_TTL, |t| *t.get_ref());
        let set_ttl = *rrset_ttl
            .entry((name.clone(), rdata.record_type()))
            .or_insert(ttl);
        if set_ttl != ttl {
            let span = r.ttl.as_ref().map_or(r.name.span(), |t| t.span());
            c.error(
                span,
                format!(
                    "TTL {ttl} for a {} record at {name}; expected TTL {set_ttl} like the rest \
                     of the set (all records of one name and type share one TTL)",
                    rdata.record_type()
                ),
            );
            continue;
        }
        out.push(ExtraRecord {
            name,
            ttl: r.ttl.map(|t| *t.get_ref()),
            rdata,
        });
    }
    out
}

/// The name relative to the origin: "@" for the apex, else the labels before the domain.
fn relative_label(name: &Name, origin: &Name) -> String {
    let n = name.to_ascii().to_ascii_lowercase();
    let o = origin.to_ascii().to_ascii_lowercase();
    if n == o {
        "@".to_string()
    } else {
        n.strip_suffix(&format!(".{o}")).unwrap_or(&n).to_string()
    }
}

fn record_name(raw: &Spanned<String>, origin: &Name, c: &mut Collector) -> Option<Name> {
    let text = raw.get_ref().trim();
    // No '*': wildcards are not served, so a wildcard record would silently do nothing.
    let expected = "expected \"@\" for the domain itself, a name relative to the domain such as \
                    \"www\" or \"_sip._tcp\" (letters, digits, '-' and '_'), or an absolute \
                    name ending in the domain and '.'";
    let name = if text == "@" {
        Some(origin.clone())
    } else if text.is_empty() {
        None
    } else if text.ends_with('.') {
        Name::from_ascii(text).ok()
    } else {
        Name::from_ascii(text)
            .ok()
            .and_then(|n| n.append_domain(origin).ok())
    };
    let ok_labels = name.as_ref().is_some_and(|n| {
        n.iter().all(|l| {
            !l.is_empty()
                && l.iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        })
    });
    match name {
        Some(n) if ok_labels && origin.zone_of(&n) => Some(n.to_lowercase()),
        Some(n) if ok_labels => {
            c.error(
                raw.span(),
                format!("name {n} is outside the zone {origin}; {expected}"),
            );
            None
        }
        _ => {
            c.error(
                raw.span(),
                format!("invalid record name {:?}; {expected}", raw.get_ref()),
            );
            None
        }
    }
}

fn record_value(
    rtype: &Spanned<String>,
    value: &Spanned<String>,
    origin: &Name,
    c: &mut Collector,
) -> Option<RData> {
    let t = rtype.get_ref().to_ascii_uppercase();
    let v = value.get_ref().trim();
    let (record_type, example) = match t.as_str() {
        "A" => (RecordType::A, "\"192.0.2.20\""),
        "AAAA" => (RecordType::AAAA, "\"2001:db8::20\""),
        "CNAME" => (RecordType::CNAME, "\"mail\" or \"host.example.net.\""),
        "MX" => (RecordType::MX, "\"10 mail\" (preference, then host)"),
        "SRV" => (
            RecordType::SRV,
            "\"10 5 443 mail\" (priority, weight, port, target)",
        ),
        "CAA" => (RecordType::CAA, "'0 issue \"letsencrypt.org\"'"),
        "TXT" => {
            if v.is_empty() || v.len() > TXT_MAX {
                c.error(
                    value.span(),
                    format!(
                        "TXT value of {} bytes; expected 1 to {TXT_MAX} bytes (longer values \
                         are split into 255-byte strings automatically)",
                        v.len()
                    ),
                );
                return None;
            }
            return Some(RData::TXT(txt_split(v)));
        }
        _ => {
            c.error(
                rtype.span(),
                format!(
                    "unsupported record type {:?}; expected one of {RECORD_TYPES}",
                    rtype.get_ref()
                ),
            );
            return None;
        }
    };
    let bad = |c: &mut Collector, why: String| {
        c.error(
            value.span(),
            format!("invalid {t} value {v:?} ({why}); expected e.g. {example}"),
        );
    };
    let rdata = match RData::try_from_str(record_type, v) {
        Ok(r) => r,
        Err(e) => {
            bad(c, e.to_string());
            return None;
        }
    };
    // hickory reads names without an origin: make relative targets absolute in the zone.
    let absolute = |n: &Name| {
        if n.is_fqdn() {
            Ok(n.clone())
        } else {
            n.clone().append_domain(origin)
        }
    };
    let rdata = match rdata {
        RData::CNAME(CNAME(target)) => absolute(&target).map(|t| RData::CNAME(CNAME(t))),
        RData::MX(mx) => absolute(&mx.exchange).map(|t| RData::MX(MX::new(mx.preference, t))),
        RData::SRV(srv) => absolute(&srv.target)
            .map(|t| RData::SRV(SRV::new(srv.priority, srv.weight, srv.port, t))),
        other => Ok(other),
    };
    match rdata {
        Ok(r) => Some(r),
        Err(e) => {
            bad(c, e.to_string());
            None
        }
    }
}

/// One TXT value as strings of at most 255 bytes, the limit of a DNS character-string.
pub fn txt_split(value: &str) -> TXT {
    TXT::from_bytes(value.as_bytes().chunks(255).collect())
}

pub(super) fn validate_accounts(
    raw: Vec<RawAccount>,
    system: &System,
    dns: &Dns,
    c: &mut Collector,
) -> Vec<Account> {
    let origin = Name::from_ascii(format!("{}.", system.domain)).ok();
    let mut reserved: Vec<String> = vec![
        system.hostname.clone(),
        NAMESERVER_LABEL.to_string(),
        "_dmarc".to_string(),
        "_domainkey".to_string(),
    ];
    if let Some(origin) = &origin {
        reserved.extend(
            dns.records
                .iter()
                .map(|r| relative_label(&r.name, origin))
                .filter(|l| !l.contains('.') && l != "@"),
        );
    }
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for a in raw {
        let name = a.name.get_ref().to_ascii_lowercase();
        if !is_rfc1123_label(&name) {
            c.error(
                a.name.span(),
                format!(
                    "invalid account name {:?}; expected one RFC 1123 label: 1 to 63 letters, \
                     digits or '-', not starting or ending with '-', e.g. \"alice\"",
                    a.name.get_ref()
                ),
            );
        } else if reserved.contains(&name) {
            c.error(
                a.name.span(),
                format!(
                    "account name {name:?} clashes with a name letterbox publishes or a \
                     [[dns.record]]; expected a name other than {}",
                    reserved.join(", ")
                ),
            );
        } else if !names.insert(name.clone()) {
            c.error(
                a.name.span(),
                format!("account {name:?} is listed twice; expected each account once"),
            );
        }
        if let Err(why) = check_password_hash(a.password_hash.get_ref()) {
            c.error(
                a.password_hash.span(),
                why.replace("admin_password_hash", "password_hash"),
            );
        }
        out.push(Account {
            name,
            password_hash: a.password_hash.into_inner(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    /// A real SHA-512 crypt hash of "letterbox".
    const HASH: &str = "$6$saltsaltsalt$S/Pf/kKX1rCNRo4NCSDP1C7O8qxgb7lD0RhObcGYaY.ETFEN6GtQYVXCn22/nm.Ujp4KjOqcwTpiIrOQ.hq6S/";

    fn file(extra: &str) -> String {
        format!(
            "version = 1\n[system]\nhostname = \"mail\"\ndomain = \"example.org\"\n\
             [[interface]]\nname = \"eth0\"\nipv4 = [\"192.0.2.10/24\"]\n{extra}"
        )
    }

    fn account(name: &str) -> String {
        format!("[[account]]\nname = \"{name}\"\npassword_hash = \"{HASH}\"\n")
    }

    /// Line and column (1-based) of the first occurrence of `needle` after `after`.
    fn position(text: &str, after: &str, needle: &str) -> (usize, usize) {
        let from = text.find(after).expect("anchor in the text");
        let at = from + text[from..].find(needle).expect("needle in the text");
        let line = text[..at].matches('\n').count() + 1;
        let column = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, column)
    }

    /// Asserts exactly one error, at `needle` (searched after `after`), mentioning `what`.
    fn assert_error(text: &str, after: &str, needle: &str, what: &str) {
        let errs = parse("t.toml", text).expect_err("expected an error").0;
        assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
        let d = &errs[0];
        assert_eq!(
            (d.line, d.column),
            position(text, after, needle),
            "position of {:?}",
            d.message
        );
        assert!(
            d.message.contains(what),
            "{:?} should mention {what:?}",
            d.message
        );
        assert!(
            d.message.contains("expected"),
            "{:?} says what was expected",
            d.message
        );
    }

    fn record(name: &str, rtype: &str, value: &str) -> String {
        format!("[[dns.record]]\nname = \"{name}\"\ntype = \"{rtype}\"\nvalue = '{value}'\n")
    }

    #[test]
    fn a_full_dns_section_parses() {
        let text = file(&format!(
            "[dns]\npublic_ipv4 = \"203.0.113.7\"\nsecondaries = [\"198.51.100.53\", \
             \"127.0.0.2:5353\"]\nrate_limit = 0\n{}{}{}{}",
            record("www", "CNAME", "mail"),
            record("_imaps._tcp", "SRV", "0 1 993 mail"),
            record("@", "TXT", &"x".repeat(600)),
            account("Alice"),
        ));
        let cfg = parse("t.toml", &text).unwrap();
        assert_eq!(cfg.dns.rate_limit, 0);
        assert_eq!(cfg.dns.secondaries[0].to_string(), "198.51.100.53:53");
        assert_eq!(cfg.dns.secondaries[1].to_string(), "127.0.0.2:5353");
        assert_eq!(cfg.dns.records[0].name.to_string(), "www.example.org.");
        assert_eq!(cfg.dns.records[0].rdata.to_string(), "mail.example.org.");
        assert_eq!(
            cfg.dns.records[1].rdata.to_string(),
            "0 1 993 mail.example.org."
        );
        match &cfg.dns.records[2].rdata {
            hickory_proto::rr::RData::TXT(txt) => {
                let lens: Vec<usize> = txt.txt_data.iter().map(|s| s.len()).collect();
                assert_eq!(lens, [255, 255, 90], "long TXT split into 255-byte strings");
            }
            other => panic!("not TXT: {other:?}"),
        }
        assert_eq!(cfg.accounts[0].name, "alice");
    }

    #[test]
    fn defaults_without_a_dns_section() {
        let cfg = parse("t.toml", &file("")).unwrap();
        assert_eq!(cfg.dns.rate_limit, super::DEFAULT_RATE_LIMIT);
        assert!(cfg.dns.records.is_empty() && cfg.accounts.is_empty());
    }

    #[test]
    fn cname_beside_other_data() {
        let text = file(&format!(
            "[dns]\n{}{}",
            record("files", "A", "192.0.2.20"),
            record("files", "CNAME", "mail")
        ));
        assert_error(
            &text,
            "\"CNAME\"",
            "\"CNAME\"",
            "CNAME at files.example.org.",
        );
        let text = file(&format!(
            "[dns]\n{}{}",
            record("files", "CNAME", "mail"),
            record("files", "TXT", "hello")
        ));
        assert_error(&text, "\"TXT\"", "\"TXT\"", "beside its CNAME");
    }

    #[test]
    fn cname_at_a_name_letterbox_publishes() {
        let text = file(&format!(
            "[dns]\n{}",
            record("mail", "CNAME", "elsewhere.net.")
        ));
        assert_error(&text, "\"CNAME\"", "\"CNAME\"", "letterbox publishes");
        let text = file(&format!(
            "[dns]\n{}",
            record("@", "CNAME", "elsewhere.net.")
        ));
        assert_error(&text, "\"CNAME\"", "\"CNAME\"", "letterbox publishes");
    }

    #[test]
    fn name_outside_the_zone() {
        let text = file(&format!(
            "[dns]\n{}",
            record("www.example.com.", "A", "192.0.2.1")
        ));
        assert_error(
            &text,
            "[[dns.record]]",
            "\"www.example.com.\"",
            "outside the zone",
        );
        let text = file(&format!("[dns]\n{}", record("bad name", "A", "192.0.2.1")));
        assert_error(
            &text,
            "[[dns.record]]",
            "\"bad name\"",
            "invalid record name",
        );
    }

    #[test]
    fn bad_values() {
        let text = file(&format!(
            "[dns]\n{}",
            record("_sip._tcp", "SRV", "10 5 mail")
        ));
        assert_error(&text, "value =", "'10 5 mail'", "invalid SRV value");
        let text = file(&format!("[dns]\n{}", record("x", "A", "2001:db8::1")));
        assert_error(&text, "value =", "'2001:db8::1'", "invalid A value");
        let text = file(&format!("[dns]\n{}", record("x", "MX", "mail")));
        assert_error(&text, "value =", "'mail'", "invalid MX value");
        let text = file(&format!("[dns]\n{}", record("x", "NS", "ns2.example.net.")));
        assert_error(&text, "type =", "\"NS\"", "unsupported record type");
        let text = file("[dns]\npublic_ipv4 = \"2001:db8::1\"\n");
        assert_error(&text, "public_ipv4", "\"2001:db8::1\"", "invalid address");
        let text = file("[dns]\nsecondaries = [\"ns2.example.net\"]\n");
        assert_error(&text, "secondaries", "\"ns2", "invalid address");
        let text = file("[dns]\nrate_limit = -1\n");
        assert!(parse("t.toml", &text).is_err());
    }

    #[test]
    fn txt_too_long() {
        let long = "x".repeat(super::TXT_MAX + 1);
        let text = file(&format!("[dns]\n{}", record("x", "TXT", &long)));
        assert_error(&text, "value =", "'xxx", "TXT value of 4001 bytes");
    }

    #[test]
    fn second_spf_and_mx_at_a_no_mail_name() {
        let text = file(&format!("[dns]\n{}", record("@", "TXT", "v=spf1 a -all")));
        assert_error(&text, "value =", "'v=spf1", "second SPF record");
        let text = file(&format!("[dns]\n{}", record("ns1", "MX", "10 mail")));
        assert_error(&text, "type =", "\"MX\"", "null MX");
    }

    #[test]
    fn duplicate_record() {
        let r = record("x", "A", "192.0.2.1");
        let text = file(&format!("[dns]\n{r}{r}\n"));
        let errs = parse("t.toml", &text).expect_err("duplicate").0;
        assert_eq!(errs.len(), 1, "{errs:#?}");
        let second = text.rfind("name = \"x\"").unwrap() + "name = ".len();
        let line = text[..second].matches('\n').count() + 1;
        assert_eq!((errs[0].line, errs[0].column), (line, 8));
        assert!(errs[0].message.contains("duplicate A record"));
    }

    #[test]
    fn account_names() {
        let text = file(&account("not_a_label"));
        assert_error(
            &text,
            "[[account]]",
            "\"not_a_label\"",
            "invalid account name",
        );
        for taken in ["mail", "ns1"] {
            let text = file(&account(taken));
            assert_error(&text, "[[account]]", &format!("\"{taken}\""), "clashes");
        }
        let text = file(&format!(
            "[dns]\n{}{}",
            record("www", "A", "192.0.2.1"),
            account("www")
        ));
        assert_error(&text, "[[account]]", "\"www\"", "clashes");
        let text = file(&format!("{}{}", account("bob"), account("Bob")));
        assert_error(&text, "name = \"Bob\"", "\"Bob\"", "listed twice");
        let text = file("[[account]]\nname = \"carol\"\npassword_hash = \"hunter2\"\n");
        assert_error(&text, "password_hash", "\"hunter2\"", "not a hash");
        assert!(!parse("t.toml", &text)
            .unwrap_err()
            .to_string()
            .contains("hunter2\" ("));
    }

    fn record_ttl(name: &str, rtype: &str, value: &str, ttl: u32) -> String {
        format!("{}ttl = {ttl}\n", record(name, rtype, value))
    }

    #[test]
    fn wildcard_listen_addresses() {
        for wildcard in ["[::]:53", "0.0.0.0:53"] {
            let text = file(&format!("[dns]\nlisten = [\"{wildcard}\"]\n"));
            assert_error(
                &text,
                "listen",
                &format!("\"{wildcard}"),
                "wildcard address",
            );
            assert!(parse("t.toml", &text)
                .unwrap_err()
                .to_string()
                .contains("expected a specific address"));
        }
        let text = file("[dns]\nlisten = [\"127.0.0.1:5353\", \"[::1]:5353\"]\n");
        assert_eq!(parse("t.toml", &text).unwrap().dns.listen.len(), 2);
    }

    #[test]
    fn mixed_ttls_in_one_rrset() {
        // Joining a derived set (the domain's MX) with another TTL.
        let text = file(&format!(
            "[dns]\n{}",
            record_ttl("@", "MX", "20 backup.example.net.", 600)
        ));
        assert_error(
            &text,
            "ttl =",
            "600",
            "expected TTL 3600 like the rest of the set",
        );
        // Two extra records of one set with different TTLs; the second has the default.
        let text = file(&format!(
            "[dns]\n{}{}",
            record_ttl("files", "A", "192.0.2.20", 60),
            record("files", "A", "192.0.2.21")
        ));
        assert_error(
            &text,
            "ttl = 60",
            "\"files\"",
            "expected TTL 60 like the rest of the set",
        );
        // One TTL for the whole set is fine, and so is the derived TTL spelled out.
        let text = file(&format!(
            "[dns]\n{}{}{}",
            record_ttl("files", "A", "192.0.2.20", 60),
            record_ttl("files", "A", "192.0.2.21", 60),
            record_ttl("@", "MX", "20 backup.example.net.", 3600),
        ));
        assert_eq!(parse("t.toml", &text).unwrap().dns.records.len(), 3);
    }

    #[test]
    fn records_that_repeat_what_letterbox_publishes() {
        let text = file(&format!("[dns]\n{}", record("@", "MX", "10 mail")));
        assert_error(
            &text,
            "[[dns.record]]",
            "\"@\"",
            "duplicate MX record at example.org. (letterbox publishes it)",
        );
        let text = file(&format!(
            "[dns]\n{}",
            record("_dmarc", "TXT", "v=DMARC1; p=none")
        ));
        assert_error(&text, "value =", "'v=DMARC1", "second DMARC record");
        let text = file(&format!(
            "[dns]\n{}",
            record("sel._domainkey", "TXT", "v=DKIM1; p=AAAA")
        ));
        assert_error(&text, "[[dns.record]]", "\"sel._domainkey\"", "DKIM keys");
        let text = file(&format!("[dns]\n{}", record("mail", "A", "192.0.2.99")));
        assert_error(&text, "type =", "\"A\"", "appliance's addresses");
        // A non-DMARC TXT at _dmarc and a second MX at the domain are fine.
        let text = file(&format!(
            "[dns]\n{}{}",
            record("_dmarc", "TXT", "hello"),
            record("@", "MX", "20 backup.example.net.")
        ));
        assert_eq!(parse("t.toml", &text).unwrap().dns.records.len(), 2);
    }

    #[test]
    fn hostname_ns1_is_the_nameserver() {
        let text = file("").replace("hostname = \"mail\"", "hostname = \"ns1\"");
        let errs = parse("t.toml", &text).expect_err("ns1 as hostname").0;
        assert_eq!(errs.len(), 1, "{errs:#?}");
        let line = text.lines().position(|l| l.contains("\"ns1\"")).unwrap() + 1;
        assert_eq!((errs[0].line, errs[0].column), (line, 12), "{errs:#?}");
        assert!(
            errs[0].message.contains("nameserver"),
            "{}",
            errs[0].message
        );
        assert!(errs[0].message.contains("expected another hostname"));
    }

    #[test]
    fn unknown_dns_key() {
        let text = file("[dns]\nlisten_port = 53\n");
        assert_error(&text, "[dns]", "listen_port", "unknown field");
    }
}

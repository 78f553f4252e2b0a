//! `[[dns.record]]`: extra records, each parsed into hickory data and checked against
//! the records letterbox derives and against each other (CNAME rules, copies, RRset TTLs).

use std::collections::{HashMap, HashSet};

use hickory_proto::rr::rdata::{CNAME, MX, SRV};
use hickory_proto::rr::{Name, RData, RecordType};
use serde::Deserialize;
use toml::Spanned;

use super::derived::{derived_records, is_dmarc, is_spf, txt_split, Derived, DERIVED_TTL, DMARC};
use crate::config::diagnostic::Collector;
use crate::config::system::System;
use crate::config::webmail::Webmail;

/// One `[[dns.record]]`, with its name made absolute and its value parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraRecord {
    pub name: Name,
    pub ttl: Option<u32>,
    pub rdata: RData,
}

const RECORD_TYPES: &str = "A, AAAA, CNAME, TXT, MX, SRV or CAA";
/// Longest TXT value accepted; longer values do not fit a DNS response comfortably.
pub(super) const TXT_MAX: usize = 4000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRecord {
    name: Option<Spanned<String>>,
    #[serde(rename = "type")]
    rtype: Option<Spanned<String>>,
    value: Option<Spanned<String>>,
    ttl: Option<Spanned<u32>>,
}

/// A `[[dns.record]]` with its three required keys.
pub(super) struct Given {
    name: Spanned<String>,
    rtype: Spanned<String>,
    value: Spanned<String>,
    ttl: Option<Spanned<u32>>,
    /// A bad `ttl`, reported already: the record's TTL is not compared with its set's.
    bad_ttl: bool,
}

/// The record when it has all three required keys; each missing one is reported.
pub(super) fn given(raw: Spanned<RawRecord>, c: &mut Collector) -> Option<Given> {
    let header = raw.span();
    let raw = raw.into_inner();
    let name = c.require(&raw.name, "name", header.clone()).cloned();
    let rtype = c.require(&raw.rtype, "type", header.clone()).cloned();
    let value = c.require(&raw.value, "value", header.clone()).cloned();
    Some(Given {
        bad_ttl: c.had_bad_value(&header, "ttl"),
        name: name?,
        rtype: rtype?,
        value: value?,
        ttl: raw.ttl,
    })
}

pub(super) fn validate_records(
    given: Vec<Given>,
    system: &System,
    webmail: &Webmail,
    origin: &Name,
    c: &mut Collector,
) -> Vec<ExtraRecord> {
    let Ok(derived) = derived_records(system, webmail) else {
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

    for r in given {
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
        if set_ttl != ttl && !r.bad_ttl {
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
pub(super) fn relative_label(name: &Name, origin: &Name) -> String {
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

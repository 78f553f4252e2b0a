//! `[dns]`: the zone this appliance serves. This file holds the section's own settings
//! (public addresses, listen sockets, secondaries, rate limit); its `[[dns.record]]`
//! entries, the `[[account]]` entries and the records letterbox derives itself, which
//! both are checked against, each have their own file.

mod accounts;
mod derived;
mod records;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hickory_proto::rr::Name;
use serde::Deserialize;
use toml::Spanned;

use super::diagnostic::Collector;
use super::system::System;
use super::webmail::Webmail;

pub(super) use accounts::validate_accounts;
pub use accounts::{reserved_account_names, Account};
pub use derived::{
    derived_records, is_spf, txt_split, Derived, DERIVED_TTL, NAMESERVER_LABEL, SPF_MAIL, SPF_NONE,
};
pub use records::ExtraRecord;
use records::{given, validate_records, RawRecord};

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
    record: Vec<Spanned<RawRecord>>,
}

pub(super) fn validate_dns(
    raw: Option<RawDns>,
    system: &System,
    webmail: &Webmail,
    c: &mut Collector,
) -> Dns {
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
    // Missing keys are reported even when the records cannot be checked further.
    let records: Vec<_> = raw.record.into_iter().filter_map(|r| given(r, c)).collect();
    let Ok(origin) = Name::from_ascii(format!("{}.", system.domain)) else {
        return dns; // An invalid domain was reported with [system].
    };
    dns.records = validate_records(records, system, webmail, &origin, c);
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

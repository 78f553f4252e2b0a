//! What letterbox publishes itself from `[system]`: the one table of derived records,
//! the SPF and DMARC texts in it, and the TXT helpers shared with `[[dns.record]]`.

use hickory_proto::rr::rdata::{MX, NS, TXT};
use hickory_proto::rr::{Name, RData};

use crate::config::system::System;
use crate::config::webmail::{Webmail, WEBMAIL_LABEL};

/// Labels the appliance publishes itself: an account or record may not take them over.
pub const NAMESERVER_LABEL: &str = "ns1";

/// TTL of every record letterbox derives, and of extra records without their own.
pub const DERIVED_TTL: u32 = 3600;
/// `psd=n`: our domain is its own organizational domain, which ends a receiver's DMARC
/// tree walk (RFC 9989) there, with no question about the names above it.
pub(super) const DMARC: &str = "v=DMARC1; p=reject; adkim=s; aspf=s; psd=n";
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

/// Everything letterbox publishes from `[system]` and `[webmail]`, in publication order
/// (accounts come after it). The one table: `zone::build` publishes it and validation
/// checks `[[dns.record]]` against it.
pub fn derived_records(
    system: &System,
    webmail: &Webmail,
) -> Result<Vec<(Name, Derived)>, hickory_proto::ProtoError> {
    let origin = Name::from_ascii(format!("{}.", system.domain))?;
    let at = |label: &str| Name::from_ascii(label)?.append_domain(&origin);
    let host = at(&system.hostname)?;
    let ns1 = at(NAMESERVER_LABEL)?;
    let txt = |s: &str| Derived::Data(RData::TXT(txt_split(s)));
    let mx = |pref: u16, to: &Name| Derived::Data(RData::MX(MX::new(pref, to.clone())));
    let mut records = vec![
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
    ];
    // The webmail's second name, the one people guess; the host already has it when it is
    // called `mail`. A web name only: like ns1, it receives and sends no mail.
    if webmail.enabled && system.hostname != WEBMAIL_LABEL {
        let web = at(WEBMAIL_LABEL)?;
        records.extend([
            (web.clone(), Derived::Addresses),
            (web.clone(), mx(0, &Name::root())),
            (web, txt(SPF_NONE)),
        ]);
    }
    Ok(records)
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

/// Whether `rdata` is a DMARC policy (a TXT starting `v=DMARC1`).
pub(super) fn is_dmarc(rdata: &RData) -> bool {
    starts_with(rdata, "v=DMARC1")
}

/// One TXT value as strings of at most 255 bytes, the limit of a DNS character-string.
pub fn txt_split(value: &str) -> TXT {
    TXT::from_bytes(value.as_bytes().chunks(255).collect())
}

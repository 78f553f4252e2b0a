//! `[[account]]`: one mail subdomain each, whose name may not take over a name
//! letterbox publishes or a `[[dns.record]]`.

use std::collections::HashSet;

use hickory_proto::rr::Name;
use serde::Deserialize;
use toml::Spanned;

use super::derived::NAMESERVER_LABEL;
use super::records::relative_label;
use super::Dns;
use crate::config::diagnostic::Collector;
use crate::config::system::{is_rfc1123_label, password_hash, System};

/// One `[[account]]`: a mail subdomain `<name>.<domain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub password_hash: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawAccount {
    name: Option<Spanned<String>>,
    /// Any TOML value, so that a wrong type never gets echoed by serde's error message.
    password_hash: Option<Spanned<toml::Value>>,
}

/// Labels every mail domain uses by convention: `mail` and `www` for hosts, `postmaster` and
/// `abuse` for the addresses RFC 2142 asks for.
const CONVENTIONAL_LABELS: [&str; 4] = ["mail", "www", "postmaster", "abuse"];

/// The names an account may not take: the host name, the labels letterbox publishes, the
/// conventional ones and each single-label `[[dns.record]]`. The one list for a file
/// edited by hand and for `letterbox account add`.
pub fn reserved_account_names(system: &System, dns: &Dns) -> Vec<String> {
    let mut reserved: Vec<String> = [
        system.hostname.as_str(),
        NAMESERVER_LABEL,
        "_dmarc",
        "_domainkey",
    ]
    .into_iter()
    .chain(CONVENTIONAL_LABELS)
    .map(str::to_string)
    .collect();
    if let Ok(origin) = Name::from_ascii(format!("{}.", system.domain)) {
        reserved.extend(
            dns.records
                .iter()
                .map(|r| relative_label(&r.name, &origin))
                .filter(|l| !l.contains('.') && l != "@"),
        );
    }
    reserved.sort();
    reserved.dedup();
    reserved
}

pub(in crate::config) fn validate_accounts(
    raw: Vec<Spanned<RawAccount>>,
    system: &System,
    dns: &Dns,
    c: &mut Collector,
) -> Vec<Account> {
    let reserved = reserved_account_names(system, dns);
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for a in raw {
        let header = a.span();
        let a = a.into_inner();
        // Both keys are checked even when the other is missing.
        let name = c.require(&a.name, "name", header.clone()).cloned();
        if let Some(name) = &name {
            check_name(name, &reserved, &mut names, c);
        }
        let hash = c
            .require(&a.password_hash, "password_hash", header)
            .cloned()
            .and_then(|hash| password_hash(hash, "password_hash", c));
        if let (Some(name), Some(password_hash)) = (name, hash) {
            out.push(Account {
                name: name.get_ref().to_ascii_lowercase(),
                password_hash,
            });
        }
    }
    out
}

fn check_name(
    raw: &Spanned<String>,
    reserved: &[String],
    seen: &mut HashSet<String>,
    c: &mut Collector,
) {
    let name = raw.get_ref().to_ascii_lowercase();
    if !is_rfc1123_label(&name) {
        c.error(
            raw.span(),
            format!(
                "invalid account name {:?}; expected one RFC 1123 label: 1 to 63 letters, \
                 digits or '-', not starting or ending with '-', e.g. \"alice\"",
                raw.get_ref()
            ),
        );
    } else if reserved.contains(&name) {
        c.error(
            raw.span(),
            format!(
                "account name {name:?} clashes with a name letterbox publishes or a \
                 [[dns.record]]; expected a name other than {}",
                reserved.join(", ")
            ),
        );
    } else if !seen.insert(name.clone()) {
        c.error(
            raw.span(),
            format!("account {name:?} is listed twice; expected each account once"),
        );
    }
}

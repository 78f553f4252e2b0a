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
use crate::config::system::{check_password_hash, is_rfc1123_label, System};

/// One `[[account]]`: a mail subdomain `<name>.<domain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub password_hash: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawAccount {
    name: Spanned<String>,
    password_hash: Spanned<String>,
}

pub(in crate::config) fn validate_accounts(
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

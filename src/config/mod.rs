//! The provisioning file `letterbox.toml`: parsing and validation.
//!
//! The file is parsed with recovery, then each section (and each `[[interface]]`) is
//! deserialized on its own, so that one bad section does not hide the errors of the
//! others. Meaning is checked afterwards; every problem becomes a [`Diagnostic`] with
//! file, line and column.

mod account_policy;
mod containers;
mod diagnostic;
mod dns;
mod mail;
mod network;
mod ntp;
mod redact;
mod system;
mod tls;
mod webmail;

use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml::de::{DeString, DeTable, DeValue};
use toml::Spanned;

pub use account_policy::AccountPolicy;
pub use containers::{Containers, DEFAULT_IPV4, DEFAULT_MEMORY_LIMIT, MAX_BOXES};
pub use diagnostic::{Diagnostic, Diagnostics};
pub use dns::{
    derived_records, is_spf, reserved_account_names, txt_split, Account, Derived, Dns, ExtraRecord,
    DEFAULT_RATE_LIMIT, DERIVED_TTL, NAMESERVER_LABEL, SPF_MAIL, SPF_NONE,
};
pub use mail::{Mail, Relayhost, DEFAULT_RELAYHOST_PORT};
pub use network::Interface;
pub use ntp::DEFAULT_NTP;
pub use system::{check_password_hash, Console, System};
pub use tls::{Acme, Tls, DEFAULT_ACME_DIRECTORY};
pub use webmail::{Webmail, WEBMAIL_LABEL};

use diagnostic::Collector;

/// The embedded default provisioning file, used when no file is given.
pub const DEFAULT_TOML: &str = include_str!("../../image/letterbox.toml");
pub const DEFAULT_NAME: &str = "letterbox.toml (embedded default)";

const VERSION: i64 = 1;
const SECTIONS: &str =
    "`version`, `system`, `interface`, `nameservers`, `console`, `dns`, `accounts`, `account`, \
     `containers`, `mail`, `tls`, `webmail`";

/// A validated provisioning file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub system: System,
    pub interfaces: Vec<Interface>,
    pub nameservers: Vec<IpAddr>,
    pub console: Console,
    pub dns: Dns,
    pub accounts: Vec<Account>,
    /// `[accounts]`: the rules for adding one.
    pub account_policy: AccountPolicy,
    pub containers: Containers,
    /// `[mail]`: how mail to other domains leaves.
    pub mail: Mail,
    /// `[tls]`: where the mail's certificate comes from.
    pub tls: Tls,
    /// `[webmail]`: whether Roundcube serves the accounts over HTTPS.
    pub webmail: Webmail,
}

impl Config {
    /// Whether the host has an IPv6 address, so that the boxes get theirs.
    pub fn has_ipv6(&self) -> bool {
        self.interfaces.iter().any(|i| !i.ipv6.is_empty())
    }

    /// Each account (in the file's order) with its box's routed IPv6 address: none when
    /// the host has no IPv6, as nothing would route it.
    pub fn box_ipv6_addresses(&self) -> Vec<(&Account, Option<std::net::Ipv6Addr>)> {
        let slots = self.containers.slots(&self.accounts);
        (self.accounts.iter().zip(slots))
            .map(|(account, slot)| {
                let ipv6 = self.containers.box_ipv6(slot).filter(|_| self.has_ipv6());
                (account, ipv6)
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read provisioning file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid UTF-8; expected a UTF-8 text file")]
    NotUtf8 { path: String },
    #[error("invalid provisioning file:\n{0}")]
    Invalid(#[from] Diagnostics),
}

/// Reads and validates a file; `None` means the embedded default.
pub fn load(path: Option<&Path>) -> Result<(Config, String), LoadError> {
    let Some(path) = path else {
        return Ok((parse(DEFAULT_NAME, DEFAULT_TOML)?, DEFAULT_TOML.to_string()));
    };
    let display = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: display.clone(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| LoadError::NotUtf8 {
        path: display.clone(),
    })?;
    Ok((parse(&display, &text)?, text))
}

/// Parses and validates provisioning text; `file` is the name errors are reported under.
pub fn parse(file: &str, text: &str) -> Result<Config, Diagnostics> {
    let mut c = Collector::new(file, text);
    let (root, syntax_errors) = DeTable::parse_recoverable(text);
    for e in &syntax_errors {
        c.toml_error(e);
    }
    if c.has_errors() {
        // Types and meaning are not checked on a recovered parse: they would only add noise.
        return Err(c.finish().expect_err("errors were recorded"));
    }

    let mut version = None;
    let mut raw_system = None;
    // Present but invalid sections were reported already; only absence is reported below.
    let mut has_system = false;
    let mut has_interfaces = false;
    let mut raw_interfaces = Vec::new();
    let mut raw_nameservers = Vec::new();
    let mut raw_console = None;
    let mut raw_dns = None;
    let mut raw_accounts = Vec::new();
    let mut raw_account_policy = None;
    let mut raw_containers = None;
    let mut raw_mail = None;
    let mut raw_tls = None;
    let mut raw_webmail = None;

    for (key, value) in root.into_inner() {
        let span = key.span();
        match key.get_ref().as_ref() {
            "version" => version = section::<Spanned<i64>>(value, &mut c),
            "system" => {
                has_system = true;
                raw_system = section::<Spanned<system::RawSystem>>(value, &mut c);
            }
            "interface" => match value.into_inner() {
                DeValue::Array(items) => {
                    has_interfaces = true;
                    raw_interfaces.extend(items.into_iter().filter_map(|v| section(v, &mut c)));
                }
                _ => c.error(
                    span,
                    "`interface` must be an array of tables; expected `[[interface]]` headers",
                ),
            },
            "nameservers" => {
                raw_nameservers = section::<Vec<Spanned<String>>>(value, &mut c).unwrap_or_default()
            }
            "console" => raw_console = section::<system::RawConsole>(value, &mut c),
            "dns" => raw_dns = section::<dns::RawDns>(value, &mut c),
            "containers" => raw_containers = section(value, &mut c),
            "mail" => raw_mail = section(value, &mut c),
            "tls" => raw_tls = section(value, &mut c),
            "webmail" => raw_webmail = section(value, &mut c),
            "accounts" => raw_account_policy = section(value, &mut c),
            "account" => match value.into_inner() {
                DeValue::Array(items) => {
                    raw_accounts.extend(items.into_iter().filter_map(|v| section(v, &mut c)))
                }
                _ => c.error(
                    span,
                    "`account` must be an array of tables; expected `[[account]]` headers",
                ),
            },
            other => c.error(
                span,
                format!("unknown section `{other}`; expected one of {SECTIONS}"),
            ),
        }
    }

    match &version {
        None => c.error(
            0..0,
            format!("missing `version = {VERSION}` at the top of the file"),
        ),
        Some(v) if *v.get_ref() != VERSION => c.error(
            v.span(),
            format!(
                "unsupported version {}; expected `version = {VERSION}`",
                v.get_ref()
            ),
        ),
        Some(_) => {}
    }
    let system = raw_system.map(|raw| system::validate_system(raw, &mut c));
    if !has_system {
        c.error(
            0..0,
            "missing `[system]` section; expected `hostname` and `domain` in it",
        );
    }
    if !has_interfaces || (raw_interfaces.is_empty() && !c.has_errors()) {
        c.error(
            0..0,
            "no `[[interface]]`; expected at least one interface with its addresses",
        );
    }
    let interface_headers: Vec<_> = raw_interfaces
        .iter()
        .map(|r: &Spanned<network::RawInterface>| r.span())
        .collect();
    let interfaces = network::validate_interfaces(raw_interfaces, &mut c);
    let nameservers = network::validate_nameservers(&raw_nameservers, &mut c);
    let console = raw_console
        .map(|raw| system::validate_console(raw, &mut c))
        .unwrap_or_default();

    let webmail = webmail::validate_webmail(raw_webmail);
    // The zone is derived from [system] (and [webmail]'s name): without it there is nothing
    // to check against.
    let (dns, accounts) = match &system {
        Some(system) => {
            let dns = dns::validate_dns(raw_dns, system, &webmail, &mut c);
            let accounts = dns::validate_accounts(raw_accounts, system, &dns, &mut c);
            (dns, accounts)
        }
        None => (Dns::default(), Vec::new()),
    };

    let account_policy = account_policy::validate_account_policy(raw_account_policy, &mut c);
    let containers = containers::validate_containers(
        raw_containers,
        &interfaces,
        &interface_headers,
        accounts.len(),
        &mut c,
    );
    let mail = mail::validate_mail(raw_mail, &mut c);
    let tls = tls::validate_tls(raw_tls, &mut c);

    c.finish()?;
    Ok(Config {
        system: system.expect("a missing or invalid [system] is an error above"),
        interfaces,
        nameservers,
        console,
        dns,
        accounts,
        account_policy,
        containers,
        mail,
        tls,
        webmail,
    })
}

/// Deserializes one value on its own, recording its errors instead of stopping. serde
/// stops at a table's first bad entry, so the table is tried again without each entry an
/// error points at: every bad key of a section is reported at once, not one per edit, and
/// the rest of the section is still checked. A key taken out for a bad value is noted
/// ([`Collector::bad_value`]), so that it is not reported missing too.
fn section<T: DeserializeOwned>(mut value: Spanned<DeValue<'_>>, c: &mut Collector) -> Option<T> {
    loop {
        let e = match T::deserialize(value.clone().into_deserializer()) {
            Ok(parsed) => return Some(parsed),
            Err(e) => e,
        };
        c.toml_error(&e);
        if let Some(key) = misplaced_top_level_key(e.message()) {
            // TOML puts every key after a [header] inside that table: a common trap.
            c.error(
                e.span().unwrap_or(0..0),
                format!(
                    "`{key}` is a top-level setting; expected it above the first \
                     [section] header"
                ),
            );
        }
        let (table, key) = remove_culprit(&mut value, e.span()?.start)?;
        if !e.message().starts_with("unknown field") {
            c.bad_value(table, key);
        }
    }
}

/// Takes out of `value` (a table) the key that the error at byte `at` points at, looking
/// into the entries of arrays of tables (`[[dns.record]]`). Gives the span of the table
/// it was taken from, and its name.
fn remove_culprit(value: &mut Spanned<DeValue<'_>>, at: usize) -> Option<(Range<usize>, String)> {
    let span = value.span();
    let DeValue::Table(table) = value.get_mut() else {
        return None;
    };
    let key = key_at(table, at)?;
    if let Some(DeValue::Array(entries)) = table.get_mut(&key).map(|v| v.get_mut()) {
        let inside = |e: &Spanned<DeValue<'_>>| matches!(e.get_ref(), DeValue::Table(t) if key_at(t, at).is_some());
        if let Some(i) = entries.iter().position(inside) {
            return remove_culprit(&mut entries.as_mut()[i], at);
        }
    }
    table.remove(&key);
    Some((span, key.into_inner().into_owned()))
}

/// The key of `table` whose name or value holds byte `at`. The span of a `[[header]]`
/// table is its header alone, so entries of arrays of tables are searched key by key.
fn key_at<'i>(table: &DeTable<'i>, at: usize) -> Option<Spanned<DeString<'i>>> {
    let holds = |v: &Spanned<DeValue<'_>>| {
        v.span().contains(&at)
            || match v.get_ref() {
                DeValue::Table(t) => key_at(t, at).is_some(),
                DeValue::Array(entries) => entries
                    .iter()
                    .any(|e| matches!(e.get_ref(), DeValue::Table(t) if key_at(t, at).is_some())),
                _ => false,
            }
    };
    table
        .iter()
        .find(|(k, v)| k.span().contains(&at) || holds(v))
        .map(|(k, _)| k.clone())
}

fn misplaced_top_level_key(message: &str) -> Option<&'static str> {
    ["version", "nameservers"]
        .into_iter()
        .find(|key| message.starts_with(&format!("unknown field `{key}`")))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod value_tests;

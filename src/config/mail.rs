//! `[mail]`: how the front sends mail to other domains. Left out, it goes straight to
//! each domain's MX; `relayhost` sends it through a smarthost (the ISP's, for the many
//! home connections whose port 25 is blocked), logged in with SASL.

use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::diagnostic::Collector;
use super::system::is_rfc1123_domain;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mail {
    pub relayhost: Option<Relayhost>,
}

/// A smarthost: every mail to another domain goes through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayhost {
    /// A DNS name (lower case) or an IP address.
    pub host: String,
    pub port: u16,
    pub username: String,
    /// The file holding the password, relative to the agent's state directory on the
    /// data partition: the password itself is never in letterbox.toml.
    pub password_file: PathBuf,
}

/// Submission's port, which smarthosts serve with STARTTLS.
pub const DEFAULT_RELAYHOST_PORT: u16 = 587;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMail {
    relayhost: Option<Spanned<RawRelayhost>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelayhost {
    host: Option<Spanned<String>>,
    /// Any TOML value, so that `"587"` gets the message that says what is expected.
    port: Option<Spanned<toml::Value>>,
    username: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
}

pub(super) fn validate_mail(raw: Option<RawMail>, c: &mut Collector) -> Mail {
    let relayhost = raw
        .and_then(|raw| raw.relayhost)
        .and_then(|raw| validate_relayhost(raw, c));
    Mail { relayhost }
}

fn validate_relayhost(raw: Spanned<RawRelayhost>, c: &mut Collector) -> Option<Relayhost> {
    let header = raw.span();
    let raw = raw.into_inner();
    let host = c
        .require(&raw.host, "host", header.clone())
        .and_then(|h| check_host(h, c));
    let port = match &raw.port {
        None => Some(DEFAULT_RELAYHOST_PORT),
        Some(value) => match value.get_ref() {
            toml::Value::Integer(n) if (1..=65535).contains(n) => {
                Some(u16::try_from(*n).expect("in range"))
            }
            other => {
                c.error(
                    value.span(),
                    format!(
                        "invalid relayhost port {other}; expected a whole number from 1 to \
                         65535, e.g. `port = 587` (STARTTLS) or `port = 465` (TLS)"
                    ),
                );
                None
            }
        },
    };
    let username = c
        .require(&raw.username, "username", header.clone())
        .and_then(|u| check_username(u, c));
    let password_file = c
        .require(&raw.password_file, "password_file", header)
        .and_then(|p| check_password_file(p, c));
    Some(Relayhost {
        host: host?,
        port: port?,
        username: username?,
        password_file: password_file?,
    })
}

fn check_host(host: &Spanned<String>, c: &mut Collector) -> Option<String> {
    let name = host.get_ref().trim_end_matches('.').to_ascii_lowercase();
    if name.parse::<IpAddr>().is_ok() || is_rfc1123_domain(&name) {
        return Some(name);
    }
    c.error(
        host.span(),
        format!(
            "invalid relayhost host {:?}; expected a host name such as \"smtp.example.net\" \
             or an IP address",
            host.get_ref()
        ),
    );
    None
}

/// Postfix's password table holds `username:password`: a username with a colon or a
/// space would be cut there.
fn check_username(username: &Spanned<String>, c: &mut Collector) -> Option<String> {
    let name = username.get_ref();
    if !name.is_empty() && !name.chars().any(|ch| ch == ':' || ch.is_whitespace()) {
        return Some(name.clone());
    }
    c.error(
        username.span(),
        format!(
            "invalid relayhost username {name:?}; expected the smarthost's login, not empty, \
             without spaces or ':'"
        ),
    );
    None
}

fn check_password_file(file: &Spanned<String>, c: &mut Collector) -> Option<PathBuf> {
    let path = Path::new(file.get_ref());
    let inside = !file.get_ref().is_empty()
        && path
            .components()
            .all(|part| matches!(part, Component::Normal(_)));
    if inside {
        return Some(path.to_path_buf());
    }
    c.error(
        file.span(),
        format!(
            "invalid relayhost password_file {:?}; expected a file name in the data \
             partition's letterbox directory, e.g. \"relayhost-password\" (no leading '/', \
             no '..')",
            file.get_ref()
        ),
    );
    None
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use crate::config::tests::{assert_each_fixture_refused_where_its_error_is, good};

    use super::*;

    #[test]
    fn relayhost_is_optional_and_read_with_its_default_port() {
        let cfg = parse("t.toml", &good()).unwrap();
        assert_eq!(cfg.mail, Mail::default());
        let text = format!(
            "{}[mail.relayhost]\nhost = \"SMTP.ISP.example.\"\nusername = \"me@isp.example\"\n\
             password_file = \"relay/password\"\n",
            good()
        );
        let relayhost = parse("t.toml", &text).unwrap().mail.relayhost.unwrap();
        assert_eq!(
            relayhost,
            Relayhost {
                host: "smtp.isp.example".into(),
                port: 587,
                username: "me@isp.example".into(),
                password_file: "relay/password".into(),
            }
        );
        let text = format!(
            "{}[mail]\nrelayhost = {{ host = \"2001:db8::25\", port = 465, username = \"u\", \
             password_file = \"p\" }}\n",
            good()
        );
        let relayhost = parse("t.toml", &text).unwrap().mail.relayhost.unwrap();
        assert_eq!(
            (relayhost.host.as_str(), relayhost.port),
            ("2001:db8::25", 465)
        );
    }

    #[test]
    fn the_default_files_relayhost_example_parses_once_uncommented() {
        let mut text = crate::config::DEFAULT_TOML.to_string();
        let at = text
            .find("# [mail.relayhost]")
            .expect("the example is documented");
        let example: String = text[at..]
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(setting) if setting.starts_with('[') || setting.contains(" = ") => {
                    format!("{setting}\n")
                }
                _ => format!("{l}\n"),
            })
            .collect();
        text.truncate(at);
        text.push_str(&example);
        let relayhost = parse("letterbox.toml", &text).unwrap().mail.relayhost;
        assert_eq!(
            relayhost.map(|r| (r.host, r.port, r.username)),
            Some(("smtp.example.net".into(), 587, "me@example.net".into()))
        );
    }

    #[test]
    fn each_bad_relayhost_fixture_is_refused_where_its_error_is() {
        assert_each_fixture_refused_where_its_error_is("mail", 6);
    }
}

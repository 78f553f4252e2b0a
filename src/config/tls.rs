//! `[tls]`: where the mail's TLS certificate comes from. Left out, it is self-signed, made
//! on the device; `acme = true` gets one from an ACME CA (Let's Encrypt by default) over
//! DNS-01, answered by the appliance's own zone, so no port 80 is needed.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::diagnostic::Collector;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// `None`: the self-signed certificate only.
    pub acme: Option<Acme>,
}

/// The ACME CA the certificate is ordered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// The CA's directory URL, https.
    pub directory: String,
    /// `mailto:` address the CA may write to about the certificate.
    pub contact: Option<String>,
    /// A PEM file of the CA certificates that sign the ACME server's own HTTPS certificate,
    /// relative to the agent's state directory; `None`: Mozilla's roots (webpki-roots).
    pub ca_file: Option<PathBuf>,
}

/// Let's Encrypt's production directory.
pub const DEFAULT_ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    acme: Option<Spanned<bool>>,
    acme_directory: Option<Spanned<String>>,
    acme_contact: Option<Spanned<String>>,
    acme_ca_file: Option<Spanned<String>>,
}

pub(super) fn validate_tls(raw: Option<RawTls>, c: &mut Collector) -> Tls {
    let Some(raw) = raw else {
        return Tls::default();
    };
    let directory = raw
        .acme_directory
        .as_ref()
        .and_then(|d| check_directory(d, c));
    let contact = raw.acme_contact.as_ref().and_then(|m| check_contact(m, c));
    let ca_file = raw.acme_ca_file.as_ref().and_then(|f| check_ca_file(f, c));
    let enabled = raw.acme.as_ref().is_some_and(|a| *a.get_ref());
    if !enabled {
        // Settings that would do nothing are a mistake worth naming.
        let unused = [
            (
                "acme_directory",
                raw.acme_directory.as_ref().map(Spanned::span),
            ),
            ("acme_contact", raw.acme_contact.as_ref().map(Spanned::span)),
            ("acme_ca_file", raw.acme_ca_file.as_ref().map(Spanned::span)),
        ];
        for (key, span) in unused {
            if let Some(span) = span {
                c.error(
                    span,
                    format!("`{key}` is set but ACME is off; expected `acme = true` beside it"),
                );
            }
        }
        return Tls::default();
    }
    Tls {
        acme: Some(Acme {
            directory: directory.unwrap_or_else(|| DEFAULT_ACME_DIRECTORY.to_string()),
            contact,
            ca_file,
        }),
    }
}

fn check_directory(url: &Spanned<String>, c: &mut Collector) -> Option<String> {
    let text = url.get_ref();
    let host = text
        .strip_prefix("https://")
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
    let plausible = host.is_some_and(|h| !h.is_empty() && !h.starts_with(':'))
        && !text.chars().any(|ch| ch.is_whitespace() || ch.is_control());
    if plausible {
        return Some(text.clone());
    }
    c.error(
        url.span(),
        format!(
            "invalid acme_directory {text:?}; expected the CA's https:// directory URL, e.g. \
             \"{DEFAULT_ACME_DIRECTORY}\""
        ),
    );
    None
}

fn check_contact(contact: &Spanned<String>, c: &mut Collector) -> Option<String> {
    let text = contact.get_ref();
    let address = text.strip_prefix("mailto:").unwrap_or_default();
    let plausible = address.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !domain.ends_with('.')
    }) && !address
        .chars()
        .any(|ch| ch.is_whitespace() || ch.is_control() || ch == ',');
    if plausible {
        return Some(text.clone());
    }
    c.error(
        contact.span(),
        format!(
            "invalid acme_contact {text:?}; expected one address as \
             \"mailto:postmaster@example.org\""
        ),
    );
    None
}

fn check_ca_file(file: &Spanned<String>, c: &mut Collector) -> Option<PathBuf> {
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
            "invalid acme_ca_file {:?}; expected a PEM file in the data partition's \
             letterbox directory, e.g. \"acme-ca.pem\" (no leading '/', no '..')",
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
    fn acme_is_off_by_default_and_on_with_lets_encrypt_unless_told_otherwise() {
        assert_eq!(parse("t.toml", &good()).unwrap().tls, Tls::default());
        let on = format!("{}[tls]\nacme = true\n", good());
        assert_eq!(
            parse("t.toml", &on).unwrap().tls.acme,
            Some(Acme {
                directory: DEFAULT_ACME_DIRECTORY.into(),
                contact: None,
                ca_file: None,
            })
        );
        let all = format!(
            "{}[tls]\nacme = true\nacme_directory = \"https://127.0.0.1:14000/dir\"\n\
             acme_contact = \"mailto:postmaster@example.org\"\nacme_ca_file = \"acme/ca.pem\"\n",
            good()
        );
        assert_eq!(
            parse("t.toml", &all).unwrap().tls.acme,
            Some(Acme {
                directory: "https://127.0.0.1:14000/dir".into(),
                contact: Some("mailto:postmaster@example.org".into()),
                ca_file: Some("acme/ca.pem".into()),
            })
        );
        let off = format!("{}[tls]\nacme = false\n", good());
        assert_eq!(parse("t.toml", &off).unwrap().tls, Tls::default());
    }

    #[test]
    fn the_default_files_tls_example_parses_once_uncommented() {
        let text =
            crate::config::DEFAULT_TOML.replace("# [tls]\n# acme = true", "[tls]\nacme = true");
        assert_ne!(
            text,
            crate::config::DEFAULT_TOML,
            "the example is documented"
        );
        let acme = parse("letterbox.toml", &text).unwrap().tls.acme.unwrap();
        assert_eq!(acme.directory, DEFAULT_ACME_DIRECTORY);
    }

    #[test]
    fn each_bad_tls_fixture_is_refused_where_its_error_is() {
        assert_each_fixture_refused_where_its_error_is("tls", 5);
    }
}

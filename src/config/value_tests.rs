//! Every error of a section reported at once, and the checks of values that the
//! appliance must be able to use safely: time zones, password-hash costs, secrets.

use super::parse;
use super::tests::{assert_one, edit, errors, good, HASH};

/// An unknown key, often a misspelt required one, hides none of its section's other
/// errors, in any kind of section.
#[test]
fn an_unknown_key_hides_no_other_error_of_its_section() {
    let text = "version = 1
[system]
hostnme = \"mail\"
domain = \"example_org\"
timezone = \"Mars/Olympus\"
[[interface]]
nmae = \"eth0\"
ipv4 = [\"192.0.2.10/33\"]
mtu = 10
[console]
bogus = 1
baud = 7
device = \"\"
[[account]]
nmae = \"alice\"
password_hash = \"hunter2\"
";
    let errs = errors(text);
    let found: Vec<(usize, usize)> = errs.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(
        found,
        vec![
            // [system]: `hostname` misspelt, so also missing; a bad domain and time zone.
            (2, 1),
            (3, 1),
            (4, 10),
            (5, 12),
            // [[interface]]: `name` misspelt; a bad prefix and MTU.
            (6, 1),
            (7, 1),
            (8, 9),
            (9, 7),
            // [console]: an unknown key; a bad baud rate and device.
            (11, 1),
            (12, 8),
            (13, 10),
            // [[account]]: `name` misspelt; a plaintext password.
            (14, 1),
            (15, 1),
            (16, 17),
        ],
        "{errs:#?}"
    );
    assert!(
        errs[0].2.starts_with("missing field `hostname`"),
        "{errs:#?}"
    );
    assert!(
        errs[1].2.starts_with("unknown field `hostnme`"),
        "{errs:#?}"
    );
    assert!(errs[13].2.contains("not a hash"), "{errs:#?}");
}

/// The same inside `[dns]` and each of its `[[dns.record]]` entries, which serde sees as
/// one section.
#[test]
fn an_unknown_key_in_dns_or_a_record_hides_no_other_error() {
    let text = format!(
        "{}[dns]
bogus = 1
public_ipv4 = \"x\"
[[dns.record]]
name = \"www\"
typ = \"A\"
value = \"192.0.2.20\"
[[dns.record]]
name = \"ftp\"
type = \"A\"
value = \"192.0.2.300\"
colour = \"red\"
[[dns.record]]
name = \"x y\"
type = \"A\"
value = \"192.0.2.21\"
ttl = \"long\"
[[dns.record]]
name = \"smtp\"
type = \"A\"
value = \"192.0.2.400\"
",
        good()
    );
    let errs = errors(&text);
    let found: Vec<(usize, usize)> = errs.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(
        found,
        vec![
            // [dns]: an unknown key; a bad address.
            (14, 1),
            (15, 15),
            // `type` misspelt, so also missing.
            (16, 1),
            (18, 1),
            // A bad value beside an unknown key.
            (23, 9),
            (24, 1),
            // A bad name beside a TTL of the wrong type.
            (26, 8),
            (29, 7),
            // A record after them all is still checked.
            (33, 9),
        ],
        "{errs:#?}"
    );
}

#[test]
fn unknown_time_zone_is_refused_at_its_position() {
    let text = edit(
        "domain = \"example.org\"",
        "domain = \"example.org\"\ntimezone = \"Mars/Olympus\"",
    );
    assert_one(&text, 5, 12, "unknown timezone \"Mars/Olympus\"");
    assert!(!errors(&text)[0].2.contains("did you mean"));
}

#[test]
fn time_zone_is_an_iana_name_spelt_exactly_with_a_close_one_suggested() {
    let with = |tz: &str| {
        edit(
            "domain = \"example.org\"",
            &format!("domain = \"example.org\"\ntimezone = \"{tz}\""),
        )
    };
    let c = parse("t.toml", &with("Europe/Paris")).unwrap();
    assert_eq!(c.system.timezone, "Europe/Paris");
    for (typed, meant) in [
        ("europe/paris", "Europe/Paris"),
        ("Europe/Pariss", "Europe/Paris"),
        ("Paris", "Europe/Paris"),
        ("America/New York", "America/New_York"),
    ] {
        assert_one(&with(typed), 5, 12, &format!("did you mean \"{meant}\"?"));
    }
}

#[test]
fn a_password_hash_too_costly_to_check_at_login_is_refused() {
    let costly = HASH.replacen("$6$", "$6$rounds=999999999$", 1);
    assert_one(&edit(HASH, &costly), 12, 23, "at most 1000000");
    let account = format!(
        "{}[[account]]\nname = \"alice\"\npassword_hash = \"{costly}\"\n",
        good()
    );
    assert_one(&account, 15, 17, "at most 1000000");
}

#[test]
fn a_misspelt_password_key_never_shows_its_value() {
    for line in [
        "admin_pasword_hash = \"hunter2\"",
        "admin_pasword_hash = hunter2",
        "passwd = 'hunter2'",
        "console_pw = \"\"\"\nhunter2\n\"\"\"",
    ] {
        let text = edit(&format!("admin_password_hash = \"{HASH}\""), line);
        let shown = parse("t.toml", &text).unwrap_err().to_string();
        assert!(shown.contains("t.toml:12:"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
    let account = format!(
        "{}[[account]]\nname = \"alice\"\npassword_hash = 2718281828\n",
        good()
    );
    let shown = parse("t.toml", &account).unwrap_err().to_string();
    assert!(!shown.contains("2718281828"), "{shown}");
}

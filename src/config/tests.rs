//! Parsing and validation, with the exact positions reported for bad inputs.

use super::*;

const GOOD: &str = r#"version = 1
[system]
hostname = "mail"
domain = "example.org"
[[interface]]
name = "eth0"
ipv4 = ["192.0.2.10/24"]
gateway4 = "192.0.2.1"
ipv6 = ["2001:db8::10/64"]
gateway6 = "fe80::1"
[console]
admin_password_hash = "HASH"
"#;

/// A real SHA-512 crypt hash of "letterbox".
pub(super) const HASH: &str = "$6$saltsaltsalt$S/Pf/kKX1rCNRo4NCSDP1C7O8qxgb7lD0RhObcGYaY.ETFEN6GtQYVXCn22/nm.Ujp4KjOqcwTpiIrOQ.hq6S/";

pub(super) fn good() -> String {
    GOOD.replace("HASH", HASH)
}

/// Replaces the first occurrence of `from` in the good file.
pub(super) fn edit(from: &str, to: &str) -> String {
    let g = good();
    assert!(g.contains(from), "fixture lacks {from:?}");
    g.replacen(from, to, 1)
}

/// (line, column, message) of every error.
pub(super) fn errors(text: &str) -> Vec<(usize, usize, String)> {
    parse("t.toml", text)
        .expect_err("expected the file to be rejected")
        .0
        .into_iter()
        .map(|d| (d.line, d.column, d.message))
        .collect()
}

/// Each file of tests/fixtures/config/`subdir` (at least `at_least` of them) is refused
/// with the errors its first lines name: `# error: LINE:COLUMN words of the message`, one a
/// line.
pub(super) fn assert_each_fixture_refused_where_its_error_is(subdir: &str, at_least: usize) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(subdir);
    let mut fixtures: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= at_least, "{fixtures:?}");
    for path in fixtures {
        let text = std::fs::read_to_string(&path).unwrap();
        let expected: Vec<(usize, usize, String)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# error: "))
            .map(|l| {
                let (at, words) = l.split_once(' ').unwrap();
                let (line, column) = at.split_once(':').unwrap();
                (line.parse().unwrap(), column.parse().unwrap(), words.into())
            })
            .collect();
        assert!(!expected.is_empty(), "{} names no error", path.display());
        let found = errors(&text);
        assert_eq!(
            found.len(),
            expected.len(),
            "{}: {found:#?}",
            path.display()
        );
        for ((line, column, message), (l, col, words)) in found.iter().zip(&expected) {
            assert_eq!((line, column), (l, col), "{}: {message}", path.display());
            assert!(
                message.contains(words.as_str()) && message.contains("expected"),
                "{}: {message:?} should say {words:?} and what was expected",
                path.display()
            );
        }
    }
}

pub(super) fn assert_one(text: &str, line: usize, column: usize, needle: &str) {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    let (l, c, m) = &errs[0];
    assert_eq!((*l, *c), (line, column), "position of {m:?}");
    assert!(m.contains(needle), "{m:?} should mention {needle:?}");
    assert!(m.contains("expected"), "{m:?} should say what was expected");
}

#[test]
fn good_file_parses() {
    let c = parse("t.toml", &good()).unwrap();
    assert_eq!(c.system.fqdn(), "mail.example.org");
    assert_eq!(c.system.timezone, "UTC");
    assert_eq!(c.interfaces[0].ipv4[0].to_string(), "192.0.2.10/24");
    assert_eq!(c.interfaces[0].gateway6, Some("fe80::1".parse().unwrap()));
    assert!(!c.interfaces[0].accept_ra);
    assert_eq!(c.console.device, "serial0");
    assert_eq!(c.console.baud, 115_200);
    assert_eq!(c.console.admin_password_hash.as_deref(), Some(HASH));
}

#[test]
fn embedded_default_is_valid_and_uses_documentation_addresses() {
    let c = parse(DEFAULT_NAME, DEFAULT_TOML).unwrap();
    assert_eq!(c.system.domain, "example.org");
    assert!(!c.interfaces.is_empty());
    let doc4: ipnet::Ipv4Net = "192.0.2.0/24".parse().unwrap();
    let doc6: ipnet::Ipv6Net = "2001:db8::/32".parse().unwrap();
    for i in &c.interfaces {
        assert!(i.ipv4.iter().all(|n| doc4.contains(&n.addr())));
        assert!(i.ipv6.iter().all(|n| doc6.contains(&n.addr())));
    }
}

#[test]
fn syntax_error_position() {
    let errs = errors(&edit("domain = ", "domain = = "));
    assert_eq!((errs[0].0, errs[0].1), (4, 10), "{errs:#?}");
    assert!(errs[0].2.contains("expected"), "{errs:#?}");
    assert!(errs.iter().all(|e| e.0 == 4), "{errs:#?}");
}

#[test]
fn top_level_key_after_a_table_gets_a_hint() {
    let errs = errors(&format!("{}nameservers = [\"192.0.2.53\"]\n", good()));
    assert!(errs.iter().all(|e| (e.0, e.1) == (13, 1)), "{errs:#?}");
    assert!(errs
        .iter()
        .any(|e| e.2.contains("above the first [section] header")));
}

#[test]
fn unknown_field_in_interface() {
    assert_one(
        &edit("name = \"eth0\"", "name = \"eth0\"\nmtux = 9000"),
        7,
        1,
        "mtux",
    );
}

#[test]
fn unknown_section() {
    assert_one(
        &format!("{}[extra]\nx = 1\n", good()),
        13,
        2,
        "unknown section `extra`",
    );
}

#[test]
fn wrong_type() {
    assert_one(
        &edit("[console]", "[console]\nbaud = \"fast\""),
        12,
        8,
        "invalid type: string",
    );
}

#[test]
fn ipv4_prefix_too_long() {
    assert_one(
        &edit("192.0.2.10/24", "192.0.2.10/33"),
        7,
        9,
        "prefix length",
    );
}

#[test]
fn ipv4_without_prefix() {
    assert_one(
        &edit("\"192.0.2.10/24\"", "\"192.0.2.10\""),
        7,
        9,
        "no prefix length",
    );
}

#[test]
fn ipv6_prefix_too_long() {
    assert_one(
        &edit("2001:db8::10/64", "2001:db8::10/129"),
        9,
        9,
        "0 to 128",
    );
}

#[test]
fn invalid_ipv4_address() {
    assert_one(
        &edit("192.0.2.10/24", "192.0.2.300/24"),
        7,
        9,
        "not a valid IPv4",
    );
}

#[test]
fn network_address_as_host() {
    assert_one(
        &edit("192.0.2.10/24", "192.0.2.0/24"),
        7,
        9,
        "network address",
    );
}

#[test]
fn gateway4_off_link() {
    assert_one(&edit("192.0.2.1\"", "198.51.100.1\""), 8, 12, "not on-link");
}

#[test]
fn gateway6_off_link() {
    assert_one(
        &edit("\"fe80::1\"", "\"2001:db9::1\""),
        10,
        12,
        "not on-link",
    );
}

#[test]
fn duplicate_address_across_interfaces() {
    let text = format!(
        "{}[[interface]]\nname = \"eth1\"\nipv4 = [\"192.0.2.10/24\"]\n",
        good()
    );
    assert_one(&text, 15, 9, "configured twice");
}

#[test]
fn duplicate_is_reported_at_its_own_entry_after_a_bad_one() {
    let text = edit(
        "ipv4 = [\"192.0.2.10/24\"]",
        "ipv4 = [\"192.0.2.10/99\", \"192.0.2.11/24\", \"192.0.2.11/24\"]",
    );
    let errs = errors(&text);
    let cols: Vec<(usize, usize)> = errs.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(cols, vec![(7, 9), (7, 43)], "{errs:#?}");
    assert!(errs[1].2.contains("configured twice"));
}

#[test]
fn gateway_equal_to_own_address() {
    assert_one(
        &edit("\"192.0.2.1\"", "\"192.0.2.10\""),
        8,
        12,
        "own address",
    );
}

#[test]
fn empty_interface_list() {
    let text = "version = 1\ninterface = []\n[system]\nhostname = \"m\"\ndomain = \"e.org\"\n";
    assert_one(text, 1, 1, "at least one interface");
}

#[test]
fn too_many_nameservers() {
    let text = format!(
        "nameservers = [\"192.0.2.1\", \"192.0.2.2\", \"192.0.2.3\", \"192.0.2.4\"]\n{}",
        good()
    );
    assert_one(&text, 1, 55, "at most 3");
}

#[test]
fn duplicate_interface_name() {
    let text = format!("{}[[interface]]\nname = \"eth0\"\n", good());
    assert_one(&text, 14, 8, "listed twice");
}

#[test]
fn bad_hostname() {
    assert_one(&edit("\"mail\"", "\"-mail\""), 3, 12, "RFC 1123");
}

#[test]
fn bad_domain() {
    assert_one(&edit("example.org", "example_org"), 4, 10, "RFC 1123");
}

#[test]
fn plaintext_password_is_rejected_without_echo() {
    let errs = errors(&edit(HASH, "hunter2"));
    assert_eq!(errs.len(), 1);
    let (l, c, m) = &errs[0];
    assert_eq!((*l, *c), (12, 23));
    assert!(m.contains("plaintext"));
    assert!(
        !m.contains("hunter2"),
        "the password must not be echoed: {m}"
    );
}

#[test]
fn a_number_as_password_is_rejected_without_echo() {
    let errs = errors(&edit(&format!("\"{HASH}\""), "271828"));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!((errs[0].0, errs[0].1), (12, 23));
    assert!(errs[0].2.contains("quoted string"), "{errs:#?}");
    assert!(!errs[0].2.contains("271828"), "{errs:#?}");
}

#[test]
fn unsupported_hash_scheme() {
    assert_one(
        &edit(HASH, "$1$abc$defdefdefdefdefdefdefd"),
        12,
        23,
        "unsupported hash scheme",
    );
}

#[test]
fn truncated_hash() {
    assert_one(&edit(HASH, &HASH[..40]), 12, 23, "wrong digest length");
}

#[test]
fn bad_baud() {
    assert_one(
        &edit("[console]", "[console]\nbaud = 115201"),
        12,
        8,
        "115200",
    );
}

#[test]
fn mtu_too_small_for_ipv6() {
    assert_one(
        &edit("name = \"eth0\"", "name = \"eth0\"\nmtu = 1000"),
        7,
        7,
        "1280",
    );
}

#[test]
fn wrong_version() {
    assert_one(
        &edit("version = 1", "version = 2"),
        1,
        11,
        "unsupported version",
    );
}

#[test]
fn missing_version_and_system() {
    let errs = errors("[[interface]]\nname = \"eth0\"\n");
    assert!(errs.iter().any(|e| e.2.contains("missing `version")));
    assert!(errs.iter().any(|e| e.2.contains("missing `[system]`")));
    assert!(errs.iter().all(|e| (e.0, e.1) == (1, 1)));
}

#[test]
fn all_errors_are_reported_at_once_in_source_order() {
    let text = edit("\"mail\"", "\"mail_\"")
        .replace("192.0.2.10/24", "192.0.2.10/40")
        .replace("mail_\"", "mail_\"\nbogus = 1")
        .replace("[console]", "[console]\nbaud = 7");
    let errs = errors(&text);
    let lines: Vec<usize> = errs.iter().map(|e| e.0).collect();
    // The unknown `bogus` does not keep [system]'s hostname from being checked.
    assert_eq!(lines, vec![3, 4, 8, 13], "{errs:#?}");
}

#[test]
fn every_bad_key_of_a_section_is_reported_at_once() {
    let text = edit(
        "domain = \"example.org\"",
        "domian = \"example.org\"\ntimezone = 5",
    )
    .replace("gateway4 = \"192.0.2.1\"", "gateway4 = 7\nmtu = \"big\"");
    let errs = errors(&text);
    let found: Vec<(usize, usize)> = errs.iter().map(|e| (e.0, e.1)).collect();
    // [system]: `domain` misspelt (so also missing) and a number as timezone;
    // [[interface]]: two values of the wrong type.
    assert_eq!(
        found,
        vec![(2, 1), (4, 1), (5, 12), (9, 12), (10, 7)],
        "{errs:#?}"
    );
    assert_eq!(
        errs[0].2,
        "missing field `domain`; expected a `domain = ...` line in this section"
    );
    assert!(errs[1].2.contains("unknown field `domian`"), "{errs:#?}");
}

#[test]
fn a_bad_value_is_not_also_reported_as_missing() {
    let errs = errors(&edit("hostname = \"mail\"", "hostname = 5"));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!((errs[0].0, errs[0].1), (3, 12), "{errs:#?}");
}

#[test]
fn rendered_diagnostic_points_at_the_value() {
    let d = parse("letterbox.toml", &edit("192.0.2.10/24", "192.0.2.10/33")).unwrap_err();
    let shown = d.to_string();
    assert!(
        shown.starts_with("letterbox.toml:7:9: error: invalid prefix length \"33\""),
        "{shown}"
    );
    assert!(shown.contains("7 | ipv4 = [\"192.0.2.10/33\"]\n  |         ^^^^^^^^^^^^^^^"));
    assert!(shown.ends_with("1 error"));
}

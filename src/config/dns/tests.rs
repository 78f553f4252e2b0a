//! `[dns]`, `[[dns.record]]` and `[[account]]` through the whole parser, with the
//! exact positions reported for bad inputs.

use super::super::parse;

/// A real SHA-512 crypt hash of "letterbox".
const HASH: &str = "$6$saltsaltsalt$S/Pf/kKX1rCNRo4NCSDP1C7O8qxgb7lD0RhObcGYaY.ETFEN6GtQYVXCn22/nm.Ujp4KjOqcwTpiIrOQ.hq6S/";

fn file(extra: &str) -> String {
    format!(
        "version = 1\n[system]\nhostname = \"mail\"\ndomain = \"example.org\"\n\
         [[interface]]\nname = \"eth0\"\nipv4 = [\"192.0.2.10/24\"]\n{extra}"
    )
}

fn account(name: &str) -> String {
    format!("[[account]]\nname = \"{name}\"\npassword_hash = \"{HASH}\"\n")
}

/// Line and column (1-based) of the first occurrence of `needle` after `after`.
fn position(text: &str, after: &str, needle: &str) -> (usize, usize) {
    let from = text.find(after).expect("anchor in the text");
    let at = from + text[from..].find(needle).expect("needle in the text");
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Asserts exactly one error, at `needle` (searched after `after`), mentioning `what`.
fn assert_error(text: &str, after: &str, needle: &str, what: &str) {
    let errs = parse("t.toml", text).expect_err("expected an error").0;
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    let d = &errs[0];
    assert_eq!(
        (d.line, d.column),
        position(text, after, needle),
        "position of {:?}",
        d.message
    );
    assert!(
        d.message.contains(what),
        "{:?} should mention {what:?}",
        d.message
    );
    assert!(
        d.message.contains("expected"),
        "{:?} says what was expected",
        d.message
    );
}

fn record(name: &str, rtype: &str, value: &str) -> String {
    format!("[[dns.record]]\nname = \"{name}\"\ntype = \"{rtype}\"\nvalue = '{value}'\n")
}

#[test]
fn a_full_dns_section_parses() {
    let text = file(&format!(
        "[dns]\npublic_ipv4 = \"203.0.113.7\"\nsecondaries = [\"198.51.100.53\", \
         \"127.0.0.2:5353\"]\nrate_limit = 0\n{}{}{}{}",
        record("www", "CNAME", "mail"),
        record("_imaps._tcp", "SRV", "0 1 993 mail"),
        record("@", "TXT", &"x".repeat(600)),
        account("Alice"),
    ));
    let cfg = parse("t.toml", &text).unwrap();
    assert_eq!(cfg.dns.rate_limit, 0);
    assert_eq!(cfg.dns.secondaries[0].to_string(), "198.51.100.53:53");
    assert_eq!(cfg.dns.secondaries[1].to_string(), "127.0.0.2:5353");
    assert_eq!(cfg.dns.records[0].name.to_string(), "www.example.org.");
    assert_eq!(cfg.dns.records[0].rdata.to_string(), "mail.example.org.");
    assert_eq!(
        cfg.dns.records[1].rdata.to_string(),
        "0 1 993 mail.example.org."
    );
    match &cfg.dns.records[2].rdata {
        hickory_proto::rr::RData::TXT(txt) => {
            let lens: Vec<usize> = txt.txt_data.iter().map(|s| s.len()).collect();
            assert_eq!(lens, [255, 255, 90], "long TXT split into 255-byte strings");
        }
        other => panic!("not TXT: {other:?}"),
    }
    assert_eq!(cfg.accounts[0].name, "alice");
}

#[test]
fn defaults_without_a_dns_section() {
    let cfg = parse("t.toml", &file("")).unwrap();
    assert_eq!(cfg.dns.rate_limit, super::DEFAULT_RATE_LIMIT);
    assert!(cfg.dns.records.is_empty() && cfg.accounts.is_empty());
}

#[test]
fn cname_beside_other_data() {
    let text = file(&format!(
        "[dns]\n{}{}",
        record("files", "A", "192.0.2.20"),
        record("files", "CNAME", "mail")
    ));
    assert_error(
        &text,
        "\"CNAME\"",
        "\"CNAME\"",
        "CNAME at files.example.org.",
    );
    let text = file(&format!(
        "[dns]\n{}{}",
        record("files", "CNAME", "mail"),
        record("files", "TXT", "hello")
    ));
    assert_error(&text, "\"TXT\"", "\"TXT\"", "beside its CNAME");
}

#[test]
fn cname_at_a_name_letterbox_publishes() {
    let text = file(&format!(
        "[dns]\n{}",
        record("mail", "CNAME", "elsewhere.net.")
    ));
    assert_error(&text, "\"CNAME\"", "\"CNAME\"", "letterbox publishes");
    let text = file(&format!(
        "[dns]\n{}",
        record("@", "CNAME", "elsewhere.net.")
    ));
    assert_error(&text, "\"CNAME\"", "\"CNAME\"", "letterbox publishes");
}

#[test]
fn name_outside_the_zone() {
    let text = file(&format!(
        "[dns]\n{}",
        record("www.example.com.", "A", "192.0.2.1")
    ));
    assert_error(
        &text,
        "[[dns.record]]",
        "\"www.example.com.\"",
        "outside the zone",
    );
    let text = file(&format!("[dns]\n{}", record("bad name", "A", "192.0.2.1")));
    assert_error(
        &text,
        "[[dns.record]]",
        "\"bad name\"",
        "invalid record name",
    );
}

#[test]
fn bad_values() {
    let text = file(&format!(
        "[dns]\n{}",
        record("_sip._tcp", "SRV", "10 5 mail")
    ));
    assert_error(&text, "value =", "'10 5 mail'", "invalid SRV value");
    let text = file(&format!("[dns]\n{}", record("x", "A", "2001:db8::1")));
    assert_error(&text, "value =", "'2001:db8::1'", "invalid A value");
    let text = file(&format!("[dns]\n{}", record("x", "MX", "mail")));
    assert_error(&text, "value =", "'mail'", "invalid MX value");
    let text = file(&format!("[dns]\n{}", record("x", "NS", "ns2.example.net.")));
    assert_error(&text, "type =", "\"NS\"", "unsupported record type");
    let text = file("[dns]\npublic_ipv4 = \"2001:db8::1\"\n");
    assert_error(&text, "public_ipv4", "\"2001:db8::1\"", "invalid address");
    let text = file("[dns]\nsecondaries = [\"ns2.example.net\"]\n");
    assert_error(&text, "secondaries", "\"ns2", "invalid address");
    let text = file("[dns]\nrate_limit = -1\n");
    assert!(parse("t.toml", &text).is_err());
}

#[test]
fn txt_too_long() {
    let long = "x".repeat(super::records::TXT_MAX + 1);
    let text = file(&format!("[dns]\n{}", record("x", "TXT", &long)));
    assert_error(&text, "value =", "'xxx", "TXT value of 4001 bytes");
}

#[test]
fn second_spf_and_mx_at_a_no_mail_name() {
    let text = file(&format!("[dns]\n{}", record("@", "TXT", "v=spf1 a -all")));
    assert_error(&text, "value =", "'v=spf1", "second SPF record");
    let text = file(&format!("[dns]\n{}", record("ns1", "MX", "10 mail")));
    assert_error(&text, "type =", "\"MX\"", "null MX");
}

#[test]
fn duplicate_record() {
    let r = record("x", "A", "192.0.2.1");
    let text = file(&format!("[dns]\n{r}{r}\n"));
    let errs = parse("t.toml", &text).expect_err("duplicate").0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let second = text.rfind("name = \"x\"").unwrap() + "name = ".len();
    let line = text[..second].matches('\n').count() + 1;
    assert_eq!((errs[0].line, errs[0].column), (line, 8));
    assert!(errs[0].message.contains("duplicate A record"));
}

#[test]
fn account_names() {
    let text = file(&account("not_a_label"));
    assert_error(
        &text,
        "[[account]]",
        "\"not_a_label\"",
        "invalid account name",
    );
    // The host name, what letterbox publishes, and the conventional names.
    for taken in ["mail", "ns1", "www", "postmaster", "abuse"] {
        let text = file(&account(taken));
        assert_error(&text, "[[account]]", &format!("\"{taken}\""), "clashes");
    }
    let text = file(&format!(
        "[dns]\n{}{}",
        record("www", "A", "192.0.2.1"),
        account("www")
    ));
    assert_error(&text, "[[account]]", "\"www\"", "clashes");
    let text = file(&format!("{}{}", account("bob"), account("Bob")));
    assert_error(&text, "name = \"Bob\"", "\"Bob\"", "listed twice");
    let text = file("[[account]]\nname = \"carol\"\npassword_hash = \"hunter2\"\n");
    assert_error(&text, "password_hash", "\"hunter2\"", "not a hash");
    assert!(!parse("t.toml", &text)
        .unwrap_err()
        .to_string()
        .contains("hunter2\" ("));
}

fn record_ttl(name: &str, rtype: &str, value: &str, ttl: u32) -> String {
    format!("{}ttl = {ttl}\n", record(name, rtype, value))
}

#[test]
fn wildcard_listen_addresses() {
    for wildcard in ["[::]:53", "0.0.0.0:53"] {
        let text = file(&format!("[dns]\nlisten = [\"{wildcard}\"]\n"));
        assert_error(
            &text,
            "listen",
            &format!("\"{wildcard}"),
            "wildcard address",
        );
        assert!(parse("t.toml", &text)
            .unwrap_err()
            .to_string()
            .contains("expected a specific address"));
    }
    let text = file("[dns]\nlisten = [\"127.0.0.1:5353\", \"[::1]:5353\"]\n");
    assert_eq!(parse("t.toml", &text).unwrap().dns.listen.len(), 2);
}

#[test]
fn mixed_ttls_in_one_rrset() {
    // Joining a derived set (the domain's MX) with another TTL.
    let text = file(&format!(
        "[dns]\n{}",
        record_ttl("@", "MX", "20 backup.example.net.", 600)
    ));
    assert_error(
        &text,
        "ttl =",
        "600",
        "expected TTL 3600 like the rest of the set",
    );
    // Two extra records of one set with different TTLs; the second has the default.
    let text = file(&format!(
        "[dns]\n{}{}",
        record_ttl("files", "A", "192.0.2.20", 60),
        record("files", "A", "192.0.2.21")
    ));
    assert_error(
        &text,
        "ttl = 60",
        "\"files\"",
        "expected TTL 60 like the rest of the set",
    );
    // One TTL for the whole set is fine, and so is the derived TTL spelled out.
    let text = file(&format!(
        "[dns]\n{}{}{}",
        record_ttl("files", "A", "192.0.2.20", 60),
        record_ttl("files", "A", "192.0.2.21", 60),
        record_ttl("@", "MX", "20 backup.example.net.", 3600),
    ));
    assert_eq!(parse("t.toml", &text).unwrap().dns.records.len(), 3);
}

#[test]
fn records_that_repeat_what_letterbox_publishes() {
    let text = file(&format!("[dns]\n{}", record("@", "MX", "10 mail")));
    assert_error(
        &text,
        "[[dns.record]]",
        "\"@\"",
        "duplicate MX record at example.org. (letterbox publishes it)",
    );
    let text = file(&format!(
        "[dns]\n{}",
        record("_dmarc", "TXT", "v=DMARC1; p=none")
    ));
    assert_error(&text, "value =", "'v=DMARC1", "second DMARC record");
    let text = file(&format!(
        "[dns]\n{}",
        record("sel._domainkey", "TXT", "v=DKIM1; p=AAAA")
    ));
    assert_error(&text, "[[dns.record]]", "\"sel._domainkey\"", "DKIM keys");
    let text = file(&format!("[dns]\n{}", record("mail", "A", "192.0.2.99")));
    assert_error(&text, "type =", "\"A\"", "appliance's addresses");
    // A non-DMARC TXT at _dmarc and a second MX at the domain are fine.
    let text = file(&format!(
        "[dns]\n{}{}",
        record("_dmarc", "TXT", "hello"),
        record("@", "MX", "20 backup.example.net.")
    ));
    assert_eq!(parse("t.toml", &text).unwrap().dns.records.len(), 2);
}

#[test]
fn hostname_ns1_is_the_nameserver() {
    let text = file("").replace("hostname = \"mail\"", "hostname = \"ns1\"");
    let errs = parse("t.toml", &text).expect_err("ns1 as hostname").0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let line = text.lines().position(|l| l.contains("\"ns1\"")).unwrap() + 1;
    assert_eq!((errs[0].line, errs[0].column), (line, 12), "{errs:#?}");
    assert!(
        errs[0].message.contains("nameserver"),
        "{}",
        errs[0].message
    );
    assert!(errs[0].message.contains("expected another hostname"));
}

#[test]
fn unknown_dns_key() {
    let text = file("[dns]\nlisten_port = 53\n");
    assert_error(&text, "[dns]", "listen_port", "unknown field");
}

#[test]
fn the_webmail_name_is_letterboxs_beside_a_host_not_called_mail() {
    let host_mx = |extra: &str| file(extra).replace("hostname = \"mail\"", "hostname = \"mx\"");
    let cname = format!("[dns]\n{}", record("mail", "CNAME", "elsewhere.net."));
    assert_error(
        &host_mx(&cname),
        "\"CNAME\"",
        "\"CNAME\"",
        "letterbox publishes",
    );
    // With the webmail off, `mail` is the file's to use.
    let off = host_mx(&format!("{cname}[webmail]\nenabled = false\n"));
    assert_eq!(parse("t.toml", &off).unwrap().dns.records.len(), 1);
    // An account may never be called `mail`, so it never clashes with the webmail's name.
    let text = host_mx(&account("mail"));
    assert_error(&text, "[[account]]", "\"mail\"", "clashes");

    let derived_at_mail = |text: &str| {
        let cfg = parse("t.toml", text).unwrap();
        let web = hickory_proto::rr::Name::from_ascii("mail.example.org.").unwrap();
        super::derived_records(&cfg.system, &cfg.webmail)
            .unwrap()
            .into_iter()
            .filter(|(name, _)| *name == web)
            .map(|(_, d)| d)
            .collect::<Vec<_>>()
    };
    let web = derived_at_mail(&host_mx(""));
    assert_eq!(web.len(), 3, "{web:?}");
    assert_eq!(web[0], super::Derived::Addresses);
    assert!(derived_at_mail(&host_mx("[webmail]\nenabled = false\n")).is_empty());
    // A host called `mail` has the name already: its records, once.
    let host = derived_at_mail(&file(""));
    let addresses = host.iter().filter(|d| **d == super::Derived::Addresses);
    assert_eq!(addresses.count(), 1, "{host:?}");
}

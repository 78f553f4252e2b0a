//! The edits on text: each name rule, the password rules, inline arrays, and comments
//! that belong to the section above an entry surviving its deletion.

use super::*;
use crate::config::{self, AccountPolicy};

const HASH: &str = "$6$saltsaltsalt$S/Pf/kKX1rCNRo4NCSDP1C7O8qxgb7lD0RhObcGYaY.ETFEN6GtQYVXCn22/nm.Ujp4KjOqcwTpiIrOQ.hq6S/";

fn file(extra: &str) -> String {
    format!(
        "version = 1\n[system]\nhostname = \"box1\"\ndomain = \"example.org\"\n\
         [[interface]]\nname = \"eth0\"\nipv4 = [\"192.0.2.10/24\"]\n{extra}"
    )
}

#[test]
fn each_name_rule_is_named() {
    let cfg = config::parse(
        "t",
        &file(&format!(
            "[dns]\n[[dns.record]]\nname = \"files\"\ntype = \"A\"\nvalue = \"192.0.2.9\"\n\
             [[account]]\nname = \"Bob\"\npassword_hash = \"{HASH}\"\n"
        )),
    )
    .unwrap();
    let long = "a".repeat(64);
    for (name, rule) in [
        ("", NameError::Empty),
        (long.as_str(), NameError::TooLong(64)),
        ("Alice!", NameError::Character('!')),
        ("al_ice", NameError::Character('_')),
        ("-alice", NameError::Hyphen),
        ("Alice", NameError::Uppercase("alice".into())),
        ("bob", NameError::Exists),
    ] {
        assert_eq!(check_name(name, &cfg), Err(rule), "{name:?}");
    }
    for reserved in ["box1", "mail", "ns1", "www", "postmaster", "abuse", "files"] {
        assert!(
            matches!(check_name(reserved, &cfg), Err(NameError::Reserved(_))),
            "{reserved}"
        );
    }
    assert_eq!(check_name(&"a".repeat(63), &cfg), Ok(()));
    assert_eq!(check_name("alice-2", &cfg), Ok(()));
}

#[test]
fn passwords_are_refused_empty_or_shorter_than_the_policy() {
    let none = AccountPolicy::default();
    let twelve = AccountPolicy {
        min_password_length: Some(12),
    };
    assert_eq!(check_password("", &none), Err(PasswordError::Empty));
    assert_eq!(check_password("x", &none), Ok(()));
    assert_eq!(
        check_password("elevenchars", &twelve),
        Err(PasswordError::TooShort { min: 12 })
    );
    // Characters, not bytes: twelve accented letters are twelve.
    assert_eq!(check_password(&"é".repeat(12), &twelve), Ok(()));
    let why = check_password("elevenchars", &twelve)
        .unwrap_err()
        .to_string();
    assert!(!why.contains("elevenchars") && !why.contains("11"), "{why}");
}

#[test]
fn inline_arrays_of_accounts_are_edited_in_place() {
    // A top-level key, so above the first header.
    let text = file("").replacen(
        "version = 1\n",
        &format!(
            "version = 1\naccount = [{{ name = \"bob\", password_hash = \"{HASH}\" }}]  # kept\n"
        ),
        1,
    );
    let added = add("t", &text, "carol", HASH).unwrap();
    assert_eq!(added.change.to_string(), "added account carol");
    let names: Vec<_> = added
        .config
        .accounts
        .iter()
        .map(|a| a.name.clone())
        .collect();
    assert_eq!(names, ["bob", "carol"]);
    assert!(added.text.contains("]  # kept\n"), "{}", added.text);
    let deleted = delete("t", &added.text, "carol").unwrap();
    assert_eq!(deleted.change.to_string(), "deleted account carol");
    assert_eq!(deleted.text, text);
}

#[test]
fn deleting_keeps_the_comments_that_belong_to_the_section_above() {
    let entry =
        |name: &str| format!("[[account]]\nname = \"{name}\"\npassword_hash = \"{HASH}\"\n");
    let text = file(&format!(
        "[containers]\n# memory_limit = \"40M\"\n\n# Bob's.\n{}\n{}",
        entry("bob"),
        entry("carol")
    ));
    let edited = delete("t", &text, "BOB").unwrap();
    assert_eq!(
        edited.text,
        file(&format!(
            "[containers]\n# memory_limit = \"40M\"\n\n{}",
            entry("carol")
        ))
    );
    assert!(matches!(
        delete("t", &edited.text, "bob"),
        Err(AccountError::Unknown { known, .. }) if known == "carol"
    ));
}

#[test]
fn an_edit_the_file_check_refuses_is_not_returned() {
    // Room for one box only: a second account is more than the network holds.
    let text = file(&format!(
        "[containers]\nipv4 = \"10.88.0.0/30\"\n[[account]]\nname = \"bob\"\npassword_hash = \"{HASH}\"\n"
    ));
    match add("t", &text, "carol", HASH) {
        Err(AccountError::EditInvalid(d)) => assert!(d.to_string().contains("room for"), "{d}"),
        other => panic!("expected EditInvalid, got {other:?}"),
    }
}

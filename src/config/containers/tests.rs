//! `[containers]`: defaults, addresses and slots, and the positions of bad values.

use super::*;
use crate::config::parse;
use crate::config::tests::{assert_one, edit, errors, good, HASH};

fn with_section(section: &str) -> String {
    format!("{}[containers]\n{section}\n", good())
}

fn accounts(names: &[&str]) -> Vec<Account> {
    names
        .iter()
        .map(|name| Account {
            name: name.to_string(),
            password_hash: HASH.into(),
        })
        .collect()
}

#[test]
fn defaults_give_a_private_24_and_a_112_from_the_uplink() {
    let c = parse("t.toml", &good()).unwrap().containers;
    assert_eq!(c.ipv4.to_string(), "10.88.0.0/24");
    assert_eq!(c.front_ipv4().to_string(), "10.88.0.1");
    assert_eq!(c.capacity(), 253);
    assert_eq!(c.box_ipv4(0).to_string(), "10.88.0.2");
    assert_eq!(c.box_ipv4(252).to_string(), "10.88.0.254");
    // eth0 has 2001:db8::10/64: the last /112 of that /64.
    assert_eq!(
        c.ipv6.unwrap().to_string(),
        "2001:db8::ffff:ffff:ffff:0/112"
    );
    assert!(c.ipv6_derived);
    assert_eq!(
        c.front_ipv6().unwrap().to_string(),
        "2001:db8::ffff:ffff:ffff:1"
    );
    assert_eq!(
        c.box_ipv6(3).unwrap().to_string(),
        "2001:db8::ffff:ffff:ffff:5"
    );
    assert_eq!(c.memory_limit, 64 << 20);
}

#[test]
fn given_values_are_taken() {
    let c = parse(
        "t.toml",
        &with_section(
            "ipv4 = \"172.20.0.0/20\"\nipv6 = \"2001:db8:1::/64\"\nmemory_limit = \"1G\"",
        ),
    )
    .unwrap()
    .containers;
    assert_eq!(c.front_ipv4().to_string(), "172.20.0.1");
    assert_eq!(c.capacity(), 4093);
    assert_eq!(c.box_ipv6(0).unwrap().to_string(), "2001:db8:1::2");
    assert!(!c.ipv6_derived);
    assert_eq!(c.memory_limit, 1 << 30);
}

#[test]
fn without_ipv6_the_boxes_get_none() {
    let text = edit("ipv6 = [\"2001:db8::10/64\"]\ngateway6 = \"fe80::1\"\n", "");
    let c = parse("t.toml", &text).unwrap().containers;
    assert_eq!((c.ipv6, c.front_ipv6(), c.box_ipv6(0)), (None, None, None));
}

#[test]
fn slots_do_not_move_when_another_account_is_deleted_or_added() {
    let names = ["alice", "bob", "carol", "dave", "erin", "frank", "grace"];
    let c = parse("t.toml", &good()).unwrap().containers;
    let all = c.slots(&accounts(&names));
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "{all:?}");
    for deleted in 0..names.len() {
        let mut rest = names.to_vec();
        rest.remove(deleted);
        let mut expected = all.clone();
        expected.remove(deleted);
        assert_eq!(
            c.slots(&accounts(&rest)),
            expected,
            "without {}",
            names[deleted]
        );
    }
    let mut more = names.to_vec();
    more.push("heidi");
    assert_eq!(c.slots(&accounts(&more))[..names.len()], all[..]);
}

#[test]
fn a_collision_goes_to_the_account_added_later() {
    // Five names in four slots: two of them prefer the same one.
    let names = ["alice", "bob", "carol", "dave", "erin"];
    let preferred = |name: &str| assign_slots(std::iter::once(name), 4)[0];
    let (a, b) = (0..names.len())
        .flat_map(|i| (i + 1..names.len()).map(move |j| (names[i], names[j])))
        .find(|(a, b)| preferred(a) == preferred(b))
        .expect("pigeonhole");
    let slot = preferred(a);
    assert_eq!(assign_slots([a, b].into_iter(), 4), [slot, (slot + 1) % 4]);
    assert_eq!(assign_slots([b, a].into_iter(), 4), [slot, (slot + 1) % 4]);
    // Every slot is handed out once, whatever the collisions.
    let mut all = assign_slots(names[..4].iter().copied(), 4);
    all.sort();
    assert_eq!(all, [0, 1, 2, 3]);
}

#[test]
fn a_bad_network_is_reported_where_it_is() {
    for (value, needle) in [
        ("10.88.0.0", "invalid network"),
        (
            "10.88.0.5/24",
            "host bits set; expected the network address 10.88.0.0/24",
        ),
        ("8.8.8.0/24", "not a private network"),
        ("10.88.0.0/31", "prefix length /31 is out of range"),
        ("10.0.0.0/8", "prefix length /8 is out of range"),
    ] {
        assert_one(&with_section(&format!("ipv4 = \"{value}\"")), 14, 8, needle);
    }
}

#[test]
fn an_interface_in_the_box_network_is_an_error() {
    let overlapping = edit("192.0.2.10/24", "10.88.0.10/16").replace("192.0.2.1", "10.88.0.1");
    // The default network: reported at the interface, which says how to move the boxes.
    assert_one(
        &overlapping,
        5,
        1,
        "overlaps the default box network 10.88.0.0/24",
    );
    // A given one: reported at the value.
    assert_one(
        &format!("{overlapping}[containers]\nipv4 = \"10.88.4.0/24\"\n"),
        14,
        8,
        "overlaps 10.88.0.10/16 of interface \"eth0\"",
    );
    assert!(parse(
        "t.toml",
        &format!("{overlapping}[containers]\nipv4 = \"10.89.0.0/24\"\n")
    )
    .is_ok());
}

#[test]
fn more_accounts_than_the_network_holds_is_an_error() {
    let mut text = with_section("ipv4 = \"10.88.0.0/30\"");
    for name in ["alice", "bob"] {
        text.push_str(&format!(
            "[[account]]\nname = \"{name}\"\npassword_hash = \"{HASH}\"\n"
        ));
    }
    assert_one(&text, 14, 8, "room for 1 boxes, but there are 2 accounts");
    assert!(parse("t.toml", &text.replace("/30", "/29")).is_ok());
}

#[test]
fn a_bad_ipv6_prefix_is_reported_where_it_is() {
    for (value, needle) in [
        ("2001:db8:1::", "invalid prefix"),
        ("2001:db8:1::1/64", "host bits set"),
        ("fe80::/64", "not a unicast prefix"),
        ("2001:db8:1::/121", "fewer addresses than the box network"),
        (
            "2001:db8::/48",
            "holds 2001:db8::10, an address of interface \"eth0\"",
        ),
    ] {
        assert_one(&with_section(&format!("ipv6 = \"{value}\"")), 14, 8, needle);
    }
    // Inside the uplink's /64 but clear of its address: proxy NDP's case, accepted.
    assert!(parse("t.toml", &with_section("ipv6 = \"2001:db8::1:0/112\"")).is_ok());
}

#[test]
fn an_uplink_prefix_too_small_to_derive_from_is_an_error() {
    let text = edit("2001:db8::10/64", "2001:db8::10/120");
    assert_one(&text, 5, 1, "too small to hold the boxes' /112");
    assert!(parse(
        "t.toml",
        &format!("{text}[containers]\nipv6 = \"2001:db8:1::/64\"\n")
    )
    .is_ok());
}

#[test]
fn memory_limits_take_k_m_or_g_and_a_floor() {
    assert_eq!(memory_limit(&"64M".into()), Ok(64 << 20));
    assert_eq!(memory_limit(&"20480k".into()), Ok(20 << 20));
    for (value, line, needle) in [
        ("\"30\"", 14, "invalid memory_limit \"30\""),
        ("\"30MB\"", 14, "invalid memory_limit"),
        ("\"-1G\"", 14, "invalid memory_limit"),
        ("30", 14, "must be a quoted size"),
        (
            "\"10M\"",
            14,
            "too small for Dovecot; expected at least \"20M\"",
        ),
    ] {
        assert_one(
            &with_section(&format!("memory_limit = {value}")),
            line,
            16,
            needle,
        );
    }
}

#[test]
fn unknown_keys_are_errors() {
    let errs = errors(&with_section("bridge = \"br0\""));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].2.contains("unknown field `bridge`"), "{errs:#?}");
}

#[test]
fn a_large_network_holds_no_more_boxes_than_there_are_box_uids() {
    let net = |text: &str| super::capacity(text.parse().unwrap());
    assert_eq!(net("10.88.0.0/24"), 253);
    assert_eq!(net("10.88.0.0/16"), super::MAX_BOXES);
}

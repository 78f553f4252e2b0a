//! What the mail configuration is made from: the names, addresses and logins that
//! `letterbox.toml` implies.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::{Config, Relayhost};

/// Boxes run as uid (and gid) `BOX_ID_BASE + slot`: their own, never a system account's,
/// and stable for as long as the account exists. `mail::maildir::ensure_maildir` gives
/// the box's home that uid, so the Maildir's owner follows the slot too.
pub const BOX_ID_BASE: u32 = 20_000;

/// The mail system of one `letterbox.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailPlan {
    /// The mail host's name, `<hostname>.<domain>`: the MX, the TLS name, the banner.
    pub hostname: String,
    pub domain: String,
    /// The names the TLS certificate carries: `hostname` first, then the webmail's
    /// (`config::Webmail::certificate_names`).
    pub certificate_names: Vec<String>,
    /// The front's address on the boxes' bridge: the only client a box's LMTP and its
    /// trusted-network logins accept.
    pub front_ipv4: Ipv4Addr,
    /// Whether the host has IPv6, so that the front listens on it too and boxes get theirs.
    pub ipv6: bool,
    /// One box per account, sorted by name.
    pub boxes: Vec<BoxPlan>,
    /// The smarthost mail to other domains goes through; `None`: straight to their MX.
    pub relayhost: Option<Relayhost>,
    /// The resolvers the front's Postfix asks for other domains' MX (`nameservers`).
    pub nameservers: Vec<IpAddr>,
}

/// One account's box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoxPlan {
    /// The account's name, which also logs in (`alice`).
    pub name: String,
    /// `<name>.<domain>`, the box's mail domain.
    pub mail_domain: String,
    /// `box@<name>.<domain>`, the account's address and its canonical login.
    pub address: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    /// The box's mail uid and gid, which own its home (`mail::maildir::ensure_maildir`).
    pub id: u32,
    /// crypt(3) `$6$` or `$y$`, as in the file.
    pub password_hash: String,
}

impl From<&Config> for MailPlan {
    fn from(config: &Config) -> MailPlan {
        let domain = config.system.domain.clone();
        let containers = &config.containers;
        let slots = containers.slots(&config.accounts);
        let mut boxes: Vec<BoxPlan> = config
            .accounts
            .iter()
            .zip(slots)
            .zip(config.box_ipv6_addresses())
            .map(|((account, slot), (_, ipv6))| {
                let mail_domain = format!("{}.{domain}", account.name);
                BoxPlan {
                    name: account.name.clone(),
                    address: format!("box@{mail_domain}"),
                    mail_domain,
                    ipv4: containers.box_ipv4(slot),
                    ipv6,
                    id: BOX_ID_BASE + slot,
                    password_hash: account.password_hash.clone(),
                }
            })
            .collect();
        boxes.sort_by(|a, b| a.name.cmp(&b.name));
        MailPlan {
            hostname: config.system.fqdn(),
            domain,
            certificate_names: config.webmail.certificate_names(&config.system),
            front_ipv4: containers.front_ipv4(),
            ipv6: config.has_ipv6(),
            boxes,
            relayhost: config.mail.relayhost.clone(),
            nameservers: config.nameservers.clone(),
        }
    }
}

impl MailPlan {
    pub fn find(&self, name: &str) -> Option<&BoxPlan> {
        self.boxes.iter().find(|b| b.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "letterbox" as SHA-512 crypt.
    const HASH: &str = "$6$saltsaltsalt$S/Pf/kKX1rCNRo4NCSDP1C7O8qxgb7lD0RhObcGYaY.ETFEN6GtQYVXCn22/nm.Ujp4KjOqcwTpiIrOQ.hq6S/";

    fn config(extra: &str) -> Config {
        let text = format!(
            "version = 1\n[system]\nhostname = \"mx\"\ndomain = \"Example.ORG\"\n\
             [[interface]]\nname = \"eth0\"\nipv4 = [\"192.0.2.10/24\"]\n\
             ipv6 = [\"2001:db8::10/64\"]\n{extra}\
             [[account]]\nname = \"bob\"\npassword_hash = \"{HASH}\"\n\
             [[account]]\nname = \"Alice\"\npassword_hash = \"{HASH}\"\n"
        );
        crate::config::parse("t.toml", &text).unwrap()
    }

    #[test]
    fn names_addresses_and_logins_come_from_the_file() {
        let plan = MailPlan::from(&config(""));
        assert_eq!(plan.hostname, "mx.example.org");
        assert_eq!(plan.domain, "example.org");
        assert_eq!(plan.front_ipv4, "10.88.0.1".parse::<Ipv4Addr>().unwrap());
        assert!(plan.ipv6);
        let names: Vec<&str> = plan.boxes.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob"], "sorted, lower case");
        let alice = plan.find("alice").unwrap();
        assert_eq!(alice.mail_domain, "alice.example.org");
        assert_eq!(alice.address, "box@alice.example.org");
        assert_eq!(alice.password_hash, HASH);
        let box_net: ipnet::Ipv4Net = "10.88.0.0/24".parse().unwrap();
        let box_net6: ipnet::Ipv6Net = "2001:db8::ffff:ffff:ffff:0/112".parse().unwrap();
        for b in &plan.boxes {
            assert!(
                box_net.contains(&b.ipv4) && b.ipv4 != plan.front_ipv4,
                "{b:?}"
            );
            assert!(box_net6.contains(&b.ipv6.unwrap()), "{b:?}");
            // The same slot gives the IPv4, IPv6 and the uid.
            let slot = u32::from(b.ipv4) - u32::from(box_net.network()) - 2;
            assert_eq!(b.id, BOX_ID_BASE + slot);
            assert_eq!(
                u128::from(b.ipv6.unwrap()) - u128::from(box_net6.network()),
                u128::from(slot) + 2
            );
        }
        assert_ne!(plan.boxes[0].ipv4, plan.boxes[1].ipv4);
    }

    #[test]
    fn a_box_keeps_its_addresses_when_another_account_goes() {
        let both = MailPlan::from(&config(""));
        let mut without_bob = config("");
        without_bob.accounts.retain(|a| a.name != "bob");
        let alone = MailPlan::from(&without_bob);
        assert_eq!(alone.boxes, [both.find("alice").unwrap().clone()]);
    }

    #[test]
    fn the_containers_section_places_the_boxes() {
        let plan = MailPlan::from(&config(
            "[containers]\nipv4 = \"172.16.5.0/28\"\nipv6 = \"2001:db8:5::/64\"\n",
        ));
        assert_eq!(plan.front_ipv4.to_string(), "172.16.5.1");
        for b in &plan.boxes {
            assert!(b.ipv4.to_string().starts_with("172.16.5."), "{b:?}");
            assert!(
                b.ipv6.unwrap().to_string().starts_with("2001:db8:5::"),
                "{b:?}"
            );
        }
    }
}

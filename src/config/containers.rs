//! `[containers]`: the private network the mail boxes get their addresses from, their
//! routed IPv6 prefix, and the memory each box may use.
//!
//! Each account has a *slot*, a small number that gives its box's IPv4 and IPv6 address
//! (and, in `mail::plan`, its uid). Slots must not move when another account is deleted:
//! a box's address is published in DNS and its uid owns its Maildir. So a slot comes from
//! the account's name, not its position: a hash of the name picks a preferred slot, and
//! an account whose slot an earlier `[[account]]` (in file order, which `account add`
//! keeps as the order of creation) already holds takes the next free one. Adding an
//! account never moves another; deleting one moves only an account added after it that
//! had been displaced by a collision, which a sparse network makes rare.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::diagnostic::Collector;
use super::network::Interface;
use super::Account;

/// The boxes' network settings, as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Containers {
    /// The bridge's network: its first host address is the front's (the bridge's own),
    /// the following ones are the boxes'.
    pub ipv4: Ipv4Net,
    /// The boxes' routed IPv6 prefix, laid out as `ipv4` is; `None` when the appliance
    /// has no IPv6 (the boxes then get IPv4 only, and no AAAA is published for them).
    pub ipv6: Option<Ipv6Net>,
    /// Whether `ipv6` was derived from the uplink's prefix rather than given.
    pub ipv6_derived: bool,
    /// Each box's memory limit, in bytes.
    pub memory_limit: u64,
}

pub const DEFAULT_IPV4: &str = "10.88.0.0/24";
/// Room for Dovecot at rest (about 18 MB) and for delivering a message near Postfix's
/// 10 MB limit, whose page cache counts against the box: under 30M such a delivery was
/// killed on every try (tests/mail_e2e.rs sends one).
pub const DEFAULT_MEMORY_LIMIT: &str = "64M";
/// Longer prefixes leave room for too few boxes; shorter ones need more than a /112.
const IPV4_PREFIXES: Range<u8> = 16..31;
/// The most boxes a network holds, whatever its size: each box's uid is
/// `mail::plan::BOX_ID_BASE` plus its slot, and box uids stay in a range of this size,
/// below the ids that systemd and user namespaces hand out.
pub const MAX_BOXES: u32 = 10_000;
/// A derived IPv6 prefix is this long: room for as many boxes as the largest IPv4 network.
const DERIVED_IPV6_PREFIX: u8 = 112;
/// One Dovecot at rest takes about 18 MB; less than this and a box cannot even start.
const MIN_MEMORY_LIMIT: u64 = 20 << 20;

impl Containers {
    /// How many boxes the network has room for: every host address but the front's.
    pub fn capacity(&self) -> u32 {
        capacity(self.ipv4)
    }

    /// The front's address on the bridge.
    pub fn front_ipv4(&self) -> Ipv4Addr {
        nth4(self.ipv4, 1)
    }

    pub fn front_ipv6(&self) -> Option<Ipv6Addr> {
        self.ipv6.map(|net| nth6(net, 1))
    }

    pub fn box_ipv4(&self, slot: u32) -> Ipv4Addr {
        nth4(self.ipv4, 2 + slot)
    }

    pub fn box_ipv6(&self, slot: u32) -> Option<Ipv6Addr> {
        self.ipv6.map(|net| nth6(net, 2 + u128::from(slot)))
    }

    /// The slot of each account, in the order given (see the module's comment).
    /// Validation has checked that there is room for every account.
    pub fn slots(&self, accounts: &[Account]) -> Vec<u32> {
        assign_slots(accounts.iter().map(|a| a.name.as_str()), self.capacity())
    }
}

fn capacity(net: Ipv4Net) -> u32 {
    // Network and broadcast addresses aside, less the front's.
    ((1u32 << (32 - net.prefix_len())) - 3).min(MAX_BOXES)
}

fn nth4(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

fn nth6(net: Ipv6Net, n: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()) + n)
}

/// A hash of the name picks the preferred slot; taken slots are skipped.
fn assign_slots<'a>(names: impl Iterator<Item = &'a str>, capacity: u32) -> Vec<u32> {
    let mut taken = std::collections::HashSet::new();
    names
        .map(|name| {
            let digest = Sha256::digest(name.as_bytes());
            let hash = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
            let mut slot = (hash % u64::from(capacity)) as u32;
            while !taken.insert(slot) {
                slot = (slot + 1) % capacity;
            }
            slot
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawContainers {
    ipv4: Option<Spanned<String>>,
    ipv6: Option<Spanned<String>>,
    /// Any TOML value, so that `memory_limit = 30` gets the message that says the units.
    memory_limit: Option<Spanned<toml::Value>>,
}

/// `interface_headers[i]` is the span of the `[[interface]]` header of `interfaces[i]`,
/// where a clash with a default (not written in the file) is reported.
pub(super) fn validate_containers(
    raw: Option<Spanned<RawContainers>>,
    interfaces: &[Interface],
    interface_headers: &[Range<usize>],
    accounts: usize,
    c: &mut Collector,
) -> Containers {
    let (header, raw) = match raw {
        Some(raw) => (Some(raw.span()), Some(raw.into_inner())),
        None => (None, None),
    };
    let raw_ipv4 = raw.as_ref().and_then(|r| r.ipv4.as_ref());
    let raw_ipv6 = raw.as_ref().and_then(|r| r.ipv6.as_ref());
    let raw_memory = raw.as_ref().and_then(|r| r.memory_limit.as_ref());
    let default_ipv4: Ipv4Net = DEFAULT_IPV4.parse().expect("a valid default");

    let ipv4 = raw_ipv4
        .and_then(|s| parse_ipv4(s, c))
        .unwrap_or(default_ipv4);
    check_ipv4(ipv4, raw_ipv4, interfaces, interface_headers, c);
    if accounts as u64 > u64::from(capacity(ipv4)) {
        let at = raw_ipv4.map(|s| s.span()).or(header).unwrap_or(0..0);
        c.error(
            at,
            format!(
                "the box network {ipv4} has room for {} boxes, but there are {accounts} \
                 accounts; expected a larger network in [containers] `ipv4`, e.g. \"10.88.0.0/20\"",
                capacity(ipv4)
            ),
        );
    }

    let ipv6 = match raw_ipv6 {
        Some(s) => parse_ipv6(s, ipv4, interfaces, c),
        None => derive_ipv6(interfaces, interface_headers, c),
    };
    let memory_limit = raw_memory
        .and_then(|m| match memory_limit(m.get_ref()) {
            Ok(bytes) => Some(bytes),
            Err(message) => {
                c.error(m.span(), message);
                None
            }
        })
        .unwrap_or_else(|| memory_limit(&DEFAULT_MEMORY_LIMIT.into()).expect("valid default"));
    Containers {
        ipv4,
        ipv6,
        ipv6_derived: raw_ipv6.is_none() && ipv6.is_some(),
        memory_limit,
    }
}

fn parse_ipv4(s: &Spanned<String>, c: &mut Collector) -> Option<Ipv4Net> {
    let text = s.get_ref();
    let expected = "expected a private IPv4 network, e.g. \"10.88.0.0/24\"";
    let Ok(net) = text.parse::<Ipv4Net>() else {
        c.error(s.span(), format!("invalid network {text:?}; {expected}"));
        return None;
    };
    let problem = if !IPV4_PREFIXES.contains(&net.prefix_len()) {
        format!(
            "prefix length /{} is out of range; expected /{} to /{}",
            net.prefix_len(),
            IPV4_PREFIXES.start,
            IPV4_PREFIXES.end - 1
        )
    } else if net.addr() != net.network() {
        format!(
            "{text:?} has host bits set; expected the network address {}",
            net.trunc()
        )
    } else if !net.addr().is_private() {
        format!("{net} is not a private network; {expected} (inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16)")
    } else {
        return Some(net);
    };
    c.error(s.span(), format!("invalid box network: {problem}"));
    None
}

/// The box network must not overlap an interface's: the boxes would be unreachable, or
/// would stand in for hosts of the LAN.
fn check_ipv4(
    ipv4: Ipv4Net,
    given: Option<&Spanned<String>>,
    interfaces: &[Interface],
    interface_headers: &[Range<usize>],
    c: &mut Collector,
) {
    for (interface, header) in interfaces.iter().zip(interface_headers) {
        let Some(net) = interface
            .ipv4
            .iter()
            .find(|n| n.contains(&ipv4.network()) || ipv4.contains(&n.network()))
        else {
            continue;
        };
        match given {
            Some(s) => c.error(
                s.span(),
                format!(
                    "the box network {ipv4} overlaps {net} of interface {:?}; expected a \
                     private network that no interface uses",
                    interface.name
                ),
            ),
            None => c.error(
                header.clone(),
                format!(
                    "interface {:?} has {net}, which overlaps the default box network \
                     {ipv4}; expected `ipv4 = ` another private network in a [containers] \
                     section",
                    interface.name
                ),
            ),
        }
    }
}

fn parse_ipv6(
    s: &Spanned<String>,
    ipv4: Ipv4Net,
    interfaces: &[Interface],
    c: &mut Collector,
) -> Option<Ipv6Net> {
    let text = s.get_ref();
    let Ok(net) = text.parse::<Ipv6Net>() else {
        c.error(
            s.span(),
            format!("invalid prefix {text:?}; expected a routed IPv6 prefix, e.g. \"2001:db8:0:1::/64\""),
        );
        return None;
    };
    let addr = net.addr();
    let room = 1u128.checked_shl(u32::from(128 - net.prefix_len()));
    let problem = if addr != net.network() {
        format!(
            "{text:?} has host bits set; expected the prefix {}",
            net.trunc()
        )
    } else if addr.is_multicast()
        || addr.is_loopback()
        || addr.is_unspecified()
        || (addr.segments()[0] & 0xffc0) == 0xfe80
    {
        format!("{net} is not a unicast prefix; expected a global prefix routed to this appliance")
    } else if room.is_some_and(|room| room < u128::from(capacity(ipv4)) + 2) {
        format!(
            "{net} has fewer addresses than the box network {ipv4}; expected a prefix of \
             /{DERIVED_IPV6_PREFIX} or shorter"
        )
    } else if let Some((name, own)) = interfaces
        .iter()
        .flat_map(|i| i.ipv6.iter().map(move |n| (&i.name, n.addr())))
        .find(|(_, own)| net.contains(own))
    {
        format!(
            "{net} holds {own}, an address of interface {name:?}; expected a prefix that \
             no interface address is in (inside the interface's on-link prefix is fine)"
        )
    } else {
        return Some(net);
    };
    c.error(s.span(), format!("invalid box prefix: {problem}"));
    None
}

/// Without a given prefix, the boxes take the last /112 of the uplink's first IPv6
/// prefix (on-link, so the agent answers neighbour solicitation for them: proxy NDP).
/// The uplink is the interface with `gateway6`, else the first with an IPv6 prefix.
fn derive_ipv6(
    interfaces: &[Interface],
    interface_headers: &[Range<usize>],
    c: &mut Collector,
) -> Option<Ipv6Net> {
    let global = |i: &&Interface| {
        i.ipv6
            .iter()
            .any(|n| (n.addr().segments()[0] & 0xffc0) != 0xfe80)
    };
    let uplink = interfaces
        .iter()
        .filter(|i| i.gateway6.is_some())
        .find(global)
        .or_else(|| interfaces.iter().find(global))?;
    let header = interfaces
        .iter()
        .position(|i| std::ptr::eq(i, uplink))
        .and_then(|i| interface_headers.get(i))
        .cloned()
        .unwrap_or(0..0);
    let on_link = uplink
        .ipv6
        .iter()
        .find(|n| (n.addr().segments()[0] & 0xffc0) != 0xfe80)?
        .trunc();
    if on_link.prefix_len() > DERIVED_IPV6_PREFIX {
        c.error(
            header,
            format!(
                "interface {:?}'s prefix {on_link} is too small to hold the boxes' \
                 /{DERIVED_IPV6_PREFIX}; expected `ipv6 = ` a routed prefix in a \
                 [containers] section",
                uplink.name
            ),
        );
        return None;
    }
    let host_bits = 128 - u32::from(on_link.prefix_len());
    let last = u128::from(on_link.network()) | (((1u128 << host_bits) - 1) & !0xffff);
    let derived = Ipv6Net::new(Ipv6Addr::from(last), DERIVED_IPV6_PREFIX).expect("valid length");
    if let Some(own) = uplink
        .ipv6
        .iter()
        .map(|n| n.addr())
        .find(|a| derived.contains(a))
    {
        c.error(
            header,
            format!(
                "interface {:?}'s address {own} is inside {derived}, the boxes' prefix \
                 derived from it; expected `ipv6 = ` a routed prefix in a [containers] section",
                uplink.name
            ),
        );
        return None;
    }
    Some(derived)
}

/// "30M": a whole number of KiB, MiB or GiB (binary, as cgroups count).
fn memory_limit(value: &toml::Value) -> Result<u64, String> {
    const EXPECTED: &str = "expected a quoted size such as \"30M\" (K, M or G)";
    let toml::Value::String(text) = value else {
        return Err(format!("memory_limit must be a quoted size; {EXPECTED}"));
    };
    let invalid = || format!("invalid memory_limit {text:?}; {EXPECTED}");
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let shift = match unit {
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        _ => return Err(invalid()),
    };
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(invalid)?;
    if bytes < MIN_MEMORY_LIMIT {
        return Err(format!(
            "memory_limit {text:?} is too small for Dovecot; expected at least \"{}M\"",
            MIN_MEMORY_LIMIT >> 20
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;

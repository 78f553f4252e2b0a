//! `[[interface]]` and `nameservers`: static IPv4/IPv6 addressing, checked for meaning.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use toml::Spanned;

use super::diagnostic::Collector;

/// One network interface, as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ipv4: Vec<Ipv4Net>,
    pub gateway4: Option<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Net>,
    pub gateway6: Option<Ipv6Addr>,
    pub mtu: Option<u32>,
    /// When true, SLAAC addresses and router-advertised DNS coexist with the static ones.
    pub accept_ra: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInterface {
    name: Option<Spanned<String>>,
    #[serde(default)]
    ipv4: Vec<Spanned<String>>,
    gateway4: Option<Spanned<String>>,
    #[serde(default)]
    ipv6: Vec<Spanned<String>>,
    gateway6: Option<Spanned<String>>,
    mtu: Option<Spanned<u32>>,
    #[serde(default)]
    accept_ra: bool,
}

/// Linux limits interface names to IFNAMSIZ - 1 bytes.
const IFNAME_MAX: usize = 15;
const IPV6_MIN_MTU: u32 = 1280;

pub(super) fn validate_interfaces(
    raw: Vec<Spanned<RawInterface>>,
    c: &mut Collector,
) -> Vec<Interface> {
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    let mut gateway4_seen = false;
    let mut gateway6_seen = false;
    let mut out = Vec::new();

    for r in raw {
        let header = r.span();
        let r = r.into_inner();
        // Without a name the rest is still checked; the interface is reported missing it.
        let name = c.require(&r.name, "name", header.clone()).cloned();
        if let Some(name) = &name {
            check_name(name, &mut names, c);
        }

        // Each parsed prefix stays paired with its own span for the duplicate check.
        let parsed4: Vec<_> = r
            .ipv4
            .iter()
            .filter_map(|s| Some((s, parse_v4_net(s, c)?)))
            .collect();
        let parsed6: Vec<_> = r
            .ipv6
            .iter()
            .filter_map(|s| Some((s, parse_v6_net(s, c)?)))
            .collect();
        let spanned_ips = parsed4
            .iter()
            .map(|(s, n)| (s, IpAddr::V4(n.addr())))
            .chain(parsed6.iter().map(|(s, n)| (s, IpAddr::V6(n.addr()))));
        for (spanned, ip) in spanned_ips {
            if !addresses.insert(ip) {
                c.error(
                    spanned.span(),
                    format!("address {ip} is configured twice; expected each address once"),
                );
            }
        }
        let ipv4: Vec<Ipv4Net> = parsed4.iter().map(|(_, n)| *n).collect();
        let ipv6: Vec<Ipv6Net> = parsed6.iter().map(|(_, n)| *n).collect();

        // On-link checks are only meaningful when every prefix parsed.
        let ipv4_complete = ipv4.len() == r.ipv4.len() && !c.had_bad_value(&header, "ipv4");
        let ipv6_complete = ipv6.len() == r.ipv6.len() && !c.had_bad_value(&header, "ipv6");
        let gateway4 = r.gateway4.as_ref().and_then(|g| {
            let addr = parse_addr::<Ipv4Addr>(g, "an IPv4 address, e.g. \"192.0.2.1\"", c)?;
            if gateway4_seen {
                c.error(
                    g.span(),
                    "a second IPv4 default gateway; expected `gateway4` on one interface only",
                );
            }
            gateway4_seen = true;
            if ipv4.iter().any(|n| n.addr() == addr) {
                c.error(
                    g.span(),
                    format!("gateway {addr} is this interface's own address; expected the router's address"),
                );
            } else if ipv4_complete && !ipv4.iter().any(|n| n.contains(&addr)) {
                c.error(
                    g.span(),
                    format!(
                        "gateway {addr} is not on-link; expected an address inside one of \
                         this interface's IPv4 prefixes ({})",
                        list(&ipv4)
                    ),
                );
            }
            Some(addr)
        });
        let gateway6 = r.gateway6.as_ref().and_then(|g| {
            let addr = parse_addr::<Ipv6Addr>(g, "an IPv6 address, e.g. \"2001:db8::1\"", c)?;
            if gateway6_seen {
                c.error(
                    g.span(),
                    "a second IPv6 default gateway; expected `gateway6` on one interface only",
                );
            }
            gateway6_seen = true;
            let link_local = (addr.segments()[0] & 0xffc0) == 0xfe80;
            if ipv6.iter().any(|n| n.addr() == addr) {
                c.error(
                    g.span(),
                    format!("gateway {addr} is this interface's own address; expected the router's address"),
                );
            } else if ipv6_complete && !link_local && !ipv6.iter().any(|n| n.contains(&addr)) {
                c.error(
                    g.span(),
                    format!(
                        "gateway {addr} is not on-link; expected a link-local fe80:: address \
                         or an address inside one of this interface's IPv6 prefixes ({})",
                        list(&ipv6)
                    ),
                );
            }
            Some(addr)
        });

        let mtu = r.mtu.as_ref().and_then(|m| {
            let v = *m.get_ref();
            let min = if ipv6.is_empty() { 68 } else { IPV6_MIN_MTU };
            if !(min..=65535).contains(&v) {
                c.error(
                    m.span(),
                    format!("MTU {v} is out of range; expected {min} to 65535"),
                );
                return None;
            }
            Some(v)
        });

        out.push(Interface {
            name: name.map(Spanned::into_inner).unwrap_or_default(),
            ipv4,
            gateway4,
            ipv6,
            gateway6,
            mtu,
            accept_ra: r.accept_ra,
        });
    }
    out
}

fn check_name(name: &Spanned<String>, seen: &mut HashSet<String>, c: &mut Collector) {
    let n = name.get_ref();
    if n.is_empty()
        || n.len() > IFNAME_MAX
        || n.chars()
            .any(|ch| ch == '/' || ch == ':' || ch.is_whitespace())
    {
        c.error(
            name.span(),
            format!(
                "invalid interface name {n:?}; expected 1 to {IFNAME_MAX} characters \
                 without '/', ':' or spaces, e.g. \"eth0\""
            ),
        );
    } else if !seen.insert(n.clone()) {
        c.error(
            name.span(),
            format!("interface {n:?} is listed twice; expected each interface once"),
        );
    }
}

/// glibc's resolver reads at most this many `nameserver` lines and ignores the rest.
const MAX_NAMESERVERS: usize = 3;

pub(super) fn validate_nameservers(raw: &[Spanned<String>], c: &mut Collector) -> Vec<IpAddr> {
    if let Some(extra) = raw.get(MAX_NAMESERVERS) {
        c.error(
            extra.span(),
            format!(
                "more than {MAX_NAMESERVERS} nameservers; expected at most {MAX_NAMESERVERS} \
                 (the resolver ignores the rest)"
            ),
        );
    }
    raw.iter()
        .filter_map(|s| parse_addr::<IpAddr>(s, "an IPv4 or IPv6 address, e.g. \"192.0.2.53\"", c))
        .collect()
}

fn list<T: std::fmt::Display>(nets: &[T]) -> String {
    if nets.is_empty() {
        return "none configured".into();
    }
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_addr<T: std::str::FromStr>(
    s: &Spanned<String>,
    expected: &str,
    c: &mut Collector,
) -> Option<T> {
    match s.get_ref().parse() {
        Ok(a) => Some(a),
        Err(_) => {
            c.error(
                s.span(),
                format!(
                    "{:?} is not a valid address; expected {expected}",
                    s.get_ref()
                ),
            );
            None
        }
    }
}

/// Splits "addr/prefix", reporting a missing or malformed prefix.
fn split_prefix(
    s: &Spanned<String>,
    max: u8,
    example: &str,
    c: &mut Collector,
) -> Option<(String, u8)> {
    let text = s.get_ref();
    let Some((addr, prefix)) = text.split_once('/') else {
        c.error(
            s.span(),
            format!("{text:?} has no prefix length; expected address/prefix, e.g. \"{example}\""),
        );
        return None;
    };
    match prefix.parse::<u8>() {
        Ok(p) if p <= max => Some((addr.to_string(), p)),
        _ => {
            c.error(
                s.span(),
                format!("invalid prefix length {prefix:?} in {text:?}; expected 0 to {max}"),
            );
            None
        }
    }
}

fn parse_v4_net(s: &Spanned<String>, c: &mut Collector) -> Option<Ipv4Net> {
    let (addr, prefix) = split_prefix(s, 32, "192.0.2.10/24", c)?;
    let Ok(addr) = addr.parse::<Ipv4Addr>() else {
        c.error(
            s.span(),
            format!(
                "{addr:?} is not a valid IPv4 address; expected four numbers 0-255, e.g. \"192.0.2.10/24\""
            ),
        );
        return None;
    };
    let net = Ipv4Net::new(addr, prefix).expect("prefix checked above");
    if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() || addr.is_loopback() {
        c.error(
            s.span(),
            format!("{addr} cannot be an interface address; expected a unicast address"),
        );
        return None;
    }
    if prefix < 31 && (addr == net.network() || addr == net.broadcast()) {
        let which = if addr == net.network() {
            "network"
        } else {
            "broadcast"
        };
        c.error(
            s.span(),
            format!(
                "{addr} is the {which} address of {}; expected a host address inside it",
                net.trunc()
            ),
        );
        return None;
    }
    Some(net)
}

fn parse_v6_net(s: &Spanned<String>, c: &mut Collector) -> Option<Ipv6Net> {
    let (addr, prefix) = split_prefix(s, 128, "2001:db8::10/64", c)?;
    let Ok(addr) = addr.parse::<Ipv6Addr>() else {
        c.error(
            s.span(),
            format!("{addr:?} is not a valid IPv6 address; expected e.g. \"2001:db8::10/64\""),
        );
        return None;
    };
    if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
        c.error(
            s.span(),
            format!("{addr} cannot be an interface address; expected a unicast address"),
        );
        return None;
    }
    Some(Ipv6Net::new(addr, prefix).expect("prefix checked above"))
}

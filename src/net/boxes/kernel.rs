//! The routing netlink requests of the boxes' network that `net::apply` does not need:
//! bridge and veth links, bridge ports, host routes, proxy NDP entries and policy rules.
//! Everything added carries letterbox's protocol mark, so removal takes only its own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoVeth};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{
    Handle, IpVersion, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::net::netlink::LETTERBOX_PROTOCOL;
use crate::net::{NetError, Origin};

/// Adds a bridge, up, with the MAC address `mac`. A bridge given none takes its lowest port's,
/// so each new box's random host-side MAC could change it, and the kernel then flushes every
/// neighbour entry on the bridge, the boxes' included.
pub async fn add_bridge(handle: &Handle, name: &str, mac: [u8; 6]) -> Result<(), rtnetlink::Error> {
    handle
        .link()
        .add(LinkBridge::new(name).address(mac.to_vec()).build())
        .execute()
        .await
}

/// Adds a veth pair: `name` up as a port of `controller`, its peer `peer`, with the MAC
/// address `peer_mac`, created directly in the network namespace open as `netns`, so its
/// name cannot clash with this namespace's.
pub async fn add_veth_into(
    handle: &Handle,
    name: &str,
    controller: u32,
    peer: &str,
    peer_mac: [u8; 6],
    netns: BorrowedFd<'_>,
) -> Result<(), rtnetlink::Error> {
    let peer = LinkUnspec::new_with_name(peer)
        .address(peer_mac.to_vec())
        .setns_by_fd(netns.as_raw_fd())
        .build();
    let message = LinkVeth::new(name, "")
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .controller(controller)
        .up()
        .build();
    handle.link().add(message).execute().await
}

pub async fn set_controller(
    handle: &Handle,
    index: u32,
    controller: u32,
) -> Result<(), rtnetlink::Error> {
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .controller(controller)
                .build(),
        )
        .execute()
        .await
}

/// `ip link set INDEX type bridge_slave isolated on`.
pub async fn isolate_port(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    handle
        .link()
        .set_port(LinkBridgePort::new(index).isolated(true).build())
        .execute()
        .await
}

pub async fn del_link(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    handle.link().del(index).execute().await
}

/// A route of the main table to one address (/32 or /128) through one link.
#[derive(Debug, Clone)]
pub struct HostRoute {
    pub index: u32,
    pub destination: IpAddr,
    pub origin: Origin,
    message: RouteMessage,
}

/// The main table's IPv6 routes to single addresses (/128) that go out of one link.
pub async fn ipv6_host_routes(handle: &Handle) -> Result<Vec<HostRoute>, NetError> {
    let messages: Vec<_> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|source| NetError::Dump {
            what: "routes",
            source,
        })?;
    Ok(messages
        .into_iter()
        .filter(|m| m.header.destination_prefix_length == 128)
        .filter_map(|message| {
            let mut table = u32::from(message.header.table);
            let (mut index, mut destination) = (None, None);
            for attr in &message.attributes {
                match attr {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Oif(i) => index = Some(*i),
                    RouteAttribute::Destination(RouteAddress::Inet6(ip)) => {
                        destination = Some(IpAddr::V6(*ip))
                    }
                    _ => {}
                }
            }
            (table == u32::from(RouteHeader::RT_TABLE_MAIN)).then_some(())?;
            Some(HostRoute {
                index: index?,
                destination: destination?,
                origin: match message.header.protocol {
                    RouteProtocol::Other(LETTERBOX_PROTOCOL) => Origin::Letterbox,
                    _ => Origin::Other,
                },
                message,
            })
        })
        .collect())
}

/// Adds a route marked as letterbox's to one IPv6 address through a link, with no gateway:
/// the address answers neighbour discovery on that link itself.
pub async fn add_ipv6_host_route(
    handle: &Handle,
    index: u32,
    destination: Ipv6Addr,
) -> Result<(), rtnetlink::Error> {
    let message = RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(destination, 128)
        .output_interface(index)
        .protocol(RouteProtocol::Other(LETTERBOX_PROTOCOL))
        .build();
    handle.route().add(message).execute().await
}

pub async fn del_host_route(handle: &Handle, route: &HostRoute) -> Result<(), rtnetlink::Error> {
    handle.route().del(route.message.clone()).execute().await
}

/// A proxy neighbour entry: this host answers neighbour solicitations for `address` on the
/// link (`ip -6 neigh add proxy ADDRESS dev LINK`).
#[derive(Debug, Clone)]
pub struct ProxyNeighbour {
    pub index: u32,
    pub address: Ipv6Addr,
    pub origin: Origin,
    message: NeighbourMessage,
}

pub async fn ipv6_proxy_neighbours(handle: &Handle) -> Result<Vec<ProxyNeighbour>, NetError> {
    let messages: Vec<_> = handle
        .neighbours()
        .get()
        .proxies()
        .execute()
        .try_collect()
        .await
        .map_err(|source| NetError::Dump {
            what: "proxy neighbours",
            source,
        })?;
    Ok(messages
        .into_iter()
        .filter_map(|message| {
            let mut address = None;
            let mut origin = Origin::Other;
            for attr in &message.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                        address = Some(*ip)
                    }
                    NeighbourAttribute::Protocol(RouteProtocol::Other(LETTERBOX_PROTOCOL)) => {
                        origin = Origin::Letterbox
                    }
                    _ => {}
                }
            }
            Some(ProxyNeighbour {
                index: message.header.ifindex,
                address: address?,
                origin,
                message,
            })
        })
        .collect())
}

/// Tells the kernel the link-layer address of the box at `address` on the bridge, so that
/// the first packet to a new box is not held for an ARP answer: the kernel asks again only
/// a second after an unanswered question (one sent before the box's link was up). The
/// entry ages as any learnt one does.
pub async fn set_box_neighbour(
    handle: &Handle,
    bridge: u32,
    address: Ipv4Addr,
    mac: [u8; 6],
) -> Result<(), rtnetlink::Error> {
    handle
        .neighbours()
        .add(bridge, IpAddr::V4(address))
        .link_layer_address(&mac)
        .state(NeighbourState::Reachable)
        .replace()
        .execute()
        .await
}

/// Adds a proxy neighbour entry marked as letterbox's (NDA_PROTOCOL).
pub async fn add_ipv6_proxy_neighbour(
    handle: &Handle,
    index: u32,
    address: Ipv6Addr,
) -> Result<(), rtnetlink::Error> {
    let mut request = handle
        .neighbours()
        .add(index, IpAddr::V6(address))
        .flags(NeighbourFlags::Proxy);
    request
        .message_mut()
        .attributes
        .push(NeighbourAttribute::Protocol(RouteProtocol::Other(
            LETTERBOX_PROTOCOL,
        )));
    request.execute().await
}

pub async fn del_proxy_neighbour(
    handle: &Handle,
    entry: &ProxyNeighbour,
) -> Result<(), rtnetlink::Error> {
    handle
        .neighbours()
        .del(entry.message.clone())
        .execute()
        .await
}

/// Priority of letterbox's policy rules: before the main table's (32766).
pub const RULE_PRIORITY: u32 = 1000;

/// A policy rule refusing to route packets that arrive on one link to one IPv6 address
/// (`ip -6 rule add iif LINK to ADDRESS/128 prohibit`).
#[derive(Debug, Clone)]
pub struct ProhibitRule {
    pub input: String,
    pub destination: Ipv6Addr,
    pub origin: Origin,
    message: RuleMessage,
}

pub async fn ipv6_prohibit_rules(handle: &Handle) -> Result<Vec<ProhibitRule>, NetError> {
    let messages: Vec<_> = handle
        .rule()
        .get(IpVersion::V6)
        .execute()
        .try_collect()
        .await
        .map_err(|source| NetError::Dump {
            what: "policy rules",
            source,
        })?;
    Ok(messages
        .into_iter()
        .filter(|m| m.header.action == RuleAction::Prohibit && m.header.dst_len == 128)
        .filter_map(|message| {
            let (mut input, mut destination) = (None, None);
            let mut origin = Origin::Other;
            for attr in &message.attributes {
                match attr {
                    RuleAttribute::Iifname(name) => input = Some(name.clone()),
                    RuleAttribute::Destination(IpAddr::V6(ip)) => destination = Some(*ip),
                    RuleAttribute::Protocol(RouteProtocol::Other(LETTERBOX_PROTOCOL)) => {
                        origin = Origin::Letterbox
                    }
                    _ => {}
                }
            }
            Some(ProhibitRule {
                input: input?,
                destination: destination?,
                origin,
                message,
            })
        })
        .collect())
}

/// Adds a prohibit rule marked as letterbox's (FRA_PROTOCOL).
pub async fn add_ipv6_prohibit_rule(
    handle: &Handle,
    input: &str,
    destination: Ipv6Addr,
) -> Result<(), rtnetlink::Error> {
    let mut request = handle
        .rule()
        .add()
        .v6()
        .input_interface(input)
        .destination_prefix(destination, 128)
        .action(RuleAction::Prohibit)
        .priority(RULE_PRIORITY);
    request
        .message_mut()
        .attributes
        .push(RuleAttribute::Protocol(RouteProtocol::Other(
            LETTERBOX_PROTOCOL,
        )));
    request.execute().await
}

pub async fn del_rule(handle: &Handle, rule: &ProhibitRule) -> Result<(), rtnetlink::Error> {
    handle.rule().del(rule.message.clone()).execute().await
}

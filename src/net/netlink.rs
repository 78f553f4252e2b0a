//! The kernel's routing netlink, through rtnetlink: reading links, addresses and default
//! routes, and changing them. No policy here; `net::apply` decides what to change.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressProtocol,
};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::{NetError, Origin};

/// Marks what letterbox added, in the kernel itself: the route protocol of its routes and the
/// IFA_PROTO of its addresses (Linux >= 6.1). The mark survives agent restarts without a state
/// file, and `ip` shows it (`proto 213`). 213 is not assigned in iproute2's rt_protos.
pub const LETTERBOX_PROTOCOL: u8 = 213;

/// Opens a routing netlink socket in the caller's network namespace and drives it on the
/// current tokio runtime. The returned task ends when it is aborted or the handle is dropped.
pub fn connect() -> Result<(Handle, tokio::task::JoinHandle<()>), NetError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetError::Connect)?;
    Ok((handle, tokio::spawn(connection)))
}

#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub mtu: Option<u32>,
    /// The kind of a virtual link (bridge, veth); None for hardware.
    pub kind: Option<InfoKind>,
    /// The bridge (or bond) this link is a port of.
    pub controller: Option<u32>,
    /// A bridge port that forwards only to non-isolated ports (`isolated on`).
    pub isolated: bool,
}

#[derive(Debug, Clone)]
pub struct Address {
    pub index: u32,
    pub net: IpNet,
    pub origin: Origin,
    message: AddressMessage,
}

#[derive(Debug, Clone)]
pub struct DefaultRoute {
    pub index: u32,
    pub gateway: IpAddr,
    pub origin: Origin,
    message: RouteMessage,
}

pub async fn links(handle: &Handle) -> Result<Vec<Link>, NetError> {
    let messages: Vec<_> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|source| NetError::Dump {
            what: "links",
            source,
        })?;
    Ok(messages
        .into_iter()
        .map(|m| {
            let mut link = Link {
                index: m.header.index,
                name: String::new(),
                up: m.header.flags.contains(LinkFlags::Up),
                mtu: None,
                kind: None,
                controller: None,
                isolated: false,
            };
            for attr in m.attributes {
                match attr {
                    LinkAttribute::IfName(name) => link.name = name,
                    LinkAttribute::Mtu(mtu) => link.mtu = Some(mtu),
                    LinkAttribute::Controller(index) => link.controller = Some(index),
                    LinkAttribute::LinkInfo(infos) => {
                        for info in infos {
                            match info {
                                LinkInfo::Kind(kind) => link.kind = Some(kind),
                                LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                                    link.isolated = port.contains(&InfoBridgePort::Isolated(true))
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            link
        })
        .collect())
}

pub async fn addresses(handle: &Handle) -> Result<Vec<Address>, NetError> {
    let messages: Vec<_> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|source| NetError::Dump {
            what: "addresses",
            source,
        })?;
    Ok(messages.into_iter().filter_map(address_of).collect())
}

fn address_of(message: AddressMessage) -> Option<Address> {
    let mut local = None;
    let mut address = None;
    let mut origin = Origin::Other;
    for attr in &message.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Protocol(AddressProtocol::RouterAnnouncement) => {
                origin = Origin::RouterAdvertisement
            }
            AddressAttribute::Protocol(AddressProtocol::Other(LETTERBOX_PROTOCOL)) => {
                origin = Origin::Letterbox
            }
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point
    // links and the same as IFA_LOCAL elsewhere (IPv6 sends only IFA_ADDRESS).
    let ip = local.or(address)?;
    let net = IpNet::new(ip, message.header.prefix_len).ok()?;
    Some(Address {
        index: message.header.index,
        net,
        origin,
        message,
    })
}

/// Default routes of the main table, IPv4 and IPv6, that go through a gateway on one link.
pub async fn default_routes(handle: &Handle) -> Result<Vec<DefaultRoute>, NetError> {
    let mut routes = Vec::new();
    for query in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let messages: Vec<_> = handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetError::Dump {
                what: "routes",
                source,
            })?;
        routes.extend(messages.into_iter().filter_map(default_route_of));
    }
    Ok(routes)
}

fn default_route_of(message: RouteMessage) -> Option<DefaultRoute> {
    if message.header.destination_prefix_length != 0 {
        return None;
    }
    let mut table = u32::from(message.header.table);
    let mut index = None;
    let mut gateway = None;
    for attr in &message.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Oif(i) => index = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(IpAddr::V4(*ip)),
            RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => gateway = Some(IpAddr::V6(*ip)),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    Some(DefaultRoute {
        index: index?,
        gateway: gateway?,
        origin: match message.header.protocol {
            RouteProtocol::Other(LETTERBOX_PROTOCOL) => Origin::Letterbox,
            RouteProtocol::Ra => Origin::RouterAdvertisement,
            _ => Origin::Other,
        },
        message,
    })
}

pub async fn set_up(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
}

pub async fn set_mtu(handle: &Handle, index: u32, mtu: u32) -> Result<(), rtnetlink::Error> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
        .execute()
        .await
}

/// Adds an address marked as letterbox's. IPv6 addresses skip duplicate address detection
/// (IFA_F_NODAD) so that services can bind to them as soon as this returns: the addresses are
/// statically assigned, so a duplicate is a provisioning mistake DAD would not repair anyway.
pub async fn add_address(handle: &Handle, index: u32, net: IpNet) -> Result<(), rtnetlink::Error> {
    let mut request = handle.address().add(index, net.addr(), net.prefix_len());
    let message = request.message_mut();
    message
        .attributes
        .push(AddressAttribute::Protocol(AddressProtocol::Other(
            LETTERBOX_PROTOCOL,
        )));
    if net.addr().is_ipv6() {
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    request.execute().await
}

pub async fn del_address(handle: &Handle, address: &Address) -> Result<(), rtnetlink::Error> {
    handle
        .address()
        .del(address.message.clone())
        .execute()
        .await
}

/// Metric of letterbox's IPv6 default route. The kernel refuses a second IPv6 route to the
/// same destination with the same metric, and an advertised default router takes 1024 (the
/// default); a lower one also makes the file's gateway preferred over advertised routers.
pub const IPV6_DEFAULT_ROUTE_METRIC: u32 = 512;

pub async fn add_default_route(
    handle: &Handle,
    index: u32,
    gateway: IpAddr,
) -> Result<(), rtnetlink::Error> {
    let protocol = RouteProtocol::Other(LETTERBOX_PROTOCOL);
    let message = match gateway {
        IpAddr::V4(gw) => RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(index)
            .gateway(gw)
            .protocol(protocol)
            .build(),
        IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new()
            .output_interface(index)
            .gateway(gw)
            .protocol(protocol)
            .priority(IPV6_DEFAULT_ROUTE_METRIC)
            .build(),
    };
    handle.route().add(message).execute().await
}

pub async fn del_route(handle: &Handle, route: &DefaultRoute) -> Result<(), rtnetlink::Error> {
    handle.route().del(route.message.clone()).execute().await
}

/// Adds a bridge, up.
pub async fn add_bridge(handle: &Handle, name: &str) -> Result<(), rtnetlink::Error> {
    handle
        .link()
        .add(LinkBridge::new(name).build())
        .execute()
        .await
}

/// Adds a veth pair: `name` up as a port of `controller`, its peer `peer` created directly
/// in the network namespace open as `netns`, so its name cannot clash with this namespace's.
pub async fn add_veth_into(
    handle: &Handle,
    name: &str,
    controller: u32,
    peer: &str,
    netns: std::os::fd::BorrowedFd<'_>,
) -> Result<(), rtnetlink::Error> {
    use std::os::fd::AsRawFd;
    let peer = LinkUnspec::new_with_name(peer)
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

//! The kernel's routing netlink, through rtnetlink: reading links, addresses and default
//! routes, and changing them. No policy here; `net::apply` decides what to change.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressProtocol,
};
use netlink_packet_route::link::{
    InfoBridgePort, InfoKind, InfoPortData, LinkAttribute, LinkFlags, LinkInfo,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

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
